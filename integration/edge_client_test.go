package integration

// Edge cases of integration/README.md about the client: HTTP/2, early refusals,
// 100 Continue, clients that vanish, trickle or upload slowly.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// h2cServers makes the gateway speak HTTP/2 without TLS (prior knowledge) as
// well as HTTP/1.1.
const h2cServers = "\t\tprotocols h1 h2c"

// newH2CClient is an HTTP client that speaks HTTP/2 without TLS.
func newH2CClient(t *testing.T) *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols), DisableCompression: true}
	tr.Protocols.SetUnencryptedHTTP2(true)
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}
}

// dialGateway opens a raw connection to the gateway, closed with the test.
func dialGateway(t *testing.T) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// readAnswer reads responses from a raw connection until a final one,
// reporting whether a 100 Continue came first.
func readAnswer(t *testing.T, conn net.Conn, br *bufio.Reader) (res *http.Response, body []byte, sawContinue bool) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	for range 3 {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if res.StatusCode == http.StatusContinue {
			sawContinue = true
			continue
		}
		body, _ = io.ReadAll(res.Body)
		res.Body.Close()
		return res, body, sawContinue
	}
	t.Fatal("more than two interim responses")
	return nil, nil, false
}

// integration/README.md, row 2: the same upload over HTTP/2 (h2c), with and
// without a Content-Length, arrives byte-identical under a fresh boundary.
// (Chunked HTTP/1.1 is TestForwardByteIdentical.)
func TestEdgeHTTP2Upload(t *testing.T) {
	be := newBackend(t)
	startGatewayWith(t, h2cServers, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newH2CClient(t)
	for i, withLength := range []bool{true, false} {
		parts := sampleForm(64 << 20)
		body, ct, n := formBody(parts)
		res, out := postStream(t, c, ct, body, withLength, n)
		if res.ProtoMajor != 2 {
			t.Fatalf("the client spoke %s, want HTTP/2", res.Proto)
		}
		if res.StatusCode != 200 {
			t.Fatalf("content-length=%v: status %d: %s", withLength, res.StatusCode, out)
		}
		got := be.waitRequests(t, i+1)
		if len(got) != i+1 || got[i].Err != nil {
			t.Fatalf("backend saw %d requests, last err %v", len(got), got[len(got)-1].Err)
		}
		if w, h := comparableParts(expected(parts)), comparableParts(got[i].Parts); w != h {
			t.Fatalf("content-length=%v: backend saw\n%s\nwant\n%s", withLength, h, w)
		}
		if got[i].Header.Get("Content-Type") == ct {
			t.Error("backend got the client's boundary; want a fresh one")
		}
	}
}

// integration/README.md, row 3: a Content-Length over max_body_size is refused
// before the body is read, from a client that sends its body at once (no
// Expect), over HTTP/1.1 and HTTP/2, and the backend is never dialled. (With
// Expect: 100-continue it is TestContentLengthOverLimitRefusedBeforeBody.)
func TestEdgeContentLengthOverLimitEagerClient(t *testing.T) {
	be, dials := countingBackend(t)
	startGatewayWith(t, h2cServers, fmt.Sprintf(`stream_proxy /upload* %s {
	max_body_size 1MiB
}`, be.URL))
	for _, tc := range []struct {
		name   string
		client *http.Client
	}{
		{"HTTP/1.1", newClient(t)},
		{"HTTP/2", newH2CClient(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := postForm(t, tc.client, gatewayURL+"/upload", sampleForm(4<<20), false)
			expectRefusal(t, res, body, 413, "body_too_large", "max_body_size")
		})
	}
	if n := dials.Load(); n != 0 {
		t.Errorf("the backend was dialled %d times", n)
	}
}

// integration/README.md, row 14: a client that vanishes cancels the backend
// request quickly, in every phase and protocol: a reset mid-part (chunked), an
// HTTP/2 stream cancelled mid-part, and a reset while the backend holds its
// answer after taking the whole upload. The handler returning is checked by
// goleak.
func TestEdgeClientGoneCancelsBackendQuickly(t *testing.T) {
	const generous = 2 * time.Second

	t.Run("reset mid-part, chunked", func(t *testing.T) {
		be := newBackend(t)
		be.firstBytes = make(chan struct{}, 1)
		startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
		conn := dialGateway(t)
		fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: multipart/form-data; boundary=abc\r\nTransfer-Encoding: chunked\r\n\r\n", httpPort)
		chunk := "--abc\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n" + strings.Repeat("x", 100000)
		fmt.Fprintf(conn, "%x\r\n%s\r\n", len(chunk), chunk)
		waitFirstBytes(t, be)
		start := time.Now()
		resetConn(conn)
		waitAbort(t, be, start, generous)
	})

	t.Run("HTTP/2 stream cancelled mid-part", func(t *testing.T) {
		be := newBackend(t)
		be.firstBytes = make(chan struct{}, 1)
		startGatewayWith(t, h2cServers, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
		c := newH2CClient(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		pr, pw := io.Pipe()
		defer pr.Close()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, gatewayURL+"/upload", pr)
		req.Header.Set("Content-Type", "multipart/form-data; boundary=abc")
		done := make(chan error, 1)
		go func() {
			res, err := c.Do(req)
			if err == nil {
				res.Body.Close()
			}
			done <- err
		}()
		writeDone := make(chan struct{})
		go func() {
			defer close(writeDone)
			_, _ = io.WriteString(pw, "--abc\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n"+strings.Repeat("x", 100000))
		}()
		waitFirstBytes(t, be)
		start := time.Now()
		cancel()
		waitAbort(t, be, start, generous)
		pw.CloseWithError(context.Canceled)
		<-writeDone
		if err := <-done; err == nil {
			t.Error("the cancelled request succeeded")
		}
	})

	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("reset while the backend holds its answer, chunked=%v", chunked), func(t *testing.T) {
			readAll := make(chan struct{}, 1)
			cancelled := make(chan time.Time, 1)
			release := make(chan struct{})
			be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				readAll <- struct{}{}
				select {
				case <-r.Context().Done():
					cancelled <- time.Now()
				case <-release:
				}
			}))
			defer be.Close()
			defer close(release)
			startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))

			body, ct := formBytes(t, sampleForm(64<<10), "")
			conn := dialGateway(t)
			if chunked {
				fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", httpPort, ct, len(body), body)
			} else {
				fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s", httpPort, ct, len(body), body)
			}
			select {
			case <-readAll:
			case <-time.After(10 * time.Second):
				t.Fatal("the backend never got the whole upload")
			}
			start := time.Now()
			resetConn(conn)
			select {
			case at := <-cancelled:
				d := at.Sub(start)
				t.Logf("backend request cancelled %v after the client reset", d)
				if d > generous {
					t.Errorf("backend request cancelled only after %v", d)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the backend request was not cancelled within 10s of the client reset")
			}
		})
	}
}

