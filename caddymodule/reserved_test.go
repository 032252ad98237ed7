package streamproxy

import (
	"net/http"
	"strings"
	"testing"

	"github.com/streamproxy/caddy-stream-proxy/store/filestore"
)

// TestReservedFieldsCannotBeForged: a client's field named like one the
// gateway writes after a file part of that name is refused, before or after
// the file; the same suffix on a field with no such file passes.
func TestReservedFieldsCannotBeForged(t *testing.T) {
	field := func(name, value string) string {
		return "--B\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" + value + "\r\n"
	}
	file := "--B\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n\r\nRIFF-data\r\n"
	end := "--B--\r\n"

	be := echoBackend(t)
	forward := provision(t, &Handler{ProxyRaw: proxyTo(be.URL), Hash: []string{"sha256"}})
	store := provision(t, &Handler{ProxyRaw: proxyTo(be.URL), Mode: ModeStore,
		StoreRaw: fileStoreJSON(&filestore.FileStore{Root: t.TempDir()}), Hash: []string{"sha256"}})

	for _, tc := range []struct {
		name string
		h    *Handler
		body string
		want int
	}{
		{"forward: digest after the file", forward, file + field("audio.sha256", "forged") + end, http.StatusBadRequest},
		{"forward: digest before the file", forward, field("audio.sha256", "forged") + file + end, http.StatusBadRequest},
		{"forward: another field's suffix", forward, field("user.sha256", "x") + file + end, http.StatusOK},
		{"store: path before the file", store, field("audio.path", "/etc/passwd") + file + end, http.StatusBadRequest},
		{"store: key after the file", store, file + field("audio.key", "other") + end, http.StatusBadRequest},
		{"store: digest after the file", store, file + field("audio.sha256", "forged") + end, http.StatusBadRequest},
		{"store: user.name with no file user", store, field("user.name", "alice") + file + end, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := serve(tc.h, formRequest(tc.body), failNext)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if tc.want == http.StatusBadRequest && !strings.Contains(w.Body.String(), CodeFieldNotAllowed) {
				t.Fatalf("answer %s, want code %s", w.Body, CodeFieldNotAllowed)
			}
		})
	}
}
