package integration

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// startGatewayTLS loads site into the in-process Caddy twice: on
// http://localhost:httpPort and on https://localhost:httpsPort with a
// certificate from Caddy's internal CA, served over HTTP/1.1, HTTP/2 and
// HTTP/3. The CA lives in a directory of the test's own, returned.
func startGatewayTLS(t *testing.T, site string) (storage string) {
	t.Helper()
	storage = t.TempDir()
	ownCaddy(t)
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
	waitFor(t, fmt.Sprintf("a certificate served on :%d", httpsPort), func() bool {
		conn, err := tls.Dial("tcp", fmt.Sprintf("localhost:%d", httpsPort), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only waiting for a certificate
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
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
