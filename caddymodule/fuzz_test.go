package streamproxy

import (
	"bytes"
	"crypto/md5" //nolint:gosec // a seed's Content-MD5, not a security measure
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
	"github.com/streamproxy/caddy-stream-proxy/integration/formtest"
)

// The limits of the handler under fuzzing: small, so that inputs of a few
// hundred bytes reach every one of them.
const (
	fuzzMaxBody   = 64 << 10
	fuzzMaxParts  = 8
	fuzzMaxField  = 64
	fuzzMaxPart   = 1024
	fuzzMaxHeader = 1024
)

// FuzzForward feeds a boundary and a body to the forward path: ServeHTTP with
// a real upload, through exchange, into an in-memory backend (the transport's
// RoundTrip) that re-parses what it receives with mime/multipart. Properties:
//
//   - it never panics, and the handler always answers;
//   - an answer other than 200 is a 4xx JSON error whose status and code
//     agree, and the backend never saw a complete form;
//   - a 200 comes only for a body that Go's mime/multipart reads completely
//     (NextRawPart until io.EOF, every part to its end, same boundary), and the
//     backend then saw exactly Go's parts (names, filenames, Content-Type,
//     bytes), each file with a non-empty filename followed by its
//     <field>.sha256;
//   - a body that Go's parser reads completely and that the gateway's strict
//     rules accept (below) gets a 200.
//
// The strict rules, beyond Go's parser: a valid RFC 2046 boundary; a closing
// delimiter; at most max_parts parts; one Content-Disposition, form-data,
// with a name; at most one Content-Type, parsable; no
// Content-Transfer-Encoding but binary, 8bit or 7bit; sizes within max_field_size or max_part_size and
// a header within max_part_header_size. Parts that declare a Content-MD5 or a
// Content-Digest, and bodies with more bytes outside part data than
// max_part_header_size (the header budget counts preambles and read-ahead),
// may go either way; when they pass, the parts must still match.
func FuzzForward(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s[0], []byte(s[1]))
	}
	be := &fuzzBackend{}
	h := provision(f, &Handler{
		ProxyRaw:          proxyTo("http://127.0.0.1:1/upload"),
		MaxBodySize:       fuzzMaxBody,
		MaxParts:          fuzzMaxParts,
		MaxFieldSize:      fuzzMaxField,
		MaxPartSize:       fuzzMaxPart,
		MaxPartHeaderSize: fuzzMaxHeader,
		Hash:              []string{"sha256"},
	})
	h.logger = zap.NewNop() // a log line per input would be most of the work
	h.proxy.Transport = be  // the provisioned one is cleaned up with the context
	f.Fuzz(func(t *testing.T, boundary string, body []byte) {
		checkForward(t, h, be, boundary, body)
	})
}

func checkForward(t *testing.T, h *Handler, be *fuzzBackend, boundary string, body []byte) {
	ct := mime.FormatMediaType("multipart/form-data", map[string]string{"boundary": boundary})
	if _, params, err := mime.ParseMediaType(ct); err != nil || params["boundary"] != boundary {
		t.Skip("the boundary does not survive a Content-Type")
	}
	be.reset()
	r := httptest.NewRequest(http.MethodPost, "/upload", &chopReader{b: body, at: len(body)})
	r.ContentLength = int64(len(body))
	r.Header.Set("Content-Type", ct)
	r = prepared(r)
	w := httptest.NewRecorder()
	next := func(http.ResponseWriter, *http.Request) error { t.Fatal("next handler called"); return nil }
	if err := h.ServeHTTP(w, r, handlerFunc(next)); err != nil {
		t.Fatalf("ServeHTTP returned %v", err)
	}

	ref := reference(boundary, body)
	if w.Code != http.StatusOK {
		e := checkRefusal(t, w)
		if be.complete {
			t.Fatalf("refused with %d %s, but the backend saw a complete form", w.Code, e.Code)
		}
		switch {
		case ref.verdict == mustAccept:
			t.Fatalf("refused with %d %s (%s) a body that Go's parser and the strict rules accept: parts\n%s",
				w.Code, e.Code, e.Message, describe(ref.parts))
		case ref.status != 0 && (w.Code != ref.status || e.Code != ref.code):
			t.Fatalf("refused with %d %s (%s), want %d %s (%s)", w.Code, e.Code, e.Message, ref.status, ref.code, ref.why)
		}
		return
	}

	// 200
	if be.calls != 1 || be.err != nil {
		t.Fatalf("200, but the backend got %d requests, error %v", be.calls, be.err)
	}
	if !ref.goAccepts {
		t.Fatalf("200 for a body Go's parser refuses (%v); the backend saw\n%s", ref.goErr, describe(be.parts))
	}
	if ref.verdict == mustRefuse {
		t.Fatalf("200 for a body the strict rules refuse with %d %s (%s); the backend saw\n%s",
			ref.status, ref.code, ref.why, describe(be.parts))
	}
	if want, got := describe(forwarded(ref.parts)), describe(be.parts); want != got && !ref.unreadable {
		t.Fatalf("the backend saw\n%s\nGo's parser sees (as forwarded)\n%s", got, want)
	}
}

