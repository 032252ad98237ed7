package integration

// What the s3 and azure store tests share: the form they store, an upload
// held halfway, and the check of what landed.

import (
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
)

// objectForm is the form of the object store tests: among text fields, files
// of 0 bytes, exactly unit (a part or block), unit+1 and n units and some.
func objectForm(unit int64, n int64) []formPart {
	return []formPart{
		{field: "model", value: "whisper"},
		{field: "empty", filename: "empty.bin", contentType: "application/x-empty", seed: 1},
		{field: "exact", filename: "exact.bin", size: unit, seed: 2},
		{field: "plus", filename: "plus.bin", size: unit + 1, seed: 3},
		{field: "lang", value: "fr"},
		{field: "many", filename: "名前 100%.wav", contentType: "audio/wav", size: n*unit + 12345, seed: 4},
	}
}

// postHeld posts parts to url with c: the body's first sent bytes at once,
// the rest once release is called. The answer (status -1 if none) comes on
// done.
func postHeld(t *testing.T, c *http.Client, url string, parts []formPart, sent int64) (release func(), done <-chan answer) {
	t.Helper()
	body, ct, n := formBody(parts)
	gate := make(chan struct{})
	pr, pw := io.Pipe()
	go func() {
		_, err := io.CopyN(pw, body, sent)
		if err == nil {
			<-gate
			_, err = io.Copy(pw, body)
		}
		body.Close()
		pw.CloseWithError(err)
	}()
	req, err := http.NewRequest(http.MethodPost, url, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	req.ContentLength = n
	answers := make(chan answer, 1)
	go func() {
		res, err := c.Do(req)
		if err != nil {
			pr.CloseWithError(err)
			answers <- answer{status: -1}
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		answers <- answer{status: res.StatusCode, body: b}
	}()
	return func() { close(gate) }, answers
}

// objectAnswer is store mode's answer with an object store.
type objectAnswer struct {
	Parts []struct {
		Field       string            `json:"field"`
		Filename    *string           `json:"filename"`
		ContentType string            `json:"content_type"`
		Bucket      string            `json:"bucket"`
		Key         string            `json:"key"`
		Size        int64             `json:"size"`
		Digests     map[string]string `json:"digests"`
	} `json:"parts"`
	Fields map[string]string `json:"fields"`
}

// objectGetter reads a stored object: its sha256, Content-Type and metadata.
type objectGetter func(t *testing.T, key string) (sum, contentType string, meta map[string]string)

// expectObjects checks the 201 answer to objectForm's parts stored (with
// hash sha256) in bucket under keys that match keys, and what get reads of
// each: byte-identical, with its Content-Type, and its field, filename
// (percent-encoded) and sha256 as metadata.
func expectObjects(t *testing.T, a answer, parts []formPart, bucket string, keys *regexp.Regexp, get objectGetter) {
	t.Helper()
	if a.status != http.StatusCreated {
		t.Fatalf("upload: status %d: %s", a.status, a.body)
	}
	var got objectAnswer
	if err := json.Unmarshal(a.body, &got); err != nil || len(got.Parts) != len(parts) {
		t.Fatalf("answer %s", a.body)
	}
	if got.Fields["model"] != "whisper" || got.Fields["lang"] != "fr" {
		t.Errorf("fields %v", got.Fields)
	}
	want := expected(parts)
	for i, p := range got.Parts {
		if parts[i].filename == "" {
			if p.Key != "" {
				t.Errorf("text field %d stored: %+v", i, p)
			}
			continue
		}
		if p.Bucket != bucket || !keys.MatchString(p.Key) || p.Size != want[i].Size ||
			p.Digests["sha256"] != want[i].SHA256 || p.Field != parts[i].field || p.Filename == nil || *p.Filename != parts[i].filename {
			t.Errorf("part %d: %+v, want %+v", i, p, want[i])
			continue
		}
		sum, ctype, meta := get(t, p.Key)
		if sum != want[i].SHA256 {
			t.Errorf("part %d: stored object differs", i)
		}
		wantType := parts[i].contentType
		if wantType == "" {
			wantType = "application/octet-stream"
		}
		name, _ := url.PathUnescape(meta["filename"])
		field, _ := url.PathUnescape(meta["field"])
		if ctype != wantType || name != parts[i].filename || field != parts[i].field || meta["sha256"] != want[i].SHA256 {
			t.Errorf("part %d: content type %q, metadata %v", i, ctype, meta)
		}
	}
}

// formLength is the length of the body formBody makes of parts.
func formLength(parts []formPart) int64 {
	c := &countWriter{}
	_ = writeForm(multipart.NewWriter(c), parts)
	return c.n
}

// expectPoolBackpressure runs uploads uploads of a file of size bytes each
// through a store whose pool holds 2 buffers of buffer bytes, while the
// server holds the requests that carry the data (counted in held) until
// release is closed: every upload comes to wait for a buffer, none having
// read more from its client than the pool holds; once released, all
// succeed and the buffers are back.
func expectPoolBackpressure(t *testing.T, uploads int, size, buffer int64, held *atomic.Int32, release chan struct{}) {
	t.Helper()
	c := newClient(t)
	waits := metricValue(t, "caddy_stream_proxy_store_buffer_waits_total")
	var wg sync.WaitGroup
	for i := range uploads {
		wg.Go(func() {
			res, body := postForm(t, c, gatewayURL+"/upload", []formPart{{field: "f", filename: "f.bin", size: size, seed: uint64(i)}}, false)
			if res.StatusCode != http.StatusCreated {
				t.Errorf("upload %d: status %d: %s", i, res.StatusCode, body)
			}
		})
	}
	// Two uploads hold a buffer each, whose data the server holds, and wait
	// for a second; the others wait for their first: none reads on.
	waitFor(t, "both buffers' data at the server", func() bool { return held.Load() >= 2 })
	waitFor(t, "every upload waiting for a buffer", func() bool {
		return metricValue(t, "caddy_stream_proxy_store_buffer_waits_total") >= waits+float64(uploads)
	})
	var read int64
	for _, u := range inFlight(t, uploads) {
		read += u.Bytes
	}
	// Two buffers' worth, plus each upload's read buffer (512 KiB) and header.
	if limit := 2*buffer + int64(uploads)<<20; read > limit || held.Load() != 2 {
		t.Errorf("read %d bytes from the clients with %d requests held, want at most %d with 2", read, held.Load(), limit)
	}
	if in := metricValue(t, "caddy_stream_proxy_store_buffers_in_use"); in != 2 {
		t.Errorf("metrics: %v buffers in use, want 2", in)
	}
	close(release)
	wg.Wait()
	if in := metricValue(t, "caddy_stream_proxy_store_buffers_in_use"); in != 0 {
		t.Errorf("metrics: %v buffers in use once done", in)
	}
}
