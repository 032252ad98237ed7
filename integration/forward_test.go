package integration

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func sampleForm(fileSize int64) []formPart {
	return []formPart{
		{field: "model", value: "whisper-large"},
		{field: "language", value: "en"},
		{field: "audio", filename: "talk.wav", contentType: "audio/wav", size: fileSize, seed: 1},
		{field: "notes", value: "second file follows"},
		{field: "image", filename: "slide.png", contentType: "image/png", size: fileSize / 3, seed: 2},
		{field: "empty", filename: "empty.bin", contentType: "application/octet-stream", size: 0, seed: 3},
	}
}

func TestForwardByteIdentical(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int64
		chunked bool
	}{
		{"content-length 1GiB", 1 << 30, false},
		{"chunked 64MiB", 64 << 20, true},
		{"content-length small", 1000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.size >= 1<<30 && testing.Short() {
				t.Skip("large upload skipped in -short mode")
			}
			be := newBackend(t)
			startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))

			parts := sampleForm(tc.size)
			res, body := postForm(t, newClient(t), gatewayURL+"/upload", parts, tc.chunked)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", res.StatusCode, body)
			}
			got := be.waitRequests(t, 1)
			if len(got) != 1 {
				t.Fatalf("backend got %d requests, want 1", len(got))
			}
			if got[0].Err != nil {
				t.Fatalf("backend: %v", got[0].Err)
			}
			if want, have := comparableParts(expected(parts)), comparableParts(got[0].Parts); want != have {
				t.Fatalf("backend saw\n%s\nwant\n%s", have, want)
			}
			ct := got[0].Header.Get("Content-Type")
			if !strings.HasPrefix(ct, "multipart/form-data; boundary=") {
				t.Fatalf("backend Content-Type %q", ct)
			}
		})
	}
}

func TestForwardFreshBoundaryAndPath(t *testing.T) {
	be := newBackend(t)
	var path string
	be.before = func(w http.ResponseWriter, r *http.Request) bool { path = r.URL.RequestURI(); return false }
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	header_up X-Tenant {http.request.header.X-Client}
	header_up -X-Secret
}`, be.URL))

	body, ct, n := formBody(sampleForm(100))
	req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload/audio?lang=en", body)
	req.Header.Set("Content-Type", ct)
	req.Header.Set("X-Client", "acme")
	req.Header.Set("X-Secret", "hunter2")
	req.ContentLength = n
	res, err := newClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	got := be.waitRequests(t, 1)[0]
	if got.Header.Get("Content-Type") == ct {
		t.Error("backend got the client's boundary; want a fresh one")
	}
	if path != "/upload/audio?lang=en" {
		t.Errorf("backend path %q, want the client's", path)
	}
	if got.Header.Get("X-Tenant") != "acme" {
		t.Errorf("header_up placeholder: X-Tenant = %q", got.Header.Get("X-Tenant"))
	}
	if got.Header.Get("X-Secret") != "" {
		t.Error("header_up -X-Secret did not remove the field")
	}
	if got.Header.Get("X-Forwarded-For") == "" {
		t.Error("no X-Forwarded-For")
	}
}

// The backend must get a file's first bytes while the client still holds the
// rest back: the gateway streams, it does not buffer.
func TestForwardStreamsBeforeUploadEnds(t *testing.T) {
	be := newBackend(t)
	be.firstBytes = make(chan struct{}, 1)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	release := make(chan struct{})
	go func() {
		fw, _ := mw.CreateFormFile("file", "big.bin")
		fw.Write([]byte(strings.Repeat("a", 1000)))
		<-release // hold the rest back
		fw.Write([]byte(strings.Repeat("b", 1000)))
		pw.CloseWithError(mw.Close())
	}()
	req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload", pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	done := make(chan *http.Response, 1)
	go func() {
		res, err := newClient(t).Do(req)
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	select {
	case <-be.firstBytes:
	case <-time.After(10 * time.Second):
		close(release)
		<-done
		t.Fatal("the backend saw nothing while the client held the rest of the file back")
	}
	close(release)
	res := <-done
	if res == nil {
		return
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	if got := be.waitRequests(t, 1)[0].Parts; len(got) != 1 || got[0].Size != 2000 {
		t.Fatalf("backend saw %+v", got)
	}
}

func TestNonMultipartGoesToNextHandlerUnread(t *testing.T) {
	be := newBackend(t)
	next := newNextServer(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s
reverse_proxy %s`, be.URL, strings.TrimPrefix(next.URL, "http://")))

	c := newClient(t)
	for _, ct := range []string{"application/json", "multipart/mixed; boundary=x", ""} {
		req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload", strings.NewReader(`{"a":1}`))
		req.Header.Set("Content-Type", ct)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		sum := sha256.Sum256([]byte(`{"a":1}`))
		if want := fmt.Sprintf("POST 7 %s %s", hex.EncodeToString(sum[:]), ct); string(b) != want {
			t.Errorf("Content-Type %q: got %q, want %q", ct, b, want)
		}
	}
	if n := len(be.received()); n != 0 {
		t.Errorf("stream_proxy backend got %d requests, want 0", n)
	}
}

