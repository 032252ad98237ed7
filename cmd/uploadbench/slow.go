package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// runSlow holds n uploads open at once, each a small form trickled at a
// given rate, through reverse_proxy and then through stream_proxy, each in a
// fresh gateway process of the same binary, into a backend that discards
// what it gets; it prints the gateway's RSS per upload (peak minus idle).
func runSlow(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("slow", flag.ContinueOnError)
	caddyPath := fs.String("caddy", "", "gateway binary: Caddy with stream_proxy (required)")
	n := fs.Int("n", 3000, "uploads held open at once")
	rate := sizeFlag(4 * kib)
	fs.Var(&rate, "rate", "bytes per second each upload sends")
	duration := fs.Duration("duration", 15*time.Second, "how long each upload takes: its form is rate × duration bytes")
	interval := fs.Duration("interval", 250*time.Millisecond, "time between two writes of an upload")
	ramp := fs.Duration("ramp", 3*time.Second, "time over which the uploads are started")
	logDir := fs.String("log", "", "directory to keep each gateway's log in, as gateway-<route>.log (default: discarded)")
	admin := fs.String("admin", "", "Caddy admin address for the gateways (e.g. 127.0.0.1:2999), to profile them through /debug/pprof/ while they run (default: off)")
	via := fs.String("via", "rp,sp", "routes, in order, each in a fresh gateway: rp (reverse_proxy), sp (stream_proxy forward)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: uploadbench slow -caddy PATH [flags]\n\n"+
			"Holds -n uploads open at once, each a one-file form of rate × duration bytes\n"+
			"written every -interval, into a discarding backend, through each route in a\n"+
			"fresh gateway, and prints the gateway's RSS per upload (VmHWM minus its RSS\n"+
			"before). Raises its open-files limit to the hard limit. Linux only.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	routes := strings.Split(*via, ",")
	for _, r := range routes {
		if r != "rp" && r != "sp" {
			fs.Usage()
			return errUsage
		}
	}
	if *caddyPath == "" || *n < 1 || rate < 1 || *duration <= 0 || *interval <= 0 {
		fs.Usage()
		return errUsage
	}
	if err := checkCaddy(*caddyPath); err != nil {
		return err
	}
	if *admin != "" {
		gatewayAdmin = *admin
	}
	if *logDir != "" {
		if err := os.MkdirAll(*logDir, 0o755); err != nil {
			return err
		}
	}
	if limit, err := raiseOpenFiles(); err != nil || limit < uint64(2**n+1000) {
		return fmt.Errorf("open files: limit %d (%v); %d uploads need %d here and %d in the gateway: raise the hard limit (ulimit -Hn)",
			limit, err, *n, 2**n+1000, 2**n+1000)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(discard), ReadHeaderTimeout: time.Minute}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	size := int64(rate) * int64(*duration/time.Second)
	fmt.Printf("%d uploads at once, each a form of %s sent at %s/s in writes every %v, into a discarding backend; one fresh gateway per route\n",
		*n, formatBytes(size), formatBytes(int64(rate)), *interval)
	fmt.Printf("%-16s %10s %10s %10s %14s %8s %8s %8s\n", "route", "idle RSS", "peak RSS", "peak-idle", "RSS per upload", "CPU s", "ok", "failed")
	for _, r := range routes {
		keepLog := ""
		if *logDir != "" {
			keepLog = filepath.Join(*logDir, "gateway-"+r+".log")
		}
		res, err := slowRun(ctx, *caddyPath, ln.Addr().String(), r, *n, size, int64(rate), *interval, *ramp, keepLog)
		if err != nil {
			return err
		}
		name := map[string]string{"rp": "reverse_proxy", "sp": "stream_proxy"}[r]
		per := float64(res.peak-res.idle) / float64(*n)
		fmt.Printf("%-16s %8.1f MiB %7.1f MiB %7.1f MiB %10.1f KiB %8.1f %8d %8d\n", name,
			float64(res.idle)/mib, float64(res.peak)/mib, float64(res.peak-res.idle)/mib, per/kib, res.cpu, res.ok, res.failed)
		if res.firstErr != nil {
			fmt.Printf("  first failure: %v\n", res.firstErr)
		}
	}
	fmt.Println(machineLine(*caddyPath))
	fmt.Println(commandLine())
	return nil
}

// discard is the backend: it reads the body to its end and answers 200.
func discard(w http.ResponseWriter, r *http.Request) {
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintf(w, "%d\n", n)
}

type slowResult struct {
	idle, peak int64
	cpu        float64 // the gateway's CPU seconds (user + system) from its idle RSS to the last upload's end
	ok, failed int64
	firstErr   error
}

// steadyRSS is the resident memory of process pid once its start's work
// (background tasks after the ready route answers) has ended: when two reads
// 100 ms apart differ by less than 1%, or after 5 s.
func steadyRSS(pid int) (int64, error) {
	last, err := procStatusBytes(pid, "VmRSS")
	for deadline := time.Now().Add(5 * time.Second); err == nil && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond) // the interval between reads
		var now int64
		if now, err = procStatusBytes(pid, "VmRSS"); err == nil && (now-last)*100 < last && (last-now)*100 < last {
			return now, nil
		}
		last = now
	}
	return last, err
}

