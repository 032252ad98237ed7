package formreader

import (
	"bytes"
	"crypto/md5"  //nolint:gosec // a checksum clients ask for, not a security measure
	"crypto/sha1" //nolint:gosec // a checksum clients ask for, not a security measure
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net/http"
	"slices"
	"strings"
)

// hashes are the digests the hash subdirective can compute, by name.
var hashes = map[string]func() hash.Hash{
	"sha256": sha256.New,
	"sha1":   sha1.New,
	"md5":    md5.New,
	"crc32c": func() hash.Hash { return crc32.New(crc32.MakeTable(crc32.Castagnoli)) },
}

// declaredHashes are the algorithms of RFC 9530's Content-Digest this handler
// verifies, by their registered names.
var declaredHashes = map[string]func() hash.Hash{
	"sha-256": sha256.New,
	"sha-512": sha512.New,
}

// partDigests computes a part's digests while it streams: those the config
// asks for, and those the part declared, to be verified at its end.
type partDigests struct {
	w        io.Writer
	names    []string    // configured, in config order
	computed []hash.Hash // for names
	declared []declared
}

type declared struct {
	header string // where it was declared, for the error
	alg    string
	want   []byte
	h      hash.Hash
}

// newPartDigests returns nil when there is nothing to compute, so that the
// data path does no hashing unless asked.
func newPartDigests(names []string, header http.Header) (*partDigests, error) {
	d := &partDigests{}
	var ws []io.Writer
	for _, name := range names {
		h := hashes[name]()
		d.names = append(d.names, name)
		d.computed = append(d.computed, h)
		ws = append(ws, h)
	}
	if v := header.Values("Content-Md5"); len(v) > 0 {
		if len(v) > 1 {
			return nil, fmt.Errorf("more than one Content-MD5")
		}
		want, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v[0]))
		if err != nil || len(want) != md5.Size {
			return nil, fmt.Errorf("Content-MD5 is not a base64 MD5 digest")
		}
		dd := declared{header: "Content-MD5", alg: "md5", want: want, h: md5.New()}
		d.declared = append(d.declared, dd)
		ws = append(ws, dd.h)
	}
	for _, v := range header.Values("Content-Digest") {
		for _, member := range strings.Split(v, ",") {
			alg, value, ok := strings.Cut(strings.TrimSpace(member), "=")
			alg = strings.ToLower(strings.TrimSpace(alg))
			newHash, known := declaredHashes[alg]
			if !known {
				continue // RFC 9530: unknown algorithms are ignored
			}
			value = strings.TrimSpace(value)
			if !ok || len(value) < 2 || value[0] != ':' || value[len(value)-1] != ':' {
				return nil, fmt.Errorf("Content-Digest %s is not a byte sequence", alg)
			}
			want, err := base64.StdEncoding.DecodeString(value[1 : len(value)-1])
			if err != nil {
				return nil, fmt.Errorf("Content-Digest %s: %v", alg, err)
			}
			dd := declared{header: "Content-Digest", alg: alg, want: want, h: newHash()}
			d.declared = append(d.declared, dd)
			ws = append(ws, dd.h)
		}
	}
	if len(ws) == 0 {
		return nil, nil
	}
	d.w = io.MultiWriter(ws...)
	return d, nil
}

// verify compares what the part declared with what arrived.
func (d *partDigests) verify() error {
	for _, dd := range d.declared {
		if got := dd.h.Sum(nil); !bytes.Equal(got, dd.want) {
			return fmt.Errorf("%s %s does not match the data", dd.header, dd.alg)
		}
	}
	return nil
}

// sums returns the configured digests, hex-encoded, by name.
func (d *partDigests) sums() map[string]string {
	if d == nil || len(d.names) == 0 {
		return nil
	}
	out := make(map[string]string, len(d.names))
	for i, name := range d.names {
		out[name] = hex.EncodeToString(d.computed[i].Sum(nil))
	}
	return out
}

// DigestNames are the digests computed of the part, in the order of
// Limits.Hash; none for a text field.
func (p *Part) DigestNames() []string {
	if p.digests == nil {
		return nil
	}
	return p.digests.names
}

// Digests are the part's computed digests, hex-encoded, by name: whole once
// its data ended.
func (p *Part) Digests() map[string]string { return p.digests.sums() }

// HashNames are the digests Limits.Hash may name.
func HashNames() []string {
	names := make([]string, 0, len(hashes))
	for name := range hashes {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// HexSize is the length of the hex value of the digest name; 0 for a name
// that is none.
func HexSize(name string) int {
	h, ok := hashes[name]
	if !ok {
		return 0
	}
	return 2 * h().Size()
}

// CheckHashNames validates the hash subdirective's algorithms.
func CheckHashNames(names []string) error {
	for i, name := range names {
		if _, ok := hashes[name]; !ok {
			return fmt.Errorf("unknown hash %q (want sha256, sha1, md5 or crc32c)", name)
		}
		if slices.Contains(names[:i], name) {
			return fmt.Errorf("hash %s listed twice", name)
		}
	}
	return nil
}
