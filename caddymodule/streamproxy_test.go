package streamproxy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/streamproxy/caddy-stream-proxy/store/filestore"
	"github.com/streamproxy/caddy-stream-proxy/store/s3store"
)

func TestMain(m *testing.M) {
	// The embedded reverse_proxy provisions in the context of a running
	// config, as it does in a server.
	if err := caddy.Load([]byte(`{"admin":{"disabled":true,"config":{"persist":false}}}`), true); err != nil {
		panic(err)
	}
	code := m.Run()
	if err := caddy.Stop(); err != nil {
		panic(err)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// proxyTo is the proxy that `stream_proxy <upstream>` configures.
func proxyTo(upstream string) json.RawMessage {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("stream_proxy " + upstream)); err != nil {
		panic(err)
	}
	return h.ProxyRaw
}

// prepared is r as Caddy's server hands it to a handler.
func prepared(r *http.Request) *http.Request {
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, &caddyhttp.Server{})
}

// provision returns a provisioned handler whose resources end with the test.
func provision(t testing.TB, h *Handler) *Handler {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestProvisionDefaults(t *testing.T) {
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1")})
	if h.Mode != ModeForward || h.MaxBodySize != DefaultMaxBodySize || h.MaxPartSize != DefaultMaxBodySize ||
		h.MaxParts != DefaultMaxParts || h.MaxFieldSize != DefaultMaxFieldSize || h.MaxPartHeaderSize != DefaultMaxPartHeaderSize {
		t.Fatalf("defaults not set: %+v", h)
	}
	if h.proxy == nil || h.proxy.Transport == nil {
		t.Fatal("no proxy loaded")
	}
	if bt, ok := h.proxy.Transport.(bodyTransport); !ok || bt.WriteBufferSize != DefaultWriteBuffer || bt.ReadBufferSize != DefaultReadBuffer {
		t.Fatalf("transport %#v: want an http transport with a %d-byte write buffer and a %d-byte read buffer",
			h.proxy.Transport, DefaultWriteBuffer, DefaultReadBuffer)
	}
	var own Handler
	if err := own.UnmarshalCaddyfile(caddyfile.NewTestDispenser("stream_proxy 127.0.0.1:1 {\n transport http {\n write_buffer 8KiB\n read_buffer 16KiB\n }\n}")); err != nil {
		t.Fatal(err)
	}
	provision(t, &own)
	if bt := own.proxy.Transport.(bodyTransport); bt.WriteBufferSize != 8<<10 || bt.ReadBufferSize != 16<<10 {
		t.Fatalf("write buffer %d, read buffer %d: want the configured 8 and 16 KiB", bt.WriteBufferSize, bt.ReadBufferSize)
	}
}

// TestLongAnswerThroughSmallReadBuffer: the backend transport's read buffer
// (DefaultReadBuffer) is smaller than an answer's long header line and its
// body; both reach the client whole.
func TestLongAnswerThroughSmallReadBuffer(t *testing.T) {
	long := strings.Repeat("v", 6*DefaultReadBuffer)
	answer := strings.Repeat("0123456789abcdef", 4*DefaultReadBuffer)
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			t.Error(err)
		}
		w.Header().Set("X-Long", long)
		io.WriteString(w, answer)
	}))
	defer be.Close()
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL)})
	w := serve(h, formRequest(twoFiles), failNext)
	if w.Code != 200 || w.Header().Get("X-Long") != long || w.Body.String() != answer {
		t.Fatalf("status %d, X-Long %d bytes, body %d bytes: want 200, %d and %d", w.Code,
			len(w.Header().Get("X-Long")), w.Body.Len(), len(long), len(answer))
	}
}

