package streamproxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"golang.org/x/net/http/httpguts"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
)

const (
	headerPartField = "X-Stream-Proxy-Field"
	headerPartName  = "X-Stream-Proxy-Filename"
	headerPartIndex = "X-Stream-Proxy-Part-Index"
	headerDetected  = "X-Stream-Proxy-Detected-Type" // with verify_types
)

// servePerPart sends each file part as its own backend request, streamed while
// it arrives, and answers with JSON listing every part.
func (h *Handler) servePerPart(u *upload) result {
	form := u.openBody()
	defer u.closeBody()

	var results []partResult
	for {
		p, err := form.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return failed(asUploadError(err), results)
		}
		if !p.IsFile {
			if _, _, err := u.readField(p); err != nil {
				return failed(asUploadError(err), results)
			}
			results = append(results, newPartResult(p))
			continue
		}

		header, herr := partHeader(p)
		if herr != nil {
			results = append(results, newPartResult(p))
			return failed(herr, results)
		}
		out := u.newFlusher()
		answer, uerr := u.roundTrip(nil, header, out, func() error { return u.copyPart(out, p) })
		out.release()
		if uerr != nil {
			results = append(results, newPartResult(p))
			return failed(uerr, results)
		}
		r := newPartResult(p)
		r.Status = answer.status
		r.Response, r.Truncated = answerJSON(answer.body), answer.truncated
		results = append(results, r)
		switch {
		case answer.status >= 400:
			return failed(&uploadError{Status: answer.status, Code: CodeBackendRejected,
				Message: fmt.Sprintf("backend answered %d to part %d", answer.status, p.Index), Part: p.Ref()}, results)
		case answer.early:
			return failed(&uploadError{Status: http.StatusBadGateway, Code: CodeBackendAnsweredEarly,
				Message: fmt.Sprintf("backend answered before it had read part %d", p.Index), Part: p.Ref()}, results)
		}
	}
	return u.reply(http.StatusOK, map[string]any{"parts": results})
}

// partHeader is what a per_part request says of its part: the part's own
// Content-Type, its Content-Disposition with the filename parameters the
// client sent (formreader.Part.Disposition), and field and filename again in
// X-Stream-Proxy-* fields (the filename percent-encoded). A value that no
// transport would send (a control character in a name or filename) is the
// client's fault, 400, decided here: a transport's refusal would be a 502
// counted against the upstream.
func partHeader(p *formreader.Part) (http.Header, *uploadError) {
	if err := p.Forwardable(); err != nil {
		return nil, asUploadError(err)
	}
	ct := p.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	h := http.Header{
		"Content-Type":        {ct},
		"Content-Disposition": {p.Disposition()},
		headerPartField:       {p.Field},
		headerPartName:        {url.PathEscape(p.Filename)},
		headerPartIndex:       {strconv.Itoa(p.Index)},
	}
	if p.DetectedType != "" {
		h.Set(headerDetected, p.DetectedType) // the library's name, never the client's bytes
	}
	for name, vs := range h {
		if !httpguts.ValidHeaderFieldValue(vs[0]) {
			e := malformed(fmt.Errorf("part %d: its %s cannot be sent in a header", p.Index, name))
			e.Part = p.Ref()
			return nil, e
		}
	}
	return h, nil
}

// answerJSON is a backend's answer (its first 64 KiB) for the JSON report:
// kept as JSON when it is JSON, as a JSON string otherwise.
func answerJSON(body []byte) json.RawMessage {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	if json.Valid(body) {
		return body
	}
	s, _ := json.Marshal(string(body))
	return s
}
