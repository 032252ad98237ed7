package streamproxy

import (
	"bufio"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
)

// upload is the state of one intercepted request. The handler's goroutine
// makes it and ends it. In between, the form is read, and the fields below
// the client's body are written, by one goroutine at a time: the handler's,
// or the producer of a backend body (see backendBody), which has always ended
// when roundTrip returns. The admin API reads the atomics, and current under
// mu, while the upload runs.
type upload struct {
	h      *Handler
	w      http.ResponseWriter
	r      *http.Request
	repl   *caddy.Replacer
	logger atomic.Pointer[zap.Logger] // made on first use (log)
	id     string
	start  time.Time

	boundary string
	body     *clientBody
	src      *formreader.Source // under in
	in       *bufio.Reader      // buffered client body: startBufs', then bufs' (grow.go)
	bufs     *bufSet            // the large set, once chosen (largeSet); nil before
	parked   parked             // what in held while a read waited without it (grow.go)

	sent  atomic.Int64 // part data bytes delivered to backends or the store
	parts atomic.Int64 // parts seen

	mu        sync.Mutex          // guards current and part
	current   *formreader.PartRef // the part being read, nil between parts; read by the admin API
	part      partVars            // the last part started, for the placeholders
	partStart time.Time

	fieldBytes    int             // text field bytes kept as placeholders
	droppedFields map[string]bool // text fields read but too long to keep as placeholders
}

// result is how a mode's handling of an upload ended: the status the client
// was answered with, or the failure to answer it with, and the parts handled
// so far, which per_part and store mode report beside a failure.
type result struct {
	status  int
	failure *uploadError
	parts   []partResult
}

func failed(e *uploadError, parts []partResult) result {
	return result{status: e.Status, failure: e, parts: parts}
}

func newUpload(h *Handler, w http.ResponseWriter, r *http.Request) *upload {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	// The body is set here, before the admin API can see the upload, and
	// never replaced: the API reads it while the upload runs.
	u := &upload{h: h, w: w, r: r, repl: repl, start: time.Now(), body: &clientBody{r: r.Body, max: h.MaxBodySize}}
	u.body.pace = u.newPacer()
	u.id, _ = repl.GetString("http.request.uuid")
	return u
}

// partVars are the values of the part placeholders ({http.stream_proxy.part.*}),
// as they were when the part started. The replacer asks the upload for them
// and the mode (placeholder): set in its map, which Caddy's own keys have
// filled, they would grow it, and the larger map be held for as long as each
// upload lasts.
type partVars struct {
	ref          *formreader.PartRef // index, field, filename; nil before the first part
	contentType  string
	detectedType string
}

// placeholder is the replacer's provider of the mode and part placeholders.
func (u *upload) placeholder(key string) (any, bool) {
	if key == placeholderPrefix+"mode" {
		return u.h.Mode, true
	}
	name, ok := strings.CutPrefix(key, placeholderPrefix+"part.")
	if !ok {
		return nil, false
	}
	u.mu.Lock()
	v := u.part
	u.mu.Unlock()
	if v.ref == nil {
		return nil, false
	}
	switch name {
	case "index":
		return v.ref.Index, true
	case "field":
		return v.ref.Field, true
	case "filename":
		return v.ref.Filename, true
	case "content_type":
		return v.contentType, true
	case "detected_type":
		return v.detectedType, true
	}
	return nil, false
}

// log is the handler's logger with the upload's id. It is made on first
// use: most uploads log nothing, and a logger with a field of its own holds
// a copy of the encoder and its buffer for as long as the upload lasts. The
// handler's goroutine and the body's producer may both log.
func (u *upload) log() *zap.Logger {
	if l := u.logger.Load(); l != nil {
		return l
	}
	l := u.h.logger.With(zap.String("upload", u.id))
	if u.logger.CompareAndSwap(nil, l) {
		return l
	}
	return u.logger.Load()
}

// check is log's Check, which makes the logger only for an entry written.
func (u *upload) check(lvl zapcore.Level, msg string) *zapcore.CheckedEntry {
	if !u.h.logger.Core().Enabled(lvl) {
		return nil
	}
	return u.log().Check(lvl, msg)
}

// begin makes the upload visible to the admin API and the metrics.
func (u *upload) begin() {
	track(u)
	metrics.inFlight.WithLabelValues(u.h.Mode).Inc()
	u.repl.Map(u.placeholder)
}

