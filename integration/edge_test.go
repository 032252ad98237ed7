package integration

// Edge cases of integration/README.md about the form itself: framing, limits
// and sizes. The helpers they share are in helpers_test.go.

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/streamproxy/caddy-stream-proxy/integration/formtest"
)

// integration/README.md, row 1: the heap stays flat while a large upload
// streams through (the 1 GiB byte-identical transfer itself is
// TestForwardByteIdentical). The live heap is sampled after forced collections,
// so garbage does not count.
func TestEdgeHeapFlatDuringUpload(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)

	// Warm up pools and connections first.
	if res, body := postForm(t, c, gatewayURL+"/upload", sampleForm(1<<20), true); res.StatusCode != 200 {
		t.Fatalf("warm-up: status %d: %s", res.StatusCode, body)
	}
	base := liveHeap()

	stop := make(chan struct{})
	peak := make(chan uint64, 1)
	go func() {
		var top uint64
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				peak <- top
				return
			case <-tick.C:
				top = max(top, liveHeap())
			}
		}
	}()
	const size = 256 << 20
	parts := sampleForm(size)
	res, body := postForm(t, c, gatewayURL+"/upload", parts, true)
	close(stop)
	top := <-peak
	if res.StatusCode != 200 {
		t.Fatalf("status %d: %s", res.StatusCode, body)
	}
	got := be.waitRequests(t, 2)
	if len(got) != 2 || got[1].Err != nil || comparableParts(got[1].Parts) != comparableParts(expected(parts)) {
		t.Fatalf("backend saw %+v", got)
	}
	growth := int64(top) - int64(base)
	t.Logf("live heap: %d MiB before, peak %d MiB during a %d MiB upload (growth %d KiB)", base>>20, top>>20, (size+size/3)>>20, growth>>10)
	if growth > 32<<20 {
		t.Errorf("live heap grew by %d MiB during the upload; want it flat (under 32 MiB)", growth>>20)
	}
}

