package streamproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"slices"
	"strings"
)

// formReader reads a multipart/form-data body strictly and with limits, one
// part at a time. It wraps mime/multipart, which leaves these to its caller:
// it has no part-count limit, allows megabytes of headers per part, decodes
// quoted-printable silently and tolerates nameless parts.
type formReader struct {
	mr       *multipart.Reader
	headers  *budgetReader // between the upload's buffer and mr; caps header reads
	boundary string

	maxParts     int
	maxPartSize  int64
	maxFieldSize int64
	maxHeader    int64
	allowFields  []string
	allowTypes   []string
	hashNames    []string

	index int // parts seen so far
	part  *formPart
	obs   partObserver
}

// partObserver hears of each part's start and clean end.
type partObserver interface {
	partStarted(*formPart)
	partEnded(*formPart)
}

// formPart is the part being read. Read returns its data, counted and limited.
type formPart struct {
	Index       int // from 0
	Field       string
	Filename    string // as the client sent it; never a path
	IsFile      bool   // the part has a filename parameter
	ContentType string
	Header      textproto.MIMEHeader
	Size        int64 // data bytes read so far

	raw     *multipart.Part
	limit   int64
	lname   string       // the limit's config name
	digests *partDigests // nil unless there is something to compute
}

// maxPreamble is the longest preamble (text before the first delimiter, which
// MIME readers skip) accepted.
const maxPreamble = 64 << 10

// headerSlack is what mime/multipart may read ahead of a part's header: its
// 4 KiB peek buffer plus a boundary line.
const headerSlack = 4096 + 80

func newFormReader(src io.Reader, boundary string, h *Handler, obs partObserver) *formReader {
	br := &budgetReader{r: src, budget: -1, tail: tailRing{buf: make([]byte, tailSize+len(boundary))}}
	return &formReader{
		mr:           multipart.NewReader(br, boundary),
		headers:      br,
		boundary:     boundary,
		maxParts:     h.MaxParts,
		maxPartSize:  h.MaxPartSize,
		maxFieldSize: h.MaxFieldSize,
		maxHeader:    h.MaxPartHeaderSize,
		allowFields:  h.AllowFields,
		allowTypes:   h.AllowTypes,
		hashNames:    h.Hash,
		obs:          obs,
	}
}

// next returns the next part, or io.EOF after the closing delimiter. A body
// that ends before the closing delimiter is an error, never io.EOF.
func (f *formReader) next() (*formPart, error) {
	if f.part != nil {
		// Parts are read to their end before the next is asked for.
		f.obs.partEnded(f.part)
		f.part = nil
	}
	f.headers.budget = f.maxHeader + headerSlack
	if f.index == 0 {
		f.headers.budget += maxPreamble // skipped line by line, never held
	}
	raw, err := f.mr.NextRawPart()
	over := f.headers.exhausted
	f.headers.budget = -1
	if over {
		return nil, f.headerTooLarge(f.index)
	}
	if err == io.EOF {
		// mime/multipart also ends cleanly when the body stops right after
		// a delimiter that opens a part, or inside its header: a cut body,
		// not a complete one.
		if end, whole := f.headers.tail.bytes(); !endsClosed(end, whole, f.boundary) {
			return nil, malformed(errors.New("body ended inside a part, without the closing delimiter"))
		}
		// Read the epilogue through to the body's end, so that the server
		// notices, and cancels the request, if the client then goes away.
		if _, err := io.Copy(io.Discard, f.headers); err != nil {
			return nil, readError(err, nil)
		}
		return nil, io.EOF
	}
	if err != nil {
		return nil, readError(err, nil)
	}
	if f.index >= f.maxParts {
		return nil, limitError(http.StatusRequestEntityTooLarge, CodeTooManyParts, "max_parts", int64(f.maxParts), "number of parts")
	}
	p := &formPart{Index: f.index, Header: raw.Header, raw: raw}
	f.index++

	if headerSize(raw.Header) > f.maxHeader {
		return nil, f.headerTooLarge(p.Index)
	}
	if err := p.parseHeader(); err != nil {
		return nil, err
	}
	if len(f.allowFields) > 0 && !slices.Contains(f.allowFields, p.Field) {
		return nil, &uploadError{Status: http.StatusBadRequest, Code: CodeFieldNotAllowed,
			Message: fmt.Sprintf("field %q is not in allow_fields", p.Field), Limit: "allow_fields", Part: p.ref()}
	}
	if p.IsFile && len(f.allowTypes) > 0 && !typeAllowed(p.ContentType, f.allowTypes) {
		return nil, &uploadError{Status: http.StatusUnsupportedMediaType, Code: CodeTypeNotAllowed,
			Message: fmt.Sprintf("content type %q is not in allow_types", p.ContentType), Limit: "allow_types", Part: p.ref()}
	}
	if p.IsFile {
		p.limit, p.lname = f.maxPartSize, "max_part_size"
		p.digests, err = newPartDigests(f.hashNames, http.Header(p.Header))
	} else {
		p.limit, p.lname = f.maxFieldSize, "max_field_size"
		p.digests, err = newPartDigests(nil, http.Header(p.Header))
	}
	if err != nil {
		e := malformed(err)
		e.Part = p.ref()
		return nil, e
	}
	f.part = p
	f.obs.partStarted(p)
	return p, nil
}

