package s3store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/streamproxy/caddy-stream-proxy/store"
	"github.com/streamproxy/caddy-stream-proxy/store/bufpool"
)

func init() {
	caddy.RegisterModule(S3Store{})
}

// Bounds of the S3 store.
const (
	DefaultS3PartSize   = 8 << 20 // bytes
	MinS3PartSize       = 5 << 20 // S3's minimum, for every part but the last
	maxS3PartSize       = 5 << 30 // S3's maximum
	maxS3Parts          = 10000   // S3's most parts in one object
	DefaultS3MaxBuffers = 32
	// partsInFlight is how many parts of one file are uploaded at once.
	partsInFlight = 4
	// s3ClientIdle bounds how long a client that holds a part buffer may
	// send nothing.
	s3ClientIdle = time.Minute
	// DefaultS3CleanupBudget bounds how long the aborts and deletes after a
	// failure are retried.
	DefaultS3CleanupBudget = 2 * time.Minute
	// maxS3Metadata is S3's bound on an object's user metadata: the UTF-8
	// bytes of every key and value.
	maxS3Metadata = 2 << 10
)

// s3DigestMetadata is the most metadata the digests can add once a file
// has ended: every algorithm's name and hex digest.
var s3DigestMetadata = func() int {
	n := 0
	for name, size := range store.DigestHexSizes {
		n += len(name) + size
	}
	return n
}()

// s3OpTimeout bounds each call to S3, so that a stalled server fails the
// upload instead of holding it. A variable for the tests.
var s3OpTimeout = 2 * time.Minute

// S3Store writes file parts into S3-compatible object storage, streamed while
// they arrive: each file is one multipart upload under a generated key
// (`<prefix>/YYYY/MM/DD/<128 random bits, hex>`, UTC), completed only once
// the whole form ended cleanly; on any failure every multipart upload of the
// request is aborted and objects completed earlier in it are deleted.
//
// Part data is gathered in buffers of PartSize bytes taken from one pool of
// MaxBuffers per handler: when none is free, the uploads waiting for one stop
// reading from their clients. Up to 4 parts of a file go up at once.
//
// Objects carry the part's Content-Type and, as user metadata, `field`,
// `filename` (both percent-encoded, so that any UTF-8 survives) and the
// configured digests (up to 5 GiB; see addDigests). Each part carries its
// CRC32C (x-amz-checksum-crc32c), checked by the server.
type S3Store struct {
	// Bucket is the bucket objects are written to. Required.
	Bucket string `json:"bucket,omitempty"`

	// Prefix is put before every key, followed by a slash. Default: none.
	Prefix string `json:"prefix,omitempty"`

	// Endpoint is the URL of an S3-compatible server, such as
	// `http://127.0.0.1:7070`. Default: AWS's endpoint for Region.
	Endpoint string `json:"endpoint,omitempty"`

	// Region is the bucket's region. Default: the AWS SDK's (AWS_REGION,
	// shared config), or us-east-1 with an Endpoint.
	Region string `json:"region,omitempty"`

	// UsePathStyle addresses the bucket in the path (`endpoint/bucket/key`)
	// rather than in the host name, as most S3-compatible servers want.
	// Default: false.
	UsePathStyle bool `json:"use_path_style,omitempty"`

	// AccessKeyID and SecretAccessKey are the credentials; placeholders such
	// as {env.S3_SECRET} are expanded at provisioning. Default: the AWS SDK's
	// chain (environment, shared config, instance roles). Never logged.
	AccessKeyID     string `json:"access_key_id,omitempty"`
	SecretAccessKey string `json:"secret_access_key,omitempty"`

	// PartSize is the size of each part of a multipart upload, and of each
	// buffer, in bytes; at least 5 MiB. A file can have 10,000 parts, so it
	// also bounds the largest file. Default: 8 MiB.
	PartSize int64 `json:"part_size,omitempty"`

	// MaxBuffers is the number of part buffers shared by every upload of
	// this handler: the store never holds more than MaxBuffers × PartSize of
	// part data. Buffers are allocated when needed and kept, as many as were
	// ever in use at once. Default: 32.
	MaxBuffers int `json:"max_buffers,omitempty"`

	// CleanupBudget is how long the store keeps trying to abort the
	// multipart uploads and delete the objects of a failed request, with
	// backoff, when S3 does not answer (an outage, a restart). The first
	// try is made before the client is answered; the retries run in the
	// background, and end at the latest when the configuration is
	// unloaded. Default: 2m.
	CleanupBudget caddy.Duration `json:"cleanup_budget,omitempty"`

	client    *s3.Client
	transport *http.Transport
	pool      *bufpool.Pool
	cleanups  *retries
}