// chopReader returns body in reads of a few sizes in turn, which one first
// depending on the body's length, so that delimiters, line ends and headers
// fall across reads as they do on a network.
type chopReader struct {
	b  []byte
	at int
}

var chopSizes = []int{1, 7, 2, 64, 3, 1000, 5, 4096, 13}

func (c *chopReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	c.at++
	n := copy(p[:min(len(p), chopSizes[c.at%len(chopSizes)])], c.b)
	c.b = c.b[n:]
	return n, nil
}

type handlerFunc func(http.ResponseWriter, *http.Request) error

func (f handlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

// statusOf is the status of every code a refusal of the body may carry.
var statusOf = map[string]int{
	CodeMalformed:        400,
	CodeTransferEncoding: 400,
	CodeDigestMismatch:   400,
	CodeBodyTooLarge:     413,
	CodePartTooLarge:     413,
	CodeFieldTooLarge:    413,
	CodeTooManyParts:     413,
	CodePartHeaderTooBig: 431,
}

// checkRefusal checks that a refusal is a JSON error whose status and code
// agree, for a fault of the body (4xx).
func checkRefusal(t *testing.T, w *httptest.ResponseRecorder) uploadError {
	t.Helper()
	var e struct{ Error uploadError }
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
		t.Fatalf("%d with a body that is not JSON: %v: %q", w.Code, err, w.Body)
	}
	if w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d with Content-Type %q", w.Code, w.Header().Get("Content-Type"))
	}
	if want, ok := statusOf[e.Error.Code]; !ok || want != w.Code || e.Error.Status != w.Code || e.Error.Message == "" {
		t.Fatalf("refusal %d %s", w.Code, w.Body)
	}
	return e.Error
}

// fuzzBackend is the backend's side of the round trip, in memory: it reads the
// forwarded form with mime/multipart, as a backend would, and answers 200.
type fuzzBackend struct {
	calls    int
	parts    []refPart
	err      error
	complete bool // the form ended with its closing delimiter
}

func (b *fuzzBackend) reset() { *b = fuzzBackend{} }

func (b *fuzzBackend) RoundTrip(req *http.Request) (*http.Response, error) {
	defer req.Body.Close()
	b.calls++
	_, params, err := mime.ParseMediaType(req.Header.Get("Content-Type"))
	if err != nil {
		b.err = err
		return nil, err
	}
	var body io.Reader = req.Body
	b.parts, b.err = parseParts(body, params["boundary"])
	if b.err == nil {
		b.complete = true
		if rest, err := io.ReadAll(body); err != nil || len(rest) > 0 {
			b.err = fmt.Errorf("after the closing delimiter: %d bytes, %v", len(rest), err)
		}
	}
	if b.err != nil {
		return nil, b.err
	}
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: io.NopCloser(strings.NewReader("ok")), Request: req,
	}, nil
}

// refPart is a part as mime/multipart reads it, with what the gateway makes
// of its filename.
type refPart struct {
	formtest.Part
	sentFile  bool // a filename parameter is not empty: a file, as the gateway sees it
	fileLimit bool // has a filename parameter, even empty or undecodable: max_part_size bounds it
}

// filenameParam matches a filename parameter (filename, filename*,
// filename*0*…) and its value, token or quoted string.
var filenameParam = regexp.MustCompile(`(?i);\s*filename(\*[^=;\s]*)?\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)`)

