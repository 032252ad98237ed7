package streamproxy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/streamproxy/caddy-stream-proxy/store/filestore"
)

const twoFiles = "--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nbase\r\n" +
	"--B\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"../../etc/passwd\"\r\nContent-Type: audio/wav\r\n\r\nRIFF-data\r\n" +
	"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\nPNG-data\r\n" +
	"--B--\r\n"

func formRequest(body string) *http.Request {
	r := prepared(httptest.NewRequest(http.MethodPost, "/upload", strings.NewReader(body)))
	r.Header.Set("Content-Type", "multipart/form-data; boundary=B")
	return r
}

func hexSum(s string) string { sum := sha256.Sum256([]byte(s)); return hex.EncodeToString(sum[:]) }

func TestServePerPart(t *testing.T) {
	var paths []string
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		paths = append(paths, r.URL.Path)
		if r.Header.Get("X-Stream-Proxy-Field") == "image" {
			w.Write([]byte("not json"))
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"got": string(b), "type": r.Header.Get("Content-Type"),
			"index": r.Header.Get("X-Stream-Proxy-Part-Index"), "name": r.Header.Get("X-Stream-Proxy-Filename")})
	}))
	t.Cleanup(be.Close)
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL + "/{http.stream_proxy.form.model}/{http.stream_proxy.part.field}"), Mode: ModePerPart, Hash: []string{"sha256"}})
	w := serve(h, formRequest(twoFiles), failNext)
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if strings.Join(paths, " ") != "/base/audio /base/image" {
		t.Errorf("backend paths %q: routing by an earlier field failed", paths)
	}
	var got struct{ Parts []partResult }
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || len(got.Parts) != 3 {
		t.Fatalf("answer %s", w.Body)
	}
	audio := got.Parts[1]
	if audio.Status != 200 || audio.Size != 9 || audio.Digests["sha256"] != hexSum("RIFF-data") ||
		!strings.Contains(string(audio.Response), `"got":"RIFF-data"`) || !strings.Contains(string(audio.Response), `"type":"audio/wav"`) ||
		!strings.Contains(string(audio.Response), `"index":"1"`) || !strings.Contains(string(audio.Response), `"name":"..%2F..%2Fetc%2Fpasswd"`) {
		t.Errorf("audio part %+v %s", audio, audio.Response)
	}
	if string(got.Parts[2].Response) != `"not json"` {
		t.Errorf("a non-JSON answer must be kept as a string: %s", got.Parts[2].Response)
	}
}

func TestServePerPartBackendError(t *testing.T) {
	calls := 0
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusUnprocessableEntity)
		w.Write([]byte(`{"error":"bad audio"}`))
	}))
	t.Cleanup(be.Close)
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL), Mode: ModePerPart})
	w := serve(h, formRequest(twoFiles), failNext)
	var got struct {
		Error uploadError
		Parts []partResult
	}
	_ = json.Unmarshal(w.Body.Bytes(), &got)
	if w.Code != 422 || calls != 1 || got.Error.Code != CodeBackendRejected || len(got.Parts) != 2 || got.Parts[1].Status != 422 {
		t.Fatalf("status %d calls %d: %s", w.Code, calls, w.Body)
	}
}

func storedFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dir, p)
			files[rel] = string(b)
		}
		return nil
	})
	return files
}

