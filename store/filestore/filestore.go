package filestore

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/streamproxy/caddy-stream-proxy/store"
)

func init() {
	caddy.RegisterModule(FileStore{})
}

// FileStore writes file parts into a local directory: each to a temporary
// file in Root/.partial, fsynced, renamed to its generated name only when the
// whole form ended cleanly. No file is ever written outside Root (os.Root),
// and no client filename is ever part of a path.
//
// A temporary file is locked (flock) while it is written. At provisioning,
// the store removes the temporary files no live process holds a lock on:
// those of uploads cut by a crash. Gateways may share Root: a file another
// live process writes is never removed.
type FileStore struct {
	// Root is the directory files are stored under; created if missing.
	Root string `json:"root,omitempty"`

	// FileMode is the permission of stored files, in octal. Default: 0640.
	FileMode string `json:"file_mode,omitempty"`

	// DirMode is the permission of directories created in Root, in octal.
	// Default: 0750.
	DirMode string `json:"dir_mode,omitempty"`

	// Layout is `date` (files under Root/YYYY/MM/DD/, UTC) or `flat` (files
	// directly in Root). Default: date.
	Layout string `json:"layout,omitempty"`

	root     *os.Root
	dir      string // Root, absolute
	fileMode os.FileMode
	dirMode  os.FileMode
}

// CaddyModule returns the Caddy module information.
func (FileStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.stream_proxy.stores.file",
		New: func() caddy.Module { return new(FileStore) },
	}
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens: the `<dir>`
// of `store <dir>` or `store file <dir>`, and its block. Syntax:
//
//	store [file] <dir> {
//		file_mode <octal>
//		dir_mode <octal>
//		layout date|flat
//	}
func (s *FileStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume "file" (or "store")
	if !d.NextArg() {
		return d.ArgErr()
	}
	s.Root = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var dst *string
		switch d.Val() {
		case "file_mode":
			dst = &s.FileMode
		case "dir_mode":
			dst = &s.DirMode
		case "layout":
			dst = &s.Layout
		default:
			return d.Errf("unrecognized store option %s", d.Val())
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		*dst = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Provision sets defaults, creates and opens the directory, and removes the
// temporary files of uploads no live process writes.
func (s *FileStore) Provision(ctx caddy.Context) error {
	if s.Layout == "" {
		s.Layout = "date"
	}
	if err := s.Validate(); err != nil { // before anything is created
		return err
	}
	s.fileMode, _ = parsePerm(s.FileMode, 0o640)
	s.dirMode, _ = parsePerm(s.DirMode, 0o750)
	dir, err := filepath.Abs(s.Root)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, s.dirMode); err != nil {
		return err
	}
	s.dir = dir
	if s.root, err = os.OpenRoot(dir); err != nil {
		return err
	}
	if err := s.root.MkdirAll(tempDir, s.dirMode); err != nil {
		return err
	}
	return s.removeCrashed(ctx.Logger())
}

// Validate checks the configuration.
func (s *FileStore) Validate() error {
	if s.Root == "" {
		return fmt.Errorf("the file store needs a directory")
	}
	for _, m := range []string{s.FileMode, s.DirMode} {
		if _, err := parsePerm(m, 0); err != nil {
			return err
		}
	}
	switch s.Layout {
	case "", "date", "flat":
	default:
		return fmt.Errorf("unknown layout %q (want date or flat)", s.Layout)
	}
	return nil
}

// Cleanup closes the directory.
func (s *FileStore) Cleanup() error {
	if s.root == nil {
		return nil
	}
	return s.root.Close()
}

func parsePerm(val string, def os.FileMode) (os.FileMode, error) {
	if val == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(val, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("mode %q is not an octal permission such as 0640", val)
	}
	return os.FileMode(n), nil
}

// Begin starts one request's files.
func (s *FileStore) Begin(_ context.Context, logger *zap.Logger) store.Batch {
	return &fileBatch{s: s, logger: logger}
}

// fileBatch is one request's files on disk.
type fileBatch struct {
	s      *FileStore
	logger *zap.Logger
	files  []*diskFile
}

// diskFile is a file part being written, or written, to the store.
type diskFile struct {
	s         *FileStore
	rel       string // final path, relative to the store
	tmp       string // where it is written until committed
	f         *os.File
	buf       *bufio.Writer // in front of f until Finish: client reads can be one TLS record each
	committed bool
}

// Create opens a new temporary file under a generated name.
func (b *fileBatch) Create(store.FileInfo) (store.StoredFile, error) {
	s := b.s
	dir := "."
	if s.Layout == "date" {
		dir = time.Now().UTC().Format("2006/01/02")
		if err := s.root.MkdirAll(dir, s.dirMode); err != nil {
			return nil, diskError(err)
		}
	}
	var id [16]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	name := hex.EncodeToString(id[:])
	df := &diskFile{s: s, rel: path.Join(dir, name), tmp: path.Join(tempDir, name)}
	f, err := s.createLocked(df.tmp)
	if err != nil {
		return nil, diskError(err)
	}
	if err := f.Chmod(s.fileMode); err != nil { // whatever the umask
		f.Close()
		_ = s.root.Remove(df.tmp)
		return nil, diskError(err)
	}
	df.f = f
	df.buf = fileWriters.Get().(*bufio.Writer)
	df.buf.Reset(diskWriter{f})
	b.files = append(b.files, df)
	return df, nil
}

func (df *diskFile) Write(p []byte) (int, error) {
	return df.buf.Write(p)
}

// Finish writes out what is buffered and makes the file's data durable.
func (df *diskFile) Finish(store.FileInfo) error {
	err := df.buf.Flush()
	df.release()
	if err != nil {
		return err
	}
	if err := df.f.Sync(); err != nil {
		return diskError(err)
	}
	return nil
}

// release gives the file's buffer back to the pool.
func (df *diskFile) release() {
	if df.buf != nil {
		df.buf.Reset(nil)
		fileWriters.Put(df.buf)
		df.buf = nil
	}
}

// fileWriterSize is the size of the buffered writer in front of a stored file.
// It gathers part headers and small client reads into one write; a run of
// part data larger than it is written past it.
const fileWriterSize = 128 << 10

var fileWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, fileWriterSize) }}