// sentFile reports whether a Content-Disposition names a non-empty filename
// (an extended value counts without its charset and language).
func sentFile(cd string) bool {
	for _, m := range filenameParam.FindAllStringSubmatch(cd, -1) {
		v := strings.Trim(m[2], `"`)
		if strings.HasSuffix(m[1], "*") && strings.Count(v, "'") >= 2 {
			v = v[strings.Index(v, "'")+1:]
			v = v[strings.Index(v, "'")+1:]
		}
		if v != "" {
			return true
		}
	}
	return false
}

// parseParts reads every part of a form to its end, raw, as formtest.Parse
// does, and notes for each one what the gateway makes of its filename.
func parseParts(r io.Reader, boundary string) ([]refPart, error) {
	parts, err := formtest.Parse(r, boundary)
	var out []refPart
	for _, p := range parts {
		rp := refPart{Part: p}
		cd := p.Header.Get("Content-Disposition")
		if _, _, err := mime.ParseMediaType(cd); err == nil {
			rp.sentFile = sentFile(cd)
			rp.fileLimit = filenameParam.MatchString(cd)
		}
		out = append(out, rp)
	}
	return out, err
}

func describe(parts []refPart) string {
	plain := make([]formtest.Part, len(parts))
	for i, p := range parts {
		plain[i] = p.Part
	}
	return formtest.Describe(plain)
}

// forwarded is what the backend should see for parts: the same, and after
// each file with a non-empty filename its sha256 as a text field.
func forwarded(parts []refPart) []refPart {
	var out []refPart
	for _, p := range parts {
		out = append(out, p)
		if p.sentFile {
			sum := sha256.Sum256(p.Data)
			out = append(out, refPart{Part: formtest.Part{Field: p.Field + ".sha256", Data: []byte(hex.EncodeToString(sum[:]))}})
		}
	}
	return out
}

// What the strict rules say of a body.
const (
	mustAccept = iota
	mustRefuse
	either
)

type refResult struct {
	goAccepts bool // Go's parser reads every part and ends with io.EOF
	goErr     error
	parts     []refPart

	unreadable bool // a Content-Disposition that only the gateway's lenient reading accepts

	verdict int
	status  int    // when the refusal is certain: its status and code
	code    string //
	why     string
}

// breaksHeader reports whether s has a control character (other than tab),
// which would end a header line or which net/textproto refuses in a header.
func breaksHeader(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return true
		}
	}
	return false
}

// errEnd ends a body instead of io.EOF, to tell apart the two io.EOFs of
// NextRawPart: the closing delimiter's, and a header block cut by the end.
var errEnd = errors.New("end of body")

type endReader struct{ r io.Reader }

func (e endReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		err = errEnd
	}
	return n, err
}

