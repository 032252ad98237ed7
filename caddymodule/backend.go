package streamproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
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

// exchangeForm sends the backend one multipart/form-data request under a fresh
// boundary, whose parts write adds while the client's body is read, and
// relays the answer to client.
func (u *upload) exchangeForm(client http.ResponseWriter, write func(mw *formWriter) error) (backendAnswer, *uploadError) {
	f, header := u.newFormBody(write)
	defer f.out.release()
	return u.roundTrip(client, header, f.out, f.produce)
}

// formBody is what exchangeForm sends: a form written under a fresh boundary.
type formBody struct {
	out   *idleFlusher
	mw    *formWriter
	write func(mw *formWriter) error
}

// newFormBody is apart from exchangeForm so that its locals are not on the
// stack of the handler's goroutine while it waits for the backend's answer
// (see roundTrip). The header it returns is not kept in f: the backend
// request has its own copy of it.
//
//go:noinline
func (u *upload) newFormBody(write func(mw *formWriter) error) (*formBody, http.Header) {
	f := &formBody{out: u.newFlusher(), write: write}
	f.mw = newFormWriter(f.out)
	return f, http.Header{"Content-Type": {f.mw.FormDataContentType()}}
}

func (f *formBody) produce() error {
	if err := f.write(f.mw); err != nil {
		return err
	}
	return f.mw.Close()
}

// backendAnswer is how the backend answered one request.
type backendAnswer struct {
	status int // 0: no answer
	// early: the answer came before the backend had taken the whole body.
	early bool
	// With no client to relay it to (per_part): up to 64 KiB of the
	// answer's body, and whether it was longer.
	body      []byte
	truncated bool
}

// roundTrip sends the backend one request through the proxy, with the fields
// of header set on it, whose body produce writes into out while the
// transport sends it (see backendBody and feed). The backend's answer is
// relayed to client, or, with client nil, kept (its first 64 KiB) and
// returned. produce has always ended when roundTrip returns. It starts when the transport first reads the
// body, once an upstream is connected and has the request header: an
// upstream that cannot be reached costs the client no body byte and no 100
// Continue, and reverse_proxy may try another.
//
// A failure of the upload itself (a broken limit, a malformed body) is
// returned, and the backend request is aborted with it, so that it never
// ends cleanly; unless the backend answered first (401, 413), in which case
// its answer is what the client gets, whole.
//
// The handler's goroutine waits for the answer below reverse_proxy, Caddy's
// routes and this module, all on its stack: the request's setup and its
// aftermath are functions of their own, so that their locals are not on it
// while it waits. Go keeps a goroutine's stack at a power of two, and a few
// hundred bytes more would double it (16 KiB to 32 KiB) for every upload.
func (u *upload) roundTrip(client http.ResponseWriter, header http.Header, out *idleFlusher, produce func() error) (backendAnswer, *uploadError) {
	x, uerr := u.startExchange(client, header, out, produce)
	if uerr != nil {
		return backendAnswer{}, uerr
	}
	x.proxy()
	return x.finish()
}

// exchange is one backend request of roundTrip.
type exchange struct {
	u      *upload
	w      *backendWriter
	req    *http.Request
	body   *backendBody
	stall  *stallTimer
	cancel context.CancelFunc
	// stop, once set, fails the producer's reads of the client: the
	// request has ended (answered early or failed), so nothing read would
	// go anywhere. A flag the reads poll, not a channel: it is never waited on.
	stop atomic.Bool

	proxyErr error
	panicked any
}

//go:noinline
func (u *upload) startExchange(client http.ResponseWriter, header http.Header, out *idleFlusher, produce func() error) (*exchange, *uploadError) {
	// The backend request's own context: cancelled when the backend takes
	// no byte of the body for backend_stall_timeout, which frees its
	// connection and ends the producer's write.
	ctx, cancel := context.WithCancel(u.r.Context())
	x := &exchange{u: u, cancel: cancel}
	x.stall = newStallTimer(time.Duration(u.h.BackendStallTimeout), cancel)
	stop := &x.stop
	x.body = newBackendBody(func(w io.Writer) error { return u.feed(w, out, stop, produce) }, x.stall)
	x.req = u.backendRequest(ctx, x.body, header)
	x.body.req = x.req
	if uerr := u.setRoute(x.req); uerr != nil {
		x.stall.stop()
		cancel()
		return nil, uerr // before any backend is contacted
	}
	x.w = &backendWriter{u: u, client: client, body: x.body, sent: time.Now()}
	if client == nil {
		x.w.header = make(http.Header)
	}
	return x, nil
}

