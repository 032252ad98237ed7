package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type perPartAnswer struct {
	Parts []struct {
		Index    int               `json:"index"`
		Field    string            `json:"field"`
		Filename *string           `json:"filename"`
		Size     int64             `json:"size"`
		Digests  map[string]string `json:"digests"`
		Status   int               `json:"status"`
		Response json.RawMessage   `json:"response"`
	} `json:"parts"`
}

func TestPerPartRoutesByEarlierField(t *testing.T) {
	be := newPartBackend(t, http.StatusOK)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	to %s/asr/{http.stream_proxy.form.model}
	mode per_part
	hash sha256 md5
	header_up X-Part {http.stream_proxy.part.index}
}`, be.URL))
	parts := []formPart{
		{field: "model", value: "whisper-large"},
		{field: "audio", filename: "talk.wav", contentType: "audio/wav", size: 5 << 20, seed: 1},
		{field: "model", value: "tiny"},
		{field: "audio", filename: "clip.wav", contentType: "audio/wav", size: 4099, seed: 2},
	}
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", parts, true)
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	want := expected(parts)
	wantSeen := []string{
		fmt.Sprintf("/asr/whisper-large audio talk.wav audio/wav %d %s", want[1].Size, want[1].SHA256),
		fmt.Sprintf("/asr/tiny audio clip.wav audio/wav %d %s", want[3].Size, want[3].SHA256),
	}
	if got := be.lines(); got != strings.Join(wantSeen, "\n") {
		t.Fatalf("backend saw\n%s\nwant\n%s", got, strings.Join(wantSeen, "\n"))
	}
	var a perPartAnswer
	if err := json.Unmarshal(body, &a); err != nil || len(a.Parts) != 4 {
		t.Fatalf("answer %s", body)
	}
	if p := a.Parts[1]; p.Status != 200 || p.Digests["sha256"] != want[1].SHA256 || p.Digests["md5"] == "" ||
		!strings.Contains(string(p.Response), want[1].SHA256) {
		t.Errorf("part 1 in the answer: %+v %s", p, p.Response)
	}
}

func TestPerPartBackendErrorStopsUpload(t *testing.T) {
	be := newPartBackend(t, http.StatusUnprocessableEntity)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	mode per_part
}`, be.URL))
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", sampleForm(1<<20), false)
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	if e := decodeError(t, body); e.Error.Code != "backend_rejected" || e.Error.Part == nil || e.Error.Part.Field != "audio" {
		t.Errorf("error %s", body)
	}
	if n := len(be.requests()); n != 1 {
		t.Errorf("the backend got %d parts after refusing the first", n)
	}
}

// filesUnder lists every file below dir, hidden temporary files included.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

type storeAnswer struct {
	Parts []struct {
		Field    string            `json:"field"`
		Filename *string           `json:"filename"`
		Path     string            `json:"path"`
		Size     int64             `json:"size"`
		Digests  map[string]string `json:"digests"`
	} `json:"parts"`
	Fields map[string]string `json:"fields"`
}

