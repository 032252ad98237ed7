package streamproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Part data is read from the client into one buffer per upload and written
// on from there: to the backend connection (see pipeBody.WriteTo), into the
// pipe, or to a file. A buffer-full costs one read from the client and one
// write on, so larger buffers cost the gateway less: in `uploadbench compare`
// (1 GiB, 9 runs) forward mode used 0.60, 0.52 to 0.61, 0.48 to 0.51 and 0.44
// CPU s/GiB with 256 KiB, 512 KiB, 1 MiB and 2 MiB. Throughput stayed at 1.00
// to 1.05x reverse_proxy's: on a shared machine, the client and backend spent
// what the gateway saved, reading and writing in larger pieces. So that many
// uploads at once stay within bounded memory, only largeUploads uploads at a
// time get 512 KiB buffers; the others get 128 KiB.
var (
	largeBufs  = newBufSet(512 << 10)
	smallBufs  = newBufSet(128 << 10)
	largeTaken atomic.Int64 // uploads holding largeBufs
)

const largeUploads = 64

// bufSet pools the read buffers of one size.
type bufSet struct {
	size    int
	readers sync.Pool // *bufio.Reader
}

func newBufSet(size int) *bufSet {
	s := &bufSet{size: size}
	s.readers.New = func() any { return bufio.NewReaderSize(nil, size) }
	return s
}

// takeBufs returns the buffer set for a new upload; release it with
// releaseBufs.
func takeBufs() *bufSet {
	if largeTaken.Add(1) <= largeUploads {
		return largeBufs
	}
	largeTaken.Add(-1)
	return smallBufs
}

func releaseBufs(s *bufSet) {
	if s == largeBufs {
		largeTaken.Add(-1)
	}
}

// writerSize is the size of the buffered writers in front of a backend
// request or a stored file. They gather part headers, small fields and small
// client reads (a TLS record each) into one write, so that each handoff to
// the transport carries several of its 32 KiB reads; a run of part data
// larger than them is written past them.
const writerSize = 128 << 10

var (
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writerSize) }}
)

// getWriter returns a pooled buffered writer; Reset it to its destination.
func getWriter() *bufio.Writer { return writerPool.Get().(*bufio.Writer) }

func putWriter(w *bufio.Writer) {
	w.Reset(nil)
	writerPool.Put(w)
}

// upload is the state of one intercepted request.
type upload struct {
	h      *Handler
	w      http.ResponseWriter
	r      *http.Request
	repl   *caddy.Replacer
	logger *zap.Logger
	id     string
	start  time.Time

	boundary string
	body     *clientBody
	in       *bufio.Reader // buffered client body
	bufs     *bufSet       // in's

	sent  atomic.Int64 // part data bytes delivered to backends or the store
	parts atomic.Int64 // parts seen

	mu        sync.Mutex // guards current, read by the admin API
	current   *partRef   // the part being read, nil between parts
	partStart time.Time

	fieldBytes int          // text field bytes kept as placeholders
	partsSoFar []partResult // reported with an error in per_part and store mode
	status     int          // what the client was answered
	failure    *uploadError // why the upload failed, if it did
}

func newUpload(h *Handler, w http.ResponseWriter, r *http.Request) *upload {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	u := &upload{h: h, w: w, r: r, repl: repl, start: time.Now()}
	u.id, _ = repl.GetString("http.request.uuid")
	u.logger = h.logger.With(zap.String("upload", u.id))
	return u
}

// begin makes the upload visible to the admin API and the metrics.
func (u *upload) begin() {
	inFlight.Store(u, u)
	metrics.inFlight.WithLabelValues(u.h.Mode).Inc()
	u.repl.Set(placeholderPrefix+"mode", u.h.Mode)
}

