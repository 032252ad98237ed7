package streamproxy

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// StoreConfig says where and how store mode writes file parts.
type StoreConfig struct {
	// Root is the directory files are stored under; created if missing. No
	// file is ever written outside it (os.Root), and no client filename is
	// ever part of a path.
	Root string `json:"root,omitempty"`

	// FileMode is the permission of stored files, in octal. Default: 0640.
	FileMode string `json:"file_mode,omitempty"`

	// DirMode is the permission of directories created in Root, in octal.
	// Default: 0750.
	DirMode string `json:"dir_mode,omitempty"`

	// Layout is `date` (files under Root/YYYY/MM/DD/, UTC) or `flat` (files
	// directly in Root). Default: date.
	Layout string `json:"layout,omitempty"`
}

// store is an open StoreConfig.
type store struct {
	root     *os.Root
	dir      string // Root, absolute
	fileMode os.FileMode
	dirMode  os.FileMode
	layout   string
}

func openStore(c *StoreConfig) (*store, error) {
	s := &store{fileMode: 0o640, dirMode: 0o750, layout: "date"}
	for _, m := range []struct {
		val string
		dst *os.FileMode
	}{{c.FileMode, &s.fileMode}, {c.DirMode, &s.dirMode}} {
		if m.val == "" {
			continue
		}
		n, err := strconv.ParseUint(m.val, 8, 32)
		if err != nil || n > 0o777 {
			return nil, fmt.Errorf("mode %q is not an octal permission such as 0640", m.val)
		}
		*m.dst = os.FileMode(n)
	}
	switch c.Layout {
	case "", "date":
	case "flat":
		s.layout = "flat"
	default:
		return nil, fmt.Errorf("unknown layout %q (want date or flat)", c.Layout)
	}
	dir, err := filepath.Abs(c.Root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, s.dirMode); err != nil {
		return nil, err
	}
	s.dir = dir
	s.root, err = os.OpenRoot(dir)
	return s, err
}

func (s *store) close() error { return s.root.Close() }

// storedFile is a file part being written, or written, to the store.
type storedFile struct {
	rel       string // final path, relative to the store
	tmp       string // where it is written until committed
	f         *os.File
	committed bool
}

// create opens a new temporary file under a generated name.
func (s *store) create() (*storedFile, error) {
	dir := "."
	if s.layout == "date" {
		dir = time.Now().UTC().Format("2006/01/02")
		if err := s.root.MkdirAll(dir, s.dirMode); err != nil {
			return nil, err
		}
	}
	var id [16]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	name := hex.EncodeToString(id[:])
	sf := &storedFile{rel: path.Join(dir, name), tmp: path.Join(dir, "."+name+".partial")}
	f, err := s.root.OpenFile(sf.tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, s.fileMode)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(s.fileMode); err != nil { // whatever the umask
		f.Close()
		_ = s.root.Remove(sf.tmp)
		return nil, err
	}
	sf.f = f
	return sf, nil
}

// storing is one upload's files in store mode.
type storing struct {
	u      *upload
	s      *store
	files  []*storedFile
	parts  []partResult
	fields map[string]string // kept text fields, without a backend
}

// receive reads the whole form: file parts go to disk; text fields go to mw
// when there is a backend (with each file's metadata after it), or are kept
// for the JSON answer when there is none.
func (st *storing) receive(form *formReader, mw *multipart.Writer) error {
	fw := getWriter()
	defer putWriter(fw)
	u := st.u
	for {
		p, err := form.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if mw != nil {
			if err := p.forwardable(); err != nil {
				return err
			}
		}
		if !p.IsFile {
			if mw != nil {
				dst, err := mw.CreatePart(p.formHeader())
				if err != nil {
					return err
				}
				if err := u.copyPart(dst, p); err != nil {
					return err
				}
			} else if err := st.keepField(p); err != nil {
				return err
			}
			st.parts = append(st.parts, newPartResult(p))
			continue
		}

		sf, err := st.s.create()
		if err != nil {
			return storeError(err)
		}
		st.files = append(st.files, sf)
		fw.Reset(fileWriter{sf.f})
		if err := u.copyPart(fw, p); err != nil {
			return err
		}
		if err := fw.Flush(); err != nil {
			return err
		}
		if err := sf.f.Sync(); err != nil {
			return storeError(err)
		}
		r := newPartResult(p)
		r.Path = sf.rel
		st.parts = append(st.parts, r)
		if mw != nil {
			if err := st.writeMetadata(mw, r); err != nil {
				return err
			}
		}
	}
}

