package bufpool

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The pool hands out at most n buffers, allocates only what is in use at
// once, and a wait for one ends with its context.
func TestBufferPool(t *testing.T) {
	p := New(2, 16)
	ctx := context.Background()
	a, _ := p.Get(ctx)
	b, _ := p.Get(ctx)
	if cap(a) != 16 || len(a) != 0 || cap(b) != 16 {
		t.Fatalf("buffers of %d and %d bytes", cap(a), cap(b))
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := p.Get(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third buffer: %v", err)
	}
	got := make(chan []byte)
	go func() {
		c, _ := p.Get(ctx)
		got <- c
	}()
	a = append(a, 'x')
	p.Put(a)
	if c := <-got; &c[:1][0] != &a[0] || len(c) != 0 {
		t.Fatal("the freed buffer was not reused, emptied")
	}
	if len(p.free) != 0 {
		t.Fatalf("%d buffers idle", len(p.free))
	}
}

// versitygw finds the S3 server xcaddy.mk installs into ../bin, or where
// SP_VERSITYGW says; without it the test skips, except in CI.
func versitygw(t *testing.T) string {
	t.Helper()
	p := os.Getenv("SP_VERSITYGW")
	if p == "" {
		p, _ = filepath.Abs(filepath.Join("..", "bin", "versitygw"))
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("versitygw not found at %s", p)
		}
		t.Skipf("versitygw not found at %s (make -f xcaddy.mk versitygw)", p)
	}
	return p
}
