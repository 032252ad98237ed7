package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startNodeParsers runs integration/browser/parsers.mjs (busboy and multer
// with their defaults) on port, until the test ends.
func startNodeParsers(t *testing.T, port int) {
	t.Helper()
	node := needTool(t, "node", "")
	needTool(t, "busboy", filepath.Join("browser", "node_modules", "busboy", "package.json"))
	cmd := exec.Command(node, "parsers.mjs", fmt.Sprint(port))
	cmd.Dir = "browser"
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.TrimSpace(line) == "listening"
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("parsers.mjs did not start: %s", stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("parsers.mjs did not start within 30s: %s", stderr.String())
	}
}

// integration/README.md, rows 31 to 33 against Node backends: busboy and
// multer, with their default settings, read from each real client's bytes
// through the gateway exactly what they read from them directly.
func TestEdgeNodeParsersReadTheSame(t *testing.T) {
	port := httpPort + 364
	startNodeParsers(t, port)
	startGateway(t, fmt.Sprintf("@parsers path /busboy* /multer*\nstream_proxy @parsers http://127.0.0.1:%d", port))
	c := newClient(t)
	direct := fmt.Sprintf("http://127.0.0.1:%d", port)

	dotnetCT := `multipart/form-data; boundary="` + dotnetBoundary + `"`
	for _, tc := range []struct {
		name, contentType, body string
		busboyReads             string // the filename busboy must read, if not empty
	}{
		// busboy reads a raw UTF-8 filename as Latin-1 (its default
		// defParamCharset), and skips a part whose filename is an unquoted
		// UTF-8 token: with or without the gateway alike.
		{"Chromium, empty file input", "multipart/form-data; boundary=" + chromiumBoundary, chromiumEmptyInput, "beach.png"},
		{"Chromium, UTF-8 filename", "multipart/form-data; boundary=" + chromiumBoundary,
			strings.Replace(chromiumEmptyInput, `filename="beach.png"`, `filename="näme ✓.png"`, 1), ""},
		{"Apache HttpClient 4", "multipart/form-data; boundary=" + apacheBoundary, apacheForm("binary", "\x00\x01binary\r\n"), "build.tar.gz"},
		{".NET, raw UTF-8", dotnetCT, dotnetForm(`filename=näme.txt; filename*=utf-8''n%C3%A4me.txt`), ""},
		{".NET, encoded word", dotnetCT, dotnetForm(`filename="=?utf-8?B?bsOkbWUudHh0?="; filename*=utf-8''n%C3%A4me.txt`), "näme.txt"},
		{"filename* alone", dotnetCT, dotnetForm(`filename*=UTF-8''r%C3%A9sum%C3%A9.pdf`), "résumé.pdf"},
	} {
		for _, parser := range []string{"busboy", "multer"} {
			t.Run(tc.name+"/"+parser, func(t *testing.T) {
				resD, outD := postRawTo(t, c, direct+"/"+parser, tc.contentType, []byte(tc.body))
				resG, outG := postRawTo(t, c, gatewayURL+"/"+parser, tc.contentType, []byte(tc.body))
				if resD.StatusCode != 200 {
					t.Fatalf("directly: %d %s", resD.StatusCode, outD)
				}
				if resG.StatusCode != resD.StatusCode || !bytes.Equal(outG, outD) {
					t.Fatalf("%s read\n%s\nthrough the gateway, and\n%s\ndirectly", parser, outG, outD)
				}
				if parser == "busboy" && tc.busboyReads != "" {
					var a struct {
						Seen []struct{ Kind, Filename string }
					}
					_ = json.Unmarshal(outG, &a)
					found := false
					for _, s := range a.Seen {
						found = found || s.Kind == "file" && s.Filename == tc.busboyReads
					}
					if !found {
						t.Errorf("busboy did not read the file %q: %s", tc.busboyReads, outG)
					}
				}
			})
		}
	}
}
