package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// needTool returns the path of a tool the browser test needs. Where it is
// missing the test skips, except in CI (CI=true), where it fails: the
// project's own make target installs it (xcaddy.mk's browser-deps).
func needTool(t *testing.T, name, path string) string {
	t.Helper()
	if path == "" {
		var err error
		if path, err = exec.LookPath(name); err != nil {
			path = ""
		}
	}
	if path != "" {
		if _, err := os.Stat(path); err == nil {
			return path
		}
	}
	msg := fmt.Sprintf("%s is missing: run `make -f xcaddy.mk browser-deps`", name)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// browserUpload is one line of upload.mjs's output.
type browserUpload struct {
	Kind     string          `json:"kind"`
	Status   int             `json:"status"`
	Answer   json.RawMessage `json:"answer"`
	Progress *struct {
		Events, Loaded, Total int64
	} `json:"progress"`
	Page *pageState `json:"page"`
}

// pageState is what the upload page showed once an upload had ended.
type pageState struct {
	Text        string  `json:"text"`   // the status line
	Failed      bool    `json:"failed"` // the bar and the line marked as failed
	Value       float64 `json:"value"`  // the progress bar
	Max         float64 `json:"max"`
	SendEnabled bool    `json:"send_enabled"`
	// Seen is the status line at each of its changes, with whether the
	// Upload button was disabled then.
	Seen []struct {
		Text     string `json:"text"`
		Disabled bool   `json:"disabled"`
	} `json:"seen"`
}

// disabledWhileSending checks that the Upload button was disabled while the
// page showed the upload going, and enabled again at its end.
func (p *pageState) disabledWhileSending(t *testing.T, kind string) {
	t.Helper()
	if p == nil || len(p.Seen) < 2 || !p.Seen[0].Disabled || p.Seen[len(p.Seen)-1].Disabled || !p.SendEnabled {
		t.Errorf("%s: the Upload button, at each change of the status line: %+v; want disabled while sending, enabled at the end", kind, p)
	}
}

// Real clients, integration/README.md, rows 31 and 38: Debian's chromium,
// driven by playwright-core, uses the upload page that Caddyfile.example
// serves, over HTTP/1.1 and over HTTP/2 with `tls internal`. It submits the
// HTML form (a text field, a file with a non-ASCII name, an optional file input
// left empty), the page's XHR upload, and a fetch() with FormData. The backend
// checks every byte and field, and the browser gets the backend's answer.
// Then a file the gateway refuses (415), through the page: the page shows
// the refusal and an empty bar marked as failed, never a full one, though
// the browser may have sent every byte (the gateway reads the rest away).
func TestBrowserUploads(t *testing.T) {
	node := needTool(t, "node", "")
	needTool(t, "chromium", "/usr/bin/chromium")
	needTool(t, "playwright-core", filepath.Join("browser", "node_modules", "playwright-core", "package.json"))
	www, err := filepath.Abs(filepath.Join("..", "cmd", "caddy", "www"))
	if err != nil {
		t.Fatal(err)
	}

	be := newCheckingBackend(t)
	startGatewayTLS(t, fmt.Sprintf(`	stream_proxy /v1/upload* %s {
		allow_types image/* text/plain
		hash sha256
		header_up X-Client-Proto {http.request.proto}
	}
	handle / {
		root * %s
		file_server
	}`, be.URL, www))

	// The file the browser picks: random bytes under a non-ASCII name.
	dir := t.TempDir()
	const name = "näme ✓ 日本.png"
	data := make([]byte, 3<<20+17)
	_, _ = rand.Read(data)
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
	fileSum := sha256.Sum256(data)
	// A file of a type allow_types refuses (Chromium sends .wav as audio/wav).
	refused := filepath.Join(dir, "refused talk.wav")
	if err := os.WriteFile(refused, data[:2<<20], 0o600); err != nil {
		t.Fatal(err)
	}
	const note = "héllo wörld ✓"
	noteSum := sha256.Sum256([]byte(note))
	generated := make([]byte, 1<<20) // what the page's fetch() sends, made the same way
	for i := range generated {
		generated[i] = byte((i*31 + (i >> 8)) & 0xff)
	}
	genSum := sha256.Sum256(generated)
	emptySum := sha256.Sum256(nil)

	// digestField is the text field the gateway adds after a file (hash sha256).
	digestField := func(field string, sum [32]byte) checkedPart {
		hexSum := hex.EncodeToString(sum[:])
		fieldSum := sha256.Sum256([]byte(hexSum))
		return checkedPart{Field: field + ".sha256", Disposition: `form-data; name="` + field + `.sha256"`,
			Size: int64(len(hexSum)), SHA256: hex.EncodeToString(fieldSum[:])}
	}

	// What the backend must get from each upload. The empty file input
	// (application/octet-stream) passes allow_types and gets no digest field:
	// it is no file.
	formParts := []checkedPart{
		{Field: "note", Disposition: `form-data; name="note"`, Size: int64(len(note)), SHA256: hex.EncodeToString(noteSum[:])},
		{Field: "files", Filename: name, HasFilename: true, Disposition: `form-data; name="files"; filename="` + name + `"`,
			ContentType: "image/png", Size: int64(len(data)), SHA256: hex.EncodeToString(fileSum[:])},
		digestField("files", fileSum),
		{Field: "extra", HasFilename: true, Disposition: `form-data; name="extra"; filename=""`,
			ContentType: "application/octet-stream", SHA256: hex.EncodeToString(emptySum[:])},
	}
	fetchParts := []checkedPart{
		formParts[0],
		{Field: "doc", Filename: "résumé ✓.txt", HasFilename: true, Disposition: `form-data; name="doc"; filename="résumé ✓.txt"`,
			ContentType: "text/plain", Size: int64(len(generated)), SHA256: hex.EncodeToString(genSum[:])},
		digestField("doc", genSum),
	}
	describe := func(parts []checkedPart) string {
		b, _ := json.MarshalIndent(parts, "", " ")
		return string(b)
	}

	for _, tc := range []struct{ name, base, proto string }{
		{"HTTP/1.1", gatewayURL, "HTTP/1.1"},
		{"HTTP/2 with tls internal", fmt.Sprintf("https://localhost:%d", httpsPort), "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(be.requests())
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, node, "upload.mjs", tc.base, filepath.Join(dir, name), note, refused)
			cmd.Dir = "browser"
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("node upload.mjs: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
			}
			var uploads []browserUpload
			for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
				var u browserUpload
				if err := json.Unmarshal([]byte(line), &u); err != nil {
					t.Fatalf("upload.mjs printed %q: %v", line, err)
				}
				uploads = append(uploads, u)
			}
			if len(uploads) != 4 {
				t.Fatalf("upload.mjs reported %d uploads, want 4:\n%s", len(uploads), stdout.String())
			}
			got := be.requests()[before:]
			if len(got) < 3 {
				t.Fatalf("backend got %d requests, want 3 (and the refused one, aborted, if it came)", len(got))
			}
			for _, rec := range got[3:] {
				if rec.Err == "" {
					t.Errorf("the refused upload reached the backend whole: %+v", rec.Parts)
				}
			}
			for i, want := range [][]checkedPart{formParts, formParts, fetchParts} {
				u, rec := uploads[i], got[i]
				if rec.Err != "" {
					t.Errorf("%s: backend: %s", u.Kind, rec.Err)
				}
				if rec.Proto != tc.proto {
					t.Errorf("%s: the browser spoke %q, want %s", u.Kind, rec.Proto, tc.proto)
				}
				if w, h := describe(want), describe(rec.Parts); w != h {
					t.Errorf("%s: backend got\n%s\nwant\n%s", u.Kind, h, w)
				}
				// The browser got the backend's answer, through the gateway.
				var answer checkedRequest
				if u.Status != 200 || json.Unmarshal(u.Answer, &answer) != nil || describe(answer.Parts) != describe(rec.Parts) {
					t.Errorf("%s: the browser got %d %s", u.Kind, u.Status, u.Answer)
				}
			}
			if p := uploads[1].Progress; p == nil || p.Events < 1 || p.Total <= int64(len(data)) || p.Loaded != p.Total {
				t.Errorf("xhr progress %+v: want events up to the whole body", p)
			}
			if p := uploads[1].Page; p == nil || p.Failed || p.Value != p.Max || !strings.Contains(p.Text, "complete") {
				t.Errorf("xhr: the page shows %+v, want a full bar and the upload complete", p)
			}
			uploads[1].Page.disabledWhileSending(t, "xhr")

			// The refusal, as the page shows it.
			ref := uploads[3]
			var refusal errorBody
			if ref.Status != 415 || json.Unmarshal(ref.Answer, &refusal) != nil || refusal.Error.Code != "type_not_allowed" {
				t.Errorf("refused: the page got %d %s, want 415 type_not_allowed", ref.Status, ref.Answer)
			}
			if p := ref.Page; p == nil || !p.Failed || p.Value != 0 || !strings.Contains(p.Text, "refused (415") {
				t.Errorf("refused: the page shows %+v, want an empty bar marked failed and the refusal", p)
			}
			ref.Page.disabledWhileSending(t, "refused")
			if p := ref.Progress; p != nil {
				t.Logf("refused: the browser reported %d of %d bytes sent in %d progress events; the page shows %q",
					p.Loaded, p.Total, p.Events, ref.Page.Text)
			}
		})
	}
}
