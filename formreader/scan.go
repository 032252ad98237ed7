package formreader

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/textproto"
)

// This file is the multipart parser under Reader. It reads a body as
// mime/multipart's Reader.NextRawPart and Part.Read do, rule for rule:
// delimiter lines with transport padding, bodies with bare LF line ends, a
// skipped preamble and epilogue, a part that may end at "--boundary" followed
// by a space, tab, CR, LF, "--" or the body's end. FuzzForward checks every
// body against mime/multipart itself.
//
// It is not mime/multipart because that reads through a private 4 KiB buffer,
// which costs a boundary scan, a refill and a copy per 4 KiB of part data
// (README, Performance). Here part data is scanned
// in the upload's own buffer, as much as one read from the client brought,
// and handed out as slices of it, which forward, per_part and store write on
// without copying. Part headers are read as net/textproto reads them for
// mime/multipart, with fewer copies (header.go).

// maxLineSize is the longest line read between parts (a preamble line, a
// delimiter line with its padding): mime/multipart's 4 KiB buffer allows no
// longer.
const maxLineSize = 4095

// nextHeader reads up to the next delimiter line and returns the header of the
// part it opens, or io.EOF after the closing delimiter.
func (f *Reader) nextHeader() (textproto.MIMEHeader, error) {
	expectNewPart := false
	for {
		line, err := f.in.ReadSlice('\n')
		if len(line) > maxLineSize || err == bufio.ErrBufferFull {
			return nil, errors.New("multipart: a line between parts is longer than 4 KiB")
		}
		if err == io.EOF && f.isClosingLine(line) {
			return nil, io.EOF // the closing delimiter, without a line end
		}
		if err == io.EOF {
			return nil, errors.New("multipart: the body ends without the closing delimiter")
		}
		if err != nil {
			return nil, err
		}
		if f.isDelimiterLine(line) {
			header, err := f.readHeader()
			if err == io.EOF {
				return nil, errors.New("multipart: the body ends inside a part header")
			}
			if err != nil {
				return nil, fmt.Errorf("multipart: part header: %w", err)
			}
			return header, nil
		}
		if f.isClosingLine(line) {
			return nil, io.EOF
		}
		switch {
		case expectNewPart:
			return nil, fmt.Errorf("multipart: expecting a new part; got line %q", line)
		case f.index == 0:
			continue // the preamble
		case bytes.Equal(line, f.nl):
			// The line end that ends the previous part's data belongs to
			// the delimiter line that follows.
			expectNewPart = true
			continue
		}
		return nil, fmt.Errorf("multipart: unexpected line between parts: %q", line)
	}
}

// isDelimiterLine reports whether line is "--boundary", optional spaces and
// tabs, and a line end. The first one sets the body's line end: LF alone
// (against RFC 2046, but common) when it ends so.
func (f *Reader) isDelimiterLine(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, f.dashBoundary)
	if !ok {
		return false
	}
	rest = bytes.TrimLeft(rest, " \t")
	if f.index == 0 && len(rest) == 1 && rest[0] == '\n' {
		f.nl = f.nl[1:]
		f.nlDashBoundary = f.nlDashBoundary[1:]
		if f.find != nil {
			f.find.init(f.nlDashBoundary)
		}
	}
	return bytes.Equal(rest, f.nl)
}

// isClosingLine reports whether line is "--boundary--", optional spaces and
// tabs, and a line end or nothing.
func (f *Reader) isClosingLine(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, f.dashBoundary)
	if !ok {
		return false
	}
	if rest, ok = bytes.CutPrefix(rest, []byte("--")); !ok {
		return false
	}
	rest = bytes.TrimLeft(rest, " \t")
	return len(rest) == 0 || bytes.Equal(rest, f.nl)
}

// data returns the current part's next run of data, a slice of in's buffer
// valid until in is read again, or io.EOF at the part's end.
func (f *Reader) data() ([]byte, error) {
	if f.fast && f.grow != nil && f.readErr == nil && f.in.Buffered() <= MaxCarry {
		// The client filled the small buffer: move to a large one, which
		// reads first the few bytes left in it (grow.go).
		left, _ := f.in.Peek(f.in.Buffered())
		f.in = f.grow(left)
		f.grow = nil
		f.find = new(finder) // 8 KiB, worth it only for the reads of a fast client
		f.find.init(f.nlDashBoundary)
	}
	for f.avail == 0 && f.end == nil {
		buf, _ := f.in.Peek(f.in.Buffered())
		f.fast = f.fast || len(buf) == f.in.Size()
		f.avail, f.end = f.scan(buf)
		if f.avail == 0 && f.end == nil {
			// Too little is buffered to tell: read more. This happens only
			// with a few bytes buffered, never with a full buffer.
			if f.park != nil && f.grow != nil && len(buf) <= MaxCarry {
				f.in = f.park(buf)
			}
			_, f.readErr = f.in.Peek(len(buf) + 1)
			if f.readErr == io.EOF {
				f.readErr = io.ErrUnexpectedEOF
			}
		}
	}
	if f.avail == 0 {
		return nil, f.end
	}
	b, _ := f.in.Peek(f.avail)
	_, _ = f.in.Discard(f.avail) // b stays valid until in reads again
	f.total += int64(f.avail)
	f.avail = 0
	return b, nil
}

