package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"sync"
)

// bodySpec describes a generated multipart/form-data body: Fields small text
// fields first, then Files file parts sharing Size bytes of pseudo-random
// content derived from Seed. The same spec always gives the same bytes.
type bodySpec struct {
	Seed   uint64
	Size   int64 // total bytes of file content
	Files  int
	Fields int
}

// expectedPart is one part of a generated body as a backend should see it.
type expectedPart struct {
	Index       int
	Field       string
	Filename    string // empty for a text field
	ContentType string // empty for a text field
	Size        int64
	SHA256      string // hex
}

// body is the layout of a generated body. It holds the framing (boundaries,
// part headers, field values) but never the file contents, which are
// generated again on every Reader call.
type body struct {
	ContentType string
	Length      int64 // bytes of the whole body, framing included

	segments []segment
	parts    []expectedPart // digests of files filled in by Parts

	digestOnce sync.Once
}

// segment is a run of bytes of the body: framing, or a file's content.
type segment struct {
	static []byte // framing; nil for file content
	seed   uint64 // file content: the seed of its randReader
	size   int64  // file content: its length
	part   int    // file content: its index in body.parts
}

// generate returns a reader of the multipart body spec describes, its length
// and what a backend should see of each part (files' digests included, which
// costs hashing the file contents once).
func generate(spec bodySpec) (r io.Reader, length int64, parts []expectedPart, err error) {
	b, err := newBody(spec)
	if err != nil {
		return nil, 0, nil, err
	}
	return b.Reader(), b.Length, b.Parts(), nil
}

// newBody lays out the body spec describes. It is cheap: file contents are
// neither generated nor hashed here.
func newBody(spec bodySpec) (*body, error) {
	switch {
	case spec.Size < 0 || spec.Files < 0 || spec.Fields < 0:
		return nil, errors.New("size, files and fields must not be negative")
	case spec.Files == 0 && spec.Size > 0:
		return nil, errors.New("a body with file bytes needs at least one file")
	case spec.Files+spec.Fields > 10000:
		return nil, errors.New("at most 10000 parts")
	}

	b := &body{}
	var framing bytes.Buffer
	mw := multipart.NewWriter(&framing)
	if err := mw.SetBoundary(fmt.Sprintf("uploadbench-%016x", spec.Seed)); err != nil {
		return nil, err
	}
	b.ContentType = mw.FormDataContentType()
	flush := func() {
		if framing.Len() > 0 {
			b.segments = append(b.segments, segment{static: bytes.Clone(framing.Bytes())})
			b.Length += int64(framing.Len())
			framing.Reset()
		}
	}

	for i := range spec.Fields {
		name, value := fmt.Sprintf("field%d", i), fmt.Sprintf("value %d of seed %d", i, spec.Seed)
		if err := mw.WriteField(name, value); err != nil {
			return nil, err
		}
		sum := sha256.Sum256([]byte(value))
		b.parts = append(b.parts, expectedPart{
			Index: len(b.parts), Field: name, Size: int64(len(value)), SHA256: hex.EncodeToString(sum[:]),
		})
	}
	for i := range spec.Files {
		size := spec.Size / int64(spec.Files)
		if int64(i) < spec.Size%int64(spec.Files) {
			size++
		}
		field, filename := fmt.Sprintf("file%d", i), fmt.Sprintf("file%d.bin", i)
		if _, err := mw.CreateFormFile(field, filename); err != nil {
			return nil, err
		}
		flush()
		b.parts = append(b.parts, expectedPart{
			Index: len(b.parts), Field: field, Filename: filename,
			ContentType: "application/octet-stream", Size: size,
		})
		b.segments = append(b.segments, segment{seed: fileSeed(spec.Seed, i), size: size, part: len(b.parts) - 1})
		b.Length += size
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	flush()
	return b, nil
}

// fileSeed derives the seed of file i's content from the body's seed.
func fileSeed(seed uint64, i int) uint64 {
	return seed ^ (uint64(i+1) * 0x9e3779b97f4a7c15)
}

// Reader returns a new reader of the whole body. Readers are independent.
func (b *body) Reader() io.Reader {
	rs := make([]io.Reader, len(b.segments))
	for i, s := range b.segments {
		if s.static != nil {
			rs[i] = bytes.NewReader(s.static)
		} else {
			rs[i] = io.LimitReader(newRandReader(s.seed), s.size)
		}
	}
	return io.MultiReader(rs...)
}

// Parts returns what a backend should see of each part, in order. The first
// call hashes every file's content, the files in parallel.
func (b *body) Parts() []expectedPart {
	b.digestOnce.Do(func() {
		var wg sync.WaitGroup
		for _, s := range b.segments {
			if s.static != nil {
				continue
			}
			wg.Go(func() {
				h := sha256.New()
				buf := make([]byte, 256*kib)
				_, _ = io.CopyBuffer(h, io.LimitReader(newRandReader(s.seed), s.size), buf)
				b.parts[s.part].SHA256 = hex.EncodeToString(h.Sum(nil))
			})
		}
		wg.Wait()
	})
	return b.parts
}
