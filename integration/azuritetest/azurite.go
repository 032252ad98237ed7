// Package azuritetest starts Azurite, Microsoft's Azure Storage emulator, for
// tests: its Blob service on a free loopback port, with a temporary
// location, and Azurite's well-known development account.
package azuritetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// Azurite's well-known development account, published in its documentation.
const (
	Account = "devstoreaccount1"
	Key     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Server is a running Azurite Blob service.
type Server struct {
	Endpoint string // http://127.0.0.1:N/devstoreaccount1, path style
	Port     string

	cmd *exec.Cmd
	dir string
	bin string
}

// Path finds azurite-blob where SP_AZURITE says, or where xcaddy.mk's
// azurite target installs it (integration/azurite/node_modules/.bin). Without
// it the test skips, except in CI (CI=true), where it fails.
func Path(t testing.TB) string {
	t.Helper()
	p := os.Getenv("SP_AZURITE")
	if p == "" {
		_, file, _, _ := runtime.Caller(0)
		p = filepath.Join(filepath.Dir(file), "..", "azurite", "node_modules", ".bin", "azurite-blob")
	}
	if _, err := os.Stat(p); err != nil {
		msg := "azurite-blob not found at " + p + " (make -f xcaddy.mk azurite installs it)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// Start runs Azurite's Blob service until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := Launch(Path(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

// Launch runs the azurite-blob at bin on a free loopback port, keeping its
// data in dir, and waits until it listens; for callers that are not tests
// (uploadbench). Kill must be called.
func Launch(bin, dir string) (*Server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	s := &Server{Endpoint: "http://127.0.0.1:" + port + "/" + Account, Port: port, dir: dir, bin: bin}
	return s, s.start()
}

// start runs Azurite and waits for it to say that it listens.
func (s *Server) start() error {
	s.cmd = exec.Command(s.bin, "--blobHost", "127.0.0.1", "--blobPort", s.Port, "--location", s.dir,
		"--skipApiVersionCheck", "--loose", "--disableProductStyleUrl", "--silent", "--disableTelemetry")
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	s.cmd.Stderr = os.Stderr
	if err := s.cmd.Start(); err != nil {
		return err
	}
	ready := make(chan bool, 1)
	// Read until Azurite says it listens, then no more: with --silent it
	// writes nothing else of note, and no goroutine outlives the start.
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "successfully listens on") {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			s.Kill()
			return errors.New("azurite exited before it listened")
		}
		return nil
	case <-time.After(60 * time.Second): // node starting on a busy machine
		s.Kill()
		return errors.New("azurite did not start within a minute")
	}
}

// Kill stops Azurite at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// WaitPersisted waits until Azurite's metadata file, which it saves every
// 5 s, names container: a kill before that loses the container itself.
func (s *Server) WaitPersisted(t testing.TB, container string) {
	t.Helper()
	db := filepath.Join(s.dir, "__azurite_db_blob__.json")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(db); err == nil && bytes.Contains(b, []byte(`"`+container+`"`)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("azurite did not save container %s within 30 s", container)
		}
		time.Sleep(100 * time.Millisecond) // Azurite's own save interval is what is waited for
	}
}

// Restart starts Azurite again on the same port and location.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
}

// Client is a client of the container name, with the development account's
// key, on a transport that ends with the test.
func (s *Server) Client(t testing.TB, name string) *container.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c, err := s.NewClient(name, tr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// NewClient is a client of the container name, with the development
// account's key, on the transport tr.
func (s *Server) NewClient(name string, tr http.RoundTripper) (*container.Client, error) {
	cred, err := container.NewSharedKeyCredential(Account, Key)
	if err != nil {
		return nil, err
	}
	return container.NewClientWithSharedKeyCredential(s.Endpoint+"/"+name, cred,
		&container.ClientOptions{ClientOptions: policy.ClientOptions{Transport: &http.Client{Transport: tr}}})
}

// CreateContainer makes the container name and returns its client.
func (s *Server) CreateContainer(t testing.TB, name string) *container.Client {
	t.Helper()
	c := s.Client(t, name)
	if _, err := c.Create(context.Background(), nil); err != nil {
		t.Fatalf("creating container %s: %v", name, err)
	}
	return c
}