// A large download through reverse_proxy in the same site streams: the client
// reads the first bytes while the backend still holds the rest.
func TestDownloadStreamsThroughReverseProxy(t *testing.T) {
	release := make(chan struct{})
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(2<<20))
		w.Write(make([]byte, 1<<20))
		w.(http.Flusher).Flush()
		<-release
		w.Write(make([]byte, 1<<20))
	}))
	t.Cleanup(files.Close)
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s
reverse_proxy %s {
	flush_interval -1
}`, be.URL, strings.TrimPrefix(files.URL, "http://")))

	res, err := newClient(t).Get(gatewayURL + "/files/model.bin")
	if err != nil {
		close(release)
		t.Fatal(err)
	}
	defer res.Body.Close()
	got := make(chan int64, 1)
	go func() { n, _ := io.CopyN(io.Discard, res.Body, 1<<20); got <- n }()
	select {
	case n := <-got:
		if n != 1<<20 {
			t.Errorf("read %d bytes", n)
		}
	case <-time.After(10 * time.Second):
		t.Error("no bytes reached the client while the backend held the rest")
	}
	close(release)
	if n, _ := io.Copy(io.Discard, res.Body); n != 1<<20 {
		t.Errorf("rest of download: %d bytes", n)
	}
}

func TestContentLengthOverLimitRefusedBeforeBody(t *testing.T) {
	be, dials := countingBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_body_size 1MiB
}`, be.URL))

	// A raw connection, to see that no 100 Continue is sent.
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: multipart/form-data; boundary=xyz\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", httpPort, 2<<20)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d (want 413, and no 100 Continue before it): %s", res.StatusCode, body)
	}
	e := decodeError(t, body)
	if e.Error.Code != "body_too_large" || e.Error.Limit != "max_body_size" {
		t.Errorf("error %+v", e.Error)
	}
	if n := dials.Load(); n != 0 {
		t.Errorf("backend was dialled %d times", n)
	}
}

func TestPartOverLimitAbortsBackendRequest(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			be := newBackend(t)
			startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_part_size 1MiB
}`, be.URL))
			parts := []formPart{
				{field: "model", value: "x"},
				{field: "ok", filename: "small.bin", size: 1 << 20, seed: 1},
				{field: "big", filename: "big.bin", contentType: "application/octet-stream", size: 8 << 20, seed: 2},
			}
			res, body := postForm(t, newClient(t), gatewayURL+"/upload", parts, chunked)
			if res.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("status %d: %s", res.StatusCode, body)
			}
			e := decodeError(t, body)
			if e.Error.Code != "part_too_large" || e.Error.Limit != "max_part_size" || e.Error.Part == nil ||
				e.Error.Part.Index != 2 || e.Error.Part.Field != "big" || e.Error.Part.Filename != "big.bin" {
				t.Errorf("error %s", body)
			}
			got := be.waitRequests(t, 1)
			if len(got) != 1 || got[0].Err == nil {
				t.Fatalf("backend must see an aborted request, saw %+v", got)
			}
		})
	}
}

// An HTTP/2 backend (h2c) reads the body rather than having it written
// (the transport's Read path): whole uploads arrive whole, and a broken limit
// still aborts the backend's request.
func TestForwardToH2CBackend(t *testing.T) {
	var protos sync.Map
	be := newH2CBackend(t, func(w http.ResponseWriter, r *http.Request) bool { protos.Store(r.Proto, true); return false })
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_part_size 32MiB
	transport http {
		versions h2c
	}
}`, be.URL))

	parts := sampleForm(16 << 20)
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", parts, false)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	got := be.waitRequests(t, 1)
	if len(got) != 1 || got[0].Err != nil {
		t.Fatalf("backend got %+v", got)
	}
	if want, have := comparableParts(expected(parts)), comparableParts(got[0].Parts); want != have {
		t.Fatalf("backend saw\n%s\nwant\n%s", have, want)
	}
	if _, ok := protos.Load("HTTP/2.0"); !ok {
		t.Fatal("the backend was not reached over HTTP/2")
	}

	over := []formPart{{field: "big", filename: "big.bin", size: 48 << 20, seed: 4}}
	res, body = postForm(t, newClient(t), gatewayURL+"/upload", over, true)
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	if got := be.waitRequests(t, 2); len(got) != 2 || got[1].Err == nil {
		t.Fatalf("backend must see an aborted request, saw %+v", got)
	}
}

