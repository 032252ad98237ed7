//go:build unix

package filestore

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/streamproxy/caddy-stream-proxy/store"
)

// At provisioning, the file store removes the temporary files nobody holds a
// lock on (a crashed process's) and keeps one whose lock is held (a live
// writer's, here this test's own open file description).
func TestFileStoreRemovesCrashedTempFiles(t *testing.T) {
	dir := t.TempDir()
	tmp := filepath.Join(dir, tempDir)
	if err := os.MkdirAll(tmp, 0o750); err != nil {
		t.Fatal(err)
	}
	crashed, live := filepath.Join(tmp, "crashed"), filepath.Join(tmp, "live")
	if err := os.WriteFile(crashed, []byte("cut"), 0o640); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(live, os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	s := &FileStore{Root: dir}
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Cleanup()
	if _, err := os.Stat(crashed); !os.IsNotExist(err) {
		t.Errorf("the crashed upload's temporary file is still there: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("the live writer's temporary file was removed: %v", err)
	}

	// A file the store writes is locked until it is committed or discarded.
	b := s.Begin(t.Context(), ctx.Logger())
	sf, err := b.Create(store.FileInfo{Field: "f"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sf.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	if n, removed, err := s.removeUnlocked(filepath.Join(tempDir, filepath.Base(sf.(*diskFile).tmp))); err != nil || removed {
		t.Fatalf("a file being written was removed (%d bytes, %v)", n, err)
	}
	b.Discard()
}