func waitFirstBytes(t *testing.T, be *backend) {
	t.Helper()
	select {
	case <-be.firstBytes:
	case <-time.After(10 * time.Second):
		t.Fatal("backend never got the first bytes")
	}
}

// resetConn closes conn with a TCP reset.
func resetConn(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}

// waitAbort waits until the backend saw its request fail and checks that it
// came within max of start.
func waitAbort(t *testing.T, be *backend, start time.Time, max time.Duration) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if got := be.received(); len(got) > 0 {
			d := time.Since(start)
			if got[0].Err == nil {
				t.Fatalf("the backend saw a complete upload: %+v", got[0].Parts)
			}
			t.Logf("backend saw the abort %v after the client left (%v)", d, got[0].Err)
			if d > max {
				t.Errorf("backend saw the abort only after %v", d)
			}
			return
		}
		time.Sleep(time.Millisecond) // fine polling: the delay is what is measured
	}
	t.Fatal("the backend request did not end within 10s of the client leaving")
}

// trickle opens an upload whose file part then gets step every interval,
// until the gateway answers or closes the connection; it returns the answer
// (nil if the connection was closed without one), how long that took and
// whether the connection was closed after it.
func trickle(t *testing.T, step string, interval time.Duration) (res *http.Response, body []byte, took time.Duration, closed bool) {
	t.Helper()
	conn := dialGateway(t)
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: multipart/form-data; boundary=T\r\nContent-Length: 1000000\r\n\r\n", httpPort)
	io.WriteString(conn, "--T\r\nContent-Disposition: form-data; name=\"f\"; filename=\"t.bin\"\r\n\r\nfirst bytes")
	start := time.Now()

	type answer struct {
		res    *http.Response
		body   []byte
		at     time.Time
		closed bool
	}
	got := make(chan answer, 1)
	go func() {
		var a answer
		br := bufio.NewReader(conn)
		_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		if r, err := http.ReadResponse(br, nil); err == nil {
			a.res = r
			a.body, _ = io.ReadAll(r.Body)
			r.Body.Close()
		}
		a.at = time.Now()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := br.ReadByte()
		var ne net.Error
		a.closed = err != nil && !(errors.As(err, &ne) && ne.Timeout())
		got <- a
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for range int(12*time.Second/interval) + 1 {
		select {
		case a := <-got:
			return a.res, a.body, a.at.Sub(start), a.closed
		case <-tick.C:
			_, _ = io.WriteString(conn, step)
		}
	}
	a := <-got
	return a.res, a.body, a.at.Sub(start), a.closed
}

// integration/README.md, row 18: a client that trickles is cut by Caddy's
// server timeouts: the upload gets 408 and the connection is closed, whether it
// stalls for longer than read_body_idle or keeps sending below its minimum
// rate; the backend request is aborted.
func TestEdgeTrickleIsCut(t *testing.T) {
	for _, tc := range []struct {
		name, timeouts string
		step           string
		interval       time.Duration
	}{
		{"one byte every 1.5s, read_body_idle 1s", "read_body_idle 1s", "x", 1500 * time.Millisecond},
		{"ten bytes every 100ms, min rate 10000 B/s", "read_body_idle 1s 10000", "xxxxxxxxxx", 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := newBackend(t)
			startGatewayWith(t, "\t\ttimeouts {\n\t\t\t"+tc.timeouts+"\n\t\t}", fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
			res, body, took, closed := trickle(t, tc.step, tc.interval)
			t.Logf("cut after %v", took)
			if res == nil {
				t.Fatal("the connection was closed without an answer; want 408")
			}
			expectRefusal(t, res, body, http.StatusRequestTimeout, "client_timeout", "")
			if !closed {
				t.Error("the connection stayed open after the 408")
			}
			expectAborted(t, be)
		})
	}
}

// pacedReader lets r through at rate bytes per second, with one pause of
// pause after pauseAt bytes.
type pacedReader struct {
	r       io.Reader
	rate    int64
	pauseAt int64
	pause   time.Duration

	start  time.Time
	n      int64
	paused bool
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if p.start.IsZero() {
		p.start = time.Now()
	}
	if !p.paused && p.n >= p.pauseAt {
		p.paused = true
		time.Sleep(p.pause) // the client's pause: the behaviour under test
		p.start = p.start.Add(p.pause)
	}
	if len(b) > 32<<10 {
		b = b[:32<<10]
	}
	if d := time.Until(p.start.Add(time.Duration(p.n * int64(time.Second) / p.rate))); d > 0 {
		time.Sleep(d) // the client's rate: the behaviour under test
	}
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}

// integration/README.md, row 19: a slow but steady upload (20 MiB over about
// 3.5 s, with a pause) succeeds under the same server and transport timeouts
// that cut a trickle or a stuck backend: nothing puts a hard deadline on a
// healthy upload.
func TestEdgeSlowSteadyUpload(t *testing.T) {
	be := newBackend(t)
	startGatewayWith(t, "\t\ttimeouts {\n\t\t\tread_body_idle 1s 10000\n\t\t}", fmt.Sprintf(`stream_proxy /upload* %s {
	transport http {
		response_header_timeout 1s
		write_timeout 1s
	}
}`, be.URL))
	parts := []formPart{
		{field: "model", value: "m"},
		{field: "audio", filename: "slow.wav", contentType: "audio/wav", size: 20 << 20, seed: 19},
	}
	body, ct, n := formBody(parts)
	paced := &pacedReader{r: body, rate: 7 << 20, pauseAt: 10 << 20, pause: 700 * time.Millisecond}
	start := time.Now()
	res, out := postStream(t, newClient(t), ct, paced, true, n)
	t.Logf("the upload took %v", time.Since(start))
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, out)
	}
	expectComplete(t, be, expected(parts))
}

