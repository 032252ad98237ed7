package integration

import (
	"bufio"
	"crypto/md5"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// uriBackend records the raw request URI of every request, as sent on the
// wire, and answers 200.
type uriBackend struct {
	*httptest.Server
	mu   sync.Mutex
	uris []string
}

func newURIBackend(t *testing.T) *uriBackend {
	b := &uriBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		b.mu.Lock()
		b.uris = append(b.uris, r.RequestURI)
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(b.Close)
	return b
}

func (b *uriBackend) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.uris
	b.uris = nil
	return out
}

// A form value routed into the upstream path is literal text under the
// prefix: each segment escaped, never decoded; what would move the path is
// refused with 400 before any backend is contacted. Rows 39-41.
func TestRouteValuesStayUnderThePrefix(t *testing.T) {
	be := newURIBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	to %s/v1/{http.stream_proxy.form.model}
	mode per_part
}`, be.URL))
	c := newClient(t)
	for _, tc := range []struct {
		model string // "" : no model field
		want  string // the URI the backend gets; "" : refused
		code  string
	}{
		{model: "openai/whisper-large-v3", want: "/v1/openai/whisper-large-v3"},
		{model: "whisper large", want: "/v1/whisper%20large"},
		{model: "%2e%2e", want: "/v1/%252e%252e"},
		{model: "%2e%2e%2fadmin", want: "/v1/%252e%252e%252fadmin"},
		{model: "..%2Fadmin", want: "/v1/..%252Fadmin"},
		{model: "%2e%2e/admin", want: "/v1/%252e%252e/admin"},
		{model: "%252e%252e%252fadmin", want: "/v1/%25252e%25252e%25252fadmin"},
		{model: "x?debug=1", want: "/v1/x%3Fdebug=1"},
		{model: "x#frag", want: "/v1/x%23frag"},
		{model: "x;y", want: "/v1/x%3By"},
		{model: "../admin", code: "route_value_invalid"},
		{model: "..", code: "route_value_invalid"},
		{model: ".", code: "route_value_invalid"},
		{model: "a/./b", code: "route_value_invalid"},
		{model: "a/../../admin", code: "route_value_invalid"},
		{model: "..;/admin", code: "route_value_invalid"},
		{model: "..;x", code: "route_value_invalid"},
		{model: `..\admin`, code: "route_value_invalid"},
		{model: `a\b`, code: "route_value_invalid"},
		{model: "/admin", code: "route_value_invalid"},
		{model: "a//b", code: "route_value_invalid"},
		{model: "a/", code: "route_value_invalid"},
		{model: "a\nb", code: "route_value_invalid"},
		{model: "a\x00b", code: "route_value_invalid"},
		{model: "a\x7fb", code: "route_value_invalid"},
		{model: "", code: "route_field_missing"},
		{model: strings.Repeat("m", 9<<10), code: "route_field_missing"},
	} {
		parts := []formPart{{field: "audio", filename: "a.wav", contentType: "audio/wav", size: 100, seed: 1}}
		if tc.model != "" {
			parts = append([]formPart{{field: "model", value: tc.model}}, parts...)
		}
		res, body := postForm(t, c, gatewayURL+"/upload", parts, false)
		got := be.take()
		name := tc.model
		if len(name) > 40 {
			name = name[:40] + "…"
		}
		if tc.want != "" {
			if res.StatusCode != 200 || len(got) != 1 || got[0] != tc.want {
				t.Errorf("model %q: %d %s, backend got %q, want %q", name, res.StatusCode, body, got, tc.want)
			}
			continue
		}
		if res.StatusCode != http.StatusBadRequest || decodeError(t, body).Error.Code != tc.code {
			t.Errorf("model %q: %d %s, want 400 %s", name, res.StatusCode, body, tc.code)
		}
		if len(got) != 0 {
			t.Errorf("model %q: the backend was contacted: %q", name, got)
		}
	}
}

// The configured query stays as configured; the client's never rides along
// when to has a path.
func TestRouteKeepsConfiguredQuery(t *testing.T) {
	be := newURIBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /a* {
	to %s/v1/{http.stream_proxy.form.model}?task=asr
	mode per_part
}
stream_proxy /b* {
	to %s/v2/{http.stream_proxy.part.field}
	mode per_part
}`, be.URL, be.URL))
	c := newClient(t)
	parts := []formPart{{field: "model", value: "x?debug=1&y"}, {field: "audio", filename: "a.wav", size: 10, seed: 1}}
	if res, body := postForm(t, c, gatewayURL+"/a?admin=1", parts, false); res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	if got := be.take(); len(got) != 1 || got[0] != "/v1/x%3Fdebug=1&y?task=asr" {
		t.Errorf("backend got %q", got)
	}
	if res, body := postForm(t, c, gatewayURL+"/b?admin=1", parts, false); res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	if got := be.take(); len(got) != 1 || got[0] != "/v2/audio" {
		t.Errorf("backend got %q", got)
	}
}

