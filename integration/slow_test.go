package integration

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Slow clients: min_rate cuts a client that sends slower than it for longer
// than its grace, in every mode, and gives its buffers back. The grace here is
// 1 s; the bounds asserted are generous, so that a busy machine does not
// fail them: what is asserted is that the cut comes, not how fast.

// slowMinRate is the handlers' minimum rate, with a short grace.
const slowMinRate = "min_rate 1KiB 1s"

// slowUpload opens an upload on a raw connection: its head (the form up to
// some file data), then step every interval, until the gateway answers, for
// at most 15 s. It returns the answer (nil if none) and how long it took from
// the end of the head.
func slowUpload(t *testing.T, path, head, step string, interval time.Duration) (res *http.Response, body []byte, took time.Duration) {
	t.Helper()
	conn := dialGateway(t)
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: multipart/form-data; boundary=T\r\nContent-Length: 10000000\r\n\r\n", path, httpPort)
	_, _ = io.WriteString(conn, "--T\r\nContent-Disposition: form-data; name=\"f\"; filename=\"t.bin\"\r\n\r\n"+head)
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		br := bufio.NewReader(conn)
		_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		if r, err := http.ReadResponse(br, nil); err == nil {
			res = r
			body, _ = io.ReadAll(r.Body)
			r.Body.Close()
		}
		took = time.Since(start)
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return res, body, took
		case <-tick.C:
			if step != "" {
				_, _ = io.WriteString(conn, step)
			}
		}
	}
}

// integration/README.md, row 53: a client below min_rate gets 408
// client_too_slow within the grace (and a little more), in every mode: one that
// trickles, one that stops after a fast start (its credit is capped at the
// grace), one that never sends a body byte. The backend request is aborted;
// nothing stays in the store.
func TestSlowClientIsCut(t *testing.T) {
	be := newBackend(t)
	dir := t.TempDir()
	startGateway(t, fmt.Sprintf(`stream_proxy /forward* %[1]s {
	%[2]s
}
stream_proxy /per_part* %[1]s {
	mode per_part
	%[2]s
}
stream_proxy /store* {
	mode store
	store %[3]s
	%[2]s
}`, be.URL, slowMinRate, dir))

	fast := strings.Repeat("x", 256<<10) // 256 s of credit at 1 KiB/s, were it not capped
	for _, tc := range []struct {
		name, path, head, step string
		interval               time.Duration
	}{
		{"forward, a byte every 300ms", "/forward", "first bytes", "x", 300 * time.Millisecond},
		{"forward, stops after 256 KiB at once", "/forward", fast, "", time.Second},
		{"forward, no body byte", "/forward", "", "", time.Second},
		{"per_part, a byte every 300ms", "/per_part", "first bytes", "x", 300 * time.Millisecond},
		{"store, a byte every 300ms", "/store", "first bytes", "x", 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(be.received())
			res, body, took := slowUpload(t, tc.path, tc.head, tc.step, tc.interval)
			t.Logf("cut after %v", took)
			if res == nil {
				t.Fatalf("no answer within %v; want 408", took)
			}
			expectRefusal(t, res, body, http.StatusRequestTimeout, "client_too_slow", "min_rate")
			if took > 10*time.Second {
				t.Errorf("cut after %v, want about the grace (1s)", took)
			}
			if tc.path != "/store" && tc.head != "" {
				got := be.waitRequests(t, before+1)
				if last := got[len(got)-1]; last.Err == nil {
					t.Errorf("the backend saw a clean end of the upload, want an aborted request")
				}
			}
		})
	}
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("the store kept %s", path)
		}
		return nil
	})
}

// trickleBody is a request body that sends head, then step every interval
// until closed.
type trickleBody struct {
	head     []byte
	step     []byte
	interval time.Duration
	once     sync.Once
	closed   chan struct{}
}

func newTrickleBody(head, step string, interval time.Duration) *trickleBody {
	return &trickleBody{head: []byte(head), step: []byte(step), interval: interval, closed: make(chan struct{})}
}

func (b *trickleBody) Read(p []byte) (int, error) {
	if len(b.head) > 0 {
		n := copy(p, b.head)
		b.head = b.head[n:]
		return n, nil
	}
	select {
	case <-b.closed:
		return 0, errors.New("closed")
	case <-time.After(b.interval):
		return copy(p, b.step), nil
	}
}

func (b *trickleBody) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
}

