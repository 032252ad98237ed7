package streamproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
)

// checkRequest refuses what can be refused before reading the body, so that
// no 100 Continue is sent for it.
func (u *upload) checkRequest() *uploadError {
	if u.r.ContentLength > u.h.MaxBodySize {
		return limitError(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "max_body_size", u.h.MaxBodySize,
			fmt.Sprintf("Content-Length %d", u.r.ContentLength))
	}
	b, err := boundaryOf(u.r.Header.Get("Content-Type"))
	if err != nil {
		return malformed(err)
	}
	u.boundary = b
	return nil
}

// openBody starts reading the client's body through a pooled buffer, small
// until the client proves fast (grow.go).
// The caller must call closeBody.
func (u *upload) openBody() *formreader.Reader {
	u.src = formreader.NewSource(u.body)
	u.in = startBufs.readers.Get().(*bufio.Reader) // see grow.go
	u.in.Reset(u.src)
	f := formreader.New(u.in, u.src, u.boundary, u.h.formLimits(), u)
	f.SetGrow(u.growReader)
	f.SetPark(u.parkReader)
	return f
}

// formLimits are the limits of the config the form reader enforces.
func (h *Handler) formLimits() formreader.Limits {
	return formreader.Limits{
		MaxParts: h.MaxParts, MaxPartSize: h.MaxPartSize, MaxFieldSize: h.MaxFieldSize,
		MaxPartHeaderSize: h.MaxPartHeaderSize, MaxFormHeaderSize: h.MaxFormHeaderSize,
		AllowFields: h.AllowFields, AllowTypes: h.AllowTypes, VerifyTypes: h.VerifyTypes, Hash: h.Hash,
	}
}

func (u *upload) closeBody() {
	if u.body != nil && u.body.pace != nil {
		u.body.pace.stop()
	}
	if u.in != nil {
		set := startBufs
		if u.in.Size() != startSize {
			set = u.bufs
		}
		u.in.Reset(nil)
		set.readers.Put(u.in)
		u.in = nil
	}
	if u.bufs != nil {
		releaseBufs(u.bufs)
		u.bufs = nil
	}
}

// clientBody counts the client's body and enforces max_body_size while it
// streams. A failure to read is marked as the client's.
type clientBody struct {
	r    io.Reader
	n    atomic.Int64 // read by the admin API while the upload runs
	max  int64
	eof  atomic.Bool // the body was read to its end
	pace *pacer      // bounds each read: min_rate, and a store's idle bound (see boundIdle)
	// to is the backend request the reads feed, while one does; set by
	// upload.feed only.
	to bodyLeg
}

// bodyLeg is what the reads of the client's body are written on to: a
// backend request's body (see upload.feed).
type bodyLeg struct {
	stop *atomic.Bool // set once the request has ended: reads fail
	out  *idleFlusher // if set, told of each read
}

// boundIdle bounds each read by d too, as a store that holds a scarce buffer
// while a file arrives asks (store.IdleBounder), so that a client that
// stalls mid-file lets the buffer go (408, client_timeout), as does one below
// min_rate (408, client_too_slow); until unbound is called. d 0: no bound.
func (c *clientBody) boundIdle(d time.Duration) (unbound func()) {
	c.pace.idle = d
	return func() { c.pace.idle = 0 }
}

func (c *clientBody) Read(p []byte) (int, error) {
	if c.to.stop != nil && c.to.stop.Load() {
		return 0, writeError{errBackendAnswered}
	}
	c.pace.before()
	if c.to.out != nil {
		c.to.out.beforeRead()
		defer c.to.out.afterRead()
	}
	if c.n.Load() >= c.max {
		// Allow one more byte through to tell "exactly max" from "over".
		p = p[:min(len(p), 1)]
	}
	n, err := c.r.Read(p)
	if c.pace.after(n, err) {
		c.n.Add(int64(n))
		return 0, c.pace.tooSlow(err)
	}
	if c.n.Add(int64(n)) > c.max {
		return 0, limitError(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "max_body_size", c.max, "request body")
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return n, clientReadError(err)
	}
	c.eof.Store(err == io.EOF)
	return n, err
}
