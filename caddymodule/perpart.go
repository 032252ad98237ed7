package streamproxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Bounds on what per_part and store mode keep of text fields and backend
// answers: the only bytes of an upload ever held whole, so that they can be
// placeholders and JSON.
const (
	maxFieldValue     = 8 << 10  // one text field kept as a placeholder
	maxFieldValues    = 64 << 10 // all text fields of one upload
	maxBackendAnswer  = 64 << 10 // one backend response body in per_part JSON
	headerPartField   = "X-Stream-Proxy-Field"
	headerPartName    = "X-Stream-Proxy-Filename"
	headerPartIndex   = "X-Stream-Proxy-Part-Index"
	placeholderPrefix = "http.stream_proxy."
)

// partResult is one part in per_part and store mode's JSON.
type partResult struct {
	Index       int               `json:"index"`
	Field       string            `json:"field"`
	Filename    *string           `json:"filename,omitempty"`
	ContentType string            `json:"content_type,omitempty"`
	Size        int64             `json:"size"`
	Digests     map[string]string `json:"digests,omitempty"`
	Path        string            `json:"path,omitempty"`      // store mode
	Status      int               `json:"status,omitempty"`    // per_part: the backend's
	Response    json.RawMessage   `json:"response,omitempty"`  // per_part: the backend's, JSON kept as JSON
	Truncated   bool              `json:"truncated,omitempty"` // the response was longer than 64 KiB
}

func newPartResult(p *formPart) partResult {
	r := partResult{Index: p.Index, Field: p.Field, ContentType: p.ContentType, Size: p.Size, Digests: p.digests.sums()}
	if p.IsFile {
		name := p.Filename
		r.Filename = &name
	}
	return r
}

// servePerPart sends each file part as its own backend request, streamed while
// it arrives, and answers with JSON listing every part.
func (h *Handler) servePerPart(u *upload) error {
	form := u.openBody()
	defer u.closeBody()
	out := getWriter()
	defer putWriter(out)

	var results []partResult
	for {
		p, err := form.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return u.failParts(asUploadError(err), results)
		}
		if !p.IsFile {
			if err := u.readField(p); err != nil {
				return u.failParts(asUploadError(err), results)
			}
			results = append(results, newPartResult(p))
			continue
		}

		answer := u.keepAnswer()
		uerr := u.roundTrip(answer, partHeader(p), func(w io.Writer) error {
			out.Reset(w)
			bw := newIdleFlusher(out)
			defer u.flushWhenIdle(bw)()
			if err := u.copyPart(bw, p); err != nil {
				return err
			}
			return bw.Flush()
		})
		if uerr != nil {
			results = append(results, newPartResult(p))
			return u.failParts(uerr, results)
		}
		r := newPartResult(p)
		r.Status = answer.status
		r.Response, r.Truncated = answerJSON(answer.kept), answer.truncated
		results = append(results, r)
		switch {
		case answer.status >= 400:
			return u.failParts(&uploadError{Status: answer.status, Code: CodeBackendRejected,
				Message: fmt.Sprintf("backend answered %d to part %d", answer.status, p.Index), Part: p.ref()}, results)
		case answer.early:
			return u.failParts(&uploadError{Status: http.StatusBadGateway, Code: CodeBackendFailed,
				Message: fmt.Sprintf("backend answered before it had read part %d", p.Index), Part: p.ref()}, results)
		}
	}
	u.status = http.StatusOK
	return writeJSON(u.w, u.status, map[string]any{"parts": results})
}

// partHeader is what a per_part request says of its part: the part's own
// Content-Type, its Content-Disposition with the filename parameters the
// client sent (formPart.disposition), and field and filename again in
// X-Stream-Proxy-* fields (the filename percent-encoded).
func partHeader(p *formPart) http.Header {
	ct := p.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	return http.Header{
		"Content-Type":        {ct},
		"Content-Disposition": {p.disposition()},
		headerPartField:       {p.Field},
		headerPartName:        {url.PathEscape(p.Filename)},
		headerPartIndex:       {strconv.Itoa(p.Index)},
	}
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

// readField reads a text field. A value of up to 8 KiB (64 KiB for all fields
// together) becomes the placeholder {http.stream_proxy.form.<name>}; a longer
// one is read through and counted, but not kept.
func (u *upload) readField(p *formPart) error {
	var buf bytes.Buffer
	keep := u.fieldBytes+len(p.Field) <= maxFieldValues
	for {
		var chunk [4096]byte
		n, err := p.Read(chunk[:])
		if keep && n > 0 {
			if buf.Len()+n > maxFieldValue || u.fieldBytes+buf.Len()+n > maxFieldValues {
				keep = false
				buf.Reset()
			} else {
				buf.Write(chunk[:n])
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if keep {
		u.fieldBytes += buf.Len()
		u.repl.Set(placeholderPrefix+"form."+p.Field, buf.String())
	}
	return nil
}

// failParts answers with e and the parts handled so far.
func (u *upload) failParts(e *uploadError, parts []partResult) error {
	u.partsSoFar = parts
	return u.fail(e)
}

// writeJSON writes v as the response.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
	return nil
}
