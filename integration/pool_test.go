package integration

// The backend leg is Caddy's reverse_proxy: pools, load balancing, health
// checks, retries, X-Forwarded-* and header manipulation are its own.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newBackendAt is healthy(newBackend) listening on addr, to bring a stopped
// one back.
func newBackendAt(t *testing.T, addr string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := healthy(&backend{})
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(b.serve))
	b.Listener.Close()
	b.Listener = ln
	b.Start()
	t.Cleanup(b.Close)
	return b
}

// deadAddr is a loopback address that refuses connections.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func addrOf(b *backend) string { return strings.TrimPrefix(b.URL, "http://") }

// healthy makes b answer health checks on /health.
func healthy(b *backend) *backend {
	b.before = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/health" {
			return true // 200, empty
		}
		return false
	}
	return b
}

func smallForm(seed uint64) []formPart {
	return []formPart{
		{field: "model", value: "tiny"},
		{field: "audio", filename: "a.wav", contentType: "audio/wav", size: 256<<10 + int64(seed), seed: seed},
	}
}

// uploadOK posts a small form and checks it arrived whole.
func uploadOK(t *testing.T, c *http.Client, url string, seed uint64) {
	t.Helper()
	res, body := postForm(t, c, url, smallForm(seed), seed%2 == 0)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("upload %d: status %d: %s", seed, res.StatusCode, body)
	}
	if sum := expected(smallForm(seed))[1].SHA256; !strings.Contains(string(body), sum) {
		t.Fatalf("upload %d: answer %s does not name the file's digest", seed, body)
	}
}

func requestCounts(bs ...*backend) []int {
	var n []int
	for _, b := range bs {
		k := 0
		for _, r := range b.received() {
			if r.Err == nil && len(r.Parts) > 0 {
				k++
			}
		}
		n = append(n, k)
	}
	return n
}

func TestPoolRoundRobin(t *testing.T) {
	a, b, c := newBackend(t), newBackend(t), newBackend(t)
	ra, rb, rc := newPartBackend(t, http.StatusOK), newPartBackend(t, http.StatusOK), newPartBackend(t, http.StatusOK)
	startGateway(t, fmt.Sprintf(`stream_proxy /forward* %s %s %s {
	lb_policy round_robin
}
stream_proxy /parts* {
	to %s %s %s
	mode per_part
	lb_policy round_robin
}`, a.URL, b.URL, c.URL, ra.URL, rb.URL, rc.URL))
	client := newClient(t)

	for i := range 6 {
		uploadOK(t, client, gatewayURL+"/forward", uint64(i+1))
	}
	if got := fmt.Sprint(requestCounts(a, b, c)); got != "[2 2 2]" {
		t.Errorf("uploads per backend %s, want [2 2 2]", got)
	}

	var parts []formPart
	for i := range 6 {
		parts = append(parts, formPart{field: "f", filename: fmt.Sprintf("%d.bin", i), size: 100 << 10, seed: uint64(i)})
	}
	res, body := postForm(t, client, gatewayURL+"/parts", parts, true)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("per_part: status %d: %s", res.StatusCode, body)
	}
	var seen []string
	for _, rb := range []*partBackend{ra, rb, rc} {
		seen = append(seen, fmt.Sprint(len(rb.requests())))
	}
	if got := strings.Join(seen, " "); got != "2 2 2" {
		t.Errorf("parts per backend %s, want 2 2 2", got)
	}
}

