package integration

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/streamproxy/caddy-stream-proxy/caddymodule"
)

// The in-process Caddy's ports: caddytest's admin port and an HTTP port that
// nothing else uses. SP_TEST_ADMIN_PORT and SP_TEST_HTTP_PORT move them, so
// that two test runs on one machine do not share one Caddy.
var (
	adminPort  = envPort("SP_TEST_ADMIN_PORT", 2999)
	httpPort   = envPort("SP_TEST_HTTP_PORT", 9080)
	gatewayURL = fmt.Sprintf("http://localhost:%d", httpPort)
)

func envPort(name string, def int) int {
	if p, err := strconv.Atoi(os.Getenv(name)); err == nil && p > 0 {
		return p
	}
	return def
}

// startGateway loads site into the in-process Caddy, served on httpPort.
func startGateway(t *testing.T, site string) {
	t.Helper()
	startGatewayWith(t, "", site)
}

// startGatewayWith is startGateway with options of its own in the global
// servers block (protocols, timeouts).
func startGatewayWith(t *testing.T, serverOpts, site string) {
	t.Helper()
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	tester.InitServer(fmt.Sprintf(`{
	skip_install_trust
	admin localhost:%d
	http_port %d
	https_port %d
	grace_period 1ns
	servers {
%s
	}
}
http://localhost:%d {
%s
}
`, adminPort, httpPort, httpPort+363, serverOpts, httpPort, site), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	checkLeaks(t)
}

// leakSnapshots holds, per test, the goroutines alive after its last config
// load; those are not leaks of the test's requests.
var leakSnapshots = map[*testing.T]*goleak.Option{}

// checkLeaks fails the test if goroutines started after this call outlive it,
// ignoring the pooled connections of HTTP clients and servers and Caddy's own
// background work. startGateway calls it once a configuration is running; a
// later load in the same test moves the snapshot.
func checkLeaks(t *testing.T) {
	t.Helper()
	current := goleak.IgnoreCurrent()
	if snap, ok := leakSnapshots[t]; ok {
		*snap = current
		return
	}
	leakSnapshots[t] = &current
	t.Cleanup(func() {
		snap := *leakSnapshots[t]
		delete(leakSnapshots, t)
		goleak.VerifyNone(t,
			snap,
			goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
			goleak.IgnoreAnyFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*http2ClientConn).readLoop"),
			goleak.IgnoreAnyFunction("net/http.(*http2serverConn).serve"),
			goleak.IgnoreAnyFunction("net/http.(*http2serverConn).readFrames"),
			goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"),
			goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.(*Cache).maintainAssets"),
			goleak.IgnoreAnyFunction("github.com/caddyserver/caddy/v2/modules/caddytls.(*TLS).keepStorageClean.func1"),
			goleak.IgnoreAnyFunction("github.com/caddyserver/caddy/v2/modules/caddypki.(*PKI).maintenanceForCA"),
			// reverse_proxy forgets a counted failure after fail_duration
			goleak.IgnoreAnyFunction("github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy.(*Handler).countFailure.func1"),
		)
	})
}

// newClient is an HTTP client whose idle connections close with the test.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{
		WriteBufferSize:    64 << 10,
		ReadBufferSize:     64 << 10,
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Minute}
}

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

// backend is a real HTTP server on loopback that parses what it receives as
// multipart, streaming, and records it.
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

