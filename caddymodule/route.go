package streamproxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
)

// Where a backend request goes, and the rules of the embedded proxy's config.
// The upstreams' path (carried, as the Caddyfile writes it, in the proxy's
// rewrite uri) is expanded here, not by reverse_proxy's rewrite, which
// decodes a placeholder's value once and escapes nothing: a client's value
// would walk out of the prefix (../admin, %2e%2e) or inject a query.

// Codes of a refused route.
const (
	CodeRouteValueInvalid = "route_value_invalid"
	CodeRouteFieldMissing = "route_field_missing"
)

// clientPlaceholders are the prefixes of the placeholders whose values come
// from the client's form.
var clientPlaceholders = []string{placeholderPrefix + "form.", placeholderPrefix + "part."}

func isClientPlaceholder(name string) bool {
	for _, p := range clientPlaceholders {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// routeTemplate is the upstreams' path, split into literal text (as
// configured, already URL-escaped) and placeholders.
type routeTemplate struct {
	raw    string
	pieces []routePiece
}

type routePiece struct {
	text        string // literal, or the placeholder's name
	placeholder bool
}

// parseRoute splits a path template at its placeholders, as Caddy's
// replacer reads them ({name}; no nesting).
func parseRoute(path string) routeTemplate {
	t := routeTemplate{raw: path}
	for path != "" {
		open := strings.IndexByte(path, '{')
		if open < 0 {
			t.pieces = append(t.pieces, routePiece{text: path})
			break
		}
		end := strings.IndexByte(path[open:], '}')
		if end < 0 {
			t.pieces = append(t.pieces, routePiece{text: path})
			break
		}
		if open > 0 {
			t.pieces = append(t.pieces, routePiece{text: path[:open]})
		}
		t.pieces = append(t.pieces, routePiece{text: path[open+1 : open+end], placeholder: true})
		path = path[open+end+1:]
	}
	return t
}

// clientValues reports whether the template expands a value from the form.
func (t *routeTemplate) clientValues() bool {
	for _, p := range t.pieces {
		if p.placeholder && isClientPlaceholder(p.text) {
			return true
		}
	}
	return false
}

// expand returns the escaped path of a backend request. Each placeholder's
// value is split on "/" and each segment escaped with url.PathEscape, never
// decoded; a segment that would move the path (., ..), a backslash or a
// control character is refused. A client's value must also be present and
// have no empty segment. dropped names the fields read but not kept
// (longer than placeholders hold).
func (t *routeTemplate) expand(repl *caddy.Replacer, dropped map[string]bool) (string, *uploadError) {
	var sb strings.Builder
	for _, p := range t.pieces {
		if !p.placeholder {
			sb.WriteString(p.text)
			continue
		}
		client := isClientPlaceholder(p.text)
		v, ok := repl.GetString(p.text)
		if client && (!ok || v == "") {
			return "", routeMissing(p.text, dropped)
		}
		for i, seg := range strings.Split(v, "/") {
			if i > 0 {
				sb.WriteByte('/')
			}
			if err := checkSegment(seg, client); err != nil {
				return "", &uploadError{Status: http.StatusBadRequest, Code: CodeRouteValueInvalid,
					Message: fmt.Sprintf("{%s} cannot be part of the upstream path: %v", p.text, err)}
			}
			sb.WriteString(url.PathEscape(seg))
		}
	}
	return sb.String(), nil
}

func routeMissing(name string, dropped map[string]bool) *uploadError {
	field := strings.TrimPrefix(name, placeholderPrefix+"form.")
	msg := fmt.Sprintf("{%s}, which routes the request, is not set", name)
	if dropped[field] {
		msg = fmt.Sprintf("field %q, which routes the request, is longer than the %d bytes kept for placeholders", field, maxFieldValue)
	}
	return &uploadError{Status: http.StatusBadRequest, Code: CodeRouteFieldMissing, Message: msg}
}

// checkSegment refuses a path segment that is not literal text.
func checkSegment(seg string, client bool) error {
	// Some servers (Tomcat, Jetty) drop ;parameters before resolving dots.
	dots, _, _ := strings.Cut(seg, ";")
	switch {
	case dots == "." || dots == "..":
		return fmt.Errorf("a %q segment", seg)
	case seg == "" && client:
		return errors.New("an empty segment")
	case strings.ContainsRune(seg, '\\'):
		return errors.New("a backslash")
	case strings.ContainsFunc(seg, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return errors.New("a control character")
	}
	return nil
}

// setRoute points the backend request at the expanded path; its query is
// set by the proxy's rewrite, which keeps the one configured. The request's
// URL is its own copy: the client's stays as it came, for the logs.
func (u *upload) setRoute(req *http.Request) *uploadError {
	t := u.h.route
	if t == nil {
		return nil
	}
	escaped, uerr := t.expand(u.repl, u.droppedFields)
	if uerr != nil {
		return uerr
	}
	target := *req.URL
	target.RawPath = escaped
	target.Path, _ = url.PathUnescape(escaped) // literal text is the operator's; segments were escaped here
	req.URL = &target
	return nil
}

// liftRoute takes the path out of the proxy's rewrite uri, for the handler
// to expand itself, and leaves the query (with its placeholders, values
// query-escaped by Caddy) to the rewrite. The client's query goes only when
// no path or query is configured.
func (h *Handler) liftRoute(rp *reverseproxy.Handler) {
	if rp.Rewrite == nil || rp.Rewrite.URI == "" {
		return
	}
	uri, _, _ := strings.Cut(rp.Rewrite.URI, "#")
	path, query, hasQuery := strings.Cut(uri, "?")
	if path == "" {
		return
	}
	t := parseRoute(path)
	h.route = &t
	if !hasQuery {
		query = "" // a path replaces the client's query too
	}
	rp.Rewrite = &rewrite.Rewrite{URI: "?" + query}
}

// checkProxy refuses what the Caddyfile cannot express, in a JSON config
// too: what would hold bodies in memory, change the request the handler
// builds, take over the answer it reports, a client's value in an
// upstream's address, or no upstream at all.
func checkProxy(rp *reverseproxy.Handler) error {
	switch {
	case rp.RequestBuffers != 0:
		return errors.New("request_buffers would hold request bodies in memory: stream_proxy streams them")
	case rp.ResponseBuffers != 0:
		return errors.New("response_buffers is not supported by stream_proxy")
	case len(rp.HandleResponse) > 0:
		return errors.New("handle_response would take over the answer stream_proxy reports")
	case rp.StreamTimeout != 0 || rp.StreamCloseDelay != 0 || rp.StreamBufferSize != 0:
		return errors.New("stream_timeout, stream_close_delay and stream_buffer_size are for upgraded connections, which stream_proxy never makes")
	case len(rp.Upstreams) == 0 && rp.DynamicUpstreamsRaw == nil:
		return errors.New("no upstream: set to, upstreams or dynamic upstreams")
	}
	if r := rp.Rewrite; r != nil {
		if r.Method != "" || r.StripPathPrefix != "" || r.StripPathSuffix != "" || len(r.URISubstring) > 0 ||
			len(r.PathRegexp) > 0 || r.Query != nil {
			return errors.New("rewrite may only carry the upstreams' uri: stream_proxy builds the backend request itself")
		}
	}
	for _, up := range rp.Upstreams {
		if clientPlaceholderIn(up.Dial) {
			return fmt.Errorf("upstream %q: a form or part placeholder cannot name an upstream's scheme, host or port, "+
				"or a client would choose where the gateway connects; route by host with dynamic upstreams", up.Dial)
		}
	}
	if clientPlaceholderIn(string(rp.DynamicUpstreamsRaw)) {
		return errors.New("dynamic upstreams: a form or part placeholder cannot name where the gateway connects")
	}
	return nil
}

func clientPlaceholderIn(s string) bool {
	for _, p := range clientPlaceholders {
		if strings.Contains(s, "{"+p) {
			return true
		}
	}
	return false
}
