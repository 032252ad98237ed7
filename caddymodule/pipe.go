package streamproxy

import (
	"io"
	"sync"
)

// handoff is a synchronous in-memory pipe, like io.Pipe, for a writer whose
// writes are large (part data straight from the client's read buffer) and a
// reader whose reads are small (the transport's copy buffer): a Write hands
// its slice over whole and returns once the reader has taken all of it, and
// the reader takes it in as many Reads as it needs. io.Pipe switches between
// the two goroutines on every Read; this switches once per Write.
type handoff struct {
	mu   sync.Mutex
	cond sync.Cond
	buf  []byte // what the current Write has not yet handed over
	werr error  // the writer's end: io.EOF or its error; reads fail with it once buf is empty
	rerr error  // the reader's end: writes fail with it
}

func newHandoff() *handoff {
	p := &handoff{}
	p.cond.L = &p.mu
	return p
}

// Write blocks until the reader has taken all of b, or one end is closed.
func (p *handoff) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rerr != nil {
		return 0, p.rerr
	}
	if p.werr != nil {
		return 0, io.ErrClosedPipe
	}
	p.buf = b
	p.cond.Broadcast()
	for len(p.buf) > 0 && p.rerr == nil {
		p.cond.Wait()
	}
	n := len(b) - len(p.buf)
	p.buf = nil
	if n < len(b) {
		return n, p.rerr
	}
	return n, nil
}

// Read takes what the current Write offers, waiting for one if there is none.
func (p *handoff) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.buf) == 0 && p.werr == nil && p.rerr == nil {
		p.cond.Wait()
	}
	if p.rerr != nil {
		return 0, io.ErrClosedPipe
	}
	if len(p.buf) == 0 {
		return 0, p.werr
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	if len(p.buf) == 0 {
		p.cond.Broadcast()
	}
	return n, nil
}

// CloseWrite ends the stream: reads return err once the data handed over is
// taken, or io.EOF for a nil err.
func (p *handoff) CloseWrite(err error) {
	if err == nil {
		err = io.EOF
	}
	p.mu.Lock()
	if p.werr == nil {
		p.werr = err
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}

// CloseRead fails the writer's current and later writes with err, or
// io.ErrClosedPipe for a nil err.
func (p *handoff) CloseRead(err error) {
	if err == nil {
		err = io.ErrClosedPipe
	}
	p.mu.Lock()
	if p.rerr == nil {
		p.rerr = err
	}
	p.cond.Broadcast()
	p.mu.Unlock()
}
