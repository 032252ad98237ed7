package streamproxy

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// fail answers the client with e and the parts handled so far (per_part and
// store mode report them), or hands e to the site's handle_errors.
func (u *upload) fail(e *uploadError, parts []partResult) error {
	u.repl.Set(placeholderPrefix+"error.code", e.Code)
	u.repl.Set(placeholderPrefix+"error.limit", e.Limit)
	if ce := u.check(zap.DebugLevel, "upload refused"); ce != nil || e.Status >= 500 {
		fields := []zap.Field{
			zap.Int("status", e.Status),
			zap.String("code", e.Code),
			zap.Duration("duration", time.Since(u.start)),
		}
		if u.body != nil {
			fields = append(fields, zap.Int64("bytes", u.body.n.Load()))
		}
		if e.Part != nil {
			fields = append(fields, zap.Int("part", e.Part.Index), zap.String("field", e.Part.Field))
		}
		if e.err != nil {
			fields = append(fields, zap.Error(e.err))
		}
		if e.Status >= 500 && e.Status != statusClientClosed {
			u.log().Error("upload failed", fields...)
		} else if ce != nil {
			ce.Write(fields...)
		}
	}
	if srv, ok := u.r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok &&
		srv.Errors != nil && len(srv.Errors.Routes) > 0 && e.Status != statusClientClosed {
		u.closeAfter()
		return caddyhttp.Error(e.Status, e)
	}
	linger := e.Status != statusClientClosed && u.closeAfter()
	e.writeJSON(u.w, parts)
	if linger {
		u.linger()
	}
	return nil
}

// closeAfter prepares an answer given before the client's body was read to
// its end: the connection is not reused, and with Connection: close the
// server neither sends 100 Continue to a client waiting for it nor drains the
// body. It reports whether the answer should be followed by a lingering close
// (a client already sending, over HTTP/1.x), and if so, allows it.
func (u *upload) closeAfter() (linger bool) {
	unread := u.body == nil || !u.body.eof.Load()
	if !unread || u.r.ProtoMajor != 1 {
		return false
	}
	u.w.Header().Set("Connection", "close")
	waiting := (u.body == nil || u.body.n.Load() == 0) && u.r.Header.Get("Expect") != ""
	return !waiting && http.NewResponseController(u.w).EnableFullDuplex() == nil
}

// Bounds of a lingering close.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 20
)

// linger reads and discards what the client still sends after it has been
// answered before its body ended (a refusal, a backend's early answer), for a
// little while, as nginx's lingering close does: a client that sends its whole
// body before it reads the answer then gets the answer instead of a reset.
func (u *upload) linger() {
	rc := http.NewResponseController(u.w)
	if rc.Flush() != nil || rc.SetReadDeadline(time.Now().Add(lingerTime)) != nil {
		return
	}
	_, _ = io.CopyN(io.Discard, u.r.Body, lingerBytes)
}

// reply answers the client with v as JSON.
func (u *upload) reply(status int, v any) result {
	writeJSON(u.w, status, v)
	return result{status: status}
}

// writeJSON writes v as the response. v holds only what always marshals (a
// backend's answer is kept through answerJSON).
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
