package streamproxy

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/gabriel-vasile/mimetype"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
)

// mediaFile reads one of the real media files under integration/testdata/types.
func mediaFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "integration", "testdata", "types", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Attacks that arrive under an innocent declared type.
var (
	svgImage = `<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="1" height="1"/></svg>`
)

// chunkedReader returns its data small reads first: one byte at a time for
// the first slow bytes, as a client writing a chunked body through a slow
// writer does, then what is asked.
type chunkedReader struct {
	data []byte
	slow int
}

func (r *chunkedReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if r.slow > 0 {
		n = 1
		r.slow--
	}
	n = copy(p[:n], r.data)
	r.data = r.data[n:]
	return n, nil
}

// forwardForm runs a form through the forward path and returns the
// forwarded parts (name, data) or the refusal.
func forwardForm(t *testing.T, h *Handler, body io.Reader, boundary string) ([][2]string, error) {
	t.Helper()
	r := prepared(httptest.NewRequest("POST", "/upload", body))
	r.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
	u := newUpload(h, httptest.NewRecorder(), r)
	if err := u.checkRequest(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := forwardTo(u, &out); err != nil {
		return nil, err
	}
	first, _, _ := bytes.Cut(out.Bytes(), []byte("\r\n"))
	mr := multipart.NewReader(&out, string(first[2:]))
	var parts [][2]string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return parts, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		parts = append(parts, [2]string{p.FormName(), string(b)})
	}
}

func buildForm(files ...[2]string) []byte {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	mw.SetBoundary("X-BOUNDARY-0123456789")
	mw.WriteField("model", "whisper")
	for i, f := range files {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file%d"; filename="f%d"`, i, i))
		if f[0] != "" {
			h.Set("Content-Type", f[0])
		}
		w, _ := mw.CreatePart(h)
		w.Write([]byte(f[1]))
	}
	mw.Close()
	return b.Bytes()
}

// A prefix that comes in many small client reads is judged as one that came
// in one, and the part goes on byte-identical: the prefix, then the rest
// (integration/README.md, rows 56 and 57).
func TestVerifyPrefixSplitAcrossReads(t *testing.T) {
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1"), VerifyTypes: true, AllowTypes: []string{"audio/*", "image/*"}})
	h.logger = zap.NewNop()
	rng := rand.New(rand.NewPCG(1, 2))
	noise := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return string(b)
	}
	wav := string(mediaFile(t, "audio.wav"))
	png := string(mediaFile(t, "image.png"))
	files := [][2]string{
		{"audio/wav", wav},
		{"", png},
		{"image/png", ""},
		{"audio/x-wav", wav[:44]},
		{"application/octet-stream", wav + noise(300<<10)},
		{"audio/wav", wav[:verifyPrefix-1]},
		{"audio/wav", wav[:verifyPrefix]},
		{"audio/wav", wav[:verifyPrefix+1]},
		// Data that holds the delimiter's start around the prefix's end.
		{"audio/wav", wav[:verifyPrefix-3] + "\r\n--X-BOUNDARY-0123456789x" + noise(100)},
	}
	form := buildForm(files...)
	for _, slow := range []int{0, 1, 100, 3 * verifyPrefix, len(form)} {
		t.Run(fmt.Sprintf("slow=%d", slow), func(t *testing.T) {
			parts, err := forwardForm(t, h, &chunkedReader{data: form, slow: slow}, "X-BOUNDARY-0123456789")
			if err != nil {
				t.Fatal(err)
			}
			want := [][2]string{{"model", "whisper"}}
			for i, f := range files {
				detected := "application/octet-stream" // no data: nothing to recognise
				if f[1] != "" {
					detected = mimetype.Detect([]byte(f[1])[:min(len(f[1]), verifyPrefix)]).String()
				}
				want = append(want, [2]string{fmt.Sprintf("file%d", i), f[1]},
					[2]string{fmt.Sprintf("file%d.detected_type", i), detected})
			}
			if len(parts) != len(want) {
				t.Fatalf("%d parts forwarded, want %d", len(parts), len(want))
			}
			for i := range want {
				if parts[i] != want[i] {
					t.Errorf("part %d: %q (%d bytes), want %q (%d bytes)", i, parts[i][0], len(parts[i][1]), want[i][0], len(want[i][1]))
				}
			}
		})
	}

	// A refusal is the same however the prefix came.
	bad := buildForm([2]string{"audio/wav", wav}, [2]string{"image/png", svgImage + strings.Repeat(" ", 5000)})
	for _, slow := range []int{0, 1, 7, len(bad)} {
		_, err := forwardForm(t, h, &chunkedReader{data: bad, slow: slow}, "X-BOUNDARY-0123456789")
		ue := classified(err)
		if ue == nil || ue.Code != CodeTypeMismatch || ue.Part == nil || ue.Part.Field != "file1" ||
			ue.DeclaredType != "image/png" || ue.DetectedType != "image/svg+xml" || ue.Status != 415 {
			t.Errorf("slow=%d: %v (%+v), want type_mismatch of file1, image/png against image/svg+xml", slow, err, ue)
		}
	}
}

// A client field that would forge the gateway's `<field>.detected_type` is
// refused.
func TestVerifyReservedField(t *testing.T) {
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1"), VerifyTypes: true})
	h.logger = zap.NewNop()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	mw.WriteField("file.detected_type", "image/png")
	mw.Close()
	_, err := forwardForm(t, h, &b, mw.Boundary())
	if ue := classified(err); ue == nil || ue.Code != CodeFieldNotAllowed {
		t.Fatalf("got %v, want field_not_allowed", err)
	}
}

func TestVerifyTypesCaddyfile(t *testing.T) {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("stream_proxy 127.0.0.1:9000 {\n verify_types\n allow_types image/*\n}")); err != nil {
		t.Fatal(err)
	}
	if !h.VerifyTypes {
		t.Error("verify_types not set")
	}
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("stream_proxy 127.0.0.1:9000 {\n verify_types yes\n}")); err == nil {
		t.Error("verify_types with an argument accepted")
	}
}

// The per_part request carries the detected type in a header; the JSON
// answer lists it.
func TestPerPartDetectedType(t *testing.T) {
	var got []string
	be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got = append(got, r.Header.Get(headerDetected))
	}))
	defer be.Close()
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL), Mode: ModePerPart, VerifyTypes: true})
	body := buildForm([2]string{"audio/wav", string(mediaFile(t, "audio.wav"))})
	r := formRequest(string(body))
	r.Header.Set("Content-Type", "multipart/form-data; boundary=X-BOUNDARY-0123456789")
	w := serve(h, r, failNext)
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"detected_type":"audio/wav"`) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if len(got) != 1 || got[0] != "audio/wav" {
		t.Errorf("backend saw %s %q", headerDetected, got)
	}
}

// A browser's empty file input (filename="", no data) is not a file
// (integration/README.md, row 31): verify_types neither judges it nor adds a
// detected type after it.
func TestVerifyEmptyFileInput(t *testing.T) {
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1"), VerifyTypes: true, AllowTypes: []string{"image/*"}})
	h.logger = zap.NewNop()
	form := "--B\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\n\r\n--B--\r\n"
	parts, err := forwardForm(t, h, strings.NewReader(form), "B")
	if err != nil || len(parts) != 1 || parts[0] != [2]string{"photo", ""} {
		t.Fatalf("forwarded %q, %v; want the empty input alone", parts, err)
	}
}

// verifyPrefix is how many first bytes verify_types judges.
const verifyPrefix = formreader.VerifyPrefix