// scan tells how much of buf, the buffered bytes at the current position in a
// part's data, is data for sure, and what follows: io.EOF when the part ends
// there, f.readErr when the body does, nil when more must be read to know.
func (f *Reader) scan(buf []byte) (int, error) {
	if f.total == 0 {
		// A part with no data may have no line end before the delimiter
		// that ends it.
		if bytes.HasPrefix(buf, f.dashBoundary) {
			switch f.delimiterAt(buf, len(f.dashBoundary)) {
			case delimiter:
				return 0, io.EOF
			case undecided:
				return 0, nil
			}
			return len(f.dashBoundary), nil
		}
		if bytes.HasPrefix(f.dashBoundary, buf) {
			return 0, f.readErr
		}
	}
	if i := f.indexDelimiter(buf); i >= 0 {
		switch f.delimiterAt(buf[i:], len(f.nlDashBoundary)) {
		case delimiter:
			return i, io.EOF
		case undecided:
			return i, nil
		}
		return i + len(f.nlDashBoundary), nil
	}
	if bytes.HasPrefix(f.nlDashBoundary, buf) {
		return 0, f.readErr
	}
	// Hold back a tail that may be the start of a delimiter. Its line end
	// appears in nlDashBoundary only at the start, so only the last such
	// byte can start one.
	from := max(0, len(buf)-len(f.nlDashBoundary)+1)
	if i := bytes.LastIndexByte(buf[from:], f.nlDashBoundary[0]); i >= 0 && bytes.HasPrefix(f.nlDashBoundary, buf[from+i:]) {
		return from + i, nil
	}
	return len(buf), f.readErr
}

// What follows "--boundary" in part data.
const (
	notDelimiter = iota // more data: "--boundaryX"
	delimiter           // the part ends
	undecided           // too little is buffered to tell
)

// delimiterAt tells whether buf, which starts with a delimiter's prefix of n
// bytes, is a delimiter: the prefix followed by a space, tab, CR, LF, "--",
// or the end of the body.
func (f *Reader) delimiterAt(buf []byte, n int) int {
	if len(buf) == n {
		if f.readErr != nil {
			return delimiter
		}
		return undecided
	}
	switch buf[n] {
	case ' ', '\t', '\r', '\n':
		return delimiter
	case '-':
		if len(buf) == n+1 {
			if f.readErr != nil {
				return notDelimiter
			}
			return undecided
		}
		if buf[n+1] == '-' {
			return delimiter
		}
	}
	return notDelimiter
}

// indexDelimiter is bytes.Index(buf, f.nlDashBoundary).
func (f *Reader) indexDelimiter(buf []byte) int {
	if f.find == nil {
		return bytes.Index(buf, f.nlDashBoundary)
	}
	return f.find.index(buf)
}

// finder finds a delimiter ("\r\n--boundary") in part data: bytes.Index,
// sped up for the data uploads carry. bytes.Index looks for the delimiter's
// first byte with IndexByte, which in compressed media or model weights (any
// byte equally likely) stops every 256 bytes. finder looks at two adjacent
// bytes once every len(delimiter)-1 bytes, which no delimiter can fall
// between, and searches around them only when they are two adjacent bytes of
// the delimiter (the gain is in the README's Performance section). Data that
// keeps looking like the delimiter is handed to bytes.Index.
type finder struct {
	pat   []byte
	pairs [1 << 16 / 64]uint64 // bit v: the bytes v&0xff, v>>8 are adjacent in pat
}

func (d *finder) init(pat []byte) {
	d.pat = pat
	clear(d.pairs[:])
	for i := 0; i+1 < len(pat); i++ {
		v := uint16(pat[i]) | uint16(pat[i+1])<<8
		d.pairs[v/64] |= 1 << (v % 64)
	}
}

// index is bytes.Index(s, d.pat).
func (d *finder) index(s []byte) int {
	m := len(d.pat) // at least 4: "\n--" and one boundary character
	misses := 0
	// A delimiter at p has pairs starting at p to p+m-2: one of them is looked at.
	for i := m - 2; i+1 < len(s); i += m - 1 {
		v := uint16(s[i]) | uint16(s[i+1])<<8
		if d.pairs[v/64]&(1<<(v%64)) == 0 {
			continue
		}
		// Any delimiter starting before from was found at an earlier look.
		from := max(0, i-m+2)
		if j := bytes.Index(s[from:min(len(s), i+m)], d.pat); j >= 0 {
			return from + j
		}
		if misses++; misses > 8+i/256 {
			if j := bytes.Index(s[from:], d.pat); j >= 0 {
				return from + j
			}
			return -1
		}
	}
	return -1
}
