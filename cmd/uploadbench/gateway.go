package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

const readyPath = "/uploadbench-ready"

// gatewayAdmin is the generated Caddyfile's admin address: off, unless a
// command asks for Caddy's admin API (its /debug/pprof/ among it) to profile
// the gateway while it runs.
var gatewayAdmin = "off"

// gateway is a Caddy process running a generated Caddyfile on a free loopback
// port. Whatever happens, Stop must be called: it kills the process and
// removes the temporary directory.
type gateway struct {
	URL      string // http://127.0.0.1:PORT
	Pid      int
	File     string // the Caddyfile it runs
	StoreDir string // temporary, absolute: where store mode writes; empty without it
	KeepLog  string // if set, Stop copies the gateway's stdout and stderr there

	cmd    *exec.Cmd
	dir    string // temporary: Caddyfile, log, Caddy's data and config dirs
	log    string // its stdout and stderr
	exited chan struct{}
}

// spPath is the route prefix of stream_proxy in the given mode.
func spPath(mode string) string {
	if mode == "forward" {
		return "/sp/"
	}
	return "/sp-" + mode + "/"
}

// gatewayCaddyfile routes /rp/* through reverse_proxy and /sp/* (and
// /sp-<mode>/* for other modes) through stream_proxy, all to backendAddr but
// store, which has no backend: it writes the files flat into storeDir, hashing
// them, and answers 201 with JSON listing them.
func gatewayCaddyfile(port int, backendAddr string, modes []string, storeDir string, storeBlocks map[string]string, proto string) string {
	var sb strings.Builder
	site := fmt.Sprintf("http://127.0.0.1:%d {", port)
	autoHTTPS := "off"
	if proto != protoHTTP {
		// HTTPS with a certificate from Caddy's own CA, on one port over TCP
		// (HTTP/1.1, HTTP/2) and UDP (HTTP/3).
		site = fmt.Sprintf("https://127.0.0.1:%d {\n\ttls internal", port)
		autoHTTPS = "disable_redirects"
	}
	fmt.Fprintf(&sb, `{
	admin %s
	persist_config off
	auto_https %s
	skip_install_trust
	grace_period 1s
}

%s
	respond %s "uploadbench ready" 200

	reverse_proxy /rp/* %s {
		flush_interval -1
	}
`, gatewayAdmin, autoHTTPS, site, readyPath, backendAddr)
	for _, mode := range modes {
		switch mode {
		case "forward":
			fmt.Fprintf(&sb, "\n\tstream_proxy %s* http://%s\n", spPath(mode), backendAddr)
		case "store":
			fmt.Fprintf(&sb, "\n\tstream_proxy %s* {\n\t\tmode store\n\t\tstore \"%s\" {\n\t\t\tlayout flat\n\t\t}\n\t\thash sha256\n\t}\n",
				spPath(mode), storeDir)
		case modeStoreS3, modeStoreAzure:
			fmt.Fprintf(&sb, "\n\tstream_proxy %s* {\n\t\tmode store\n\t\t%s\n\t}\n", spPath(mode), storeBlocks[mode])
		default:
			fmt.Fprintf(&sb, "\n\tstream_proxy %s* http://%s {\n\t\tmode %s\n\t}\n", spPath(mode), backendAddr, mode)
		}
	}
	sb.WriteString("}\n")
	return sb.String()
}