// reference judges a body as Go's parser and the strict rules do.
func reference(boundary string, body []byte) refResult {
	var ref refResult
	// uncertain: something before may or may not be refused, so a certain
	// refusal further on may come with another code.
	uncertain := false
	refuse := func(status int, code, why string) refResult {
		ref.verdict, ref.why = mustRefuse, why
		if !uncertain {
			ref.status, ref.code = status, code
		}
		return ref
	}
	if len(body) > fuzzMaxBody {
		return refuse(413, CodeBodyTooLarge, "Content-Length over max_body_size")
	}
	if !rfc2046Boundary(boundary) {
		return refuse(400, CodeMalformed, "invalid boundary")
	}
	ref.parts, ref.goErr = parseParts(bytes.NewReader(body), boundary)
	ref.goAccepts = ref.goErr == nil
	if !ref.goAccepts {
		return refuse(0, "", "Go's parser refuses it")
	}

	// The header budget of each part counts what comes before its header too
	// (a preamble, padding) and mime/multipart's read-ahead: a body with more
	// bytes outside part data than max_part_header_size may get 431 anywhere.
	outside := len(body)
	for _, p := range ref.parts {
		outside -= len(p.Data)
	}
	uncertain = outside > fuzzMaxHeader
	for i, p := range ref.parts {
		if i >= fuzzMaxParts {
			return refuse(413, CodeTooManyParts, "too many parts")
		}
		if formreader.HeaderSize(p.Header) > fuzzMaxHeader {
			return refuse(431, CodePartHeaderTooBig, "part header too large")
		}
		cds := p.Header["Content-Disposition"]
		if len(cds) != 1 {
			return refuse(400, CodeMalformed, "Content-Disposition count")
		}
		disposition, params, err := mime.ParseMediaType(cds[0])
		if err != nil {
			// Unquoted UTF-8 values (filename=näme.txt) pass the gateway, but
			// Go's parser, here the oracle, reads no name from them.
			if _, _, lerr := mime.ParseMediaType(formreader.LenientDisposition(cds[0])); lerr == nil {
				ref.unreadable = true
				uncertain = true
				continue
			}
		}
		if err != nil || disposition != "form-data" || params["name"] == "" {
			return refuse(400, CodeMalformed, "Content-Disposition")
		}
		if ctes := p.Header["Content-Transfer-Encoding"]; len(ctes) > 1 ||
			len(ctes) == 1 && !slices.Contains([]string{"binary", "8bit", "7bit"}, strings.ToLower(strings.TrimSpace(ctes[0]))) {
			return refuse(400, CodeTransferEncoding, "Content-Transfer-Encoding")
		}
		if cts := p.Header["Content-Type"]; len(cts) > 1 {
			return refuse(400, CodeMalformed, "Content-Type count")
		} else if len(cts) == 1 {
			if _, _, err := mime.ParseMediaType(cts[0]); err != nil {
				return refuse(400, CodeMalformed, "Content-Type")
			}
		}
		if len(p.Header["Content-Md5"]) > 0 || len(p.Header["Content-Digest"]) > 0 {
			uncertain = true // declared digests: digest.go decides
		}
		if breaksHeader(params["name"]) {
			return refuse(400, CodeMalformed, "a control character in a name cannot be forwarded")
		}
		if p.fileLimit && len(p.Data) > fuzzMaxPart {
			return refuse(413, CodePartTooLarge, "file part too large")
		}
		if !p.fileLimit && len(p.Data) > fuzzMaxField {
			return refuse(413, CodeFieldTooLarge, "field too large")
		}
	}
	// NextRawPart also ends with a bare io.EOF when the body ends after a
	// delimiter line or inside a part's header block: that body has no
	// closing delimiter.
	if _, err := parseParts(endReader{bytes.NewReader(body)}, boundary); err == errEnd {
		return refuse(400, CodeMalformed, "no closing delimiter (the body ends in a part header)")
	}
	if uncertain {
		ref.verdict = either
		return ref
	}
	ref.verdict = mustAccept
	return ref
}

// rfc2046Boundary reports whether b is 1 to 70 bchars, not ending in a space.
func rfc2046Boundary(b string) bool {
	if len(b) < 1 || len(b) > 70 || b[len(b)-1] == ' ' {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("'()+_,-./:=? ", c) >= 0) {
			return false
		}
	}
	return true
}