func TestValidate(t *testing.T) {
	backend := &reverseproxy.Handler{}
	for _, tc := range []struct {
		h   Handler
		err string
	}{
		{Handler{}, "needs a backend"},
		{Handler{Mode: ModePerPart}, "needs a backend"},
		{Handler{proxy: backend, Mode: "bulk"}, "unknown mode"},
		{Handler{proxy: backend, Mode: ModeStore}, "needs a store"},
		{Handler{proxy: backend, StoreRaw: fileStoreJSON(&filestore.FileStore{Root: "/tmp"})}, "store is for mode store"},
		{Handler{proxy: backend, Hash: []string{"sha3"}}, "unknown hash"},
		{Handler{proxy: backend, AllowTypes: []string{"audio/x*"}}, "not a media type"},
		{Handler{proxy: backend, MaxParts: -1}, "max_parts must not be negative"},
	} {
		h := tc.h
		if h.Mode == "" {
			h.Mode = ModeForward
		}
		err := h.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%+v: error %v, want %q", tc.h, err, tc.err)
		}
	}
	ok := Handler{Mode: ModeStore, StoreRaw: fileStoreJSON(&filestore.FileStore{Root: "/tmp"}), store: &filestore.FileStore{Root: "/tmp"}}
	if err := ok.Validate(); err != nil {
		t.Errorf("store without a backend: %v", err)
	}
}

func TestBoundaryOf(t *testing.T) {
	for ct, ok := range map[string]bool{
		"multipart/form-data; boundary=abc":                        true,
		`multipart/form-data; boundary="a b'()+_,-./:=?"`:          true,
		"multipart/form-data; boundary=" + strings.Repeat("x", 70): true,
		"multipart/form-data; boundary=" + strings.Repeat("x", 71): false,
		"multipart/form-data":                                      false,
		"multipart/form-data; boundary=":                           false,
		`multipart/form-data; boundary="abc "`:                     false,
		`multipart/form-data; boundary="ab@c"`:                     false,
		"multipart/form-data; boundary=a; boundary=b":              false,
	} {
		_, err := boundaryOf(ct)
		if (err == nil) != ok {
			t.Errorf("%q: error %v, want ok=%v", ct, err, ok)
		}
	}
}

// serve runs one prepared request through h.
func serve(h *Handler, r *http.Request, next caddyhttp.Handler) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, next); err != nil {
		w.Code = caddyhttp.Error(0, err).StatusCode
	}
	return w
}

var failNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
	panic("next handler called")
})

func TestNotFormDataPassesUnread(t *testing.T) {
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1")})
	for _, ct := range []string{"application/json", "multipart/mixed; boundary=x", "text/plain", ""} {
		body := strings.NewReader("payload")
		r := prepared(httptest.NewRequest(http.MethodPost, "/upload", body))
		r.Header.Set("Content-Type", ct)
		called := false
		serve(h, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			called = true
			return nil
		}))
		if read := body.Size() - int64(body.Len()); !called || read != 0 {
			t.Errorf("%q: next called=%v, body bytes read=%d", ct, called, read)
		}
	}
}

// echoBackend answers with the parts it parsed, or 400 if the body is broken.
func echoBackend(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		mr := multipart.NewReader(r.Body, params["boundary"])
		var out []string
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			sum := sha256.New()
			n, err := io.Copy(sum, p)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			out = append(out, p.FormName()+"|"+p.FileName()+"|"+p.Header.Get("Content-Type")+"|"+
				hex.EncodeToString(sum.Sum(nil))[:16]+"|"+strconv.FormatInt(n, 10))
		}
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestServeForward(t *testing.T) {
	be := echoBackend(t)
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL)})
	body := "preamble\r\n--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nsmall\r\n" +
		"--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello world\r\n" +
		"--B--\r\nepilogue"
	r := prepared(httptest.NewRequest(http.MethodPost, "/upload", strings.NewReader(body)))
	r.Header.Set("Content-Type", "multipart/form-data; boundary=B")
	w := serve(h, r, failNext)
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var got []string
	_ = json.Unmarshal(w.Body.Bytes(), &got)
	helloSum := sha256.Sum256([]byte("hello world"))
	smallSum := sha256.Sum256([]byte("small"))
	want := []string{
		"model|||" + hex.EncodeToString(smallSum[:])[:16] + "|5",
		"f|a.txt|text/plain|" + hex.EncodeToString(helloSum[:])[:16] + "|11",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("backend saw %q, want %q", got, want)
	}
}