// integration/README.md, row 4: the body limit is exact (a body of exactly
// max_body_size passes, one byte more is refused mid-stream), and Caddy's own
// request_body max_size is reported the same way.
func TestEdgeBodyLimitExact(t *testing.T) {
	const limit = 1 << 20
	// The size of a form whose file is empty: every formBody boundary has the
	// same length, so the overhead is the same for every file size.
	_, _, overhead := formBody([]formPart{{field: "f", filename: "f.bin", size: 0}})
	form := func(extra int64) []formPart {
		return []formPart{{field: "f", filename: "f.bin", size: limit - overhead + extra, seed: 7}}
	}

	t.Run("max_body_size", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			extra   int64
			chunked bool
			status  int
		}{
			{"exactly the limit, chunked", 0, true, 200},
			{"exactly the limit, content-length", 0, false, 200},
			{"one byte over, chunked", 1, true, 413},
		} {
			t.Run(tc.name, func(t *testing.T) {
				be := newBackend(t)
				startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_body_size %d
}`, be.URL, limit))
				parts := form(tc.extra)
				res, body := postForm(t, newClient(t), gatewayURL+"/upload", parts, tc.chunked)
				if tc.status == 200 {
					if res.StatusCode != 200 {
						t.Fatalf("status %d: %s", res.StatusCode, body)
					}
					expectComplete(t, be, expected(parts))
					return
				}
				expectRefusal(t, res, body, 413, "body_too_large", "max_body_size")
				expectAborted(t, be)
			})
		}
	})

	t.Run("request_body max_size", func(t *testing.T) {
		be := newBackend(t)
		startGateway(t, fmt.Sprintf(`request_body /upload* {
	max_size %d
}
stream_proxy /upload* %s`, limit, be.URL))
		res, body := postForm(t, newClient(t), gatewayURL+"/upload", form(64<<10), true)
		expectRefusal(t, res, body, 413, "body_too_large", "request_body max_size")
		expectAborted(t, be)
	})
}

// integration/README.md, row 5: part and field limits are exact and name the
// part; a field over max_field_size is refused like a file over max_part_size.
func TestEdgePartAndFieldLimitsExact(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s {
	max_part_size 64KiB
	max_field_size 1KiB
}`, be.URL))
	c := newClient(t)

	ok := []formPart{
		{field: "note", value: strings.Repeat("n", 1024)},
		{field: "f", filename: "f.bin", contentType: "application/octet-stream", size: 64 << 10, seed: 1},
	}
	res, body := postForm(t, c, gatewayURL+"/upload", ok, true)
	if res.StatusCode != 200 {
		t.Fatalf("parts of exactly the limits: status %d: %s", res.StatusCode, body)
	}
	expectComplete(t, be, expected(ok))

	for i, tc := range []struct {
		name  string
		parts []formPart
		code  string
		limit string
		index int
		field string
		file  string
	}{
		{"field one byte over", []formPart{
			{field: "model", value: "m"},
			{field: "note", value: strings.Repeat("n", 1025)},
		}, "field_too_large", "max_field_size", 1, "note", ""},
		{"file one byte over", []formPart{
			{field: "f", filename: "f.bin", size: 64<<10 + 1, seed: 2},
		}, "part_too_large", "max_part_size", 0, "f", "f.bin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := postForm(t, c, gatewayURL+"/upload", tc.parts, false)
			e := expectRefusal(t, res, body, 413, tc.code, tc.limit)
			expectPart(t, e, tc.index, tc.field, tc.file)
			got := be.waitRequests(t, i+2)
			if len(got) != i+2 || got[i+1].Err == nil {
				t.Fatalf("backend must see an aborted request, saw %+v", got[len(got)-1])
			}
		})
	}

	// A part with filename="" is no file (row 31), but it is bounded as one:
	// max_part_size applies to it, not max_field_size.
	const b = "EmptyFilename"
	raw := "--" + b + "\r\nContent-Disposition: form-data; name=\"f\"; filename=\"\"\r\n\r\n" +
		strings.Repeat("z", 4000) + "\r\n--" + b + "--\r\n"
	res, body = postRaw(t, c, "multipart/form-data; boundary="+b, []byte(raw), false)
	if res.StatusCode != 200 {
		t.Fatalf("file part with an empty filename: status %d: %s", res.StatusCode, body)
	}
	if got := be.waitRequests(t, 4); len(got) != 4 || got[3].Err != nil || len(got[3].Parts) != 1 || got[3].Parts[0].Size != 4000 {
		t.Fatalf("backend saw %+v", got[len(got)-1])
	}
}

// integration/README.md, row 6: 100 000 empty parts, streamed from a generator,
// are refused by the default max_parts (1000); exactly 1000 pass.
func TestEdgeManyEmptyParts(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)
	empty := func(i int) string {
		if i%2 == 0 {
			return "Content-Disposition: form-data; name=\"e\"\r\n\r\n"
		}
		return "Content-Disposition: form-data; name=\"f\"; filename=\"e.bin\"\r\n\r\n"
	}

	gen := &partStream{boundary: "ManyEmptyParts", n: 100_000, part: empty}
	res, body := postStream(t, c, "multipart/form-data; boundary=ManyEmptyParts", gen, false, 0)
	expectRefusal(t, res, body, 413, "too_many_parts", "max_parts")
	expectAborted(t, be)
	t.Logf("the client had generated %d parts (%d KiB) when the refusal came", gen.parts.Load(), gen.sent.Load()>>10)

	gen = &partStream{boundary: "ManyEmptyParts", n: 1000, part: empty}
	res, body = postStream(t, c, "multipart/form-data; boundary=ManyEmptyParts", gen, false, 0)
	if res.StatusCode != 200 {
		t.Fatalf("exactly max_parts parts: status %d: %s", res.StatusCode, body)
	}
	got := be.waitRequests(t, 2)
	if len(got) != 2 || got[1].Err != nil || len(got[1].Parts) != 1000 {
		t.Fatalf("backend saw %d requests; last: err %v, %d parts", len(got), got[len(got)-1].Err, len(got[len(got)-1].Parts))
	}
	for i, p := range got[1].Parts {
		if p.Size != 0 || (i%2 == 0) != (p.Filename == "") {
			t.Fatalf("part %d: %+v", i, p)
		}
	}
}