// proxy hands the request to reverse_proxy, which panics with
// http.ErrAbortHandler when it cannot finish a response it began; the
// panic is kept for finish, so that the producer still ends first.
func (x *exchange) proxy() {
	defer func() { x.panicked = recover() }()
	x.proxyErr = x.u.h.proxy.ServeHTTP(x.w, x.req, nextNone)
}

// finish ends the request once the proxy returned: the producer, the
// lingering close, and the upload's outcome.
//
//go:noinline
func (x *exchange) finish() (backendAnswer, *uploadError) {
	defer x.cancel()
	defer x.stall.stop()
	u, w, body, stall := x.u, x.w, x.body, x.stall
	if w.status != 0 && !body.ended.Load() && x.panicked == nil {
		// The backend answered before it took the whole body. The client
		// gets the answer now; the producer's next read or write fails.
		_ = http.NewResponseController(w).Flush()
		if u.r.ProtoMajor > 1 {
			// A client of HTTP/2 or 3 may stop sending once it has an
			// answer: ending the stream's body ends a read waiting for it.
			_ = u.r.Body.Close()
		}
	}
	x.stop.Store(true)
	perr := body.finish()
	if x.panicked != nil {
		panic(x.panicked)
	}
	if w.linger {
		u.linger()
	}

	answer := backendAnswer{status: w.status, early: perr != nil, body: w.kept, truncated: w.truncated}
	ue := classified(perr) // a refusal of the form, the client's body or the store
	switch {
	case w.dropped:
		return answer, &uploadError{Status: http.StatusBadGateway, Code: CodeBackendAnsweredEarly,
			Message: fmt.Sprintf("backend answered %d before it took the whole upload", w.status), err: perr}
	case w.status != 0:
		if answer.early {
			if ce := u.check(zap.DebugLevel, "backend answered before the upload ended"); ce != nil {
				ce.Write(zap.Int("status", w.status), zap.Int64("bytes", u.body.n.Load()), zap.NamedError("upload", perr))
			}
		}
		return answer, nil
	case body.refused.Load() != nil:
		return answer, body.refused.Load()
	case stall.fired.Load():
		return answer, &uploadError{Status: http.StatusGatewayTimeout, Code: CodeBackendTimeout,
			Message: fmt.Sprintf("backend took no byte of the upload for %s", stall.d), err: perr}
	case ue != nil:
		return answer, ue
	case x.proxyErr != nil:
		return answer, backendError(x.proxyErr, u.r.Context().Err() != nil)
	case perr != nil && perr != errBackendAnswered:
		return answer, backendError(perr, u.r.Context().Err() != nil)
	default:
		// reverse_proxy gave up on the request: the client went away.
		return answer, backendError(context.Canceled, true)
	}
}

// feed runs produce, whose writes go into out and on to w, as the producer
// of a backend body: while it runs, each read of the client's body first
// fails once stop is set, and tells out, which sends what it holds once
// the client pauses (see idleFlusher). It returns once out's timer can no
// longer write to w.
func (u *upload) feed(w io.Writer, out *idleFlusher, stop *atomic.Bool, produce func() error) error {
	out.reset(w)
	u.body.to = bodyLeg{stop: stop, out: out}
	defer func() {
		u.body.to = bodyLeg{} // the next part's header is read on the handler's goroutine
		out.end()
	}()
	if err := produce(); err != nil {
		return err
	}
	return out.Flush()
}