// CaddyModule returns the Caddy module information.
func (S3Store) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.stream_proxy.stores.s3",
		New: func() caddy.Module { return new(S3Store) },
	}
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens. Syntax:
//
//	store s3 {
//		bucket <name>
//		prefix <key-prefix>
//		endpoint <url>
//		region <region>
//		use_path_style
//		access_key_id <id>
//		secret_access_key <secret>
//		part_size <size>
//		max_buffers <n>
//		cleanup_budget <duration>
//	}
func (s *S3Store) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume "s3"
	if d.NextArg() {
		return d.ArgErr()
	}
	text := map[string]*string{
		"bucket": &s.Bucket, "prefix": &s.Prefix, "endpoint": &s.Endpoint, "region": &s.Region,
		"access_key_id": &s.AccessKeyID, "secret_access_key": &s.SecretAccessKey,
	}
	for d.NextBlock(0) {
		switch name := d.Val(); {
		case text[name] != nil:
			if !d.NextArg() {
				return d.ArgErr()
			}
			*text[name] = d.Val()
		case name == "use_path_style":
			s.UsePathStyle = true
		case name == "part_size":
			if err := store.ParseSize(d, &s.PartSize); err != nil {
				return err
			}
			continue
		case name == "max_buffers":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("max_buffers must be a positive whole number, got %q", d.Val())
			}
			s.MaxBuffers = n
		case name == "cleanup_budget":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("cleanup_budget must be a positive duration, got %q", d.Val())
			}
			s.CleanupBudget = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized s3 store option %s", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Provision sets defaults, expands the credentials' placeholders and sets up
