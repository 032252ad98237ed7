package integration

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// integration/README.md, row 22: a full disk gives 507 insufficient_storage,
// removes the temporary file, and the next upload works.
//
// The file size limit (RLIMIT_FSIZE) of a gateway process makes its writes
// past the limit fail with EFBIG, as a full disk's fail with ENOSPC: no
// privilege is needed, so it runs on every Linux machine, CI included. A
// full tmpfs, which is ENOSPC itself, needs the right to mount one (root);
// it is the one case that may skip.
func TestStoreDiskFull(t *testing.T) {
	t.Run("file size limit", func(t *testing.T) {
		const limit = 4 << 20
		dir := t.TempDir()
		g := gatewayProcessFor(t, buildCaddy(t), fmt.Sprintf("\tstream_proxy /upload* {\n\t\tmode store\n\t\tstore %s\n\t}", dir))
		g.started = func(t *testing.T, p *os.Process) {
			// Go ignores SIGXFSZ, so that the write fails with EFBIG.
			if err := unix.Prlimit(p.Pid, unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
				t.Fatalf("setting the gateway's file size limit: %v", err)
			}
		}
		g.start(t)
		expectDiskFull(t, "http://"+g.addr()+"/upload", dir, 2*limit)
	})

	t.Run("full filesystem", func(t *testing.T) {
		dir := t.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir).CombinedOutput(); err != nil {
			t.Skipf("this machine does not let the test mount a small tmpfs to fill (%v: %s); the file size limit stands for it", err, out)
		}
		// Lazily: the gateway keeps the store open until its next config load.
		t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
		startGateway(t, fmt.Sprintf(`stream_proxy /upload* {
	mode store
	store %s
}`, dir))
		expectDiskFull(t, gatewayURL+"/upload", dir, 8<<20)
	})
}

// expectDiskFull uploads a file of size bytes to url, which stores into dir
// and cannot hold it: 507 insufficient_storage, and nothing left in dir;
// then a file of 1 MiB, which is stored whole.
func expectDiskFull(t *testing.T, url, dir string, size int64) {
	t.Helper()
	c := newClient(t)
	res, body := postForm(t, c, url, []formPart{{field: "f", filename: "big.bin", size: size, seed: 1}}, true)
	expectRefusal(t, res, body, http.StatusInsufficientStorage, "insufficient_storage", "")
	if left := filesUnder(t, dir); len(left) != 0 {
		t.Fatalf("left on the full disk: %v", left)
	}
	res, body = postForm(t, c, url, []formPart{{field: "f", filename: "small.bin", size: 1 << 20, seed: 2}}, false)
	if res.StatusCode != http.StatusCreated {
		t.Fatalf("the next upload: status %d: %s", res.StatusCode, body)
	}
	left := filesUnder(t, dir)
	if len(left) != 1 || strings.HasPrefix(left[0], ".partial") {
		t.Fatalf("stored: %v, want the one small file", left)
	}
	if fi, err := os.Stat(filepath.Join(dir, left[0])); err != nil || fi.Size() != 1<<20 {
		t.Fatalf("the stored file: %v %v", fi, err)
	}
}