// integration/README.md, row 7: a part header of 1 MiB, or of 20 000 lines, is
// refused with 431 at max_part_header_size (default 16 KiB), wherever the part
// is; a header just under the limit passes.
func TestEdgePartHeaderTooLarge(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)
	const b = "HeaderLimits"
	file := "--" + b + "\r\nContent-Disposition: form-data; name=\"first\"; filename=\"a.bin\"\r\n\r\n" +
		strings.Repeat("a", 256<<10) + "\r\n"

	requests := 0
	for _, tc := range []struct {
		name   string
		before string // parts before the big header
		extra  string // header lines added to the part
		index  int
		ok     bool
	}{
		{"one line of 1 MiB", "", "X-Pad: " + strings.Repeat("p", 1<<20) + "\r\n", 0, false},
		{"20000 lines", "", strings.Repeat("X-Line: v\r\n", 20_000), 0, false},
		{"1 MiB line after a file", file, "X-Pad: " + strings.Repeat("p", 1<<20) + "\r\n", 1, false},
		{"just under 16 KiB", file, "X-Pad: " + strings.Repeat("p", 15<<10) + "\r\n", 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunked := range []bool{false, true} {
				raw := tc.before + "--" + b + "\r\nContent-Disposition: form-data; name=\"big\"\r\n" + tc.extra +
					"\r\nvalue\r\n--" + b + "--\r\n"
				res, body := postRaw(t, c, "multipart/form-data; boundary="+b, []byte(raw), chunked)
				requests++
				got := be.waitRequests(t, requests)
				if len(got) != requests {
					t.Fatalf("backend got %d requests, want %d", len(got), requests)
				}
				last := got[requests-1]
				if tc.ok {
					if res.StatusCode != 200 || last.Err != nil || len(last.Parts) != 2 {
						t.Fatalf("chunked=%v: status %d, backend %+v: %s", chunked, res.StatusCode, last, body)
					}
					continue
				}
				e := expectRefusal(t, res, body, 431, "part_header_too_large", "max_part_header_size")
				if e.Error.Part == nil || e.Error.Part.Index != tc.index {
					t.Errorf("chunked=%v: error names part %+v, want index %d", chunked, e.Error.Part, tc.index)
				}
				if last.Err == nil {
					t.Fatalf("chunked=%v: backend must see an aborted request, saw %+v", chunked, last)
				}
			}
		})
	}
}

