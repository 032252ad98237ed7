package main

import (
	"encoding/binary"
	"math/bits"
)

// randReader is an endless, deterministic stream of pseudo-random bytes: the
// same seed gives the same bytes whatever the sizes of the reads. It fills
// the caller's buffer directly with wyrand output, 8 bytes per step, several
// GB/s on one core, so generating a body is never the bottleneck. It is not
// cryptographic, only incompressible and non-periodic.
type randReader struct {
	state uint64
	tail  [8]byte // the last word generated, partly handed out
	ntail int     // bytes of tail not handed out yet, at its end
}

func newRandReader(seed uint64) *randReader {
	return &randReader{state: seed}
}

// next is one step of wyrand (Wang Yi's generator).
func (r *randReader) next() uint64 {
	r.state += 0xa0761d6478bd642f
	hi, lo := bits.Mul64(r.state, r.state^0xe7037ed1a0b428db)
	return hi ^ lo
}

// Read fills p and never fails.
func (r *randReader) Read(p []byte) (int, error) {
	n := 0
	if r.ntail > 0 {
		n = copy(p, r.tail[8-r.ntail:])
		r.ntail -= n
	}
	for ; len(p)-n >= 32; n += 32 {
		q := p[n : n+32]
		binary.LittleEndian.PutUint64(q[0:], r.next())
		binary.LittleEndian.PutUint64(q[8:], r.next())
		binary.LittleEndian.PutUint64(q[16:], r.next())
		binary.LittleEndian.PutUint64(q[24:], r.next())
	}
	for ; len(p)-n >= 8; n += 8 {
		binary.LittleEndian.PutUint64(p[n:], r.next())
	}
	if n < len(p) {
		binary.LittleEndian.PutUint64(r.tail[:], r.next())
		c := copy(p[n:], r.tail[:])
		r.ntail = 8 - c
		n += c
	}
	return n, nil
}
