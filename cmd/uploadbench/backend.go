package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// partResult is what the backend saw of one part of a multipart upload.
type partResult struct {
	Index       int    `json:"index"`
	Field       string `json:"field"`
	Filename    string `json:"filename,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

// multipartResult is the backend's answer to a multipart upload. Bytes counts
// the whole request body as received, framing included.
type multipartResult struct {
	Parts []partResult `json:"parts"`
	Bytes int64        `json:"bytes"`
}

// rawResult is the backend's answer to any other upload, such as one part
// sent on its own by stream_proxy's per_part mode.
type rawResult struct {
	Bytes       int64             `json:"bytes"`
	SHA256      string            `json:"sha256"`
	ContentType string            `json:"content_type,omitempty"`
	Headers     map[string]string `json:"headers,omitempty"`
}

// partHeaderPrefix selects the request headers a raw answer echoes.
const partHeaderPrefix = "X-Stream-Proxy-"

// backend is the counting backend. It reads every upload streaming, hashing
// as it goes, and never holds a body or a part in memory.
type backend struct {
	log  *log.Logger // one line per request; nil for none
	seed uint64      // of /download bodies

	// onRaw, if set, is called with the answer to every raw upload that ended
	// cleanly (compare uses it to check per_part uploads).
	onRaw func(rawResult)
}

// handler returns the backend's routes, logged.
func (b *backend) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("GET /download/{size}", b.download)
	mux.HandleFunc("POST /", b.upload)
	mux.HandleFunc("PUT /", b.upload)
	if b.log == nil {
		return mux
	}
	return logRequests(b.log, mux)
}

// upload answers with the size and digest of every part, or of the raw body.
func (b *backend) upload(w http.ResponseWriter, r *http.Request) {
	mediaType, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err == nil && mediaType == "multipart/form-data" {
		b.uploadMultipart(w, r, params["boundary"])
		return
	}

	buf := make([]byte, 64*kib)
	h := sha256.New()
	n, err := io.CopyBuffer(h, r.Body, buf)
	if err != nil {
		writeError(w, fmt.Errorf("reading body after %d bytes: %w", n, err))
		return
	}
	res := rawResult{
		Bytes:       n,
		SHA256:      hex.EncodeToString(h.Sum(nil)),
		ContentType: r.Header.Get("Content-Type"),
	}
	for name, values := range r.Header {
		if strings.HasPrefix(name, partHeaderPrefix) {
			if res.Headers == nil {
				res.Headers = make(map[string]string)
			}
			res.Headers[name] = strings.Join(values, ", ")
		}
	}
	if b.onRaw != nil {
		b.onRaw(res)
	}
	writeJSON(w, http.StatusOK, res)
}

// uploadMultipart reads a multipart body part by part. A body that ends
// anywhere but after the closing delimiter gets a 400: an aborted upload is
// never answered as complete.
func (b *backend) uploadMultipart(w http.ResponseWriter, r *http.Request, boundary string) {
	if boundary == "" {
		writeError(w, errors.New("multipart/form-data without a boundary"))
		return
	}
	// mime/multipart reads through a 4 KiB buffer; a larger one under it
	// makes for 256 KiB socket reads instead of 4 KiB ones.
	body := &tailReader{r: r.Body, max: len(boundary) + 80}
	mr := multipart.NewReader(bufio.NewReaderSize(body, 256*kib), boundary)
	buf := make([]byte, 64*kib)
	res := multipartResult{Parts: []partResult{}}
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			writeError(w, fmt.Errorf("part %d: %w", len(res.Parts), err))
			return
		}
		h := sha256.New()
		n, err := io.CopyBuffer(h, p, buf)
		if err != nil {
			writeError(w, fmt.Errorf("part %d (%q) after %d bytes: %w", len(res.Parts), p.FormName(), n, err))
			return
		}
		res.Parts = append(res.Parts, partResult{
			Index:       len(res.Parts),
			Field:       p.FormName(),
			Filename:    p.FileName(),
			ContentType: p.Header.Get("Content-Type"),
			Size:        n,
			SHA256:      hex.EncodeToString(h.Sum(nil)),
		})
	}
	// Whatever follows the closing delimiter (the epilogue) is read and counted
	// too, so that Bytes is the whole body.
	if _, err := io.CopyBuffer(io.Discard, body, buf); err != nil {
		writeError(w, fmt.Errorf("after the closing delimiter: %w", err))
		return
	}
	// mime/multipart takes a body that stops right after a delimiter line
	// ("--boundary\r\n", no part header, no closing "--boundary--") for a
	// clean end: NextPart returns io.EOF. Such a body was cut short.
	if endsWithOpenDelimiter(body.tail, boundary) {
		writeError(w, fmt.Errorf("part %d: multipart: body ended after a delimiter, without the closing delimiter", len(res.Parts)))
		return
	}
	res.Bytes = body.n
	writeJSON(w, http.StatusOK, res)
}

// download streams /download/<size> deterministic pseudo-random bytes.
func (b *backend) download(w http.ResponseWriter, r *http.Request) {
	n, err := parseSize(r.PathValue("size"))
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	buf := make([]byte, 64*kib)
	_, _ = io.CopyBuffer(w, io.LimitReader(newRandReader(b.seed), n), buf)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
}

// tailReader counts the bytes read through it and keeps the last max of them.
type tailReader struct {
	r    io.Reader
	n    int64
	max  int
	tail []byte
}

func (t *tailReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.n += int64(n)
	if n >= t.max {
		t.tail = append(t.tail[:0], p[n-t.max:n]...)
	} else {
		t.tail = append(t.tail, p[:n]...)
		if extra := len(t.tail) - t.max; extra > 0 {
			t.tail = t.tail[:copy(t.tail, t.tail[extra:])]
		}
	}
	return n, err
}

// endsWithOpenDelimiter reports whether the last line of tail is a delimiter
// line that opens a part ("--boundary", transport padding, newline).
func endsWithOpenDelimiter(tail []byte, boundary string) bool {
	line, ok := bytes.CutSuffix(tail, []byte("\n"))
	if !ok {
		return false
	}
	line = bytes.TrimRight(bytes.TrimSuffix(line, []byte("\r")), " \t")
	line = line[bytes.LastIndexByte(line, '\n')+1:]
	return string(line) == "--"+boundary
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// logRequests logs one line per request: method, path, status, bytes read
// and written, duration.
func logRequests(l *log.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		in := &countingReader{r: r.Body}
		r.Body = struct {
			io.Reader
			io.Closer
		}{in, r.Body}
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		l.Printf("%s %s %d in=%d out=%d %s", r.Method, r.URL.RequestURI(), sw.status, in.n, sw.n,
			time.Since(start).Round(time.Millisecond))
	})
}

// statusWriter records the status and the bytes of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serveBackend serves b on ln until ctx ends.
func serveBackend(ctx context.Context, b *backend, ln net.Listener) error {
	srv := &http.Server{
		Handler:           b.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func runBackend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:9001", "address to listen on")
	seed := fs.Uint64("seed", 1, "seed of /download contents")
	quiet := fs.Bool("quiet", false, "do not log requests")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: uploadbench backend [flags]\n\n"+
			"The counting backend: multipart uploads get the size and sha256 of each part,\n"+
			"other uploads those of the raw body, GET /download/<size> streams bytes.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	b := &backend{seed: *seed}
	if !*quiet {
		b.log = log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	}
	fmt.Fprintf(os.Stderr, "uploadbench backend listening on http://%s\n", ln.Addr())
	return serveBackend(ctx, b, ln)
}