// integration/README.md, rows 8 and 9: boundary parameters and part headers the
// gateway must refuse, with the code and the part named, and the backend
// aborted once it was dialled; and the boundaries RFC 2046 allows, accepted.
func TestEdgeBoundaryAndDisposition(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)
	part := func(b, hdr, data string) string { return "--" + b + "\r\n" + hdr + "\r\n" + data + "\r\n" }
	okForm := func(b string) string {
		return part(b, "Content-Disposition: form-data; name=\"a\"\r\n", "1") + "--" + b + "--\r\n"
	}

	for _, tc := range []struct {
		name, contentType, body string
		status                  int
		index                   int // part named in the error, -1: none
	}{
		{"70-character boundary", "multipart/form-data; boundary=" + strings.Repeat("b", 70), okForm(strings.Repeat("b", 70)), 200, -1},
		{"1-character boundary", "multipart/form-data; boundary=1", okForm("1"), 200, -1},
		{"quoted boundary with space", `multipart/form-data; boundary="a b:c"`, okForm("a b:c"), 200, -1},
		{"case of the media type", "Multipart/Form-Data; boundary=x", okForm("x"), 200, -1},
		{"boundary with a forbidden character", `multipart/form-data; boundary="a@b"`, okForm("a@b"), 400, -1},
		{"boundary ending in a space", `multipart/form-data; boundary="ab "`, okForm("ab "), 400, -1},
		{"boundary parameter unparsable", `multipart/form-data; boundary="abc`, okForm("abc"), 400, -1},
		{"no Content-Disposition", "multipart/form-data; boundary=x",
			part("x", "Content-Type: text/plain\r\n", "v") + "--x--\r\n", 400, 0},
		{"two Content-Disposition", "multipart/form-data; boundary=x",
			part("x", "Content-Disposition: form-data; name=\"a\"\r\nContent-Disposition: form-data; name=\"b\"\r\n", "v") + "--x--\r\n", 400, 0},
		{"empty name", "multipart/form-data; boundary=x",
			part("x", "Content-Disposition: form-data; name=\"a\"\r\n", "1") +
				part("x", "Content-Disposition: form-data; name=\"\"\r\n", "v") + "--x--\r\n", 400, 1},
		{"duplicate filename", "multipart/form-data; boundary=x",
			part("x", "Content-Disposition: form-data; name=\"a\"; filename=\"a.txt\"; filename=\"b.txt\"\r\n", "v") + "--x--\r\n", 400, 0},
		{"disposition not form-data", "multipart/form-data; boundary=x",
			part("x", "Content-Disposition: attachment; name=\"a\"\r\n", "v") + "--x--\r\n", 400, 0},
		{"two Content-Type", "multipart/form-data; boundary=x",
			part("x", "Content-Disposition: form-data; name=\"a\"\r\nContent-Type: text/plain\r\nContent-Type: image/png\r\n", "v") + "--x--\r\n", 400, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(be.received())
			res, body := postRaw(t, c, tc.contentType, []byte(tc.body), false)
			if tc.status == 200 {
				if res.StatusCode != 200 {
					t.Fatalf("status %d: %s", res.StatusCode, body)
				}
				return
			}
			e := expectRefusal(t, res, body, tc.status, "malformed_multipart", "")
			if tc.index < 0 {
				// Refused from the request header: the backend is never
				// dialled, which its count tells once the handler returned.
				inFlight(t, 0)
				if n := len(be.received()); n != before {
					t.Errorf("backend got %d requests for a request refused from its header", n-before)
				}
				return
			}
			if e.Error.Part == nil || e.Error.Part.Index != tc.index {
				t.Errorf("error names part %+v, want index %d", e.Error.Part, tc.index)
			}
			got := be.waitRequests(t, before+1)
			if len(got) != before+1 || got[before].Err == nil {
				t.Fatalf("backend must see an aborted request, saw %+v", got[before:])
			}
		})
	}
}

// integration/README.md, row 10: data containing the client's boundary without
// the leading CR (or followed by other characters) is data; the backend sees
// exactly the parts Go's parser sees in the client's body.
func TestEdgeBoundaryLookalikesInData(t *testing.T) {
	rec := newRecorder(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, rec.URL))
	c := newClient(t)
	const b = "XyZzy"
	part := func(hdr, data string) string { return "--" + b + "\r\n" + hdr + "\r\n" + data + "\r\n" }
	file := func(name, data string) string {
		return part("Content-Disposition: form-data; name=\""+name+"\"; filename=\""+name+".bin\"\r\nContent-Type: application/octet-stream\r\n", data)
	}
	big := strings.Repeat("0123456789abcdef", 1024) // pushes lookalikes across buffer edges
	body := file("lf", "one\n--"+b+"\r\ntwo\n--"+b+"--\nthree") +
		file("cr", "one\r--"+b+"\r\ntwo") +
		file("glued", "one--"+b+"two--"+b+"--") +
		file("suffix", "one\r\n--"+b+"x\r\ntwo\r\n--"+b+"-x\r\n") +
		file("edge", big[:4090]+"\n--"+b+"\r\n"+big[:5000]+"\r--"+b+"--\r\n"+big) +
		part("Content-Disposition: form-data; name=\"text\"\r\n", "--"+b+"X is data") +
		// A delimiter right at the start of a part's data ends the part
		// there, for Go's parser: "starts" is empty and "smuggled" follows.
		part("Content-Disposition: form-data; name=\"starts\"\r\n",
			"--"+b+"\r\nContent-Disposition: form-data; name=\"smuggled\"\r\n\r\nvalue") +
		"--" + b + "--\r\n"

	want, err := formtest.Parse(strings.NewReader(body), b)
	if err != nil {
		t.Fatalf("Go's parser refuses the test body: %v", err)
	}
	if len(want) != 8 || want[6].Field != "starts" || len(want[6].Data) != 0 || want[7].Field != "smuggled" {
		t.Fatalf("Go's parser sees %d parts, the test expects 8:\n%s", len(want), formtest.Describe(want))
	}
	for _, chunked := range []bool{false, true} {
		res, out := postRaw(t, c, "multipart/form-data; boundary="+b, []byte(body), chunked)
		if res.StatusCode != 200 {
			t.Fatalf("chunked=%v: status %d: %s", chunked, res.StatusCode, out)
		}
	}
	got := rec.wait(2)
	if len(got) != 2 {
		t.Fatalf("backend got %d requests, want 2", len(got))
	}
	for i, r := range got {
		parts, err := r.parts()
		if err != nil || r.err != nil {
			t.Fatalf("request %d: backend stream does not parse: %v %v", i, err, r.err)
		}
		if w, h := formtest.Describe(want), formtest.Describe(parts); w != h {
			t.Errorf("request %d: backend saw\n%s\nGo's parser sees\n%s", i, h, w)
		}
	}
}

