package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// bench is what compare and rss measure with: the counting backend, served
// in this process on a free loopback port, and a gateway in front of it.
// Close must be called, whatever happened.
type bench struct {
	gw     *gateway
	stores map[string]objectStore // by mode: store-s3, store-azure
	direct string                 // the backend's URL
	client *http.Client
	gwc    *http.Client // to the gateway, in the protocol measured

	stopBackend context.CancelFunc
	backendDone chan struct{}

	mu   sync.Mutex
	raws []rawResult // raw uploads the backend answered since the last upload began
}

// route is one way to the backend.
type route struct {
	Name       string // as shown in tables
	URL        string
	viaGateway bool
	mode       string // stream_proxy's mode; empty for direct and reverse_proxy
}

// objectStore is an object store server the gateway's store mode writes
// into (versitygw, Azurite), with the SDK's own way of uploading the same
// files straight into it.
type objectStore interface {
	caddyBlock() string // the gateway's store block
	uploadDirect(ctx context.Context, b *body, p *progress) (uploadResult, []string, error)
	// verifyObjects reads each file back and checks it; keyOf gives the
	// key of the i-th file.
	verifyObjects(ctx context.Context, want []expectedPart, keyOf func(i int, p expectedPart) string) error
	empty(ctx context.Context) error
	Close()
}

// uploadEachFile uploads each file of b as its own object under a fresh key,
// one file after the other: begin starts the object's upload, putParts sends
// its parts, through inFlight+1 buffers of size bytes.
func uploadEachFile(ctx context.Context, b *body, p *progress, size int64, inFlight int,
	begin func(key string) (objectUpload, error)) (uploadResult, []string, error) {
	start := time.Now()
	var keys []string
	var sent int64
	bufs := make(chan []byte, inFlight+1)
	for range cap(bufs) {
		bufs <- make([]byte, size)
	}
	for i, s := range b.segments {
		if s.static != nil {
			continue
		}
		key := fmt.Sprintf("direct/%d-%d", time.Now().UnixNano(), i)
		up, err := begin(key)
		if err != nil {
			return uploadResult{}, keys, err
		}
		parts, n, err := putParts(ctx, p.counting(io.LimitReader(newRandReader(s.seed), s.size)), bufs, inFlight, up.put)
		sent += n
		if err == nil {
			err = up.commit(ctx, parts)
		}
		if err != nil {
			up.abort()
			return uploadResult{}, keys, err
		}
		keys = append(keys, key)
	}
	return uploadResult{Status: "200 OK", Code: http.StatusOK, Sent: sent, Elapsed: time.Since(start)}, keys, nil
}

// objectUpload is one object's upload in parts, straight into a store.
type objectUpload interface {
	// put sends part num (from 0); it may run beside other parts' puts.
	put(ctx context.Context, num int, data []byte) error
	// commit makes the object of the first parts parts.
	commit(ctx context.Context, parts int) error
	// abort gives up an upload that failed.
	abort()
}

// putParts reads r in parts of a buffer from bufs each and puts them, up to
// inFlight at once, as the gateway's stores do. It returns the parts put
// (an empty r is one empty part) and the bytes read.
func putParts(ctx context.Context, r io.Reader, bufs chan []byte, inFlight int,
	put func(ctx context.Context, num int, data []byte) error) (int, int64, error) {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(inFlight)
	var total int64
	num := 0
	for {
		buf := <-bufs
		n, err := io.ReadFull(r, buf)
		total += int64(n)
		if n == 0 && num > 0 {
			bufs <- buf
			if err == io.EOF {
				err = nil
			}
			return num, total, errors.Join(g.Wait(), err)
		}
		part := num
		num++
		g.Go(func() error {
			defer func() { bufs <- buf }()
			return put(gctx, part, buf[:n])
		})
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return num, total, g.Wait()
		}
		if err != nil {
			return num, total, errors.Join(g.Wait(), err)
		}
	}
}