// the client. It makes no request to S3.
func (s *S3Store) Provision(ctx caddy.Context) error {
	if s.PartSize == 0 {
		s.PartSize = DefaultS3PartSize
	}
	if s.MaxBuffers == 0 {
		s.MaxBuffers = DefaultS3MaxBuffers
	}
	if s.CleanupBudget == 0 {
		s.CleanupBudget = caddy.Duration(DefaultS3CleanupBudget)
	}
	if s.Region == "" && s.Endpoint != "" {
		s.Region = "us-east-1"
	}
	if err := s.Validate(); err != nil { // before anything is created
		return err
	}

	repl := caddy.NewReplacer()
	opts := []func(*config.LoadOptions) error{
		// Checksums only where this store asks for them (CRC32C per part):
		// the SDK's own defaults trip some S3-compatible servers.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if s.Region != "" {
		opts = append(opts, config.WithRegion(repl.ReplaceKnown(s.Region, "")))
	}
	if s.AccessKeyID != "" {
		id, secret := repl.ReplaceKnown(s.AccessKeyID, ""), repl.ReplaceKnown(s.SecretAccessKey, "")
		if id == "" || secret == "" {
			return fmt.Errorf("s3 store: access_key_id or secret_access_key is empty once its placeholders are expanded")
		}
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(id, secret, "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return fmt.Errorf("s3 store: loading the AWS configuration: %w", err)
	}
	// A transport of its own, so that Cleanup can close its connections; a
	// copy of the SDK's, which carries AWS_CA_BUNDLE's roots.
	if bc, ok := cfg.HTTPClient.(*awshttp.BuildableClient); ok {
		s.transport = bc.GetTransport()
	} else {
		s.transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	s.transport.MaxIdleConnsPerHost = 2 * partsInFlight
	cfg.HTTPClient = &http.Client{Transport: s.transport}
	endpoint := repl.ReplaceKnown(s.Endpoint, "")
	s.client = s3.NewFromConfig(cfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = s.UsePathStyle
	})
	s.pool = bufpool.New(s.MaxBuffers, int(s.PartSize))
	s.cleanups = newRetries()
	return nil
}

// Validate checks the configuration.
func (s *S3Store) Validate() error {
	if s.Bucket == "" {
		return fmt.Errorf("s3 store: bucket is required")
	}
	if s.PartSize < MinS3PartSize || s.PartSize > maxS3PartSize {
		return fmt.Errorf("s3 store: part_size must be between 5MiB and 5GiB, got %d", s.PartSize)
	}
	if s.MaxBuffers < 1 {
		return fmt.Errorf("s3 store: max_buffers must be at least 1, got %d", s.MaxBuffers)
	}
	if s.CleanupBudget < 0 {
		return fmt.Errorf("s3 store: cleanup_budget must not be negative, got %s", time.Duration(s.CleanupBudget))
	}
	if (s.AccessKeyID == "") != (s.SecretAccessKey == "") {
		return fmt.Errorf("s3 store: access_key_id and secret_access_key go together")
	}
	if s.Endpoint != "" && !strings.Contains(s.Endpoint, "{") {
		u, err := url.Parse(s.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("s3 store: endpoint %q is not an http or https URL", s.Endpoint)
		}
	}
	return nil
}

// Cleanup ends the cleanups still retried (what they leave is logged),
// closes idle connections to S3 and lets the buffers go.
func (s *S3Store) Cleanup() error {
	if s.cleanups != nil {
		s.cleanups.end()
	}
	if s.transport != nil {
		s.transport.CloseIdleConnections()
	}
	if s.pool != nil {
		s.pool.Close()
	}
	return nil
}

func (s *S3Store) MaxFileSize() int64 { return s.PartSize * maxS3Parts }

func (s *S3Store) IdleBound() time.Duration { return s3ClientIdle }

func (s *S3Store) Pooled() bool { return true }

// Begin starts one request's files.
func (s *S3Store) Begin(ctx context.Context, logger *zap.Logger) store.Batch {
	bctx, cancel := context.WithCancel(ctx)
	return &s3Batch{s: s, pool: s.pool, req: ctx, ctx: bctx, cancel: cancel, logger: logger}
}

// s3Batch is one request's objects. Its methods and its files' are called
// one at a time (see store.Batch for on which goroutine); only part uploads
// run on goroutines of their own, which a file waits for in Finish and the
// batch in Discard.
type s3Batch struct {
	s      *S3Store
	pool   *bufpool.Pool
	req    context.Context // the request's
	ctx    context.Context // req's child, cancelled on Discard
	cancel context.CancelFunc
	logger *zap.Logger
	files  []*s3File
	ready  bool // the bucket answered
}

// s3File is one file part as a multipart upload.
type s3File struct {
	b        *s3Batch
	key      string
	info     store.FileInfo
	uploadID string
	buf      []byte // being filled; nil when none is held
	crc      uint32 // buf's CRC32C, computed while it is filled, when its bytes are still in cache
	next     int32  // the next part's number, from 1

	// uploads runs the part uploads, partsInFlight at a time; partFailed,
	// its context, is cancelled with the first failure as its cause. Each
	// upload fills in its own entry of parts, read once uploads has ended.
	uploads    *errgroup.Group
	partFailed context.Context
	parts      []*types.CompletedPart

	createLost  bool // CreateMultipartUpload went unanswered: an upload may exist without its id
	completing  bool // CompleteMultipartUpload was called
	completed   bool // and succeeded
	finishing   bool // Finish was called: info is whole
	lateDigests bool // created before Finish, without the digests: see addDigests
}

// Create checks, for the request's first file, that the bucket answers, so
// that an unreachable server, refused credentials or a missing bucket fail
// the upload before the file's bytes are read. No request to S3 is made
// for the file itself until it has a part's worth of data, or has ended.
//
// A file whose metadata (its field and filename, percent-encoded, and room
// for its digests) would pass S3's 2 KB is refused with 400 here, before
// any of it goes to S3: S3 would refuse it only once its data had come.
func (b *s3Batch) Create(info store.FileInfo) (store.StoredFile, error) {
	if size := (&s3File{info: info}).metadataSize() + s3DigestMetadata; size > maxS3Metadata {
		return nil, &store.Error{Status: http.StatusBadRequest, Code: store.CodeMetadataTooLarge, Limit: "s3 user metadata",
			Message: fmt.Sprintf("the file's name and field, percent-encoded, take %d bytes of metadata, more than the store's %d", size-s3DigestMetadata, maxS3Metadata-s3DigestMetadata)}
	}
	if !b.ready {
		ctx, cancel := context.WithTimeout(b.ctx, s3OpTimeout)
		_, err := b.s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(b.s.Bucket)})
		cancel()
		if forbidden(err) {
			err = b.probeForbidden(err)
		}
		if err != nil {
			return nil, b.failure(err)
		}
		b.ready = true
	}
	var id [16]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	key := path.Join(time.Now().UTC().Format("2006/01/02"), hex.EncodeToString(id[:]))
	if p := strings.Trim(b.s.Prefix, "/"); p != "" {
		key = p + "/" + key
	}
	f := &s3File{b: b, key: key, info: info, next: 1}
	f.uploads, f.partFailed = errgroup.WithContext(context.WithoutCancel(b.ctx))
	f.uploads.SetLimit(partsInFlight)
	b.files = append(b.files, f)
	return f, nil
}

