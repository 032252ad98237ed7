package streamproxy

import (
	"context"
	"sync"
)

// bufferPool is at most n part buffers, allocated when first needed: as
// many as were ever in use at once. Where the system allows, they are
// mapped outside Go's heap (buffers_linux.go), so that the garbage collector,
// which lets the heap grow to twice what is live, does not double them.
type bufferPool struct {
	size   int
	slots  chan struct{} // one token per buffer in use
	mu     sync.Mutex
	free   [][]byte // allocated, not in use; reused last in, first out
	closed bool     // by Cleanup: buffers go back to spareBuffers
}

func newBufferPool(n, size int) *bufferPool {
	return &bufferPool{size: size, slots: make(chan struct{}, n)}
}

// get waits for a free buffer, or for ctx to end.
func (p *bufferPool) get(ctx context.Context) ([]byte, error) {
	select {
	case p.slots <- struct{}{}:
	default:
		if metrics.bufWaits != nil {
			metrics.bufWaits.Inc()
		}
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if metrics.bufInUse != nil {
		metrics.bufInUse.Inc()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b, nil
	}
	return spareBuffers.take(p.size), nil
}

func (p *bufferPool) put(b []byte) {
	p.mu.Lock()
	if p.closed {
		spareBuffers.give(b)
	} else {
		p.free = append(p.free, b[:0])
	}
	p.mu.Unlock()
	<-p.slots
	if metrics.bufInUse != nil {
		metrics.bufInUse.Dec()
	}
}

// close hands the pool's idle buffers, and those still in use when they come
// back, to spareBuffers.
func (p *bufferPool) close() {
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