// typeAllowed matches a part's Content-Type (application/octet-stream when it
// has none, RFC 7578) against patterns such as audio/*, image/png or */*.
func typeAllowed(contentType string, patterns []string) bool {
	mediaType := "application/octet-stream"
	if contentType != "" {
		mediaType, _, _ = mime.ParseMediaType(contentType) // checked in parseHeader
	}
	major, _, _ := strings.Cut(mediaType, "/")
	for _, p := range patterns {
		if p == "*/*" || strings.EqualFold(p, mediaType) ||
			(strings.HasSuffix(p, "/*") && strings.EqualFold(strings.TrimSuffix(p, "/*"), major)) {
			return true
		}
	}
	return false
}

func (f *formReader) headerTooLarge(index int) *uploadError {
	e := limitError(http.StatusRequestHeaderFieldsTooLarge, CodePartHeaderTooBig, "max_part_header_size", f.maxHeader, "part header")
	e.Part = &partRef{Index: index}
	return e
}

// parseHeader checks the part's header and fills in its name, filename and type.
func (p *formPart) parseHeader() *uploadError {
	bad := func(format string, args ...any) *uploadError {
		e := malformed(fmt.Errorf(format, args...))
		e.Part = p.ref()
		return e
	}
	cds := p.Header["Content-Disposition"]
	if len(cds) != 1 {
		return bad("part %d has %d Content-Disposition headers, want 1", p.Index, len(cds))
	}
	disposition, params, err := mime.ParseMediaType(cds[0])
	if err != nil {
		return bad("part %d Content-Disposition: %v", p.Index, err)
	}
	if disposition != "form-data" {
		return bad("part %d Content-Disposition is %q, want form-data", p.Index, disposition)
	}
	p.Field = params["name"]
	if p.Field == "" {
		return bad("part %d has no name", p.Index)
	}
	p.Filename, p.IsFile = params["filename"]
	if _, ok := p.Header["Content-Transfer-Encoding"]; ok {
		return &uploadError{
			Status:  http.StatusBadRequest,
			Code:    CodeTransferEncoding,
			Message: "parts must not have a Content-Transfer-Encoding (RFC 7578)",
			Part:    p.ref(),
		}
	}
	if cts := p.Header["Content-Type"]; len(cts) > 1 {
		return bad("part %d has %d Content-Type headers", p.Index, len(cts))
	} else if len(cts) == 1 {
		if _, _, err := mime.ParseMediaType(cts[0]); err != nil {
			return bad("part %d Content-Type: %v", p.Index, err)
		}
		p.ContentType = cts[0]
	}
	return nil
}

// Read reads the part's data, enforcing its size limit. A body that ends
// inside the part is an error.
func (p *formPart) Read(b []byte) (int, error) {
	n, err := p.raw.Read(b)
	p.Size += int64(n)
	if p.digests != nil && n > 0 {
		p.digests.w.Write(b[:n]) // hashes never fail
	}
	if p.Size > p.limit {
		code := CodePartTooLarge
		if !p.IsFile {
			code = CodeFieldTooLarge
		}
		e := limitError(http.StatusRequestEntityTooLarge, code, p.lname, p.limit, "part")
		e.Part = p.ref()
		return 0, e
	}
	if err != nil && err != io.EOF {
		return n, readError(err, p)
	}
	if err == io.EOF && p.digests != nil {
		if verr := p.digests.verify(); verr != nil {
			return n, &uploadError{Status: http.StatusBadRequest, Code: CodeDigestMismatch,
				Message: verr.Error(), Part: p.ref()}
		}
	}
	return n, err
}

func (p *formPart) ref() *partRef {
	return &partRef{Index: p.Index, Field: p.Field, Filename: p.Filename}
}

// formHeader is the part's header as the backend gets it: the disposition
// written anew from what was parsed, so that the backend cannot read another
// name or filename than the gateway checked, and the other fields as they came.
func (p *formPart) formHeader() textproto.MIMEHeader {
	h := make(textproto.MIMEHeader, len(p.Header))
	for k, v := range p.Header {
		h[k] = v
	}
	cd := `form-data; name="` + quoteParam(p.Field) + `"`
	if p.IsFile {
		cd += `; filename="` + quoteParam(p.Filename) + `"`
	}
	h.Set("Content-Disposition", cd)
	return h
}

