package streamproxy

import (
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/http/httptest"
	"testing"

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