// least_conn sends concurrent uploads to the backends with the fewest in
// flight: three uploads held open at once land on three backends.
func TestPoolLeastConn(t *testing.T) {
	var arrived atomic.Int32
	all := make(chan struct{})
	hold := func(b *backend) *backend {
		b.before = func(w http.ResponseWriter, r *http.Request) bool {
			if arrived.Add(1) == 3 {
				close(all)
			}
			select {
			case <-all:
			case <-time.After(3 * time.Second): // two on one backend: the counts tell
			}
			return false
		}
		return b
	}
	a, b, c := hold(newBackend(t)), hold(newBackend(t)), hold(newBackend(t))
	startGateway(t, fmt.Sprintf(`stream_proxy /forward* %s %s %s {
	lb_policy least_conn
}`, a.URL, b.URL, c.URL))
	client := newClient(t)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			uploadOK(t, client, gatewayURL+"/forward", uint64(i+1))
		})
		// Each upload is at its backend before the next picks one.
		waitFor(t, fmt.Sprintf("upload %d at a backend", i+1), func() bool { return arrived.Load() > int32(i) })
	}
	wg.Wait()
	if got := fmt.Sprint(requestCounts(a, b, c)); got != "[1 1 1]" {
		t.Errorf("uploads per backend %s, want [1 1 1]", got)
	}
}

// Active health checks take a stopped backend out of the pool, and put it
// back once it answers again; uploads meanwhile all succeed.
func TestPoolActiveHealthChecks(t *testing.T) {
	a, b := healthy(newBackend(t)), healthy(newBackend(t))
	bAddr := addrOf(b)
	events := startGatewayEvents(t, fmt.Sprintf(`stream_proxy /forward* %s %s {
	lb_policy round_robin
	health_uri /health
	health_interval 100ms
	health_timeout 1s
	health_fails 1
	health_passes 1
}`, a.URL, b.URL), "healthy", "unhealthy")
	client := newClient(t)

	b.Close()
	waitEvent(t, events, "unhealthy", bAddr)
	for i := range 4 {
		uploadOK(t, client, gatewayURL+"/forward", uint64(i+1))
	}
	if got := fmt.Sprint(requestCounts(a)); got != "[4]" {
		t.Errorf("with one backend stopped, the other got %s uploads, want [4]", got)
	}

	back := newBackendAt(t, bAddr)
	waitEvent(t, events, "healthy", bAddr)
	for i := range 4 {
		uploadOK(t, client, gatewayURL+"/forward", uint64(i+10))
	}
	if got := fmt.Sprint(requestCounts(a, back)); got != "[6 2]" {
		t.Errorf("once it is back, uploads per backend %s, want [6 2]", got)
	}
}

