package streamproxy

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Defaults of min_rate: Apache mod_reqtimeout's MinRate, and its body
// timeout as the grace. A client at 1 KiB/s or more is never cut; one that
// stops sending, or trickles a byte every few seconds, is cut after the
// grace and at most an eighth of it more.
const (
	DefaultMinRate      = 500 // bytes per second
	DefaultMinRateGrace = 20 * time.Second
)

// minRateOff is min_rate's JSON value for no minimum (Caddyfile: min_rate off).
const minRateOff = -1

// pacer bounds each read of the client's body: the minimum rate (min_rate)
// and, while a store holds a scarce buffer for the upload, the store's
// idle bound. The client has a credit of time, at most the grace, from
// which every moment spent waiting for its bytes is taken, and to which each
// byte received adds 1/rate seconds (Apache's MinRate): a client at the rate
// or above keeps its whole grace whatever its pauses shorter than it; one
// that stops is cut after the grace; one at half the rate after twice the
// grace. The credit is capped at the grace so that a fast start buys no
// long trickle after it. Only time in a read counts: while the gateway
// itself waits (a backend slow to take the body, a store's pool empty), the
// client is not charged. A read is bounded by a read deadline, so a read
// that blocks is cut too. It is used by the goroutine reading the body only.
type pacer struct {
	rc    *http.ResponseController
	rate  float64       // bytes per second; 0: no minimum
	grace time.Duration // the credit's cap
	idle  time.Duration // the store's bound on one read; 0: none
	hard  time.Time     // the server's read_timeout, from the request's start; zero: none
	// clear: a deadline left armed between reads fails the body even
	// while the gateway is not reading (HTTP/2's is a timer).
	clear bool

	credit      time.Duration
	armed       time.Time // the deadline set; zero: none
	started     time.Time // of the read under way
	unsupported bool      // the server can't set read deadlines: the credit is checked as bytes arrive
}

// newPacer returns the pacer of u's body.
func (u *upload) newPacer() *pacer {
	p := &pacer{
		rc:    http.NewResponseController(u.w),
		grace: time.Duration(u.h.MinRateGrace),
		clear: u.r.ProtoMajor == 2,
	}
	if u.h.MinRate > 0 {
		p.rate = float64(u.h.MinRate)
	}
	p.credit = p.grace
	if srv, ok := u.r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv.ReadTimeout > 0 {
		p.hard = u.start.Add(time.Duration(srv.ReadTimeout))
	}
	return p
}

// before arms the read deadline for the read about to start.
func (p *pacer) before() {
	now := time.Now()
	p.started = now
	var d time.Duration
	switch {
	case p.rate > 0 && p.idle > 0:
		d = min(max(p.credit, 0), p.idle)
	case p.rate > 0:
		d = max(p.credit, 0)
	case p.idle > 0:
		d = p.idle
	default:
		if !p.armed.IsZero() { // the store's bound, for its file only
			p.set(p.hard)
		}
		return
	}
	if p.unsupported {
		return
	}
	target := now.Add(d)
	if !p.hard.IsZero() && p.hard.Before(target) {
		target = p.hard
	}
	// The deadline only moves later from read to read (the credit shrinks
	// no faster than time passes), so one set with some slack lasts many
	// reads of a fast client: no call for each.
	slack := d / 8
	if !p.clear && !p.armed.IsZero() && !p.armed.Before(target) && p.armed.Sub(target) <= slack {
		return
	}
	if !p.clear {
		target = target.Add(slack)
	}
	p.set(target)
}

// after charges the read that took n bytes and ended with err, and reports
// whether the client is too slow.
func (p *pacer) after(n int, err error) bool {
	if p.rate > 0 {
		p.credit += time.Duration(float64(n)/p.rate*float64(time.Second)) - time.Since(p.started)
		p.credit = min(p.credit, p.grace)
	}
	if p.clear && !p.armed.IsZero() {
		p.set(p.hard)
	}
	if p.rate == 0 || p.credit > 0 {
		return false
	}
	var ne net.Error
	return p.unsupported || (errors.As(err, &ne) && ne.Timeout())
}

// stop removes the bounds when the body is no longer read.
func (p *pacer) stop() {
	if !p.armed.IsZero() {
		p.set(p.hard)
	}
}

// set makes t the read deadline; zero is none. Caddy's read_idle_timeout
// reader, when the server has one, keeps it as a ceiling under its own.
func (p *pacer) set(t time.Time) {
	if err := p.rc.SetReadDeadline(t); err != nil {
		p.unsupported = true
		return
	}
	p.armed = t
}

// tooSlow is the failure of a client below the minimum rate.
func (p *pacer) tooSlow(err error) *uploadError {
	return &uploadError{
		Status:  http.StatusRequestTimeout,
		Code:    CodeClientTooSlow,
		Limit:   "min_rate",
		Message: fmt.Sprintf("client sent slower than min_rate (%.0f bytes/s) for longer than its grace (%s)", p.rate, p.grace),
		err:     err,
	}
}
