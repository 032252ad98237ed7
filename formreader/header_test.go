package formreader

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// headerCases are header blocks (after a delimiter line) that net/textproto
// reads in ways a parser of its own could get wrong.
var headerCases = []string{
	"Content-Disposition: form-data; name=\"a\"\r\n\r\ndata",
	"\r\n",
	"\n",
	"A: b\r\n  c\r\n\td\r\n\r\n",
	"A: b\r\n \r\n\r\n",
	"A: b\n c\nE: f\n\n",
	" A: b\r\n\r\n",
	"\tA: b\r\n\r\n",
	"A b\r\n\r\n",
	"A b: c\r\n\r\n",
	"a b: c\r\n\r\n",
	"A@b: c\r\n\r\n",
	": c\r\n\r\n",
	"content-type: x\r\nCONTENT-TYPE: y\r\nx-pAD-: z\r\n\r\n",
	"A: b\rc\r\n\r\n",
	"A: b\x00\r\n\r\n",
	"A: b\x7f\r\n\r\n",
	"A: \xffb\x80\r\n\r\n",
	"A: b\r\n",
	"A: b",
	"A: b\r\n ",
	"A: b\r\n c",
	"A:b  \t\r\nB:\t \r\nC:\r\n\r\n",
	"A: " + strings.Repeat("x", 100) + "\r\n" + strings.Repeat("y", 50) + ": " + strings.Repeat("z", 70) + "\r\n\r\n",
	"A: b\r\n" + strings.Repeat(" ", 40) + "c\r\n\r\n",
	"A: b\r\r\n\r\n",
	"A: b\r\n\r",
	"A:: b\r\n\r\n",
	"X: 1\r\nX: 2\r\nY: 3\r\nX: 4\r\n\r\nrest",
	" " + strings.Repeat("a", 100) + "\r\n\r\n",
}

// TestReadHeaderAsTextproto checks readHeader against net/textproto's
// ReadMIMEHeader, the parser mime/multipart reads part headers with, over
// buffers of several sizes and reads of one byte.
func TestReadHeaderAsTextproto(t *testing.T) {
	for _, c := range headerCases {
		for size := 16; size <= 40; size++ {
			compareHeader(t, []byte(c), size, false)
		}
		compareHeader(t, []byte(c), 16, true)
	}
}

func FuzzReadHeader(f *testing.F) {
	for _, c := range headerCases {
		f.Add([]byte(c), uint8(0), false)
	}
	f.Fuzz(func(t *testing.T, block []byte, size uint8, oneByte bool) {
		compareHeader(t, block, 16+int(size%64), oneByte)
	})
}

func compareHeader(t *testing.T, block []byte, size int, oneByte bool) {
	t.Helper()
	src := func() io.Reader {
		if oneByte {
			return iotest.OneByteReader(bytes.NewReader(block))
		}
		return bytes.NewReader(block)
	}
	want, wantErr := textproto.NewReader(bufio.NewReaderSize(src(), size)).ReadMIMEHeader()
	wantIn := bufio.NewReaderSize(src(), size)
	_, _ = textproto.NewReader(wantIn).ReadMIMEHeader()
	wantRest, _ := io.ReadAll(wantIn)

	f := &Reader{in: bufio.NewReaderSize(src(), size)}
	got, err := f.readHeader()
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("%q (buffer %d): error %v, textproto's %v", block, size, err, wantErr)
	}
	if err != nil {
		return
	}
	if len(want) == 0 && len(got) == 0 {
		want, got = nil, nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q (buffer %d): header %q, textproto's %q", block, size, got, want)
	}
	if rest, _ := io.ReadAll(f.in); !bytes.Equal(rest, wantRest) {
		t.Fatalf("%q (buffer %d): %q left, textproto leaves %q", block, size, rest, wantRest)
	}
}