// validateConfig does what `caddy validate` does: adapt (for a Caddyfile),
// load every module, provision and validate, without serving.
func validateConfig(t *testing.T, config, adapter string) error {
	t.Helper()
	cfgJSON := []byte(config)
	if adapter != "" {
		var err error
		cfgJSON, _, err = caddyconfig.GetAdapter(adapter).Adapt(cfgJSON, nil)
		if err != nil {
			return err
		}
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&cfg)
}

// A form or part placeholder never names an upstream's address, and a JSON
// config is held to the Caddyfile's rules. Rows 42 and 44.
func TestValidateRefusesWhatTheCaddyfileRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, adapter, config, want string
	}{
		{"host placeholder", "caddyfile", `:0 {
	stream_proxy /u* {
		to http://{http.stream_proxy.form.host}/v1
		mode per_part
	}
}`, "dynamic upstreams"},
		{"host and port placeholder, no scheme", "caddyfile", `:0 {
	stream_proxy /u* {
		to {http.stream_proxy.form.host}:{http.stream_proxy.form.port}
		mode per_part
	}
}`, "scheme, host or port"},
		{"part placeholder in host", "caddyfile", `:0 {
	stream_proxy /u* http://{http.stream_proxy.part.filename}
}`, "scheme, host or port"},
		{"no upstream", "caddyfile", `:0 {
	stream_proxy /a* {
		lb_policy least_conn
	}
}`, "no upstream"},
		{"form placeholder in forward mode's path", "caddyfile", `:0 {
	stream_proxy /u* http://127.0.0.1:1/v1/{http.stream_proxy.form.model}
}`, "only in mode per_part"},
		{"request_buffers", "", proxyJSON(`"request_buffers": 4096`), "request_buffers"},
		{"response_buffers", "", proxyJSON(`"response_buffers": 4096`), "response_buffers"},
		{"handle_response", "", proxyJSON(`"handle_response": [{"routes": []}]`), "handle_response"},
		{"rewrite method", "", proxyJSON(`"rewrite": {"method": "GET", "uri": "/x?"}`), "rewrite"},
		{"rewrite strip", "", proxyJSON(`"rewrite": {"strip_path_prefix": "/x"}`), "rewrite"},
		{"stream_timeout", "", proxyJSON(`"stream_timeout": 1000000000`), "stream_timeout"},
		{"json host placeholder", "", strings.Replace(proxyJSON(""), `"127.0.0.1:1"`, `"{http.stream_proxy.form.host}:80"`, 1), "dynamic upstreams"},
		{"json port placeholder", "", strings.Replace(proxyJSON(""), `"127.0.0.1:1"`, `"127.0.0.1:{http.stream_proxy.part.index}"`, 1), "scheme, host or port"},
		{"json no upstream", "", strings.Replace(proxyJSON(""), `"upstreams": [{"dial": "127.0.0.1:1"}]`, `"load_balancing": {"selection_policy": {"policy": "least_conn"}}`, 1), "no upstream"},
		{"fastcgi transport", "", proxyJSON(`"transport": {"protocol": "fastcgi"}`), "buffers request bodies"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateConfig(t, tc.config, tc.adapter)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("validate: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	// What stays allowed: env placeholders in hosts, form placeholders in
	// per_part's path, the path's rewrite JSON as the Caddyfile writes it.
	for _, ok := range []string{
		`:0 {
	stream_proxy /u* http://{env.SP_NO_SUCH_HOST}:9000/v1
}`,
		`:0 {
	stream_proxy /u* {
		to http://127.0.0.1:1/v1/{http.stream_proxy.form.model}?x=1
		mode per_part
	}
}`,
	} {
		if err := validateConfig(t, ok, "caddyfile"); err != nil {
			t.Errorf("validate %s: %v", ok, err)
		}
	}
	if err := validateConfig(t, proxyJSON(`"rewrite": {"uri": "/upload?"}`), ""); err != nil {
		t.Errorf("validate the Caddyfile's own rewrite: %v", err)
	}
}

// proxyJSON is a JSON config with a stream_proxy whose embedded proxy has
// one upstream and extra, a JSON member or nothing.
func proxyJSON(extra string) string {
	if extra != "" {
		extra = ", " + extra
	}
	return `{"apps": {"http": {"servers": {"s": {"listen": [":0"], "routes": [{"handle": [{
	"handler": "stream_proxy",
	"proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "127.0.0.1:1"}]` + extra + `}
}]}]}}}}}`
}

// faultForm is a one-file form under the boundary "b": a header of its own
// (Content-Disposition and more) and data; closed unless open.
func faultForm(header, data string, closed bool) string {
	s := "--b\r\n" + header + "\r\n\r\n" + data
	if closed {
		s += "\r\n--b--\r\n"
	}
	return s
}

// sendRaw writes a whole request on a new connection and returns the status
// line's code (0 if the connection ended first).
func sendRaw(t *testing.T, request string) int {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode
}

// A client's fault, in every mode, is a 4xx decided before it reaches a
// transport, and never counts against the upstream: with max_fails 1 and a
// long fail_duration, the next clean upload still gets 200. Rows 30 and 43.
func TestClientFaultsNeverCountAgainstTheBackend(t *testing.T) {
	be := newURIBackend(t)
	dir := t.TempDir()
	common := fmt.Sprintf(`to %s
	max_part_size 1KiB
	max_fails 1
	fail_duration 10m`, be.URL)
	startGateway(t, fmt.Sprintf(`stream_proxy /forward* {
	%s
}
stream_proxy /per_part* {
	%s
	mode per_part
}
stream_proxy /store* {
	%s
	mode store
	store %s
}`, common, common, common, dir))

	file := `Content-Disposition: form-data; name="audio"; filename="a.wav"`
	clean := faultForm(file, "data", true)
	request := func(path, body string, extra string) string {
		return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n%s", path, extra) +
			fmt.Sprintf("Content-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	}
	faults := []struct {
		name   string
		req    func(path string) string
		status int // 0: the client is gone, no answer is read
		code   string
	}{
		{"malformed body", func(p string) string { return request(p, faultForm(file, "data", false), "") }, 400, "malformed_multipart"},
		{"broken limit", func(p string) string { return request(p, faultForm(file, strings.Repeat("x", 4096), true), "") }, 413, "part_too_large"},
		{"digest mismatch", func(p string) string {
			return request(p, faultForm(file+"\r\nContent-MD5: "+md5Base64("other"), "data", true), "")
		}, 400, "digest_mismatch"},
		{"control characters in a name", func(p string) string {
			return request(p, faultForm(`Content-Disposition: form-data; name*=utf-8''au%0D%0AX-Injected%3A%201; filename="a.wav"`, "data", true), "")
		}, 400, "malformed_multipart"},
		{"control characters in a filename", func(p string) string {
			return request(p, faultForm("Content-Disposition: form-data; name=\"audio\"; filename=\"a\x01b.wav\"", "data", true), "")
		}, 400, "malformed_multipart"},
		{"control characters in another header", func(p string) string {
			return request(p, faultForm(file+"\r\nX-Note: a\x01b", "data", true), "")
		}, 400, "malformed_multipart"},
		{"bad part transfer encoding", func(p string) string {
			return request(p, faultForm(file+"\r\nContent-Transfer-Encoding: base64", "ZGF0YQ==", true), "")
		}, 400, "content_transfer_encoding"},
		{"bad chunked encoding", func(p string) string {
			return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n", p) +
				"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n10\r\n" + clean[:16] + "\r\nzz\r\n"
		}, -1, ""},
		{"client vanishes", func(p string) string {
			body := faultForm(file, strings.Repeat("x", 500), false)
			return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n%s", p, body)
		}, 0, "client_gone"},
	}
	c := newClient(t)
	for _, mode := range []string{"forward", "per_part", "store"} {
		for _, f := range faults {
			path := "/" + mode
			before := metricValue(t, "caddy_stream_proxy_rejections_total", `mode="`+mode+`"`, `reason="client_gone"`)
			switch f.status {
			case 0: // write, then close without waiting for an answer
				conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.WriteString(conn, f.req(path))
				conn.Close()
				// Wait for the gateway to log the upload as the client's (499).
				waitFor(t, fmt.Sprintf("%s, %s: the upload to end as client_gone", mode, f.name), func() bool {
					return metricValue(t, "caddy_stream_proxy_rejections_total", `mode="`+mode+`"`, `reason="client_gone"`) > before
				})
			case -1: // the server refuses it, or the gateway takes it for a client gone
				if got := sendRaw(t, f.req(path)); got != 0 && (got < 400 || got >= 500) {
					t.Errorf("%s, %s: status %d, want a 4xx", mode, f.name, got)
				}
			default:
				conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.WriteString(conn, f.req(path))
				res, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					conn.Close()
					t.Fatalf("%s, %s: %v", mode, f.name, err)
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				conn.Close()
				if res.StatusCode != f.status || decodeError(t, body).Error.Code != f.code {
					t.Errorf("%s, %s: %d %s, want %d %s", mode, f.name, res.StatusCode, body, f.status, f.code)
				}
			}
			res, body := postRawTo(t, c, gatewayURL+path, "multipart/form-data; boundary=b", []byte(clean))
			if res.StatusCode != 200 {
				t.Errorf("%s, after %s: the clean upload got %d %s", mode, f.name, res.StatusCode, body)
			}
		}
	}
	be.take()
}

func md5Base64(s string) string {
	sum := md5.Sum([]byte(s))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// store s3: a file whose metadata would pass S3's 2 KB is the client's 400,
// decided before any of it goes to S3; nothing is left in the bucket. A
// name that fits is stored. Row 45.
func TestS3StoreRefusesOversizedMetadata(t *testing.T) {
	s := startS3(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	hash sha256
	%s
}`, s.site(t, s.endpoint, "")))
	c := newClient(t)
	long := strings.Repeat("é", 350) + ".wav" // 2,104 bytes once percent-encoded
	res, body := postForm(t, c, gatewayURL+"/upload", []formPart{
		{field: "a", filename: "first.wav", size: 6 << 20, seed: 1},
		{field: "audio", filename: long, size: 1 << 20, seed: 2},
	}, true)
	e := expectRefusal(t, res, body, http.StatusBadRequest, "metadata_too_large", "")
	expectPart(t, e, 1, "audio", long)
	s.empty(t)

	fits := strings.Repeat("é", 300) + ".wav"
	res, body = postForm(t, c, gatewayURL+"/upload", []formPart{{field: "audio", filename: fits, size: 1 << 20, seed: 2}}, true)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("a name that fits: %d %s", res.StatusCode, body)
	}
}

// All part headers of one form share one budget: past it, 431. Row 46.
func TestFormHeaderBudget(t *testing.T) {
	be := newURIBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /small* {
	to %s
	max_form_header_size 64KiB
}
stream_proxy /default* {
	to %s
}`, be.URL, be.URL))
	c := newClient(t)
	form := func(parts int, pad int) []byte {
		var sb strings.Builder
		for i := 0; i < parts; i++ {
			fmt.Fprintf(&sb, "--b\r\nContent-Disposition: form-data; name=\"f%d\"\r\nX-Pad: %s\r\n\r\nx\r\n", i, strings.Repeat("p", pad))
		}
		sb.WriteString("--b--\r\n")
		return []byte(sb.String())
	}
	for _, tc := range []struct {
		path       string
		parts, pad int
		status     int
	}{
		{"/small", 5, 10 << 10, 200},
		{"/small", 7, 10 << 10, 431},
		{"/default", 999, 100, 200},          // a thousand parts of modest headers fit
		{"/default", 999, 15<<10 + 512, 431}, // 15.5 KiB headers do not
	} {
		res, body := postRawTo(t, c, gatewayURL+tc.path, "multipart/form-data; boundary=b", form(tc.parts, tc.pad))
		if tc.status == 200 {
			if res.StatusCode != 200 {
				t.Errorf("%s, %d parts with %d-byte headers: %d %s", tc.path, tc.parts, tc.pad, res.StatusCode, body)
			}
			continue
		}
		expectRefusal(t, res, body, http.StatusRequestHeaderFieldsTooLarge, "part_header_too_large", "max_form_header_size")
	}
}

// The admin API's list, polled while uploads start and end, reads nothing
// an upload writes unguarded (run with -race).
func TestAdminPolledWhileUploadsRun(t *testing.T) {
	be := newURIBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	to %s
}
stream_proxy /part* {
	to %s
	mode per_part
}`, be.URL, be.URL))
	stop := make(chan struct{})
	polled := make(chan int)
	go func() {
		n := 0
		defer func() { polled <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			res, err := http.Get(fmt.Sprintf("http://localhost:%d/stream_proxy/uploads", adminPort))
			if err != nil {
				continue
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			n++
		}
	}()
	c := newClient(t)
	for i := 0; i < 30; i++ {
		path := []string{"/upload", "/part"}[i%2]
		res, body := postForm(t, c, gatewayURL+path, []formPart{{field: "m", value: "x"}, {field: "f", filename: "a.bin", size: 256 << 10, seed: uint64(i)}}, i%3 == 0)
		if res.StatusCode != 200 {
			t.Errorf("upload %d: %d %s", i, res.StatusCode, body)
		}
	}
	close(stop)
	if n := <-polled; n == 0 {
		t.Error("the admin API was never polled")
	}
}

// A form value that header_up puts into the backend request's header, with
// a line break in it, is the client's 400 header_value_invalid, not a 502
// that takes the upstream out of the pool: with max_fails 1, the next clean
// upload still gets 200.
func TestHeaderUpClientValueNeverCountsAgainstTheBackend(t *testing.T) {
	be := newURIBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	to %s
	mode per_part
	header_up X-Model {http.stream_proxy.form.model}
	max_fails 1
	fail_duration 10m
}`, be.URL))

	form := func(model string) string {
		return "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n" + model + "\r\n" +
			faultForm(`Content-Disposition: form-data; name="audio"; filename="a.wav"`, "data", true)
	}
	request := func(body string) string {
		return "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n" +
			fmt.Sprintf("Content-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	}
	for i := 0; i < 3; i++ {
		if got := sendRaw(t, request(form("whisper\r\nX-Injected: 1"))); got != http.StatusBadRequest {
			t.Fatalf("a line break in a header_up value: status %d, want 400", got)
		}
		if got := be.take(); len(got) != 0 {
			t.Fatalf("the backend saw %q", got)
		}
		if got := sendRaw(t, request(form("whisper"))); got != http.StatusOK {
			t.Fatalf("the clean upload after it: status %d, want 200 (the upstream was counted as failed)", got)
		}
		be.take()
	}
}