// end records how the upload ended: metrics, placeholders, the access log's
// extra fields and a debug summary.
func (u *upload) end() {
	mode := u.h.Mode
	// Last, so that an upload no longer in flight has been counted.
	defer func() {
		inFlight.Delete(u)
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
	switch e := u.failure; {
	case e != nil:
		code = e.Code
		metrics.rejections.WithLabelValues(mode, e.Code).Inc()
		switch {
		case e.Code == CodeClientGone || e.Code == CodeClientTimeout:
			outcome = outcomeClientGone
		case e.Code == CodeBackendRejected:
			outcome = outcomeBackendError
		case e.Status >= 500:
			outcome = outcomeFailed
		default:
			outcome = outcomeRefused
		}
	case u.status >= 400:
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
	if ce := u.logger.Check(zap.DebugLevel, "upload finished"); ce != nil {
		ce.Write(summary, zap.Int("status", u.status), zap.Duration("duration", time.Since(u.start)))
	}
}

// partStarted and partEnded are called by the form reader around each part.
func (u *upload) partStarted(p *formPart) {
	u.parts.Add(1)
	u.mu.Lock()
	u.current = p.ref()
	u.mu.Unlock()
	u.partStart = time.Now()
	u.repl.Set(placeholderPrefix+"part.index", p.Index)
	u.repl.Set(placeholderPrefix+"part.field", p.Field)
	u.repl.Set(placeholderPrefix+"part.filename", p.Filename)
	u.repl.Set(placeholderPrefix+"part.content_type", p.ContentType)
}

func (u *upload) partEnded(p *formPart) {
	d := time.Since(u.partStart)
	u.mu.Lock()
	u.current = nil
	u.mu.Unlock()
	metrics.parts.WithLabelValues(u.h.Mode, outcomeOK).Inc()
	metrics.partSeconds.WithLabelValues(u.h.Mode).Observe(d.Seconds())
	if ce := u.logger.Check(zap.DebugLevel, "part done"); ce != nil {
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
	if u.body != nil {
		s.Bytes = u.body.n.Load()
	}
	u.mu.Lock()
	if u.current != nil {
		c := *u.current
		s.CurrentPart = &c
	}
	u.mu.Unlock()
	if secs := now.Sub(u.start).Seconds(); secs > 0 {
		s.Rate = float64(s.Bytes) / secs
	}
	return s
}

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

// openBody starts reading the client's body through a pooled buffer.
// The caller must call closeBody.
func (u *upload) openBody() *formReader {
	u.body = &clientBody{r: u.r.Body, max: u.h.MaxBodySize}
	src := &budgetReader{r: u.body, budget: -1}
	u.bufs = takeBufs()
	u.in = u.bufs.readers.Get().(*bufio.Reader)
	u.in.Reset(src)
	return newFormReader(u.in, src, u.boundary, u.h, u)
}

func (u *upload) closeBody() {
	if u.in != nil {
		u.in.Reset(nil)
		u.bufs.readers.Put(u.in)
		u.in = nil
		releaseBufs(u.bufs)
	}
}

// fail answers the client with e, or hands e to the site's handle_errors.
func (u *upload) fail(e *uploadError) error {
	u.failure, u.status = e, e.Status
	u.repl.Set(placeholderPrefix+"error.code", e.Code)
	u.repl.Set(placeholderPrefix+"error.limit", e.Limit)
	if ce := u.logger.Check(zap.DebugLevel, "upload refused"); ce != nil || e.Status >= 500 {
		fields := []zap.Field{
			zap.Int("status", e.Status),
			zap.String("code", e.Code),
			zap.Duration("duration", time.Since(u.start)),
		}
		if u.body != nil {
			fields = append(fields, zap.Int64("bytes", u.body.n.Load()))
		}
		if e.Part != nil {
			fields = append(fields, zap.Int("part", e.Part.Index), zap.String("field", e.Part.Field))
		}
		if e.err != nil {
			fields = append(fields, zap.Error(e.err))
		}
		if e.Status >= 500 && e.Status != statusClientClosed {
			u.logger.Error("upload failed", fields...)
		} else if ce != nil {
			ce.Write(fields...)
		}
	}
	if srv, ok := u.r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok &&
		srv.Errors != nil && len(srv.Errors.Routes) > 0 && e.Status != statusClientClosed {
		u.closeAfter()
		return caddyhttp.Error(e.Status, e)
	}
	linger := e.Status != statusClientClosed && u.closeAfter()
	e.writeJSON(u.w, u.partsSoFar)
	if linger {
		u.linger()
	}
	return nil
}

// closeAfter prepares an answer given before the client's body was read to
// its end: the connection is not reused, and with Connection: close the
// server neither sends 100 Continue to a client waiting for it nor drains the
// body. It reports whether the answer should be followed by a lingering close
// (a client already sending, over HTTP/1.x), and if so, allows it.
func (u *upload) closeAfter() (linger bool) {
	unread := u.body == nil || !u.body.eof.Load()
	if !unread || u.r.ProtoMajor != 1 {
		return false
	}
	u.w.Header().Set("Connection", "close")
	waiting := (u.body == nil || u.body.n.Load() == 0) && u.r.Header.Get("Expect") != ""
	return !waiting && http.NewResponseController(u.w).EnableFullDuplex() == nil
}

// Bounds of a lingering close.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 20
)

// linger reads and discards what the client still sends after it has been
// answered before its body ended (a refusal, a backend's early answer), for a
// little while, as nginx's lingering close does: a client that sends its whole
// body before it reads the answer then gets the answer instead of a reset.
func (u *upload) linger() {
	rc := http.NewResponseController(u.w)
	if rc.Flush() != nil || rc.SetReadDeadline(time.Now().Add(lingerTime)) != nil {
		return
	}
	_, _ = io.CopyN(io.Discard, u.r.Body, lingerBytes)
}

// clientBody counts the client's body and enforces max_body_size while it
// streams. A failure to read is marked as the client's.
type clientBody struct {
	r    io.Reader
	n    atomic.Int64 // read by the admin API while the upload runs
	max  int64
	eof  atomic.Bool  // the body was read to its end
	idle *idleFlusher // if set, told of each read (see flushWhenIdle)
	// deadline, if set, bounds each read (see storing.boundIdle).
	deadline func()
	// stop, once closed, fails reads: the backend request the body goes to
	// has ended (answered early or failed), so nothing read would go anywhere.
	stop <-chan struct{}
}

func (c *clientBody) Read(p []byte) (int, error) {
	select {
	case <-c.stop:
		return 0, writeError{errBackendAnswered}
	default:
	}
	if c.deadline != nil {
		c.deadline()
	}
	if c.idle != nil {
		c.idle.beforeRead()
		defer c.idle.afterRead()
	}
	if c.n.Load() >= c.max {
		// Allow one more byte through to tell "exactly max" from "over".
		p = p[:min(len(p), 1)]
	}
	n, err := c.r.Read(p)
	if c.n.Add(int64(n)) > c.max {
		return 0, limitError(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "max_body_size", c.max, "request body")
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return n, clientReadError(err)
	}
	c.eof.Store(err == io.EOF)
	return n, err
}
