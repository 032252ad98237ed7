package streamproxy

import (
	"bufio"
	"sync"
	"sync/atomic"
)

// Part data is read from the client into one buffer per upload and written
// on from there, so a larger buffer means fewer reads and writes for the same
// bytes (figures in the README's Performance section). So that many uploads
// at once stay within bounded memory, only largeUploads uploads at a time get
// 512 KiB buffers; the others get 128 KiB. Every upload starts on 4 KiB ones
// and takes these only once its client proves fast (grow.go).
var (
	largeBufs  = newBufSet(512 << 10)
	smallBufs  = newBufSet(128 << 10)
	largeTaken atomic.Int64 // uploads holding largeBufs
)

const largeUploads = 64

// smallBody is the Content-Length under which an upload takes small buffers:
// its body fits in a few of them, and the large ones stay for the uploads
// whose reads and writes they cut.
const smallBody = 1 << 20

// bufSet pools the buffers of one size: the readers uploads read their
// client through, and the writers that gather what they send a backend, so
// that a client whose reads are small (a TLS record, an HTTP/2 frame) still
// reaches the backend in chunks as large as its reads could be.
type bufSet struct {
	size    int
	readers sync.Pool // *bufio.Reader
	writers sync.Pool // *bufio.Writer
}

func newBufSet(size int) *bufSet {
	s := &bufSet{size: size}
	s.readers.New = func() any { return bufio.NewReaderSize(nil, size) }
	s.writers.New = func() any { return bufio.NewWriterSize(nil, size) }
	return s
}

// getWriter returns a pooled writer of the set; Reset it to its destination,
// and give it back with putWriter.
func (s *bufSet) getWriter() *bufio.Writer { return s.writers.Get().(*bufio.Writer) }

func (s *bufSet) putWriter(w *bufio.Writer) {
	w.Reset(nil)
	s.writers.Put(w)
}

// takeBufs returns the buffer set for a new upload, the small one if small;
// release it with releaseBufs.
func takeBufs(small bool) *bufSet {
	if small {
		return smallBufs
	}
	if largeTaken.Add(1) <= largeUploads {
		return largeBufs
	}
	largeTaken.Add(-1)
	return smallBufs
}

func releaseBufs(s *bufSet) {
	if s == largeBufs {
		largeTaken.Add(-1)
	}
}