// verifyEachFile reads each file of want back with open (outside the
// timing) and compares its size and sha256 with what was sent; keyOf gives
// the key of the i-th file.
func verifyEachFile(want []expectedPart, keyOf func(i int, p expectedPart) string, open func(key string) (io.ReadCloser, error)) error {
	i := 0
	for _, w := range want {
		if w.Filename == "" {
			continue
		}
		key := keyOf(i, w)
		i++
		if key == "" {
			return fmt.Errorf("part %d (%q): no object", w.Index, w.Field)
		}
		r, err := open(key)
		if err != nil {
			return fmt.Errorf("part %d: %w", w.Index, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, r)
		r.Close()
		if err != nil {
			return err
		}
		if sum := hex.EncodeToString(h.Sum(nil)); n != w.Size || sum != w.SHA256 {
			return fmt.Errorf("part %d (%q): object of %d bytes, sha256 %s; sent %d, %s", w.Index, w.Field, n, sum, w.Size, w.SHA256)
		}
	}
	return nil
}

// directModes are the routes straight into each object store, by its mode.
var directModes = map[string]string{modeStoreS3: modeS3Direct, modeStoreAzure: modeAzureDirect}

// storeOf is the object store mode a store or direct route writes into, or "".
func storeOf(mode string) string {
	for store, direct := range directModes {
		if mode == store || mode == direct {
			return store
		}
	}
	return ""
}

// startBench starts the backend and a gateway with a stream_proxy route per
// mode. With store among them, the gateway stores files in a temporary
// directory made under storeParent (empty: the system's temp directory).
func startBench(ctx context.Context, caddyPath string, modes []string, storeParent string, s3opts *s3Options, azopts *azureOptions, proto string) (b *bench, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	bctx, cancel := context.WithCancel(context.Background())
	b = &bench{
		direct:      "http://" + ln.Addr().String(),
		client:      newClient(1),
		gwc:         newGatewayClient(1, proto),
		stopBackend: cancel,
		backendDone: make(chan struct{}),
	}
	be := &backend{seed: 1, onRaw: b.recordRaw}
	go func() {
		defer close(b.backendDone)
		_ = serveBackend(bctx, be, ln)
	}()
	defer func() {
		if err != nil {
			b.Close()
			b = nil
		}
	}()

	b.stores = map[string]objectStore{}
	blocks := map[string]string{}
	if slices.Contains(modes, modeStoreS3) {
		if s3opts == nil {
			return b, fmt.Errorf("mode %s needs versitygw", modeStoreS3)
		}
		if b.stores[modeStoreS3], err = startS3Target(ctx, *s3opts); err != nil {
			return b, err
		}
	}
	if slices.Contains(modes, modeStoreAzure) {
		if azopts == nil {
			return b, fmt.Errorf("mode %s needs azurite", modeStoreAzure)
		}
		if b.stores[modeStoreAzure], err = startAzureTarget(ctx, *azopts); err != nil {
			return b, err
		}
	}
	for mode, st := range b.stores {
		blocks[mode] = st.caddyBlock()
	}
	b.gw, err = startGateway(ctx, caddyPath, ln.Addr().String(), modes, storeParent, blocks, proto)
	return b, err
}

// Close kills the gateway, removes its files (stored ones included) and stops
// the backend.
func (b *bench) Close() {
	if b.gw != nil {
		b.gw.Stop()
	}
	for _, st := range b.stores {
		st.Close()
	}
	b.client.CloseIdleConnections()
	b.gwc.CloseIdleConnections()
	if c, ok := b.gwc.Transport.(io.Closer); ok { // HTTP/3's
		_ = c.Close()
	}
	b.stopBackend()
	<-b.backendDone
}

// routes returns direct, reverse_proxy and stream_proxy in each mode.
func (b *bench) routes(modes []string) []*route {
	rs := []*route{b.directRoute(), b.rpRoute()}
	for _, mode := range modes {
		switch mode {
		case modeStoreS3:
			rs = append(rs, &route{Name: "S3 direct (SDK)", mode: modeS3Direct})
		case modeStoreAzure:
			rs = append(rs, &route{Name: "Azure direct (SDK)", mode: modeAzureDirect})
		}
		rs = append(rs, b.spRoute(mode))
	}
	return rs
}

func (b *bench) directRoute() *route {
	return &route{Name: "direct", URL: b.direct + "/direct/upload"}
}

func (b *bench) rpRoute() *route {
	return &route{Name: "reverse_proxy", URL: b.gw.URL + "/rp/upload", viaGateway: true}
}

func (b *bench) spRoute(mode string) *route {
	name := "stream_proxy"
	if mode != "forward" {
		name += " " + mode
	}
	return &route{Name: name, URL: b.gw.URL + spPath(mode) + "upload", viaGateway: true, mode: mode}
}

func (b *bench) recordRaw(r rawResult) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.raws) < 10000 {
		b.raws = append(b.raws, r)
	}
}

func (b *bench) takeRaws() []rawResult {
	b.mu.Lock()
	defer b.mu.Unlock()
	raws := b.raws
	b.raws = nil
	return raws
}

// measurement is one verified upload.
type measurement struct {
	uploadResult
	CPU      float64 // gateway CPU seconds used during the upload
	BenchCPU float64 // this process's (client and backend) CPU seconds meanwhile
}

