package integration

// Edge cases of integration/README.md about what passes by, load, and reloads.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// integration/README.md, row 24: multipart/mixed, other multipart types,
// look-alikes and bodies that are not multipart at all reach the next handler
// untouched: every byte, in order, never read by stream_proxy, and its backend
// never called.
func TestEdgeNotFormDataPassesThrough(t *testing.T) {
	be := newBackend(t)
	next := newNextServer(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s
reverse_proxy %s`, be.URL, strings.TrimPrefix(next.URL, "http://")))
	c := newClient(t)

	mixed, mixedCT := formBytes(t, sampleForm(300<<10), "")
	mixedCT = strings.Replace(mixedCT, "multipart/form-data", "multipart/mixed", 1)
	blob, _ := io.ReadAll(newFileData(8<<20, 24))
	for _, tc := range []struct {
		name, method, contentType string
		body                      []byte
		chunked                   bool
	}{
		{"multipart/mixed with a form inside", http.MethodPost, mixedCT, mixed, false},
		{"multipart/related", http.MethodPost, "multipart/related; boundary=x; type=application/json", []byte("--x\r\n\r\n{}\r\n--x--\r\n"), true},
		{"multipart/form-datax", http.MethodPost, "multipart/form-datax; boundary=x", []byte("--x--\r\n"), false},
		{"form-data without multipart/", http.MethodPost, "form-data; boundary=x", []byte("--x--\r\n"), false},
		{"urlencoded form", http.MethodPost, "application/x-www-form-urlencoded", []byte("a=1&b=2"), false},
		{"JSON", http.MethodPost, "application/json", []byte(`{"model":"whisper"}`), true},
		{"8 MiB octet-stream, PUT", http.MethodPut, "application/octet-stream", blob, false},
		{"8 MiB octet-stream, chunked", http.MethodPost, "application/octet-stream", blob, true},
		{"no Content-Type", http.MethodPost, "", []byte("raw bytes"), false},
		{"GET without a body", http.MethodGet, "", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != nil {
				body = strings.NewReader(string(tc.body))
				if tc.chunked {
					body = opaqueReader{body}
				}
			}
			req, _ := http.NewRequest(tc.method, gatewayURL+"/upload", body)
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			if tc.chunked {
				req.ContentLength = -1
			}
			res, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			out, _ := io.ReadAll(res.Body)
			res.Body.Close()
			sum := sha256.Sum256(tc.body)
			want := fmt.Sprintf("%s %d %s %s", tc.method, len(tc.body), hex.EncodeToString(sum[:]), tc.contentType)
			if res.StatusCode != 200 || string(out) != want {
				t.Errorf("status %d: next handler saw %q, want %q", res.StatusCode, out, want)
			}
		})
	}
	if n := len(be.received()); n != 0 {
		t.Errorf("stream_proxy's backend got %d requests, want 0", n)
	}
}

// gatedBody holds its reader back until gate is closed (or 30 s pass).
type gatedBody struct {
	r    io.Reader
	gate <-chan struct{}
	once sync.Once
}

func (g *gatedBody) Read(p []byte) (int, error) {
	g.once.Do(func() {
		select {
		case <-g.gate:
		case <-time.After(30 * time.Second):
		}
	})
	return g.r.Read(p)
}

// integration/README.md, row 25: 256 uploads at once all succeed, byte-exact.
// They are held until the backend has all 256 requests open, so they are truly
// concurrent; the live heap at that point, when every upload holds its buffers,
// is logged and bounded per stream.
func TestEdgeConcurrentUploads(t *testing.T) {
	const uploads = 256
	be := newBackend(t)
	var open atomic.Int64
	all := make(chan struct{})
	var closeAll sync.Once
	be.before = func(w http.ResponseWriter, r *http.Request) bool {
		if open.Add(1) == uploads {
			closeAll.Do(func() { close(all) })
		}
		return false
	}
	// The clients wait at the gate, sending nothing, until every upload has
	// reached the backend, which takes longer than min_rate's grace on a
	// loaded machine under the race detector: the rate is not this test's.
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
		min_rate off
	}`, be.URL))
	tr := &http.Transport{MaxIdleConnsPerHost: uploads, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 2 * time.Minute}

	base := liveHeap()
	heapAtPeak := make(chan uint64, 1)
	gate := make(chan struct{})
	go func() {
		defer close(gate)
		select {
		case <-all:
			heapAtPeak <- liveHeap()
		case <-time.After(30 * time.Second):
			heapAtPeak <- 0
		}
	}()

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, uploads)
	for i := range uploads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts := []formPart{
				{field: "id", value: fmt.Sprint(i)},
				{field: "audio", filename: fmt.Sprintf("%d.wav", i), contentType: "audio/wav", size: 2<<20 + int64(i), seed: uint64(i)},
			}
			body, ct, n := formBody(parts)
			defer body.Close()
			req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload", &gatedBody{r: body, gate: gate})
			req.Header.Set("Content-Type", ct)
			req.ContentLength = n
			res, err := c.Do(req)
			if err != nil {
				errs <- fmt.Errorf("upload %d: %v", i, err)
				return
			}
			out, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 {
				errs <- fmt.Errorf("upload %d: status %d: %s", i, res.StatusCode, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	peak := <-heapAtPeak
	if peak == 0 {
		t.Fatalf("only %d of %d uploads were open at the backend at once", open.Load(), uploads)
	}
	perStream := (int64(peak) - int64(base)) / uploads
	t.Logf("%d uploads of 2 MiB in %v; live heap %d MiB before, %d MiB with all open (%d KiB per stream, client and backend included)",
		uploads, time.Since(start).Round(time.Millisecond), base>>20, peak>>20, perStream>>10)
	if perStream > 1<<20 {
		t.Errorf("%d KiB of live heap per stream in flight; want a bounded amount (under 1 MiB, a part of a 2 MiB file)", perStream>>10)
	}

	got := be.waitRequests(t, uploads)
	if len(got) != uploads {
		t.Fatalf("backend finished %d requests, want %d", len(got), uploads)
	}
	for _, r := range got {
		if r.Err != nil || len(r.Parts) != 2 {
			t.Fatalf("backend saw err %v, %d parts", r.Err, len(r.Parts))
		}
		var i int
		fmt.Sscan(strings.TrimSuffix(r.Parts[1].Filename, ".wav"), &i)
		want := expected([]formPart{{field: "id", value: fmt.Sprint(i)},
			{field: "audio", filename: fmt.Sprintf("%d.wav", i), contentType: "audio/wav", size: 2<<20 + int64(i), seed: uint64(i)}})
		if comparableParts(want) != comparableParts(r.Parts) {
			t.Fatalf("upload %d: backend saw\n%s\nwant\n%s", i, comparableParts(r.Parts), comparableParts(want))
		}
	}
}

// integration/README.md, row 26: a config reload while an upload is in flight:
// the upload, held open across the reload, finishes with 200 and the right
// bytes at the old config's backend; new uploads use the new config (its
// backend, its limit).
func TestEdgeReloadDuringUpload(t *testing.T) {
	oldBe, newBe := newBackend(t), newBackend(t)
	oldBe.firstBytes = make(chan struct{}, 1)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_part_size 8MiB
}`, oldBe.URL))

	// The in-flight upload: 4 MiB, held after its first MiB until released.
	parts := []formPart{
		{field: "model", value: "old"},
		{field: "audio", filename: "inflight.wav", contentType: "audio/wav", size: 4 << 20, seed: 26},
	}
	body, ct, n := formBody(parts)
	release := make(chan struct{})
	held := io.MultiReader(io.LimitReader(body, 1<<20), &gatedBody{r: body, gate: release})
	req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload", held)
	req.Header.Set("Content-Type", ct)
	req.ContentLength = n
	type result struct {
		status int
		body   []byte
		err    error
	}
	done := make(chan result, 1)
	inflight := newClient(t)
	go func() {
		res, err := inflight.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		out, _ := io.ReadAll(res.Body)
		res.Body.Close()
		done <- result{status: res.StatusCode, body: out}
	}()
	select {
	case <-oldBe.firstBytes:
	case <-time.After(10 * time.Second):
		close(release)
		<-done
		t.Fatal("the old backend never got the first bytes")
	}

	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_part_size 1MiB
}`, newBe.URL))

	// New uploads, while the old one is still held: the new backend and the
	// new limit.
	c := newClient(t)
	small := []formPart{{field: "model", value: "new"}, {field: "f", filename: "small.bin", size: 512 << 10, seed: 1}}
	res, out := postForm(t, c, gatewayURL+"/upload", small, false)
	if res.StatusCode != 200 {
		close(release)
		<-done
		t.Fatalf("new upload: status %d: %s", res.StatusCode, out)
	}
	big := []formPart{{field: "f", filename: "big.bin", size: 2 << 20, seed: 2}}
	res, out = postForm(t, c, gatewayURL+"/upload", big, false)
	if res.StatusCode != 413 {
		t.Errorf("new upload over the new limit: status %d, want 413: %s", res.StatusCode, out)
	}

	close(release)
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the in-flight upload never finished")
	}
	if r.err != nil || r.status != 200 {
		t.Fatalf("in-flight upload: status %d, err %v: %s", r.status, r.err, r.body)
	}
	expectComplete(t, oldBe, expected(parts))
	got := newBe.waitRequests(t, 2)
	if len(got) != 2 || got[0].Err != nil || comparableParts(got[0].Parts) != comparableParts(expected(small)) || got[1].Err == nil {
		t.Fatalf("new backend saw %+v", got)
	}
}
