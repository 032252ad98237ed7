package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/streamproxy/caddy-stream-proxy/integration/versitygwtest"
	"github.com/streamproxy/caddy-stream-proxy/store/s3store"
)

// The store-s3 path: stream_proxy in store mode into a versitygw, beside the
// same file bytes uploaded straight to that versitygw with the SDK, as
// multipart uploads at the same part size and with as many parts in flight
// per file (4) as the gateway.
const (
	s3Bucket        = "uploadbench"
	s3Key           = "uploadbench"
	s3Secret        = "uploadbench-secret"
	s3PartsInFlight = 4 // the gateway's partsInFlight
	modeStoreS3     = "store-s3"
	modeS3Direct    = "s3-direct" // a route, not a stream_proxy mode
)

// s3Options say where versitygw is and how the gateway's store s3 is set up.
type s3Options struct {
	versitygw string
	partSize  int64
	buffers   int
}

// s3Target is a versitygw on a free loopback port with an empty bucket.
// Close must be called: it kills the process and removes its directory.
type s3Target struct {
	*versitygwtest.Server
	endpoint string
	client   *s3.Client
	tr       *http.Transport
	opts     s3Options
}

func startS3Target(ctx context.Context, opts s3Options) (t *s3Target, err error) {
	if _, err := exec.LookPath(opts.versitygw); err != nil {
		return nil, fmt.Errorf("-versitygw: %w (make -f xcaddy.mk versitygw)", err)
	}
	dir, err := os.MkdirTemp("", "uploadbench-s3-")
	if err != nil {
		return nil, err
	}
	srv, err := versitygwtest.Start(opts.versitygw, dir, s3Key, s3Secret)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	t = &s3Target{Server: srv, endpoint: srv.Endpoint, opts: opts}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	t.tr = &http.Transport{MaxIdleConnsPerHost: 2 * s3PartsInFlight}
	t.client = srv.Client(t.tr)
	if _, err := t.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s3Bucket)}); err != nil {
		return nil, fmt.Errorf("creating the bucket: %w", err)
	}
	return t, nil
}

func (t *s3Target) Close() {
	t.Kill()
	if t.tr != nil {
		t.tr.CloseIdleConnections()
	}
	_ = os.RemoveAll(t.Dir)
}

// caddyBlock is the gateway's store s3 block.
func (t *s3Target) caddyBlock() string {
	return fmt.Sprintf("store s3 {\n\t\t\tbucket %s\n\t\t\tendpoint %s\n\t\t\tuse_path_style\n\t\t\taccess_key_id %s\n\t\t\tsecret_access_key %s\n\t\t\tpart_size %d\n\t\t\tmax_buffers %d\n\t\t}",
		s3Bucket, t.endpoint, s3Key, s3Secret, t.opts.partSize, t.opts.buffers)
}

// uploadDirect uploads each file of b as its own multipart upload, one file
// after the other, up to s3PartsInFlight parts at once, as the gateway does.
func (t *s3Target) uploadDirect(ctx context.Context, b *body, p *progress) (uploadResult, []string, error) {
	return uploadEachFile(b, p, t.opts.partSize, s3PartsInFlight, func(key string, r io.Reader, bufs chan []byte) (int64, error) {
		return t.putMultipart(ctx, key, r, bufs)
	})
}

func (t *s3Target) putMultipart(ctx context.Context, key string, r io.Reader, bufs chan []byte) (int64, error) {
	up, err := t.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(s3Bucket), Key: aws.String(key), ContentType: aws.String("application/octet-stream"),
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
	})
	if err != nil {
		return 0, err
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		parts []types.CompletedPart
		first error
		total int64
	)
	slots := make(chan struct{}, s3PartsInFlight)
	for num := int32(1); ; num++ {
		buf := <-bufs
		n, rerr := io.ReadFull(r, buf)
		total += int64(n)
		if n == 0 && num > 1 {
			bufs <- buf
			break
		}
		slots <- struct{}{}
		wg.Add(1)
		go func(buf []byte, n int, num int32) {
			defer wg.Done()
			defer func() { bufs <- buf; <-slots }()
			out, err := t.client.UploadPart(ctx, &s3.UploadPartInput{
				Bucket: aws.String(s3Bucket), Key: aws.String(key), UploadId: up.UploadId, PartNumber: aws.Int32(num),
				Body: bytes.NewReader(buf[:n]), ContentLength: aws.Int64(int64(n)), ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
			}, s3store.UnsignedPayload)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				first = errors.Join(first, err)
				return
			}
			parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num), ChecksumCRC32C: out.ChecksumCRC32C})
		}(buf, n, num)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			first = rerr
			break
		}
	}
	wg.Wait()
	if first == nil {
		sortParts(parts)
		_, first = t.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket: aws.String(s3Bucket), Key: aws.String(key), UploadId: up.UploadId,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
	}
	if first != nil {
		_, _ = t.client.AbortMultipartUpload(context.WithoutCancel(ctx), &s3.AbortMultipartUploadInput{
			Bucket: aws.String(s3Bucket), Key: aws.String(key), UploadId: up.UploadId})
	}
	return total, first
}

func sortParts(parts []types.CompletedPart) {
	for i := 1; i < len(parts); i++ {
		for j := i; j > 0 && *parts[j].PartNumber < *parts[j-1].PartNumber; j-- {
			parts[j], parts[j-1] = parts[j-1], parts[j]
		}
	}
}

// storeKeys reads the keys of the files in stream_proxy's store s3 or azure
// answer, by field.
func storeKeys(answer []byte) (map[string]string, error) {
	var got struct {
		Parts []struct {
			Field string `json:"field"`
			Key   string `json:"key"`
		} `json:"parts"`
	}
	if err := json.Unmarshal(answer, &got); err != nil || got.Parts == nil {
		return nil, fmt.Errorf("the answer is not store mode's JSON: %.200q", answer)
	}
	keys := map[string]string{}
	for _, p := range got.Parts {
		if p.Key != "" {
			keys[p.Field] = p.Key
		}
	}
	return keys, nil
}

// verifyObjects reads each file's object back (outside the timing) and
// compares it with what was sent; keys are by file order.
func (t *s3Target) verifyObjects(ctx context.Context, want []expectedPart, keyOf func(i int, p expectedPart) string) error {
	return verifyEachFile(want, keyOf, func(key string) (io.ReadCloser, error) {
		out, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s3Bucket), Key: aws.String(key)})
		if err != nil {
			return nil, err
		}
		return out.Body, nil
	})
}

// empty deletes every object of the bucket.
func (t *s3Target) empty(ctx context.Context) error {
	out, err := t.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(s3Bucket)})
	if err != nil {
		return err
	}
	for _, o := range out.Contents {
		if _, err := t.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s3Bucket), Key: o.Key}); err != nil {
			return err
		}
	}
	return nil
}
