// Package streamproxy is a Caddy HTTP handler that re-streams multipart/form-data
// uploads part by part, as they arrive, in constant memory.
package streamproxy

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
	"github.com/streamproxy/caddy-stream-proxy/store"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Modes of operation.
const (
	ModeForward = "forward"
	ModePerPart = "per_part"
	ModeStore   = "store"
)

// Defaults for a public edge. Every one can be raised or lowered in the config.
const (
	DefaultMaxBodySize       = 10 << 30 // 10 GiB
	DefaultMaxParts          = 1000
	DefaultMaxFieldSize      = 1 << 20  // 1 MiB
	DefaultMaxPartHeaderSize = 16 << 10 // 16 KiB
	// DefaultMaxFormHeaderSize bounds all part headers of one form: the
	// default max_parts with 512 bytes of headers each, more than a browser
	// sends even for a folder of files with long paths (a part header is
	// 100 to 300 bytes), and small enough that a stream of large part
	// headers costs about what a plain upload does.
	DefaultMaxFormHeaderSize = 512 << 10 // 512 KiB
	// DefaultWriteBuffer and DefaultReadBuffer are the http transport's,
	// unless write_buffer or read_buffer is set. Every backend connection
	// holds both for as long as its upload lasts, a slow upload's too. A
	// chunk's bulk is written past the write buffer, so a larger one saves no
	// CPU (docs/performance.md); 2 KiB still holds a trickling client's 1 KiB
	// chunk with its size line whole. The read buffer takes only the
	// backend's answer to an upload, a status line and a few headers; longer
	// lines are read in pieces. Half of net/http's 4 KiB each left 4-6 KiB
	// less held per slow upload.
	DefaultWriteBuffer = 2 << 10
	DefaultReadBuffer  = 1 << 10
)

