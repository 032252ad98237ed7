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

// forwardTo runs u's forward path into w, as exchangeForm's producer does,
// without a backend.
func forwardTo(u *upload, w io.Writer) error {
	form := u.openBody()
	defer u.closeBody()
	bw := u.newFlusher()
	defer bw.release()
	mw := newFormWriter(bw)
	return u.feed(w, bw, nil, func() error {
		if err := u.forward(form, mw); err != nil {
			return err
		}
		return mw.Close()
	})
}

// BenchmarkForwardPath measures the forward data path without a network: the
// strict reader over a client body, re-encoded under a fresh boundary into a
// buffered writer. Bytes and allocations per op must not grow with the part
// size (run with -benchmem).
func BenchmarkForwardPath(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20, 16 << 20, 64 << 20} {
		b.Run(fmt.Sprintf("part=%dKiB", size>>10), func(b *testing.B) {
			var form bytes.Buffer
			mw := multipart.NewWriter(&form)
			mw.WriteField("model", "whisper")
			fw, _ := mw.CreateFormFile("audio", "talk.wav")
			fw.Write(bytes.Repeat([]byte("0123456789abcdef"), size/16))
			mw.Close()
			h := provision(b, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1")})
			h.logger = zap.NewNop()

			b.SetBytes(int64(form.Len()))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := prepared(httptest.NewRequest("POST", "/upload", bytes.NewReader(form.Bytes())))
				r.Header.Set("Content-Type", mw.FormDataContentType())
				u := newUpload(h, httptest.NewRecorder(), r)
				if err := u.checkRequest(); err != nil {
					b.Fatal(err)
				}
				if err := forwardTo(u, io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHostileConcurrent runs 256 uploads at once through the forward
// path, each with parts whose headers are just under 16 KiB and a thousand
// tiny parts, and reports the peak heap in use while they run
// (peak-heap-MiB) and per upload (heap-KiB/stream).
func BenchmarkHostileConcurrent(b *testing.B) {
	const streams = 256
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	pad := strings.Repeat("p", 16<<10-200)
	for i := 0; i < 999; i++ {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="f%d"`, i))
		if i%100 == 0 {
			h.Set("X-Pad", pad) // a part header just under max_part_header_size
		}
		w, _ := mw.CreatePart(h)
		w.Write([]byte("x"))
	}
	mw.Close()
	h := provision(b, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1")})
	h.logger = zap.NewNop()

	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	b.SetBytes(int64(form.Len() * streams))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		for s := 0; s < streams; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := prepared(httptest.NewRequest("POST", "/upload", bytes.NewReader(form.Bytes())))
				r.Header.Set("Content-Type", mw.FormDataContentType())
				u := newUpload(h, httptest.NewRecorder(), r)
				if err := u.checkRequest(); err != nil {
					b.Error(err)
					return
				}
				if err := forwardTo(u, io.Discard); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	b.StopTimer()
	close(stop)
	<-sampled
	grown := float64(peak.Load()) - float64(base.HeapInuse)
	b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MiB")
	b.ReportMetric(grown/streams/1024, "heap-KiB/stream")
}
