package streamproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/http/httptest"
	"testing"
)

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
			h := provision(b, &Handler{To: "http://127.0.0.1:1", Hash: nil})

			b.SetBytes(int64(form.Len()))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := httptest.NewRequest("POST", "/upload", bytes.NewReader(form.Bytes()))
				r.Header.Set("Content-Type", mw.FormDataContentType())
				u := newUpload(h, httptest.NewRecorder(), r)
				if err := u.checkRequest(); err != nil {
					b.Fatal(err)
				}
				fr := u.openBody()
				out := writerPool.Get().(*bufio.Writer)
				out.Reset(io.Discard)
				stop := u.flushBeforeReads(out)
				if err := u.forward(fr, multipart.NewWriter(out), out); err != nil {
					b.Fatal(err)
				}
				stop()
				out.Reset(nil)
				writerPool.Put(out)
				u.closeBody()
			}
		})
	}
}
