package integration

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// httpsPort is the in-process Caddy's HTTPS port (TCP for HTTP/1.1 and
// HTTP/2, UDP for HTTP/3); it moves with SP_TEST_HTTP_PORT.
var httpsPort = envPort("SP_TEST_HTTPS_PORT", httpPort+363)

// startGatewayTLS loads site into the in-process Caddy twice: on
// http://localhost:httpPort and on https://localhost:httpsPort with a
// certificate from Caddy's internal CA, served over HTTP/1.1, HTTP/2 and
// HTTP/3. The CA lives in a directory of the test's own, returned.
func startGatewayTLS(t *testing.T, site string) (storage string) {
	t.Helper()
	storage = t.TempDir()
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	tester.InitServer(fmt.Sprintf(`{
	skip_install_trust
	admin localhost:%d
	http_port %d
	https_port %d
	grace_period 1ns
	storage file_system %s
	servers {
		protocols h1 h2 h3
	}
}
http://localhost:%d {
%s
}
https://localhost:%d {
	tls internal
%s
}
`, adminPort, httpPort, httpsPort, storage, httpPort, site, httpsPort, site), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	// The certificate is issued in the background: wait until it is served.
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := tls.Dial("tcp", fmt.Sprintf("localhost:%d", httpsPort), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only waiting for a certificate
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate served on :%d: %v", httpsPort, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkLeaks(t)
	return storage
}

// internalRoots is a pool holding the root certificate of the internal CA
// whose storage startGatewayTLS returned.
func internalRoots(t *testing.T, storage string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(storage, "pki", "authorities", "local", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in the internal CA's root.crt")
	}
	return pool
}

// checkedPart is one part as a checking backend received it.
type checkedPart struct {
	Field       string `json:"field"`
	Filename    string `json:"filename,omitempty"`
	HasFilename bool   `json:"has_filename,omitempty"`
	Disposition string `json:"disposition"`
	ContentType string `json:"content_type,omitempty"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

// checkedRequest is one request as a checking backend received it.
type checkedRequest struct {
	Proto string        `json:"proto"` // the client's protocol, as the gateway saw it (X-Client-Proto)
	Parts []checkedPart `json:"parts"`
	Err   string        `json:"error,omitempty"`
}

// checkingBackend is a real backend on loopback that reads every part of the
// forms it gets with mime/multipart, records each part's header, size and
// digest, and answers with the same record as JSON.
type checkingBackend struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []checkedRequest
}

func newCheckingBackend(t *testing.T) *checkingBackend {
	b := &checkingBackend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := checkedRequest{Proto: r.Header.Get("X-Client-Proto")}
		err := readChecked(r, &rec)
		if err != nil {
			rec.Err = err.Error()
		}
		b.mu.Lock()
		b.reqs = append(b.reqs, rec)
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
		}
		_ = json.NewEncoder(w).Encode(rec)
	}))
	t.Cleanup(b.Close)
	return b
}

func readChecked(r *http.Request, rec *checkedRequest) error {
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return err
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(h, p)
		if err != nil {
			return err
		}
		cp := checkedPart{Disposition: p.Header.Get("Content-Disposition"), ContentType: p.Header.Get("Content-Type"),
			Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}
		if _, dp, err := mime.ParseMediaType(cp.Disposition); err == nil {
			cp.Field = dp["name"]
			cp.Filename, cp.HasFilename = dp["filename"]
		}
		rec.Parts = append(rec.Parts, cp)
	}
}

func (b *checkingBackend) requests() []checkedRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]checkedRequest(nil), b.reqs...)
}