// Handler intercepts multipart/form-data requests and moves every part to
// where it belongs while it arrives, without holding any body, part or field in
// memory. Requests that are not multipart/form-data pass to the next handler
// with their body unread.
//
// Every backend request goes through a reverse_proxy handler provisioned
// inside this one, with its pools, health checks and transports. In forward
// mode (the default) the client's form is re-encoded under a fresh boundary
// and streamed into one backend request while it arrives, whose response
// streams back. In per_part mode each file part is streamed as the
// body of its own backend request, and the client gets JSON listing every part.
// In store mode file parts are written under generated names into a store
// module (a directory, S3-compatible object storage), made visible only when
// the whole form ended cleanly.
//
// Statuses it answers with itself, each with a JSON body carrying a stable
// `code` (see the README): 400 for malformed multipart, a refused field or a
// digest mismatch, 408 when the client stops sending within the server's read
// timeouts (client_timeout) or sends slower than min_rate (client_too_slow), 413 when a size or count limit is broken, 415 for a refused content
// type, 431 for an oversized part header, 499 (logged only) when the client
// goes away, 502 when the backend cannot be reached or fails mid-stream, or
// when S3 refuses the credentials or has no such bucket, or when the backend
// answered 2xx before it took the whole upload (backend_answered_early), 503
// when no upstream is available or S3 cannot be reached, 504 when the backend
// times out or takes no byte of the upload for backend_stall_timeout, 507
// when the disk store is full. When the site has `handle_errors` routes, the
// error is returned to them instead.
//
// Placeholders it sets on the request:
//
//	{http.stream_proxy.mode}                 the handler's mode
//	{http.stream_proxy.form.<name>}          an earlier text field (per_part, store), up to 8 KiB
//	{http.stream_proxy.part.index}           the current part's index, from 0
//	{http.stream_proxy.part.field}           its name
//	{http.stream_proxy.part.filename}        its filename, as sent
//	{http.stream_proxy.part.content_type}    its Content-Type
//	{http.stream_proxy.part.detected_type}   with verify_types, a file part's type as its first bytes show it
//	{http.stream_proxy.parts}                parts read, when the upload ends
//	{http.stream_proxy.bytes_in}             body bytes read, when the upload ends
//	{http.stream_proxy.bytes_out}            part bytes delivered, when the upload ends
//	{http.stream_proxy.outcome}              ok, backend_error, refused, client_gone or failed
//	{http.stream_proxy.error.code}           machine-readable code of a refused or failed upload
//	{http.stream_proxy.error.limit}          the limit that was broken, if any
type Handler struct {
	// Proxy is the reverse_proxy handler that makes every backend request:
	// the forward request, each per_part request and store mode's request
	// with the stored files' metadata. Upstream pools, load balancing,
	// health checks, retries, X-Forwarded-* and header manipulation, and the
	// transport are its own. The Caddyfile's upstreams fill it; a path in
	// them becomes its rewrite, with placeholders expanded per request.
	// Required in forward and per_part mode.
	ProxyRaw json.RawMessage `json:"proxy,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	// Mode is one of `forward`, `per_part` or `store`. Default: `forward`.
	Mode string `json:"mode,omitempty"`

	// StoreRaw is where store mode writes file parts: a module of the
	// `http.handlers.stream_proxy.stores` namespace, `file` (a directory) or
	// `s3` (S3-compatible object storage). Required in store mode, refused
	// in the others.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.handlers.stream_proxy.stores inline_key=module"`

	// MaxBodySize is the largest request body accepted, in bytes.
	// A declared Content-Length above it is refused before any byte is read.
	// Default: 10 GiB.
	MaxBodySize int64 `json:"max_body_size,omitempty"`

	// MaxPartSize is the largest single part accepted, in bytes.
	// Default: MaxBodySize.
	MaxPartSize int64 `json:"max_part_size,omitempty"`

	// MaxParts is the largest number of parts accepted in one form. Default: 1000.
	MaxParts int `json:"max_parts,omitempty"`

	// MaxFieldSize is the largest non-file field accepted, in bytes.
	// Default: 1 MiB.
	MaxFieldSize int64 `json:"max_field_size,omitempty"`

	// MaxPartHeaderSize is the largest header block of one part, in bytes.
	// Default: 16 KiB.
	MaxPartHeaderSize int64 `json:"max_part_header_size,omitempty"`

	// MaxFormHeaderSize is the most bytes all part headers of one form may
	// take together: past it the upload fails with 431 (code
	// part_header_too_large, limit max_form_header_size), so that a stream
	// of parts with large headers costs no more than a plain upload.
	// Default: 512 KiB.
	MaxFormHeaderSize int64 `json:"max_form_header_size,omitempty"`

	// AllowFields, when set, lists the only part names accepted; a part with
	// any other name fails the upload with 400 (code field_not_allowed).
	AllowFields []string `json:"allow_fields,omitempty"`

	// AllowTypes, when set, lists the Content-Types accepted for file parts,
	// as media types (image/png) or type wildcards (audio/*). A file part
	// without a Content-Type is application/octet-stream (RFC 7578). Any other
	// type fails the upload with 415 (code type_not_allowed).
	AllowTypes []string `json:"allow_types,omitempty"`

	// VerifyTypes judges each file part by its first 4 KiB too, not only by
	// the Content-Type the client declares (verify.go): a part whose bytes
	// contradict a specific declared type fails the upload with 415 (code
	// type_mismatch), and AllowTypes is checked against the type the bytes
	// show, before any of the part goes on. Default: false.
	VerifyTypes bool `json:"verify_types,omitempty"`

	// Hash lists the digests computed over every file part while it streams:
	// sha256, sha1, md5, crc32c. In forward mode each file part is followed by
	// a text field `<field>.<hash>` with the hex digest; per_part and store
	// mode report them in their JSON and metadata. Default: none.
	Hash []string `json:"hash,omitempty"`

	// MinRate is the slowest a client may send its body, in bytes per
	// second, over any stretch longer than MinRateGrace: slower, it gets
	// 408 (code client_too_slow), and its buffers and backend request are
	// let go. Only time spent waiting for the client counts (see pacer).
	// -1 turns it off, for trusted clients. Default: 500.
	MinRate int64 `json:"min_rate,omitempty"`

	// MinRateGrace is how long a client may send slower than MinRate, or
	// nothing at all, before it is cut. Default: 20s.
	MinRateGrace caddy.Duration `json:"min_rate_grace,omitempty"`
	// BackendStallTimeout is how long a backend may take no byte of an
	// upload's body (a write to it does not complete) before the upload
	// ends with 504 (code backend_timeout), its backend connection closed.
	// Time spent waiting for the client does not count. Default: 1m.
	BackendStallTimeout caddy.Duration `json:"backend_stall_timeout,omitempty"`

	proxy    *reverseproxy.Handler
	proxyErr error          // what checkProxy refused, reported by Validate; proxy is then unprovisioned
	route    *routeTemplate // the upstreams' path, expanded per request (route.go)
	store    store.Store
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.stream_proxy",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and loads the reverse_proxy of the backend leg.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()

	if h.Mode == "" {
		h.Mode = ModeForward
	}
	if h.MaxBodySize == 0 {
		h.MaxBodySize = DefaultMaxBodySize
	}
	if h.MaxPartSize == 0 {
		h.MaxPartSize = h.MaxBodySize
	}
	if h.MaxParts == 0 {
		h.MaxParts = DefaultMaxParts
	}
	if h.MaxFieldSize == 0 {
		h.MaxFieldSize = DefaultMaxFieldSize
	}
	if h.MaxPartHeaderSize == 0 {
		h.MaxPartHeaderSize = DefaultMaxPartHeaderSize
	}
	if h.BackendStallTimeout == 0 {
		h.BackendStallTimeout = caddy.Duration(DefaultBackendStallTimeout)
	}

	if h.MinRate == 0 {
		h.MinRate = DefaultMinRate
	}
	if h.MinRateGrace == 0 {
		h.MinRateGrace = caddy.Duration(DefaultMinRateGrace)
	}
	if h.MaxFormHeaderSize == 0 {
		h.MaxFormHeaderSize = DefaultMaxFormHeaderSize
	}

	if err := initMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}

	if h.ProxyRaw != nil {
		if err := h.provisionProxy(ctx); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
	}

	if h.StoreRaw != nil && h.Mode == ModeStore { // in other modes Validate refuses it: nothing to open
		mod, err := ctx.LoadModule(h, "StoreRaw")
		if err != nil {
			return fmt.Errorf("loading store: %w", err)
		}
		h.store = mod.(store.Store)
	}
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.proxyErr != nil {
		return fmt.Errorf("proxy: %w", h.proxyErr)
	}
	switch h.Mode {
	case ModeForward, ModePerPart:
		if h.proxy == nil {
			return fmt.Errorf("mode %s needs a backend: set to", h.Mode)
		}
		if h.route != nil && h.route.clientValues() && h.Mode != ModePerPart {
			return fmt.Errorf("upstream path %q: form and part placeholders route only in mode per_part, where each part's request starts once the fields before it were read", h.route.raw)
		}
		if h.StoreRaw != nil {
			return fmt.Errorf("store is for mode store, not %s", h.Mode)
		}
	case ModeStore:
		if h.route != nil && h.route.clientValues() {
			return fmt.Errorf("upstream path %q: form and part placeholders route only in mode per_part, where each part's request starts once the fields before it were read", h.route.raw)
		}
		if h.store == nil {
			return fmt.Errorf("mode store needs a store: set store")
		}
		if l, ok := h.store.(store.MaxFileSizer); ok && h.MaxPartSize > l.MaxFileSize() {
			return fmt.Errorf("max_part_size %d is larger than the store can take (%d): lower it or raise the store's part_size", h.MaxPartSize, l.MaxFileSize())
		}
	default:
		return fmt.Errorf("unknown mode %q (want forward, per_part or store)", h.Mode)
	}
	if err := formreader.CheckHashNames(h.Hash); err != nil {
		return err
	}
	for _, p := range h.AllowTypes {
		if !validTypePattern(p) {
			return fmt.Errorf("allow_types: %q is not a media type or type/* pattern", p)
		}
	}
	if h.MinRate < minRateOff {
		return fmt.Errorf("min_rate must be a positive rate in bytes per second, or -1 for none, got %d", h.MinRate)
	}
	if h.MinRateGrace < 0 {
		return fmt.Errorf("min_rate_grace must not be negative, got %s", time.Duration(h.MinRateGrace))
	}
	for name, v := range map[string]int64{
		"max_body_size":         h.MaxBodySize,
		"max_part_size":         h.MaxPartSize,
		"max_field_size":        h.MaxFieldSize,
		"max_part_header_size":  h.MaxPartHeaderSize,
		"max_parts":             int64(h.MaxParts),
		"backend_stall_timeout": int64(h.BackendStallTimeout),
		"max_form_header_size":  h.MaxFormHeaderSize,
	} {
		if v < 0 {
			return fmt.Errorf("%s must not be negative, got %d", name, v)
		}
	}
	return nil
}