// integration/README.md, row 20: with Expect: 100-continue, a request refused
// from its header (over the limit, an invalid boundary, a dead backend) gets
// its final status at once and no 100 Continue, whatever its declared size; a
// valid upload does get 100 Continue. The server has no read timeout here, so
// an answer that waits for the body never comes (the test gives up after 5 s).
func TestEdgeExpectContinue(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	be := newBackend(t)
	startGatewayWith(t, "", fmt.Sprintf(`stream_proxy /upload* %s
stream_proxy /small* %s {
	max_body_size 64KiB
}
stream_proxy /dead* http://%s`, be.URL, be.URL, dead))

	small, ct := formBytes(t, sampleForm(1000), "")
	for _, tc := range []struct {
		name, path, contentType string
		length                  int
		status                  int
		code                    string
	}{
		{"invalid boundary, 1 MiB", "/upload", `multipart/form-data; boundary="in valid@"`, 1 << 20, 400, "malformed_multipart"},
		{"invalid boundary, small", "/upload", `multipart/form-data; boundary="in valid@"`, 1000, 400, "malformed_multipart"},
		{"boundary over 70 characters, 1 MiB", "/upload", "multipart/form-data; boundary=" + strings.Repeat("b", 71), 1 << 20, 400, "malformed_multipart"},
		{"no boundary, small", "/upload", "multipart/form-data", 1000, 400, "malformed_multipart"},
		{"backend down, 1 MiB", "/dead", ct, 1 << 20, 502, "backend_failed"},
		{"backend down, small", "/dead", ct, len(small), 502, "backend_failed"},
		{"over a 64 KiB limit, 100 KiB", "/small", ct, 100 << 10, 413, "body_too_large"},
		{"valid upload", "/upload", ct, len(small), 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := dialGateway(t)
			fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: %s\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n",
				tc.path, httpPort, tc.contentType, tc.length)
			br := bufio.NewReader(conn)
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			first, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer within 5s of the request header: %v", err)
			}
			if tc.status == 200 {
				if first.StatusCode != http.StatusContinue {
					t.Fatalf("status %d, want 100 Continue first for a valid upload", first.StatusCode)
				}
				if _, err := conn.Write(small); err != nil {
					t.Fatal(err)
				}
				res, out, _ := readAnswer(t, conn, br)
				if res.StatusCode != 200 {
					t.Fatalf("status %d: %s", res.StatusCode, out)
				}
				return
			}
			if first.StatusCode == http.StatusContinue {
				t.Fatal("the gateway sent 100 Continue for a request it refuses from its header")
			}
			out, _ := io.ReadAll(first.Body)
			expectRefusal(t, first, out, tc.status, tc.code, "")
		})
	}
}
