package streamproxy

import (
	"bufio"
	"io"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
	"github.com/streamproxy/caddy-stream-proxy/store"
)

// Slow clients are most of an edge's open uploads and bring little per read,
// so every upload starts on small read and write buffers, as net/http's own
// connections do, and moves to its large ones (pools.go) only once a read
// from the client fills the small one: the client has proved fast. The move
// happens when the small buffer holds at most a few bytes, which are carried
// over, and no large buffer is held by an upload whose reads wait.

// startSize is the size of the buffers every upload starts on. A line
// between parts (maxLineSize and its line end) fits in it.
const startSize = 4 << 10

var startBufs = newBufSet(startSize)

// largeSet returns the buffer set u grows into, chosen on first use: the
// small one for a small body or a store whose pool bounds its reads, else
// the large one while fewer than largeUploads uploads hold it.
func (u *upload) largeSet() *bufSet {
	if u.bufs == nil {
		_, pooled := u.h.store.(store.IdleBounder) // see store.IdleBounder
		u.bufs = takeBufs(pooled || (u.r.ContentLength >= 0 && u.r.ContentLength < smallBody))
	}
	return u.bufs
}

// carry reads left, what the small buffer held, then the rest of the body.
type carry struct {
	buf  [formreader.MaxCarry]byte
	left []byte
	src  io.Reader
}

func (c *carry) Read(p []byte) (int, error) {
	if len(c.left) > 0 {
		n := copy(p, c.left)
		c.left = c.left[n:]
		return n, nil
	}
	return c.src.Read(p)
}

// growReader replaces u's read buffer, which holds left (at most formreader.MaxCarry
// bytes), with one of its large set.
func (u *upload) growReader(left []byte) *bufio.Reader {
	big := u.largeSet().readers.Get().(*bufio.Reader)
	c := &carry{src: u.src}
	c.left = c.buf[:copy(c.buf[:], left)]
	big.Reset(c)
	u.in.Reset(nil)
	startBufs.readers.Put(u.in)
	u.in = big
	return big
}

// newFlusher returns an idleFlusher for u's backend writes, which starts on
// a small buffer, held only between two reads, and grows into u's large set;
// release it with release.
func (u *upload) newFlusher() *idleFlusher {
	f := newIdleFlusher(nil)
	f.grow = u.largeSet
	return f
}
