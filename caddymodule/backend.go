package streamproxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// errBackendAnswered ends the body's producer when the backend answered, or
// failed, before it had taken the whole body.
var errBackendAnswered = errors.New("backend answered before the upload ended")

// aborted is what the transport reads from the body when the upload failed on
// the gateway's side: the client's body, a limit, a digest, the store. It
// reads as context.Canceled, so that reverse_proxy neither retries the
// request nor counts it against the upstream's health, as it does for a
// client that went away.
type aborted struct{ err error }

func (e aborted) Error() string   { return "upload aborted: " + e.err.Error() }
func (e aborted) Unwrap() []error { return []error{e.err, context.Canceled} }

// nextNone ends the chain of the embedded reverse_proxy, which calls it only
// for handle_response routes, which it is never given.
var nextNone = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// roundTrip sends the backend one request through the proxy, with the fields
// of header set on it, whose body produce writes while the transport sends
// it. The backend's answer goes to w. produce runs in a goroutine of its own,
// which has always ended when roundTrip returns. It starts when the transport
// first reads the body, once an upstream is connected and has the request
// header: an upstream that cannot be reached costs the client no body byte
// and no 100 Continue, and reverse_proxy may try another.
//
// A failure of the upload itself (a broken limit, a malformed body) is
// returned, and the backend request is aborted with it, so that it never
// ends cleanly; unless the backend answered first (401, 413), in which case
// its answer is what the client gets, whole.
func (u *upload) roundTrip(w *backendWriter, header http.Header, produce func(w io.Writer) error) *uploadError {
	pipe := newHandoff()
	body := &pipeBody{pipe: pipe, started: make(chan struct{})}
	w.ended = &body.ended
	w.sent = time.Now()

	stop := make(chan struct{})
	u.body.stop = stop
	done := make(chan error, 1)
	go func() {
		var err error
		select {
		case <-body.started:
			err = produce(pipe)
		case <-stop:
			err = errBackendAnswered
		}
		body.ended.Store(true)
		if err != nil {
			pipe.CloseWrite(aborted{err})
		} else {
			pipe.CloseWrite(nil)
		}
		done <- err
	}()

	var panicked any
	proxyErr := func() error {
		// reverse_proxy panics with http.ErrAbortHandler when it cannot
		// finish a response it began; the producer still ends first.
		defer func() { panicked = recover() }()
		return u.h.proxy.ServeHTTP(w, u.backendRequest(body, header), nextNone)
	}()

	if w.status != 0 && !body.ended.Load() && panicked == nil {
		// The backend answered before it took the whole body. The client
		// gets the answer now; the producer's next read or write fails.
		_ = http.NewResponseController(w).Flush()
		if u.r.ProtoMajor > 1 {
			// A client of HTTP/2 or 3 may stop sending once it has an
			// answer: ending the stream's body ends a read waiting for it.
			_ = u.r.Body.Close()
		}
	}
	close(stop)
	pipe.CloseRead(errBackendAnswered)
	perr := <-done
	u.body.stop = nil // the next part's header is read on this goroutine
	if panicked != nil {
		panic(panicked)
	}
	if w.linger {
		u.linger()
	}

	w.early = perr != nil
	var ue *uploadError
	switch {
	case w.status != 0:
		if w.early {
			if ce := u.logger.Check(zap.DebugLevel, "backend answered before the upload ended"); ce != nil {
				ce.Write(zap.Int("status", w.status), zap.Int64("bytes", u.body.n.Load()), zap.NamedError("upload", perr))
			}
		}
		return nil
	case errors.As(perr, &ue):
		return ue
	case proxyErr != nil:
		return backendError(proxyErr, u.r.Context().Err() != nil)
	case perr != nil && perr != errBackendAnswered:
		return backendError(perr, u.r.Context().Err() != nil)
	default:
		// reverse_proxy gave up on the request: the client went away.
		return backendError(context.Canceled, true)
	}
}

// backendRequest is the request handed to the proxy: the client's, with its
// body replaced by body and the fields of header set. reverse_proxy does the
// rest (hop-by-hop fields, X-Forwarded-*, header_up, the upstream's address).
func (u *upload) backendRequest(body io.ReadCloser, header http.Header) *http.Request {
	req := u.r.WithContext(u.r.Context())
	req.Header = u.r.Header.Clone()
	req.Header.Del("Content-Length")
	req.Header.Del("Expect") // the client's 100 Continue is the gateway's business
	for k, v := range header {
		req.Header[k] = v
	}
	req.ContentLength = -1
	req.TransferEncoding = nil
	req.Trailer = nil
	req.Body = body
	return req
}

// pipeBody is a backend request's body: the reading end of the upload's pipe.
// The transport's first Read tells that an upstream is connected and has the
// request header.
type pipeBody struct {
	pipe    *handoff
	once    sync.Once
	started chan struct{}
	ended   atomic.Bool // the producer has ended, or will not start
}

func (b *pipeBody) Read(p []byte) (int, error) {
	b.once.Do(func() { close(b.started) })
	return b.pipe.Read(p)
}

// Close is the transport's: the producer's writes fail from now on.
func (b *pipeBody) Close() error {
	b.pipe.CloseRead(nil)
	return nil
}

// backendWriter takes the backend's answer from the proxy: it relays it to the
// client (forward and store mode), or keeps its status and up to 64 KiB of
// its body for the JSON report (per_part, client nil).
type backendWriter struct {
	u      *upload
	client http.ResponseWriter // nil: keep the answer

	// Written on the proxy's goroutine, read once roundTrip has returned.
	status    int         // the backend's, once its header is written; 0: no answer
	header    http.Header // the kept answer's
	kept      []byte
	truncated bool
	early     bool // the answer came before the backend had taken the whole body
	linger    bool // the answer went to a client still sending

	ended *atomic.Bool // the body's producer has ended
	sent  time.Time
}

func (u *upload) relayTo(client http.ResponseWriter) *backendWriter {
	return &backendWriter{u: u, client: client}
}

func (u *upload) keepAnswer() *backendWriter {
	return &backendWriter{u: u, header: make(http.Header)}
}

func (w *backendWriter) Header() http.Header {
	if w.client != nil {
		return w.client.Header()
	}
	return w.header
}

func (w *backendWriter) WriteHeader(code int) {
	switch {
	case w.status != 0:
		return
	case code == statusClientClosed:
		return // reverse_proxy's mark of a request given up: no answer
	case code < 200:
		if w.client != nil {
			w.client.WriteHeader(code)
		}
		return
	}
	w.status = code
	metrics.backendTTFB.WithLabelValues(w.u.h.Mode).Observe(time.Since(w.sent).Seconds())
	if w.client == nil {
		return
	}
	if !w.ended.Load() {
		w.linger = w.u.closeAfter()
	}
	w.u.status = code
	w.client.WriteHeader(code)
}

func (w *backendWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.client != nil {
		return w.client.Write(p)
	}
	n := min(len(p), maxBackendAnswer-len(w.kept))
	w.kept = append(w.kept, p[:n]...)
	w.truncated = w.truncated || n < len(p)
	return len(p), nil
}

// Unwrap lets reverse_proxy flush the client's response as it streams.
func (w *backendWriter) Unwrap() http.ResponseWriter { return w.client }
