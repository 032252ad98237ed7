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
		ps, ok := u.h.store.(store.Pooled) // see store.Pooled
		pooled := ok && ps.Pooled()
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

// parked is what the small read buffer held when it was given back before a
// read that may wait (parkReader), with the first byte that read brought. Its
// first read hands all of it out and, if that byte came, goes on to read
// what the client sent with it, which the server's connection has buffered:
// the client's next bytes arrive in one read, not byte by byte.
type parked struct {
	buf  [formreader.MaxCarry + 1]byte
	left []byte
	more bool
	src  io.Reader
}

func (c *parked) Read(p []byte) (int, error) {
	n := copy(p, c.left)
	c.left = c.left[n:]
	if len(c.left) > 0 || !c.more || n == len(p) {
		if n > 0 {
			return n, nil
		}
		return c.src.Read(p)
	}
	c.more = false
	m, err := c.src.Read(p[n:])
	return n + m, err
}

// parkReader gives back u's small read buffer, which holds left (at most
// formreader.MaxCarry bytes), while it waits for the client's next byte, read
// into u.parked, then goes on with a small buffer from the pool, which reads
// left, that byte and what came with it first. A slow client's upload holds
// no read buffer of its own while its read waits: the server's connection
// buffers what arrives, as it does for reverse_proxy.
func (u *upload) parkReader(left []byte) *bufio.Reader {
	c := &u.parked
	k := copy(c.buf[:], left)
	u.in.Reset(nil)
	startBufs.readers.Put(u.in)
	u.in = nil
	n, err := u.src.Read(c.buf[k : k+1])
	c.left, c.more, c.src = c.buf[:k+n], n == 1 && err == nil, u.src
	u.in = startBufs.readers.Get().(*bufio.Reader)
	u.in.Reset(c)
	return u.in
}

// newFlusher returns an idleFlusher for u's backend writes, which starts on
// a small buffer, held only between two reads, and grows into u's large set;
// release it with release.
func (u *upload) newFlusher() *idleFlusher {
	f := newIdleFlusher(nil)
	f.grow = u.largeSet
	return f
}
