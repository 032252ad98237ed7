package streamproxy

import (
	"bytes"
	"fmt"
	"io"
	"mime/multipart"
	"net/http/httptest"
	"net/textproto"
	"testing"

	"go.uber.org/zap"
)

// BenchmarkForwardVerifyTypes is BenchmarkForwardPath with verify_types off
// and on: one large WAV-headed file, and a form of many small images, where
// the prefix's cost is most visible. Bytes and allocations per op (with
// -benchmem) show what the check adds to each stream.
func BenchmarkForwardVerifyTypes(b *testing.B) {
	wav := mediaFile(b, "audio.wav")
	png := mediaFile(b, "image.png")
	forms := []struct {
		name  string
		parts int
		size  int
		head  []byte
		typ   string
	}{
		{"1x16MiB", 1, 16 << 20, wav, "audio/wav"},
		{"1x1MiB", 1, 1 << 20, wav, "audio/wav"},
		{"100x8KiB", 100, 8 << 10, png, "image/png"},
	}
	for _, f := range forms {
		var form bytes.Buffer
		mw := multipart.NewWriter(&form)
		mw.WriteField("model", "whisper")
		for i := range f.parts {
			h := textproto.MIMEHeader{}
			h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="f%d"; filename="f%d"`, i, i))
			h.Set("Content-Type", f.typ)
			w, _ := mw.CreatePart(h)
			w.Write(f.head)
			w.Write(bytes.Repeat([]byte("0123456789abcdef"), (f.size-len(f.head))/16))
		}
		mw.Close()
		for _, verify := range []bool{false, true} {
			b.Run(fmt.Sprintf("form=%s/verify=%v", f.name, verify), func(b *testing.B) {
				h := provision(b, &Handler{ProxyRaw: proxyTo("http://127.0.0.1:1"), VerifyTypes: verify, AllowTypes: []string{"audio/*", "image/*"}})
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
}
