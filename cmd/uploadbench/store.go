package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// storeAnswer is stream_proxy's 201 answer in store mode without a backend.
type storeAnswer struct {
	Parts  []storedPart      `json:"parts"`
	Fields map[string]string `json:"fields"` // text fields' values
}

// storedPart is one part of a storeAnswer; text fields have no path.
type storedPart struct {
	Field       string            `json:"field"`
	Filename    string            `json:"filename"`
	ContentType string            `json:"content_type"`
	Path        string            `json:"path"` // relative to the store
	Size        int64             `json:"size"`
	Digests     map[string]string `json:"digests"` // hex, by hash name
}

// verifyStored checks store mode's answer against the parts that were sent,
// and the store directory dir against the answer. Every part must be listed,
// matched by field and filename, with the same size. A file must have the
// same content type and sha256 digest (the gateway's, of the bytes it wrote)
// and a path to a regular file of that size in dir: the file is only stat'ed,
// never read again. A text field must have its value in "fields". dir must
// hold nothing but the files listed.
func verifyStored(answer []byte, want []expectedPart, dir string) error {
	var got storeAnswer
	if err := json.Unmarshal(answer, &got); err != nil || got.Parts == nil {
		return fmt.Errorf("the answer is not store mode's JSON: %.200q", answer)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()

	used := make([]bool, len(got.Parts))
	listed := map[string]bool{}
	var problems []string
	for _, w := range want {
		i := findPart(used, w, func(i int) (string, string) { return got.Parts[i].Field, got.Parts[i].Filename })
		if i < 0 {
			problems = append(problems, fmt.Sprintf("part %d (%q) missing", w.Index, w.Field))
			continue
		}
		g := got.Parts[i]
		if g.Size != w.Size {
			problems = append(problems, fmt.Sprintf("part %d (%q): %d bytes, sent %d", w.Index, w.Field, g.Size, w.Size))
		}

		if w.Filename == "" {
			if v, ok := got.Fields[w.Field]; !ok || sha256Hex(v) != w.SHA256 {
				problems = append(problems, fmt.Sprintf("text field %q: value %q (present: %t) is not the one sent", w.Field, v, ok))
			}
			if g.Path != "" {
				problems = append(problems, fmt.Sprintf("text field %q was stored as %q", w.Field, g.Path))
			}
			continue
		}
		if g.Digests["sha256"] != w.SHA256 {
			problems = append(problems, fmt.Sprintf("part %d (%q): sha256 %q, sent %s", w.Index, w.Field, g.Digests["sha256"], w.SHA256))
		}
		if g.ContentType != w.ContentType {
			problems = append(problems, fmt.Sprintf("part %d (%q): content type %q, sent %q", w.Index, w.Field, g.ContentType, w.ContentType))
		}
		if g.Path == "" {
			problems = append(problems, fmt.Sprintf("part %d (%q): no path, not stored", w.Index, w.Field))
			continue
		}
		// os.Root refuses a path that leads out of dir.
		switch fi, err := root.Lstat(filepath.FromSlash(g.Path)); {
		case err != nil:
			problems = append(problems, fmt.Sprintf("part %d (%q): %v", w.Index, w.Field, err))
		case !fi.Mode().IsRegular():
			problems = append(problems, fmt.Sprintf("part %d (%q): %q is not a regular file", w.Index, w.Field, g.Path))
		case fi.Size() != w.Size:
			problems = append(problems, fmt.Sprintf("part %d (%q): %q has %d bytes on disk, sent %d", w.Index, w.Field, g.Path, fi.Size(), w.Size))
		}
		listed[g.Path] = true
	}

	// The store's layout is flat: every file the gateway left is a name in dir.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !listed[e.Name()] {
			problems = append(problems, fmt.Sprintf("%q is in the store but not in the answer", e.Name()))
		}
	}
	if problems != nil {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// makeStoreDir makes a temporary directory for store mode under parent
// (empty: the system's temp directory) and returns its absolute path. The
// generated Caddyfile holds it in double quotes, so a path with characters
// that would need escaping there is refused.
func makeStoreDir(parent string) (string, error) {
	if parent == "" {
		parent = os.TempDir()
	}
	parent, err := filepath.Abs(parent)
	if err != nil {
		return "", err
	}
	if strings.ContainsFunc(parent, func(r rune) bool { return r < ' ' || r == 0x7f || strings.ContainsRune(`"\{}`, r) }) {
		return "", fmt.Errorf("store directory %q: quotes, backslashes, braces or control characters cannot go into the Caddyfile", parent)
	}
	return os.MkdirTemp(parent, "uploadbench-store-")
}

// emptyDir removes everything in dir, but not dir.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}
