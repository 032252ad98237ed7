package formreader

import (
	"errors"
	"io"
)

// Source is what a Reader reads the client's body through (under the
// caller's bufio.Reader): it lets through at most budget bytes while a part
// header is being read (budget -1: no cap), so that an endless header never
// fills memory. Once a read fails, it fails every read after with the same
// error, which the Reader passes on as it is: the caller classifies the
// failures of its own reader (a timeout, a broken body limit).
type Source struct {
	r         io.Reader
	budget    int64
	exhausted bool
	err       error
}

// NewSource reads the body from r.
func NewSource(r io.Reader) *Source { return &Source{r: r, budget: -1} }

var errHeaderBudget = errors.New("part header exceeds its budget")

func (b *Source) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.budget == 0 {
		b.exhausted = true
		return 0, errHeaderBudget // not sticky: the header's end decides
	}
	if b.budget > 0 && int64(len(p)) > b.budget {
		p = p[:b.budget]
	}
	n, err := b.r.Read(p)
	if b.budget > 0 {
		b.budget -= int64(n)
	}
	b.err = err
	return n, err
}

// failure is the source's own error when err is, or wraps, it; nil when err
// is the parser's.
func (b *Source) failure(err error) error {
	if b.err != nil && b.err != io.EOF && errors.Is(err, b.err) {
		return b.err
	}
	return nil
}
