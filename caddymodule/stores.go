package streamproxy

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
type Store interface {
	// Begin starts the files of one request. ctx is the request's: when it
	// is cancelled, what the batch is doing stops.
	Begin(ctx context.Context, logger *zap.Logger) Batch
}

// Batch is the files one request stores. Its methods are called from the
// request's goroutine only; a batch that started goroutines ends them all
// before Commit or Discard returns.
type Batch interface {
	// Create starts a file; its data is written to the returned StoredFile.
	Create(info FileInfo) (StoredFile, error)

	// Commit makes every file of the batch visible, once the whole form
	// ended cleanly.
	Commit() error

	// Discard removes every file of the batch, committed or not, and ends
	// whatever is in flight. It may be called after Commit.
	Discard()
}

// StoredFile is one file being written. Its writes come as the client's reads
// do, as small as one TLS record: it buffers them as its medium needs. Write
// errors are *uploadError when the store knows what went wrong (a full disk,
// an unreachable server).
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

// Location is where a stored file is. The file store sets Path; object
// stores set Bucket and Key.
type Location struct {
	Path   string `json:"path,omitempty"`
	Bucket string `json:"bucket,omitempty"`
	Key    string `json:"key,omitempty"`

	abs string // Path, absolute, for the backend
}

// partLimiter is implemented by stores that cannot take a file larger than
// some size, so that Validate can refuse a max_part_size they can't reach.
type partLimiter interface {
	maxFileSize() int64
}

// idleBounder is implemented by stores that hold a scarce buffer while a
// file arrives: each read from the client then gets idleBound to return, and
// the upload reads through the small read buffers, the memory for its part
// data being the store's pool.
type idleBounder interface {
	idleBound() time.Duration
}