// TestForwardReference checks the fuzz target's reference on bodies whose
// verdict is known, so that the fuzzer's oracle is itself tested.
func TestForwardReference(t *testing.T) {
	const b = "B"
	ok := "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--B--\r\n"
	for _, tc := range []struct {
		name, boundary, body string
		verdict              int
		code                 string
	}{
		{"plain", b, ok, mustAccept, ""},
		{"invalid boundary", "a@b", ok, mustRefuse, CodeMalformed},
		{"no closing delimiter", b, strings.TrimSuffix(ok, "--B--\r\n"), mustRefuse, ""},
		{"ends after a delimiter line", b, strings.TrimSuffix(ok, "--B--\r\n") + "--B\r\n", mustRefuse, CodeMalformed},
		{"closing delimiter without newline", b, strings.TrimSuffix(ok, "\r\n"), mustAccept, ""},
		{"nameless", b, "--B\r\nContent-Disposition: form-data\r\n\r\nv\r\n--B--\r\n", mustRefuse, CodeMalformed},
		{"field too large", b, "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n" + strings.Repeat("v", fuzzMaxField+1) + "\r\n--B--\r\n", mustRefuse, CodeFieldTooLarge},
		{"binary encoding", b, "--B\r\nContent-Disposition: form-data; name=\"a\"; filename=\"a.bin\"\r\nContent-Transfer-Encoding: Binary\r\n\r\nv\r\n--B--\r\n", mustAccept, ""},
		{"base64 encoding", b, "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: base64\r\n\r\nv\r\n--B--\r\n", mustRefuse, CodeTransferEncoding},
		{"two encodings", b, "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: 8bit\r\nContent-Transfer-Encoding: 8bit\r\n\r\nv\r\n--B--\r\n", mustRefuse, CodeTransferEncoding},
		{"empty file input with data is bounded as a file", b, "--B\r\nContent-Disposition: form-data; name=\"a\"; filename=\"\"\r\n\r\n" + strings.Repeat("v", fuzzMaxField+1) + "\r\n--B--\r\n", mustAccept, ""},
		{"empty file input over max_part_size", b, "--B\r\nContent-Disposition: form-data; name=\"a\"; filename=\"\"\r\n\r\n" + strings.Repeat("v", fuzzMaxPart+1) + "\r\n--B--\r\n", mustRefuse, CodePartTooLarge},
		{"control byte from filename*", b, "--B\r\nContent-Disposition: form-data; name=\"a\"; filename*=UTF-8''%0D%0Ax\r\n\r\nv\r\n--B--\r\n", mustAccept, ""},
		{"declared digest", b, "--B\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-MD5: x\r\n\r\nv\r\n--B--\r\n", either, ""},
	} {
		ref := reference(tc.boundary, []byte(tc.body))
		if ref.verdict != tc.verdict || (tc.code != "" && ref.code != tc.code) {
			t.Errorf("%s: verdict %d %s (%s, Go: %v), want %d %s", tc.name, ref.verdict, ref.code, ref.why, ref.goErr, tc.verdict, tc.code)
		}
	}
}

