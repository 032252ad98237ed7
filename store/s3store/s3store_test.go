package s3store

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"

	"github.com/streamproxy/caddy-stream-proxy/integration/versitygwtest"
	"github.com/streamproxy/caddy-stream-proxy/store"
)

// integration/README.md, row 35: S3 stalls mid-file. The part upload times out,
// the upload fails with 503, and the multipart upload is aborted: nothing is
// left.
func TestS3StoreStall(t *testing.T) {
	srv := versitygwtest.StartT(t, "k", "secret-key")
	addr := srv.Addr
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
	f, err := batch.Create(store.FileInfo{Field: "f", Filename: "f.bin"})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64<<10)
	var werr error
	for sent := 0; sent < 12<<20 && werr == nil; sent += len(data) {
		_, werr = f.Write(data)
	}
	if werr == nil {
		werr = f.Finish(store.FileInfo{Field: "f", Filename: "f.bin", Size: 12 << 20})
	}
	var se *store.Error
	if !errors.As(werr, &se) || se.Status != http.StatusServiceUnavailable || se.Code != store.CodeStoreUnavailable {
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

func TestS3StoreValidate(t *testing.T) {
	ok := S3Store{Bucket: "b", PartSize: MinS3PartSize, MaxBuffers: 1}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		s   S3Store
		err string
	}{
		{S3Store{PartSize: MinS3PartSize, MaxBuffers: 1}, "bucket is required"},
		{S3Store{Bucket: "b", PartSize: 4 << 20, MaxBuffers: 1}, "part_size must be between 5MiB and 5GiB"},
		{S3Store{Bucket: "b", PartSize: MinS3PartSize}, "max_buffers must be at least 1"},
		{S3Store{Bucket: "b", PartSize: MinS3PartSize, MaxBuffers: 1, AccessKeyID: "k"}, "go together"},
		{S3Store{Bucket: "b", PartSize: MinS3PartSize, MaxBuffers: 1, Endpoint: "127.0.0.1:7070"}, "not an http or https URL"},
	} {
		if err := tc.s.Validate(); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%+v: error %v, want %q", tc.s, err, tc.err)
		}
	}
}