// TestServeForwardBufferSizes sends a file of a few buffers' worth, with
// delimiter-like lines in it, through both buffer sizes: the large ones, and
// the small ones an upload gets while largeUploads others hold large ones.
func TestServeForwardBufferSizes(t *testing.T) {
	be := echoBackend(t)
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL)})
	data := strings.Repeat("0123456789abcdef\r\n--Bx\r\n-", 100_000)[:3*largeBufs.size+17]
	sum := sha256.Sum256([]byte(data))
	want := `["f|a.bin||` + hex.EncodeToString(sum[:])[:16] + "|" + strconv.Itoa(len(data)) + `"]`
	body := "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n" + data + "\r\n--B--\r\n"
	for _, held := range []int{0, largeUploads} {
		for range held {
			takeBufs(false)
		}
		w := serve(h, formRequest(body), failNext)
		for range held {
			releaseBufs(largeBufs)
		}
		if got := strings.TrimSpace(w.Body.String()); w.Code != 200 || got != want {
			t.Fatalf("with %d uploads holding large buffers: %d %s, want %s", held, w.Code, got, want)
		}
	}
}

func TestServeRefusals(t *testing.T) {
	be := echoBackend(t)
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL), MaxBodySize: 1000, MaxParts: 2, MaxFieldSize: 10, MaxPartHeaderSize: 200})
	part := func(name, value string) string {
		return "--B\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" + value + "\r\n"
	}
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"too many parts", part("a", "1") + part("b", "2") + part("c", "3") + "--B--\r\n", 413, CodeTooManyParts},
		{"field too large", part("a", strings.Repeat("x", 11)) + "--B--\r\n", 413, CodeFieldTooLarge},
		{"body too large", part("a", "1") + strings.Repeat("x", 2000), 413, CodeBodyTooLarge},
		{"header too large", "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: " + strings.Repeat("p", 300) + "\r\n\r\nv\r\n--B--\r\n", 431, CodePartHeaderTooBig},
		{"transfer encoding", "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: base64\r\n\r\nv\r\n--B--\r\n", 400, CodeTransferEncoding},
		{"no closing delimiter", part("a", "1"), 400, CodeMalformed},
		{"cut after a delimiter", part("a", "1") + "--B\r\n", 400, CodeMalformed},
		{"cut after a padded LF delimiter", part("a", "1") + "--B \t\n", 400, CodeMalformed},
		{"only a delimiter", "--B\r\n", 400, CodeMalformed},
		{"not form-data disposition", "--B\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nv\r\n--B--\r\n", 400, CodeMalformed},
		{"two dispositions", "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nv\r\n--B--\r\n", 400, CodeMalformed},
	} {
		r := prepared(httptest.NewRequest(http.MethodPost, "/upload", strings.NewReader(tc.body)))
		r.Header.Set("Content-Type", "multipart/form-data; boundary=B")
		w := serve(h, r, failNext)
		var e struct{ Error uploadError }
		_ = json.Unmarshal(w.Body.Bytes(), &e)
		if w.Code != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.name, w.Code, w.Body, tc.status, tc.code)
		}
	}
}

// A max_part_size that 10,000 parts of part_size cannot reach is refused.
func TestValidateS3PartCount(t *testing.T) {
	t.Setenv("SP_TEST_SECRET", "s")
	raw := caddyconfig.JSONModuleObject(&s3store.S3Store{Bucket: "b", Endpoint: "http://127.0.0.1:1", AccessKeyID: "k",
		SecretAccessKey: "{env.SP_TEST_SECRET}", PartSize: s3store.MinS3PartSize}, "module", "s3", nil)
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	defer cancel()
	h := &Handler{Mode: ModeStore, StoreRaw: raw, MaxPartSize: s3store.MinS3PartSize*10000 + 1}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "larger than the store can take") {
		t.Fatalf("error %v", err)
	}
	h.MaxPartSize = s3store.MinS3PartSize * 10000
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
}
