package integration

// Store mode into S3-compatible object storage, against a real S3 server
// (versitygw): the rows of integration/README.md about S3 (21 in S3, 34 to 37).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/streamproxy/caddy-stream-proxy/integration/versitygwtest"
)

const (
	s3Key      = "sp-test-key"
	s3Secret   = "sp-test-secret-0123456789"
	s3Bucket   = "uploads"
	s3PartSize = 5 << 20
)

// s3Server is a versitygw (a real S3 server, on the POSIX backend) on a free
// loopback port, with an empty bucket.
type s3Server struct {
	*versitygwtest.Server
	endpoint string
	client   *s3.Client
}

func startS3(t *testing.T) *s3Server {
	t.Helper()
	srv := versitygwtest.StartT(t, s3Key, s3Secret)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	s := &s3Server{Server: srv, endpoint: srv.Endpoint, client: srv.Client(tr)}
	if _, err := s.client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(s3Bucket)}); err != nil {
		t.Fatalf("creating the bucket: %v", err)
	}
	return s
}

// site is a store s3 block for the gateway, credentials by placeholder.
func (s *s3Server) site(t *testing.T, endpoint, extra string) string {
	t.Setenv("SP_TEST_S3_KEY", s3Key)
	t.Setenv("SP_TEST_S3_SECRET", s3Secret)
	return fmt.Sprintf(`store s3 {
		bucket %s
		prefix up/
		endpoint %s
		use_path_style
		access_key_id {env.SP_TEST_S3_KEY}
		secret_access_key {env.SP_TEST_S3_SECRET}
		part_size 5MiB
		max_buffers 8
		%s
	}`, s3Bucket, endpoint, extra)
}

// objects lists the bucket's keys.
func (s *s3Server) objects(t *testing.T) []string {
	t.Helper()
	out, err := s.client.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(s3Bucket)})
	if err != nil {
		t.Fatalf("listing objects: %v", err)
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, aws.ToString(o.Key))
	}
	return keys
}

// uploads lists the bucket's open multipart uploads.
func (s *s3Server) uploads(t *testing.T) []string {
	t.Helper()
	out, err := s.client.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(s3Bucket)})
	if err != nil {
		t.Fatalf("listing multipart uploads: %v", err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	return keys
}

// empty waits a little for the bucket to hold no object and no multipart
// upload, and fails the test if it does not.
func (s *s3Server) empty(t *testing.T) {
	t.Helper()
	var objs, ups []string
	if !waitUntil(func() bool {
		objs, ups = s.objects(t), s.uploads(t)
		return len(objs) == 0 && len(ups) == 0
	}) {
		t.Fatalf("left in the bucket: objects %v, multipart uploads %v", objs, ups)
	}
}

// object returns a stored object's sha256, content type and metadata.
func (s *s3Server) object(t *testing.T, key string) (sum, contentType string, meta map[string]string) {
	t.Helper()
	out, err := s.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("getting %s: %v", key, err)
	}
	defer out.Body.Close()
	h := sha256.New()
	if _, err := io.Copy(h, out.Body); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), aws.ToString(out.ContentType), out.Metadata
}

var keyPattern = regexp.MustCompile(`^up/\d{4}/\d{2}/\d{2}/[0-9a-f]{32}$`)

