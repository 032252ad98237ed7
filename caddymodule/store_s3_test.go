package streamproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// The pool hands out at most n buffers, allocates only what is in use at
// once, and a wait for one ends with its context.
func TestBufferPool(t *testing.T) {
	p := newBufferPool(2, 16)
	ctx := context.Background()
	a, _ := p.get(ctx)
	b, _ := p.get(ctx)
	if cap(a) != 16 || len(a) != 0 || cap(b) != 16 {
		t.Fatalf("buffers of %d and %d bytes", cap(a), cap(b))
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := p.get(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third buffer: %v", err)
	}
	got := make(chan []byte)
	go func() {
		c, _ := p.get(ctx)
		got <- c
	}()
	a = append(a, 'x')
	p.put(a)
	if c := <-got; &c[:1][0] != &a[0] || len(c) != 0 {
		t.Fatal("the freed buffer was not reused, emptied")
	}
	if len(p.free) != 0 {
		t.Fatalf("%d buffers idle", len(p.free))
	}
}

// versitygw finds the S3 server xcaddy.mk installs into ../bin, or where
// SP_VERSITYGW says; without it the test skips, except in CI.
func versitygw(t *testing.T) string {
	t.Helper()
	p := os.Getenv("SP_VERSITYGW")
	if p == "" {
		p, _ = filepath.Abs(filepath.Join("..", "bin", "versitygw"))
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("versitygw not found at %s", p)
		}
		t.Skipf("versitygw not found at %s (make -f xcaddy.mk versitygw)", p)
	}
	return p
}

// integration/README.md, row 35: S3 stalls mid-file. The part upload times out,
// the upload fails with 503, and the multipart upload is aborted: nothing is
// left.
func TestS3StoreStall(t *testing.T) {
	bin := versitygw(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "--port", addr, "posix", t.TempDir())
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY=k", "ROOT_SECRET_KEY=secret-key")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("versitygw did not start")
		}
	}
	// A proxy that holds part uploads until the gateway gives up on them.
	target, _ := url.Parse("http://" + addr)
	rp := httputil.NewSingleHostReverseProxy(target)
	done := make(chan struct{})
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Query().Has("partNumber") {
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-done:
			}
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	defer close(done)

	old := s3OpTimeout
	s3OpTimeout = 500 * time.Millisecond
	defer func() { s3OpTimeout = old }()
	s := &S3Store{Bucket: "stall", Endpoint: proxy.URL, UsePathStyle: true, AccessKeyID: "k", SecretAccessKey: "secret-key", MaxBuffers: 2}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Cleanup()
	if _, err := s.client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String("stall")}); err != nil {
		t.Fatal(err)
	}

	batch := s.Begin(context.Background(), zap.NewNop())
	f, err := batch.Create(FileInfo{Field: "f", Filename: "f.bin"})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64<<10)
	var werr error
	for sent := 0; sent < 12<<20 && werr == nil; sent += len(data) {
		_, werr = f.Write(data)
	}
	if werr == nil {
		werr = f.Finish(FileInfo{Field: "f", Filename: "f.bin", Size: 12 << 20})
	}
	var ue *uploadError
	if !errors.As(werr, &ue) || ue.Status != http.StatusServiceUnavailable || ue.Code != CodeStoreUnavailable {
		t.Fatalf("error %v, want 503 store_unavailable", werr)
	}
	batch.Discard()
	ups, err := s.client.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String("stall")})
	if err != nil || len(ups.Uploads) != 0 {
		t.Fatalf("multipart uploads left: %v %v", ups.Uploads, err)
	}
	objs, err := s.client.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String("stall")})
	if err != nil || len(objs.Contents) != 0 {
		t.Fatalf("objects left: %v %v", objs.Contents, err)
	}
}
