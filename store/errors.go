package store

import "net/http"

// Stable, machine-readable codes of a store's failures. The handler puts them
// in its JSON error body, in {http.stream_proxy.error.code} and in the logs;
// the README lists them. A store may use others, but clients and dashboards
// know these.
const (
	CodeStorageFull      = "insufficient_storage" // 507: the disk or quota is full, or the file passes the system's size limit
	CodeStoreFailed      = "store_failed"         // 500 (502 from a server): no status of its own
	CodeStoreUnavailable = "store_unavailable"    // 503: unreachable, failing (5xx) or stalled
	CodeStoreDenied      = "store_denied"         // 502: the server refused the gateway's credentials
	CodeStoreNoBucket    = "store_no_bucket"      // 502: the bucket or container does not exist
	CodeMetadataTooLarge = "metadata_too_large"   // 400: a file's name would pass the store's metadata limit
	// CodeClientGone is for a store whose request's context ended: the
	// client went away, and nobody reads the answer (StatusClientClosed).
	CodeClientGone = "client_gone"
)

// StatusClientClosed is the status of CodeClientGone: logged, never read.
const StatusClientClosed = 499

// Error is a store's failure as the client is to be told it: the handler
// answers with Status and a JSON body carrying Code, Message and Limit. The
// message is the client's: it must not carry credentials, keys of other
// uploads or the server's own words; Err, the cause, goes to the logs only.
type Error struct {
	Status  int    // HTTP status of the answer
	Code    string // one of the Code constants, or another stable snake_case code
	Message string // for the client
	Limit   string // the limit that was passed, for a refusal (4xx); else empty
	Err     error  // the cause, for logs and errors.Is
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Failed is a failure of the store that has no status of its own: 500
// store_failed.
func Failed(err error) *Error {
	return &Error{Status: http.StatusInternalServerError, Code: CodeStoreFailed, Message: "storing the upload failed", Err: err}
}

// ClientGone is the failure of a store whose request's context ended.
func ClientGone(err error) *Error {
	return &Error{Status: StatusClientClosed, Code: CodeClientGone, Message: "client went away", Err: err}
}
