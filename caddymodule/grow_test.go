package streamproxy

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"net/http/httptest"
	"strings"
	"testing"
)

// trickle hands out at most n bytes a read, as a slow client's body does.
type trickle struct {
	r io.Reader
	n int
}

func (t trickle) Read(p []byte) (int, error) { return t.r.Read(p[:min(len(p), t.n)]) }

// TestBuffersGrowOnlyForFastClients checks that an upload whose reads bring
// little stays on the small buffers (no large set taken; what it writes is sent before each read), that one whose reads
// fill them moves to its large set, and that
// both forward the same bytes, delimiter-like bytes held back across the
// move among them.
func TestBuffersGrowOnlyForFastClients(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef\r\n--C"), 3<<10) // 63 KiB, with near-delimiters
	body := "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n" + string(data) + "\r\n--B--\r\n"
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1")})
	for _, c := range []struct {
		name string
		read int // bytes a read brings at most
		grow bool
	}{{"slow", 1000, false}, {"fast", 1 << 20, true}} {
		t.Run(c.name, func(t *testing.T) {
			r := formRequest(body)
			r.Body = io.NopCloser(trickle{strings.NewReader(body), c.read})
			u := newUpload(h, httptest.NewRecorder(), r)
			if err := u.checkRequest(); err != nil {
				t.Fatal(err)
			}
			form := u.openBody()
			var out bytes.Buffer
			bw := u.newFlusher()
			mw := newFormWriter(bw)
			err := u.feed(&out, bw, nil, func() error {
				if err := u.forward(form, mw); err != nil {
					return err
				}
				return mw.Close()
			})
			grownIn, grownOut := u.in.Size() != startSize, bw.set != nil
			bw.release()
			u.closeBody()
			if err != nil {
				t.Fatal(err)
			}
			if grownIn != c.grow || grownOut != c.grow {
				t.Errorf("read buffer grown %v, write buffer grown %v; want both %v", grownIn, grownOut, c.grow)
			}
			_, params, _ := mime.ParseMediaType(mw.FormDataContentType())
			p, err := multipart.NewReader(&out, params["boundary"]).NextPart()
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := io.ReadAll(p); !bytes.Equal(got, data) {
				t.Errorf("forwarded %d bytes, not the %d sent", len(got), len(data))
			}
		})
	}
	if n := largeTaken.Load(); n != 0 {
		t.Fatalf("%d large sets still taken", n)
	}
}

// testFlusher is an upload's flusher writing into the buffer returned, both
// let go when the test ends.
func testFlusher(t *testing.T) (*idleFlusher, *bytes.Buffer) {
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1")})
	u := newUpload(h, httptest.NewRecorder(), formRequest("--B--\r\n"))
	f := u.newFlusher()
	t.Cleanup(func() {
		f.release()
		u.closeBody()
	})
	out := new(bytes.Buffer)
	f.reset(out)
	return f, out
}

// TestFlusherGrowsOnlyWhenFilled checks that writes flushed before they fill
// the small buffer, as the idle flush does while a slow client pauses, keep
// it, and that once a write fills it the next moves to the large set.
func TestFlusherGrowsOnlyWhenFilled(t *testing.T) {
	f, out := testFlusher(t)
	chunk := bytes.Repeat([]byte("x"), 1000)
	for range 20 {
		f.Write(chunk)
		f.Flush()
	}
	if f.set != nil {
		t.Fatalf("flushed small writes moved to %d-byte buffers", f.set.size)
	}
	for range 6 {
		f.Write(chunk)
	}
	f.Flush()
	if f.set == nil {
		t.Fatal("writes that filled the small buffer kept it")
	}
	if out.Len() != 26*len(chunk) {
		t.Fatalf("sent %d bytes, want %d", out.Len(), 26*len(chunk))
	}
}

// TestFlusherHoldsNoBufferWhileReadWaits checks that, until the client proves
// fast, what was written is sent before each read from the client and the
// small writer given back: an upload whose read waits holds no write buffer.
func TestFlusherHoldsNoBufferWhileReadWaits(t *testing.T) {
	f, out := testFlusher(t)
	chunk := bytes.Repeat([]byte("x"), 1000)
	for i := range 10 {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(chunk[:10]); err != nil {
			t.Fatal(err)
		}
		f.beforeRead()
		if f.out != nil {
			t.Fatalf("read %d: a write buffer is held while the read waits", i)
		}
		if want := (i + 1) * 1010; out.Len() != want {
			t.Fatalf("read %d: %d bytes sent before it, want %d", i, out.Len(), want)
		}
		f.afterRead()
	}
	if f.set != nil {
		t.Fatalf("small writes moved to %d-byte buffers", f.set.size)
	}
}

// watched is a client body that reports each read to seen before it reads.
type watched struct {
	r    io.Reader
	seen func(p []byte)
}

func (w watched) Read(p []byte) (int, error) {
	w.seen(p)
	return w.r.Read(p)
}

// TestReaderParkedWhileReadWaits checks that, until the client proves fast,
// the upload gives its read buffer back before each read of part data that
// may wait (it reads one byte, the server's connection buffering the rest),
// that the bytes after it come in the same read, and that what is forwarded
// is what was sent, near-delimiters held back across the waits among it.
func TestReaderParkedWhileReadWaits(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef\r\n--C"), 1<<10) // 21 KiB, with near-delimiters
	body := "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\r\n" + string(data) + "\r\n--B--\r\n"
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1")})
	r := formRequest(body)
	var u *upload
	var waits, heldWhileWaiting, reads int
	r.Body = io.NopCloser(watched{trickle{strings.NewReader(body), 1000}, func(p []byte) {
		reads++
		if len(p) == 1 {
			waits++
			if u.in != nil {
				heldWhileWaiting++
			}
		}
	}})
	u = newUpload(h, httptest.NewRecorder(), r)
	if err := u.checkRequest(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := forwardTo(u, &out)
	if err != nil {
		t.Fatal(err)
	}
	if waits == 0 || heldWhileWaiting != 0 {
		t.Fatalf("%d one-byte reads, %d of them with a read buffer held", waits, heldWhileWaiting)
	}
	if max := 3 * (len(body)/1000 + 1); reads > max {
		t.Errorf("%d reads of a body sent 1000 bytes at a time, want at most %d", reads, max)
	}
	_, params, _ := mime.ParseMediaType("multipart/form-data; boundary=" + forwardedBoundary(t, out.Bytes()))
	p, err := multipart.NewReader(&out, params["boundary"]).NextPart()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(p); !bytes.Equal(got, data) {
		t.Errorf("forwarded %d bytes, not the %d sent", len(got), len(data))
	}
}

// forwardedBoundary is the boundary of a form re-encoded by forwardTo: its
// first line without the leading dashes.
func forwardedBoundary(t *testing.T, form []byte) string {
	line, _, ok := bytes.Cut(form, []byte("\r\n"))
	if !ok || !bytes.HasPrefix(line, []byte("--")) {
		t.Fatalf("forwarded form starts with %q", form[:min(len(form), 80)])
	}
	return string(line[2:])
}
