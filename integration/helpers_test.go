package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/streamproxy/caddy-stream-proxy/caddymodule"
)

// The in-process Caddy's ports: its admin port, the gateway's HTTP port and
// its HTTPS port (TCP for HTTP/1.1 and HTTP/2, UDP for HTTP/3). Unset,
// SP_TEST_ADMIN_PORT, SP_TEST_HTTP_PORT and SP_TEST_HTTPS_PORT are picked at
// random among free ports, so that two runs on one machine never share one
// Caddy (caddytest loads into whatever Caddy answers on the admin port).
var (
	adminPort, httpPort, httpsPort = testPorts()
	gatewayURL                     = fmt.Sprintf("http://localhost:%d", httpPort)
)

// testPorts reads the ports from the environment, or picks free ones below
// Linux's ephemeral range (32768 up), where no outgoing connection of the
// tests can take one before Caddy binds it. The HTTP port leaves httpPort+364
// free too, for TestEdgeNodeParsersReadTheSame's backend.
func testPorts() (admin, plain, tls int) {
	admin, plain = envPort("SP_TEST_ADMIN_PORT"), envPort("SP_TEST_HTTP_PORT")
	tls = envPort("SP_TEST_HTTPS_PORT")
	pick := func(free func(p int) bool) int {
		for range 1000 {
			if p := 20000 + rand.IntN(12000); free(p) {
				return p
			}
		}
		panic("no free port for the in-process Caddy")
	}
	if plain == 0 {
		plain = pick(func(p int) bool {
			return p != admin && p+363 != admin && p+364 != admin && portFree(p, false) && portFree(p+364, false) &&
				(tls != 0 || portFree(p+363, true))
		})
		if tls == 0 {
			tls = plain + 363
		}
	}
	if tls == 0 {
		tls = pick(func(p int) bool { return p != admin && p != plain && portFree(p, true) })
	}
	if admin == 0 {
		admin = pick(func(p int) bool { return p != plain && p != tls && p != plain+364 && portFree(p, false) })
	}
	return admin, plain, tls
}

func envPort(name string) int {
	if p, err := strconv.Atoi(os.Getenv(name)); err == nil && p > 0 {
		return p
	}
	return 0
}

// portFree reports whether p can be bound on every address, over TCP and,
// with udp, over UDP too.
func portFree(p int, udp bool) bool {
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
	if err != nil {
		return false
	}
	defer l.Close()
	if udp {
		c, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p))
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

// caddyOwned is set once this process has found its admin and HTTP ports
// unserved, so that the Caddy caddytest then starts is its own.
var caddyOwned atomic.Bool

// ownCaddy fails the test if another process (another test run given the
// same ports) serves the admin or HTTP port: caddytest would load this run's
// configurations into that Caddy, each run would replace the other's routes,
// and a request would get an unrouted 200 with an empty body.
func ownCaddy(t *testing.T) {
	t.Helper()
	if caddyOwned.Load() {
		return
	}
	for _, p := range []int{adminPort, httpPort} {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("localhost:%d", p), time.Second); err == nil {
			c.Close()
			t.Fatalf("port %d is served by another process: give this run ports of its own "+
				"(SP_TEST_ADMIN_PORT, SP_TEST_HTTP_PORT, SP_TEST_HTTPS_PORT) or leave them unset", p)
		}
	}
	caddyOwned.Store(true)
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
	ownCaddy(t)
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	tester.InitServer(gatewayCaddyfile(serverOpts, site), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	checkLeaks(t)
}

// gatewayCaddyfile is the in-process Caddy's configuration: the global
// options, serverOpts in its servers block, and site on httpPort.
func gatewayCaddyfile(serverOpts, site string) string {
	return fmt.Sprintf(`{
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
`, adminPort, httpPort, httpsPort, serverOpts, httpPort, site)
}

// startGatewayEvents is startGateway whose Caddy passes the events named
// (such as the health checker's healthy and unhealthy) to the returned
// channel, as Caddy's events app emits them: the test learns of a change of
// state when it has happened.
func startGatewayEvents(t *testing.T, site string, names ...string) <-chan caddy.Event {
	t.Helper()
	ownCaddy(t)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(gatewayCaddyfile("", site)), nil)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(cfg, &doc); err != nil {
		t.Fatal(err)
	}
	events := make(chan caddy.Event, 64)
	eventChans.Store(t.Name(), events)
	t.Cleanup(func() { eventChans.Delete(t.Name()) })
	doc["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{map[string]any{
		"events":   names,
		"handlers": []any{map[string]any{"handler": "sp_test_signal", "test": t.Name()}},
	}}}
	cfg, _ = json.Marshal(doc)
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	tester.InitServer(string(cfg), "json")
	if t.Failed() {
		t.FailNow()
	}
	checkLeaks(t)
	return events
}

