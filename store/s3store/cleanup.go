package s3store

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"go.uber.org/zap"
)

// Pace of the cleanup retries after a failure.
const (
	s3CleanupAttempt  = 10 * time.Second // one abort or delete
	s3CleanupFirstGap = 500 * time.Millisecond
	s3CleanupMaxGap   = 10 * time.Second
)

// s3Removal is what is left to undo of one file of a failed request.
type s3Removal struct {
	key       string
	uploadIDs []string // its multipart uploads still to be aborted
	// find: a CreateMultipartUpload of the key went unanswered, so an
	// upload may exist that the gateway has no id of; ListMultipartUploads
	// finds it (and any the SDK's retries made) by the key, which is the
	// gateway's own and unique.
	find   bool
	delete bool // its object, completed or maybe completed, is still to be deleted
}

// removeOnce tries each step of r once, and reports whether S3 did not
// answer, so that r is worth trying again. An answer that will not change
// (403, a missing bucket) ends r with an error in the log.
func (s *S3Store) removeOnce(ctx context.Context, r *s3Removal, logger *zap.Logger) (retry bool) {
	if r.find {
		lctx, cancel := context.WithTimeout(ctx, s3CleanupAttempt)
		out, err := s.client.ListMultipartUploads(lctx, &s3.ListMultipartUploadsInput{
			Bucket: aws.String(s.Bucket), Prefix: aws.String(r.key)})
		cancel()
		switch {
		case err == nil:
			r.find = false
			for _, up := range out.Uploads {
				if aws.ToString(up.Key) == r.key {
					r.uploadIDs = append(r.uploadIDs, aws.ToString(up.UploadId))
				}
			}
		case retryable(err):
			return true
		default:
			logger.Error("listing s3 multipart uploads to find one whose creation went unanswered (needs s3:ListBucketMultipartUploads)",
				zap.String("bucket", s.Bucket), zap.String("key", r.key), zap.Error(err))
			r.find = false
		}
	}
	for len(r.uploadIDs) > 0 {
		id := r.uploadIDs[0]
		actx, cancel := context.WithTimeout(ctx, s3CleanupAttempt)
		_, err := s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{
			Bucket: aws.String(s.Bucket), Key: aws.String(r.key), UploadId: aws.String(id)})
		cancel()
		switch {
		case err == nil || errors.As(err, new(*types.NoSuchUpload)):
			// Gone already (or completed after all: deleted below).
		case retryable(err):
			return true
		default:
			logger.Error("aborting an s3 multipart upload", zap.String("bucket", s.Bucket), zap.String("key", r.key),
				zap.String("upload_id", id), zap.Error(err))
		}
		r.uploadIDs = r.uploadIDs[1:]
	}
	if r.delete {
		dctx, cancel := context.WithTimeout(ctx, s3CleanupAttempt)
		_, err := s.client.DeleteObject(dctx, &s3.DeleteObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(r.key)})
		cancel()
		switch {
		case err == nil:
			r.delete = false
		case retryable(err):
			return true
		default:
			logger.Error("deleting an s3 object", zap.String("bucket", s.Bucket), zap.String("key", r.key), zap.Error(err))
			r.delete = false
		}
	}
	return false
}

// retryRemovals tries left again, with growing gaps, until S3 takes every
// removal, deadline passes or stop ends (the configuration is unloaded).
// What is left then is logged, for an operator (or a lifecycle rule) to
// remove.
func (s *S3Store) retryRemovals(stop context.Context, left []*s3Removal, deadline time.Time, logger *zap.Logger) {
	logger.Warn("s3 did not take the cleanup of a failed upload; retrying", zap.String("bucket", s.Bucket),
		zap.Int("files", len(left)), zap.Duration("budget", time.Until(deadline).Round(time.Second)))
	ctx, cancel := context.WithDeadline(stop, deadline)
	defer cancel()
	gap := s3CleanupFirstGap
	timer := time.NewTimer(gap)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			for _, r := range left {
				logger.Error("left in s3 after the cleanup budget", zap.String("bucket", s.Bucket), zap.String("key", r.key),
					zap.Strings("upload_ids", r.uploadIDs), zap.Bool("unanswered_create", r.find), zap.Bool("object", r.delete))
			}
			return
		case <-timer.C:
		}
		pending := left[:0]
		for _, r := range left {
			if s.removeOnce(ctx, r, logger) {
				pending = append(pending, r)
			}
		}
		left = pending
		if len(left) == 0 {
			logger.Info("s3 took the cleanup of a failed upload", zap.String("bucket", s.Bucket))
			return
		}
		gap = min(2*gap, s3CleanupMaxGap)
		timer.Reset(gap)
	}
}

// retryable reports whether err is S3 not answering, or answering that it
// cannot now (5xx, 429, 408), rather than a refusal that will stand.
func retryable(err error) bool {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		st := re.HTTPStatusCode()
		return st == 0 || st >= 500 || st == http.StatusTooManyRequests || st == http.StatusRequestTimeout
	}
	return true // no answer: the network, a timeout
}

// forbidden reports whether S3 refused err's request (403).
func forbidden(err error) bool {
	var re *awshttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == http.StatusForbidden
}

// retries are the cleanups a store retries in the background: each ends
// within its budget, and all end when the store is cleaned up.
type retries struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newRetries() *retries {
	r := &retries{}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r
}

func (r *retries) start(f func(stop context.Context)) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f(r.ctx)
	}()
}

// end stops the retries and waits for them.
func (r *retries) end() {
	r.cancel()
	r.wg.Wait()
}
