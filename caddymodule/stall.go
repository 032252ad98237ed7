package streamproxy

import (
	"context"
	"io"
	"sync/atomic"
	"time"
)

// DefaultBackendStallTimeout is how long a backend may take no byte of an
// upload's body before the upload ends with 504, of the order of the minute
// a client is allowed to send nothing.
const DefaultBackendStallTimeout = time.Minute

// stallTimer ends a backend request whose backend takes no byte of the body
// for d: every write towards the backend arms it, and the write's return
// disarms it. When it fires it cancels the backend request, which closes
// the connection (HTTP/1) or resets the stream (HTTP/2), so the blocked
// write fails and the producer ends. Time spent waiting for the client is
// not counted.
type stallTimer struct {
	d      time.Duration
	t      *time.Timer
	fired  atomic.Bool
	cancel context.CancelFunc
}

func newStallTimer(d time.Duration, cancel context.CancelFunc) *stallTimer {
	if d <= 0 {
		d = DefaultBackendStallTimeout
	}
	s := &stallTimer{d: d, cancel: cancel}
	s.t = time.AfterFunc(d, s.fire)
	s.t.Stop()
	return s
}

func (s *stallTimer) fire() {
	s.fired.Store(true)
	s.cancel()
}

// stop disarms the timer for good once the request is over.
func (s *stallTimer) stop() { s.t.Stop() }

// watch returns w with every write bounded by the timer.
func (s *stallTimer) watch(w io.Writer) io.Writer { return stallWriter{w: w, s: s} }

type stallWriter struct {
	w io.Writer
	s *stallTimer
}

func (sw stallWriter) Write(p []byte) (int, error) {
	sw.s.t.Reset(sw.s.d)
	n, err := sw.w.Write(p)
	sw.s.t.Stop()
	return n, err
}
