package integration

// Store mode into Azure Blob Storage, against Azurite, Microsoft's own
// emulator: the rows of integration/README.md about store azure.

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
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	azurite "github.com/streamproxy/caddy-stream-proxy/integration/azuritetest"
)

const (
	azContainer = "uploads"
	azBlock     = 256 << 10
)

// azStore is Azurite with an empty container, and a client of it.
type azStore struct {
	*azurite.Server
	c *container.Client
}

func startAzure(t *testing.T) *azStore {
	t.Helper()
	s := azurite.Start(t)
	return &azStore{Server: s, c: s.CreateContainer(t, azContainer)}
}

// site is a store azure block for the gateway, the key by placeholder.
func (s *azStore) site(t *testing.T, endpoint, extra string) string {
	t.Setenv("SP_TEST_AZURE_KEY", azurite.Key)
	return fmt.Sprintf(`store azure {
		container %s
		prefix up/
		endpoint %s
		account_name %s
		account_key {env.SP_TEST_AZURE_KEY}
		block_size 256KiB
		max_buffers 8
		%s
	}`, azContainer, endpoint, azurite.Account, extra)
}

// blobs lists the container's committed blobs.
func (s *azStore) blobs(t *testing.T) []string {
	t.Helper()
	return s.list(t, false)
}

// list lists the container's blobs, with those that have only staged
// blocks if uncommitted.
func (s *azStore) list(t *testing.T, uncommitted bool) []string {
	t.Helper()
	var names []string
	pager := s.c.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Include: container.ListBlobsInclude{UncommittedBlobs: uncommitted}})
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			t.Fatalf("listing blobs: %v", err)
		}
		for _, b := range page.Segment.BlobItems {
			names = append(names, *b.Name)
		}
	}
	return names
}

// empty fails the test if a blob is committed in the container.
func (s *azStore) empty(t *testing.T) {
	t.Helper()
	if names := s.blobs(t); len(names) != 0 {
		t.Fatalf("committed blobs left: %v", names)
	}
}

// blob returns a blob's sha256, content type and metadata.
func (s *azStore) blob(t *testing.T, name string) (sum, contentType string, meta map[string]string) {
	t.Helper()
	out, err := s.c.NewBlobClient(name).DownloadStream(context.Background(), nil)
	if err != nil {
		t.Fatalf("getting %s: %v", name, err)
	}
	defer out.Body.Close()
	h := sha256.New()
	if _, err := io.Copy(h, out.Body); err != nil {
		t.Fatal(err)
	}
	meta = map[string]string{}
	for k, v := range out.Metadata {
		meta[strings.ToLower(k)] = *v
	}
	return hex.EncodeToString(h.Sum(nil)), *out.ContentType, meta
}

var blobPattern = regexp.MustCompile(`^up/\d{4}/\d{2}/\d{2}/[0-9a-f]{32}$`)