// lb_retries carries an upload past a dead upstream: the dial fails before any
// body byte is read, and the next upstream gets the whole upload.
func TestPoolRetriesPastDeadUpstream(t *testing.T) {
	live := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /forward* %s %s {
	lb_policy round_robin
	lb_retries 2
}`, deadAddr(t), live.URL))
	client := newClient(t)
	parts := sampleForm(3 << 20)
	for i := range 4 {
		res, body := postForm(t, client, gatewayURL+"/forward", parts, i%2 == 0)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("upload %d: status %d: %s", i, res.StatusCode, body)
		}
	}
	got := live.waitRequests(t, 4)
	if len(got) != 4 {
		t.Fatalf("live backend got %d uploads, want 4", len(got))
	}
	want := comparableParts(expected(parts))
	for i, r := range got {
		if r.Err != nil || comparableParts(r.Parts) != want {
			t.Fatalf("upload %d arrived as %v %s, want\n%s", i, r.Err, comparableParts(r.Parts), want)
		}
	}
}

// A client's fault never counts against an upstream: with passive health
// checks at max_fails 1 and one backend, uploads refused for the client's
// sake leave the backend in the pool. A backend that fails does count.
func TestPoolPassiveHealthIgnoresClientFaults(t *testing.T) {
	be := newBackend(t)
	be.firstBytes = make(chan struct{}, 1)
	var dying atomic.Bool
	be.before = func(w http.ResponseWriter, r *http.Request) bool {
		if !dying.Load() {
			return false
		}
		_, _ = io.CopyN(io.Discard, r.Body, 64<<10)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return true
	}
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_part_size 1MiB
	hash sha256
	fail_duration 1m
	max_fails 1
}`, be.URL))
	client := newClient(t)
	good := func(step string) {
		t.Helper()
		res, body := postForm(t, client, gatewayURL+"/upload", smallForm(7), false)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("after %s: status %d: %s", step, res.StatusCode, body)
		}
	}

	good("nothing")

	// Malformed: the body ends without its closing delimiter.
	whole, ct := formBytes(t, smallForm(3), "")
	res, body := postRaw(t, client, ct, whole[:len(whole)-200], false)
	expectRefusal(t, res, body, http.StatusBadRequest, "malformed_multipart", "")
	good("a malformed upload")

	// A broken limit, mid-stream.
	res, body = postForm(t, client, gatewayURL+"/upload", sampleForm(2<<20), true)
	expectRefusal(t, res, body, http.StatusRequestEntityTooLarge, "part_too_large", "max_part_size")
	good("a broken limit")

	// A digest the part's data does not match.
	mismatch := "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n" +
		"Content-Digest: sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:\r\n\r\nnot empty\r\n--b--\r\n"
	res, body = postRaw(t, client, "multipart/form-data; boundary=b", []byte(mismatch), false)
	expectRefusal(t, res, body, http.StatusBadRequest, "digest_mismatch", "")
	good("a digest mismatch")

	// A client that vanishes mid-upload.
	conn := dialGateway(t)
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", ct, len(whole))
	select { // what the backend took before lies in the buffer
	case <-be.firstBytes:
	default:
	}
	_, _ = conn.Write(whole[:len(whole)/2])
	select { // the file is on its way to the backend
	case <-be.firstBytes:
	case <-time.After(waitLimit):
		t.Fatal("the backend got none of the file")
	}
	resetConn(conn)
	inFlight(t, 0) // the gateway has ended the upload, and counted it or not
	good("a client that went away")

	// The backend's own failure does count: it is out of the pool.
	dying.Store(true)
	res, body = postForm(t, client, gatewayURL+"/upload", sampleForm(512<<10), true)
	expectRefusal(t, res, body, http.StatusBadGateway, "backend_failed", "")
	res, body = postForm(t, client, gatewayURL+"/upload", smallForm(8), false)
	expectRefusal(t, res, body, http.StatusServiceUnavailable, "no_upstream", "")
}