// waitEvent waits for the event name about host.
func waitEvent(t *testing.T, events <-chan caddy.Event, name, host string) {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case e := <-events:
			if e.Name() == name && e.Data["host"] == host {
				return
			}
		case <-timeout:
			t.Fatalf("no %s event for %s within %v", name, host, waitLimit)
		}
	}
}

func init() { caddy.RegisterModule(eventSignal{}) }

// eventChans holds each test's channel of events, by test name.
var eventChans sync.Map

// eventSignal is an events handler that passes each event to its test's
// channel, without blocking the emitter.
type eventSignal struct {
	Test string `json:"test,omitempty"`
}

func (eventSignal) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.sp_test_signal", New: func() caddy.Module { return new(eventSignal) }}
}

func (h *eventSignal) Handle(_ context.Context, e caddy.Event) error {
	if c, ok := eventChans.Load(h.Test); ok {
		select {
		case c.(chan caddy.Event) <- e:
		default:
		}
	}
	return nil
}

// waitLimit bounds every wait for a signal: far more than any takes on a
// busy machine, so that only a signal that never comes fails the test.
const waitLimit = 30 * time.Second

// uploadStatus is an upload as the admin API lists it in flight.
type uploadStatus struct {
	Mode  string `json:"mode"`
	Bytes int64  `json:"bytes"`
}

// adminUploads lists the uploads the admin API has in flight.
func adminUploads(t *testing.T) []uploadStatus {
	t.Helper()
	res, err := http.Get(fmt.Sprintf("http://localhost:%d/stream_proxy/uploads", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var list []uploadStatus
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	return list
}

// inFlight waits for the admin API to list n uploads in flight, and returns
// them. An upload leaves the list when its handler has returned: inFlight(t,
// 0) waits for that.
func inFlight(t *testing.T, n int) []uploadStatus {
	t.Helper()
	var list []uploadStatus
	if !waitUntil(func() bool { list = adminUploads(t); return len(list) == n }) {
		t.Fatalf("uploads in flight: %+v, want %d", list, n)
	}
	return list
}

// waitFor waits until cond holds, checking it every few milliseconds, and
// fails the test, naming what, if it does not within waitLimit. For states
// that have no channel to wait on: a file, a listing, a metric.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !waitUntil(cond) {
		t.Fatalf("waited %v for %s", waitLimit, what)
	}
}

// waitUntil is waitFor that reports whether cond came to hold, for a caller
// that says itself what it found instead.
func waitUntil(cond func() bool) bool {
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // the polling interval
	}
	return true
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

// formBody streams parts as a multipart body under a random boundary. The
// length is the body's, computed by writing the form once to a counter.
func formBody(parts []formPart) (body io.ReadCloser, contentType string, length int64) {
	return formBodyBoundary(parts, "")
}

// formBodyBoundary is formBody under boundary ("": a random one).
func formBodyBoundary(parts []formPart, boundary string) (body io.ReadCloser, contentType string, length int64) {
	counter := &countWriter{}
	cmw := multipart.NewWriter(counter)
	if boundary != "" {
		if err := cmw.SetBoundary(boundary); err != nil {
			panic(err)
		}
	}
	_ = writeForm(cmw, parts)

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	_ = mw.SetBoundary(cmw.Boundary())
	go func() { pw.CloseWithError(writeForm(mw, parts)) }()
	return pr, mw.FormDataContentType(), counter.n
}

