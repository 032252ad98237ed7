package bufpool

import "golang.org/x/sys/unix"

// allocBuffer maps size bytes of anonymous memory, outside Go's heap; the
// memory is only taken from the system as it is written.
func allocBuffer(size int) []byte {
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return make([]byte, size)
	}
	return b
}

// releaseMemory gives an idle buffer's memory back to the system; it reads
// as zeros until written again. A heap buffer (not page-aligned) is left as
// it is.
func releaseMemory(b []byte) {
	_ = unix.Madvise(b[:cap(b)], unix.MADV_DONTNEED)
}