// backendRequest is the request handed to the proxy: the client's, with its
// body replaced by body and the fields of header set. reverse_proxy does the
// rest (hop-by-hop fields, X-Forwarded-*, header_up, the upstream's address).
func (u *upload) backendRequest(ctx context.Context, body *backendBody, header http.Header) *http.Request {
	req := u.r.WithContext(context.WithValue(ctx, backendBodyKey{}, body))
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

// backendBody is a backend request's body, which produce writes while the
// transport sends it. An HTTP/1 transport copies it with WriteTo: produce then
// runs on the transport's goroutine and writes straight into the connection's
// chunked writer, each write one chunk, with no pipe and no second goroutine.
// Other transports (HTTP/2, HTTP/3) Read it: produce then runs on a goroutine
// of its own and writes into a pipe. Either way it starts only once an
// upstream is connected and has the request header, and at most once.
type backendBody struct {
	produce func(w io.Writer) error
	// pipe is the Read path's, made by the Read that starts produce: an
	// HTTP/1 upload holds none.
	pipe  atomic.Pointer[handoff]
	stall *stallTimer
	req   *http.Request // the backend request, as handed to the proxy

	// taken is closed when a transport first takes the body, or gives it up
	// unread, whichever comes first.
	taken     chan struct{}
	takenOnce sync.Once

	mu       sync.Mutex
	state    int           // bodyWaiting, bodyRunning or bodyStopped; guarded by mu
	finished bool          // finish was called: a pipe made now is made closed; guarded by mu
	done     chan struct{} // closed once produce ran
	err      error         // produce's result, written before done is closed

	ended atomic.Bool // produce has ended, or will not start
	// closing: the backend's answer says it closes the connection after it
	// (HTTP/1 Connection: close, or HTTP/1.0), so it will read no more.
	closing atomic.Bool
	// refused: the transport was handed a header it must not send (see
	// headerRefused); set on the proxy's goroutine before it returns.
	refused atomic.Pointer[uploadError]
}

const (
	bodyWaiting = iota // no transport has read it yet
	bodyRunning        // produce runs or ran
	bodyStopped        // roundTrip ended before any transport read it
)

func newBackendBody(produce func(w io.Writer) error, stall *stallTimer) *backendBody {
	return &backendBody{produce: produce, stall: stall,
		done: make(chan struct{}), taken: make(chan struct{})}
}

// begin reports whether the caller is the one to run produce; a Read (read)
// makes the pipe that produce then writes into.
func (b *backendBody) begin(read bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state != bodyWaiting {
		return false
	}
	b.state = bodyRunning
	if read {
		p := newHandoff()
		if b.finished {
			p.CloseRead(errBackendAnswered)
		}
		b.pipe.Store(p)
	}
	b.markTaken()
	return true
}

func (b *backendBody) markTaken() { b.takenOnce.Do(func() { close(b.taken) }) }

// closeRead ends the pipe's reads and fails produce's writes into it, if a
// Read made it.
func (b *backendBody) closeRead(err error) {
	if p := b.pipe.Load(); p != nil {
		p.CloseRead(err)
	}
}

// awaitStart waits, while no transport has taken the body yet, until one
// does, gives it up, or the request ends. An HTTP/1 transport flushes the
// request header before it copies the body, so a backend may answer before
// the copy begins; deciding then would stop a body about to go.
func (b *backendBody) awaitStart() {
	select {
	case <-b.taken:
	case <-b.req.Context().Done():
	}
}

func (b *backendBody) run(w io.Writer) error {
	err := b.produce(b.stall.watch(w))
	b.err = err
	b.ended.Store(true)
	close(b.done)
	return err
}

// settle waits for produce to end and returns its result, or
// errBackendAnswered if it never started (and now will not).
func (b *backendBody) settle() error {
	b.mu.Lock()
	if b.state == bodyWaiting {
		b.state = bodyStopped
		b.ended.Store(true)
		// A transport that reads it later is not left waiting: with no
		// pipe its Read fails at once.
	}
	started := b.state == bodyRunning
	b.mu.Unlock()
	if !started {
		return errBackendAnswered
	}
	<-b.done
	return b.err
}

// WriteTo runs produce into w, the transport's writer.
func (b *backendBody) WriteTo(w io.Writer) (int64, error) {
	if !b.begin(false) {
		return io.Copy(w, struct{ io.Reader }{b}) // already started by a Read
	}
	cw := &connWriter{w: w}
	err := b.run(cw)
	switch {
	case err == nil:
		return cw.n, nil
	case cw.err != nil:
		return cw.n, cw.err // the backend connection failed: the upstream's fault
	default:
		return cw.n, aborted{err}
	}
}

func (b *backendBody) Read(p []byte) (int, error) {
	if b.begin(true) {
		pipe := b.pipe.Load()
		go func() {
			if err := b.run(pipe); err != nil {
				pipe.CloseWrite(aborted{err})
			} else {
				pipe.CloseWrite(nil)
			}
		}()
	}
	pipe := b.pipe.Load()
	if pipe == nil {
		return 0, io.ErrClosedPipe // stopped before any read, or taken by WriteTo
	}
	return pipe.Read(p)
}

// Close is the transport's. Before any read it does nothing, as a body that
// reverse_proxy may hand to another upstream after a failed dial must stay
// whole; after, the producer's writes into the pipe fail.
func (b *backendBody) Close() error {
	b.mu.Lock()
	running := b.state == bodyRunning
	waiting := b.state == bodyWaiting
	b.mu.Unlock()
	if running {
		b.closeRead(nil)
	}
	if waiting {
		b.markTaken()
	}
	return nil
}

// finish ends the body once the proxy is done with the request, and returns
// produce's result: errBackendAnswered if it never started. The caller has
// made its reads and writes fail, so a produce still running ends soon.
func (b *backendBody) finish() error {
	b.mu.Lock()
	b.finished = true
	b.mu.Unlock()
	b.closeRead(errBackendAnswered)
	return b.settle()
}

// connWriter is what produce writes into on the transport's goroutine. It
// keeps the connection's own failure apart from the upload's.
type connWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *connWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// backendBodyKey carries a backend request's *backendBody in its context, for
// bodyTransport.
type backendBodyKey struct{}

// bodyTransport is the proxy's http transport, handed each request with the
// backend body itself in place of reverse_proxy's wrappers of it, which
// hide its WriteTo. The transport's other methods are its own.
type bodyTransport struct {
	*reverseproxy.HTTPTransport
}

func (t bodyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	b, ok := req.Context().Value(backendBodyKey{}).(*backendBody)
	if ok && req.Body != nil {
		// req is reverse_proxy's copy for this one attempt (it makes it
		// just before calling the transport), so it is changed in place:
		// a copy would be held for as long as the upload streams.
		req.Body = b
	}
	if ok {
		// reverse_proxy made its own copy of the header (prepareRequest)
		// and reads only that one from now on, retries too: the backend
		// request's is let go, not held while the upload streams.
		b.req.Header = nil
	}
	if ok {
		if uerr := headerRefused(req.Header); uerr != nil {
			// A value no transport would send came from the client (a form
			// field through header_up): the client's fault, so it reads as
			// context.Canceled and reverse_proxy neither counts nor retries it.
			b.refused.Store(uerr)
			return nil, aborted{uerr}
		}
	}
	res, err := t.HTTPTransport.RoundTrip(req)
	if ok && res != nil && res.Close {
		b.closing.Store(true)
	}
	return res, err
}

// headerRefused refuses a backend request whose header holds a value that
// no transport would send: header_up can put a client's form value there.
func headerRefused(h http.Header) *uploadError {
	for name, vs := range h {
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return &uploadError{Status: http.StatusBadRequest, Code: CodeHeaderValueInvalid,
					Message: fmt.Sprintf("a client value cannot be sent in the backend request's %s header", name)}
			}
		}
	}
	return nil
}