// probeForbidden tells refused credentials from credentials that may write
// but not list (s3:ListBucket), once HeadBucket was refused: its answer has
// no body, a listing's says why. It returns nil when the first write is to
// tell.
func (b *s3Batch) probeForbidden(headErr error) error {
	ctx, cancel := context.WithTimeout(b.ctx, s3OpTimeout)
	defer cancel()
	_, err := b.s.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(b.s.Bucket), MaxKeys: aws.Int32(0)})
	var ae smithy.APIError
	if err != nil && errors.As(err, &ae) && (ae.ErrorCode() == "InvalidAccessKeyId" || ae.ErrorCode() == "SignatureDoesNotMatch") {
		return err
	}
	if err == nil || forbidden(err) {
		b.logger.Info("s3 refused the bucket probe (HeadBucket); the first write tells whether the credentials may write",
			zap.String("bucket", b.s.Bucket), zap.NamedError("probe", headErr))
		return nil
	}
	return err
}

func (f *s3File) Location() store.Location { return store.Location{Bucket: f.b.s.Bucket, Key: f.key} }

// Write gathers data into part buffers; each full one goes up in the
// background once more data arrives (so that a file of exactly one part is
// created, at its end, with its digests).
func (f *s3File) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if err := f.failed(); err != nil {
			return written, err
		}
		if f.buf != nil && len(f.buf) == cap(f.buf) {
			if err := f.send(); err != nil {
				return written, err
			}
		}
		if f.buf == nil {
			buf, err := f.b.pool.Get(f.b.ctx)
			if err != nil {
				return written, f.b.failure(err)
			}
			f.buf = buf
		}
		n := copy(f.buf[len(f.buf):cap(f.buf)], p)
		f.crc = crc32.Update(f.crc, castagnoli, p[:n])
		f.buf = f.buf[:len(f.buf)+n]
		p = p[n:]
		written += n
	}
	return written, nil
}

// Finish sends the last part and waits for every part of the file.
func (f *s3File) Finish(info store.FileInfo) error {
	f.info, f.finishing = info, true
	if f.buf == nil && f.next == 1 { // an empty file is one empty part
		buf, err := f.b.pool.Get(f.b.ctx)
		if err != nil {
			return f.b.failure(err)
		}
		f.buf = buf
	}
	if f.buf != nil {
		if err := f.send(); err != nil {
			return err
		}
	}
	return f.uploads.Wait()
}

// send starts the upload of the buffer as the next part, creating the
// multipart upload first if need be. It waits while partsInFlight parts of
// the file are up already. The buffer goes back to the pool when the part is
// up.
func (f *s3File) send() error {
	b := f.b
	if f.uploadID == "" {
		if err := f.create(); err != nil {
			return err
		}
	}
	if err := b.ctx.Err(); err != nil {
		return b.failure(err)
	}
	buf, num := f.buf, f.next
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], f.crc)
	crc := base64.StdEncoding.EncodeToString(sum[:])
	f.buf, f.crc = nil, 0
	f.next++
	part := &types.CompletedPart{PartNumber: aws.Int32(num)}
	f.parts = append(f.parts, part)
	f.uploads.Go(func() error {
		defer b.pool.Put(buf)
		if err := b.ctx.Err(); err != nil { // the request ended while the part waited for its turn
			return b.failure(err)
		}
		// Not cancelled with the request either: S3 may go on writing a
		// part whose request was cut, after an abort that would then
		// leave it behind. So a part in flight ends before the abort.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(b.ctx), s3OpTimeout)
		defer cancel()
		out, err := b.s.client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket:            aws.String(b.s.Bucket),
			Key:               aws.String(f.key),
			UploadId:          aws.String(f.uploadID),
			PartNumber:        aws.Int32(num),
			Body:              bytes.NewReader(buf),
			ContentLength:     aws.Int64(int64(len(buf))),
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
			ChecksumCRC32C:    aws.String(crc),
		}, UnsignedPayload)
		if err != nil {
			return b.failure(err)
		}
		part.ETag, part.ChecksumCRC32C = out.ETag, out.ChecksumCRC32C
		return nil
	})
	return nil
}