// integration/README.md, row 11: LF-only line endings, a preamble, an epilogue
// and transport padding are accepted; the preamble and the epilogue are not
// forwarded.
func TestEdgeLenientFraming(t *testing.T) {
	rec := newRecorder(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, rec.URL))
	c := newClient(t)
	const b = "Lenient"
	const preamble = "PREAMBLE-TEXT that MIME readers ignore.\r\n--Lenientish is not a delimiter\r\n"
	const epilogue = "EPILOGUE-TEXT, also ignored.\r\n"

	crlf := preamble +
		"--" + b + " \t \r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nalpha\r\n" +
		"--" + b + "\t\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\nfile\r\ndata\r\n" +
		"--" + b + "--  \r\n" + epilogue
	lf := strings.ReplaceAll(strings.ReplaceAll(crlf, "\r\n", "\n"), "\r", "")
	noFinalNewline := strings.TrimSuffix(strings.TrimSuffix(crlf, epilogue), "  \r\n")

	longPreamble := strings.Repeat("PREAMBLE line that a MIME reader skips, one of many.\r\n", 1200) + crlf

	n := 0
	for _, tc := range []struct{ name, body string }{
		{"CRLF, preamble, padding, epilogue", crlf},
		{"LF only", lf},
		{"closing delimiter without newline", noFinalNewline},
		{"preamble of 64 KiB in short lines", longPreamble},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := formtest.Parse(strings.NewReader(tc.body), b)
			if err != nil || len(want) != 2 {
				t.Fatalf("Go's parser: %d parts, %v", len(want), err)
			}
			res, out := postRaw(t, c, "multipart/form-data; boundary="+b, []byte(tc.body), false)
			if res.StatusCode != 200 {
				t.Fatalf("status %d: %s", res.StatusCode, out)
			}
			n++
			got := rec.wait(n)
			if len(got) != n {
				t.Fatalf("backend got %d requests, want %d", len(got), n)
			}
			r := got[n-1]
			parts, err := r.parts()
			if err != nil || r.err != nil {
				t.Fatalf("backend stream does not parse: %v %v", err, r.err)
			}
			if w, h := formtest.Describe(want), formtest.Describe(parts); w != h {
				t.Errorf("backend saw\n%s\nGo's parser sees\n%s", h, w)
			}
			for _, s := range []string{"PREAMBLE", "Lenientish", "EPILOGUE"} {
				if bytes.Contains(r.body, []byte(s)) {
					t.Errorf("%q was forwarded to the backend", s)
				}
			}
			if bytes.Contains(r.body, []byte("--"+b)) {
				t.Error("the client's boundary was forwarded; want a fresh one")
			}
		})
	}
}

