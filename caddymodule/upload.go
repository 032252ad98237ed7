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

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// bufSize is the size of the buffers between the client and the backend.
// Reads and writes of this size keep syscalls per GiB low on loopback and
// LAN links; two of them (in and out) are held per upload in flight.
const bufSize = 64 << 10

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
)

// upload is the state of one intercepted request.
type upload struct {
	h      *Handler
	w      http.ResponseWriter
	r      *http.Request
	repl   *caddy.Replacer
	logger *zap.Logger
	start  time.Time

	boundary string
	body     *clientBody
	in       *bufio.Reader // buffered client body

	stopped atomic.Bool // the client's body is no longer wanted

	fieldBytes int          // text field bytes kept as placeholders
	partsSoFar []partResult // reported with an error in per_part and store mode
}

func newUpload(h *Handler, w http.ResponseWriter, r *http.Request) *upload {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	return &upload{h: h, w: w, r: r, repl: repl, logger: h.logger, start: time.Now()}
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
	u.in = readerPool.Get().(*bufio.Reader)
	u.in.Reset(u.body)
	return newFormReader(u.in, u.boundary, u.h)
}

func (u *upload) closeBody() {
	if u.in != nil {
		u.in.Reset(nil)
		readerPool.Put(u.in)
		u.in = nil
	}
}

// stopReading unblocks a goroutine waiting on the client's body, after which
// every read fails. Used when the backend has answered before the upload ended.
func (u *upload) stopReading() {
	u.stopped.Store(true)
	_ = http.NewResponseController(u.w).SetReadDeadline(time.Now())
}

// fail answers the client with e, or hands e to the site's handle_errors.
func (u *upload) fail(e *uploadError) error {
	u.repl.Set("http.stream_proxy.error.code", e.Code)
	u.repl.Set("http.stream_proxy.error.limit", e.Limit)
	if ce := u.logger.Check(zap.DebugLevel, "upload refused"); ce != nil || e.Status >= 500 {
		fields := []zap.Field{
			zap.Int("status", e.Status),
			zap.String("code", e.Code),
			zap.Duration("duration", time.Since(u.start)),
		}
		if u.body != nil {
			fields = append(fields, zap.Int64("bytes", u.body.n))
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
	if u.body == nil || u.body.n == 0 {
		// The body is not wanted: closing it keeps the server from sending
		// 100 Continue to drain it, and the connection is not reused. A body
		// already flowing is left to the server, which drains a little of it
		// so that the client can read this answer.
		_ = u.r.Body.Close()
		if u.r.ProtoMajor == 1 {
			u.w.Header().Set("Connection", "close")
		}
	}
	if srv, ok := u.r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok &&
		srv.Errors != nil && len(srv.Errors.Routes) > 0 && e.Status != statusClientClosed {
		return caddyhttp.Error(e.Status, e)
	}
	e.writeJSON(u.w, u.partsSoFar)
	return nil
}

// clientBody counts the client's body and enforces max_body_size while it
// streams. A failure to read is marked as the client's.
type clientBody struct {
	r   io.Reader
	n   int64
	max int64
}

func (c *clientBody) Read(p []byte) (int, error) {
	if c.n >= c.max {
		// Allow one more byte through to tell "exactly max" from "over".
		p = p[:min(len(p), 1)]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.max {
		return 0, limitError(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "max_body_size", c.max, "request body")
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return n, clientReadError(err)
	}
	return n, err
}
