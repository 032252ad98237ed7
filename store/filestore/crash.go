//go:build unix

package filestore

import (
	"errors"
	"os"
	"path"
	"syscall"

	"go.uber.org/zap"
)

// tempDir is where the file store writes files until they are committed,
// under its Root: one directory to look in after a crash.
const tempDir = ".partial"

// createLocked creates a temporary file and locks it for as long as it is
// open. The directory's shared lock, held meanwhile, keeps a cleanup in
// another process (which takes it exclusively) from seeing the file between
// its creation and its lock.
func (s *FileStore) createLocked(name string) (*os.File, error) {
	d, err := s.root.Open(tempDir)
	if err != nil {
		return nil, err
	}
	defer d.Close() // ends the directory's lock
	if err := flock(d, syscall.LOCK_SH); err != nil {
		return nil, err
	}
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, s.fileMode)
	if err != nil {
		return nil, err
	}
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		_ = s.root.Remove(name)
		return nil, err
	}
	return f, nil
}

// removeCrashed removes the temporary files that no live process writes:
// those a process that crashed left. A file whose lock is held is another
// live gateway's (or this one's, from a configuration still running) and
// stays.
func (s *FileStore) removeCrashed(logger *zap.Logger) error {
	d, err := s.root.Open(tempDir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := flock(d, syscall.LOCK_EX); err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	removed, bytes := 0, int64(0)
	for _, name := range names {
		n, ok, err := s.removeUnlocked(path.Join(tempDir, name))
		if err != nil {
			logger.Warn("removing a temporary file left by a crash", zap.String("path", path.Join(s.dir, tempDir, name)), zap.Error(err))
			continue
		}
		if ok {
			removed++
			bytes += n
		}
	}
	if removed > 0 {
		logger.Info("removed temporary files left by a crash", zap.String("dir", path.Join(s.dir, tempDir)),
			zap.Int("files", removed), zap.Int64("bytes", bytes))
	}
	return nil
}

// removeUnlocked removes name if no live process holds its lock, and
// reports its size.
func (s *FileStore) removeUnlocked(name string) (size int64, removed bool, err error) {
	f, err := s.root.OpenFile(name, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	if err := flock(f, syscall.LOCK_EX|syscall.LOCK_NB); errors.Is(err, syscall.EWOULDBLOCK) {
		return 0, false, nil // a live writer's
	} else if err != nil {
		return 0, false, err
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	if err := s.root.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, false, err
	}
	return fi.Size(), true, nil
}

// flock applies how to f's open file description, retried on EINTR.
func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = syscall.Flock(int(fd), how)
			if ferr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}