// ServeHTTP streams multipart/form-data uploads and passes everything else on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !isFormData(r.Header.Get("Content-Type")) {
		return next.ServeHTTP(w, r)
	}
	u := newUpload(h, w, r)
	u.begin()
	var res result
	defer func() { u.end(res) }() // also when reverse_proxy aborts the response
	res = h.serve(u)
	if res.failure != nil {
		return u.fail(res.failure, res.parts)
	}
	return nil
}

// serve handles the upload in the handler's mode.
func (h *Handler) serve(u *upload) result {
	if uerr := u.checkRequest(); uerr != nil {
		return failed(uerr, nil)
	}
	switch h.Mode {
	case ModePerPart:
		return h.servePerPart(u)
	case ModeStore:
		return h.serveStore(u)
	default:
		return h.serveForward(u)
	}
}

// provisionProxy provisions the reverse_proxy of ProxyRaw as ctx.LoadModule
// would, with one difference: its http transport is wrapped in bodyTransport
// before the handler starts using it (its health checks among them).
func (h *Handler) provisionProxy(ctx caddy.Context) error {
	cfg, err := proxyConfig(h.ProxyRaw)
	if err != nil {
		return err
	}
	rp := new(reverseproxy.Handler)
	if err := caddy.StrictUnmarshalJSON(cfg, rp); err != nil {
		return err
	}
	if rp.TransportRaw != nil {
		mod, err := ctx.LoadModule(rp, "TransportRaw")
		if err != nil {
			return fmt.Errorf("loading transport: %w", err)
		}
		switch t := mod.(type) {
		case *reverseproxy.HTTPTransport:
			rp.Transport = bodyTransport{t}
		case reverseproxy.BufferedTransport:
			h.proxyErr = fmt.Errorf("transport %T buffers request bodies", t)
			return nil
		default:
			rp.Transport = t.(http.RoundTripper)
		}
	}
	if h.proxyErr = checkProxy(rp); h.proxyErr != nil {
		return nil // Validate reports it; nothing is started for a config it refuses
	}
	h.liftRoute(rp)
	if err := rp.Provision(ctx); err != nil {
		return err
	}
	h.proxy = rp
	return nil
}

