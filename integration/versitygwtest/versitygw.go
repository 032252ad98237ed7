// Package versitygwtest runs versitygw, a real S3 server on its POSIX
// backend, for the tests of the S3 store (store/s3store, integration) and
// for uploadbench: on a free loopback port, in a directory of the caller's,
// with root credentials of the caller's.
package versitygwtest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Path finds versitygw where SP_VERSITYGW says, or where xcaddy.mk's
// versitygw target installs it (bin/ at the module's root). Without it the
// test skips, except in CI (CI=true), where it fails.
func Path(t testing.TB) string {
	t.Helper()
	p := os.Getenv("SP_VERSITYGW")
	if p == "" {
		_, file, _, _ := runtime.Caller(0)
		p = filepath.Join(filepath.Dir(file), "..", "..", "bin", "versitygw")
	}
	if _, err := os.Stat(p); err != nil {
		msg := "versitygw not found at " + p + " (make -f xcaddy.mk versitygw installs it)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// Server is a running versitygw.
type Server struct {
	Endpoint string // http://127.0.0.1:N
	Addr     string // 127.0.0.1:N
	Key      string // the root access key
	Secret   string // and its secret
	Dir      string // the POSIX backend's root: a bucket is a directory in it

	bin string
	cmd *exec.Cmd
}

// Start runs the versitygw at bin on a free loopback port, serving dir, with
// the root credentials key and secret (and the rest of this process's
// environment, such as VGW_IAM_DIR), and waits until it accepts connections.
func Start(bin, dir, key, secret string) (*Server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	s := &Server{Endpoint: "http://" + addr, Addr: addr, Key: key, Secret: secret, Dir: dir, bin: bin}
	if err := s.Restart(); err != nil {
		return nil, err
	}
	return s, nil
}

// StartT is Start for a test: versitygw as Path finds it, in a temporary
// directory, killed when the test ends.
func StartT(t testing.TB, key, secret string) *Server {
	t.Helper()
	s, err := Start(Path(t), t.TempDir(), key, secret)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

// Restart starts versitygw again (or the first time) on the same port and
// directory, and waits until it accepts connections.
func (s *Server) Restart() error {
	s.Kill()
	s.cmd = exec.Command(s.bin, "--port", s.Addr, "posix", s.Dir)
	s.cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.Key, "ROOT_SECRET_KEY="+s.Secret)
	if err := s.cmd.Start(); err != nil {
		s.cmd = nil
		return err
	}
	// versitygw says nothing when it is ready: its port answering is the
	// signal.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", s.Addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("versitygw did not start: %w", err)
		}
	}
}

// Kill stops versitygw at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
	s.cmd = nil
}

// Client is an S3 client of the server with its root credentials, path
// style, on the transport tr (nil: http.DefaultTransport), computing and
// checking checksums only where an operation requires them, as the store
// does.
func (s *Server) Client(tr http.RoundTripper) *s3.Client {
	if tr == nil {
		tr = http.DefaultTransport
	}
	return s3.New(s3.Options{
		BaseEndpoint:               aws.String(s.Endpoint),
		Region:                     "us-east-1",
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(s.Key, s.Secret, ""),
		HTTPClient:                 &http.Client{Transport: tr},
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}
