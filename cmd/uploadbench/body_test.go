package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"mime"
	"mime/multipart"
	"testing"
	"testing/iotest"
)

// TestBodyParses reads a generated body with mime/multipart and checks every
// part against what generate promised, and the length against the bytes.
func TestBodyParses(t *testing.T) {
	spec := bodySpec{Seed: 7, Size: 300*kib + 5, Files: 3, Fields: 2}
	r, length, want, err := generate(spec)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) != length {
		t.Fatalf("read %d bytes, length says %d", len(data), length)
	}
	b, _ := newBody(spec)
	_, params, err := mime.ParseMediaType(b.ContentType)
	if err != nil {
		t.Fatal(err)
	}

	mr := multipart.NewReader(bytes.NewReader(data), params["boundary"])
	var fileBytes int64
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			if i != len(want) {
				t.Fatalf("%d parts, want %d", i, len(want))
			}
			break
		}
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		if i >= len(want) {
			t.Fatalf("more parts than the %d expected", len(want))
		}
		content, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		sum := sha256.Sum256(content)
		got := expectedPart{
			Index: i, Field: p.FormName(), Filename: p.FileName(),
			Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:]),
		}
		if got.Filename != "" {
			got.ContentType = p.Header.Get("Content-Type")
			fileBytes += got.Size
		}
		if got != want[i] {
			t.Errorf("part %d:\n got %+v\nwant %+v", i, got, want[i])
		}
	}
	if fileBytes != spec.Size {
		t.Errorf("files hold %d bytes, want %d", fileBytes, spec.Size)
	}
	for i, p := range want[:spec.Fields] {
		if p.Filename != "" {
			t.Errorf("part %d is a file; fields come first", i)
		}
	}
}

// TestBodyDeterministic: the same spec gives the same bytes whatever the read
// sizes, and another seed gives other bytes.
func TestBodyDeterministic(t *testing.T) {
	spec := bodySpec{Seed: 3, Size: 64*kib + 3, Files: 2, Fields: 1}
	b, err := newBody(spec)
	if err != nil {
		t.Fatal(err)
	}
	big, _ := io.ReadAll(b.Reader())
	small, _ := io.ReadAll(iotest.OneByteReader(b.Reader()))
	odd, _ := io.ReadAll(iotest.HalfReader(b.Reader()))
	if !bytes.Equal(big, small) || !bytes.Equal(big, odd) {
		t.Fatal("the body depends on the read sizes")
	}
	spec.Seed = 4
	other, _ := newBody(spec)
	if other.Parts()[1].SHA256 == b.Parts()[1].SHA256 {
		t.Fatal("another seed gave the same file")
	}
}

func TestBodyRejectsBadSpecs(t *testing.T) {
	for _, spec := range []bodySpec{
		{Size: -1, Files: 1},
		{Size: 10, Files: 0},
		{Files: -1},
		{Files: 20000},
	} {
		if _, err := newBody(spec); err == nil {
			t.Errorf("%+v: no error", spec)
		}
	}
}

func BenchmarkRandReader(b *testing.B) {
	buf := make([]byte, 64*kib)
	r := newRandReader(1)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		_, _ = r.Read(buf)
	}
}

func BenchmarkBodyReader(b *testing.B) {
	body, _ := newBody(bodySpec{Seed: 1, Size: 256 * mib, Files: 3, Fields: 2})
	buf := make([]byte, 64*kib)
	b.SetBytes(body.Length)
	for b.Loop() {
		_, _ = io.CopyBuffer(io.Discard, struct{ io.Reader }{body.Reader()}, buf)
	}
}
