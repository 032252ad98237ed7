package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// What real clients send, byte for byte, and what the backend must get from
// it (integration/README.md, rows 31 to 33).

// chromiumEmptyInput is what Chromium sends for a form with a text field, a
// picked file and an optional file input left empty.
const chromiumBoundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"

var chromiumEmptyInput = "--" + chromiumBoundary + "\r\n" +
	"Content-Disposition: form-data; name=\"title\"\r\n\r\n" +
	"holiday\r\n" +
	"--" + chromiumBoundary + "\r\n" +
	"Content-Disposition: form-data; name=\"photo\"; filename=\"beach.png\"\r\n" +
	"Content-Type: image/png\r\n\r\n" +
	"\x89PNG\r\n\x1a\n-pixels-\r\n" +
	"--" + chromiumBoundary + "\r\n" +
	"Content-Disposition: form-data; name=\"attachment\"; filename=\"\"\r\n" +
	"Content-Type: application/octet-stream\r\n\r\n" +
	"\r\n" +
	"--" + chromiumBoundary + "--\r\n"

// rawPartHeaders parses a recorded forward body and returns each part's
// header and data.
func rawPartHeaders(t *testing.T, r recorded) ([]map[string][]string, [][]byte) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("backend: %v", r.err)
	}
	parts, err := r.parts()
	if err != nil {
		t.Fatalf("forwarded body: %v", err)
	}
	var hs []map[string][]string
	var data [][]byte
	for _, p := range parts {
		hs = append(hs, p.Header)
		data = append(data, p.Data)
	}
	return hs, data
}