// Files of 0 bytes, exactly block_size, block_size+1 and several blocks,
// among text fields, land byte-identical with their Content-Type and
// metadata; no blob is committed while the form is in flight.
func TestAzureStoreForm(t *testing.T) {
	s := startAzure(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	%s
	hash sha256
}`, s.site(t, s.Endpoint, "")))
	parts := objectForm(azBlock, 5)

	// The body goes up but for its last 100 KiB; meanwhile, with several
	// blocks of the last file staged, nothing may be committed.
	sent := formLength(parts) - 100<<10
	release, done := postHeld(t, newClient(t), gatewayURL+"/upload", parts, sent)
	waitFor(t, "the gateway reading all it was given", func() bool { return inFlight(t, 1)[0].Bytes >= sent-64<<10 })
	// The three files with data have blocks staged (uncommitted blobs, as
	// Azure lists them), none is committed.
	waitFor(t, "the last file's blocks", func() bool { return len(s.list(t, true)) >= 3 })
	if names := s.list(t, true); len(names) != 3 {
		t.Errorf("uncommitted blobs while the form is in flight: %v, want 3", names)
	}
	if names := s.blobs(t); len(names) != 0 {
		t.Errorf("committed while the form is in flight: %v", names)
	}
	release()
	expectObjects(t, <-done, parts, azContainer, blobPattern, s.blob)
	if names := s.blobs(t); len(names) != 4 {
		t.Errorf("blobs %v, want 4", names)
	}
}

// A broken limit, a client that goes away mid-file, a backend's error
// answer: nothing is committed, and blobs committed earlier are deleted.
func TestAzureStoreFailuresLeaveNothing(t *testing.T) {
	s := startAzure(t)
	be := newMetadataBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	max_part_size 1MiB
	%s
}
stream_proxy /backend* %s {
	mode store
	%s
	hash sha256
}`, s.site(t, s.Endpoint, ""), be.URL, s.site(t, s.Endpoint, "")))
	c := newClient(t)
	first := formPart{field: "a", filename: "a.bin", size: 700 << 10, seed: 1}

	t.Run("limit", func(t *testing.T) {
		res, body := postForm(t, c, gatewayURL+"/upload", []formPart{first, {field: "b", filename: "b.bin", size: 2 << 20, seed: 2}}, true)
		if res.StatusCode != http.StatusRequestEntityTooLarge || decodeError(t, body).Error.Code != "part_too_large" {
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
		fmt.Fprintf(conn, "--abc\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n%s", strings.Repeat("x", 900<<10))
		waitFor(t, "the gateway reading the data sent", func() bool { return inFlight(t, 1)[0].Bytes >= 900<<10 })
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
		inFlight(t, 0) // its handler has returned
		s.empty(t)
	})

	t.Run("backend error", func(t *testing.T) {
		parts := []formPart{{field: "model", value: "m"}, {field: "audio", filename: "talk.wav", contentType: "audio/wav", size: 600 << 10, seed: 5}}
		want := expected(parts)
		res, body := postForm(t, c, gatewayURL+"/backend", parts, false)
		if res.StatusCode != 200 || string(body) != `{"ok":true}` {
			t.Fatalf("status %d: %s", res.StatusCode, body)
		}
		g := be.values()
		if g["audio.bucket"][0] != azContainer || !blobPattern.MatchString(g["audio.key"][0]) || g["audio.sha256"][0] != want[1].SHA256 {
			t.Fatalf("backend got %v", g)
		}
		if sum, _, _ := s.blob(t, g["audio.key"][0]); sum != want[1].SHA256 {
			t.Fatal("blob differs")
		}
		if _, err := s.c.NewBlobClient(g["audio.key"][0]).Delete(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		be.setStatus(http.StatusUnprocessableEntity)
		res, _ = postForm(t, c, gatewayURL+"/backend", parts, true)
		if res.StatusCode != http.StatusUnprocessableEntity {
			t.Fatalf("status %d, want the backend's 422", res.StatusCode)
		}
		s.empty(t)
	})
}

// Refused credentials, a missing container, an unreachable server, Azure
// failing mid-file, and Azurite killed mid-file give their documented
// answers, and leave nothing committed.
func TestAzureStoreServerFailures(t *testing.T) {
	s := startAzure(t)
	var failBlocks atomic.Bool
	var blocks atomic.Int32
	target, _ := url.Parse("http://127.0.0.1:" + s.Port)
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failBlocks.Load() && r.Method == http.MethodPut && r.URL.Query().Get("comp") == "block" && blocks.Add(1) > 2 {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `<?xml version="1.0" encoding="utf-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	unreachable := "http://" + closed.Addr().String() + "/" + azurite.Account
	closed.Close()
	wrongKey := strings.Repeat("A", 86) + "=="
	startGateway(t, fmt.Sprintf(`stream_proxy /failing* {
	mode store
	%s
}
stream_proxy /direct* {
	mode store
	%s
}
stream_proxy /denied* {
	mode store
	store azure {
		container %s
		endpoint %s
		account_name %s
		account_key %s
	}
}
stream_proxy /nocontainer* {
	mode store
	store azure {
		container missing
		connection_string "DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;"
	}
}
stream_proxy /unreachable* {
	mode store
	store azure {
		container %s
		endpoint %s
		account_name %s
		account_key {env.SP_TEST_AZURE_KEY}
	}
}`, s.site(t, proxy.URL+"/"+azurite.Account, ""), s.site(t, s.Endpoint, ""),
		azContainer, s.Endpoint, azurite.Account, wrongKey,
		azurite.Account, azurite.Key, s.Endpoint,
		azContainer, unreachable, azurite.Account))
	c := newClient(t)
	form := []formPart{{field: "a", filename: "a.bin", size: 300 << 10, seed: 1}, {field: "b", filename: "b.bin", size: 1 << 20, seed: 2}}

	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/denied", http.StatusBadGateway, "store_denied"},
		{"/nocontainer", http.StatusBadGateway, "store_no_bucket"},
		{"/unreachable", http.StatusServiceUnavailable, "store_unavailable"},
	} {
		res, body := postForm(t, c, gatewayURL+tc.path, form, false)
		if e := decodeError(t, body); res.StatusCode != tc.status || e.Error.Code != tc.code {
			t.Errorf("%s: status %d: %s", tc.path, res.StatusCode, body)
		}
		if strings.Contains(string(body), azurite.Key) || strings.Contains(string(body), wrongKey) {
			t.Errorf("%s: a key in the answer: %s", tc.path, body)
		}
		s.empty(t)
	}

	// Azure answers 500 to the second file's blocks: the first file's,
	// staged, are not committed either.
	failBlocks.Store(true)
	res, body := postForm(t, c, gatewayURL+"/failing", form, false)
	if res.StatusCode != http.StatusServiceUnavailable || decodeError(t, body).Error.Code != "store_unavailable" {
		t.Errorf("Azure failing mid-file: status %d: %s", res.StatusCode, body)
	}
	s.empty(t)

	// Azurite killed (SIGKILL) while the client is mid-file.
	parts := []formPart{form[0], {field: "big", filename: "big.bin", size: 64 << 20, seed: 3}}
	resume, done := postHeld(t, c, gatewayURL+"/direct", parts, 2<<20)
	waitFor(t, "the big file's blocks", func() bool { return inFlight(t, 1)[0].Bytes >= 2<<20-64<<10 })
	s.WaitPersisted(t, azContainer)
	s.Kill()
	resume()
	a := <-done
	if a.status != http.StatusServiceUnavailable || decodeError(t, a.body).Error.Code != "store_unavailable" {
		t.Errorf("Azurite killed mid-file: %d: %s", a.status, a.body)
	}
	s.Restart(t)
	s.empty(t)
}

// The block buffers are one pool per handler: while Azure takes no block,
// uploads read no more from their clients than the pool holds, and go on
// once it does; the gateway's memory for file data is the pool's.
func TestAzureStoreBackpressure(t *testing.T) {
	s := startAzure(t)
	release := make(chan struct{})
	var held atomic.Int32
	target, _ := url.Parse("http://127.0.0.1:" + s.Port)
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Query().Get("comp") == "block" {
			held.Add(1)
			<-release
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	%s
}`, strings.Replace(s.site(t, proxy.URL+"/"+azurite.Account, ""), "max_buffers 8", "max_buffers 2", 1)))

	const uploads = 3
	expectPoolBackpressure(t, uploads, 6<<20, azBlock, &held, release)
	if names := s.blobs(t); len(names) != uploads {
		t.Errorf("blobs %v", names)
	}
}

