package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go/http3"
)

const (
	maxAnswer   = 1 << 20  // bytes of a response kept, for printing and verifying
	shownAnswer = 2 << 10  // bytes of a response printed
	maxDrain    = 64 << 20 // bytes of a response read past maxAnswer before closing
)

// newClient returns an HTTP client for conns concurrent uploads, one
// connection each, with 64 KiB socket buffers, no compression, no proxy from
// the environment, and no redirects followed.
func newClient(conns int) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
		WriteBufferSize:     64 * kib,
		ReadBufferSize:      64 * kib,
		DisableCompression:  true,
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Protocols between the client and the gateway: plain HTTP/1.1, or HTTPS
// (the gateway's `tls internal`) with HTTP/1.1, HTTP/2 or HTTP/3.
const (
	protoHTTP = "http"
	protoH1   = "h1"
	protoH2   = "h2"
	protoH3   = "h3"
)

func checkProto(proto string) error {
	switch proto {
	case protoHTTP, protoH1, protoH2, protoH3:
		return nil
	}
	return fmt.Errorf("unknown -proto %q (want http, h1, h2 or h3)", proto)
}

// newGatewayClient is newClient speaking proto to the gateway. Over HTTPS it
// trusts any certificate: the gateway's is from its own internal CA, on
// loopback.
func newGatewayClient(conns int, proto string) *http.Client {
	c := newClient(conns)
	if proto == protoHTTP {
		return c
	}
	tlsConfig := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the gateway's internal CA, on loopback
	if proto == protoH3 {
		c.Transport = &http3.Transport{TLSClientConfig: tlsConfig}
		return c
	}
	tr := c.Transport.(*http.Transport)
	tr.TLSClientConfig = tlsConfig
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP1(proto == protoH1)
	tr.Protocols.SetHTTP2(proto == protoH2)
	return c
}

// uploadResult is the outcome of one upload that got an answer.
type uploadResult struct {
	Status  string // such as "200 OK"
	Code    int
	Sent    int64         // body bytes the transport read from the body
	Elapsed time.Duration // from sending the request to the end of the answer
	Answer  []byte        // the answer's first maxAnswer bytes
}

// MiBps is the upload's rate.
func (r uploadResult) MiBps() float64 { return mibPerSec(r.Sent, r.Elapsed) }

// doUpload POSTs a fresh reader of b to url, with a Content-Length unless
// chunked, and reads the whole answer. Bytes sent are counted into p.
func doUpload(ctx context.Context, c *http.Client, url string, b *body, chunked bool, p *progress) (uploadResult, error) {
	sent := &countingReader{r: p.counting(b.Reader())}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, sent)
	if err != nil {
		return uploadResult{}, err
	}
	req.Header.Set("Content-Type", b.ContentType)
	req.ContentLength = b.Length
	if chunked {
		req.ContentLength = -1
	}

	start := time.Now()
	res, err := c.Do(req)
	if err != nil {
		return uploadResult{}, fmt.Errorf("after sending %d of %d bytes: %w", sent.n, b.Length, err)
	}
	defer res.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(res.Body, maxAnswer))
	if err == nil {
		_, err = io.Copy(io.Discard, io.LimitReader(res.Body, maxDrain))
	}
	if err != nil {
		return uploadResult{}, fmt.Errorf("%s: reading the answer: %w", res.Status, err)
	}
	return uploadResult{
		Status:  res.Status,
		Code:    res.StatusCode,
		Sent:    sent.n,
		Elapsed: time.Since(start),
		Answer:  answer,
	}, nil
}

