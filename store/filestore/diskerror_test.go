package filestore

import (
	"errors"
	"io/fs"
	"net/http"
	"syscall"
	"testing"
)

// A full disk, a full quota and a file past the system's size limit are all
// 507: the store cannot hold the file. Any other failure is not.
func TestDiskErrorFull(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG} {
		err := diskError(&fs.PathError{Op: "write", Path: "x", Err: errno})
		if err.Status != http.StatusInsufficientStorage || !errors.Is(err, errno) {
			t.Errorf("%v: status %d code %s, want 507", errno, err.Status, err.Code)
		}
	}
	if err := diskError(&fs.PathError{Op: "write", Path: "x", Err: syscall.EIO}); err.Status == http.StatusInsufficientStorage {
		t.Errorf("EIO: status %d, want not 507", err.Status)
	}
}
