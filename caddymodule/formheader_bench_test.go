package streamproxy

import (
	"io"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// BenchmarkFormHeaders compares the memory of 128 uploads in flight at once
// through the forward path: plain (one file part), hostile (999 parts, each
// with a 15 KiB part header, the same size in all) under the default
// max_form_header_size, under other budgets, and with the budget out of
// reach (what it cost before there was one). Bodies are generated as they
// are read, so the heap holds nothing of the benchmark's own but the
// handler; each read hands out at most 32 KiB and yields, so that every
// stream is mid-upload at once, holding its buffers, as on a network.
//
// It reports the peak heap in use over what was live before, per stream
// (heap-KiB/stream: what the "2x a plain upload" compares), the
// peak itself (peak-heap-MiB), and the heap allocated per stream
// (alloc-KiB/stream). The buffer pools are emptied first, so that every
// stream's buffers count.
func BenchmarkFormHeaders(b *testing.B) {
	const streams, parts, chunk = 128, 999, 32 << 10
	const boundary = "benchboundary"
	hostilePart := "--" + boundary + "\r\nContent-Disposition: form-data; name=\"f\"\r\nX-Pad: " +
		strings.Repeat("p", 15<<10) + "\r\n\r\nx\r\n"
	hostile := formStream{unit: hostilePart, n: parts, tail: "--" + boundary + "--\r\n"}
	// The same padding as a parameter of the Content-Disposition, which is
	// parsed (mime.ParseMediaType) rather than passed through.
	inDisposition := formStream{unit: "--" + boundary + "\r\nContent-Disposition: form-data; name=\"f\"; pad=\"" +
		strings.Repeat("p", 15<<10) + "\"\r\n\r\nx\r\n", n: parts, tail: hostile.tail}
	plainHead := "--" + boundary + "\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"talk.wav\"\r\n" +
		"Content-Type: audio/wav\r\n\r\n"
	plainTail := "\r\n--" + boundary + "--\r\n"
	unit := strings.Repeat("0123456789abcdef", 1<<10)
	fill := hostile.size() - int64(len(plainHead)+len(plainTail))
	plain := formStream{head: plainHead, unit: unit, n: int(fill / int64(len(unit))), tail: plainTail}
	plain.head += unit[:fill%int64(len(unit))]

	for _, tc := range []struct {
		name       string
		form       formStream
		formBudget int64
	}{
		{"plain", plain, 0},
		{"hostile", hostile, 0},
		{"hostile-disposition", inDisposition, 0},
		{"hostile-256KiB", hostile, 256 << 10},
		{"hostile-1MiB", hostile, 1 << 20},
		{"hostile-unbounded", hostile, 1 << 40},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := provision(b, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1"), MaxFormHeaderSize: tc.formBudget})
			h.logger = zap.NewNop()
			var before runtime.MemStats
			runtime.GC()
			runtime.GC() // the second empties the pools' victim caches
			runtime.ReadMemStats(&before)
			peak, stop := sampleHeap()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var wg sync.WaitGroup
				for s := 0; s < streams; s++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						body := tc.form.reader(chunk)
						r := prepared(httptest.NewRequest("POST", "/upload", body))
						r.ContentLength = tc.form.size()
						r.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
						u := newUpload(h, httptest.NewRecorder(), r)
						if err := u.checkRequest(); err != nil {
							b.Error(err)
							return
						}
						err := forwardTo(u, io.Discard)
						if ue := classified(err); err != nil && !(ue != nil && ue.Limit == "max_form_header_size") {
							b.Error(err)
						}
					}()
				}
				wg.Wait()
			}
			b.StopTimer()
			stop()
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			b.ReportMetric((float64(peak.Load())-float64(before.HeapInuse))/streams/1024, "heap-KiB/stream")
			b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MiB")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/float64(b.N)/streams/1024, "alloc-KiB/stream")
		})
	}
}

// formStream is a form body generated as it is read: head, unit n times,
// then tail.
type formStream struct {
	head, unit string
	n          int
	tail       string
}

func (f formStream) size() int64 {
	return int64(len(f.head)) + int64(f.n)*int64(len(f.unit)) + int64(len(f.tail))
}

// reader returns the body in reads of at most chunk bytes, each after
// yielding the processor: a network's pace, in that all streams progress
// together.
func (f formStream) reader(chunk int) io.Reader {
	rs := []io.Reader{strings.NewReader(f.head)}
	rs = append(rs, &repeatReader{unit: f.unit, n: f.n})
	rs = append(rs, strings.NewReader(f.tail))
	return &paced{r: io.MultiReader(rs...), chunk: chunk}
}

type repeatReader struct {
	unit string
	n    int
	off  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	k := copy(p, r.unit[r.off:])
	if r.off += k; r.off == len(r.unit) {
		r.off, r.n = 0, r.n-1
	}
	return k, nil
}

type paced struct {
	r     io.Reader
	chunk int
}

func (p *paced) Read(b []byte) (int, error) {
	runtime.Gosched()
	return p.r.Read(b[:min(len(b), p.chunk)])
}

// sampleHeap records the peak HeapInuse until stop is called.
func sampleHeap() (peak *atomic.Uint64, stop func()) {
	peak = new(atomic.Uint64)
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		var ms runtime.MemStats
		for {
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	return peak, func() { close(done); <-ended }
}