// verifyAnswer checks a backend's multipart answer (see multipartResult)
// against the parts that were sent: every part must be there, matched by
// field and filename, with the same size, SHA-256 and file content type.
// Parts the answer has on top (such as digest fields a gateway adds) are
// ignored.
func verifyAnswer(answer []byte, want []expectedPart) error {
	var got multipartResult
	if err := json.Unmarshal(answer, &got); err != nil || got.Parts == nil {
		return fmt.Errorf("the answer is not the backend's multipart JSON: %.200q", answer)
	}
	used := make([]bool, len(got.Parts))
	var problems []string
	for _, w := range want {
		i := findPart(used, w, func(i int) (string, string) { return got.Parts[i].Field, got.Parts[i].Filename })
		if i < 0 {
			problems = append(problems, fmt.Sprintf("part %d (%q) missing", w.Index, w.Field))
			continue
		}
		g := got.Parts[i]
		if g.Size != w.Size || g.SHA256 != w.SHA256 {
			problems = append(problems, fmt.Sprintf("part %d (%q): backend saw %d bytes sha256 %s, sent %d bytes sha256 %s",
				w.Index, w.Field, g.Size, g.SHA256, w.Size, w.SHA256))
		}
		if w.ContentType != "" && g.ContentType != w.ContentType {
			problems = append(problems, fmt.Sprintf("part %d (%q): content type %q, sent %q",
				w.Index, w.Field, g.ContentType, w.ContentType))
		}
	}
	if problems != nil {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// findPart returns the first answer part not yet used that has w's field and
// filename, by index into used (one entry per answer part, name gives each
// one's field and filename), and marks it used; -1 when there is none.
func findPart(used []bool, w expectedPart, name func(i int) (field, filename string)) int {
	for i := range used {
		if field, filename := name(i); !used[i] && field == w.Field && filename == w.Filename {
			used[i] = true
			return i
		}
	}
	return -1
}

// verifyRawUploads checks that every file that was sent reached the backend
// as a raw body of the same size and SHA-256 (stream_proxy's per_part mode).
func verifyRawUploads(got []rawResult, want []expectedPart) error {
	var problems []string
	used := make([]bool, len(got))
	for _, w := range want {
		if w.Filename == "" {
			continue
		}
		i := 0
		for ; i < len(got); i++ {
			if !used[i] && got[i].Bytes == w.Size && got[i].SHA256 == w.SHA256 {
				break
			}
		}
		if i == len(got) {
			problems = append(problems, fmt.Sprintf("file part %d (%q, %d bytes, sha256 %s) never reached the backend intact",
				w.Index, w.Field, w.Size, w.SHA256))
			continue
		}
		used[i] = true
	}
	if problems != nil {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func runUpload(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("upload", flag.ContinueOnError)
	url := fs.String("url", "", "where to POST the body (required)")
	size := sizeFlag(gib)
	fs.Var(&size, "size", "total bytes of file content, e.g. 1GiB, 10MB, 4096")
	files := fs.Int("files", 3, "file parts; size is split across them")
	fields := fs.Int("fields", 2, "small text fields, sent before the files")
	seed := fs.Uint64("seed", 1, "seed of the generated contents")
	concurrency := fs.Int("concurrency", 1, "uploads run at once, one connection each (1-256)")
	chunked := fs.Bool("chunked", false, "send chunked instead of with a Content-Length")
	verify := fs.Bool("verify", false, "check the backend's per-part sha256 answer against what was sent")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up on an upload after this long")
	proto := fs.String("proto", protoHTTP, "http (plain HTTP/1.1), or over HTTPS trusting any certificate: h1 (HTTP/1.1), h2 (HTTP/2), h3 (HTTP/3)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: uploadbench upload -url URL [flags]\n\n"+
			"Uploads a generated multipart/form-data body and prints status, MiB/s and the answer.\n"+
			"Exits 1 if an upload fails, gets a status other than 2xx, or (-verify) does not match.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *url == "" || *concurrency < 1 || *concurrency > 256 {
		fs.Usage()
		return errUsage
	}
	if err := checkProto(*proto); err != nil {
		return err
	}

	b, err := newBody(bodySpec{Seed: *seed, Size: int64(size), Files: *files, Fields: *fields})
	if err != nil {
		return err
	}
	var want []expectedPart
	if *verify {
		want = b.Parts() // hashed before the clock starts
	}
	framing := fmt.Sprintf("Content-Length %d", b.Length)
	if *chunked {
		framing = "chunked"
	}
	fmt.Printf("POST %s: %s of files (%d files, %d fields, seed %d), body %d bytes, %s, %d at once\n",
		*url, formatBytes(int64(size)), *files, *fields, *seed, b.Length, framing, *concurrency)

	client := newGatewayClient(*concurrency, *proto)
	defer client.CloseIdleConnections()
	p := startProgress("sent", b.Length*int64(*concurrency))
	results := make([]uploadResult, *concurrency)
	errs := make([]error, *concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range *concurrency {
		wg.Go(func() {
			uctx, cancel := context.WithTimeout(ctx, *timeout)
			defer cancel()
			results[i], errs[i] = doUpload(uctx, client, *url, b, *chunked, p)
		})
	}
	wg.Wait()
	wall := time.Since(start)
	p.Stop()

	failed := 0
	var total int64
	for i, res := range results {
		if errs[i] != nil {
			failed++
			fmt.Printf("upload %d: error: %v\n", i+1, errs[i])
			continue
		}
		total += res.Sent
		fmt.Printf("upload %d: %s, %s in %s, %.1f MiB/s\n", i+1, res.Status, formatBytes(res.Sent),
			res.Elapsed.Round(time.Millisecond), res.MiBps())
		shown := res.Answer
		if len(shown) > shownAnswer {
			shown = append(shown[:shownAnswer:shownAnswer], "..."...)
		}
		fmt.Printf("%s\n", strings.TrimRight(string(shown), "\n"))
		if res.Code < 200 || res.Code > 299 {
			failed++
			continue
		}
		if *verify {
			if err := verifyAnswer(res.Answer, want); err != nil {
				failed++
				fmt.Printf("upload %d: verify FAILED: %v\n", i+1, err)
			} else {
				fmt.Printf("upload %d: verify ok, %d parts byte-identical\n", i+1, len(want))
			}
		}
	}
	if *concurrency > 1 {
		fmt.Printf("aggregate: %d uploads, %s in %s, %.1f MiB/s\n", *concurrency, formatBytes(total),
			wall.Round(time.Millisecond), mibPerSec(total, wall))
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d uploads failed", failed, *concurrency)
	}
	return nil
}