// integration/README.md, row 21: hostile filenames are metadata only; files get
// generated names inside the store.
func TestStoreHostileFilenames(t *testing.T) {
	outer := t.TempDir()
	dir := filepath.Join(outer, "store")
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	store %s
	hash sha256
}`, dir))
	names := []string{"../x", `..\x`, "/etc/passwd", strings.Repeat("n", 300), "CON", "../../../../tmp/evil", "名前.wav"}
	var parts []formPart
	for i, n := range names {
		parts = append(parts, formPart{field: fmt.Sprintf("f%d", i), filename: n, size: int64(100 + i), seed: uint64(i)})
	}
	c := newClient(t)
	res, body := postForm(t, c, gatewayURL+"/upload", parts, false)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	var a storeAnswer
	if err := json.Unmarshal(body, &a); err != nil || len(a.Parts) != len(names) {
		t.Fatalf("answer %s", body)
	}
	want := expected(parts)
	for i, p := range a.Parts {
		if p.Filename == nil || *p.Filename != names[i] {
			t.Errorf("part %d: original name %q, want %q", i, *p.Filename, names[i])
		}
		full := filepath.Join(dir, p.Path)
		if !strings.HasPrefix(full, dir+string(filepath.Separator)) || strings.Contains(p.Path, "..") {
			t.Errorf("part %d stored at %q", i, p.Path)
		}
		data, err := os.ReadFile(full)
		sum := sha256.Sum256(data)
		if err != nil || hex.EncodeToString(sum[:]) != want[i].SHA256 || p.Digests["sha256"] != want[i].SHA256 {
			t.Errorf("part %d: stored data differs (%v)", i, err)
		}
	}
	// filename* (RFC 2231) is decoded as metadata, never a path; it is also
	// the only way a NUL reaches a filename (a raw one is a malformed header).
	for raw, want := range map[string]string{
		"%2e%2e%2fescape": `"filename":"../escape"`,
		"a%00b":           `"filename":"a\u0000b"`,
	} {
		req, _ := http.NewRequest(http.MethodPost, gatewayURL+"/upload", strings.NewReader(
			"--b\r\nContent-Disposition: form-data; name=\"f\"; filename*=UTF-8''"+raw+"\r\n\r\ndata\r\n--b--\r\n"))
		req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
		res2, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res2.Body)
		res2.Body.Close()
		if res2.StatusCode != 201 || !strings.Contains(string(b), want) {
			t.Errorf("filename*=UTF-8''%s: %d %s", raw, res2.StatusCode, b)
		}
	}
	if _, err := os.Stat(filepath.Join(outer, "escape")); err == nil {
		t.Error("filename* escaped the store")
	}
	if got := filesUnder(t, outer); len(got) != len(names)+2 {
		t.Errorf("files under the test dir: %v", got)
	}
}

// A client that vanishes mid-part leaves nothing in the store.
func TestStoreClientAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	store %s
}`, dir))
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: localhost:%d\r\nContent-Type: multipart/form-data; boundary=abc\r\nContent-Length: 100000000\r\n\r\n", httpPort)
	fmt.Fprintf(conn, "--abc\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n%s", strings.Repeat("x", 1<<20))
	waitFor(t, "the temporary file", func() bool { return len(filesUnder(t, dir)) > 0 })
	conn.(*net.TCPConn).SetLinger(0)
	conn.Close()
	inFlight(t, 0) // the upload's handler has returned
	if left := filesUnder(t, dir); len(left) > 0 {
		t.Fatalf("left in the store: %v", left)
	}
}

// integration/README.md, row 4 in store mode: a chunked body that crosses
// max_body_size in the middle of a file is refused, and the file part already
// on disk goes.
func TestStoreBodyOverLimitLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	store %s
	max_body_size 2MiB
}`, dir))
	parts := []formPart{
		{field: "first", filename: "first.bin", size: 1 << 20, seed: 1},
		{field: "second", filename: "second.bin", size: 4 << 20, seed: 2},
	}
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", parts, true)
	expectRefusal(t, res, body, http.StatusRequestEntityTooLarge, "body_too_large", "max_body_size")
	if left := filesUnder(t, dir); len(left) > 0 {
		t.Fatalf("left in the store: %v", left)
	}
}

// With a backend, it gets metadata; when it answers an error the files go.
func TestStoreWithBackend(t *testing.T) {
	dir := t.TempDir()
	be := newMetadataBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	mode store
	store %s {
		layout flat
		file_mode 0600
	}
	hash sha256
}`, be.URL, dir))
	parts := sampleForm(3 << 20)
	want := expected(parts)
	res, body := postForm(t, newClient(t), gatewayURL+"/upload", parts, false)
	if res.StatusCode != 200 || string(body) != `{"ok":true}` {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	got := be.values()
	if got["model"][0] != "whisper-large" || got["audio.name"][0] != "talk.wav" || got["audio.content_type"][0] != "audio/wav" ||
		got["audio.size"][0] != fmt.Sprint(want[2].Size) || got["audio.sha256"][0] != want[2].SHA256 {
		t.Fatalf("backend got %v", got)
	}
	info, err := os.Stat(got["audio.path"][0])
	if err != nil || info.Size() != want[2].Size || info.Mode().Perm() != 0o600 || filepath.Dir(got["audio.path"][0]) != dir {
		t.Fatalf("stored file %v %v", info, err)
	}

	be.setStatus(http.StatusUnauthorized)
	before := len(filesUnder(t, dir))
	res, _ = postForm(t, newClient(t), gatewayURL+"/upload", parts, true)
	if res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want the backend's 401", res.StatusCode)
	}
	if after := len(filesUnder(t, dir)); after != before {
		t.Fatalf("files after a refused upload: %d, before %d", after, before)
	}
}
