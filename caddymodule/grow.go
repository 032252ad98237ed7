package streamproxy

import (
	"bufio"
)

// Slow clients are most of an edge's open uploads and bring little per read,
// so every upload starts on small read and write buffers, as net/http's own
// connections do, and moves to its large ones (pools.go) only once a read
// from the client fills the small one: the client has proved fast. The move
// happens when the small buffer is empty, so nothing is copied, and no large
// buffer is held by an upload whose reads wait.

// startSize is the size of the buffers every upload starts on. A line
// between parts (maxLineSize and its line end) fits in it.
const startSize = 4 << 10

var startBufs = newBufSet(startSize)

// largeSet returns the buffer set u grows into, chosen on first use: the
// small one for a small body or a store whose pool bounds its reads, else
// the large one while fewer than largeUploads uploads hold it.
func (u *upload) largeSet() *bufSet {
	if u.bufs == nil {
		_, pooled := u.h.store.(idleBounder) // see idleBounder
		u.bufs = takeBufs(pooled || (u.r.ContentLength >= 0 && u.r.ContentLength < smallBody))
	}
	return u.bufs
}

// growReader replaces u's read buffer, empty, with one of its large set.
func (u *upload) growReader() *bufio.Reader {
	big := u.largeSet().readers.Get().(*bufio.Reader)
	big.Reset(u.src)
	u.in.Reset(nil)
	startBufs.readers.Put(u.in)
	u.in = big
	return big
}

// newFlusher returns an idleFlusher for u's backend writes, which starts on
// a small buffer and grows into u's large set; release it with release.
func (u *upload) newFlusher() *idleFlusher {
	f := newIdleFlusher(startBufs.getWriter())
	f.grow = u.largeSet
	return f
}