// Peak memory: a 64 MiB file goes up in 256 KiB blocks while the live heap
// stays flat; file data is held only in the pool's buffers (max_buffers ×
// block_size, mapped outside the heap), of which the metric never counts more
// than max_buffers.
func TestAzureStorePeakMemory(t *testing.T) {
	s := startAzure(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	%s
}`, s.site(t, s.Endpoint, "")))
	c := newClient(t)
	warm := []formPart{{field: "f", filename: "w.bin", size: 1 << 20, seed: 9}}
	if res, body := postForm(t, c, gatewayURL+"/upload", warm, true); res.StatusCode != http.StatusCreated {
		t.Fatalf("warm-up: status %d: %s", res.StatusCode, body)
	}
	base := liveHeap()
	stop := make(chan struct{})
	type peak struct {
		heap    uint64
		buffers float64
	}
	peaks := make(chan peak, 1)
	go func() {
		var top peak
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				peaks <- top
				return
			case <-tick.C:
				top.heap = max(top.heap, liveHeap())
				top.buffers = max(top.buffers, metricValue(t, "caddy_stream_proxy_store_buffers_in_use"))
			}
		}
	}()
	const size = 64 << 20
	parts := []formPart{{field: "f", filename: "big.bin", size: size, seed: 10}}
	res, body := postForm(t, c, gatewayURL+"/upload", parts, true)
	close(stop)
	top := <-peaks
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	var a objectAnswer
	if err := json.Unmarshal(body, &a); err != nil || len(a.Parts) != 1 {
		t.Fatalf("answer %s", body)
	}
	if sum, _, _ := s.blob(t, a.Parts[0].Key); sum != expected(parts)[0].SHA256 {
		t.Fatal("blob differs")
	}
	growth := int64(top.heap) - int64(base)
	t.Logf("live heap: %d MiB before, peak %d MiB during a %d MiB upload (growth %d KiB); at most %v block buffers in use",
		base>>20, top.heap>>20, size>>20, growth>>10, top.buffers)
	if growth > 16<<20 || top.buffers > 8 {
		t.Errorf("live heap grew by %d KiB, %v buffers in use; want under 16 MiB and at most max_buffers (8)", growth>>10, top.buffers)
	}
}

// TestAzureStoreThroughput compares, when SP_AZURE_BENCH=1, the gateway's
// store azure with the SDK uploading straight to Azurite (8 MiB blocks, 4 at
// once, as the store does), and logs both rates. A figure, not a check:
//
//	SP_AZURE_BENCH=1 go test -count=1 -v -run TestAzureStoreThroughput ./integration/
func TestAzureStoreThroughput(t *testing.T) {
	if os.Getenv("SP_AZURE_BENCH") != "1" {
		t.Skip("a benchmark: SP_AZURE_BENCH=1 runs it")
	}
	s := startAzure(t)
	t.Setenv("SP_TEST_AZURE_KEY", azurite.Key)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	store azure {
		container %s
		endpoint %s
		account_name %s
		account_key {env.SP_TEST_AZURE_KEY}
	}
}`, azContainer, s.Endpoint, azurite.Account))
	c := newClient(t)
	const size = 128 << 20
	for run := range 3 {
		start := time.Now()
		_, err := s.c.NewBlockBlobClient(fmt.Sprintf("direct-%d", run)).UploadStream(context.Background(),
			io.LimitReader(newFileData(size, uint64(run)), size), &blockblob.UploadStreamOptions{BlockSize: 8 << 20, Concurrency: 4})
		if err != nil {
			t.Fatal(err)
		}
		direct := time.Since(start)
		start = time.Now()
		res, body := postForm(t, c, gatewayURL+"/upload", []formPart{{field: "f", filename: "f.bin", size: size, seed: uint64(run)}}, false)
		if res.StatusCode != http.StatusCreated {
			t.Fatalf("status %d: %s", res.StatusCode, body)
		}
		gw := time.Since(start)
		t.Logf("run %d, %d MiB: SDK direct %.1f MiB/s, gateway %.1f MiB/s, gateway/direct %.2f",
			run, size>>20, float64(size>>20)/direct.Seconds(), float64(size>>20)/gw.Seconds(), direct.Seconds()/gw.Seconds())
	}
}