// startGateway runs `caddyPath run --config FILE --adapter caddyfile` and
// waits until it answers. With store among modes, it first makes the store
// directory, temporary, under storeParent (empty: the system's temp directory).
func startGateway(ctx context.Context, caddyPath, backendAddr string, modes []string, storeParent string, storeBlocks map[string]string, proto string) (g *gateway, err error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "uploadbench-gateway-")
	if err != nil {
		return nil, err
	}
	scheme := "https"
	if proto == protoHTTP {
		scheme = "http"
	}
	g = &gateway{
		URL:    fmt.Sprintf("%s://127.0.0.1:%d", scheme, port),
		File:   filepath.Join(dir, "Caddyfile"),
		dir:    dir,
		log:    filepath.Join(dir, "caddy.log"),
		exited: make(chan struct{}),
	}
	defer func() {
		if err != nil {
			g.Stop()
			g = nil
		}
	}()

	if slices.Contains(modes, "store") {
		if g.StoreDir, err = makeStoreDir(storeParent); err != nil {
			return g, err
		}
	}
	if err := os.WriteFile(g.File, []byte(gatewayCaddyfile(port, backendAddr, modes, g.StoreDir, storeBlocks, proto)), 0o600); err != nil {
		return g, err
	}
	logFile, err := os.Create(g.log)
	if err != nil {
		return g, err
	}
	defer logFile.Close()

	g.cmd = exec.Command(caddyPath, "run", "--config", g.File, "--adapter", "caddyfile")
	g.cmd.Stdout, g.cmd.Stderr = logFile, logFile
	g.cmd.Env = append(os.Environ(),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	g.cmd.SysProcAttr = childProcAttr()
	if err := g.cmd.Start(); err != nil {
		close(g.exited)
		return g, err
	}
	g.Pid = g.cmd.Process.Pid
	go func() {
		_ = g.cmd.Wait()
		close(g.exited)
	}()
	return g, g.waitReady(ctx)
}

// waitReady polls the ready route for up to 15 seconds.
func (g *gateway) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the gateway's internal CA, on loopback
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		res, err := client.Get(g.URL + readyPath)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
			res.Body.Close()
			if res.StatusCode == http.StatusOK && string(body) == "uploadbench ready" {
				return nil
			}
		}
		select {
		case <-g.exited:
			return fmt.Errorf("gateway exited at start:\n%s", g.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("gateway not ready after 15s:\n%s", g.logTail())
}

// Alive reports an error if the gateway process has exited.
func (g *gateway) Alive() error {
	select {
	case <-g.exited:
		return fmt.Errorf("gateway exited:\n%s", g.logTail())
	default:
		return nil
	}
}

// Stop kills the gateway, waits for it and removes its temporary files and
// the store directory.
func (g *gateway) Stop() {
	if g.cmd != nil && g.cmd.Process != nil {
		_ = g.cmd.Process.Kill()
		select {
		case <-g.exited:
		case <-time.After(10 * time.Second):
		}
	}
	if g.KeepLog != "" {
		if err := copyFile(g.log, g.KeepLog); err != nil {
			fmt.Fprintf(os.Stderr, "keeping the gateway's log: %v\n", err)
		}
	}
	_ = os.RemoveAll(g.dir)
	if g.StoreDir != "" {
		_ = os.RemoveAll(g.StoreDir)
	}
}

// logTail returns the last lines of the gateway's log.
func (g *gateway) logTail() string {
	data, err := os.ReadFile(g.log)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// CPUSeconds is the CPU time (user + system) the gateway has used so far.
func (g *gateway) CPUSeconds() (float64, error) {
	return procCPUSeconds(g.Pid)
}

// PeakRSS is the gateway's peak resident set size (VmHWM) in bytes.
func (g *gateway) PeakRSS() (int64, error) {
	return procStatusBytes(g.Pid, "VmHWM")
}

// ResetPeakRSS sets the gateway's VmHWM back to its current RSS (Linux 4.0+).
func (g *gateway) ResetPeakRSS() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", g.Pid), []byte("5"), 0)
}

// userHZ is the unit of the times in /proc/PID/stat: USER_HZ, which is 100
// on every Linux architecture Go supports.
const userHZ = 100

// procCPUSeconds reads utime + stime from /proc/PID/stat.
func procCPUSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces; the
	// fields after it start with field 3, state. utime and stime are 14, 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("cannot parse /proc/PID/stat")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parsing /proc/PID/stat: %w", err)
	}
	return float64(utime+stime) / userHZ, nil
}

// procStatusBytes reads a "kB" field such as VmHWM from /proc/PID/status.
func procStatusBytes(pid int, field string) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			break
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		return kb * kib, err
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// copyFile copies the file at src to dst, which it creates or truncates.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
