package formreader

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// Reader reads a multipart/form-data body strictly and with limits, one
// part at a time. It parses as mime/multipart's NextRawPart and Part.Read do
// (scan.go), and adds what mime/multipart leaves to its caller: a part-count
// limit, bounded part headers, no Content-Transfer-Encoding that changes the
// bytes (mime/multipart decodes quoted-printable silently), a name on every
// part, and a closing delimiter (mime/multipart ends cleanly on a body cut
// inside a part header).
type Reader struct {
	in  *bufio.Reader // the client's body, buffered; part data is handed out from it
	src *Source       // under in: caps what header reads take from the client

	dashBoundary   []byte  // "--boundary"
	nlDashBoundary []byte  // "\r\n--boundary", or "\n--boundary" in a body with bare LF line ends
	nl             []byte  // "\r\n" or "\n"
	find           *finder // of nlDashBoundary; nil on the small buffer (grow.go), where bytes.Index serves

	maxParts     int
	maxPartSize  int64
	maxFieldSize int64
	maxHeader    int64
	maxHeaders   int64 // all part headers of the form together
	headerBytes  int64 // part header bytes read so far
	allowFields  []string
	allowTypes   []string
	verifyTypes  bool
	hashNames    []string

	index int // parts seen so far
	part  *Part
	obs   Observer

	// The scan of the current part's data (scan.go).
	total   int64 // data bytes handed out
	avail   int   // bytes at the front of in that are data for sure
	end     error // what comes after them: io.EOF at the part's end, or a failure
	readErr error // the error reading in met after its buffered bytes, if any

	// grow, if set, returns a larger reader in place of in, which reads
	// first what in left; it is called once a read has filled in (fast).
	grow func(left []byte) *bufio.Reader
	fast bool
	// park, if set, replaces in, before a read that may wait, while it
	// has not grown (SetPark).
	park func(left []byte) *bufio.Reader
}

// Observer hears of each part's start and clean end.
type Observer interface {
	PartStarted(*Part)
	PartEnded(*Part)
}

// Part is the part being read. Its data comes from next, or Read,
// counted, limited and hashed.
type Part struct {
	Index       int // from 0
	Field       string
	Filename    string // as mime.ParseMediaType reads it (filename* decoded); never a path
	IsFile      bool   // the part has a non-empty filename parameter (see parseHeader)
	ContentType string
	Header      textproto.MIMEHeader
	Size        int64 // data bytes read so far

	// DetectedType is, with verify_types, a file part's type as its first
	// bytes show it (verify.go); empty otherwise.
	DetectedType string

	// params are the client's Content-Disposition parameters other than the
	// name, as sent ("filename*=utf-8''n%C3%A4me.txt"), in order.
	params []string

	f       *Reader
	done    bool   // the part's data has been read to its end
	pending []byte // data from next not yet taken by Read
	limit   int64
	lname   string       // the limit's config name
	digests *partDigests // nil unless there is something to compute

	// With verify_types: data read ahead, handed out first (verify.go), and
	// the pooled buffer that holds held[0] when the prefix came in short reads.
	held [2][]byte
	pbuf *[verifyPrefix]byte
}

// maxPreamble is the longest preamble (text before the first delimiter, which
// MIME readers skip) accepted.
const maxPreamble = 64 << 10

// headerSlack is what a part header's read may take from the client beyond
// the header itself: the line end and delimiter line before it.
const headerSlack = maxLineSize + 2

// Limits are what a form may hold, as the handler's config says (its
// subdirectives of the same names); every size must be set, the lists may
// be empty.
type Limits struct {
	MaxParts          int
	MaxPartSize       int64 // a part with a filename parameter
	MaxFieldSize      int64 // a part without one
	MaxPartHeaderSize int64
	MaxFormHeaderSize int64    // all part headers of the form together
	AllowFields       []string // if set, the only field names taken
	AllowTypes        []string // if set, the only file types taken (audio/*, image/png, */*)
	VerifyTypes       bool     // judge each file's type by its first bytes (verify.go)
	Hash              []string // digests computed of each file part (digest.go)
}

// MaxCarry is the most a small read buffer may hold when the reader moves to
// a larger one (SetGrow): a delimiter held back, the start of a part header.
const MaxCarry = 256