// fuzzSeeds are the edge cases of integration/README.md as (boundary, body) pairs.
func fuzzSeeds() [][2]string {
	part := func(b, hdr, data string) string { return "--" + b + "\r\n" + hdr + "\r\n" + data + "\r\n" }
	field := func(b, name, v string) string {
		return part(b, "Content-Disposition: form-data; name=\""+name+"\"\r\n", v)
	}
	file := func(b, name, fn, ct, data string) string {
		h := "Content-Disposition: form-data; name=\"" + name + "\"; filename=\"" + fn + "\"\r\n"
		if ct != "" {
			h += "Content-Type: " + ct + "\r\n"
		}
		return part(b, h, data)
	}
	end := func(b string) string { return "--" + b + "--\r\n" }
	md5b64 := func(s string) string { sum := md5.Sum([]byte(s)); return base64.StdEncoding.EncodeToString(sum[:]) } //nolint:gosec
	simple := field("B", "model", "whisper") + file("B", "audio", "a.wav", "audio/wav", "RIFF....WAVE") + end("B")
	lf := strings.ReplaceAll(simple, "\r\n", "\n")
	many := ""
	for range fuzzMaxParts + 2 {
		many += field("E", "e", "")
	}
	return [][2]string{
		{"B", simple},
		{"B", lf},
		{"B", strings.ReplaceAll(simple, "\r\n--B\r\n", "\n--B\r\n")},
		{"B", "preamble\r\n--Bnot a delimiter\r\n" + strings.Replace(simple, "--B\r\n", "--B \t \r\n", 1) + "epilogue\r\n"},
		{"B", strings.TrimSuffix(simple, "\r\n")},
		{"B", simple + field("B", "after", "the closing delimiter: epilogue, ignored") + end("B")},
		{"XyZ", file("XyZ", "f", "f.bin", "", "one\n--XyZ\r\ntwo\r--XyZ--\r\nthree--XyZ four\r\n--XyZx") + end("XyZ")},
		{"XyZ", field("XyZ", "starts", "--XyZ\r\nContent-Disposition: form-data; name=\"smuggled\"\r\n\r\nv") + end("XyZ")},
		{"E", field("E", "e", "") + file("E", "f", "", "", "") + end("E")},
		{"E", many + end("E")},
		{"D", part("D", "Content-Disposition: form-data; name=\"a\"; name=\"b\"\r\n", "v") + end("D")},
		{"D", part("D", "Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\"\r\n", "v") + end("D")},
		{"D", part("D", "Content-Disposition: form-data; name=\"a\"\r\nContent-Type: text/plain\r\nContent-Type: text/html\r\n", "v") + end("D")},
		{"C", part("C", "Content-Disposition: form-data; name=\"q\"\r\nContent-Transfer-Encoding: quoted-printable\r\n", "a=3Db") + end("C")},
		{"C", part("C", "Content-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n", "a=3Db") + end("C")},
		{"E", field("E", "t", "v") + part("E", "Content-Disposition: form-data; name=\"opt\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n", "") + end("E")},
		{"R", part("R", "Content-Disposition: form-data; name=file; filename=n\xc3\xa4me.txt; filename*=utf-8''n%C3%A4me.txt\r\n", "x") + end("R")},
		{"R", part("R", "Content-Disposition: form-data; name=\"f\"; filename*=iso-8859-1''n%E4me.txt\r\n", "x") + end("R")},
		{"R", part("R", "Content-Disposition: form-data; name=f; filename=n\xc3\xa4me.txt\r\n", "x") + end("R")},
		{"R", part("R", "Content-Disposition: form-data; name=\"f\"; filename*0*=utf-8''a; filename*1=\"b;c\"\r\n", "x") + end("R")},
		{"N", part("N", "Content-Disposition: form-data\r\n", "v") + end("N")},
		{"N", part("N", "Content-Disposition: form-data; name=\"\"\r\n", "v") + end("N")},
		{"N", part("N", "Content-Type: text/plain\r\n", "v") + end("N")},
		{"N", part("N", "Content-Disposition: attachment; name=\"a\"\r\n", "v") + end("N")},
		{"T", field("T", "a", "1") + "--T\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f\"\r\n\r\nhalf"},
		{"T", field("T", "a", "1")},
		{"T", field("T", "a", "1") + "--T\r\n"},
		{"T", field("T", "a", "1") + "--T\r\nContent-Disposition: form-da"},
		{"T", field("T", "a", "1") + "--T"},
		{"T", field("T", "a", "1") + "--T-"},
		{"T", ""},
		{"T", "--T--"},
		{"T", "no delimiter at all\r\n"},
		{"R", part("R", "Content-Disposition: form-data; name=\"f\"; filename*=UTF-8''%0D%0Aevil.txt\r\n", "x") + end("R")},
		{"R", part("R", "Content-Disposition: form-data; name*=UTF-8''a%01b\r\n", "x") + end("R")},
		{"R", part("R", "Content-Disposition: form-data; name=\"a\\\"b\\\\c\"; filename=\"C:\\dir\\x.txt\"\r\n", "x") + end("R")},
		{"R", part("R", "Content-Disposition: form-data;\r\n name=\"folded\"\r\n", "x") + end("R")},
		{"M", part("M", "Content-Disposition: form-data; name=\"f\"; filename=\"f\"\r\nContent-MD5: "+md5b64("data")+"\r\n", "data") + end("M")},
		{"M", part("M", "Content-Disposition: form-data; name=\"f\"; filename=\"f\"\r\nContent-MD5: "+md5b64("other")+"\r\n", "data") + end("M")},
		{"M", part("M", "Content-Disposition: form-data; name=\"f\"; filename=\"f\"\r\nContent-Digest: sha-256=:x:\r\n", "data") + end("M")},
		{"H", part("H", "Content-Disposition: form-data; name=\"a\"\r\nX-Pad: "+strings.Repeat("p", fuzzMaxHeader)+"\r\n", "v") + end("H")},
		{"S", field("S", "big", strings.Repeat("f", fuzzMaxField+1)) + end("S")},
		{"S", file("S", "big", "b.bin", "", strings.Repeat("p", fuzzMaxPart+1)) + end("S")},
		{"S", file("S", "ok", "b.bin", "", strings.Repeat("p", fuzzMaxPart)) + end("S")},
		{"a@b", simple},
		{strings.Repeat("b", 71), simple},
		{"ab ", simple},
		{"a b", field("a b", "x", "y") + end("a b")},
		{strings.Repeat("z", 70), field(strings.Repeat("z", 70), "x", "y") + end(strings.Repeat("z", 70))},
	}
}
