package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeStore does what stream_proxy's store mode does with a body: it writes
// each file into dir under a generated name and returns its answer.
func fakeStore(t *testing.T, b *body, data []byte, dir string) storeAnswer {
	t.Helper()
	_, params, err := mime.ParseMediaType(b.ContentType)
	if err != nil {
		t.Fatal(err)
	}
	ans := storeAnswer{Parts: []storedPart{}, Fields: map[string]string{}}
	mr := multipart.NewReader(bytes.NewReader(data), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return ans
		}
		if err != nil {
			t.Fatal(err)
		}
		content, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		sp := storedPart{Field: p.FormName(), Filename: p.FileName(), Size: int64(len(content))}
		if sp.Filename == "" {
			ans.Fields[sp.Field] = string(content)
		} else {
			sum := sha256.Sum256(content)
			sp.ContentType = p.Header.Get("Content-Type")
			sp.Digests = map[string]string{"sha256": hex.EncodeToString(sum[:])}
			sp.Path = fmt.Sprintf("%032x", len(ans.Parts))
			if err := os.WriteFile(filepath.Join(dir, sp.Path), content, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		ans.Parts = append(ans.Parts, sp)
	}
}

func TestVerifyStored(t *testing.T) {
	b, data := testBody(t)
	firstFile := 2 // after the two fields
	cases := []struct {
		name    string
		tamper  func(dir string, a *storeAnswer)
		problem string // in the error; empty: no error
	}{
		{"intact", func(string, *storeAnswer) {}, ""},
		{"digest", func(_ string, a *storeAnswer) { a.Parts[firstFile].Digests["sha256"] = strings.Repeat("0", 64) }, "sha256"},
		{"no digest", func(_ string, a *storeAnswer) { a.Parts[firstFile].Digests = nil }, "sha256"},
		{"size in the answer", func(_ string, a *storeAnswer) { a.Parts[firstFile].Size++ }, "bytes, sent"},
		{"size on disk", func(dir string, a *storeAnswer) {
			_ = os.Truncate(filepath.Join(dir, a.Parts[firstFile].Path), a.Parts[firstFile].Size-1)
		}, "on disk"},
		{"file gone", func(dir string, a *storeAnswer) { _ = os.Remove(filepath.Join(dir, a.Parts[firstFile].Path)) }, "no such file"},
		{"not stored", func(_ string, a *storeAnswer) { a.Parts[firstFile].Path = "" }, "not stored"},
		{"path out of the store", func(_ string, a *storeAnswer) { a.Parts[firstFile].Path = "../" + a.Parts[firstFile].Path }, "escapes"},
		{"file not listed", func(_ string, a *storeAnswer) { a.Parts = a.Parts[:len(a.Parts)-1] }, "not in the answer"},
		{"stray file", func(dir string, _ *storeAnswer) { _ = os.WriteFile(filepath.Join(dir, ".x.partial"), nil, 0o600) }, "not in the answer"},
		{"field value", func(_ string, a *storeAnswer) { a.Fields["field1"] += "!" }, "text field"},
		{"field stored", func(_ string, a *storeAnswer) { a.Parts[0].Path = a.Parts[firstFile].Path }, "text field"},
		{"content type", func(_ string, a *storeAnswer) { a.Parts[firstFile].ContentType = "text/plain" }, "content type"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		a := fakeStore(t, b, data, dir)
		c.tamper(dir, &a)
		answer, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		err = verifyStored(answer, b.Parts(), dir)
		if c.problem == "" && err != nil || c.problem != "" && (err == nil || !strings.Contains(err.Error(), c.problem)) {
			t.Errorf("%s: %v; want %q", c.name, err, c.problem)
		}
		if err := emptyDir(dir); err != nil {
			t.Fatal(err)
		}
		if left, _ := os.ReadDir(dir); len(left) != 0 {
			t.Errorf("%s: emptyDir left %v", c.name, left)
		}
	}

	for _, answer := range []string{`{"error":{"status":507}}`, `not json`, `{"parts":null}`} {
		if err := verifyStored([]byte(answer), b.Parts(), t.TempDir()); err == nil {
			t.Errorf("verify accepted %s", answer)
		}
	}
}

func TestStoreRoute(t *testing.T) {
	if err := checkModes([]string{"forward", "per_part", "store"}); err != nil {
		t.Error(err)
	}
	for _, modes := range [][]string{{"store", "store"}, {"stored"}, {}} {
		if err := checkModes(modes); err == nil {
			t.Errorf("checkModes(%q) accepted", modes)
		}
	}

	dir, err := makeStoreDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(dir) {
		t.Errorf("store dir %q is not absolute", dir)
	}
	cf := gatewayCaddyfile(8080, "127.0.0.1:9001", []string{"forward", "store"}, dir, nil, protoHTTP)
	block := "stream_proxy /sp-store/* {\n\t\tmode store\n\t\tstore \"" + dir + "\" {\n\t\t\tlayout flat\n\t\t}\n\t\thash sha256\n\t}"
	if !strings.Contains(cf, block) || !strings.Contains(cf, "stream_proxy /sp/* http://127.0.0.1:9001\n") {
		t.Errorf("Caddyfile:\n%s", cf)
	}
	if _, err := makeStoreDir(filepath.Join(t.TempDir(), `a"b`)); err == nil {
		t.Error("a store dir with a quote was accepted")
	}
}