// integration/README.md, row 53, over HTTP/2: the stream gets 408
// client_too_slow; the connection's other streams are unharmed.
func TestSlowClientIsCutHTTP2(t *testing.T) {
	be := newBackend(t)
	startGatewayWith(t, h2cServers, fmt.Sprintf("stream_proxy /upload* %s {\n\t%s\n}", be.URL, slowMinRate))
	c := newH2CClient(t)
	body := newTrickleBody("--T\r\nContent-Disposition: form-data; name=\"f\"; filename=\"t.bin\"\r\n\r\nfirst bytes", "x", 300*time.Millisecond)
	req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload", body)
	req.Header.Set("Content-Type", "multipart/form-data; boundary=T")
	start := time.Now()
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(res.Body)
	res.Body.Close()
	body.Close()
	t.Logf("cut after %v", time.Since(start))
	if res.ProtoMajor != 2 {
		t.Fatalf("protocol %s, want HTTP/2", res.Proto)
	}
	expectRefusal(t, res, out, http.StatusRequestTimeout, "client_too_slow", "min_rate")
	expectAborted(t, be)

	// The same connection still carries an upload.
	parts := []formPart{{field: "f", filename: "f.bin", size: 64 << 10, seed: 53}}
	res, out = postForm(t, c, gatewayURL+"/upload", parts, false)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("the next upload: status %d: %s", res.StatusCode, out)
	}
}

// pacedBody sends total bytes of a one-file form, chunk every interval.
type pacedBody struct {
	r        io.Reader
	chunk    int
	interval time.Duration
	next     time.Time
}

func (p *pacedBody) Read(b []byte) (int, error) {
	if d := time.Until(p.next); d > 0 {
		time.Sleep(d) // the client's pace: the behaviour under test
	}
	p.next = time.Now().Add(p.interval)
	return p.r.Read(b[:min(len(b), p.chunk)])
}

// integration/README.md, row 53: a client just above min_rate is never cut,
// however long it sends: 2 KiB/s against 1 KiB/s for twice the grace
// (2 s), in each mode. A slow backend's or store's time is not the client's:
// only time spent waiting for its bytes counts.
func TestSlowClientAboveMinRateIsNotCut(t *testing.T) {
	be := newBackend(t)
	dir := t.TempDir()
	startGateway(t, fmt.Sprintf(`stream_proxy /forward* %[1]s {
	min_rate 1KiB 2s
}
stream_proxy /store* {
	mode store
	store %[2]s
	min_rate 1KiB 2s
}`, be.URL, dir))
	c := newClient(t)
	for _, path := range []string{"/forward", "/store"} {
		t.Run(path, func(t *testing.T) {
			parts := []formPart{{field: "note", value: "slow"}, {field: "f", filename: "f.bin", size: 8 << 10, seed: 54}}
			body, ct, n := formBody(parts)
			start := time.Now()
			res, out := postTo(t, c, gatewayURL+path, ct, &pacedBody{r: body, chunk: 256, interval: 125 * time.Millisecond}, n)
			t.Logf("%d bytes in %v", n, time.Since(start))
			if res.StatusCode/100 != 2 {
				t.Fatalf("status %d: %s", res.StatusCode, out)
			}
		})
	}
}

// integration/README.md, row 52: clients trickling into store s3 hold every
// part buffer (max_buffers 2); they get 408 client_too_slow once below
// min_rate for its grace, and another client's upload, which waited for a
// buffer meanwhile, goes through. Nothing is left in the bucket but its object.
func TestSlowClientsDontStarveS3Pool(t *testing.T) {
	s := startS3(t)
	startGateway(t, fmt.Sprintf("stream_proxy /upload* {\n\tmode store\n\t%s\n\t%s\n}",
		strings.Replace(s.site(t, s.endpoint, ""), "max_buffers 8", "max_buffers 2", 1), slowMinRate))

	type cut struct {
		res  *http.Response
		body []byte
	}
	cuts := make(chan cut, 2)
	for range 2 {
		go func() {
			res, body, _ := slowUpload(t, "/upload", "first bytes", "x", 300*time.Millisecond)
			cuts <- cut{res, body}
		}()
	}
	waitFor(t, "the tricklers to take both buffers", func() bool {
		return metricValue(t, "caddy_stream_proxy_store_buffers_in_use") >= 2
	})

	waits := metricValue(t, "caddy_stream_proxy_store_buffer_waits_total")
	start := time.Now()
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", []formPart{{field: "f", filename: "f.bin", size: 1 << 20, seed: 52}}, false)
	if metricValue(t, "caddy_stream_proxy_store_buffer_waits_total") <= waits {
		t.Error("the upload did not wait for a buffer: the tricklers did not hold them all")
	}
	t.Logf("the upload waited and went through in %v", time.Since(start))
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	for range 2 {
		c := <-cuts
		if c.res == nil {
			t.Fatal("a trickler got no answer; want 408")
		}
		expectRefusal(t, c.res, c.body, http.StatusRequestTimeout, "client_too_slow", "min_rate")
	}
	if objs := s.objects(t); len(objs) != 1 {
		t.Errorf("objects %v, want the one upload's", objs)
	}
	if ups := s.uploads(t); len(ups) != 0 {
		t.Errorf("multipart uploads left: %v", ups)
	}
	if in := metricValue(t, "caddy_stream_proxy_store_buffers_in_use"); in != 0 {
		t.Errorf("%v buffers in use once done", in)
	}
}
