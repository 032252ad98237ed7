// Package formtest reads a multipart form the way Go's standard library does,
// for the tests of both caddymodule and integration: it is the reference the
// gateway's output is compared with.
package formtest

import (
	"crypto/sha256"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"strings"
)

// MaxParts bounds Parse, so that a runaway form ends in an error instead of
// exhausting memory.
const MaxParts = 200_000

// Part is one part as mime/multipart's NextRawPart reads it: undecoded, with
// its raw header.
type Part struct {
	Header      textproto.MIMEHeader
	Field       string // the Content-Disposition's name, if it parses
	Filename    string // its filename
	HasFilename bool   // a filename parameter is present, even empty
	ContentType string
	Data        []byte
}

// Parse reads every part of the form in r to its end. On an error it returns
// the parts read so far with it.
func Parse(r io.Reader, boundary string) ([]Part, error) {
	mr := multipart.NewReader(r, boundary)
	var parts []Part
	for range MaxParts {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return parts, nil
		}
		if err != nil {
			return parts, err
		}
		data, err := io.ReadAll(p)
		if err != nil {
			return parts, err
		}
		part := Part{Header: p.Header, ContentType: p.Header.Get("Content-Type"), Data: data}
		if _, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition")); err == nil {
			part.Field = params["name"]
			part.Filename, part.HasFilename = params["filename"]
		}
		parts = append(parts, part)
	}
	return parts, fmt.Errorf("more than %d parts", MaxParts)
}

// Describe is a comparable summary of parts, one line each: name, filename,
// whether it has one, Content-Type, size and the start of its sha256.
func Describe(parts []Part) string {
	var sb strings.Builder
	for _, p := range parts {
		sum := sha256.Sum256(p.Data)
		fmt.Fprintf(&sb, "%q|%q|%v|%q|%d|%x\n", p.Field, p.Filename, p.HasFilename, p.ContentType, len(p.Data), sum[:8])
	}
	return sb.String()
}
