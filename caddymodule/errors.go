package streamproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
	"github.com/streamproxy/caddy-stream-proxy/store"
)

// Stable, machine-readable codes of refused or failed uploads. They appear in
// the JSON error body, in {http.stream_proxy.error.code} and in the logs.
const (
	CodeMalformed        = formreader.CodeMalformed
	CodeBodyTooLarge     = "body_too_large"
	CodePartTooLarge     = formreader.CodePartTooLarge
	CodeFieldTooLarge    = formreader.CodeFieldTooLarge
	CodeTooManyParts     = formreader.CodeTooManyParts
	CodePartHeaderTooBig = formreader.CodePartHeaderTooBig
	CodeTransferEncoding = formreader.CodeTransferEncoding
	CodeFieldNotAllowed  = formreader.CodeFieldNotAllowed
	CodeTypeNotAllowed   = formreader.CodeTypeNotAllowed
	CodeTypeMismatch     = formreader.CodeTypeMismatch // verify_types: the bytes contradict the declared type
	CodeClientGone       = store.CodeClientGone
	CodeClientTimeout    = "client_timeout"
	CodeClientTooSlow    = "client_too_slow" // slower than min_rate for longer than its grace
	CodeBackendFailed    = "backend_failed"
	CodeBackendTimeout   = "backend_timeout"
	CodeBackendRejected  = "backend_rejected"
	// CodeBackendAnsweredEarly: the backend answered 2xx before it took the
	// whole upload, which therefore did not succeed.
	CodeBackendAnsweredEarly = "backend_answered_early"
	CodeNoUpstream           = "no_upstream"
	CodeDigestMismatch       = formreader.CodeDigestMismatch
	// The stores' codes, defined with the store API (package store).
	CodeStorageFull      = store.CodeStorageFull
	CodeStoreFailed      = store.CodeStoreFailed
	CodeStoreUnavailable = store.CodeStoreUnavailable
	CodeStoreDenied      = store.CodeStoreDenied
	CodeStoreNoBucket    = store.CodeStoreNoBucket
	CodeMetadataTooLarge = store.CodeMetadataTooLarge
	// CodeHeaderValueInvalid: a client value (a form field through
	// header_up) that no transport would send in a header.
	CodeHeaderValueInvalid = "header_value_invalid"
)

// statusClientClosed is logged when the client went away; nobody reads it.
const statusClientClosed = store.StatusClientClosed

// uploadError is a refused or failed upload: what the client is told.
type uploadError struct {
	Status  int                 `json:"status"`
	Code    string              `json:"code"`
	Message string              `json:"message"`
	Limit   string              `json:"limit,omitempty"`
	Part    *formreader.PartRef `json:"part,omitempty"`
	// With verify_types, a refused file part's type as declared and as its
	// first bytes show it.
	DeclaredType string `json:"declared_type,omitempty"`
	DetectedType string `json:"detected_type,omitempty"`

	err error // the cause, for logs and errors.Is
}

func (e *uploadError) Error() string {
	if e.err != nil {
		return e.Message + ": " + e.err.Error()
	}
	return e.Message
}

func (e *uploadError) Unwrap() error { return e.err }

// writeJSON writes the error as the response, with the parts handled before
// it (per_part and store mode).
func (e *uploadError) writeJSON(w http.ResponseWriter, parts []partResult) {
	if e.Status == statusClientClosed {
		w.WriteHeader(e.Status) // for the access log only
		return
	}
	writeJSON(w, e.Status, struct {
		Error *uploadError `json:"error"`
		Parts []partResult `json:"parts,omitempty"`
	}{e, parts})
}

// writeError is a failure to write to the backend, met while reading the
// client's body; it is the backend's, never a malformed body.
type writeError struct{ error }

func (e writeError) Unwrap() error { return e.error }

// asUploadError returns err as an uploadError; a form reader's or a store's
// error is turned into one, and anything else is a malformed body.
func asUploadError(err error) *uploadError {
	if ue := classified(err); ue != nil {
		return ue
	}
	return malformed(err)
}

// classified is the uploadError err carries: its own, or the one made of a
// form reader's refusal or a store's failure; nil when it carries none.
func classified(err error) *uploadError {
	var ue *uploadError
	if errors.As(err, &ue) {
		return ue
	}
	var fe *formreader.Error
	if errors.As(err, &fe) {
		return &uploadError{Status: fe.Status, Code: fe.Code, Message: fe.Message, Limit: fe.Limit, Part: fe.Part,
			DeclaredType: fe.DeclaredType, DetectedType: fe.DetectedType, err: fe.Err}
	}
	var se *store.Error
	if errors.As(err, &se) {
		return &uploadError{Status: se.Status, Code: se.Code, Message: se.Message, Limit: se.Limit, err: se.Err}
	}
	return nil
}

func malformed(err error) *uploadError {
	return &uploadError{Status: http.StatusBadRequest, Code: CodeMalformed, Message: "malformed multipart body: " + err.Error()}
}

func limitError(status int, code, limit string, max int64, what string) *uploadError {
	return &uploadError{
		Status:  status,
		Code:    code,
		Limit:   limit,
		Message: fmt.Sprintf("%s exceeds %s (%d)", what, limit, max),
	}
}

// clientReadError classifies a failure to read the client's body.
func clientReadError(err error) *uploadError {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) { // Caddy's request_body max_size
		return limitError(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "request_body max_size", mbe.Limit, "request body")
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &uploadError{Status: http.StatusRequestTimeout, Code: CodeClientTimeout, Message: "client stopped sending", err: err}
	}
	return &uploadError{Status: statusClientClosed, Code: CodeClientGone, Message: "client went away", err: err}
}

// backendError classifies a failed round trip, as reverse_proxy does; 503 is
// its answer when no upstream is available.
func backendError(err error, clientGone bool) *uploadError {
	if clientGone || errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "operation was canceled") {
		return &uploadError{Status: statusClientClosed, Code: CodeClientGone, Message: "client went away", err: err}
	}
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode == http.StatusServiceUnavailable {
		return &uploadError{Status: http.StatusServiceUnavailable, Code: CodeNoUpstream, Message: "no upstream available", err: err}
	}
	var ne net.Error
	if (errors.As(err, &ne) && ne.Timeout()) || he.StatusCode == http.StatusGatewayTimeout {
		return &uploadError{Status: http.StatusGatewayTimeout, Code: CodeBackendTimeout, Message: "backend timed out", err: err}
	}
	return &uploadError{Status: http.StatusBadGateway, Code: CodeBackendFailed, Message: "backend failed", err: err}
}

// asStoreError passes a classified failure as it is and makes anything else
// a failure of the store.
func asStoreError(err error) error {
	var ue *uploadError
	var we writeError
	if errors.As(err, &ue) || errors.As(err, &we) {
		return err
	}
	if ue := classified(err); ue != nil {
		return ue
	}
	return classified(store.Failed(err))
}
