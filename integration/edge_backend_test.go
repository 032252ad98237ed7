package integration

// Edge cases of integration/README.md about the backend: it answers early, dies
// mid-stream, or never reads or answers.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// integration/README.md, row 15: a backend that answers 401 or 413 before it
// has read the body gets its answer (status, headers, body) relayed to the
// client, not a 502, over HTTP/1.1 and HTTP/2, whether the client's body is
// chunked or not.
func TestEdgeBackendAnswersEarly(t *testing.T) {
	be := newBackend(t)
	be.before = func(w http.ResponseWriter, r *http.Request) bool {
		switch r.URL.Path {
		case "/upload/unauthorized":
			w.Header().Set("WWW-Authenticate", `Bearer realm="uploads"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, "no token\n")
		case "/upload/quota":
			_, _ = io.CopyN(io.Discard, r.Body, 64<<10)
			w.Header().Set("X-Quota", "exceeded")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			_, _ = io.WriteString(w, "quota exceeded\n")
		default:
			return false
		}
		return true
	}
	startGatewayWith(t, h2cServers, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))

	for _, tc := range []struct {
		path, header, value, body string
		status                    int
	}{
		{"/upload/unauthorized", "WWW-Authenticate", `Bearer realm="uploads"`, "no token\n", 401},
		{"/upload/quota", "X-Quota", "exceeded", "quota exceeded\n", 413},
	} {
		for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
			for _, chunked := range []bool{false, true} {
				t.Run(fmt.Sprintf("%d %s chunked=%v", tc.status, proto, chunked), func(t *testing.T) {
					// A few times over: the failure this guards against is a race.
					for range 5 {
						c := newClient(t)
						if proto == "HTTP/2" {
							c = newH2CClient(t)
						}
						body, ct, n := formBody(sampleForm(16 << 20))
						req, _ := http.NewRequest(http.MethodPost, gatewayURL+tc.path, body)
						req.Header.Set("Content-Type", ct)
						if !chunked {
							req.ContentLength = n
						}
						res, err := c.Do(req)
						body.Close()
						if err != nil {
							t.Fatalf("POST: %v", err)
						}
						out, _ := io.ReadAll(res.Body)
						res.Body.Close()
						if res.StatusCode != tc.status || string(out) != tc.body || res.Header.Get(tc.header) != tc.value {
							t.Fatalf("got %d %s: %q, want the backend's %d %s: %q", res.StatusCode,
								res.Header.Get(tc.header), out, tc.status, tc.value, tc.body)
						}
					}
				})
			}
		}
	}
}

// integration/README.md, row 15 again, with a backend that reads 1 MiB,
// answers, and then keeps the connection open without reading: the gateway's
// write to it blocks once the socket buffers are full, and must be cut short
// for the answer to reach the client.
func TestEdgeBackendAnswersEarlyStopsReading(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, req.Body, 1<<20); err != nil {
			return
		}
		answer := "quota exceeded\n"
		fmt.Fprintf(conn, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(answer), answer)
		<-hold
	}()
	t.Cleanup(func() { close(hold); ln.Close(); <-accepted })
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* http://%s`, ln.Addr()))

	c := newClient(t)
	c.Timeout = 30 * time.Second // stuck: the POST fails
	res, body := postForm(t, c, gatewayURL+"/upload", sampleForm(64<<20), false)
	if res.StatusCode != http.StatusRequestEntityTooLarge || string(body) != "quota exceeded\n" {
		t.Fatalf("got %d %q, want the backend's 413", res.StatusCode, body)
	}
}

// integration/README.md, row 16: a backend that dies mid-stream (its connection
// closed or reset after it has read part of the upload) gives the client 502
// backend_failed.
func TestEdgeBackendDiesMidStream(t *testing.T) {
	be := newBackend(t)
	be.before = func(w http.ResponseWriter, r *http.Request) bool {
		_, _ = io.CopyN(io.Discard, r.Body, 1<<20)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return false
		}
		if tc, ok := conn.(*net.TCPConn); ok && strings.HasSuffix(r.URL.Path, "/reset") {
			_ = tc.SetLinger(0)
		}
		conn.Close()
		return true
	}
	startGatewayWith(t, h2cServers, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		for _, path := range []string{"/upload/close", "/upload/reset"} {
			for _, chunked := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s %s chunked=%v", proto, path, chunked), func(t *testing.T) {
					c := newClient(t)
					if proto == "HTTP/2" {
						c = newH2CClient(t)
					}
					// A few times over: the failure this guards against is a race.
					for range 5 {
						res, body := postForm(t, c, gatewayURL+path, sampleForm(16<<20), chunked)
						expectRefusal(t, res, body, http.StatusBadGateway, "backend_failed", "")
					}
				})
			}
		}
	}
}

// blackhole is a backend that accepts connections and never reads from them
// nor answers.
type blackhole struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	done  chan struct{}
}

func newBlackhole(t *testing.T) *blackhole {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-b.done
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			c.Close()
		}
	})
	return b
}

// integration/README.md, row 17: a backend that accepts the connection but
// never reads, or reads the whole upload and never answers, gives the client
// 504 backend_timeout after the transport's timeouts (write_timeout while the
// upload is stuck, response_header_timeout once it is all written).
func TestEdgeBackendNeverAnswers(t *testing.T) {
	hole := newBlackhole(t)
	silent := newBackend(t)
	release := make(chan struct{})
	silent.before = func(w http.ResponseWriter, r *http.Request) bool {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return true
	}
	startGateway(t, fmt.Sprintf(`stream_proxy /hole* http://%s {
	transport http {
		response_header_timeout 1s
		write_timeout 1s
	}
}
stream_proxy /silent* %s {
	transport http {
		response_header_timeout 1s
		write_timeout 1s
	}
}`, hole.ln.Addr(), silent.URL))
	defer close(release)
	c := newClient(t)

	for _, tc := range []struct {
		name, path string
		size       int64
	}{
		{"never reads, upload fits in the socket buffers", "/hole", 1000},
		{"never reads, 32 MiB upload", "/hole", 32 << 20},
		{"reads all, never answers", "/silent", 4 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			res, body := postForm(t, c, gatewayURL+tc.path, sampleForm(tc.size), false)
			t.Logf("answered after %v", time.Since(start))
			expectRefusal(t, res, body, http.StatusGatewayTimeout, "backend_timeout", "")
		})
	}
}
