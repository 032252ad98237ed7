package streamproxy

import (
	"bufio"
	"io"
	"sync"
	"time"
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

// flushDelay is how long the client may pause before what is buffered for the
// backend is sent on without waiting for more.
const flushDelay = 2 * time.Millisecond

// passSize is the size from which a run of part data goes to the backend as
// it is, in a write of its own, not copied into the writer first: a client
// read over plain HTTP brings that much at once.
const passSize = 128 << 10

// idleFlusher buffers what goes to the backend in out, and sends it on when
// out is full, when flushed, or once the client has sent nothing for
// flushDelay: while the client keeps sending, part data leaves in writes as
// large as out, whatever the size of the client's reads (a TLS record each);
// when it pauses, the backend still has every byte within milliseconds. A
// write of passSize or more is sent on unbuffered, after what out holds.
// The producer writes; the timer's flush runs on a goroutine of its own, and
// always has ended once end has returned.
type idleFlusher struct {
	mu    sync.Mutex // held while out is written or flushed
	out   *bufio.Writer
	dst   io.Writer // out's destination
	err   error     // a flush on the timer failed; the producer's next write returns it
	timer *time.Timer
	delay time.Duration
	armed bool           // the producer's: the timer is set
	runs  sync.WaitGroup // a set timer not yet stopped, or its flush

	// grow, if set, returns the set whose writer replaces out, a small
	// one, at the write after one that filled out (full), out flushed (grow.go).
	// Until then out is borrowed from startBufs at the first write after a
	// read from the client and given back, flushed, before the next: an
	// upload whose read waits holds no write buffer.
	grow func() *bufSet
	full bool
	set  *bufSet // out's, once grown
}

// newIdleFlusher returns an idleFlusher buffering in out, or in a writer
// borrowed for each run of writes between two reads if out is nil and grow
// set; reset it to its destination before the first write.
func newIdleFlusher(out *bufio.Writer) *idleFlusher {
	return &idleFlusher{out: out, delay: flushDelay}
}

// reset directs f's writes to dst.
func (f *idleFlusher) reset(dst io.Writer) {
	if f.out != nil {
		f.out.Reset(dst)
	}
	f.dst = dst
}

func (f *idleFlusher) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	if f.grow != nil {
		switch {
		case f.full:
			if err := f.flushLocked(); err != nil {
				return 0, err
			}
			f.swap()
		case f.out == nil:
			f.borrow()
			fallthrough
		default:
			f.full = len(p) > f.out.Available()
		}
	}
	if len(p) < passSize {
		return f.out.Write(p)
	}
	if err := f.out.Flush(); err != nil {
		return 0, err
	}
	return f.dst.Write(p)
}

// writeHeader is Write for a part header (formWriter): it never makes f
// grow. A header's size is the client's to choose; the large buffers are
// for a fast client's data.
func (f *idleFlusher) writeHeader(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	if f.out == nil {
		f.borrow() // the small writer, as Write borrows it
	}
	return f.out.Write(p)
}

// swap moves f from its small writer, empty, to one of the set grow returns.
func (f *idleFlusher) swap() {
	f.set = f.grow()
	f.grow = nil
	big := f.set.getWriter()
	big.Reset(f.dst)
	f.giveBack()
	f.out = big
}

// flushLocked sends what out holds, if f holds a writer; f.mu is held.
func (f *idleFlusher) flushLocked() error {
	if f.out == nil {
		return nil
	}
	return f.out.Flush()
}

// borrow takes a small writer for the writes until the next read.
func (f *idleFlusher) borrow() {
	f.out = startBufs.getWriter()
	f.out.Reset(f.dst)
}

// giveBack returns the small writer, empty, if f holds one.
func (f *idleFlusher) giveBack() {
	if f.out != nil {
		startBufs.putWriter(f.out)
		f.out = nil
	}
}

// release gives f's writer back to its pool, once f is done with and ended.
func (f *idleFlusher) release() {
	if f.set == nil {
		f.giveBack()
		return
	}
	f.set.putWriter(f.out)
	f.out = nil
}

// Flush sends what is buffered now.
func (f *idleFlusher) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	return f.flushLocked()
}

// beforeRead sets the timer, when something waits in out, before a read from
// the client that may block, or on the small writer sends it at once and
// gives the writer back; afterRead stops the timer.
func (f *idleFlusher) beforeRead() {
	f.mu.Lock()
	pending := f.out != nil && f.out.Buffered() > 0
	if f.grow != nil && f.out != nil {
		// Still on the small writer: the client has not proved fast, and
		// its next read likely waits. Send now, as reverse_proxy would,
		// with no timer and no goroutine to run it, and hold no buffer
		// while the read waits.
		if err := f.out.Flush(); err != nil && f.err == nil {
			f.err = writeError{err}
		}
		if f.out.Buffered() == 0 {
			f.giveBack()
		}
		pending = false
	}
	f.mu.Unlock()
	if pending {
		f.runs.Add(1)
		f.armed = true
		if f.timer == nil {
			// Made on first use: an upload that never grows needs none.
			f.timer = time.AfterFunc(f.delay, f.fire)
		} else {
			f.timer.Reset(f.delay)
		}
	}
}

func (f *idleFlusher) afterRead() {
	if f.armed {
		f.armed = false
		if f.timer.Stop() {
			f.runs.Done() // it will not run
		}
	}
}

func (f *idleFlusher) fire() {
	defer f.runs.Done()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil && f.out != nil && f.out.Buffered() > 0 {
		if err := f.out.Flush(); err != nil {
			f.err = writeError{err}
		}
	}
}

// end stops the timer and waits for a flush under way.
func (f *idleFlusher) end() {
	f.afterRead()
	f.runs.Wait()
}