// Files of 0 bytes, exactly part_size, part_size+1 and several parts, among
// text fields, land byte-identical with their metadata; nothing is listed
// while the form is in flight.
func TestS3StoreForm(t *testing.T) {
	s := startS3(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	%s
	hash sha256
}`, s.site(t, s.endpoint, "")))
	parts := objectForm(s3PartSize, 3)

	// The body goes up but for its last 2 MiB; meanwhile, with several
	// parts of the last file sent, nothing may be listed.
	release, done := postHeld(t, newClient(t), gatewayURL+"/upload", parts, formLength(parts)-2<<20)
	waitFor(t, "the last file's multipart upload", func() bool { return len(s.uploads(t)) >= 4 })
	if objs := s.objects(t); len(objs) != 0 {
		t.Errorf("listed while the form is in flight: %v", objs)
	}
	if up := inFlight(t, 1); up[0].Mode != "store" || up[0].Bytes < 3*s3PartSize {
		t.Errorf("admin API in flight: %+v", up)
	}
	release()
	expectObjects(t, <-done, parts, s3Bucket, keyPattern, s.object)
	if ups := s.uploads(t); len(ups) != 0 {
		t.Errorf("multipart uploads left open: %v", ups)
	}
}

// integration/README.md, rows 35, 36 and the limits: whatever fails, nothing is
// left in the bucket, neither object nor multipart upload.
func TestS3StoreFailuresLeaveNothing(t *testing.T) {
	s := startS3(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	max_part_size 12MiB
	%s
}`, s.site(t, s.endpoint, "")))
	c := newClient(t)
	first := formPart{field: "a", filename: "a.bin", size: 7 << 20, seed: 1}

	t.Run("limit", func(t *testing.T) {
		res, body := postForm(t, c, gatewayURL+"/upload", []formPart{first, {field: "b", filename: "b.bin", size: 13 << 20, seed: 2}}, true)
		if res.StatusCode != http.StatusRequestEntityTooLarge || decodeError(t, body).Error.Code != "part_too_large" {
			t.Fatalf("status %d: %s", res.StatusCode, body)
		}
		s.empty(t)
	})

	t.Run("digest mismatch", func(t *testing.T) {
		data, _ := io.ReadAll(newFileData(6<<20, 3))
		form := "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.bin\"\r\n" +
			"Content-Digest: sha-256=:" + strings.Repeat("A", 43) + "=:\r\n\r\n" + string(data) + "\r\n--b--\r\n"
		req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload", strings.NewReader(form))
		req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest || decodeError(t, body).Error.Code != "digest_mismatch" {
			t.Fatalf("status %d: %s", res.StatusCode, body)
		}
		s.empty(t)
	})

	t.Run("malformed", func(t *testing.T) {
		data, _ := io.ReadAll(newFileData(6<<20, 3))
		form := "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.bin\"\r\n\r\n" + string(data) // no closing delimiter
		res, body := postRaw(t, c, "multipart/form-data; boundary=b", []byte(form), false)
		if res.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d: %s", res.StatusCode, body)
		}
		s.empty(t)
	})

	t.Run("client abort", func(t *testing.T) {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: multipart/form-data; boundary=abc\r\nContent-Length: 100000000\r\n\r\n", httpPort)
		fmt.Fprintf(conn, "--abc\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n%s", strings.Repeat("x", 11<<20))
		waitFor(t, "a multipart upload", func() bool { return len(s.uploads(t)) > 0 })
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
		s.empty(t)
		inFlight(t, 0) // its handler has returned
	})
}

