// Package bufpool is the bounded pool of part buffers the object stores
// (s3store, azurestore) gather file data in before it goes up: a store's
// memory for part data is at most its pool's n buffers, whatever the number
// of uploads; an upload that finds none free stops reading from its client
// (backpressure) until one is. Its two collectors are registered by the
// handler with its own metrics.
package bufpool

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors of every pool of the process together, registered by the
// handler (caddy_stream_proxy_store_buffers_in_use and
// caddy_stream_proxy_store_buffer_waits_total).
var (
	InUse = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "caddy", Subsystem: "stream_proxy", Name: "store_buffers_in_use",
		Help: "S3 part buffers in use, all handlers together."})
	Waits = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "caddy", Subsystem: "stream_proxy", Name: "store_buffer_waits_total",
		Help: "Times an S3 upload found no free part buffer and stopped reading from its client until one was."})
)

// Pool is at most n part buffers, allocated when first needed: as
// many as were ever in use at once. Where the system allows, they are
// mapped outside Go's heap (buffers_linux.go), so that the garbage collector,
// which lets the heap grow to twice what is live, does not double them.
// Every upload of a store shares its pool: its methods are safe for
// concurrent use.
type Pool struct {
	size   int
	slots  chan struct{} // one token per buffer in use
	mu     sync.Mutex
	free   [][]byte // allocated, not in use; reused last in, first out
	closed bool     // by Close: buffers go back to spareBuffers
}

// New returns a pool of at most n buffers of size bytes.
func New(n, size int) *Pool {
	return &Pool{size: size, slots: make(chan struct{}, n)}
}

// Get waits for a free buffer, empty, of the pool's size, or for ctx to end.
func (p *Pool) Get(ctx context.Context) ([]byte, error) {
	select {
	case p.slots <- struct{}{}:
	default:
		Waits.Inc()
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	InUse.Inc()
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b, nil
	}
	return spareBuffers.take(p.size), nil
}

// Put gives b, from Get, back.
func (p *Pool) Put(b []byte) {
	p.mu.Lock()
	if p.closed {
		spareBuffers.give(b)
	} else {
		p.free = append(p.free, b[:0])
	}
	p.mu.Unlock()
	<-p.slots
	InUse.Dec()
}

// InUse is how many of the pool's buffers are taken now.
func (p *Pool) InUse() int { return len(p.slots) }

// Close hands the pool's idle buffers, and those still in use when they come
// back, to spareBuffers.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, b := range p.free {
		spareBuffers.give(b)
	}
	p.free = nil
}

// spareBuffers keeps the part buffers of pools that were cleaned up (config
// reloads) for the next pools, by size. A buffer is never unmapped: a
// connection that failed may still be reading one after its request ended.
// Spare buffers give their memory back to the system until reused.
var spareBuffers = spares{bySize: map[int][][]byte{}}

type spares struct {
	mu     sync.Mutex
	bySize map[int][][]byte
}

func (s *spares) take(size int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.bySize[size]; len(l) > 0 {
		b := l[len(l)-1]
		s.bySize[size] = l[:len(l)-1]
		return b
	}
	return allocBuffer(size)[:0]
}

func (s *spares) give(b []byte) {
	releaseMemory(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bySize[cap(b)] = append(s.bySize[cap(b)], b[:0])
}