func (st *storing) keepField(p *formPart) error {
	if err := st.u.readField(p); err != nil {
		return err
	}
	if v, ok := st.u.repl.GetString(placeholderPrefix + "form." + p.Field); ok {
		if st.fields == nil {
			st.fields = make(map[string]string)
		}
		st.fields[p.Field] = v
	}
	return nil
}

// writeMetadata tells the backend about a stored file, as nginx's upload module
// does: <field>.name, .content_type, .path (absolute), .size and a field per
// configured digest.
func (st *storing) writeMetadata(mw *multipart.Writer, r partResult) error {
	fields := [][2]string{
		{".name", *r.Filename},
		{".content_type", r.ContentType},
		{".path", filepath.Join(st.s.dir, filepath.FromSlash(r.Path))},
		{".size", strconv.FormatInt(r.Size, 10)},
	}
	for _, name := range st.u.h.Hash {
		fields = append(fields, [2]string{"." + name, r.Digests[name]})
	}
	for _, f := range fields {
		if err := mw.WriteField(r.Field+f[0], f[1]); err != nil {
			return err
		}
	}
	return nil
}

// commit moves every file into place once the whole form has ended cleanly,
// and makes the renames durable.
func (st *storing) commit() error {
	dirs := map[string]bool{}
	for _, sf := range st.files {
		if err := sf.f.Close(); err != nil {
			return storeError(err)
		}
		sf.f = nil
		if err := st.s.root.Rename(sf.tmp, sf.rel); err != nil {
			return storeError(err)
		}
		sf.committed = true
		dirs[path.Dir(sf.rel)] = true
	}
	for dir := range dirs {
		d, err := st.s.root.Open(dir)
		if err != nil {
			return storeError(err)
		}
		err = d.Sync()
		d.Close()
		if err != nil {
			return storeError(err)
		}
	}
	return nil
}

// discard removes every file of the upload, committed or not.
func (st *storing) discard() {
	for _, sf := range st.files {
		if sf.f != nil {
			sf.f.Close()
			sf.f = nil
		}
		name := sf.tmp
		if sf.committed {
			name = sf.rel
		}
		if err := st.s.root.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			st.u.logger.Error("removing stored file", zap.String("path", name), zap.Error(err))
		}
	}
	st.files = nil
	for i := range st.parts {
		st.parts[i].Path = "" // reported parts were not stored after all
	}
}

// serveStore writes file parts to the store. Without a backend it answers 201
// with JSON describing them; with one, the backend gets the text fields and
// each file's metadata, and the files are removed if it answers an error.
func (h *Handler) serveStore(u *upload) error {
	form := u.openBody()
	defer u.closeBody()
	st := &storing{u: u, s: h.store}

	if h.proxy == nil {
		if err := st.receive(form, nil); err != nil {
			st.discard()
			return u.failParts(asUploadError(err), st.parts)
		}
		if err := st.commit(); err != nil {
			st.discard()
			return u.failParts(asUploadError(err), st.parts)
		}
		u.status = http.StatusCreated
		return writeJSON(u.w, u.status, map[string]any{"parts": st.parts, "fields": st.fields})
	}

	answer := u.relayTo(u.w)
	uerr := u.exchangeForm(answer, func(mw *multipart.Writer) error {
		if err := st.receive(form, mw); err != nil {
			return err
		}
		return st.commit() // before the closing delimiter: the backend sees a complete form only once the files are in place
	})
	if uerr != nil {
		st.discard()
		return u.failParts(uerr, st.parts)
	}
	if answer.status >= 400 || answer.early {
		st.discard() // nginx's upload_cleanup
	}
	return nil
}

// fileWriter marks write errors as the store's.
type fileWriter struct{ f *os.File }

func (w fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		return n, storeError(err)
	}
	return n, nil
}

// storeError classifies a failure of the store: a full disk or quota is 507.
func storeError(err error) *uploadError {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &uploadError{Status: http.StatusInsufficientStorage, Code: CodeStorageFull, Message: "the store is full", err: err}
	}
	return &uploadError{Status: http.StatusInternalServerError, Code: CodeStoreFailed, Message: "storing the upload failed", err: err}
}
