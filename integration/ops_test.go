package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metricValue reads one sample from the admin endpoint's Prometheus metrics;
// 0 when it is not there yet.
func metricValue(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	res, err := http.Get(fmt.Sprintf("http://localhost:%d/metrics", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				match = false
			}
		}
		if match {
			v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			return v
		}
	}
	return 0
}

func TestMetricsAfterUploads(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_part_size 1MiB
}`, be.URL))
	ok := func() float64 {
		return metricValue(t, "caddy_stream_proxy_uploads_total", `mode="forward"`, `outcome="ok"`)
	}
	refused := func() float64 {
		return metricValue(t, "caddy_stream_proxy_rejections_total", `mode="forward"`, `reason="part_too_large"`)
	}
	// An upload is counted when its handler returns, just after the client
	// has its answer: wait for earlier tests' uploads to be counted.
	settle := func() {
		waitFor(t, "no upload in flight", func() bool {
			return metricValue(t, "caddy_stream_proxy_uploads_in_flight", `mode="forward"`) == 0
		})
	}
	settle()
	okBefore, refusedBefore := ok(), refused()
	receivedBefore := metricValue(t, "caddy_stream_proxy_received_bytes_total", `mode="forward"`)
	partsBefore := metricValue(t, "caddy_stream_proxy_parts_total", `mode="forward"`, `outcome="ok"`)

	c := newClient(t)
	parts := sampleForm(100 << 10)
	res, body := postForm(t, c, gatewayURL+"/upload", parts, false)
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	res, _ = postForm(t, c, gatewayURL+"/upload", sampleForm(2<<20), false)
	if res.StatusCode != 413 {
		t.Fatalf("status %d", res.StatusCode)
	}
	settle()
	if got := ok() - okBefore; got != 1 {
		t.Errorf("uploads ok went up by %v, want 1", got)
	}
	if got := refused() - refusedBefore; got != 1 {
		t.Errorf("part_too_large rejections went up by %v, want 1", got)
	}
	if got := metricValue(t, "caddy_stream_proxy_parts_total", `mode="forward"`, `outcome="ok"`) - partsBefore; got < float64(len(parts)) {
		t.Errorf("parts ok went up by %v, want at least %d", got, len(parts))
	}
	if got := metricValue(t, "caddy_stream_proxy_received_bytes_total", `mode="forward"`) - receivedBefore; got < 100<<10 {
		t.Errorf("received bytes went up by %v", got)
	}
	if v := metricValue(t, "caddy_stream_proxy_uploads_in_flight", `mode="forward"`); v != 0 {
		t.Errorf("uploads in flight %v after all ended", v)
	}
	if v := metricValue(t, "caddy_stream_proxy_backend_ttfb_seconds_count", `mode="forward"`); v < 1 {
		t.Errorf("backend ttfb histogram count %v", v)
	}

	// A reload keeps the counters: no duplicate registration, same values.
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	if got := ok() - okBefore; got != 1 {
		t.Errorf("after a reload uploads ok is up by %v, want 1", got)
	}
}

// The admin API lists an upload while it is held open, and not after.
func TestAdminListsUploadsInFlight(t *testing.T) {
	be := newBackend(t)
	be.firstBytes = make(chan struct{}, 1)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	release := make(chan struct{})
	go func() {
		mw.WriteField("model", "tiny")
		fw, _ := mw.CreateFormFile("audio", "talk.wav")
		fw.Write(make([]byte, 300<<10))
		<-release
		fw.Write(make([]byte, 10))
		pw.CloseWithError(mw.Close())
	}()
	req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload?job=7", pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	done := make(chan int, 1)
	go func() {
		res, err := newClient(t).Do(req)
		if err != nil {
			done <- 0
			return
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		done <- res.StatusCode
	}()
	select {
	case <-be.firstBytes:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("upload never reached the backend")
	}

	type status struct {
		ID          string `json:"id"`
		URI         string `json:"uri"`
		Mode        string `json:"mode"`
		Bytes       int64  `json:"bytes"`
		Parts       int64  `json:"parts"`
		CurrentPart *struct {
			Field    string `json:"field"`
			Filename string `json:"filename"`
		} `json:"current_part"`
		Rate int64 `json:"bytes_per_second"`
	}
	list := func() []status {
		res, err := http.Get(fmt.Sprintf("http://localhost:%d/stream_proxy/uploads", adminPort))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var l []status
		if err := json.NewDecoder(res.Body).Decode(&l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	var l []status
	waitUntil(func() bool { l = list(); return len(l) == 1 && l[0].Bytes >= 300<<10 })
	close(release)
	if len(l) != 1 {
		t.Fatalf("admin lists %d uploads, want 1: %+v", len(l), l)
	}
	u := l[0]
	if u.ID == "" || u.URI != "/upload?job=7" || u.Mode != "forward" || u.Bytes < 300<<10 || u.Parts != 2 ||
		u.CurrentPart == nil || u.CurrentPart.Field != "audio" || u.CurrentPart.Filename != "talk.wav" || u.Rate <= 0 {
		t.Errorf("admin shows %+v (current %+v)", u, u.CurrentPart)
	}
	if code := <-done; code != 200 {
		t.Fatalf("upload status %d", code)
	}
	// It leaves the list when its handler returns, just after the answer.
	if !waitUntil(func() bool { l = list(); return len(l) == 0 }) {
		t.Errorf("the upload is still listed after it ended: %+v", l)
	}
}

// Placeholders of the handler are usable in header_up.
func TestPlaceholdersInHeaderUp(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	header_up X-Mode {http.stream_proxy.mode}
	header_up X-Upload {http.request.uuid}
}`, be.URL))
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", sampleForm(1000), false)
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	got := be.waitRequests(t, 1)[0].Header
	if got.Get("X-Mode") != "forward" || !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(got.Get("X-Upload")) {
		t.Errorf("backend headers X-Mode=%q X-Upload=%q", got.Get("X-Mode"), got.Get("X-Upload"))
	}
}

// With handle_errors, the site's own error route answers, and sees the code.
func TestHandleErrorsTakesOver(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_parts 2
}
handle_errors {
	respond "refused: {http.stream_proxy.error.code} ({http.error.status_code})"
}`, be.URL))
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", sampleForm(10), false)
	if res.StatusCode != 413 || string(body) != "refused: too_many_parts (413)" {
		t.Fatalf("status %d: %q", res.StatusCode, body)
	}
}