// integration/README.md, row 12: parts of every size from 4000 to 4200 bytes,
// around the parser's 4 KiB buffer, arrive byte-exact: files and fields, with
// the shortest and the longest boundaries.
func TestEdgeEverySize4000To4200(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)
	var files, fields []formPart
	for size := 4000; size <= 4200; size++ {
		files = append(files, formPart{field: fmt.Sprintf("f%d", size), filename: fmt.Sprintf("%d.bin", size),
			contentType: "application/octet-stream", size: int64(size), seed: uint64(size)})
		v := strings.Repeat(string(rune('a'+size%26)), size-1) + "\r"
		fields = append(fields, formPart{field: fmt.Sprintf("t%d", size), value: v})
	}
	for i, tc := range []struct {
		name     string
		parts    []formPart
		boundary string
		chunked  bool
	}{
		{"files, content-length", files, "", false},
		{"files, 70-character boundary, chunked", files, strings.Repeat("Z", 70), true},
		{"fields, 1-character boundary, chunked", fields, "z", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			var ct string
			var n int64
			if tc.boundary == "" {
				body, ct, n = formBody(tc.parts)
			} else {
				body, ct, n = formBodyBoundary(tc.parts, tc.boundary)
			}
			res, out := postStream(t, c, ct, body, !tc.chunked, n)
			if res.StatusCode != 200 {
				t.Fatalf("status %d: %s", res.StatusCode, out)
			}
			got := be.waitRequests(t, i+1)
			if len(got) != i+1 || got[i].Err != nil {
				t.Fatalf("backend saw %d requests, last err %v", len(got), got[len(got)-1].Err)
			}
			if w, h := comparableParts(expected(tc.parts)), comparableParts(got[i].Parts); w != h {
				t.Fatalf("backend saw\n%s\nwant\n%s", h, w)
			}
		})
	}
}

// integration/README.md, row 13: a body that ends inside a part, or without the
// closing delimiter, is refused with 400 naming the part, and the backend
// request fails; it never ends cleanly.
func TestEdgeTruncatedBody(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)
	parts := []formPart{
		{field: "model", value: "m"},
		{field: "audio", filename: "talk.wav", contentType: "audio/wav", size: 1 << 20, seed: 9},
	}
	full, ct := formBytes(t, parts, "Truncated")
	dataStart := bytes.Index(full, []byte("audio/wav\r\n\r\n")) + len("audio/wav\r\n\r\n")
	end := bytes.LastIndex(full, []byte("\r\n--Truncated--"))

	cut := func(tail string) []byte { return append(append([]byte{}, full[:end]...), tail...) }
	for _, tc := range []struct {
		name  string
		body  []byte
		index int // part named in the error; -1: any; -2: any, and 431 will do too
	}{
		{"ends mid-part", full[:dataStart+600<<10], 1},
		{"ends right after the part's data", full[:end], 1},
		{"ends with the delimiter, no dashes", cut("\r\n--Truncated"), -1},
		{"ends with one closing dash", cut("\r\n--Truncated-"), -1},
		{"ends after a delimiter line", cut("\r\n--Truncated\r\n"), -1},
		{"ends after a delimiter line with padding", cut("\r\n--Truncated \t\r\n"), -1},
		{"ends in a part header", cut("\r\n--Truncated\r\nContent-Disposition: form-da"), -1},
		{"ends after a part header", cut("\r\n--Truncated\r\nContent-Disposition: form-data; name=\"x\"\r\n"), -1},
		{"ends in a 17 KiB part header", cut("\r\n--Truncated\r\nContent-Disposition: form-data; name=\"x\"\r\nX-Pad: " + strings.Repeat("p", 17<<10)), -2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunked := range []bool{false, true} {
				before := len(be.received())
				res, out := postRaw(t, c, ct, tc.body, chunked)
				if tc.index == -2 && res.StatusCode == 431 {
					expectRefusal(t, res, out, 431, "part_header_too_large", "max_part_header_size")
				} else {
					expectRefusal(t, res, out, 400, "malformed_multipart", "")
				}
				if tc.index >= 0 {
					expectPart(t, decodeError(t, out), tc.index, "audio", "talk.wav")
				}
				got := be.waitRequests(t, before+1)
				if len(got) != before+1 || got[before].Err == nil {
					t.Fatalf("chunked=%v: backend must see a failed request, saw %+v", chunked, got[len(got)-1])
				}
			}
		})
	}
}