// SetGrow sets grow, which returns a larger reader in place of the one the
// form is read from, reading first the at most MaxCarry bytes left in it; it
// is called once, when a read has filled the buffer (the client is fast).
func (f *Reader) SetGrow(grow func(left []byte) *bufio.Reader) { f.grow = grow }

// SetPark sets park, which is called, until the reader grows (SetGrow),
// before a read of part data that may wait for the client, with the at most
// MaxCarry bytes left in the reader: it returns the reader to go on with,
// which reads those bytes first, and may have read the client's next bytes
// without holding a read buffer while it waited.
func (f *Reader) SetPark(park func(left []byte) *bufio.Reader) { f.park = park }

// New reads the form from in, which reads from src, and tells obs of each
// part.
func New(in *bufio.Reader, src *Source, boundary string, lim Limits, obs Observer) *Reader {
	b := []byte("\r\n--" + boundary + "--")
	f := &Reader{
		in:             in,
		src:            src,
		nl:             b[:2],
		nlDashBoundary: b[:len(b)-2],
		dashBoundary:   b[2 : len(b)-2],
		maxParts:       lim.MaxParts,
		maxPartSize:    lim.MaxPartSize,
		maxFieldSize:   lim.MaxFieldSize,
		maxHeader:      lim.MaxPartHeaderSize,
		maxHeaders:     lim.MaxFormHeaderSize,
		allowFields:    lim.AllowFields,
		allowTypes:     lim.AllowTypes,
		verifyTypes:    lim.VerifyTypes,
		hashNames:      lim.Hash,
		obs:            obs,
	}
	return f
}