// quoteParam escapes a parameter value for a quoted string as mime/multipart
// does (a backslash before each \ and "), so that parsers read back the same
// bytes. RFC 7578 forbids filename*, so UTF-8 names are written as they are.
var quoteParam = strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace

// forwardable refuses a part whose name or filename cannot be written into a
// part header: one with a control character, which only RFC 2231's name*= or
// filename*= can carry, and which would end the header line (CR, LF) or make
// the backend's parser refuse the header.
func (p *formPart) forwardable() error {
	for _, s := range []string{p.Field, p.Filename} {
		if strings.ContainsFunc(s, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }) {
			e := malformed(fmt.Errorf("part %d: a name or filename with a control character cannot be forwarded", p.Index))
			e.Part = p.ref()
			return e
		}
	}
	return nil
}

// headerSize is the size of a parsed header block as it would be written.
func headerSize(h textproto.MIMEHeader) int64 {
	var n int64
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(": ") + len(v) + len("\r\n"))
		}
	}
	return n
}

// readError classifies a failure met while reading the form: a refusal or a
// failure to write to the backend passes as it is; anything else is what
// mime/multipart found wrong with the body.
func readError(err error, p *formPart) error {
	var ue *uploadError
	var we writeError
	switch {
	case errors.As(err, &ue):
		return ue
	case errors.As(err, &we):
		return we
	}
	ue = malformed(err)
	if p != nil {
		ue.Part = p.ref()
	}
	return ue
}

// budgetReader lets through at most budget bytes while a part header is being
// read (budget -1: no cap), so that an endless header never fills memory.
// It also keeps the last bytes read, to check how the body ended.
type budgetReader struct {
	r         io.Reader
	budget    int64
	exhausted bool
	tail      tailRing
}

// tailSize is what budgetReader.tail keeps beyond the boundary: more than
// mime/multipart's read-ahead (4 KiB) plus a delimiter line's dashes,
// transport padding and line end.
const tailSize = 4096 + 1024

var errHeaderBudget = errors.New("part header exceeds its budget")

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.budget == 0 {
		b.exhausted = true
		return 0, errHeaderBudget
	}
	if b.budget > 0 && int64(len(p)) > b.budget {
		p = p[:b.budget]
	}
	n, err := b.r.Read(p)
	if b.budget > 0 {
		b.budget -= int64(n)
	}
	b.tail.write(p[:n])
	return n, err
}

// tailRing keeps the last bytes written to it.
type tailRing struct {
	buf   []byte
	total int64
}

func (t *tailRing) write(p []byte) {
	if len(p) > len(t.buf) {
		p = p[len(p)-len(t.buf):]
	}
	at := int(t.total % int64(len(t.buf)))
	n := copy(t.buf[at:], p)
	copy(t.buf, p[n:])
	t.total += int64(len(p))
}

// bytes returns the kept bytes in order, and whether they are all there were.
func (t *tailRing) bytes() ([]byte, bool) {
	if t.total <= int64(len(t.buf)) {
		return t.buf[:t.total], true
	}
	at := int(t.total % int64(len(t.buf)))
	return append(append([]byte(nil), t.buf[at:]...), t.buf[:at]...), false
}

// endsClosed reports whether what mime/multipart has read of a body, whose
// last bytes are end (all of them when whole), ends with the closing
// delimiter: its last delimiter line must be the closing one. The closing
// line is always within end, which is longer than mime/multipart's 4 KiB
// read-ahead; a body cut after a delimiter, or inside a part header however
// long, is not closed.
func endsClosed(end []byte, whole bool, boundary string) bool {
	dash := []byte("--" + boundary)
	for i := len(end); i > 0; {
		j := bytes.LastIndex(end[:i], dash)
		if j < 0 {
			return false
		}
		i = j
		if (j == 0 && !whole) || (j > 0 && end[j-1] != '\n') {
			continue // not at the start of a line
		}
		line, _, _ := bytes.Cut(end[j+len(dash):], []byte("\n"))
		line = bytes.TrimRight(bytes.TrimSuffix(line, []byte("\r")), " \t")
		switch string(line) {
		case "--":
			return true // the closing delimiter
		case "":
			return false // a delimiter that opens a part
		}
		// Anything else after the dashes: not a delimiter line.
	}
	return false
}

// isClientReadError reports whether err came from reading the client's body
// rather than from what the body said.
func isClientReadError(err error) bool {
	var ue *uploadError
	return errors.As(err, &ue) && ue.clientRead
}