// slowRun starts a fresh gateway and holds n uploads open through route.
func slowRun(ctx context.Context, caddyPath, backendAddr, route string, n int, size, rate int64, interval, ramp time.Duration, keepLog string) (res slowResult, err error) {
	gw, err := startGateway(ctx, caddyPath, backendAddr, []string{"forward"}, "", nil, protoHTTP)
	if err != nil {
		return res, err
	}
	gw.KeepLog = keepLog
	defer gw.Stop()
	url := gw.URL + "/rp/upload"
	if route == "sp" {
		url = gw.URL + spPath("forward") + "upload"
	}
	if res.idle, err = steadyRSS(gw.Pid); err != nil {
		return res, err
	}
	if err := gw.ResetPeakRSS(); err != nil {
		return res, err
	}
	cpu0, err := gw.CPUSeconds()
	if err != nil {
		return res, err
	}

	chunk := max(rate*int64(interval)/int64(time.Second), 1)
	// A write buffer of one chunk: each chunk leaves when written, as a slow
	// link delivers it, not gathered into the transport's 4 KiB.
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true, DisableCompression: true, MaxIdleConnsPerHost: -1,
		WriteBufferSize: int(min(chunk, 64*kib))}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var mu sync.Mutex
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	fail := func(err error) {
		failed.Add(1)
		mu.Lock()
		if res.firstErr == nil {
			res.firstErr = err
		}
		mu.Unlock()
	}
	for i := range n {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(ramp / time.Duration(n)):
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := newTrickleForm(size, chunk, interval, uint64(i))
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
			if err != nil {
				fail(err)
				return
			}
			req.ContentLength = body.length()
			req.Header.Set("Content-Type", "multipart/form-data; boundary="+trickleBoundary)
			r, err := client.Do(req)
			if err != nil {
				fail(err)
				return
			}
			answer, _ := io.ReadAll(io.LimitReader(r.Body, 512))
			_, _ = io.Copy(io.Discard, r.Body)
			r.Body.Close()
			if r.StatusCode != http.StatusOK {
				fail(fmt.Errorf("status %d: %s", r.StatusCode, strings.TrimSpace(string(answer))))
				return
			}
			ok.Add(1)
		}()
	}
	wg.Wait()
	if err := gw.Alive(); err != nil {
		return res, err
	}
	res.ok, res.failed = ok.Load(), failed.Load()
	cpu1, err := gw.CPUSeconds()
	if err != nil {
		return res, err
	}
	res.cpu = cpu1 - cpu0
	res.peak, err = gw.PeakRSS()
	return res, err
}

const trickleBoundary = "uploadbench-slow-boundary"

// trickleForm is a one-file form whose file is size bytes, read chunk at a
// time, one chunk every interval.
type trickleForm struct {
	head, tail []byte
	left       int64 // file bytes still to send
	chunk      int64
	interval   time.Duration
	next       time.Time
	fill       byte
}

func newTrickleForm(size, chunk int64, interval time.Duration, seed uint64) *trickleForm {
	head := "--" + trickleBoundary + "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.bin\"\r\n" +
		"Content-Type: application/octet-stream\r\n\r\n"
	tail := "\r\n--" + trickleBoundary + "--\r\n"
	return &trickleForm{head: []byte(head), tail: []byte(tail), left: max(size-int64(len(head)+len(tail)), 0),
		chunk: chunk, interval: interval, fill: byte('a' + seed%26)}
}

func (f *trickleForm) length() int64 { return int64(len(f.head)) + f.left + int64(len(f.tail)) }

func (f *trickleForm) Read(p []byte) (int, error) {
	if len(f.head) > 0 {
		n := copy(p, f.head)
		f.head = f.head[n:]
		return n, nil
	}
	if f.left > 0 {
		if d := time.Until(f.next); d > 0 {
			time.Sleep(d) // the client's pace: what is measured
		}
		f.next = time.Now().Add(f.interval)
		n := int(min(int64(len(p)), f.chunk, f.left))
		for i := range p[:n] {
			p[i] = f.fill
		}
		f.left -= int64(n)
		return n, nil
	}
	if len(f.tail) > 0 {
		n := copy(p, f.tail)
		f.tail = f.tail[n:]
		return n, nil
	}
	return 0, io.EOF
}