// next returns the next part, or io.EOF after the closing delimiter. A body
// that ends before the closing delimiter is an error, never io.EOF.
func (f *Reader) Next() (*Part, error) {
	if p := f.part; p != nil {
		for !p.done { // parts are read to their end, within their limits
			if _, err := p.Next(); err != nil && err != io.EOF {
				return nil, err
			}
		}
		f.obs.PartEnded(p)
		f.part = nil
	}
	// A header read takes no more from the client than the header may
	// hold: its own limit, or what is left of the form's.
	left := f.maxHeaders - f.headerBytes
	formBound := left < f.maxHeader
	f.src.budget = min(f.maxHeader, left) + headerSlack
	if f.index == 0 {
		f.src.budget += maxPreamble // skipped line by line, never held
	}
	header, err := f.nextHeader()
	over := f.src.exhausted
	f.src.budget = -1
	if over {
		if formBound {
			return nil, f.formHeadersTooLarge(f.index)
		}
		return nil, f.headerTooLarge(f.index)
	}
	if err == io.EOF {
		// Read the epilogue through to the body's end, so that the server
		// notices, and cancels the request, if the client then goes away.
		if _, err := io.Copy(io.Discard, f.in); err != nil {
			return nil, f.readError(err, nil)
		}
		return nil, io.EOF
	}
	if err != nil {
		return nil, f.readError(err, nil)
	}
	if f.index >= f.maxParts {
		return nil, limitError(http.StatusRequestEntityTooLarge, CodeTooManyParts, "max_parts", int64(f.maxParts), "number of parts")
	}
	p := &Part{Index: f.index, Header: header, f: f}
	f.index++
	f.total, f.avail, f.end, f.readErr = 0, 0, nil, nil

	size := headerSize(header)
	if size > f.maxHeader {
		return nil, f.headerTooLarge(p.Index)
	}
	if f.headerBytes += size; f.headerBytes > f.maxHeaders {
		return nil, f.formHeadersTooLarge(p.Index)
	}
	if err := p.parseHeader(); err != nil {
		return nil, err
	}
	if len(f.allowFields) > 0 && !slices.Contains(f.allowFields, p.Field) {
		return nil, &Error{Status: http.StatusBadRequest, Code: CodeFieldNotAllowed,
			Message: fmt.Sprintf("field %q is not in allow_fields", p.Field), Limit: "allow_fields", Part: p.Ref()}
	}
	if f.verifyTypes && reservedField(p.Field) {
		return nil, &Error{Status: http.StatusBadRequest, Code: CodeFieldNotAllowed,
			Message: fmt.Sprintf("field %q: names ending in .detected_type are the gateway's with verify_types", p.Field), Part: p.Ref()}
	}
	if p.IsFile && !f.verifyTypes && len(f.allowTypes) > 0 && !typeAllowed(p.ContentType, f.allowTypes) {
		return nil, &Error{Status: http.StatusUnsupportedMediaType, Code: CodeTypeNotAllowed,
			Message: fmt.Sprintf("content type %q is not in allow_types", p.ContentType), Limit: "allow_types", Part: p.Ref()}
	}
	// A part with a filename parameter, even an empty one, is bounded as a
	// file: an empty file input may still carry data.
	p.limit, p.lname = f.maxFieldSize, "max_field_size"
	if slices.ContainsFunc(p.params, func(kv string) bool { key, _ := splitParam(kv); return isFilenameParam(key) }) {
		p.limit, p.lname = f.maxPartSize, "max_part_size"
	}
	if p.IsFile {
		p.digests, err = newPartDigests(f.hashNames, http.Header(p.Header))
	} else {
		p.digests, err = newPartDigests(nil, http.Header(p.Header))
	}
	if err != nil {
		e := malformed(err)
		e.Part = p.Ref()
		return nil, e
	}
	if p.IsFile && f.verifyTypes {
		if err := p.verifyType(f.allowTypes); err != nil {
			return nil, err
		}
	}
	f.part = p
	f.obs.PartStarted(p)
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

func (f *Reader) headerTooLarge(index int) *Error {
	e := limitError(http.StatusRequestHeaderFieldsTooLarge, CodePartHeaderTooBig, "max_part_header_size", f.maxHeader, "part header")
	e.Part = &PartRef{Index: index}
	return e
}

func (f *Reader) formHeadersTooLarge(index int) *Error {
	e := limitError(http.StatusRequestHeaderFieldsTooLarge, CodePartHeaderTooBig, "max_form_header_size", f.maxHeaders, "part headers of the form")
	e.Part = &PartRef{Index: index}
	return e
}

// parseHeader checks the part's header and fills in its name, filename and type.
func (p *Part) parseHeader() *Error {
	bad := func(format string, args ...any) *Error {
		e := malformed(fmt.Errorf(format, args...))
		e.Part = p.Ref()
		return e
	}
	cds := p.Header["Content-Disposition"]
	if len(cds) != 1 {
		return bad("part %d has %d Content-Disposition headers, want 1", p.Index, len(cds))
	}
	disposition, params, err := mime.ParseMediaType(cds[0])
	if err != nil {
		disposition, params, err = mime.ParseMediaType(quoteUTF8Tokens(cds[0]))
	}
	if err != nil {
		return bad("part %d Content-Disposition: %v", p.Index, err)
	}
	if disposition != "form-data" {
		return bad("part %d Content-Disposition is %q, want form-data", p.Index, disposition)
	}
	// Copies: the parsed values may be cut from the whole header block
	// (header.go), which a part's result would otherwise keep.
	p.Field = strings.Clone(params["name"])
	if p.Field == "" {
		return bad("part %d has no name", p.Index)
	}
	p.Filename = strings.Clone(params["filename"])
	p.params = dispositionParams(cds[0])
	// A file input left empty comes as filename="" with no data: like Go's
	// ReadForm, busboy and multer, the gateway takes it for a field, not a file.
	p.IsFile = slices.ContainsFunc(p.params, func(kv string) bool {
		key, value := splitParam(kv)
		return isFilenameParam(key) && value != ""
	})
	if ctes := p.Header["Content-Transfer-Encoding"]; len(ctes) > 1 || len(ctes) == 1 && !identityEncoding(ctes[0]) {
		return &Error{
			Status:  http.StatusBadRequest,
			Code:    CodeTransferEncoding,
			Message: "parts must not have a Content-Transfer-Encoding other than binary, 8bit or 7bit (RFC 7578)",
			Part:    p.Ref(),
		}
	}
	if cts := p.Header["Content-Type"]; len(cts) > 1 {
		return bad("part %d has %d Content-Type headers", p.Index, len(cts))
	} else if len(cts) == 1 {
		if _, _, err := mime.ParseMediaType(cts[0]); err != nil {
			return bad("part %d Content-Type: %v", p.Index, err)
		}
		p.ContentType = strings.Clone(cts[0])
	}
	return nil
}

// next returns the part's next run of data, or io.EOF at its end. The run is
// a slice of the client's read buffer, valid until the next call: callers
// write it on, uncopied. A body that ends inside the part is an error.
func (p *Part) Next() ([]byte, error) {
	if p.done {
		return nil, io.EOF
	}
	var err error
	b := p.ahead()
	if b == nil {
		b, err = p.f.data()
	}
	if err == io.EOF {
		p.done = true
		if p.digests != nil {
			if verr := p.digests.verify(); verr != nil {
				return nil, &Error{Status: http.StatusBadRequest, Code: CodeDigestMismatch,
					Message: verr.Error(), Part: p.Ref()}
			}
		}
		return nil, io.EOF
	}
	if err != nil {
		return nil, p.f.readError(err, p)
	}
	p.Size += int64(len(b))
	if p.Size > p.limit {
		code := CodePartTooLarge
		if p.lname == "max_field_size" {
			code = CodeFieldTooLarge
		}
		e := limitError(http.StatusRequestEntityTooLarge, code, p.lname, p.limit, "part")
		e.Part = p.Ref()
		return nil, e
	}
	if p.digests != nil {
		p.digests.w.Write(b) // hashes never fail
	}
	return b, nil
}

// Read copies the part's data into b, for readers that keep it (text fields).
func (p *Part) Read(b []byte) (int, error) {
	if len(p.pending) == 0 {
		var err error
		if p.pending, err = p.Next(); err != nil {
			return 0, err
		}
	}
	n := copy(b, p.pending)
	p.pending = p.pending[n:]
	return n, nil
}

func (p *Part) Ref() *PartRef {
	return &PartRef{Index: p.Index, Field: p.Field, Filename: p.Filename}
}

// AppendHeader appends the part's header as the backend gets it to b, a
// "Key: value\r\n" line a value, keys in the order mime/multipart's
// CreatePart writes them: the Content-Disposition of Disposition, the
// other fields as they came. It copies into b only, so that a caller can
// write every part header from one buffer.
func (p *Part) AppendHeader(b []byte) []byte {
	var stack [8]string
	keys := stack[:0]
	for k := range p.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k == "Content-Disposition" {
			b = append(b, "Content-Disposition: "...)
			b = p.appendDisposition(b)
			b = append(b, "\r\n"...)
			continue
		}
		for _, v := range p.Header[k] {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	return b
}

// disposition is the part's Content-Disposition as backends get it. The name
// is written anew from what was parsed, so that the backend cannot read
// another name than the one allow_fields checked. The other parameters go as
// the client sent them (filename and filename* both, when both came), so that
// every parser reads the filename it would read without the gateway; they
// came through the header parser (header.go), so they hold no CR, LF or
// other control byte.
func (p *Part) Disposition() string { return string(p.appendDisposition(nil)) }

func (p *Part) appendDisposition(b []byte) []byte {
	b = append(b, `form-data; name="`...)
	b = append(b, quoteParam(p.Field)...)
	b = append(b, '"')
	for _, kv := range p.params {
		b = append(b, "; "...)
		b = append(b, kv...)
	}
	return b
}

// quoteParam escapes a parameter value for a quoted string as mime/multipart
// does (a backslash before each \ and "), so that parsers read back the same
// bytes. UTF-8 names are written as they are, as browsers send them.
var quoteParam = strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace

// dispositionParams returns the parameters of a Content-Disposition that
// parseHeader accepted, each as sent (filename* with its charset), without
// the name parameters (name, name*, name*0…).
func dispositionParams(cd string) []string {
	var out []string
	for _, kv := range splitParams(cd) {
		kv = strings.TrimSpace(kv)
		if key, _ := splitParam(kv); kv != "" && key != "name" && !strings.HasPrefix(key, "name*") {
			out = append(out, kv)
		}
	}
	return out
}

// splitParams splits a header value at the semicolons outside quoted strings
// and returns what follows the first, the parameters. Quoted strings are
// skipped as mime's consumeValue reads them.
func splitParams(cd string) []string {
	var out []string
	start := -1 // where the current parameter starts; -1 inside the type
	quoted, escaped := false, false
	for i := 0; i < len(cd); i++ {
		switch c := cd[i]; {
		case escaped:
			escaped = false
		case quoted && c == '\\':
			escaped = true
		case c == '"':
			quoted = !quoted
		case !quoted && c == ';':
			if start >= 0 {
				out = append(out, cd[start:i])
			}
			start = i + 1
		}
	}
	if start >= 0 {
		out = append(out, cd[start:])
	}
	return out
}

// quoteUTF8Tokens puts quotes around unquoted parameter values with bytes
// over 0x7f (filename=näme.txt, as some clients send it), which
// mime.ParseMediaType refuses as tokens but reads as quoted strings.
func quoteUTF8Tokens(cd string) string {
	typ, _, _ := strings.Cut(cd, ";")
	var sb strings.Builder
	sb.WriteString(typ)
	for _, kv := range splitParams(cd) {
		sb.WriteString(";")
		key, value, ok := strings.Cut(kv, "=")
		v := strings.TrimSpace(value)
		if ok && v != "" && v[0] != '"' && !strings.ContainsAny(v, "\" \t\\") &&
			strings.ContainsFunc(v, func(r rune) bool { return r > 0x7f }) {
			kv = key + `="` + v + `"`
		}
		sb.WriteString(kv)
	}
	return sb.String()
}

// splitParam returns a parameter's key, lowercased, and its value without
// quotes and, for an RFC 2231 extended value (key*), without its charset and
// language: what tells an empty filename.
func splitParam(kv string) (key, value string) {
	key, value, _ = strings.Cut(kv, "=")
	key = strings.ToLower(strings.TrimSpace(key))
	value = strings.TrimSpace(value)
	if len(value) >= 2 && value[0] == '"' {
		value = value[1 : len(value)-1]
	}
	if strings.HasSuffix(key, "*") {
		if _, rest, ok := strings.Cut(value, "'"); ok {
			if _, rest, ok = strings.Cut(rest, "'"); ok {
				value = rest
			}
		}
	}
	return key, value
}

// isFilenameParam reports whether key is filename, filename* or one of its
// RFC 2231 continuations (filename*0, filename*1*…).
func isFilenameParam(key string) bool {
	return key == "filename" || strings.HasPrefix(key, "filename*")
}

// identityEncoding reports whether a part's Content-Transfer-Encoding names
// no encoding (RFC 2045: the data is as it is). Apache HttpClient 4 sends
// binary on every part; the header is forwarded as it came.
func identityEncoding(cte string) bool {
	switch strings.ToLower(strings.TrimSpace(cte)) {
	case "binary", "8bit", "7bit":
		return true
	}
	return false
}

// forwardable refuses a part whose name cannot be written into a part header:
// one with a control character, which only RFC 2231's name*= can carry, and
// which would end the header line (CR, LF) or make the backend's parser
// refuse the header. Other parameters go as they came (disposition).
//
// Every other header value is checked as a transport would, so that a
// value no backend may be sent is the client's 400 in every mode.
func (p *Part) Forwardable() error {
	bad := func(what string) error {
		e := malformed(fmt.Errorf("part %d: %s cannot be forwarded", p.Index, what))
		e.Part = p.Ref()
		return e
	}
	if strings.ContainsFunc(p.Field, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }) {
		return bad("a name with a control character")
	}
	for k, vs := range p.Header {
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return bad("its " + k + " header, with a control character,")
			}
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

// readError classifies a failure met while reading the form: a refusal of
// the reader's own, or the failure of its source (the client's body, whose
// errors the caller classified: a timeout, a broken limit, a backend gone),
// passes as it is; anything else is what mime/multipart found wrong with
// the body.
func (f *Reader) readError(err error, p *Part) error {
	var ue *Error
	if errors.As(err, &ue) {
		return ue
	}
	if serr := f.src.failure(err); serr != nil {
		return serr
	}
	ue = malformed(err)
	if p != nil {
		ue.Part = p.Ref()
	}
	return ue
}