// Cleanup stops the proxy's health checks and releases its upstreams.
func (h *Handler) Cleanup() error {
	if h.proxy == nil || h.proxyErr != nil {
		return nil
	}
	return h.proxy.Cleanup()
}

// proxyConfig is the reverse_proxy config in raw without its module name,
// with an http transport whose buffers are DefaultWriteBuffer and
// DefaultReadBuffer unless the config sets them.
func proxyConfig(raw json.RawMessage) (json.RawMessage, error) {
	var proxy map[string]json.RawMessage
	if err := json.Unmarshal(raw, &proxy); err != nil {
		return nil, err
	}
	if name := string(proxy["handler"]); name != `"reverse_proxy"` {
		return nil, fmt.Errorf("want handler reverse_proxy, got %s", name)
	}
	delete(proxy, "handler")
	transport := map[string]any{"protocol": "http"}
	if t, ok := proxy["transport"]; ok {
		if err := json.Unmarshal(t, &transport); err != nil {
			return nil, err
		}
	}
	if transport["protocol"] == "http" {
		if _, set := transport["write_buffer_size"]; !set {
			transport["write_buffer_size"] = DefaultWriteBuffer
		}
		if _, set := transport["read_buffer_size"]; !set {
			transport["read_buffer_size"] = DefaultReadBuffer
		}
		t, err := json.Marshal(transport)
		if err != nil {
			return nil, err
		}
		proxy["transport"] = t
	}
	return json.Marshal(proxy)
}

// validTypePattern reports whether p is type/subtype, type/* or */*.
func validTypePattern(p string) bool {
	major, minor, ok := strings.Cut(p, "/")
	if !ok || major == "" || minor == "" || strings.ContainsAny(p, " ;") {
		return false
	}
	return minor == "*" || (major != "*" && !strings.Contains(minor, "*"))
}

// isFormData reports whether a Content-Type names multipart/form-data, whatever
// its parameters (which are checked later, strictly).
func isFormData(contentType string) bool {
	mediaType, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mediaType), "multipart/form-data")
}

// boundaryOf returns the request's boundary, checked against RFC 2046: 1 to 70
// characters from the bchars set, not ending in a space.
func boundaryOf(contentType string) (string, error) {
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return "", fmt.Errorf("content-type: %w", err)
	}
	b, ok := params["boundary"]
	if !ok {
		return "", fmt.Errorf("content-type has no boundary")
	}
	if len(b) < 1 || len(b) > 70 {
		return "", fmt.Errorf("boundary must be 1 to 70 characters, got %d", len(b))
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("'()+_,-./:=?", c) >= 0:
		case c == ' ' && i != len(b)-1:
		default:
			return "", fmt.Errorf("boundary has a character RFC 2046 does not allow: %q", c)
		}
	}
	return b, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
