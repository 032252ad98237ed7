package formreader

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime/multipart"
	"path/filepath"
	"strings"
	"testing"
)

// Limits small enough that inputs of a few hundred bytes reach each of them.
var fuzzLimits = Limits{
	MaxParts: 8, MaxPartSize: 1024, MaxFieldSize: 64,
	MaxPartHeaderSize: 1024, MaxFormHeaderSize: 2048,
	Hash: []string{"sha256"},
}

// FuzzReader reads a boundary and a body with the Reader, the body coming in
// reads of sizes the input chooses, through a buffer that starts small and
// grows (as the handler's does). Properties:
//
//   - it never panics and always ends, with io.EOF or an error;
//   - an error is the reader's *Error, a 4xx with a code, naming the part for
//     a part's fault; never a bare error;
//   - no part hands out more data than its limit, nor the form more parts;
//   - a form read to io.EOF is one Go's mime/multipart reads whole too, with
//     the same parts: names, filenames and bytes.
//
// FuzzForward (caddymodule) checks the other direction, what the gateway
// must accept, against the whole forward path.
func FuzzReader(f *testing.F) {
	f.Add("b", []byte("--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n"), uint8(1))
	f.Add("b", []byte("--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Disposition: form-data; name=\"g\"\r\n\r\n\r\n--b--"), uint8(7))
	f.Add("xyz", []byte("preamble\r\n--xyz\nContent-Disposition: form-data; name=\"a\"\n\n--xy\n--xyz--\n"), uint8(3))
	f.Add("b", []byte("--b\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Transfer-Encoding: base64\r\n\r\neA==\r\n--b--\r\n"), uint8(2))
	f.Add("b", []byte("--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated"), uint8(5))
	f.Add("b", []byte("--b  \r\nContent-Disposition: form-data; name*=utf-8''caf%C3%A9\r\n\r\n--b\r\n\r\n--b--"), uint8(9))
	f.Fuzz(func(t *testing.T, boundary string, body []byte, chop uint8) {
		if boundary == "" || len(boundary) > 70 || strings.ContainsAny(boundary, "\r\n") {
			return // refused before a form is read (the handler's boundaryOf)
		}
		got, err := readAll(boundary, body, int(chop))
		if err == nil {
			want, werr := goParts(boundary, body)
			if werr != nil {
				t.Fatalf("read whole, but mime/multipart fails: %v\nparts: %q", werr, got)
			}
			if !equalParts(got, want) {
				t.Fatalf("parts differ from mime/multipart's:\n got  %q\n want %q", got, want)
			}
			return
		}
		var fe *Error
		if !errors.As(err, &fe) {
			t.Fatalf("a bare error: %v", err)
		}
		if fe.Status < 400 || fe.Status > 499 || fe.Code == "" {
			t.Fatalf("refusal %d %q: want a 4xx with a code", fe.Status, fe.Code)
		}
	})
}

type fuzzPart struct{ field, filename, data string }

// readAll reads every part to its end, checking the limits as it goes.
func readAll(boundary string, body []byte, chop int) ([]fuzzPart, error) {
	src := NewSource(&chopReader{b: body, n: chop%13 + 1})
	in := bufio.NewReaderSize(src, 256)
	r := New(in, src, boundary, fuzzLimits, nopObserver{})
	r.SetGrow(func(left []byte) *bufio.Reader {
		return bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(left)), src), 4096)
	})
	var parts []fuzzPart
	for {
		p, err := r.Next()
		if err == io.EOF {
			return parts, nil
		}
		if err != nil {
			return parts, err
		}
		if len(parts) >= fuzzLimits.MaxParts {
			panic("more parts than max_parts")
		}
		limit := fuzzLimits.MaxFieldSize
		if p.IsFile || p.Filename != "" {
			limit = fuzzLimits.MaxPartSize
		}
		var data bytes.Buffer
		for {
			b, err := p.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return parts, err
			}
			data.Write(b)
			if int64(data.Len()) > limit {
				panic("a part handed out more than its limit")
			}
		}
		parts = append(parts, fuzzPart{p.Field, p.Filename, data.String()})
	}
}

// goParts reads the body with mime/multipart, every part to its end and the
// form to io.EOF.
func goParts(boundary string, body []byte) ([]fuzzPart, error) {
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	var parts []fuzzPart
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return parts, nil
		}
		if err != nil {
			return nil, err
		}
		data, err := io.ReadAll(p)
		if err != nil {
			return nil, err
		}
		parts = append(parts, fuzzPart{p.FormName(), p.FileName(), string(data)})
	}
}

// equalParts compares names and bytes, and filenames where Go reads one (it
// gives only a filename's last path element).
func equalParts(got, want []fuzzPart) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.data != w.data || (w.filename != "" && filepath.Base(g.filename) != w.filename) {
			return false
		}
		if w.field != "" && g.field != w.field {
			return false
		}
	}
	return true
}

// chopReader hands out at most n bytes a read.
type chopReader struct {
	b []byte
	n int
}

func (c *chopReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.n)], c.b)
	c.b = c.b[n:]
	return n, nil
}

type nopObserver struct{}

func (nopObserver) PartStarted(*Part) {}
func (nopObserver) PartEnded(*Part)   {}