// X-Forwarded-For, -Proto and -Host reach the backend exactly as reverse_proxy
// sets them: a client's own values pass only from trusted_proxies.
func TestForwardedHeadersAsReverseProxy(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /sp/untrusted* %[1]s
reverse_proxy /rp/untrusted* %[1]s
stream_proxy /sp/trusted* %[1]s {
	trusted_proxies 127.0.0.0/8
}
reverse_proxy /rp/trusted* %[1]s {
	trusted_proxies 127.0.0.0/8
}`, be.URL))
	client := newClient(t)
	send := func(path string) http.Header {
		t.Helper()
		body, ct, n := formBody(smallForm(1))
		req, _ := http.NewRequest(http.MethodPost, gatewayURL+path, body)
		req.Header.Set("Content-Type", ct)
		req.ContentLength = n
		req.Header.Set("X-Forwarded-For", "6.6.6.6")
		req.Header.Set("X-Forwarded-Proto", "https")
		req.Header.Set("X-Forwarded-Host", "claimed.example")
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		got := be.received()
		return got[len(got)-1].Header
	}
	for _, tc := range []struct{ trust, xff, proto, host string }{
		{"untrusted", "127.0.0.1", "http", fmt.Sprintf("localhost:%d", httpPort)},
		{"trusted", "6.6.6.6, 127.0.0.1", "https", "claimed.example"},
	} {
		sp, rp := send("/sp/"+tc.trust), send("/rp/"+tc.trust)
		for _, f := range []string{"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Via"} {
			if a, b := strings.Join(sp.Values(f), "|"), strings.Join(rp.Values(f), "|"); a != b {
				t.Errorf("%s %s: stream_proxy sent %q, reverse_proxy %q", tc.trust, f, a, b)
			}
		}
		if got := sp.Get("X-Forwarded-For"); got != tc.xff {
			t.Errorf("%s: X-Forwarded-For %q, want %q", tc.trust, got, tc.xff)
		}
		if got := sp.Get("X-Forwarded-Proto"); got != tc.proto {
			t.Errorf("%s: X-Forwarded-Proto %q, want %q", tc.trust, got, tc.proto)
		}
		if got := sp.Get("X-Forwarded-Host"); got != tc.host {
			t.Errorf("%s: X-Forwarded-Host %q, want %q", tc.trust, got, tc.host)
		}
	}
}

// earlyBackend answers every request with 401 and a JSON body without reading
// the upload: header and body in two writes 20 ms apart, then it holds the
// connection (hold) or closes it.
type earlyBackend struct {
	ln   net.Listener
	hold bool
	done chan struct{}
	wg   sync.WaitGroup
}

const earlyBody = `{"error":"unauthorized","detail":"no token"}`

func (b *earlyBackend) serve() {
	defer b.wg.Done()
	for {
		conn, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Go(func() {
			defer conn.Close()
			if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
				return
			}
			fmt.Fprintf(conn, "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(earlyBody))
			time.Sleep(20 * time.Millisecond) // the behaviour under test: an answer in two writes, apart
			_, _ = io.WriteString(conn, earlyBody)
			if b.hold {
				select {
				case <-b.done:
				case <-time.After(10 * time.Second):
				}
				return
			}
			// Closes as servers do: no more to send, and what the gateway
			// still sends is read and dropped for a moment, so that the
			// close is not a reset that could overtake the answer.
			_ = conn.(*net.TCPConn).CloseWrite()
			_ = conn.SetReadDeadline(time.Now().Add(time.Second))
			_, _ = io.Copy(io.Discard, conn)
		})
	}
}

// A backend that answers early reaches the client whole, every time.
func TestEarlyAnswerRelayedWhole(t *testing.T) {
	if len(earlyBody) != 44 {
		t.Fatalf("the answer is %d bytes", len(earlyBody))
	}
	var backends []*earlyBackend
	for _, hold := range []bool{true, false} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		backends = append(backends, &earlyBackend{ln: ln, hold: hold, done: make(chan struct{})})
	}
	startGateway(t, fmt.Sprintf(`stream_proxy /holds* %s
stream_proxy /closes* %s`, backends[0].ln.Addr(), backends[1].ln.Addr()))
	for _, b := range backends {
		b.wg.Add(1)
		go b.serve()
		t.Cleanup(func() { close(b.done); b.ln.Close(); b.wg.Wait() })
	}

	for _, path := range []string{"/holds", "/closes"} {
		t.Run(path, func(t *testing.T) {
			for i := range 20 {
				client := newClient(t)
				res, body := postForm(t, client, gatewayURL+path, sampleForm(16<<20), i%2 == 0)
				if res.StatusCode != http.StatusUnauthorized || string(body) != earlyBody {
					t.Fatalf("upload %d: status %d, body %q; want 401 and %q", i, res.StatusCode, body, earlyBody)
				}
			}
		})
	}
}

func TestHeaderDown(t *testing.T) {
	be := newBackend(t)
	be.before = func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("X-Internal", "secret")
		return false
	}
	startGateway(t, fmt.Sprintf(`stream_proxy /forward* %s {
	header_down -X-Internal
	header_down X-Served-By gateway
}`, be.URL))
	res, body := postForm(t, newClient(t), gatewayURL+"/forward", smallForm(1), false)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	if res.Header.Get("X-Internal") != "" || res.Header.Get("X-Served-By") != "gateway" {
		t.Fatalf("response header %v: want X-Internal removed and X-Served-By set", res.Header)
	}
}
