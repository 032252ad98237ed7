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
// 512 KiB buffers; the others get 128 KiB.
var (
	largeBufs  = newBufSet(512 << 10)
	smallBufs  = newBufSet(128 << 10)
	largeTaken atomic.Int64 // uploads holding largeBufs
)

const largeUploads = 64

// bufSet pools the read buffers of one size.
type bufSet struct {
	size    int
	readers sync.Pool // *bufio.Reader
}

func newBufSet(size int) *bufSet {
	s := &bufSet{size: size}
	s.readers.New = func() any { return bufio.NewReaderSize(nil, size) }
	return s
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

// writerSize is the size of the buffered writers in front of a backend
// request or a stored file. They gather part headers, small fields and small
// client reads (a TLS record each) into one write; a run of part data larger
// than them is written past them.
const writerSize = 128 << 10

var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writerSize) }}

// getWriter returns a pooled buffered writer; Reset it to its destination.
func getWriter() *bufio.Writer { return writerPool.Get().(*bufio.Writer) }

func putWriter(w *bufio.Writer) {
	w.Reset(nil)
	writerPool.Put(w)
}
