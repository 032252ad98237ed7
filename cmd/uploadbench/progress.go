package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// progress shows, at most once a second, how many bytes uploads have sent
// and the rate, on one stderr line overwritten with \r. It shows nothing
// when stderr is not a terminal, and nothing for uploads under a second.
type progress struct {
	label string
	total int64 // bytes expected in all, 0 if unknown
	sent  atomic.Int64
	start time.Time
	stop  chan struct{}
	done  sync.WaitGroup
}

// startProgress starts showing the progress of uploads totalling total bytes.
// Stop must be called.
func startProgress(label string, total int64) *progress {
	p := &progress{label: label, total: total, start: time.Now(), stop: make(chan struct{})}
	if !stderrIsTerminal() {
		return p
	}
	p.done.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		shown := false
		for {
			select {
			case <-p.stop:
				if shown {
					fmt.Fprint(os.Stderr, "\r\033[K")
				}
				return
			case <-t.C:
				n := p.sent.Load()
				line := fmt.Sprintf("\r\033[K%s: %s", p.label, formatBytes(n))
				if p.total > 0 {
					line += fmt.Sprintf(" of %s (%.0f%%)", formatBytes(p.total), 100*float64(n)/float64(p.total))
				}
				line += fmt.Sprintf(", %.1f MiB/s", mibPerSec(n, time.Since(p.start)))
				fmt.Fprint(os.Stderr, line)
				shown = true
			}
		}
	})
	return p
}

// Stop clears the progress line.
func (p *progress) Stop() {
	close(p.stop)
	p.done.Wait()
}

// counting wraps r so that what is read through it is counted as sent.
func (p *progress) counting(r io.Reader) io.Reader {
	return &sentCounter{r: r, n: &p.sent}
}

type sentCounter struct {
	r io.Reader
	n *atomic.Int64
}

func (c *sentCounter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func stderrIsTerminal() bool {
	fi, err := os.Stderr.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
