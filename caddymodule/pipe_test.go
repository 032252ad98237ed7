package streamproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

func TestHandoffCarriesWritesWhole(t *testing.T) {
	p := newHandoff()
	want := bytes.Repeat([]byte("0123456789"), 10000)
	done := make(chan error, 1)
	go func() {
		for _, chunk := range [][]byte{want[:7], want[7:50000], want[50000:]} {
			if n, err := p.Write(chunk); n != len(chunk) || err != nil {
				done <- err
				return
			}
		}
		p.CloseWrite(nil)
		done <- nil
	}()
	var got bytes.Buffer
	buf := make([]byte, 4096) // smaller than the writes, as a transport's copy buffer
	for {
		n, err := p.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("read %d bytes, not what was written", got.Len())
	}
}

// The tests of handoff run in a synctest bubble, where synctest.Wait returns
// once every other goroutine is blocked: a Write still waiting, a Read
// waiting for one, without a sleep to guess when they are.

func TestHandoffWriteReturnsOnlyOnceTaken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newHandoff()
		wrote := make(chan struct{})
		go func() {
			_, _ = p.Write(make([]byte, 100))
			close(wrote)
		}()
		buf := make([]byte, 60)
		if n, _ := p.Read(buf); n != 60 {
			t.Fatalf("read %d", n)
		}
		synctest.Wait()
		select {
		case <-wrote:
			t.Fatal("Write returned with 40 bytes not taken")
		default:
		}
		if n, _ := p.Read(buf); n != 40 {
			t.Fatalf("read %d", n)
		}
		<-wrote
	})
}

func TestHandoffEnds(t *testing.T) {
	stop := errors.New("stop")

	// The reader's end fails a blocked write, and later ones.
	synctest.Test(t, func(t *testing.T) {
		p := newHandoff()
		failed := make(chan error, 1)
		go func() { _, err := p.Write([]byte("never read")); failed <- err }()
		synctest.Wait() // the write is blocked
		p.CloseRead(stop)
		if err := <-failed; err != stop {
			t.Fatalf("blocked write: %v, want %v", err, stop)
		}
		if _, err := p.Write([]byte("x")); err != stop {
			t.Fatalf("later write: %v, want %v", err, stop)
		}
		if _, err := p.Read(make([]byte, 1)); err != io.ErrClosedPipe {
			t.Fatalf("read after CloseRead: %v", err)
		}
	})

	// The writer's error reaches a waiting reader.
	synctest.Test(t, func(t *testing.T) {
		p := newHandoff()
		read := make(chan error, 1)
		go func() { _, err := p.Read(make([]byte, 1)); read <- err }()
		synctest.Wait() // the read is waiting
		p.CloseWrite(stop)
		if err := <-read; err != stop {
			t.Fatalf("read: %v, want %v", err, stop)
		}
		if _, err := p.Write([]byte("x")); err != io.ErrClosedPipe {
			t.Fatalf("write after CloseWrite: %v", err)
		}
	})
}

// chanWriter reports each write.
type chanWriter chan []byte

func (c chanWriter) Write(p []byte) (int, error) { c <- append([]byte(nil), p...); return len(p), nil }

// flushedSizes flushes f, ends it and returns the sizes of the writes dst got.
func flushedSizes(t *testing.T, f *idleFlusher, dst chanWriter) []int {
	t.Helper()
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	f.end()
	close(dst)
	var sizes []int
	for p := range dst {
		sizes = append(sizes, len(p))
	}
	return sizes
}

func TestIdleFlusherSendsWhenTheClientPauses(t *testing.T) {
	dst := make(chanWriter, 4)
	f := newIdleFlusher(bufio.NewWriterSize(nil, smallBufs.size))
	f.reset(dst)
	defer f.end()
	if _, err := f.Write(bytes.Repeat([]byte("x"), 1000)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	f.beforeRead()
	select {
	case p := <-dst:
		if len(p) != 1000 {
			t.Fatalf("sent %d bytes, want 1000", len(p))
		}
		t.Logf("sent %v after the read began", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("nothing sent while the client paused")
	}
	f.afterRead()
}

func TestIdleFlusherFillsWrites(t *testing.T) {
	dst := make(chanWriter, 8)
	size := largeBufs.size
	f := newIdleFlusher(bufio.NewWriterSize(nil, size))
	f.reset(dst)
	f.delay = time.Hour                         // a client that never pauses
	record := bytes.Repeat([]byte("r"), 16<<10) // a TLS record's worth per client read
	n := size/len(record) + 1
	for range n {
		f.beforeRead()
		f.afterRead()
		if _, err := f.Write(record); err != nil {
			t.Fatal(err)
		}
	}
	sizes := flushedSizes(t, f, dst)
	if len(sizes) != 2 || sizes[0] != size || sizes[1] != n*len(record)-size {
		t.Fatalf("%d reads of %d bytes went out in writes of %v bytes, want one of %d and the rest", n, len(record), sizes, size)
	}
}

func TestIdleFlusherPassesLargeWrites(t *testing.T) {
	dst := make(chanWriter, 8)
	f := newIdleFlusher(bufio.NewWriterSize(nil, largeBufs.size))
	f.reset(dst)
	f.delay = time.Hour
	// A part header, then runs of part data as plain HTTP reads bring them.
	runs := []int{100, passSize, 1000, 3 * passSize, passSize - 1}
	for _, n := range runs {
		if _, err := f.Write(bytes.Repeat([]byte("d"), n)); err != nil {
			t.Fatal(err)
		}
	}
	sizes := flushedSizes(t, f, dst)
	if !slices.Equal(sizes, runs) {
		t.Fatalf("writes of %v bytes, want %v: what was buffered, then each large run unbuffered", sizes, runs)
	}
}
