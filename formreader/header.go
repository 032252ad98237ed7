package formreader

import (
	"bytes"
	"errors"
	"fmt"
	"net/textproto"
	"sync"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
)

// readHeader reads a part's header block, after its delimiter line, as
// net/textproto's ReadMIMEHeader does, rule for rule and through the same
// bufio calls: the same lines are refused, continuation lines are joined
// the same way, keys are canonicalized the same way, values come out the
// same. What differs is memory: textproto makes a string of each value and,
// for a line longer than the read buffer, a growing copy of it, each a
// throwaway. Here each line is gathered in a buffer from headerBufs, taken
// only while the header is read (a part whose data streams holds none), and
// all keys and values of one header are one string, cut up.
func (f *Reader) readHeader() (textproto.MIMEHeader, error) {
	in := f.in
	// The first line cannot start with a space.
	if b, err := in.Peek(1); err == nil && (b[0] == ' ' || b[0] == '\t') {
		line, err := f.readLine(nil, 80)
		if err != nil {
			return nil, err
		}
		return nil, textproto.ProtocolError(fmt.Sprintf("malformed MIME header initial line: %q", line))
	}

	type field struct{ key, value [2]int } // spans of buf
	var fields []field
	var stack [8]field // most part headers have one to three fields
	fields = stack[:0]
	bp := headerBufs.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		if cap(buf) <= maxKeptHeader {
			*bp = buf[:0]
			headerBufs.Put(bp)
		}
	}()
	var err error
	for {
		start := len(buf)
		if buf, err = f.readContinuedLine(buf); len(buf) == start {
			if err != nil {
				return nil, err
			}
			break
		}
		kv := buf[start:]
		i := bytes.IndexByte(kv, ':')
		if i < 0 || !canonicalKey(kv[:i]) {
			return nil, textproto.ProtocolError(fmt.Sprintf("malformed MIME header line: %q", kv))
		}
		for _, c := range kv[i+1:] {
			if !validHeaderValueByte(c) {
				return nil, textproto.ProtocolError(fmt.Sprintf("malformed MIME header line: %q", kv))
			}
		}
		v := start + i + 1
		for v < len(buf) && (buf[v] == ' ' || buf[v] == '\t') {
			v++
		}
		fields = append(fields, field{key: [2]int{start, start + i}, value: [2]int{v, len(buf)}})
		if err != nil {
			return nil, err
		}
	}

	block := string(buf)
	h := make(textproto.MIMEHeader, len(fields))
	strs := make([]string, len(fields))
	for i, fd := range fields {
		key, value := block[fd.key[0]:fd.key[1]], block[fd.value[0]:fd.value[1]]
		if vv := h[key]; vv != nil {
			h[key] = append(vv, value)
			continue
		}
		strs[i] = value
		h[key] = strs[i : i+1 : i+1]
	}
	return h, nil
}

// headerBufs holds the buffers part headers are read into; those that grew
// past maxKeptHeader (a raised max_part_header_size) are not kept.
var headerBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxKeptHeader = 64 << 10

var errLineTooLong = errors.New("message too large")

// readLine appends the next line, without its line end, to buf, as
// textproto's readLineSlice reads it; lim >= 0 bounds the line. On an error
// buf comes back as it was.
func (f *Reader) readLine(buf []byte, lim int) ([]byte, error) {
	start := len(buf)
	for {
		l, more, err := f.in.ReadLine()
		if err != nil {
			return buf[:start], err
		}
		if lim >= 0 && len(buf)-start+len(l) > lim {
			return buf[:start], errLineTooLong
		}
		buf = append(buf, l...)
		if !more {
			return buf, nil
		}
	}
}

// readContinuedLine appends the next header line, trimmed, with its
// continuation lines, to buf, as textproto's readContinuedLineSlice reads
// it. An empty line appends nothing.
func (f *Reader) readContinuedLine(buf []byte) ([]byte, error) {
	start := len(buf)
	buf, err := f.readLine(buf, -1)
	if err != nil || len(buf) == start {
		return buf, err
	}
	if bytes.IndexByte(buf[start:], ':') < 0 {
		return buf[:start], textproto.ProtocolError(fmt.Sprintf("malformed MIME header: missing colon: %q", buf[start:]))
	}
	buf = trimAt(buf, start)
	for f.skipSpace() > 0 {
		buf = append(buf, ' ')
		from := len(buf)
		if buf, err = f.readLine(buf, -1); err != nil {
			break // as textproto: the line so far, its error at the next read
		}
		buf = trimAt(buf, from)
	}
	return buf, nil
}

// trimAt trims spaces and tabs from both ends of buf[start:], in place.
func trimAt(buf []byte, start int) []byte {
	i := start
	for i < len(buf) && (buf[i] == ' ' || buf[i] == '\t') {
		i++
	}
	n := copy(buf[start:], buf[i:])
	buf = buf[:start+n]
	for len(buf) > start && (buf[len(buf)-1] == ' ' || buf[len(buf)-1] == '\t') {
		buf = buf[:len(buf)-1]
	}
	return buf
}

// skipSpace skips spaces and tabs and returns how many.
func (f *Reader) skipSpace() int {
	n := 0
	for {
		c, err := f.in.ReadByte()
		if err != nil {
			return n
		}
		if c != ' ' && c != '\t' {
			_ = f.in.UnreadByte()
			return n
		}
		n++
	}
}

// canonicalKey reports whether k is a header key textproto accepts, and
// canonicalizes it in place as textproto does: a key with a space (accepted,
// go.dev/issue/34540) stays as it is.
func canonicalKey(k []byte) bool {
	if len(k) == 0 {
		return false
	}
	space := false
	for _, c := range k {
		if c == ' ' {
			space = true
		} else if !validHeaderFieldByte(c) {
			return false
		}
	}
	if space {
		return true
	}
	upper := true
	for i, c := range k {
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		k[i] = c
		upper = c == '-'
	}
	return true
}

// validHeaderFieldByte reports whether c is a token byte (RFC 7230), as
// textproto's function of the same name.
func validHeaderFieldByte(c byte) bool {
	return c < utf8.RuneSelf && httpguts.IsTokenRune(rune(c))
}

// validHeaderValueByte reports whether c may be in a header value: anything
// but a control byte other than tab (RFC 7230's VCHAR, space, tab and
// obs-text), as textproto's function of the same name.
func validHeaderValueByte(c byte) bool {
	return c == '\t' || (c >= 0x20 && c != 0x7f)
}
