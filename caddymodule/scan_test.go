package streamproxy

import (
	"net/http/httptest"
	"testing"
)

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