// metadata is the object's user metadata and Content-Type, from what is
// known of the file now.
func (f *s3File) metadata() (meta map[string]string, contentType string) {
	meta = map[string]string{
		"field":    url.PathEscape(f.info.Field),
		"filename": url.PathEscape(f.info.Filename),
	}
	for name, sum := range f.info.Digests {
		meta[name] = sum
	}
	if f.info.DetectedType != "" {
		meta["detected-type"] = f.info.DetectedType // verify_types
	}
	contentType = f.info.ContentType
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	return meta, contentType
}

// metadataSize is the size S3 counts of the metadata known now.
func (f *s3File) metadataSize() int {
	meta, _ := f.metadata()
	n := 0
	for k, v := range meta {
		n += len(k) + len(v)
	}
	return n
}

// create starts the file's multipart upload, with its metadata.
func (f *s3File) create() error {
	b := f.b
	meta, ct := f.metadata()
	f.lateDigests = !f.finishing
	// Not cancelled with the request: an upload created while the client
	// goes away must be known, to be aborted.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(b.ctx), s3OpTimeout)
	defer cancel()
	out, err := b.s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket:            aws.String(b.s.Bucket),
		Key:               aws.String(f.key),
		ContentType:       aws.String(ct),
		Metadata:          meta,
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32c,
	})
	if err != nil {
		// S3 may have made the upload and the answer been lost on the
		// way back: the cleanup then looks for it by its key.
		f.createLost = retryable(err)
		return b.failure(err)
	}
	f.uploadID = aws.ToString(out.UploadId)
	return nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// UnsignedPayload leaves a part's SHA-256 out of its signature: the part's
// CRC32C, which the server checks, already covers its bytes, and hashing
// every byte once more costs more CPU than all the rest of the way. The
// payload hash is set first in the finalize step: the SDK's checksum
// middleware, which runs before the signer's, would otherwise compute the
// SHA-256 beside the CRC32C, over plain HTTP. An option of UploadPart, exported
// for uploadbench, which uploads as the store does.
func UnsignedPayload(o *s3.Options) {
	o.APIOptions = append(o.APIOptions, v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware, func(stack *middleware.Stack) error {
		return stack.Finalize.Add(unsignedFirst, middleware.Before)
	})
}

var unsignedFirst = middleware.FinalizeMiddlewareFunc("StreamProxyUnsignedPayload",
	func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
		return next.HandleFinalize(v4.SetPayloadHash(ctx, "UNSIGNED-PAYLOAD"), in)
	})

// failed returns the error of the first part that failed, if one did. Only
// before Finish: waiting for the uploads ends their context.
func (f *s3File) failed() error {
	if f.partFailed.Err() != nil {
		return context.Cause(f.partFailed)
	}
	return nil
}

// Commit completes every multipart upload. Every file has finished, so no
// part is in flight.
func (b *s3Batch) Commit() error {
	for _, f := range b.files {
		if f.completed {
			continue
		}
		parts := make([]types.CompletedPart, len(f.parts))
		for i, p := range f.parts {
			parts[i] = *p
		}
		// Not cancelled with the request: a completion must be known, to
		// be undone; one whose answer was lost is deleted on Discard.
		f.completing = true
		ctx, cancel := context.WithTimeout(context.WithoutCancel(b.ctx), s3OpTimeout)
		_, err := b.s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket:          aws.String(b.s.Bucket),
			Key:             aws.String(f.key),
			UploadId:        aws.String(f.uploadID),
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
		cancel()
		if err != nil {
			return b.failure(err)
		}
		f.completed = true
		if err := f.addDigests(); err != nil {
			return err
		}
	}
	return nil
}

const (
	maxCopySize = 5 << 30  // the largest object one CopyObject takes
	minCopyRate = 20 << 20 // bytes per second a server's copy is allowed
)

