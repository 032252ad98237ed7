package formreader

import (
	"bytes"
	"math/rand/v2"
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
	s := make([]byte, 512<<10 /* the handler's large read buffer */)
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
