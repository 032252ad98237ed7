package integration

// The fake backends of the tests: real HTTP servers on loopback, each for a
// behaviour the others do not have. Backends that exist for one test only
// (one that never reads, one that answers early) stay with that test.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/streamproxy/caddy-stream-proxy/integration/formtest"
)

// seenPart is what a backend received for one part.
type seenPart struct {
	Field       string `json:"field"`
	Filename    string `json:"filename,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

// backendRequest is what a backend received for one request.
type backendRequest struct {
	Header http.Header
	Parts  []seenPart
	Err    error // the body did not end cleanly
}

// backend is the default forward-mode backend: a real HTTP server on loopback
// that parses what it receives as multipart, streaming (any size), and records
// each part's size and sha256, and whether the request ended cleanly.
type backend struct {
	*httptest.Server
	mu       sync.Mutex
	requests []backendRequest
	// firstBytes, if not nil, receives once the first data bytes of a file.
	firstBytes chan struct{}
	// before, if not nil, may answer instead of reading the body.
	before func(w http.ResponseWriter, r *http.Request) bool
}

func newBackend(t *testing.T) *backend {
	b := &backend{}
	b.Server = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.Close)
	return b
}

func (b *backend) serve(w http.ResponseWriter, r *http.Request) {
	if b.before != nil && b.before(w, r) {
		return
	}
	rec := backendRequest{Header: r.Header.Clone()}
	defer func() {
		b.mu.Lock()
		b.requests = append(b.requests, rec)
		b.mu.Unlock()
	}()
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		rec.Err = err
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			rec.Err = err
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h := sha256.New()
		var n int64
		if p.FileName() != "" && b.firstBytes != nil {
			buf := make([]byte, 1)
			k, err := p.Read(buf)
			if k > 0 {
				h.Write(buf[:k])
				n += int64(k)
				select {
				case b.firstBytes <- struct{}{}:
				default:
				}
			}
			if err != nil && err != io.EOF {
				rec.Err = err
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		m, err := io.Copy(h, p)
		n += m
		if err != nil {
			rec.Err = err
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rec.Parts = append(rec.Parts, seenPart{
			Field: p.FormName(), Filename: p.FileName(), ContentType: p.Header.Get("Content-Type"),
			Size: n, SHA256: hex.EncodeToString(h.Sum(nil)),
		})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"parts": rec.Parts})
}

func (b *backend) received() []backendRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]backendRequest(nil), b.requests...)
}

// waitRequests waits until the backend has finished n requests, for at
// most waitLimit.
func (b *backend) waitRequests(t *testing.T, n int) []backendRequest {
	t.Helper()
	var got []backendRequest
	waitUntil(func() bool { got = b.received(); return len(got) >= n })
	return got
}

// recorder is a backend that keeps the raw bodies it receives (up to 64 MiB),
// for tests that look at the forwarded bytes themselves (boundary, preamble,
// raw part headers) rather than at the parts a parser reads.
type recorder struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []recorded
}

type recorded struct {
	contentType string
	body        []byte
	err         error
}

func newRecorder(t *testing.T) *recorder {
	rec := &recorder{}
	rec.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		rec.mu.Lock()
		rec.bodies = append(rec.bodies, recorded{contentType: r.Header.Get("Content-Type"), body: b, err: err})
		rec.mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "recorded")
	}))
	t.Cleanup(rec.Close)
	return rec
}

// wait waits until the recorder has n bodies, for at most waitLimit.
func (rec *recorder) wait(n int) []recorded {
	var got []recorded
	waitUntil(func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		got = append([]recorded(nil), rec.bodies...)
		return len(got) >= n
	})
	return got
}

// parts parses a recorded body with the boundary of its Content-Type.
func (r recorded) parts() ([]formtest.Part, error) {
	_, params, err := mime.ParseMediaType(r.contentType)
	if err != nil {
		return nil, err
	}
	return formtest.Parse(bytes.NewReader(r.body), params["boundary"])
}

// countingBackend is newBackend whose listener counts the connections it
// accepts, to prove that a request refused from its header never dials it.
func countingBackend(t *testing.T) (*backend, *atomic.Int64) {
	b := &backend{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(b.serve))
	cl := &countingListener{Listener: srv.Listener}
	srv.Listener = cl
	srv.Start()
	b.Server = srv
	t.Cleanup(srv.Close)
	return b, &cl.n
}

type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// newH2CBackend is newBackend spoken to over HTTP/2 without TLS (h2c), whose
// transport reads the body instead of having it written; before is its hook.
func newH2CBackend(t *testing.T, before func(w http.ResponseWriter, r *http.Request) bool) *backend {
	b := &backend{before: before}
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(b.serve))
	b.Config.Protocols = new(http.Protocols)
	b.Config.Protocols.SetUnencryptedHTTP2(true)
	b.Start()
	t.Cleanup(b.Close)
	return b
}

// partBackend is a per_part backend: each request is one part, its bytes as
// the body and its name in headers. It records them and answers status with
// the part's size and sha256 as JSON.
type partBackend struct {
	*httptest.Server
	mu   sync.Mutex
	seen []partRequest
}

// partRequest is one part as a partBackend received it.
type partRequest struct {
	path, disposition, contentType, field, filename string
	detected                                        string // X-Stream-Proxy-Detected-Type
	size                                            int64
	sha256                                          string
}

func newPartBackend(t *testing.T, status int) *partBackend {
	b := &partBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			return
		}
		sum := hex.EncodeToString(h.Sum(nil))
		b.mu.Lock()
		b.seen = append(b.seen, partRequest{
			path: r.URL.Path, disposition: r.Header.Get("Content-Disposition"), contentType: r.Header.Get("Content-Type"),
			field: r.Header.Get("X-Stream-Proxy-Field"), filename: r.Header.Get("X-Stream-Proxy-Filename"),
			detected: r.Header.Get("X-Stream-Proxy-Detected-Type"), size: n, sha256: sum,
		})
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"bytes": n, "sha256": sum})
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *partBackend) requests() []partRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]partRequest(nil), b.seen...)
}

// lines is every request so far, one line each: path, field, filename,
// Content-Type, size and sha256.
func (b *partBackend) lines() string {
	var out []string
	for _, p := range b.requests() {
		out = append(out, fmt.Sprintf("%s %s %s %s %d %s", p.path, p.field, p.filename, p.contentType, p.size, p.sha256))
	}
	return strings.Join(out, "\n")
}

// metadataBackend is a store-mode backend: after the files are stored it gets
// the text fields and where each file went, as a small form. It keeps the last
// form's values and answers {"ok":true} with the status set (200 at first).
type metadataBackend struct {
	*httptest.Server
	mu     sync.Mutex
	status int
	got    map[string][]string
}

func newMetadataBackend(t *testing.T) *metadataBackend {
	b := &metadataBackend{status: http.StatusOK}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseMultipartForm(1 << 20); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		b.got = r.MultipartForm.Value
		w.WriteHeader(b.status)
		fmt.Fprint(w, `{"ok":true}`)
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *metadataBackend) setStatus(status int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.status = status
}

func (b *metadataBackend) values() map[string][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.got
}

// newNextServer is the backend of the route after stream_proxy (a
// reverse_proxy), for requests stream_proxy must pass by: it answers with the
// method, the size and sha256 of the body it read, and the Content-Type.
func newNextServer(t *testing.T) *httptest.Server {
	next := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s %d %s %s", r.Method, n, hex.EncodeToString(h.Sum(nil)), r.Header.Get("Content-Type"))
	}))
	t.Cleanup(next.Close)
	return next
}

// checkedPart is one part as a checking backend received it.
type checkedPart struct {
	Field       string `json:"field"`
	Filename    string `json:"filename,omitempty"`
	HasFilename bool   `json:"has_filename,omitempty"`
	Disposition string `json:"disposition"`
	ContentType string `json:"content_type,omitempty"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

// checkedRequest is one request as a checking backend received it.
type checkedRequest struct {
	Proto string        `json:"proto"` // the client's protocol, as the gateway saw it (X-Client-Proto)
	Parts []checkedPart `json:"parts"`
	Err   string        `json:"error,omitempty"`
}

// checkingBackend is a real backend on loopback that reads every part of the
// forms it gets with mime/multipart, records each part's header, size and
// digest, and answers with the same record as JSON: the browser test checks
// the answer in the page, and needs the raw Content-Disposition and the
// client's protocol, which backend does not keep.
type checkingBackend struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []checkedRequest
}

func newCheckingBackend(t *testing.T) *checkingBackend {
	b := &checkingBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := checkedRequest{Proto: r.Header.Get("X-Client-Proto")}
		err := readChecked(r, &rec)
		if err != nil {
			rec.Err = err.Error()
		}
		b.mu.Lock()
		b.reqs = append(b.reqs, rec)
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
		}
		_ = json.NewEncoder(w).Encode(rec)
	}))
	t.Cleanup(b.Close)
	return b
}

func readChecked(r *http.Request, rec *checkedRequest) error {
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return err
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(h, p)
		if err != nil {
			return err
		}
		cp := checkedPart{Disposition: p.Header.Get("Content-Disposition"), ContentType: p.Header.Get("Content-Type"),
			Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}
		if _, dp, err := mime.ParseMediaType(cp.Disposition); err == nil {
			cp.Field = dp["name"]
			cp.Filename, cp.HasFilename = dp["filename"]
		}
		rec.Parts = append(rec.Parts, cp)
	}
}

func (b *checkingBackend) requests() []checkedRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]checkedRequest(nil), b.reqs...)
}
