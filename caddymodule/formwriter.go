package streamproxy

import (
	"io"
	"mime/multipart"
	"strings"
	"sync"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
)

// formWriter writes the form a backend gets, framed as mime/multipart's
// Writer frames it, under a boundary it makes. Each part header is gathered
// in one buffer, taken from a pool shared by all requests for as long as the
// header is written, and written in one write: mime/multipart's CreatePart
// gathers each in a bytes.Buffer of its own (and forwarding would need a
// header map per part), throwaways as large as the header that a client
// sending large part headers turns into most of its request's memory. An
// upload whose part streams holds none.
type formWriter struct {
	w        io.Writer
	boundary string
	started  bool    // a part was written
	buf      *[]byte // the part header being written, from headerBufs
}

// maxKeptHeader is the largest buffer put back in headerBufs; larger ones (a
// raised max_part_header_size) are made anew.
const maxKeptHeader = 64 << 10

// headerBufs holds the buffers part headers are gathered in.
var headerBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func newFormWriter(w io.Writer) *formWriter {
	return &formWriter{w: w, boundary: multipart.NewWriter(nil).Boundary()}
}

// FormDataContentType is the form's Content-Type. The boundary is hex: it
// needs no quotes.
func (fw *formWriter) FormDataContentType() string {
	return "multipart/form-data; boundary=" + fw.boundary
}

// WritePart starts a part with p's header as the backend gets it
// (formreader.Part.AppendHeader); its data goes to the writer returned.
func (fw *formWriter) WritePart(p *formreader.Part) (io.Writer, error) {
	return fw.w, fw.finish(p.AppendHeader(fw.start()))
}

// WriteField writes a text field, as mime/multipart's WriteField does.
func (fw *formWriter) WriteField(name, value string) error {
	b := append(fw.start(), `Content-Disposition: form-data; name="`...)
	b = append(b, fieldNameEscaper.Replace(name)...)
	if err := fw.finish(append(b, "\"\r\n"...)); err != nil {
		return err
	}
	_, err := io.WriteString(fw.w, value)
	return err
}

// Close writes the closing delimiter.
func (fw *formWriter) Close() error {
	_, err := io.WriteString(fw.w, "\r\n--"+fw.boundary+"--\r\n")
	return err
}

// start returns the buffer with a part's delimiter line in it.
func (fw *formWriter) start() []byte {
	fw.buf = headerBufs.Get().(*[]byte)
	b := (*fw.buf)[:0]
	if fw.started {
		b = append(b, "\r\n"...)
	}
	b = append(b, "--"...)
	b = append(b, fw.boundary...)
	return append(b, "\r\n"...)
}

// finish ends the part header in b and writes it.
func (fw *formWriter) finish(b []byte) error {
	b = append(b, "\r\n"...)
	fw.started = true
	var err error
	if hw, ok := fw.w.(interface{ writeHeader([]byte) (int, error) }); ok {
		_, err = hw.writeHeader(b) // see idleFlusher.writeHeader
	} else {
		_, err = fw.w.Write(b)
	}
	if cap(b) <= maxKeptHeader {
		*fw.buf = b[:0]
		headerBufs.Put(fw.buf)
	}
	fw.buf = nil
	return err
}

// fieldNameEscaper is mime/multipart's, for a field name in quotes.
var fieldNameEscaper = strings.NewReplacer("\\", "\\\\", `"`, "\\\"", "\r", "%0D", "\n", "%0A")
