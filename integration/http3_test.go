package integration

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// integration/README.md, row 38: the same 256 MiB form, generated while it is
// sent, goes through stream_proxy over HTTP/1.1, HTTP/2 and HTTP/3 (quic-go's
// client against Caddy's HTTP/3 server, `tls internal`), and the backend gets
// it byte-identical each time (size and sha256 of every part).
func TestEdgeUploadOverHTTP123(t *testing.T) {
	be := newBackend(t)
	storage := startGatewayTLS(t, fmt.Sprintf(`	stream_proxy /upload* %s {
		header_up X-Client-Proto {http.request.proto}
	}`, be.URL))
	tlsConfig := &tls.Config{RootCAs: internalRoots(t, storage), ServerName: "localhost"}

	h1 := &http.Transport{TLSClientConfig: tlsConfig, DisableCompression: true, WriteBufferSize: 64 << 10}
	h2 := &http.Transport{TLSClientConfig: tlsConfig, DisableCompression: true, ForceAttemptHTTP2: true}
	h3 := &http3.Transport{TLSClientConfig: tlsConfig}
	t.Cleanup(func() {
		h1.CloseIdleConnections()
		h2.CloseIdleConnections()
		_ = h3.Close()
	})
	url := fmt.Sprintf("https://localhost:%d/upload", httpsPort)
	for i, tc := range []struct {
		proto string
		rt    http.RoundTripper
	}{
		{"HTTP/1.1", h1},
		{"HTTP/2.0", h2},
		{"HTTP/3.0", h3},
	} {
		t.Run(tc.proto, func(t *testing.T) {
			parts := []formPart{
				{field: "model", value: "whisper-large"},
				{field: "audio", filename: "talk.wav", contentType: "audio/wav", size: 256 << 20, seed: uint64(i + 1)},
				{field: "lang", value: "de"},
			}
			c := &http.Client{Transport: tc.rt, Timeout: 5 * time.Minute}
			start := time.Now()
			res, out := postForm(t, c, url, parts, false)
			if res.Proto != tc.proto {
				t.Fatalf("the client spoke %s, want %s", res.Proto, tc.proto)
			}
			if res.StatusCode != 200 {
				t.Fatalf("status %d: %s", res.StatusCode, out)
			}
			got := be.waitRequests(t, i+1)
			if len(got) != i+1 || got[i].Err != nil {
				t.Fatalf("backend saw %d requests, last err %v", len(got), got[len(got)-1].Err)
			}
			if p := got[i].Header.Get("X-Client-Proto"); p != tc.proto {
				t.Errorf("the gateway saw %q, want %s", p, tc.proto)
			}
			if w, h := comparableParts(expected(parts)), comparableParts(got[i].Parts); w != h {
				t.Fatalf("backend saw\n%s\nwant\n%s", h, w)
			}
			t.Logf("%s: 256 MiB in %v", tc.proto, time.Since(start).Round(time.Millisecond))
		})
	}
}