// end records how the upload ended: metrics, placeholders, the access log's
// extra fields and a debug summary.
func (u *upload) end(res result) {
	mode := u.h.Mode
	// Last, so that an upload no longer in flight has been counted.
	defer func() {
		untrack(u)
		metrics.inFlight.WithLabelValues(mode).Dec()
	}()

	var received int64
	if u.body != nil {
		received = u.body.n.Load()
	}
	sent := u.sent.Load()
	metrics.received.WithLabelValues(mode).Add(float64(received))
	metrics.sent.WithLabelValues(mode).Add(float64(sent))
	if u.current != nil {
		metrics.parts.WithLabelValues(mode, "failed").Inc()
	}

	outcome := outcomeOK
	code := ""
	switch e := res.failure; {
	case e != nil:
		code = e.Code
		metrics.rejections.WithLabelValues(mode, e.Code).Inc()
		switch {
		case e.Code == CodeClientGone || e.Code == CodeClientTimeout || e.Code == CodeClientTooSlow:
			outcome = outcomeClientGone
		case e.Code == CodeBackendRejected:
			outcome = outcomeBackendError
		case e.Status >= 500:
			outcome = outcomeFailed
		default:
			outcome = outcomeRefused
		}
	case res.status >= 400:
		outcome = outcomeBackendError
	}
	metrics.uploads.WithLabelValues(mode, outcome).Inc()

	parts := u.parts.Load()
	u.repl.Set(placeholderPrefix+"parts", parts)
	u.repl.Set(placeholderPrefix+"bytes_in", received)
	u.repl.Set(placeholderPrefix+"bytes_out", sent)
	u.repl.Set(placeholderPrefix+"outcome", outcome)

	summary := zap.Object("stream_proxy", zapcore.ObjectMarshalerFunc(func(enc zapcore.ObjectEncoder) error {
		enc.AddString("mode", mode)
		enc.AddInt64("parts", parts)
		enc.AddInt64("bytes_in", received)
		enc.AddInt64("bytes_out", sent)
		enc.AddString("outcome", outcome)
		if code != "" {
			enc.AddString("code", code)
		}
		return nil
	}))
	if extra, ok := u.r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Add(summary)
	}
	if ce := u.check(zap.DebugLevel, "upload finished"); ce != nil {
		ce.Write(summary, zap.Int("status", res.status), zap.Duration("duration", time.Since(u.start)))
	}
}

// partStarted and partEnded are called by the form reader around each part.
func (u *upload) PartStarted(p *formreader.Part) {
	u.parts.Add(1)
	ref := p.Ref()
	u.mu.Lock()
	u.current = ref
	u.part = partVars{ref: ref, contentType: p.ContentType, detectedType: p.DetectedType}
	u.mu.Unlock()
	u.partStart = time.Now()
}

func (u *upload) PartEnded(p *formreader.Part) {
	d := time.Since(u.partStart)
	u.mu.Lock()
	u.current = nil
	u.mu.Unlock()
	metrics.parts.WithLabelValues(u.h.Mode, outcomeOK).Inc()
	metrics.partSeconds.WithLabelValues(u.h.Mode).Observe(d.Seconds())
	if ce := u.check(zap.DebugLevel, "part done"); ce != nil {
		ce.Write(zap.Int("part", p.Index), zap.String("field", p.Field), zap.Bool("file", p.IsFile),
			zap.Int64("bytes", p.Size), zap.Duration("duration", d))
	}
}

// snapshot describes the upload for the admin API.
func (u *upload) snapshot(now time.Time) uploadStatus {
	s := uploadStatus{
		ID: u.id, RemoteAddr: u.r.RemoteAddr, Method: u.r.Method, Host: u.r.Host, URI: u.r.RequestURI,
		Mode: u.h.Mode, Started: u.start, Parts: u.parts.Load(),
	}
	s.Bytes = u.body.n.Load()
	u.mu.Lock()
	if u.current != nil {
		c := *u.current
		s.CurrentPart = &c
	}
	u.mu.Unlock()
	if secs := now.Sub(u.start).Seconds(); secs > 0 {
		s.Rate = int64(float64(s.Bytes) / secs) // whole bytes per second
	}
	return s
}