// upload sends body along r, checks that the backend (or, in store mode, the
// gateway's store) got every part byte-identical, and measures the gateway's
// CPU time meanwhile. In store mode the stored files are removed afterwards,
// whatever happened, so that a long run does not fill the disk.
func (b *bench) upload(ctx context.Context, r *route, body *body, chunked bool, timeout time.Duration, label string) (_ measurement, err error) {
	if r.mode == "store" {
		defer func() {
			if rerr := emptyDir(b.gw.StoreDir); rerr != nil {
				err = errors.Join(err, fmt.Errorf("%s: emptying the store: %w", label, rerr))
			}
		}()
	}
	st := b.stores[storeOf(r.mode)]
	if st != nil {
		defer func() {
			if rerr := st.empty(context.WithoutCancel(ctx)); rerr != nil {
				err = errors.Join(err, fmt.Errorf("%s: emptying the bucket: %w", label, rerr))
			}
		}()
	}
	direct := st != nil && r.mode == directModes[storeOf(r.mode)]
	b.takeRaws()
	cpu0, err := b.gw.CPUSeconds()
	if err != nil {
		return measurement{}, err
	}
	self0, err := procCPUSeconds(os.Getpid())
	if err != nil {
		return measurement{}, err
	}
	p := startProgress(label, body.Length)
	uctx, cancel := context.WithTimeout(ctx, timeout)
	var res uploadResult
	var directKeys []string
	if direct {
		res, directKeys, err = st.uploadDirect(uctx, body, p)
	} else {
		c := b.client
		if r.viaGateway {
			c = b.gwc
		}
		res, err = doUpload(uctx, c, r.URL, body, chunked, p)
	}
	cancel()
	p.Stop()
	if err != nil {
		if gerr := b.gw.Alive(); gerr != nil {
			err = fmt.Errorf("%w; %w", err, gerr)
		}
		return measurement{}, fmt.Errorf("%s: %w", label, err)
	}
	cpu1, err := b.gw.CPUSeconds()
	if err != nil {
		return measurement{}, err
	}
	self1, err := procCPUSeconds(os.Getpid())
	if err != nil {
		return measurement{}, err
	}
	wantCode := http.StatusOK
	if r.mode == "store" || (st != nil && !direct) {
		wantCode = http.StatusCreated
	} else if direct {
		wantCode = res.Code // the SDK's own answers, checked by uploadDirect
	}
	if res.Code != wantCode {
		return measurement{}, fmt.Errorf("%s: %s: %.2000s", label, res.Status, res.Answer)
	}
	switch {
	case r.mode == "per_part":
		err = verifyRawUploads(b.takeRaws(), body.Parts())
	case r.mode == "store":
		err = verifyStored(res.Answer, body.Parts(), b.gw.StoreDir)
	case direct:
		err = st.verifyObjects(ctx, body.Parts(), func(i int, _ expectedPart) string {
			if i < len(directKeys) {
				return directKeys[i]
			}
			return ""
		})
	case st != nil:
		var keys map[string]string
		if keys, err = storeKeys(res.Answer); err == nil {
			err = st.verifyObjects(ctx, body.Parts(), func(_ int, p expectedPart) string { return keys[p.Field] })
		}
	default:
		err = verifyAnswer(res.Answer, body.Parts())
	}
	if err != nil {
		return measurement{}, fmt.Errorf("%s: verify FAILED: %w", label, err)
	}
	return measurement{uploadResult: res, CPU: cpu1 - cpu0, BenchCPU: self1 - self0}, nil
}

// machineLine describes the machine, uploadbench's Go and the gateway's.
func machineLine(caddyPath string) string {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	gwGo := "unknown"
	if info, err := buildinfo.ReadFile(caddyPath); err == nil {
		gwGo = info.GoVersion
	}
	return fmt.Sprintf("machine: %d CPUs (nproc), %s, %s/%s; uploadbench built with %s, gateway with %s",
		runtime.NumCPU(), model, runtime.GOOS, runtime.GOARCH, runtime.Version(), gwGo)
}

// commandLine is how uploadbench was run, quoted for a POSIX shell.
func commandLine() string {
	args := []string{filepath.Base(os.Args[0])}
	for _, a := range os.Args[1:] {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}()<>|&;#~!") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		args = append(args, a)
	}
	return "command: " + strings.Join(args, " ")
}

// checkCaddy fails early if the gateway binary cannot be run.
func checkCaddy(path string) error {
	if _, err := exec.LookPath(path); err != nil {
		return fmt.Errorf("-caddy: %w", err)
	}
	return nil
}

// checkModes accepts the stream_proxy modes compare and rss can verify.
func checkModes(modes []string) error {
	seen := map[string]bool{}
	for _, m := range modes {
		switch {
		case m != "forward" && m != "per_part" && m != "store" && m != modeStoreS3 && m != modeStoreAzure:
			return fmt.Errorf("mode %q: want forward, per_part, store, %s or %s", m, modeStoreS3, modeStoreAzure)
		case seen[m]:
			return fmt.Errorf("mode %q given twice", m)
		}
		seen[m] = true
	}
	if len(modes) == 0 {
		return fmt.Errorf("no mode given")
	}
	return nil
}