// countWriter counts the bytes written to it.
type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// postForm uploads parts to url, with a Content-Length unless chunked.
func postForm(t *testing.T, c *http.Client, url string, parts []formPart, chunked bool) (*http.Response, []byte) {
	t.Helper()
	body, ct, n := formBody(parts)
	if chunked {
		n = -1
	}
	return postTo(t, c, url, ct, body, n)
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

// opaqueReader hides the length of its reader, so that a request is chunked.
type opaqueReader struct{ r io.Reader }

func (o opaqueReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// postRaw sends body as it is to the gateway's /upload, with a
// Content-Length unless chunked.
func postRaw(t *testing.T, c *http.Client, contentType string, body []byte, chunked bool) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader = bytes.NewReader(body)
	if chunked {
		rd = opaqueReader{rd}
	}
	return postStream(t, c, contentType, rd, !chunked, int64(len(body)))
}

// postStream sends body to the gateway's /upload, with a Content-Length if
// withLength.
func postStream(t *testing.T, c *http.Client, contentType string, body io.Reader, withLength bool, length int64) (*http.Response, []byte) {
	t.Helper()
	if !withLength {
		length = -1
	}
	return postTo(t, c, gatewayURL+"/upload", contentType, body, length)
}

// postRawTo posts body to url, with a Content-Length.
func postRawTo(t *testing.T, c *http.Client, url, contentType string, body []byte) (*http.Response, []byte) {
	t.Helper()
	return postTo(t, c, url, contentType, bytes.NewReader(body), int64(len(body)))
}

// postTo posts body to url with the Content-Length length (-1: chunked) and
// returns the answer with its whole body.
func postTo(t *testing.T, c *http.Client, url, contentType string, body io.Reader, length int64) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	req.ContentLength = length
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	return res, out
}

// expectRefusal checks a JSON error answer: its status, code and limit (if
// not empty), and that the JSON repeats the status.
func expectRefusal(t *testing.T, res *http.Response, body []byte, status int, code, limit string) errorBody {
	t.Helper()
	if res.StatusCode != status {
		t.Fatalf("status %d, want %d: %s", res.StatusCode, status, body)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type %q, want application/json", ct)
	}
	e := decodeError(t, body)
	if e.Error.Status != status || e.Error.Code != code || e.Error.Message == "" {
		t.Errorf("error %s, want status %d code %s", body, status, code)
	}
	if limit != "" && e.Error.Limit != limit {
		t.Errorf("error limit %q, want %q: %s", e.Error.Limit, limit, body)
	}
	return e
}

// expectPart checks the part an error names.
func expectPart(t *testing.T, e errorBody, index int, field, filename string) {
	t.Helper()
	p := e.Error.Part
	if p == nil || p.Index != index || p.Field != field || p.Filename != filename {
		t.Errorf("error names part %+v, want index %d field %q filename %q", p, index, field, filename)
	}
}

// expectAborted checks that the backend got exactly one request and saw it fail.
func expectAborted(t *testing.T, be *backend) {
	t.Helper()
	got := be.waitRequests(t, 1)
	if len(got) != 1 {
		t.Fatalf("backend got %d requests, want 1 (aborted)", len(got))
	}
	if got[0].Err == nil {
		t.Fatalf("backend saw a clean end of the upload, want an aborted request; parts %+v", got[0].Parts)
	}
}

// expectComplete checks that the backend got exactly one request, complete,
// with the parts want.
func expectComplete(t *testing.T, be *backend, want []seenPart) {
	t.Helper()
	got := be.waitRequests(t, 1)
	if len(got) != 1 {
		t.Fatalf("backend got %d requests, want 1", len(got))
	}
	if got[0].Err != nil {
		t.Fatalf("backend: %v", got[0].Err)
	}
	if w, h := comparableParts(want), comparableParts(got[0].Parts); w != h {
		t.Fatalf("backend saw\n%s\nwant\n%s", h, w)
	}
}

// formBytes is a whole form in memory, for small forms.
func formBytes(t *testing.T, parts []formPart, boundary string) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if boundary != "" {
		if err := mw.SetBoundary(boundary); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeForm(mw, parts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), mw.FormDataContentType()
}

// partStream generates a form of n parts lazily: only the part being sent is
// ever in memory. The client's transport may still be reading it after the
// answer came, hence the atomic counts.
type partStream struct {
	boundary string
	n        int
	part     func(i int) string // headers, blank line, data; without delimiters
	i        int
	closed   bool
	buf      []byte
	parts    atomic.Int64 // generated so far
	sent     atomic.Int64
}

func (s *partStream) Read(p []byte) (int, error) {
	for len(s.buf) == 0 {
		switch {
		case s.i < s.n:
			s.buf = []byte("--" + s.boundary + "\r\n" + s.part(s.i) + "\r\n")
			s.i++
			s.parts.Add(1)
		case !s.closed:
			s.buf = []byte("--" + s.boundary + "--\r\n")
			s.closed = true
		default:
			return 0, io.EOF
		}
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	s.sent.Add(int64(n))
	return n, nil
}

// liveHeap returns the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
