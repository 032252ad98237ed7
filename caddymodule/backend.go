package streamproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// errBackendAnswered closes the upload's pipe when the backend answered, or
// failed, before it had taken the whole upload.
var errBackendAnswered = errors.New("backend answered before the upload ended")

// hopHeaders are the hop-by-hop fields a proxy must not forward (RFC 9110 7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for _, sf := range strings.Split(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				h.Del(sf)
			}
		}
	}
	for _, f := range hopHeaders {
		h.Del(f)
	}
}

// backendRequest builds a request to the backend carrying body. It keeps the
// client's method, end-to-end headers and Host, as reverse_proxy does, adds the
// X-Forwarded-* fields and applies header_up.
func (u *upload) backendRequest(body io.Reader, extra http.Header) (*http.Request, *uploadError) {
	target := u.repl.ReplaceAll(u.h.To, "")
	dst, err := url.Parse(target)
	if err != nil || (dst.Scheme != "http" && dst.Scheme != "https") || dst.Host == "" {
		return nil, &uploadError{Status: http.StatusBadGateway, Code: CodeBackendFailed,
			Message: "backend url is not valid", err: fmt.Errorf("to %q expands to %q", u.h.To, target)}
	}
	if dst.Path == "" {
		dst.Path, dst.RawPath = u.r.URL.Path, u.r.URL.RawPath
		if dst.RawQuery == "" {
			dst.RawQuery = u.r.URL.RawQuery
		}
	}
	req, err := http.NewRequestWithContext(u.r.Context(), u.r.Method, dst.String(), body)
	if err != nil {
		return nil, &uploadError{Status: http.StatusBadGateway, Code: CodeBackendFailed, Message: "backend request", err: err}
	}
	req.Header = u.r.Header.Clone()
	removeHopHeaders(req.Header)
	req.Header.Del("Content-Length")
	req.Header.Del("Expect")
	for k, v := range extra {
		req.Header[k] = v
	}
	req.ContentLength = -1
	req.Host = u.r.Host

	if ip, _, err := net.SplitHostPort(u.r.RemoteAddr); err == nil {
		if prior := req.Header.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		req.Header.Set("X-Forwarded-For", ip)
	}
	proto := "http"
	if u.r.TLS != nil {
		proto = "https"
	}
	req.Header.Set("X-Forwarded-Proto", proto)
	req.Header.Set("X-Forwarded-Host", u.r.Host)

	if u.h.HeaderUp != nil {
		u.h.HeaderUp.ApplyToRequest(req)
	}
	return req, nil
}

// exchange sends a request to the backend, with the fields of header set on
// it, whose body produce writes, while
// produce writes it, and returns the backend's response. produce runs in a
// goroutine of its own, which has always ended when exchange returns. It
// starts only once the backend is connected and has the request header, so a
// backend that is down costs the client no body bytes and no 100 Continue.
//
// A failure of the upload itself (a broken limit, a malformed body) wins over
// whatever the backend did: the pipe is closed with that error, so the backend
// request is aborted and never ends cleanly. A backend that answers before it
// has read the whole upload (401, 413) gets its answer relayed to the client.
func (u *upload) exchange(header http.Header, produce func(w io.Writer) error) (*http.Response, *uploadError) {
	pr, pw := io.Pipe()
	body := &startReader{PipeReader: pr, started: make(chan struct{}), bufs: u.bufs}
	req, uerr := u.backendRequest(body, header)
	if uerr != nil {
		return nil, uerr
	}

	abort := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		var err error
		select {
		case <-body.started:
			err = produce(pw)
		case <-abort:
			err = errBackendAnswered
		}
		pw.CloseWithError(err) // nil: a clean end of the body
		done <- err
	}()

	start := time.Now()
	res, rtErr := u.h.transport.RoundTrip(req)
	if rtErr == nil {
		metrics.backendTTFB.WithLabelValues(u.h.Mode).Observe(time.Since(start).Seconds())
	}

	var perr error
	select {
	case perr = <-done:
	default:
		// The backend answered, or failed, before it took the whole upload.
		// Closing the pipe fails the producer's next write; if it is waiting
		// for the client, that is when the client's next bytes arrive (or
		// the server's read idle timeout). The client's body is left readable,
		// for a lingering close.
		close(abort)
		pr.CloseWithError(errBackendAnswered)
		perr = <-done
		// A producer that had just ended the body cleanly raced the answer
		// to done: the backend did take the whole upload.
		u.stopped.Store(perr != nil)
	}
	pr.Close()

	var ue *uploadError
	if errors.As(perr, &ue) && !(ue.clientRead && u.stopped.Load()) {
		if res != nil {
			res.Body.Close()
		}
		return nil, ue
	}
	if rtErr != nil {
		return nil, backendError(rtErr, u.r.Context().Err() != nil)
	}
	if u.stopped.Load() {
		if ce := u.logger.Check(zap.DebugLevel, "backend answered before the upload ended"); ce != nil {
			ce.Write(zap.Int("status", res.StatusCode), zap.Int64("bytes", u.body.n.Load()))
		}
	}
	return res, nil
}

// startReader is a backend request's body. Its first Read, by the transport,
// tells that the backend is connected and has the request header.
type startReader struct {
	*io.PipeReader
	once    sync.Once
	started chan struct{}
	bufs    *bufSet // the upload's: its reads are as large as the producer's writes
}

func (s *startReader) Read(p []byte) (int, error) {
	s.once.Do(func() { close(s.started) })
	return s.PipeReader.Read(p)
}

// WriteTo is what Go's HTTP/1 transport copies the body with. Reading the
// pipe into a buffer as large as the producer's writes hands each write over
// in one piece: half the goroutine switches of the transport's 32 KiB copy.
func (s *startReader) WriteTo(w io.Writer) (int64, error) {
	bp := s.bufs.chunks.Get().(*[]byte)
	defer s.bufs.chunks.Put(bp)
	var written int64
	for {
		n, err := s.Read(*bp)
		if n > 0 {
			m, werr := w.Write((*bp)[:n])
			written += int64(m)
			if werr != nil {
				return written, werr
			}
		}
		if err == io.EOF {
			return written, nil
		}
		if err != nil {
			return written, err
		}
	}
}

// relay streams the backend's response to the client.
func (u *upload) relay(res *http.Response) error {
	defer res.Body.Close()
	hdr := u.w.Header()
	removeHopHeaders(res.Header)
	for k, v := range res.Header {
		hdr[k] = v
	}
	// A backend that answered before the upload ended leaves the rest of the
	// client's body unread.
	if u.stopped.Load() && u.closeAfter() {
		defer u.linger()
	}
	u.status = res.StatusCode
	u.w.WriteHeader(res.StatusCode)

	bp := smallBufs.chunks.Get().(*[]byte)
	defer smallBufs.chunks.Put(bp)
	rc := http.NewResponseController(u.w)
	for {
		n, err := res.Body.Read(*bp)
		if n > 0 {
			if _, werr := u.w.Write((*bp)[:n]); werr != nil {
				return nil // the client went away; nothing more to tell it
			}
			_ = rc.Flush()
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			u.logger.Warn("reading backend response", zap.Error(err), zap.Int("status", res.StatusCode))
			return nil
		}
	}
}
