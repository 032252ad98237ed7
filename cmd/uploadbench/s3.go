package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
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
	return uploadEachFile(ctx, b, p, t.opts.partSize, s3PartsInFlight, func(key string) (objectUpload, error) {
		up, err := t.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
			Bucket: aws.String(s3Bucket), Key: aws.String(key), ContentType: aws.String("application/octet-stream"),
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
		})
		if err != nil {
			return nil, err
		}
		return &s3Multipart{client: t.client, key: key, id: up.UploadId}, nil
	})
}

// s3Multipart is one multipart upload.
type s3Multipart struct {
	client *s3.Client
	key    string
	id     *string

	mu    sync.Mutex
	parts []types.CompletedPart // in the order their puts ended
}

func (m *s3Multipart) put(ctx context.Context, num int, data []byte) error {
	out, err := m.client.UploadPart(ctx, &s3.UploadPartInput{
		Bucket: aws.String(s3Bucket), Key: aws.String(m.key), UploadId: m.id, PartNumber: aws.Int32(int32(num + 1)),
		Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))), ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
	}, s3store.UnsignedPayload)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.parts = append(m.parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(int32(num + 1)), ChecksumCRC32C: out.ChecksumCRC32C})
	return nil
}

func (m *s3Multipart) commit(ctx context.Context, parts int) error {
	if len(m.parts) != parts {
		return fmt.Errorf("%d parts put of %d", len(m.parts), parts)
	}
	slices.SortFunc(m.parts, func(a, b types.CompletedPart) int { return cmp.Compare(*a.PartNumber, *b.PartNumber) })
	_, err := m.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(s3Bucket), Key: aws.String(m.key), UploadId: m.id,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: m.parts},
	})
	return err
}

func (m *s3Multipart) abort() {
	_, _ = m.client.AbortMultipartUpload(context.Background(), &s3.AbortMultipartUploadInput{
		Bucket: aws.String(s3Bucket), Key: aws.String(m.key), UploadId: m.id})
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