// integration/README.md, row 23: a Content-Transfer-Encoding that changes the
// bytes (or that the gateway does not know) is refused with 400, even after a
// file has already been streamed; the backend request is aborted. (The identity
// ones, binary, 8bit and 7bit, pass: TestEdgeIdentityTransferEncoding, row 32.)
func TestEdgeContentTransferEncoding(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)
	const b = "CTE"
	head := "--" + b + "\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n" +
		"--" + b + "\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.bin\"\r\n\r\n" +
		strings.Repeat("d", 256<<10) + "\r\n"
	for i, hdr := range []string{
		"Content-Transfer-Encoding: base64",
		"Content-Transfer-Encoding: quoted-printable",
		"Content-Transfer-Encoding: x-uuencode",
		"Content-Transfer-Encoding: binary\r\nContent-Transfer-Encoding: base64",
		"Content-Transfer-Encoding: 8bit; x=y",
		"content-transfer-encoding: BASE64",
	} {
		t.Run(hdr, func(t *testing.T) {
			body := head + "--" + b + "\r\nContent-Disposition: form-data; name=\"enc\"; filename=\"e.txt\"\r\n" + hdr +
				"\r\n\r\naGVsbG8=\r\n--" + b + "--\r\n"
			res, out := postRaw(t, c, "multipart/form-data; boundary="+b, []byte(body), i%2 == 1)
			e := expectRefusal(t, res, out, 400, "content_transfer_encoding", "")
			if e.Error.Part == nil || e.Error.Part.Index != 2 {
				t.Errorf("error names part %+v, want index 2", e.Error.Part)
			}
			got := be.waitRequests(t, i+1)
			if len(got) != i+1 || got[i].Err == nil {
				t.Fatalf("backend must see an aborted request, saw %+v", got[len(got)-1])
			}
		})
	}
}

// integration/README.md, row 23, continued: the refusal names the part by its
// field and filename too, as the other refusals do.
func TestEdgeContentTransferEncodingNamesField(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	body := "--CTE\r\nContent-Disposition: form-data; name=\"enc\"; filename=\"e.txt\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--CTE--\r\n"
	res, out := postRaw(t, newClient(t), "multipart/form-data; boundary=CTE", []byte(body), false)
	e := expectRefusal(t, res, out, 400, "content_transfer_encoding", "")
	expectPart(t, e, 0, "enc", "e.txt")
	expectAborted(t, be)
}

// integration/README.md, row 9, continued: names and filenames are forwarded so
// that the backend reads back what the gateway checked: quotes and backslashes
// escaped, CR and LF from RFC 2231 (filename*=) percent-encoded, never a header
// line broken.
func TestEdgeForwardedNames(t *testing.T) {
	be := newBackend(t)
	startGateway(t, fmt.Sprintf(`stream_proxy /upload* %s`, be.URL))
	c := newClient(t)
	const b = "Names"
	for _, tc := range []struct {
		name, disposition string
		field, filename   string // as the backend must read them
	}{
		{"quotes and backslashes", `form-data; name="a\"b\\c"; filename="x\"y.txt"`, `a"b\c`, `x"y.txt`},
		{"UTF-8 filename", `form-data; name="f"; filename="résumé ✓.pdf"`, "f", "résumé ✓.pdf"},
		{"RFC 2231 CR LF", `form-data; name="f"; filename*=UTF-8''%0D%0AX-Evil: 1.txt`, "f", "%0D%0AX-Evil: 1.txt"},
		{"RFC 2231 control byte", `form-data; name*=UTF-8''a%01b; filename="x.txt"`, "a\x01b", "x.txt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(be.received())
			body := "--" + b + "\r\nContent-Disposition: " + tc.disposition + "\r\n\r\ndata\r\n--" + b + "--\r\n"
			res, out := postRaw(t, c, "multipart/form-data; boundary="+b, []byte(body), false)
			if res.StatusCode == 400 && res.Header.Get("Content-Type") == "application/json" {
				if e := decodeError(t, out); e.Error.Code == "malformed_multipart" {
					return // refusing the name is fine too
				}
			}
			if res.StatusCode != 200 {
				t.Fatalf("status %d: %s", res.StatusCode, out)
			}
			got := be.waitRequests(t, before+1)
			if len(got) != before+1 || got[before].Err != nil || len(got[before].Parts) != 1 {
				t.Fatalf("backend saw %+v", got[len(got)-1])
			}
			if p := got[before].Parts[0]; p.Field != tc.field || p.Filename != tc.filename {
				t.Errorf("backend read name %q filename %q, want %q %q", p.Field, p.Filename, tc.field, tc.filename)
			}
			for k := range got[before].Header {
				if strings.EqualFold(k, "X-Evil") {
					t.Error("a header was injected")
				}
			}
		})
	}
}
