package integration

// Faults of the backend (integration/README.md, faults × modes): a backend
// that answers 2xx before it took the upload, and one that stops reading.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawBackend is a backend on a bare TCP listener that reads each request's
// header and then does what act says with the connection. It reports, per
// connection, whether the gateway closed it.
type rawBackend struct {
	ln     net.Listener
	act    func(conn net.Conn, req *http.Request)
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
	closed chan string // one line per connection the gateway closed
}

func newRawBackend(t *testing.T, act func(conn net.Conn, req *http.Request)) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{ln: ln, act: act, closed: make(chan string, 64)}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, conn)
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				req, err := http.ReadRequest(bufio.NewReader(conn))
				if err != nil {
					return
				}
				b.act(conn, req)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *rawBackend) addr() string { return "http://" + b.ln.Addr().String() }

// waitClosed drains conn, which the backend stopped reading, until the gateway
// closes it, and reports that on b.closed. The deadline only keeps a broken
// gateway from hanging the test.
func (b *rawBackend) waitClosed(conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		b.closed <- "still open"
		return
	}
	b.closed <- "closed"
}

// answerEarly reads the request header only, answers 200 with a JSON body
// and closes the connection, as the backend of issue 21 did.
func answerEarly(conn net.Conn, _ *http.Request) {
	const answer = `{"early":true}`
	fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(answer), answer)
	conn.Close()
}

// storeLeft lists every file under dir, temporary ones included.
func storeLeft(t *testing.T, dir string) []string {
	t.Helper()
	var left []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			left = append(left, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return left
}

// integration/README.md, row 47: a backend that reads only the request
// header, answers 200 and closes: the client gets 502 backend_answered_early
// in every mode, never the 200, and store mode leaves no file; over HTTP/1.1
// and HTTP/2, with and without Content-Length.
func TestFaultBackendAnswers2xxEarly(t *testing.T) {
	be := newRawBackend(t, answerEarly)
	dir := t.TempDir()
	startGatewayWith(t, h2cServers, fmt.Sprintf(`stream_proxy /forward* %[1]s
stream_proxy /per_part* %[1]s {
	mode per_part
}
stream_proxy /store* %[1]s {
	mode store
	store %[2]s
}`, be.addr(), dir))

	for _, path := range []string{"/forward", "/per_part", "/store"} {
		for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
			for _, chunked := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s %s chunked=%v", path, proto, chunked), func(t *testing.T) {
					c := newClient(t)
					if proto == "HTTP/2" {
						c = newH2CClient(t)
					}
					// A few times over: the answer races the body.
					for range 3 {
						res, body := postForm(t, c, gatewayURL+path, sampleForm(32<<20), chunked)
						// backend_failed when the connection's failure
						// reached the gateway before the answer did.
						if code := decodeError(t, body).Error.Code; res.StatusCode != http.StatusBadGateway ||
							(code != "backend_answered_early" && code != "backend_failed") {
							t.Fatalf("got %d: %s", res.StatusCode, body)
						}
						// per_part reports each part's answer beside the
						// error; the others never relay the backend's body.
						if path != "/per_part" && strings.Contains(string(body), "early\":true") {
							t.Fatalf("the backend's body reached the client: %s", body)
						}
					}
					if left := storeLeft(t, dir); len(left) > 0 {
						t.Fatalf("left in the store: %v", left)
					}
				})
			}
		}
	}
}

// A backend that answers 200 first and then reads the whole body (a
// full-duplex server) took the upload: its answer, held until the body has
// all gone, reaches the client whole, and stored files stay.
func TestFaultBackendAnswers2xxFirstThenReads(t *testing.T) {
	be := newBackend(t)
	be.before = func(w http.ResponseWriter, r *http.Request) bool {
		_ = http.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusOK)
		_ = http.NewResponseController(w).Flush()
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "took %d bytes, %v\n", n, err)
		return true
	}
	dir := t.TempDir()
	startGateway(t, fmt.Sprintf(`stream_proxy /forward* %[1]s
stream_proxy /store* %[1]s {
	mode store
	store %[2]s
}`, be.URL, dir))
	c := newClient(t)
	for _, path := range []string{"/forward", "/store"} {
		res, body := postForm(t, c, gatewayURL+path, sampleForm(16<<20), false)
		if res.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "took ") || !strings.HasSuffix(string(body), ", <nil>\n") {
			t.Fatalf("%s: got %d %q, want the backend's 200 after it took the body", path, res.StatusCode, body)
		}
	}
	if left := storeLeft(t, dir); len(left) != 3 {
		t.Fatalf("stored: %v, want the three files of the form", left)
	}
}

// stallBackend reads each request's header and then neither reads nor
// answers until release is closed; then it tells, on closed, whether the
// gateway had closed the connection.
func stallBackend(t *testing.T) (be *rawBackend, release func()) {
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	be = newRawBackend(t, func(conn net.Conn, _ *http.Request) {
		<-ch
		be.waitClosed(conn)
	})
	return be, release
}

// integration/README.md, row 50: a backend that takes the request header and
// then neither reads nor answers ends the upload with 504 backend_timeout
// after backend_stall_timeout, in forward and per_part mode (in store mode,
// after response_header_timeout); the backend connection is closed, the
// upload leaves the admin API's list and store mode leaves no file.
func TestFaultBackendStalls(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []string{"forward", "per_part", "store"} {
		t.Run(mode, func(t *testing.T) {
			be, release := stallBackend(t)
			store := ""
			if mode == "store" {
				// The backend gets only the fields and the files' metadata,
				// which fit in the socket buffers: what bounds its silence
				// is then the transport's response_header_timeout.
				store = "store " + dir + "\n\ttransport http {\n\t\tresponse_header_timeout 1s\n\t}"
			}
			startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	mode %s
	%s
	backend_stall_timeout 1s
}`, be.addr(), mode, store))
			c := newClient(t)
			// Large enough to fill the socket buffers of both sides.
			res, body := postForm(t, c, gatewayURL+"/upload", sampleForm(64<<20), false)
			expectRefusal(t, res, body, http.StatusGatewayTimeout, "backend_timeout", "")
			inFlight(t, 0)
			release()
			if got := <-be.closed; got != "closed" {
				t.Fatalf("backend connection: %s", got)
			}
			if left := storeLeft(t, dir); len(left) > 0 {
				t.Fatalf("left in the store: %v", left)
			}
		})
	}
}

// integration/README.md, row 50: a client that vanishes (its connection
// reset, as when its process is killed) while the backend stalls: the upload
// leaves the admin API's list once backend_stall_timeout has passed, and the
// backend connection is closed.
func TestFaultBackendStallsClientGone(t *testing.T) {
	be, release := stallBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	backend_stall_timeout 3s
}`, be.addr()))

	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	body, ct, n := formBody(sampleForm(64 << 20))
	defer body.Close()
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", httpPort, ct, n)
	// Send until the gateway stops taking the body (the backend stalls),
	// then vanish with a reset.
	buf := make([]byte, 256<<10)
	for {
		_ = conn.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		k, _ := body.Read(buf)
		if _, err := conn.Write(buf[:k]); err != nil {
			break
		}
	}
	if len(adminUploads(t)) != 1 {
		t.Fatalf("want the upload in flight while the backend stalls")
	}
	_ = conn.(*net.TCPConn).SetLinger(0)
	conn.Close()

	inFlight(t, 0)
	release()
	if got := <-be.closed; got != "closed" {
		t.Fatalf("backend connection: %s", got)
	}
}