func TestBodyOverLimitMidStream(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_body_size 2MiB
}`, be.URL))
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", sampleForm(4<<20), true)
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	if e := decodeError(t, body); e.Error.Code != "body_too_large" {
		t.Errorf("error %s", body)
	}
	if got := be.waitRequests(t, 1); len(got) != 1 || got[0].Err == nil {
		t.Fatalf("backend must see an aborted request, saw %+v", got)
	}
}

// A dead backend is found before the body is read: a client that waits for
// 100 Continue gets 502 without sending its body.
func TestBackendUnreachable(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* http://%s`, addr))

	c := newClient(t)
	c.Transport.(*http.Transport).ExpectContinueTimeout = time.Minute
	body, ct, n := formBody(sampleForm(64 << 20))
	sent := &countWriter{}
	req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload", io.TeeReader(body, sent))
	req.Header.Set("Content-Type", ct)
	req.Header.Set("Expect", "100-continue")
	req.ContentLength = n
	res, err := c.Do(req)
	body.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusBadGateway {
		t.Fatalf("status %d: %s", res.StatusCode, b)
	}
	if e := decodeError(t, b); e.Error.Code != "backend_failed" {
		t.Errorf("error %s", b)
	}
	if sent.n != 0 {
		t.Errorf("the client sent %d body bytes; want none", sent.n)
	}
}

func TestMalformedMultipart(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)
	for _, tc := range []struct{ name, contentType, body string }{
		{"no boundary", "multipart/form-data", "--x\r\n\r\n--x--\r\n"},
		{"empty boundary", "multipart/form-data; boundary=", "--\r\n"},
		{"long boundary", "multipart/form-data; boundary=" + strings.Repeat("b", 71), "x"},
		{"boundary not in body", "multipart/form-data; boundary=abc", "hello world\r\n"},
		{"no closing delimiter", "multipart/form-data; boundary=abc", "--abc\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue\r\n"},
		{"ends mid-part", "multipart/form-data; boundary=abc", "--abc\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nval"},
		{"nameless part", "multipart/form-data; boundary=abc", "--abc\r\nContent-Disposition: form-data\r\n\r\nv\r\n--abc--\r\n"},
		{"duplicate boundary", "multipart/form-data; boundary=abc; boundary=abd", "--abc\r\n"},
		{"duplicate parameter", "multipart/form-data; boundary=abc", "--abc\r\nContent-Disposition: form-data; name=\"a\"; name=\"b\"\r\n\r\nv\r\n--abc--\r\n"},
		{"transfer encoding", "multipart/form-data; boundary=abc", "--abc\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nv=3D\r\n--abc--\r\n"},
	} {
		res, body := postRaw(t, c, tc.contentType, []byte(tc.body), false)
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400: %s", tc.name, res.StatusCode, body)
			continue
		}
		decodeError(t, body)
	}
	for _, r := range be.received() {
		if r.Err == nil {
			t.Errorf("backend took a malformed upload as complete: %+v", r)
		}
	}
}

// A client that goes away mid-upload cancels the backend request.
func TestClientGoneCancelsBackend(t *testing.T) {
	be := newBackend(t)
	be.firstBytes = make(chan struct{}, 1)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))

	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: multipart/form-data; boundary=abc\r\nContent-Length: 100000000\r\n\r\n", httpPort)
	fmt.Fprintf(conn, "--abc\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n%s", strings.Repeat("x", 100000))
	select {
	case <-be.firstBytes:
	case <-time.After(10 * time.Second):
		t.Fatal("backend never got the first bytes")
	}
	start := time.Now()
	conn.(*net.TCPConn).SetLinger(0)
	conn.Close()
	got := be.waitRequests(t, 1)
	if len(got) != 1 || got[0].Err == nil {
		t.Fatalf("backend must see the request fail, saw %+v", got)
	}
	t.Logf("backend saw the abort %v after the client reset", time.Since(start))
}
