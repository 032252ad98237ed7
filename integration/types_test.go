package integration

// verify_types against real media files and the attacks that hide behind an
// innocent declared type: integration/README.md, rows 56 and 57.

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mediaFiles are the real files under testdata/types (ffmpeg and heif-enc
// made them) and the type each is declared as.
var mediaFiles = []struct{ name, declared, detected string }{
	{"audio.wav", "audio/wav", "audio/wav"},
	{"audio.flac", "audio/flac", "audio/flac"},
	{"audio.mp3", "audio/mpeg", "audio/mpeg"},
	{"audio.ogg", "audio/ogg", "audio/ogg"},
	{"audio.webm", "audio/webm", "video/webm"},
	{"audio.m4a", "audio/mp4", "audio/x-m4a"},
	{"image.png", "image/png", "image/png"},
	{"image.jpg", "image/jpeg", "image/jpeg"},
	{"image.gif", "image/gif", "image/gif"},
	{"image.webp", "image/webp", "image/webp"},
	{"image.heic", "image/heic", "image/heic"},
	{"image.avif", "image/avif", "image/avif"},
	{"image.tiff", "image/tiff", "image/tiff"},
	{"video.mp4", "video/mp4", "video/mp4"},
	{"video.webm", "video/webm", "video/webm"},
	{"video.mov", "video/quicktime", "video/quicktime"},
	{"video.mkv", "video/x-matroska", "video/matroska"},
}

// typedPart is a file part with given bytes.
type typedPart struct {
	field, filename, contentType string
	data                         []byte
	detected                     string // what verify_types should find
}

// mediaForm is every media file twice, as itself and as
// application/octet-stream, after a text field.
func mediaForm(t *testing.T) []typedPart {
	t.Helper()
	var parts []typedPart
	for i, m := range mediaFiles {
		b, err := os.ReadFile(filepath.Join("testdata", "types", m.name))
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts,
			typedPart{fmt.Sprintf("f%d", 2*i), m.name, m.declared, b, m.detected},
			typedPart{fmt.Sprintf("f%d", 2*i+1), m.name, "application/octet-stream", b, m.detected})
	}
	return parts
}

