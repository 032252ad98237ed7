// Package store is the API between stream_proxy's store mode and the stores
// it writes file parts into. A store is a Caddy module in the
// `http.handlers.stream_proxy.stores` namespace that implements Store; the
// file, s3 and azure stores (packages filestore, s3store and azurestore) are
// written against this package only, as a store in another repository is.
//
// What a store owns: where a file's bytes go, when they become visible
// (never before Commit), and undoing everything on Discard. What it does not:
// parsing the form, limits, digests, the client's answer. A store tells what
// went wrong with an *Error (status, stable code, message), which the
// handler turns into its JSON answer; any other error is a 500 store_failed.
package store

import (
	"context"
	"io"
	"time"

	"go.uber.org/zap"
)

// Store is where store mode puts file parts: a module in the
// `http.handlers.stream_proxy.stores` namespace (`file`, `s3`, `azure`), so that
// another object store is one more module. A store must not make a file
// visible before the Batch it belongs to is committed.
//
// One Store serves every request of its handler: Begin, and the methods of
// the optional interfaces below (IdleBounder, once per upload), are called
// from many requests' goroutines at once, so what batches share (a client, a
// buffer pool) must be safe for concurrent use. Caddy calls Provision,
// Validate and Cleanup, as for any module, while no request runs on it.
type Store interface {
	// Begin starts the files of one request, on the request's goroutine.
	// ctx is the request's: when it is cancelled (the client went away),
	// what the batch is doing stops.
	Begin(ctx context.Context, logger *zap.Logger) Batch
}

// Batch is the files one request stores. Its methods, and those of its
// StoredFiles, are called one at a time, never concurrently, but not always
// from the same goroutine. Without a backend they all run on the request's
// goroutine. With one, Create, the writes, Finish and Commit run on the
// goroutine that produces the backend's request body: the HTTP transport's
// own for HTTP/1, or one the handler starts for the body for HTTP/2 and
// HTTP/3; Discard then runs on the request's goroutine, after that one has
// ended. Each call happens after the one before it returned, so a batch needs
// no lock for its own fields; goroutines it starts itself (uploads in
// flight) are its to synchronise, and it ends them before Finish, Commit or
// Discard returns. Work the store keeps beyond the request (the s3 store's
// cleanup retries) is the Store's, ended by its Cleanup.
type Batch interface {
	// Create starts a file; its data is written to the returned StoredFile.
	Create(info FileInfo) (StoredFile, error)

	// Commit makes every file of the batch visible, once the whole form
	// ended cleanly.
	Commit() error

	// Discard removes every file of the batch, committed or not, and ends
	// whatever is in flight. It may be called after Commit, after a failed
	// call of any method, and once the request's context has ended.
	Discard()
}

// StoredFile is one file being written. Its writes come as the client's reads
// do, as small as one TLS record: it buffers them as its medium needs. Write
// errors are *Error when the store knows what went wrong (a full disk, an
// unreachable server).
type StoredFile interface {
	io.Writer

	// Finish is called when the file's data ended cleanly, with what is
	// known of it then (size, digests).
	Finish(info FileInfo) error

	// Location is where the file is, or will be once committed.
	Location() Location
}

// FileInfo is what a store is told of a file part. Size and Digests are set
// only when it is finished.
type FileInfo struct {
	Field       string
	Filename    string // as the client sent it: metadata only, never a path or key
	ContentType string
	// DetectedType is, with verify_types, the type the file's first bytes
	// show; empty otherwise.
	DetectedType string
	Size         int64
	Digests      map[string]string // configured digests, hex, by name
}

// DigestHexSizes are the digests a FileInfo's Digests may hold (the
// algorithms of the handler's hash subdirective), by name, with the length of
// their hex value: what a store that keeps them in size-limited metadata
// must leave room for.
var DigestHexSizes = map[string]int{"sha256": 64, "sha1": 40, "md5": 32, "crc32c": 8}

// Location is where a stored file is. The file store sets Path; object
// stores set Bucket and Key.
type Location struct {
	Path   string `json:"path,omitempty"`
	Bucket string `json:"bucket,omitempty"`
	Key    string `json:"key,omitempty"`

	// AbsPath is Path, absolute, as the backend is told it (the client is
	// told Path only). Set by stores on a local file system.
	AbsPath string `json:"-"`
}

// MaxFileSizer is implemented by stores that cannot take a file larger than
// some size (S3: 10,000 parts), so that the handler's Validate refuses a
// max_part_size they can't reach.
type MaxFileSizer interface {
	// MaxFileSize is the largest file the store takes, in bytes.
	MaxFileSize() int64
}

// IdleBounder is implemented by stores that hold a scarce buffer while a file
// arrives (a part buffer from a bufpool.Pool): each read from the client
// while one of its files arrives then gets IdleBound to return, so that a
// stalled client lets the buffer go (408 client_timeout).
type IdleBounder interface {
	// IdleBound is how long a client that holds a buffer may send nothing.
	IdleBound() time.Duration
}

// Pooled is implemented by stores that copy each file's data into buffers of
// their own, from a pool bounded gateway-wide (a bufpool.Pool): the memory
// for an upload's part data is then the pool's, and the handler reads the
// client through small read buffers, not its large ones.
type Pooled interface {
	// Pooled reports whether the store buffers files in such a pool.
	Pooled() bool
}