// diskWriter classifies the failures of writes to the file.
type diskWriter struct{ f *os.File }

func (w diskWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		return n, diskError(err)
	}
	return n, nil
}

func (df *diskFile) Location() store.Location {
	return store.Location{Path: df.rel, AbsPath: filepath.Join(df.s.dir, filepath.FromSlash(df.rel))}
}

// Commit moves every file into place and makes the renames durable. A file
// is renamed before it is closed, which ends its lock: a temporary file is
// never unlocked while it is still to be kept.
func (b *fileBatch) Commit() error {
	dirs := map[string]bool{tempDir: true}
	for _, df := range b.files {
		if err := b.s.root.Rename(df.tmp, df.rel); err != nil {
			return diskError(err)
		}
		df.committed = true
		dirs[path.Dir(df.rel)] = true
		err := df.f.Close()
		df.f = nil
		if err != nil {
			return diskError(err)
		}
	}
	for dir := range dirs {
		d, err := b.s.root.Open(dir)
		if err != nil {
			return diskError(err)
		}
		err = d.Sync()
		d.Close()
		if err != nil {
			return diskError(err)
		}
	}
	return nil
}

// Discard removes every file of the batch, committed or not.
func (b *fileBatch) Discard() {
	for _, df := range b.files {
		df.release()
		name := df.tmp
		if df.committed {
			name = df.rel
		}
		if err := b.s.root.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			b.logger.Error("removing stored file", zap.String("path", name), zap.Error(err))
		}
		if df.f != nil {
			df.f.Close() // after the removal: its lock held to the end
			df.f = nil
		}
	}
	b.files = nil
}

// diskError classifies a failure of the disk: a full disk or quota is 507,
// and so is a file past the size the system allows (EFBIG: the file
// system's largest file, or the process's RLIMIT_FSIZE).
func diskError(err error) *store.Error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG) {
		return &store.Error{Status: http.StatusInsufficientStorage, Code: store.CodeStorageFull, Message: "the store is full", Err: err}
	}
	return store.Failed(err)
}

// Interface guards
var (
	_ store.Store           = (*FileStore)(nil)
	_ caddy.Provisioner     = (*FileStore)(nil)
	_ caddy.Validator       = (*FileStore)(nil)
	_ caddy.CleanerUpper    = (*FileStore)(nil)
	_ caddyfile.Unmarshaler = (*FileStore)(nil)
)