// integration/README.md, rows 34 and 35: S3 failing mid-file, refused
// credentials, a missing bucket or an unreachable server give their documented
// answer, and leave nothing.
func TestS3StoreServerFailures(t *testing.T) {
	s := startS3(t)
	// A proxy in front of versitygw that fails part uploads when told to.
	var failParts atomic.Bool
	target, _ := url.Parse(s.endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failParts.Load() && r.Method == http.MethodPut && r.URL.Query().Has("partNumber") {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	t.Setenv("SP_TEST_WRONG_SECRET", "wrong-secret")
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	unreachable := "http://" + closed.Addr().String()
	closed.Close()
	startGateway(t, fmt.Sprintf(`stream_proxy /failing* {
	mode store
	%s
}
stream_proxy /denied* {
	mode store
	store s3 {
		bucket %s
		endpoint %s
		use_path_style
		access_key_id %s
		secret_access_key {env.SP_TEST_WRONG_SECRET}
		part_size 5MiB
	}
}
stream_proxy /nobucket* {
	mode store
	store s3 {
		bucket missing
		endpoint %s
		use_path_style
		access_key_id %s
		secret_access_key %s
		part_size 5MiB
	}
}
stream_proxy /unreachable* {
	mode store
	store s3 {
		bucket %s
		endpoint %s
		use_path_style
		access_key_id %s
		secret_access_key %s
		part_size 5MiB
	}
}`, s.site(t, proxy.URL, ""), s3Bucket, s.endpoint, s3Key, s.endpoint, s3Key, s3Secret, s3Bucket, unreachable, s3Key, s3Secret))
	c := newClient(t)
	form := []formPart{{field: "a", filename: "a.bin", size: 6 << 20, seed: 1}, {field: "b", filename: "b.bin", size: 12 << 20, seed: 2}}

	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/denied", http.StatusBadGateway, "store_denied"},
		{"/nobucket", http.StatusBadGateway, "store_no_bucket"},
		{"/unreachable", http.StatusServiceUnavailable, "store_unavailable"},
	} {
		res, body := postForm(t, c, gatewayURL+tc.path, form, false)
		e := decodeError(t, body)
		if res.StatusCode != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s: status %d: %s", tc.path, res.StatusCode, body)
		}
		if strings.Contains(string(body), s3Secret) || strings.Contains(string(body), "wrong-secret") {
			t.Errorf("%s: a secret in the answer: %s", tc.path, body)
		}
		s.empty(t)
	}

	// S3 fails once the first file is up and the second one's parts go.
	res, body := postForm(t, c, gatewayURL+"/failing", form, false)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("through the proxy: status %d: %s", res.StatusCode, body)
	}
	for _, k := range s.objects(t) {
		s.client.DeleteObject(context.Background(), &s3.DeleteObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(k)})
	}
	failParts.Store(true)
	res, body = postForm(t, c, gatewayURL+"/failing", form, false)
	if res.StatusCode != http.StatusServiceUnavailable || decodeError(t, body).Error.Code != "store_unavailable" {
		t.Errorf("S3 failing mid-file: status %d: %s", res.StatusCode, body)
	}
	s.empty(t)
}

// With a backend: it gets the text fields and where each file is; an error
// answer from it deletes the objects.
func TestS3StoreWithBackend(t *testing.T) {
	s := startS3(t)
	be := newMetadataBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	mode store
	%s
	hash sha256 md5
}`, be.URL, s.site(t, s.endpoint, "")))
	parts := []formPart{{field: "model", value: "m"}, {field: "audio", filename: "talk.wav", contentType: "audio/wav", size: 11 << 20, seed: 5}}
	want := expected(parts)
	c := newClient(t)
	res, body := postForm(t, c, gatewayURL+"/upload", parts, false)
	if res.StatusCode != 200 || string(body) != `{"ok":true}` {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	g := be.values()
	if g["model"][0] != "m" || g["audio.name"][0] != "talk.wav" || g["audio.content_type"][0] != "audio/wav" ||
		g["audio.bucket"][0] != s3Bucket || !keyPattern.MatchString(g["audio.key"][0]) ||
		g["audio.size"][0] != fmt.Sprint(want[1].Size) || g["audio.sha256"][0] != want[1].SHA256 || len(g["audio.md5"]) != 1 {
		t.Fatalf("backend got %v", g)
	}
	if sum, _, _ := s.object(t, g["audio.key"][0]); sum != want[1].SHA256 {
		t.Fatal("object differs")
	}
	s.client.DeleteObject(context.Background(), &s3.DeleteObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(g["audio.key"][0])})

	be.setStatus(http.StatusUnprocessableEntity)
	res, _ = postForm(t, c, gatewayURL+"/upload", parts, true)
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("status %d, want the backend's 422", res.StatusCode)
	}
	s.empty(t)
}

// integration/README.md, row 21 in S3: hostile filenames are metadata only,
// never in a key.
func TestS3StoreHostileFilenames(t *testing.T) {
	s := startS3(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	%s
}`, s.site(t, s.endpoint, "")))
	names := []string{"../x", `..\x`, "/etc/passwd", strings.Repeat("n", 300), "CON", "a\tb", "名前.wav", "%2e%2e%2f"}
	var parts []formPart
	for i, n := range names {
		parts = append(parts, formPart{field: fmt.Sprintf("f%d", i), filename: n, size: int64(100 + i), seed: uint64(i)})
	}
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", parts, false)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	var a objectAnswer
	if err := json.Unmarshal(body, &a); err != nil || len(a.Parts) != len(names) {
		t.Fatalf("answer %s", body)
	}
	for i, p := range a.Parts {
		if !keyPattern.MatchString(p.Key) {
			t.Errorf("part %d: key %q", i, p.Key)
		}
		_, _, meta := s.object(t, p.Key)
		if name, _ := url.PathUnescape(meta["filename"]); name != names[i] {
			t.Errorf("part %d: filename metadata %q, want %q", i, meta["filename"], names[i])
		}
	}
	// filename* (RFC 2231) is the only way a NUL reaches a filename.
	for raw, want := range map[string]string{"%2e%2e%2fescape": "../escape", "a%00b": "a\x00b"} {
		req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload", strings.NewReader(
			"--b\r\nContent-Disposition: form-data; name=\"f\"; filename*=UTF-8''"+raw+"\r\n\r\ndata\r\n--b--\r\n"))
		req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
		res, err := newClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		var a objectAnswer
		if res.StatusCode != http.StatusCreated || json.Unmarshal(body, &a) != nil || len(a.Parts) != 1 || !keyPattern.MatchString(a.Parts[0].Key) {
			t.Fatalf("filename*=UTF-8''%s: %d %s", raw, res.StatusCode, body)
		}
		_, _, meta := s.object(t, a.Parts[0].Key)
		if name, _ := url.PathUnescape(meta["filename"]); name != want {
			t.Errorf("filename*=UTF-8''%s: metadata %q", raw, meta["filename"])
		}
	}
	if objs := s.objects(t); len(objs) != len(names)+2 {
		t.Errorf("objects %v", objs)
	}
}

