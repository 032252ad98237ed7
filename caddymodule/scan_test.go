package streamproxy

import (
	"bytes"
	"math/rand/v2"
	"net/http/httptest"
	"testing"
)

// TestFinder checks the delimiter search against bytes.Index, on data made
// of few distinct bytes, where partial and overlapping delimiters abound.
func TestFinder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const alphabet = "ab-\r\n"
	for range 50000 {
		pat := []byte("\r\n--")
		for range 1 + rng.IntN(8) {
			pat = append(pat, alphabet[rng.IntN(len(alphabet))])
		}
		if rng.IntN(2) == 0 {
			pat = pat[1:] // a body with bare LF line ends
		}
		s := make([]byte, rng.IntN(2000))
		for i := range s {
			s[i] = alphabet[rng.IntN(len(alphabet))]
		}
		if rng.IntN(3) == 0 {
			at := rng.IntN(len(s) + 1)
			s = append(s[:at:at], append(pat, s[at:]...)...)
		}
		var d finder
		d.init(pat)
		if got, want := d.index(s), bytes.Index(s, pat); got != want {
			t.Fatalf("index(%q) of %q = %d, want %d", s, pat, got, want)
		}
	}
	// Random bytes, where looks seldom match, with a delimiter at every
	// offset of a look's stride.
	pat := []byte("\r\n--uploadbench-0123456789abcdef")
	var d finder
	d.init(pat)
	for at := range 3 * len(pat) {
		s := make([]byte, 5000)
		for i := range s {
			s[i] = byte(rng.Uint32())
		}
		s = append(s[:at+1000:at+1000], append(pat, s[at+1000:]...)...)
		if got, want := d.index(s), bytes.Index(s, pat); got != want {
			t.Fatalf("delimiter at %d: index = %d, want %d", at+1000, got, want)
		}
	}
}

// BenchmarkFinder measures the delimiter search over a large read buffer of random bytes
// (compressed data) holding no delimiter, against bytes.Index.
func BenchmarkFinder(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := make([]byte, largeBufs.size)
	for i := range s {
		s[i] = byte(rng.Uint32())
	}
	pat := []byte("\r\n--uploadbench-0000000000000001")
	var d finder
	d.init(pat)
	b.Run("finder", func(b *testing.B) {
		b.SetBytes(int64(len(s)))
		for b.Loop() {
			if d.index(s) >= 0 {
				b.Fatal("found")
			}
		}
	})
	b.Run("bytes.Index", func(b *testing.B) {
		b.SetBytes(int64(len(s)))
		for b.Loop() {
			if bytes.Index(s, pat) >= 0 {
				b.Fatal("found")
			}
		}
	})
}

// TestOpenBodyBufferSizes checks which uploads take the large buffers: those
// whose body is not known to be small.
func TestOpenBodyBufferSizes(t *testing.T) {
	h := provision(t, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1")})
	for _, c := range []struct {
		length int64
		want   *bufSet
	}{{100, smallBufs}, {smallBody - 1, smallBufs}, {smallBody, largeBufs}, {8 << 30, largeBufs}, {-1, largeBufs}} {
		r := formRequest("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B--\r\n")
		r.ContentLength = c.length
		u := newUpload(h, httptest.NewRecorder(), r)
		if err := u.checkRequest(); err != nil {
			t.Fatal(err)
		}
		u.openBody()
		got := u.largeSet()
		u.closeBody()
		if got != c.want {
			t.Errorf("Content-Length %d: %d-byte buffers, want %d", c.length, got.size, c.want.size)
		}
	}
	if n := largeTaken.Load(); n != 0 {
		t.Fatalf("%d large sets still taken", n)
	}
}

// TestTakeBufs checks that at most largeUploads uploads hold large buffers,
// that a small one takes none of them, and that a released set is taken again.
func TestTakeBufs(t *testing.T) {
	if s := takeBufs(true); s != smallBufs || largeTaken.Load() != 0 {
		t.Fatalf("a small upload got %d-byte buffers, %d large ones taken", s.size, largeTaken.Load())
	}
	var taken []*bufSet
	for range largeUploads + 3 {
		taken = append(taken, takeBufs(false))
	}
	for i, s := range taken {
		want := largeBufs
		if i >= largeUploads {
			want = smallBufs
		}
		if s != want {
			t.Fatalf("upload %d got %d-byte buffers, want %d", i, s.size, want.size)
		}
	}
	releaseBufs(taken[0])
	if s := takeBufs(false); s != largeBufs {
		t.Fatalf("after a release: %d-byte buffers", s.size)
	}
	releaseBufs(largeBufs)
	for _, s := range taken[1:] {
		releaseBufs(s)
	}
	if n := largeTaken.Load(); n != 0 {
		t.Fatalf("%d large sets still taken", n)
	}
}
