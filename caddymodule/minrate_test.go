package streamproxy

import (
	"os"
	"testing"
	"time"
)

// TestPacerCredit checks min_rate's arithmetic: waiting spends the credit,
// bytes earn 1/rate seconds each, the credit never exceeds the grace (a fast
// start buys no long pause), and only a timed-out read with no credit left
// is too slow.
func TestPacerCredit(t *testing.T) {
	p := &pacer{rate: 1000, grace: 10 * time.Second, credit: 10 * time.Second}
	read := func(n int, took time.Duration, err error) bool {
		p.started = time.Now().Add(-took)
		return p.after(n, err)
	}
	near := func(want time.Duration) {
		t.Helper()
		if d := p.credit - want; d < -100*time.Millisecond || d > 100*time.Millisecond {
			t.Fatalf("credit %v, want about %v", p.credit, want)
		}
	}

	if read(0, 4*time.Second, nil) {
		t.Fatal("cut with credit left")
	}
	near(6 * time.Second)
	read(2000, time.Second, nil) // 2 s earned, 1 s spent
	near(7 * time.Second)
	read(10<<20, 0, nil) // hours' worth at once: capped
	near(10 * time.Second)
	read(500, 5*time.Second, nil) // half the rate: half the time comes back
	near(5500 * time.Millisecond)
	if read(0, 3*time.Second, os.ErrDeadlineExceeded) {
		t.Fatal("a timeout with credit left (another bound's) is not min_rate's")
	}
	if !read(0, 3*time.Second, os.ErrDeadlineExceeded) {
		t.Fatal("a timeout with the credit spent: want too slow")
	}

	off := &pacer{grace: 10 * time.Second}
	off.started = time.Now().Add(-time.Hour)
	if off.after(0, os.ErrDeadlineExceeded) {
		t.Fatal("min_rate off cut a client")
	}
}