// integration/README.md, row 31: an optional file input left empty is not a
// file: no allow_types check, no digest field; forward mode passes it on as the
// browser sent it.
func TestEdgeEmptyFileInputForward(t *testing.T) {
	rec := newRecorder(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	allow_types image/*
	hash sha256
}`, rec.URL))
	res, out := postRaw(t, newClient(t), "multipart/form-data; boundary="+chromiumBoundary, []byte(chromiumEmptyInput), false)
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, out)
	}
	hs, data := rawPartHeaders(t, rec.wait(1)[0])
	var names []string
	for _, h := range hs {
		_, params, _ := mime.ParseMediaType(h["Content-Disposition"][0])
		names = append(names, params["name"])
	}
	if got := strings.Join(names, ","); got != "title,photo,photo.sha256,attachment" {
		t.Fatalf("forwarded parts %s, want title,photo,photo.sha256,attachment", got)
	}
	png := sha256.Sum256([]byte("\x89PNG\r\n\x1a\n-pixels-"))
	if string(data[2]) != hex.EncodeToString(png[:]) {
		t.Errorf("photo.sha256 %q", data[2])
	}
	empty := hs[3]
	if cd := empty["Content-Disposition"][0]; cd != `form-data; name="attachment"; filename=""` {
		t.Errorf("empty input forwarded as %q", cd)
	}
	if ct := empty["Content-Type"]; len(ct) != 1 || ct[0] != "application/octet-stream" {
		t.Errorf("empty input's Content-Type %q", ct)
	}
	if len(data[3]) != 0 {
		t.Errorf("empty input has %d bytes", len(data[3]))
	}

	// Go's ReadForm, as a Go backend reads it: a value, not a file.
	mr := multipart.NewReader(bytes.NewReader(rec.wait(1)[0].body), strings.TrimPrefix(rec.wait(1)[0].contentType, "multipart/form-data; boundary="))
	form, err := mr.ReadForm(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer form.RemoveAll()
	if _, ok := form.File["attachment"]; ok || len(form.Value["attachment"]) != 1 {
		t.Errorf("ReadForm: files %v values %v", form.File, form.Value)
	}
}

// integration/README.md, row 31 in per_part and store mode: the empty input is
// neither sent to a backend nor stored.
func TestEdgeEmptyFileInputPerPartAndStore(t *testing.T) {
	pp := newPartBackend(t, http.StatusOK)
	dir := t.TempDir()
	startGateway(t, fmt.Sprintf(`stream_proxy /pp* {
	to %s
	mode per_part
	allow_types image/*
	hash sha256
}
stream_proxy /store* {
	mode store
	store %s
	allow_types image/*
}`, pp.URL, dir))
	c := newClient(t)
	ct := "multipart/form-data; boundary=" + chromiumBoundary

	res, out := postRawTo(t, c, gatewayURL+"/pp", ct, []byte(chromiumEmptyInput))
	if res.StatusCode != 200 {
		t.Fatalf("per_part: status %d: %s", res.StatusCode, out)
	}
	if got := pp.requests(); len(got) != 1 || got[0].disposition != `form-data; name="photo"; filename="beach.png"` {
		t.Fatalf("per_part backend got %+v, want the photo alone", got)
	}
	var a perPartAnswer
	if err := json.Unmarshal(out, &a); err != nil || len(a.Parts) != 3 || a.Parts[2].Field != "attachment" ||
		a.Parts[2].Filename != nil || a.Parts[2].Status != 0 || a.Parts[2].Digests != nil {
		t.Errorf("per_part answer %s", out)
	}

	res, out = postRawTo(t, c, gatewayURL+"/store", ct, []byte(chromiumEmptyInput))
	if res.StatusCode != 201 {
		t.Fatalf("store: status %d: %s", res.StatusCode, out)
	}
	var st storeAnswer
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	var stored []string
	for _, p := range st.Parts {
		if p.Path != "" {
			stored = append(stored, p.Field)
		}
	}
	if strings.Join(stored, ",") != "photo" {
		t.Errorf("store answer %s: stored %v, want photo alone", out, stored)
	}
	if files := filesUnder(t, dir); len(files) != 1 {
		t.Errorf("files in the store: %v", files)
	}
}

// apacheBoundary and apacheForm are what Apache HttpClient 4's
// MultipartEntityBuilder (STRICT mode, its default) sends for addTextBody and
// addBinaryBody: a Content-Type and a Content-Transfer-Encoding on every part.
const apacheBoundary = "hDw1m8ZrqCzWbgEJcTP2VTe3EMbF5Ww-fBn"

func apacheForm(fileCTE, data string) string {
	return "--" + apacheBoundary + "\r\n" +
		"Content-Disposition: form-data; name=\"comment\"\r\n" +
		"Content-Type: text/plain; charset=ISO-8859-1\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n\r\n" +
		"nightly build\r\n" +
		"--" + apacheBoundary + "\r\n" +
		"Content-Disposition: form-data; name=\"file\"; filename=\"build.tar.gz\"\r\n" +
		"Content-Type: application/octet-stream\r\n" +
		"Content-Transfer-Encoding: " + fileCTE + "\r\n\r\n" +
		data + "\r\n" +
		"--" + apacheBoundary + "--\r\n"
}

// integration/README.md, row 32: binary, 8bit and 7bit, in any case, are
// accepted and forwarded unchanged, in forward and per_part mode.
func TestEdgeIdentityTransferEncoding(t *testing.T) {
	rec := newRecorder(t)
	pp := newPartBackend(t, http.StatusOK)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s
stream_proxy /pp* {
	to %s
	mode per_part
}`, rec.URL, pp.URL))
	c := newClient(t)
	data := "\x1f\x8b\x08\x00" + strings.Repeat("\x00\xff=3D\r\n", 5000)
	sum := sha256.Sum256([]byte(data))
	for i, cte := range []string{"binary", "8bit", "7bit", "BINARY", "7Bit"} {
		t.Run(cte, func(t *testing.T) {
			body := []byte(apacheForm(cte, data))
			res, out := postRaw(t, c, "multipart/form-data; boundary="+apacheBoundary, body, i%2 == 1)
			if res.StatusCode != 200 {
				t.Fatalf("status %d: %s", res.StatusCode, out)
			}
			hs, got := rawPartHeaders(t, rec.wait(i + 1)[i])
			if len(hs) != 2 || string(got[0]) != "nightly build" || string(got[1]) != data {
				t.Fatalf("backend got %d parts", len(hs))
			}
			if v := hs[0]["Content-Transfer-Encoding"]; len(v) != 1 || v[0] != "8bit" {
				t.Errorf("text part's Content-Transfer-Encoding %q", v)
			}
			if v := hs[1]["Content-Transfer-Encoding"]; len(v) != 1 || v[0] != cte {
				t.Errorf("file part's Content-Transfer-Encoding %q, want %q", v, cte)
			}
			if v := hs[0]["Content-Type"]; len(v) != 1 || v[0] != "text/plain; charset=ISO-8859-1" {
				t.Errorf("text part's Content-Type %q", v)
			}

			res, out = postRawTo(t, c, gatewayURL+"/pp", "multipart/form-data; boundary="+apacheBoundary, body)
			if res.StatusCode != 200 {
				t.Fatalf("per_part: status %d: %s", res.StatusCode, out)
			}
			reqs := pp.requests()
			last := reqs[len(reqs)-1]
			if len(reqs) != i+1 || last.sha256 != hex.EncodeToString(sum[:]) || last.filename != "build.tar.gz" {
				t.Errorf("per_part backend got %+v", last)
			}
		})
	}
}

// dotnetForm is what .NET's MultipartFormDataContent sends for a file added
// with a name and a file name: an unquoted name, filename and filename* on
// the same part, under a quoted GUID boundary. filename is the one given.
const dotnetBoundary = "5f0ac9b7-3c5e-4b8d-9a57-0f8d1f4e2a61"

func dotnetForm(filenameParams string) string {
	return "--" + dotnetBoundary + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Disposition: form-data; name=\"file\"; " + filenameParams + "\r\n\r\n" +
		"hello from .NET\r\n" +
		"--" + dotnetBoundary + "--\r\n"
}

// integration/README.md, row 33: the backend gets the filename parameters the
// client sent (both, when both came; raw), in forward and per_part mode; store
// mode keeps the name Go reads as metadata and never in a path; duplicates are
// still 400.
func TestEdgeFilenameStar(t *testing.T) {
	rec := newRecorder(t)
	pp := newPartBackend(t, http.StatusOK)
	dir := t.TempDir()
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s
stream_proxy /pp* {
	to %s
	mode per_part
}
stream_proxy /store* {
	mode store
	store %s
}`, rec.URL, pp.URL, dir))
	c := newClient(t)
	ct := `multipart/form-data; boundary="` + dotnetBoundary + `"`
	for i, tc := range []struct {
		name, params string
		goReads      string // the filename Go's mime reads from what was sent; "" if it reads none
		kept         string // the filename store mode keeps as metadata
	}{
		// Go's mime refuses an unquoted UTF-8 token, with the gateway and without.
		{".NET, raw UTF-8", `filename=näme.txt; filename*=utf-8''n%C3%A4me.txt`, "", "näme.txt"},
		{".NET, encoded word", `filename="=?utf-8?B?bsOkbWUudHh0?="; filename*=utf-8''n%C3%A4me.txt`, "näme.txt", "näme.txt"},
		{"filename* alone", `filename*=UTF-8''r%C3%A9sum%C3%A9.pdf`, "résumé.pdf", "résumé.pdf"},
		{"filename* first", `filename*=utf-8''%E2%9C%93.txt; filename="x.txt"`, "✓.txt", "✓.txt"},
		{"continuations", `filename*0*=utf-8''a%20; filename*1="b;c.txt"`, "a b;c.txt", "a b;c.txt"},
		{"filename* with a path", `filename*=UTF-8''%2e%2e%2f%2e%2e%2fescape.txt`, "../../escape.txt", "../../escape.txt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(dotnetForm(tc.params))
			res, out := postRaw(t, c, ct, body, false)
			if res.StatusCode != 200 {
				t.Fatalf("status %d: %s", res.StatusCode, out)
			}
			hs, data := rawPartHeaders(t, rec.wait(i + 1)[i])
			if len(hs) != 1 || string(data[0]) != "hello from .NET" {
				t.Fatalf("backend got %d parts", len(hs))
			}
			wantCD := `form-data; name="file"; ` + tc.params
			if cd := hs[0]["Content-Disposition"][0]; cd != wantCD {
				t.Errorf("forwarded Content-Disposition\n%s\nwant\n%s", cd, wantCD)
			}
			_, params, err := mime.ParseMediaType(hs[0]["Content-Disposition"][0])
			if _, _, sentErr := mime.ParseMediaType("form-data; name=file; " + tc.params); (err == nil) != (sentErr == nil) || params["filename"] != tc.goReads {
				t.Errorf("Go reads filename %q (%v), want %q", params["filename"], err, tc.goReads)
			}

			res, out = postRawTo(t, c, gatewayURL+"/pp", ct, body)
			if res.StatusCode != 200 {
				t.Fatalf("per_part: status %d: %s", res.StatusCode, out)
			}
			reqs := pp.requests()
			if last := reqs[len(reqs)-1]; len(reqs) != i+1 || last.disposition != wantCD || last.field != "file" {
				t.Errorf("per_part backend got %+v, want Content-Disposition %q", last, wantCD)
			}

			res, out = postRawTo(t, c, gatewayURL+"/store", ct, body)
			var st storeAnswer
			if res.StatusCode != 201 || json.Unmarshal(out, &st) != nil || len(st.Parts) != 1 {
				t.Fatalf("store: status %d: %s", res.StatusCode, out)
			}
			p := st.Parts[0]
			if p.Filename == nil || *p.Filename != tc.kept {
				t.Errorf("store: filename %v, want %q", p.Filename, tc.kept)
			}
			if base := filepath.Base(p.Path); len(base) != 32 || strings.ContainsAny(p.Path, ".\\") {
				t.Errorf("store: path %q is not a generated name", p.Path)
			}
			if stored, err := os.ReadFile(filepath.Join(dir, p.Path)); err != nil || string(stored) != "hello from .NET" {
				t.Errorf("store: %q, %v", stored, err)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(dir), "escape.txt")); err == nil {
		t.Error("a filename* left the store")
	}

	// integration/README.md, row 9 still holds: a parameter given twice with
	// two values is refused.
	for _, dup := range []string{
		`filename="a.txt"; filename="b.txt"`,
		`filename*=utf-8''a.txt; FILENAME*=utf-8''b.txt`,
	} {
		res, out := postRaw(t, c, ct, []byte(dotnetForm(dup)), false)
		expectRefusal(t, res, out, 400, "malformed_multipart", "")
	}
}
