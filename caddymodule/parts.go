package streamproxy

import (
	"bytes"
	"encoding/json"
	"io"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
)

// What the modes share about parts: copying their data on, the digest
// fields that follow them, text fields kept as placeholders, and the JSON
// that per_part and store mode report them in.

const (
	placeholderPrefix = "http.stream_proxy."
	// Bounds on the text fields kept as placeholders, one of the few things
	// ever held whole.
	maxFieldValue  = 8 << 10  // one field
	maxFieldValues = 64 << 10 // all fields of one upload
)

// copyPart writes one part's data to dst, straight from the client's read
// buffer.
func (u *upload) copyPart(dst io.Writer, p *formreader.Part) error {
	for {
		b, err := p.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := dst.Write(b); err != nil {
			return err
		}
		u.sent.Add(int64(len(b)))
	}
}

// writeDigestFields follows a file part with a text field per configured
// digest: `<field>.sha256` and so on.
func writeDigestFields(mw *formWriter, p *formreader.Part) error {
	if !p.IsFile || len(p.DigestNames()) == 0 {
		return nil
	}
	sums := p.Digests()
	for _, name := range p.DigestNames() {
		if err := mw.WriteField(p.Field+"."+name, sums[name]); err != nil {
			return err
		}
	}
	return nil
}

// writeDetectedField follows a file part, with verify_types, with a text
// field `<field>.detected_type`: its type as its first bytes show it.
func writeDetectedField(mw *formWriter, p *formreader.Part) error {
	if !p.IsFile || p.DetectedType == "" {
		return nil
	}
	return mw.WriteField(p.Field+".detected_type", p.DetectedType)
}

// readField reads a text field. A value of up to 8 KiB (64 KiB for all fields
// together) becomes the placeholder {http.stream_proxy.form.<name>} and is
// returned, kept; a longer one is read through and counted, but not kept.
func (u *upload) readField(p *formreader.Part) (value string, kept bool, err error) {
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
			return "", false, err
		}
	}
	if keep {
		value = buf.String()
		u.fieldBytes += len(value)
		u.repl.Set(placeholderPrefix+"form."+p.Field, value)
		delete(u.droppedFields, p.Field)
	} else {
		// An earlier value of the field must not route in its place.
		u.repl.Delete(placeholderPrefix + "form." + p.Field)
		if u.droppedFields == nil {
			u.droppedFields = make(map[string]bool)
		}
		u.droppedFields[p.Field] = true
	}
	return value, keep, nil
}

// partResult is one part in per_part and store mode's JSON.
type partResult struct {
	Index        int               `json:"index"`
	Field        string            `json:"field"`
	Filename     *string           `json:"filename,omitempty"`
	ContentType  string            `json:"content_type,omitempty"`
	DetectedType string            `json:"detected_type,omitempty"` // verify_types
	Size         int64             `json:"size"`
	Digests      map[string]string `json:"digests,omitempty"`
	Path         string            `json:"path,omitempty"`      // store mode
	Status       int               `json:"status,omitempty"`    // per_part: the backend's
	Response     json.RawMessage   `json:"response,omitempty"`  // per_part: the backend's, JSON kept as JSON
	Truncated    bool              `json:"truncated,omitempty"` // the response was longer than 64 KiB
}

func newPartResult(p *formreader.Part) partResult {
	r := partResult{Index: p.Index, Field: p.Field, ContentType: p.ContentType, DetectedType: p.DetectedType,
		Size: p.Size, Digests: p.Digests()}
	if p.IsFile {
		name := p.Filename
		r.Filename = &name
	}
	return r
}
