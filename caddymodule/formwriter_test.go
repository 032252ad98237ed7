package streamproxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"mime/multipart"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// The form a backend gets is byte for byte what mime/multipart's Writer
// writes for the same parts (CreatePart with the part's header, its
// Content-Disposition written anew; WriteField for the digests): sorted
// keys, repeated fields, a key with a space, a folded line, escaped names.
func TestFormWriterAsMultipart(t *testing.T) {
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1"), Hash: []string{"sha256"}})
	h.logger = zap.NewNop()
	client := "--B\r\n" +
		"x-pad: one\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad:  two \r\nContent-Type: text/plain\r\n\r\n" +
		"hello\r\n--B\r\n" +
		"Content-Disposition: form-data; name=\"q\\\"x\"; filename=\"a\\\"b.txt\"\r\nX Spaced: y\r\nX-Long: one\r\n  two\r\n\r\n" +
		"file data\r\n--B\r\n" +
		"Content-Disposition: form-data; name*=utf-8''caf%C3%A9; filename*=utf-8''n%C3%A4me.txt\r\n\r\n" +
		"\xff\x00\r\n--B--\r\n"
	r := prepared(httptest.NewRequest("POST", "/upload", strings.NewReader(client)))
	r.Header.Set("Content-Type", "multipart/form-data; boundary=B")
	u := newUpload(h, httptest.NewRecorder(), r)
	if err := u.checkRequest(); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if err := forwardTo(u, &got); err != nil {
		t.Fatal(err)
	}

	first, _, _ := bytes.Cut(got.Bytes(), []byte("\r\n"))
	var want bytes.Buffer
	mw := multipart.NewWriter(&want)
	if err := mw.SetBoundary(string(first[2:])); err != nil {
		t.Fatal(err)
	}
	dispositions := []string{
		`form-data; name="a"`,
		`form-data; name="q\"x"; filename="a\"b.txt"`,
		`form-data; name="café"; filename*=utf-8''n%C3%A4me.txt`,
	}
	mr := multipart.NewReader(strings.NewReader(client), "B")
	for i := 0; ; i++ {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		header := p.Header
		header.Set("Content-Disposition", dispositions[i])
		name := p.FormName()
		hasFile := p.FileName() != ""
		data, _ := io.ReadAll(p)
		w, _ := mw.CreatePart(header)
		w.Write(data)
		if hasFile {
			sum := sha256.Sum256(data)
			mw.WriteField(name+".sha256", hex.EncodeToString(sum[:]))
		}
	}
	mw.Close()
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Errorf("forwarded\n%q\nmime/multipart writes\n%q", got.Bytes(), want.Bytes())
	}
}