// typedBody encodes a text field model=whisper and parts.
func typedBody(t *testing.T, parts []typedPart) ([]byte, string) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	mw.WriteField("model", "whisper")
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename=%q`, p.field, p.filename))
		h.Set("Content-Type", p.contentType)
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(p.data)
	}
	mw.Close()
	return b.Bytes(), mw.FormDataContentType()
}

// slowStart hands out its first slow bytes one byte a Read, and the rest as
// asked: a chunked body whose first KiBs come one byte a chunk (Go's client
// flushes every chunk), so that each part's prefix reaches the gateway in
// many small reads.
type slowStart struct {
	data []byte
	slow int
}

func (s *slowStart) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if s.slow > 0 {
		n = 1
		s.slow--
	}
	n = copy(p[:n], s.data)
	s.data = s.data[n:]
	return n, nil
}

// sendTyped posts the form in one of three ways: with a Content-Length, chunked,
// or chunked one byte a chunk for its first 24 KiB (the first parts' prefixes).
func sendTyped(t *testing.T, how string, body []byte, ct string) (*http.Response, []byte) {
	t.Helper()
	switch how {
	case "length":
		return postRawTo(t, newClient(t), gatewayURL+"/upload", ct, body)
	case "chunked":
		return postTo(t, newClient(t), gatewayURL+"/upload", ct, opaqueReader{bytes.NewReader(body)}, -1)
	}
	return postTo(t, newClient(t), gatewayURL+"/upload", ct, &slowStart{data: body, slow: 24 << 10}, -1)
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// integration/README.md, row 57: every common container passes, declared as
// itself or as application/octet-stream, byte-identical, in every mode; the
// detected type is in the forwarded form, the per_part headers, the JSON
// answers and the store's metadata.
func TestVerifyTypesRealMedia(t *testing.T) {
	parts := mediaForm(t)
	body, ct := typedBody(t, parts)
	const checks = `verify_types
	allow_types audio/* image/* video/*`

	t.Run("forward", func(t *testing.T) {
		rec := newRecorder(t)
		startGateway(t, fmt.Sprintf("stream_proxy /upload* %s {\n\t%s\n}", rec.URL, checks))
		for i, how := range []string{"length", "chunked", "slow"} {
			res, out := sendTyped(t, how, body, ct)
			if res.StatusCode != 200 {
				t.Fatalf("%s: status %d: %s", how, res.StatusCode, out)
			}
			got, err := rec.wait(i + 1)[i].parts()
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"model||whisper"}
			for _, p := range parts {
				want = append(want, p.field+"|"+p.contentType+"|"+sha(p.data), p.field+".detected_type||"+p.detected)
			}
			var seen []string
			for _, p := range got {
				v := string(p.Data)
				if p.HasFilename {
					v = sha(p.Data)
				}
				seen = append(seen, p.Field+"|"+p.ContentType+"|"+v)
			}
			if strings.Join(seen, "\n") != strings.Join(want, "\n") {
				t.Fatalf("%s: backend saw\n%s\nwant\n%s", how, strings.Join(seen, "\n"), strings.Join(want, "\n"))
			}
		}
	})

	t.Run("per_part", func(t *testing.T) {
		be := newPartBackend(t, http.StatusOK)
		startGateway(t, fmt.Sprintf("stream_proxy /upload* %s {\n\tmode per_part\n\t%s\n}", be.URL, checks))
		res, out := sendTyped(t, "slow", body, ct)
		if res.StatusCode != 200 {
			t.Fatalf("status %d: %s", res.StatusCode, out)
		}
		var a struct {
			Parts []struct {
				Field    string `json:"field"`
				Detected string `json:"detected_type"`
				Size     int    `json:"size"`
			} `json:"parts"`
		}
		if err := json.Unmarshal(out, &a); err != nil || len(a.Parts) != len(parts)+1 {
			t.Fatalf("answer %s", out)
		}
		seen := be.requests()
		if len(seen) != len(parts) {
			t.Fatalf("backend got %d requests, want %d", len(seen), len(parts))
		}
		for i, p := range parts {
			if s := seen[i]; s.field != p.field || s.contentType != p.contentType || s.sha256 != sha(p.data) || s.detected != p.detected {
				t.Errorf("part %s (%s): backend saw %+v", p.field, p.filename, s)
			}
			if r := a.Parts[i+1]; r.Field != p.field || r.Detected != p.detected || r.Size != len(p.data) {
				t.Errorf("part %s (%s) in the answer: %+v", p.field, p.filename, r)
			}
		}
	})

	t.Run("store", func(t *testing.T) {
		dir := t.TempDir()
		startGateway(t, fmt.Sprintf("stream_proxy /upload* {\n\tmode store\n\tstore %s\n\t%s\n}", dir, checks))
		res, out := sendTyped(t, "slow", body, ct)
		if res.StatusCode != http.StatusCreated {
			t.Fatalf("status %d: %s", res.StatusCode, out)
		}
		var a struct {
			Parts []struct {
				Field    string `json:"field"`
				Path     string `json:"path"`
				Detected string `json:"detected_type"`
			} `json:"parts"`
		}
		if err := json.Unmarshal(out, &a); err != nil || len(a.Parts) != len(parts)+1 {
			t.Fatalf("answer %s", out)
		}
		for i, p := range parts {
			r := a.Parts[i+1]
			b, err := os.ReadFile(filepath.Join(dir, r.Path))
			if err != nil || sha(b) != sha(p.data) || r.Detected != p.detected {
				t.Errorf("part %s (%s): stored %d bytes (%v), detected %q, want %q", p.field, p.filename, len(b), err, r.Detected, p.detected)
			}
		}
	})

	t.Run("store with backend", func(t *testing.T) {
		dir := t.TempDir()
		be := newMetadataBackend(t)
		startGateway(t, fmt.Sprintf("stream_proxy /upload* %s {\n\tmode store\n\tstore %s\n\t%s\n}", be.URL, dir, checks))
		res, out := sendTyped(t, "chunked", body, ct)
		if res.StatusCode != 200 {
			t.Fatalf("status %d: %s", res.StatusCode, out)
		}
		got := be.values()
		for _, p := range parts {
			if v := got[p.field+".detected_type"]; len(v) != 1 || v[0] != p.detected {
				t.Errorf("%s.detected_type: %q, want %q", p.field, v, p.detected)
			}
		}
	})

	t.Run("store s3", func(t *testing.T) {
		s := startS3(t)
		startGateway(t, fmt.Sprintf("stream_proxy /upload* {\n\tmode store\n\t%s\n\t%s\n}", s.site(t, s.endpoint, ""), checks))
		few := []typedPart{parts[0], parts[21], parts[30]} // wav, heic as octet-stream, mov
		b, ct := typedBody(t, few)
		res, out := sendTyped(t, "slow", b, ct)
		if res.StatusCode != http.StatusCreated {
			t.Fatalf("status %d: %s", res.StatusCode, out)
		}
		var a struct {
			Parts []struct {
				Key      string `json:"key"`
				Detected string `json:"detected_type"`
			} `json:"parts"`
		}
		if err := json.Unmarshal(out, &a); err != nil || len(a.Parts) != len(few)+1 {
			t.Fatalf("answer %s", out)
		}
		for i, p := range few {
			r := a.Parts[i+1]
			sum, contentType, meta := s.object(t, r.Key)
			if sum != sha(p.data) || contentType != p.contentType || meta["detected-type"] != p.detected || r.Detected != p.detected {
				t.Errorf("%s (%s): object %s %s %v, answer %q; want detected %q", p.field, p.filename, sum, contentType, meta, r.Detected, p.detected)
			}
		}
	})
}

// hostileParts are the attacks of the issue: a file whose bytes are not what
// its declared type says.
func hostileParts(t *testing.T) []typedPart {
	var z bytes.Buffer
	zw := zip.NewWriter(&z)
	w, _ := zw.Create("x.txt")
	io.WriteString(w, strings.Repeat("zip ", 100))
	zw.Close()
	return []typedPart{
		{"video", "clip.mp4", "video/mp4", []byte("#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10,\nhttp://169.254.169.254/latest/meta-data/\n#EXT-X-ENDLIST\n"), "application/vnd.apple.mpegurl"},
		{"audio", "talk.wav", "audio/wav", []byte(strings.Repeat("just some plain words\n", 300)), "text/plain; charset=utf-8"},
		{"image", "a.png", "image/png", z.Bytes(), "application/zip"},
		{"image", "b.png", "image/png", []byte("<!DOCTYPE html><html><body><script>fetch('/x')</script></body></html>"), "text/html; charset=utf-8"},
		{"image", "c.png", "image/png", []byte(`<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>`), "image/svg+xml"},
	}
}

// typeRefusal is the JSON of a type_mismatch refusal.
type typeRefusal struct {
	Error struct {
		Status   int    `json:"status"`
		Code     string `json:"code"`
		Declared string `json:"declared_type"`
		Detected string `json:"detected_type"`
		Part     struct {
			Index    int    `json:"index"`
			Field    string `json:"field"`
			Filename string `json:"filename"`
		} `json:"part"`
	} `json:"error"`
}

func expectMismatch(t *testing.T, res *http.Response, out []byte, p typedPart, index int) {
	t.Helper()
	var e typeRefusal
	if res.StatusCode != http.StatusUnsupportedMediaType || json.Unmarshal(out, &e) != nil || e.Error.Code != "type_mismatch" ||
		e.Error.Declared != p.contentType || e.Error.Detected != p.detected || e.Error.Part.Index != index ||
		e.Error.Part.Field != p.field || e.Error.Part.Filename != p.filename {
		t.Fatalf("%s: status %d %s, want 415 type_mismatch naming part %d, %s against %s", p.filename, res.StatusCode, out, index, p.contentType, p.detected)
	}
}

// integration/README.md, row 56: an HLS playlist declared video/mp4, text
// declared audio/wav, a zip, HTML or SVG declared image/png are refused 415
// before any of the part reaches a backend or a store, in every mode; the
// backend never sees a complete request, nothing is stored. Each comes after
// a real WAV, so that the backend request (forward) or the store has begun.
func TestVerifyTypesRefusals(t *testing.T) {
	wav, err := os.ReadFile(filepath.Join("testdata", "types", "audio.wav"))
	if err != nil {
		t.Fatal(err)
	}
	good := typedPart{"first", "ok.wav", "audio/wav", wav, "audio/wav"}
	const checks = `verify_types
	allow_types audio/* image/* video/*`
	forms := func(t *testing.T, each func(p typedPart, body []byte, ct string)) {
		for _, p := range hostileParts(t) {
			body, ct := typedBody(t, []typedPart{good, p})
			each(p, body, ct)
		}
	}

	t.Run("forward", func(t *testing.T) {
		be := newBackend(t)
		startGateway(t, fmt.Sprintf("stream_proxy /upload* %s {\n\t%s\n}", be.URL, checks))
		n := 0
		forms(t, func(p typedPart, body []byte, ct string) {
			res, out := sendTyped(t, "slow", body, ct)
			expectMismatch(t, res, out, p, 2)
			n++
			got := be.waitRequests(t, n)
			if len(got) != n || got[n-1].Err == nil {
				t.Fatalf("backend saw %d requests, the last ending cleanly with %+v; want it aborted", len(got), got[len(got)-1].Parts)
			}
		})
	})

	t.Run("per_part", func(t *testing.T) {
		be := newPartBackend(t, http.StatusOK)
		startGateway(t, fmt.Sprintf("stream_proxy /upload* %s {\n\tmode per_part\n\t%s\n}", be.URL, checks))
		n := 0
		forms(t, func(p typedPart, body []byte, ct string) {
			res, out := sendTyped(t, "chunked", body, ct)
			expectMismatch(t, res, out, p, 2)
			n++
			// Only the WAV before it reached the backend: the refused part's
			// request was never made.
			if seen := be.requests(); len(seen) != n || seen[n-1].field != "first" {
				t.Fatalf("backend saw %d requests, want %d (the WAVs only): %+v", len(seen), n, seen)
			}
		})
	})

	t.Run("store", func(t *testing.T) {
		dir := t.TempDir()
		startGateway(t, fmt.Sprintf("stream_proxy /upload* {\n\tmode store\n\tstore %s\n\t%s\n}", dir, checks))
		forms(t, func(p typedPart, body []byte, ct string) {
			res, out := sendTyped(t, "length", body, ct)
			expectMismatch(t, res, out, p, 2)
			if left := filesUnder(t, dir); len(left) != 0 {
				t.Fatalf("left in the store: %v", left)
			}
		})
	})

	t.Run("store s3", func(t *testing.T) {
		s := startS3(t)
		startGateway(t, fmt.Sprintf("stream_proxy /upload* {\n\tmode store\n\t%s\n\t%s\n}", s.site(t, s.endpoint, ""), checks))
		forms(t, func(p typedPart, body []byte, ct string) {
			res, out := sendTyped(t, "slow", body, ct)
			expectMismatch(t, res, out, p, 2)
			s.empty(t)
		})
	})
}
