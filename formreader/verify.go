package formreader

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/gabriel-vasile/mimetype"
)

// verify_types: a file part is judged by its first bytes, with the detection
// of github.com/gabriel-vasile/mimetype, before any of it goes on. The
// form reader reads the prefix ahead and hands it out first, then the rest,
// byte for byte as it came (Part.next).

// verifyPrefix is how much of a file part is judged: as much as mimetype
// reads of a file itself (its default limit), enough for the signatures of
// every container it knows, ftyp brands and zip entries included.
const verifyPrefix = 4096

// detectedEmpty is the detected type of a file part with no data: nothing
// to recognise.
const detectedEmpty = "application/octet-stream"

// prefixBufs holds the prefix of a part whose first reads from the client
// were shorter than verifyPrefix (a client that writes in small pieces); a
// part whose first run is long enough is judged in place, uncopied.
var prefixBufs = sync.Pool{New: func() any { return new([verifyPrefix]byte) }}

// readPrefix reads the part's first verifyPrefix bytes, or all of it when it
// is shorter, and keeps them to be handed out first by next. The returned
// slice is valid until next is called.
func (p *Part) readPrefix() ([]byte, error) {
	f := p.f
	b, err := f.data()
	if err == io.EOF {
		return nil, nil
	}
	if err != nil {
		return nil, p.f.readError(err, p)
	}
	if len(b) >= verifyPrefix {
		p.held[0] = b // a slice of the read buffer, valid until it is read again
		return b[:verifyPrefix], nil
	}
	p.pbuf = prefixBufs.Get().(*[verifyPrefix]byte)
	n := copy(p.pbuf[:], b)
	for n < verifyPrefix {
		if b, err = f.data(); err == io.EOF {
			break
		}
		if err != nil {
			return nil, p.f.readError(err, p)
		}
		m := copy(p.pbuf[n:], b)
		n += m
		p.held[1] = b[m:] // what is past the prefix, in the read buffer; read no more before it is handed out
	}
	p.held[0] = p.pbuf[:n]
	return p.held[0], nil
}

// ahead returns the next run read ahead by readPrefix, or nil once all have
// been handed out (the copy's buffer then goes back to its pool: the caller
// has written it on).
func (p *Part) ahead() []byte {
	for i, b := range p.held {
		if len(b) > 0 {
			p.held[i] = nil
			return b
		}
	}
	if p.pbuf != nil {
		prefixBufs.Put(p.pbuf)
		p.pbuf = nil
	}
	return nil
}

// verifyType reads the file part's prefix and judges it (judgeType); it
// sets DetectedType.
func (p *Part) verifyType(allow []string) error {
	prefix, err := p.readPrefix()
	if err != nil {
		return err // classified by readError
	}
	var detected *mimetype.MIME
	p.DetectedType = detectedEmpty
	if len(prefix) > 0 {
		detected = mimetype.Detect(prefix)
		p.DetectedType = detected.String()
	}
	code := judgeType(p.ContentType, detected, allow)
	if code == "" {
		return nil
	}
	declared := p.ContentType
	if declared == "" {
		declared = "application/octet-stream"
	}
	e := &Error{Status: http.StatusUnsupportedMediaType, Code: code, Part: p.Ref(),
		DeclaredType: declared, DetectedType: p.DetectedType}
	if code == CodeTypeMismatch {
		e.Message = fmt.Sprintf("part %d is declared %q, but its first bytes are %s", p.Index, declared, p.DetectedType)
	} else {
		e.Limit = "allow_types"
		e.Message = fmt.Sprintf("part %d is %s by its first bytes (declared %q), which is not in allow_types", p.Index, p.DetectedType, declared)
	}
	return e
}

// judgeType decides on a file part declared a Content-Type and whose first
// bytes are detected (nil: the part has no data). It returns "" when the
// part passes, CodeTypeMismatch when the bytes contradict a specific
// declared type, CodeTypeNotAllowed when allow (if set) takes neither.
//
//   - A part with no data has nothing to judge: it passes or fails by its
//     declared type, as without verify_types.
//   - A specific declared type must agree with the bytes (typesAgree).
//     application/octet-stream, or no type, is judged by the bytes alone.
//   - allow takes the detected type (or a name of its family), or a
//     declared type more specific than what the prefix tells (narrower).
func judgeType(contentType string, detected *mimetype.MIME, allow []string) string {
	declared := bareType(contentType) // parseHeader checked it
	if declared == "application/octet-stream" {
		declared = ""
	}
	if detected == nil {
		if len(allow) > 0 && !typeAllowed(contentType, allow) {
			return CodeTypeNotAllowed
		}
		return ""
	}
	if declared != "" && !typesAgree(declared, detected) {
		return CodeTypeMismatch
	}
	if len(allow) == 0 || detectedAllowed(detected, allow) ||
		(declared != "" && narrower(declared, detected) && typeAllowed(declared, allow)) {
		return ""
	}
	return CodeTypeNotAllowed
}

// narrower reports whether the declared type is a subtype, in the library's
// tree, of the detected type: what the prefix could not tell (a docx that
// is a zip so far), never the detected type under another name.
func narrower(declared string, detected *mimetype.MIME) bool {
	lin := lineage(detected)
	d := canonicalType(declared)
	return len(lin) > 0 && d != lin[0] && slices.Contains(lineage(mimetype.Lookup(d)), lin[0])
}