// addDigests gives a completed object that was created before its digests
// were known (it took more than one part) its full metadata, by copying it
// onto itself with the metadata replaced: S3 takes metadata only when an
// upload is created. The copy is the server's, not the gateway's bandwidth.
// An object over 5 GiB keeps its metadata without the digests.
func (f *s3File) addDigests() error {
	if !f.lateDigests || len(f.info.Digests) == 0 || f.info.Size > maxCopySize {
		return nil
	}
	b := f.b
	meta, ct := f.metadata()
	// The server copies the whole object before it answers: the time allowed
	// grows with the object.
	limit := s3OpTimeout + time.Duration(f.info.Size/minCopyRate)*time.Second
	ctx, cancel := context.WithTimeout(context.WithoutCancel(b.ctx), limit)
	defer cancel()
	_, err := b.s.client.CopyObject(ctx, &s3.CopyObjectInput{
		Bucket:            aws.String(b.s.Bucket),
		Key:               aws.String(f.key),
		CopySource:        aws.String(url.PathEscape(b.s.Bucket) + "/" + (&url.URL{Path: f.key}).EscapedPath()),
		MetadataDirective: types.MetadataDirectiveReplace,
		Metadata:          meta,
		ContentType:       aws.String(ct),
	})
	if forbidden(err) {
		// Credentials without s3:GetObject: the object stays, with its
		// metadata but no digests, which the answer and fields carry.
		b.logger.Warn("s3 refused the copy that adds the digests to the metadata (s3:GetObject needed); the object keeps its metadata without them",
			zap.String("bucket", b.s.Bucket), zap.String("key", f.key), zap.Error(err))
		return nil
	}
	if err != nil {
		return b.failure(err)
	}
	return nil
}

// Discard stops the part uploads in flight, aborts every multipart upload of
// the batch and deletes the objects it completed. It runs even when the
// request's context has ended. What S3 does not take on the first try (it is
// down, or stalls) is retried in the background within CleanupBudget.
func (b *s3Batch) Discard() {
	b.cancel()
	var left []*s3Removal
	for _, f := range b.files {
		_ = f.uploads.Wait() // the error, if any, was the request's
		if f.buf != nil {
			b.pool.Put(f.buf)
			f.buf = nil
		}
		r := &s3Removal{key: f.key, find: f.createLost, delete: f.completing}
		if f.uploadID != "" && !f.completed {
			r.uploadIDs = []string{f.uploadID}
		}
		if len(r.uploadIDs) > 0 || r.find || r.delete {
			left = append(left, r)
		}
	}
	b.files = nil
	if len(left) == 0 {
		return
	}
	ctx := context.WithoutCancel(b.req)
	deadline := time.Now().Add(time.Duration(b.s.CleanupBudget))
	for i, r := range left {
		if b.s.removeOnce(ctx, r, b.logger) {
			// S3 does not answer: the rest waits for it too.
			b.s.cleanups.start(func(stop context.Context) { b.s.retryRemovals(stop, left[i:], deadline, b.logger) })
			return
		}
	}
}

// failure classifies an error of S3 or of waiting on it. The message says
// what failed, never with the credentials; the cause goes to the logs.
func (b *s3Batch) failure(err error) *store.Error {
	if b.req.Err() != nil {
		return &store.Error{Status: store.StatusClientClosed, Code: store.CodeClientGone, Message: "client went away", Err: err}
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status := re.HTTPStatusCode()
		code := ""
		var ae smithy.APIError
		if errors.As(err, &ae) {
			code = ae.ErrorCode()
		}
		switch {
		case code == "NoSuchBucket" || (status == http.StatusNotFound && code == "NotFound"):
			return &store.Error{Status: http.StatusBadGateway, Code: store.CodeStoreNoBucket, Message: "the store's bucket does not exist", Err: err}
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			return &store.Error{Status: http.StatusBadGateway, Code: store.CodeStoreDenied, Message: "the store refused the gateway's credentials", Err: err}
		case status == 0 || status >= 500: // 0: no answer at all
			return &store.Error{Status: http.StatusServiceUnavailable, Code: store.CodeStoreUnavailable, Message: "the store is unavailable", Err: err}
		}
		return &store.Error{Status: http.StatusBadGateway, Code: store.CodeStoreFailed, Message: "the store failed", Err: err}
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &store.Error{Status: http.StatusServiceUnavailable, Code: store.CodeStoreUnavailable, Message: "the store is unavailable", Err: err}
	}
	return &store.Error{Status: http.StatusBadGateway, Code: store.CodeStoreFailed, Message: "the store failed", Err: err}
}

// Interface guards
var (
	_ store.Store           = (*S3Store)(nil)
	_ store.MaxFileSizer    = (*S3Store)(nil)
	_ store.IdleBounder     = (*S3Store)(nil)
	_ store.Pooled          = (*S3Store)(nil)
	_ caddy.Provisioner     = (*S3Store)(nil)
	_ caddy.Validator       = (*S3Store)(nil)
	_ caddy.CleanerUpper    = (*S3Store)(nil)
	_ caddyfile.Unmarshaler = (*S3Store)(nil)
)