// waitRequests waits until the backend has finished n requests.
func (b *backend) waitRequests(t *testing.T, n int) []backendRequest {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := b.received()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// formPart describes one part of a generated form.
type formPart struct {
	field, filename, contentType string
	value                        string // a text field's value
	size                         int64  // a file's size; its bytes are generated
	seed                         uint64
}

// fileData is a file's deterministic, non-periodic content: random 64 KiB
// blocks, each stamped with its index.
type fileData struct {
	block []byte
	left  int64
	off   int64
}

func newFileData(size int64, seed uint64) *fileData {
	block := make([]byte, 64<<10)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(block); i += 8 {
		binary.LittleEndian.PutUint64(block[i:], r.Uint64())
	}
	return &fileData{block: block, left: size}
}

func (f *fileData) Read(p []byte) (int, error) {
	if f.left == 0 {
		return 0, io.EOF
	}
	in := f.off % int64(len(f.block))
	if in == 0 {
		binary.LittleEndian.PutUint64(f.block, uint64(f.off/int64(len(f.block))))
	}
	n := copy(p, f.block[in:])
	n = int(min(int64(n), f.left))
	f.left -= int64(n)
	f.off += int64(n)
	return n, nil
}

// expected returns what the backend should see for parts.
func expected(parts []formPart) []seenPart {
	var out []seenPart
	for _, p := range parts {
		h := sha256.New()
		var n int64
		if p.filename != "" {
			n, _ = io.Copy(h, newFileData(p.size, p.seed))
		} else {
			k, _ := io.WriteString(h, p.value)
			n = int64(k)
		}
		out = append(out, seenPart{Field: p.field, Filename: p.filename, ContentType: p.contentType, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))})
	}
	return out
}

// writeForm writes parts as a multipart form to w.
func writeForm(mw *multipart.Writer, parts []formPart) error {
	for _, p := range parts {
		h := make(map[string][]string)
		quote := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace
		if p.filename != "" {
			h["Content-Disposition"] = []string{fmt.Sprintf(`form-data; name="%s"; filename="%s"`, quote(p.field), quote(p.filename))}
		} else {
			h["Content-Disposition"] = []string{fmt.Sprintf(`form-data; name="%s"`, quote(p.field))}
		}
		if p.contentType != "" {
			h["Content-Type"] = []string{p.contentType}
		}
		pw, err := mw.CreatePart(h)
		if err != nil {
			return err
		}
		if p.filename != "" {
			_, err = io.Copy(pw, newFileData(p.size, p.seed))
		} else {
			_, err = io.WriteString(pw, p.value)
		}
		if err != nil {
			return err
		}
	}
	return mw.Close()
}

// formBody streams parts as a multipart body. With length, the request also
// gets a Content-Length, computed by writing the form once to a counter.
func formBody(parts []formPart) (body io.ReadCloser, contentType string, length int64) {
	counter := &countWriter{}
	cmw := multipart.NewWriter(counter)
	_ = writeForm(cmw, parts)

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	_ = mw.SetBoundary(cmw.Boundary())
	go func() { pw.CloseWithError(writeForm(mw, parts)) }()
	return pr, mw.FormDataContentType(), counter.n
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// postForm uploads parts to url, with a Content-Length unless chunked.
func postForm(t *testing.T, c *http.Client, url string, parts []formPart, chunked bool) (*http.Response, []byte) {
	t.Helper()
	body, ct, n := formBody(parts)
	req, err := http.NewRequest(http.MethodPost, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	if !chunked {
		req.ContentLength = n
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	return res, out
}

// errorBody is the JSON error the gateway answers with.
type errorBody struct {
	Error struct {
		Status  int    `json:"status"`
		Code    string `json:"code"`
		Message string `json:"message"`
		Limit   string `json:"limit"`
		Part    *struct {
			Index    int    `json:"index"`
			Field    string `json:"field"`
			Filename string `json:"filename"`
		} `json:"part"`
	} `json:"error"`
}

func decodeError(t *testing.T, body []byte) errorBody {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("error body is not JSON: %v: %q", err, body)
	}
	return e
}

func comparableParts(parts []seenPart) string {
	var sb strings.Builder
	for _, p := range parts {
		fmt.Fprintf(&sb, "%s|%s|%s|%d|%s\n", p.Field, p.Filename, p.ContentType, p.Size, p.SHA256)
	}
	return sb.String()
}

var errAny = errors.New("any")
