//go:build !unix

package filestore

import (
	"os"

	"go.uber.org/zap"
)

// tempDir is where the file store writes files until they are committed.
const tempDir = ".partial"

// createLocked creates a temporary file. Without flock, temporary files are
// not locked, and a crash's are not removed at start.
func (s *FileStore) createLocked(name string) (*os.File, error) {
	return s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, s.fileMode)
}

func (s *FileStore) removeCrashed(*zap.Logger) error { return nil }
