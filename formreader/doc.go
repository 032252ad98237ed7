// Package formreader is the strict, streaming multipart/form-data reader of
// stream_proxy: it reads a form one part at a time from the client's body,
// in constant memory (part data is handed out as slices of the caller's read
// buffer), and refuses with an *Error (status, stable code, the part) what
// the handler's limits forbid or what mime/multipart would read otherwise:
// too many parts, parts or headers too large, fields and types not allowed,
// Content-Transfer-Encoding, a missing closing delimiter. It computes the
// configured digests of each file part and checks those the part declared,
// and with verify_types judges a file's type by its first bytes.
//
// It knows nothing of Caddy or of where parts go: the handler gives it a
// Limits and an Observer, and turns its *Error into its answer.
package formreader

import "net/textproto"

// VerifyPrefix is how many first bytes of a file part verify_types judges.
const VerifyPrefix = verifyPrefix

// HeaderSize is what a part header counts against MaxPartHeaderSize and
// MaxFormHeaderSize: its size as it would be written.
func HeaderSize(h textproto.MIMEHeader) int64 { return headerSize(h) }

// LenientDisposition is a Content-Disposition as the reader parses it when
// mime.ParseMediaType refuses it as sent: with quotes around unquoted values
// holding UTF-8 (filename=näme.txt, as some clients send it).
func LenientDisposition(cd string) string { return quoteUTF8Tokens(cd) }