// maxBackendAnswer bounds a backend's response body kept for per_part's JSON
// report, one of the few things ever held whole.
const maxBackendAnswer = 64 << 10

// backendWriter takes the backend's answer from the proxy: it relays it to the
// client (forward and store mode), or keeps its status and up to 64 KiB of
// its body for the JSON report (per_part, client nil).
type backendWriter struct {
	u      *upload
	client http.ResponseWriter // nil: keep the answer

	// Written on the proxy's goroutine, read by roundTrip once the proxy
	// has returned.
	status    int         // the backend's, once its header is written; 0: no answer
	header    http.Header // the kept answer's
	kept      []byte
	truncated bool
	linger    bool // the answer went to a client still sending
	dropped   bool // a 2xx that came before the backend took the whole body: never relayed

	body *backendBody
	// own is the client's header before the proxy added the backend's,
	// taken when the proxy first asks for it, once the backend answered:
	// not held while the upload streams. nil: the proxy never asked.
	own  http.Header
	sent time.Time
}

func (w *backendWriter) Header() http.Header {
	if w.client == nil {
		return w.header
	}
	h := w.client.Header()
	if w.own == nil {
		w.own = h.Clone()
	}
	return h
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
	if code < 300 {
		// A success counts only once the backend took the whole body: the
		// answer waits for the producer's end, and goes nowhere if the
		// body did not all go (also when its write failed before the
		// answer was read), or if the backend said it closes the
		// connection, unread, the moment it answered.
		w.body.awaitStart()
		ended := w.body.ended.Load()
		if err := w.body.settle(); err != nil || (!ended && w.body.closing.Load()) {
			w.dropped = true
			if w.own != nil {
				h := w.client.Header()
				clear(h)
				maps.Copy(h, w.own)
			}
			return
		}
	}
	if !w.body.ended.Load() {
		w.linger = w.u.closeAfter()
	}
	w.client.WriteHeader(code)
}

func (w *backendWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.dropped {
		return len(p), nil
	}
	if w.client != nil {
		return w.client.Write(p)
	}
	n := min(len(p), maxBackendAnswer-len(w.kept))
	w.kept = append(w.kept, p[:n]...)
	w.truncated = w.truncated || n < len(p)
	return len(p), nil
}

// FlushError lets reverse_proxy flush the client's response as it streams,
// but never a dropped answer, whose header the client must not get.
func (w *backendWriter) FlushError() error {
	if w.dropped || w.client == nil {
		return nil
	}
	return http.NewResponseController(w.client).Flush()
}

// Unwrap lets reverse_proxy reach the client's connection (deadlines).
func (w *backendWriter) Unwrap() http.ResponseWriter { return w.client }