// Two handlers, each with its own buffer pool, as two gateway instances
// would be, write into one bucket at once; the second one takes its
// credentials from the AWS SDK's default chain (the environment).
func TestS3StoreTwoGateways(t *testing.T) {
	s := startS3(t)
	t.Setenv("AWS_ACCESS_KEY_ID", s3Key)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3Secret)
	startGateway(t, fmt.Sprintf(`stream_proxy /one* {
	mode store
	%s
}
stream_proxy /two* {
	mode store
	store s3 {
		bucket %s
		endpoint %s
		use_path_style
		part_size 5MiB
	}
}`, s.site(t, s.endpoint, ""), s3Bucket, s.endpoint))
	c := newClient(t)
	var wg sync.WaitGroup
	keys := make([][]string, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path := []string{"/one", "/two"}[i%2]
			res, body := postForm(t, c, gatewayURL+path, []formPart{{field: "f", filename: "f.bin", size: 7 << 20, seed: uint64(i)}}, false)
			var a objectAnswer
			if res.StatusCode != http.StatusCreated || json.Unmarshal(body, &a) != nil || len(a.Parts) != 1 {
				t.Errorf("%s: status %d: %s", path, res.StatusCode, body)
				return
			}
			keys[i] = []string{a.Parts[0].Key}
		}()
	}
	wg.Wait()
	if objs := s.objects(t); len(objs) != 4 {
		t.Errorf("objects %v, want 4", objs)
	}
	for i, k := range keys {
		if len(k) == 1 {
			if sum, _, _ := s.object(t, k[0]); sum != expected([]formPart{{filename: "f", size: 7 << 20, seed: uint64(i)}})[0].SHA256 {
				t.Errorf("upload %d: object differs", i)
			}
		}
	}
}

// integration/README.md, row 37: the part buffers are one pool per handler.
// While S3 takes no part, uploads read no more from their clients than the pool
// holds, and go on once S3 does.
func TestS3StoreBackpressure(t *testing.T) {
	s := startS3(t)
	release := make(chan struct{})
	var held atomic.Int32
	target, _ := url.Parse(s.endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Query().Has("partNumber") {
			held.Add(1)
			<-release
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	%s
}`, strings.Replace(s.site(t, proxy.URL, ""), "max_buffers 8", "max_buffers 2", 1)))

	const uploads = 3
	expectPoolBackpressure(t, uploads, 24<<20, s3PartSize, &held, release)
	if objs := s.objects(t); len(objs) != uploads {
		t.Errorf("objects %v", objs)
	}
}
