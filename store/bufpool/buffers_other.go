//go:build !linux

package bufpool

// allocBuffer allocates a part buffer on Go's heap.
func allocBuffer(size int) []byte { return make([]byte, size) }

// releaseMemory leaves the buffer to Go's heap.
func releaseMemory([]byte) {}