// typeAliases are names clients send for types that the library knows under
// another name and does not list as an alias.
var typeAliases = map[string]string{
	"image/jpg":        "image/jpeg",
	"image/pjpeg":      "image/jpeg",
	"image/x-png":      "image/png",
	"image/x-tiff":     "image/tiff",
	"audio/x-flac":     "audio/flac",
	"audio/x-mp3":      "audio/mpeg",
	"audio/mpeg3":      "audio/mpeg",
	"audio/x-mpeg-3":   "audio/mpeg",
	"audio/m4a":        "audio/x-m4a",
	"audio/opus":       "audio/ogg", // Opus in Ogg, as browsers record it
	"audio/vorbis":     "audio/ogg",
	"audio/matroska":   "video/matroska",
	"audio/x-matroska": "video/matroska",
}

// typeFamilies are types of one container that the library tells apart by
// brand or medium, though each names the same bytes to a demuxer: an audio
// m4a declared video/mp4 or audio/mp4, a webm declared video/x-matroska, an
// Ogg Opus file declared video/ogg. Types of one family agree, and a
// wildcard in allow_types takes any name of the detected type's family
// (audio/* takes a webm, whose medium the prefix cannot tell).
var typeFamilies = [][]string{
	{"video/mp4", "audio/mp4", "audio/x-m4a", "video/x-m4v", "video/quicktime"},
	{"video/matroska", "video/webm", "audio/webm", "audio/x-matroska"},
	{"application/ogg", "audio/ogg", "video/ogg"},
	{"image/heif", "image/heic", "image/heif-sequence", "image/heic-sequence"},
}

var familyOf = func() map[string]int {
	m := make(map[string]int)
	for i, names := range typeFamilies {
		for _, n := range names {
			m[n] = i
		}
	}
	return m
}()

// generalTypes are the detected types that a more specific type may hide
// behind in a prefix: a CSV of one line is text/plain, a docx whose telling
// entry comes late is a zip. A declared type under them in the library's
// tree agrees with them.
var generalTypes = []string{"text/plain", "text/xml", "application/json", "application/zip", "application/x-ole-storage"}

// canonicalType is name as the library knows it (its main name for an
// alias), or name itself for a type it does not know.
func canonicalType(name string) string {
	if a, ok := typeAliases[name]; ok {
		return a
	}
	if m := mimetype.Lookup(name); m != nil {
		return bareType(m.String())
	}
	return name
}

// knownType reports whether the library can detect name (or an alias of it).
func knownType(name string) bool {
	_, ok := typeAliases[name]
	return ok || mimetype.Lookup(name) != nil
}

// lineage is m's type and its ancestors in the library's tree, without the
// root, application/octet-stream (bytes it does not recognise): empty for
// those.
func lineage(m *mimetype.MIME) []string {
	var out []string
	for ; m != nil && m.Parent() != nil; m = m.Parent() {
		out = append(out, bareType(m.String()))
	}
	return out
}

func bareType(t string) string {
	t, _, _ = strings.Cut(t, ";")
	return strings.ToLower(strings.TrimSpace(t))
}

func sameFamily(a, b string) bool {
	fa, ok := familyOf[a]
	fb, ok2 := familyOf[b]
	return ok && ok2 && fa == fb
}

// typesAgree reports whether bytes detected as detected may be of the
// specific declared type: the bytes are of that type or a subtype of it
// (an SVG declared text/plain); or of a general type the declared one is
// under (generalTypes); or of the declared type's family (typeFamilies); or
// the library does not know the declared type and recognises nothing
// specific in the bytes (text/plain, or nothing at all). Bytes it does not
// recognise contradict a type whose signature it knows.
func typesAgree(declared string, detected *mimetype.MIME) bool {
	lin := lineage(detected)
	if len(lin) > 0 && lin[0] == declared {
		return true // the common case, without a lookup
	}
	d := canonicalType(declared)
	if slices.Contains(lin, d) {
		return true
	}
	if !knownType(declared) {
		return len(lin) == 0 || lin[0] == "text/plain"
	}
	if len(lin) == 0 {
		return false
	}
	if slices.Contains(generalTypes, lin[0]) && slices.Contains(lineage(mimetype.Lookup(d)), lin[0]) {
		return true
	}
	return sameFamily(d, lin[0])
}

// detectedAllowed reports whether allow takes the detected type: the type
// itself or one of the library's aliases of it (audio/x-wav for audio/wav),
// or for a wildcard, any name of its family.
func detectedAllowed(detected *mimetype.MIME, allow []string) bool {
	t := bareType(detected.String())
	names := []string{t}
	if i, ok := familyOf[t]; ok {
		names = typeFamilies[i]
	}
	for _, p := range allow {
		p = strings.ToLower(p)
		switch {
		case p == "*/*":
			return true
		case strings.HasSuffix(p, "/*"):
			for _, n := range names {
				if major, _, _ := strings.Cut(n, "/"); major+"/*" == p {
					return true
				}
			}
		case p == t || detected.Is(p) || canonicalType(p) == t || sameFamily(canonicalType(p), t):
			return true
		}
	}
	return false
}

// reservedField reports whether a part's name is one the gateway writes
// itself with verify_types (`<field>.detected_type`), which a client must
// not be able to forge.
func reservedField(name string) bool {
	return strings.HasSuffix(name, ".detected_type")
}
