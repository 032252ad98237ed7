package streamproxy

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The pool hands out at most n buffers, allocates only what is in use at
// once, and a wait for one ends with its context.
func TestBufferPool(t *testing.T) {
	p := newBufferPool(2, 16)
	ctx := context.Background()
	a, _ := p.get(ctx)
	b, _ := p.get(ctx)
	if cap(a) != 16 || len(a) != 0 || cap(b) != 16 {
		t.Fatalf("buffers of %d and %d bytes", cap(a), cap(b))
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := p.get(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third buffer: %v", err)
	}
	got := make(chan []byte)
	go func() {
		c, _ := p.get(ctx)
		got <- c
	}()
	a = append(a, 'x')
	p.put(a)
	if c := <-got; &c[:1][0] != &a[0] || len(c) != 0 {
		t.Fatal("the freed buffer was not reused, emptied")
	}
	if len(p.free) != 0 {
		t.Fatalf("%d buffers idle", len(p.free))
	}
}
