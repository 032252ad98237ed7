package formreader

import (
	"fmt"
	"net/http"
)

// Stable, machine-readable codes of the forms the reader refuses. The
// handler puts them in its JSON error body, in
// {http.stream_proxy.error.code} and in the logs.
const (
	CodeMalformed        = "malformed_multipart"
	CodePartTooLarge     = "part_too_large"
	CodeFieldTooLarge    = "field_too_large"
	CodeTooManyParts     = "too_many_parts"
	CodePartHeaderTooBig = "part_header_too_large"
	CodeTransferEncoding = "content_transfer_encoding"
	CodeFieldNotAllowed  = "field_not_allowed"
	CodeTypeNotAllowed   = "type_not_allowed"
	CodeTypeMismatch     = "type_mismatch" // verify_types: the bytes contradict the declared type
	CodeDigestMismatch   = "digest_mismatch"
)

// PartRef names the part an error is about.
type PartRef struct {
	Index    int    `json:"index"`
	Field    string `json:"field,omitempty"`
	Filename string `json:"filename,omitempty"`
}

// Error is a form the reader refuses: the status and code the client is to
// get, the limit it broke, the part.
type Error struct {
	Status  int
	Code    string
	Message string
	Limit   string
	Part    *PartRef
	// With verify_types, a refused file part's type as declared and as its
	// first bytes show it.
	DeclaredType string
	DetectedType string

	Err error // the cause, for logs and errors.Is
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

func malformed(err error) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeMalformed, Message: "malformed multipart body: " + err.Error()}
}

func limitError(status int, code, limit string, max int64, what string) *Error {
	return &Error{
		Status:  status,
		Code:    code,
		Limit:   limit,
		Message: fmt.Sprintf("%s exceeds %s (%d)", what, limit, max),
	}
}