func TestServeStoreWithoutBackend(t *testing.T) {
	dir := t.TempDir()
	h := provision(t, &Handler{Mode: ModeStore, StoreRaw: fileStoreJSON(&filestore.FileStore{Root: dir, Layout: "flat"}), Hash: []string{"md5"}})
	w := serve(h, formRequest(twoFiles), failNext)
	if w.Code != http.StatusCreated {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var got struct {
		Parts  []partResult
		Fields map[string]string
	}
	_ = json.Unmarshal(w.Body.Bytes(), &got)
	files := storedFiles(t, dir)
	if len(files) != 2 || got.Fields["model"] != "base" || len(got.Parts) != 3 {
		t.Fatalf("stored %v, answer %s", files, w.Body)
	}
	a := got.Parts[1]
	if *a.Filename != "../../etc/passwd" || files[a.Path] != "RIFF-data" || strings.Contains(a.Path, "passwd") || a.Digests["md5"] == "" {
		t.Errorf("audio %+v stored as %v", a, files)
	}
	info, err := os.Stat(filepath.Join(dir, a.Path))
	if err != nil || info.Mode().Perm() != 0o640 {
		t.Errorf("file mode %v, %v; want 0640", info.Mode(), err)
	}
}

func TestServeStoreLeavesNothingOnError(t *testing.T) {
	dir := t.TempDir()
	h := provision(t, &Handler{Mode: ModeStore, StoreRaw: fileStoreJSON(&filestore.FileStore{Root: dir}), MaxPartSize: 8})
	w := serve(h, formRequest(twoFiles), failNext) // the second file is 9 bytes
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if files := storedFiles(t, dir); len(files) != 0 {
		t.Fatalf("left on disk: %v", files)
	}
	h = provision(t, &Handler{Mode: ModeStore, StoreRaw: fileStoreJSON(&filestore.FileStore{Root: dir})})
	w = serve(h, formRequest(strings.TrimSuffix(twoFiles, "--B--\r\n")), failNext)
	if w.Code != http.StatusBadRequest || len(storedFiles(t, dir)) != 0 {
		t.Fatalf("truncated form: status %d, left %v", w.Code, storedFiles(t, dir))
	}
}

func TestServeStoreWithBackend(t *testing.T) {
	dir := t.TempDir()
	status := http.StatusOK
	var fields map[string][]string
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseMultipartForm(1 << 20); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fields = r.MultipartForm.Value
		w.WriteHeader(status)
	}))
	t.Cleanup(be.Close)
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL), Mode: ModeStore, StoreRaw: fileStoreJSON(&filestore.FileStore{Root: dir}), Hash: []string{"sha256"}})
	w := serve(h, formRequest(twoFiles), failNext)
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	path := fields["audio.path"]
	if len(path) != 1 || !strings.HasPrefix(path[0], dir) || fields["audio.name"][0] != "../../etc/passwd" ||
		fields["audio.size"][0] != "9" || fields["audio.sha256"][0] != hexSum("RIFF-data") || fields["model"][0] != "base" {
		t.Fatalf("backend fields %v", fields)
	}
	if b, err := os.ReadFile(path[0]); err != nil || string(b) != "RIFF-data" {
		t.Fatalf("stored file: %q %v", b, err)
	}

	status = http.StatusForbidden // the backend refuses: the files go
	w = serve(h, formRequest(twoFiles), failNext)
	if w.Code != http.StatusForbidden {
		t.Fatalf("status %d", w.Code)
	}
	if got := storedFiles(t, dir); len(got) != 2 { // only the first upload's
		t.Fatalf("after a refusal the store holds %v", got)
	}
}

func TestForwardHashAndAllowLists(t *testing.T) {
	be := echoBackend(t)
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL), Hash: []string{"sha256"}})
	w := serve(h, formRequest(twoFiles), failNext)
	if w.Code != 200 || !strings.Contains(w.Body.String(), "audio.sha256||") {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}

	h = provision(t, &Handler{ProxyRaw: proxyTo(be.URL), AllowFields: []string{"model", "audio"}})
	if w := serve(h, formRequest(twoFiles), failNext); w.Code != 400 || !strings.Contains(w.Body.String(), CodeFieldNotAllowed) {
		t.Errorf("allow_fields: %d %s", w.Code, w.Body)
	}
	h = provision(t, &Handler{ProxyRaw: proxyTo(be.URL), AllowTypes: []string{"audio/*"}})
	if w := serve(h, formRequest(twoFiles), failNext); w.Code != 415 || !strings.Contains(w.Body.String(), `"field":"image"`) {
		t.Errorf("allow_types: %d %s", w.Code, w.Body)
	}
}

func TestDeclaredDigests(t *testing.T) {
	be := echoBackend(t)
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL)})
	part := func(header string) string {
		return "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n" + header + "\r\n\r\nhello\r\n--B--\r\n"
	}
	for _, tc := range []struct {
		header string
		status int
	}{
		{"Content-MD5: XUFAKrxLKna5cZ2REBfFkg==", 200}, // md5("hello")
		{"Content-MD5: AAAAAAAAAAAAAAAAAAAAAA==", 400},
		{"Content-Digest: sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:", 200},
		{"Content-Digest: sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:, unixsum=:1:", 400},
		{"Content-Digest: crc64=:AAAA:", 200}, // unknown algorithms are ignored
		{"Content-MD5: not base64", 400},
	} {
		w := serve(h, formRequest(part(tc.header)), failNext)
		if w.Code != tc.status {
			t.Errorf("%s: status %d, want %d: %s", tc.header, w.Code, tc.status, w.Body)
		}
		if tc.status == 400 && !strings.Contains(w.Body.String(), "digest") && !strings.Contains(w.Body.String(), "Content-MD5") {
			t.Errorf("%s: %s", tc.header, w.Body)
		}
	}
}

// fileStoreJSON is s as the handler's store module.
func fileStoreJSON(s *filestore.FileStore) json.RawMessage {
	return caddyconfig.JSONModuleObject(s, "module", "file", nil)
}
