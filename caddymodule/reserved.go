package streamproxy

import (
	"fmt"
	"hash/maphash"
	"net/http"
	"strings"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
)

// reservedNames keeps a client from forging the fields the gateway writes
// after a file part (`<field>.sha256`, `<field>.path`, ...): a text field
// named after a file part of the same form plus one of those suffixes is
// refused, whichever of the two comes first. A field such as `user.name`
// with no file part `user` passes. Names are kept as 64-bit hashes, so the
// memory is bounded by max_parts whatever their length.
type reservedNames struct {
	suffixes []string            // what the gateway writes after a file part
	seed     maphash.Seed        // per request
	files    map[uint64]struct{} // file parts' names
	dotted   map[uint64]struct{} // text fields' names that end in a suffix
}

// newReservedNames returns the guard for a form whose file parts are
// followed by fields with these suffixes; nil when there are none.
func newReservedNames(suffixes []string) *reservedNames {
	if len(suffixes) == 0 {
		return nil
	}
	return &reservedNames{suffixes: suffixes, seed: maphash.MakeSeed(),
		files: make(map[uint64]struct{}), dotted: make(map[uint64]struct{})}
}

// check records p's name and refuses it when it and a file part's name
// would collide with a field the gateway writes.
func (r *reservedNames) check(p *formreader.Part) error {
	if r == nil {
		return nil
	}
	if p.IsFile {
		for _, s := range r.suffixes {
			if _, ok := r.dotted[maphash.String(r.seed, p.Field+s)]; ok {
				return r.refuse(p, p.Field+s)
			}
		}
		r.files[maphash.String(r.seed, p.Field)] = struct{}{}
		return nil
	}
	for _, s := range r.suffixes {
		if base, ok := strings.CutSuffix(p.Field, s); ok {
			if _, file := r.files[maphash.String(r.seed, base)]; file {
				return r.refuse(p, p.Field)
			}
			r.dotted[maphash.String(r.seed, p.Field)] = struct{}{}
		}
	}
	return nil
}

func (r *reservedNames) refuse(p *formreader.Part, name string) error {
	return &uploadError{Status: http.StatusBadRequest, Code: CodeFieldNotAllowed, Part: p.Ref(),
		Message: fmt.Sprintf("field %q is written by the gateway after the file part of that name", name)}
}

// digestSuffixes are the fields forward mode writes after a file part.
func (h *Handler) digestSuffixes() []string {
	var out []string
	for _, name := range h.Hash {
		out = append(out, "."+name)
	}
	if h.VerifyTypes {
		out = append(out, ".detected_type")
	}
	return out
}

// metadataSuffixes are the fields store mode writes to its backend after a
// stored file (see writeMetadata).
func (h *Handler) metadataSuffixes() []string {
	return append([]string{".name", ".content_type", ".path", ".bucket", ".key", ".size"}, h.digestSuffixes()...)
}
