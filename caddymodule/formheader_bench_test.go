package streamproxy

import (
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/http/httptest"
	"net/textproto"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

// BenchmarkFormHeaders compares the memory of 128 concurrent uploads through
// the forward path: plain (one file part), hostile (999 parts, each with a
// 15 KiB part header, the same size in all) under the default
// max_form_header_size, and the same hostile stream with the budget out of
// reach (what it cost before there was one). It reports the peak heap in
// use over what was live before (heap-KiB/stream) and the heap allocated
// per stream (alloc-KiB/stream).
func BenchmarkFormHeaders(b *testing.B) {
	const streams, parts = 128, 999
	pad := strings.Repeat("p", 15<<10)
	var hostile bytes.Buffer
	hw := multipart.NewWriter(&hostile)
	for i := 0; i < parts; i++ {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="f%d"`, i))
		h.Set("X-Pad", pad)
		w, _ := hw.CreatePart(h)
		w.Write([]byte("x"))
	}
	hw.Close()
	var plain bytes.Buffer
	pw := multipart.NewWriter(&plain)
	fw, _ := pw.CreateFormFile("audio", "talk.wav")
	fw.Write(bytes.Repeat([]byte("0123456789abcdef"), hostile.Len()/16))
	pw.Close()

	for _, tc := range []struct {
		name       string
		form       []byte
		ct         string
		formBudget int64
	}{
		{"plain", plain.Bytes(), pw.FormDataContentType(), 0},
		{"hostile", hostile.Bytes(), hw.FormDataContentType(), 0},
		{"hostile-256KiB", hostile.Bytes(), hw.FormDataContentType(), 256 << 10},
		{"hostile-1MiB", hostile.Bytes(), hw.FormDataContentType(), 1 << 20},
		{"hostile-unbounded", hostile.Bytes(), hw.FormDataContentType(), 1 << 40},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := provision(b, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1"), MaxFormHeaderSize: tc.formBudget})
			h.logger = zap.NewNop()
			peak, stop := sampleHeap()
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var wg sync.WaitGroup
				for s := 0; s < streams; s++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						r := prepared(httptest.NewRequest("POST", "/upload", bytes.NewReader(tc.form)))
						r.Header.Set("Content-Type", tc.ct)
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
