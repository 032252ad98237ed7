package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

func testBody(t *testing.T) (*body, []byte) {
	t.Helper()
	b, err := newBody(bodySpec{Seed: 11, Size: 200*kib + 1, Files: 3, Fields: 2})
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(b.Reader())
	if err != nil {
		t.Fatal(err)
	}
	return b, data
}

func post(h http.Handler, contentType string, body []byte, header http.Header) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/any/path", bytes.NewReader(body))
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestBackendMultipart(t *testing.T) {
	b, data := testBody(t)
	rec := post((&backend{}).handler(), b.ContentType, data, nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if err := verifyAnswer(rec.Body.Bytes(), b.Parts()); err != nil {
		t.Fatal(err)
	}
	var res multipartResult
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if res.Bytes != b.Length || len(res.Parts) != 5 {
		t.Errorf("bytes %d, parts %d; want %d, 5", res.Bytes, len(res.Parts), b.Length)
	}
	if !strings.Contains(rec.Body.String(), `"filename":"file0.bin"`) || strings.Contains(rec.Body.String(), `"filename":""`) {
		t.Errorf("filename should be there for files only: %s", rec.Body)
	}
}

// TestBackendRejectsTruncated: a body that ends anywhere before the closing
// delimiter is a 400, never a 200.
func TestBackendRejectsTruncated(t *testing.T) {
	b, data := testBody(t)
	_, params, _ := mime.ParseMediaType(b.ContentType)
	delim := "\r\n--" + params["boundary"]
	closing := bytes.LastIndex(data, []byte(delim))
	cuts := map[string]int{
		"no closing delimiter":       closing,
		"closing delimiter cut":      len(data) - len("--\r\n"),
		"in the middle of a file":    len(data) / 2,
		"in a part header":           bytes.Index(data, []byte("Content-Disposition")) + 5,
		"empty body":                 0,
		"only the first delimiter":   bytes.IndexByte(data, '\n') + 1,
		"after the last file's data": closing + 2,
		"after a middle delimiter":   bytes.Index(data, []byte(delim)) + len(delim+"\r\n"),
	}
	h := (&backend{}).handler()
	for name, n := range cuts {
		rec := post(h, b.ContentType, data[:n], nil)
		var e struct{ Error string }
		if rec.Code != http.StatusBadRequest || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error == "" {
			t.Errorf("%s (%d of %d bytes): %d %s", name, n, len(data), rec.Code, rec.Body)
		}
	}
	if rec := post(h, "multipart/form-data", data, nil); rec.Code != http.StatusBadRequest {
		t.Errorf("no boundary: %d %s", rec.Code, rec.Body)
	}
}

// TestBackendAbortedOverHTTP: a client that declares more than it sends and
// stops gets a 400 from a real server.
func TestBackendAbortedOverHTTP(t *testing.T) {
	b, data := testBody(t)
	srv := httptest.NewServer((&backend{}).handler())
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", b.ContentType, len(data))
	_, _ = conn.Write(data[:len(data)-10])
	_ = conn.(*net.TCPConn).CloseWrite()
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d: %s", res.StatusCode, answer)
	}
}

func TestBackendRaw(t *testing.T) {
	data := []byte("raw part bytes")
	var seen []rawResult
	h := (&backend{onRaw: func(r rawResult) { seen = append(seen, r) }}).handler()
	rec := post(h, "audio/wav", data, http.Header{
		"X-Stream-Proxy-Field": {"audio"},
		"X-Stream-Proxy-Index": {"2"},
		"X-Other":              {"not echoed"},
	})
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var got rawResult
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := rawResult{
		Bytes: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), ContentType: "audio/wav",
		Headers: map[string]string{"X-Stream-Proxy-Field": "audio", "X-Stream-Proxy-Index": "2"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || len(seen) != 1 || fmt.Sprint(seen[0]) != fmt.Sprint(want) {
		t.Errorf("got %+v (recorded %+v), want %+v", got, seen, want)
	}
}

func TestBackendDownloadAndHealth(t *testing.T) {
	h := (&backend{seed: 5}).handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/download/100KiB", nil))
	want := make([]byte, 100*kib)
	_, _ = io.ReadFull(newRandReader(5), want)
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Length") != strconv.Itoa(len(want)) || !bytes.Equal(rec.Body.Bytes(), want) {
		t.Errorf("download: %d, Content-Length %q, %d bytes", rec.Code, rec.Header().Get("Content-Length"), rec.Body.Len())
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/download/lots", nil))
	if rec.Code != http.StatusBadRequest {
		t.Errorf("bad size: %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK || rec.Body.String() != "ok" {
		t.Errorf("healthz: %d %q", rec.Code, rec.Body)
	}
}

func TestVerifyDetectsMismatch(t *testing.T) {
	b, data := testBody(t)
	data[len(data)/2] ^= 1 // one bit of a file
	rec := post((&backend{}).handler(), b.ContentType, data, nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if err := verifyAnswer(rec.Body.Bytes(), b.Parts()); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("verify: %v", err)
	}
	if err := verifyAnswer([]byte(`{"error":"x"}`), b.Parts()); err == nil {
		t.Error("verify accepted an error answer")
	}
	if err := verifyAnswer([]byte(`{"parts":[],"bytes":0}`), b.Parts()); err == nil {
		t.Error("verify accepted an answer without parts")
	}

	var raws []rawResult
	for _, p := range b.Parts() {
		if p.Filename != "" {
			raws = append(raws, rawResult{Bytes: p.Size, SHA256: p.SHA256})
		}
	}
	if err := verifyRawUploads(raws, b.Parts()); err != nil {
		t.Errorf("raw: %v", err)
	}
	if err := verifyRawUploads(raws[1:], b.Parts()); err == nil {
		t.Error("raw: a missing file went unnoticed")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"4096": 4096, "1GiB": 1 << 30, "10MB": 10e6, "512kb": 512e3, "64MiB": 64 << 20,
		"1.5GiB": 3 << 29, "2g": 2e9, "1K": 1000, "1KiB": 1024, "0": 0, "7B": 7,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "-1", "1XB", "99999999999TiB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): no error", in)
		}
	}
}
