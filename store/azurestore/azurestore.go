package azurestore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/streamproxy/caddy-stream-proxy/store"
	"github.com/streamproxy/caddy-stream-proxy/store/bufpool"
)

func init() {
	caddy.RegisterModule(AzureStore{})
}

// Bounds of the Azure store.
const (
	DefaultAzureBlockSize  = 8 << 20 // bytes
	MinAzureBlockSize      = 64 << 10
	maxAzureBlockSize      = 4000 << 20 // Azure's largest block
	maxAzureBlocks         = 50000      // Azure's most blocks in one blob
	DefaultAzureMaxBuffers = 32         // as s3's
	// blocksInFlight is how many blocks of one file are staged at once.
	blocksInFlight = 4
	// azureClientIdle bounds how long a client that holds a block buffer
	// may send nothing.
	azureClientIdle = time.Minute
	// azureCleanupTimeout bounds the deletes after a failure.
	azureCleanupTimeout = 30 * time.Second
	// maxAzureMetadata is Azure's limit on a blob's metadata, names and
	// values together.
	maxAzureMetadata = 8 << 10
)

// azureOpTimeout bounds each call to Azure, retries included, so that a
// stalled server fails the upload instead of holding it. A variable for the
// tests.
var azureOpTimeout = 2 * time.Minute

// containerName is Azure's rule for container names.
var containerName = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}$`)

// AzureStore writes file parts into Azure Blob Storage, streamed while they
// arrive: each file is a block blob under a generated name
// (`<prefix>/YYYY/MM/DD/<128 random bits, hex>`, UTC) whose blocks are
// staged (Put Block) while the client sends, and committed (Put Block List)
// only once the whole form ended cleanly. On any failure nothing is
// committed, and blobs committed earlier in the request are deleted. Staged
// blocks that are never committed (a failure, a crash) are not a blob:
// nobody sees them, and Azure removes them after a week.
//
// Block data is gathered in buffers of BlockSize bytes taken from one pool
// of MaxBuffers per handler: when none is free, the uploads waiting for one
// stop reading from their clients. Up to 4 blocks of a file go up at once.
//
// Blobs carry the part's Content-Type and, as metadata, `field`, `filename`
// (both percent-encoded, so that any UTF-8 survives) and the configured
// digests. A field and filename too long for Azure's 8 KiB of metadata are
// refused (431, part_header_too_large) before the file's bytes are read.
type AzureStore struct {
	// Container is the container blobs are written to. Required.
	Container string `json:"container,omitempty"`

	// Prefix is put before every blob name, followed by a slash. Default:
	// none.
	Prefix string `json:"prefix,omitempty"`

	// Endpoint is the URL of the Blob service, such as
	// `http://127.0.0.1:10000/devstoreaccount1` for Azurite. Default:
	// `https://<account_name>.blob.core.windows.net`, or the connection
	// string's.
	Endpoint string `json:"endpoint,omitempty"`

	// AccountName is the storage account. Required unless Endpoint or
	// ConnectionString is set.
	AccountName string `json:"account_name,omitempty"`

	// AccountKey is the account's shared key, base64; placeholders such as
	// {env.AZURE_STORAGE_KEY} are expanded at provisioning. Default: none,
	// and without a ConnectionString, the credentials of azidentity's
	// default chain (environment, workload identity, managed identity,
	// Azure CLI). Never logged.
	AccountKey string `json:"account_key,omitempty"`

	// ConnectionString is an Azure Storage connection string
	// (`DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...`),
	// placeholders expanded at provisioning, in place of Endpoint,
	// AccountName and AccountKey. Default: none. Never logged.
	ConnectionString string `json:"connection_string,omitempty"`

	// BlockSize is the size of each block, and of each buffer, in bytes;
	// between 64 KiB and 4000 MiB. A blob can have 50,000 blocks, so it
	// also bounds the largest file. Default: 8 MiB.
	BlockSize int64 `json:"block_size,omitempty"`

	// MaxBuffers is the number of block buffers shared by every upload of
	// this handler: the store never holds more than MaxBuffers × BlockSize
	// of file data. Buffers are allocated when needed and kept, as many as
	// were ever in use at once. Default: 32.
	MaxBuffers int `json:"max_buffers,omitempty"`

	client    *container.Client
	transport *http.Transport
	pool      *bufpool.Pool
}

// CaddyModule returns the Caddy module information.
func (AzureStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.stream_proxy.stores.azure",
		New: func() caddy.Module { return new(AzureStore) },
	}
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens. Syntax:
//
//	store azure {
//		container <name>
//		prefix <name-prefix>
//		endpoint <url>
//		account_name <name>
//		account_key <key>
//		connection_string <string>
//		block_size <size>
//		max_buffers <n>
//	}
func (s *AzureStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume "azure"
	if d.NextArg() {
		return d.ArgErr()
	}
	text := map[string]*string{
		"container": &s.Container, "prefix": &s.Prefix, "endpoint": &s.Endpoint,
		"account_name": &s.AccountName, "account_key": &s.AccountKey, "connection_string": &s.ConnectionString,
	}
	for d.NextBlock(0) {
		switch name := d.Val(); {
		case text[name] != nil:
			if !d.NextArg() {
				return d.ArgErr()
			}
			*text[name] = d.Val()
		case name == "block_size":
			if err := store.ParseSize(d, &s.BlockSize); err != nil {
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
		default:
			return d.Errf("unrecognized azure store option %s", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Provision sets defaults, expands the credentials' placeholders and sets up
// the client. It makes no request to Azure.
func (s *AzureStore) Provision(ctx caddy.Context) error {
	if s.BlockSize == 0 {
		s.BlockSize = DefaultAzureBlockSize
	}
	if s.MaxBuffers == 0 {
		s.MaxBuffers = DefaultAzureMaxBuffers
	}
	if err := s.Validate(); err != nil { // before anything is created
		return err
	}

	// A transport of its own, so that Cleanup can close its connections.
	s.transport = http.DefaultTransport.(*http.Transport).Clone()
	s.transport.MaxIdleConnsPerHost = 2 * blocksInFlight
	opts := &container.ClientOptions{ClientOptions: policy.ClientOptions{
		Transport: &http.Client{Transport: s.transport},
		// A few quick retries: the operation's own timeout bounds them all.
		Retry: policy.RetryOptions{MaxRetries: 3, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 2 * time.Second},
	}}

	repl := caddy.NewReplacer()
	var err error
	switch {
	case s.ConnectionString != "":
		cs := repl.ReplaceKnown(s.ConnectionString, "")
		if cs == "" {
			return fmt.Errorf("azure store: connection_string is empty once its placeholders are expanded")
		}
		s.client, err = container.NewClientFromConnectionString(cs, s.Container, opts)
		if err != nil {
			// The SDK's message may quote the string: only say what failed.
			return fmt.Errorf("azure store: connection_string is not a valid connection string")
		}
	default:
		name := repl.ReplaceKnown(s.AccountName, "")
		endpoint := repl.ReplaceKnown(s.Endpoint, "")
		if endpoint == "" {
			if name == "" {
				return fmt.Errorf("azure store: account_name is empty once its placeholders are expanded")
			}
			endpoint = "https://" + url.PathEscape(name) + ".blob.core.windows.net"
		}
		u, perr := url.Parse(endpoint)
		if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("azure store: endpoint %q is not an http or https URL", endpoint)
		}
		containerURL := strings.TrimRight(endpoint, "/") + "/" + s.Container
		if s.AccountKey != "" {
			key := repl.ReplaceKnown(s.AccountKey, "")
			if name == "" || key == "" {
				return fmt.Errorf("azure store: account_name or account_key is empty once its placeholders are expanded")
			}
			cred, cerr := container.NewSharedKeyCredential(name, key)
			if cerr != nil {
				return fmt.Errorf("azure store: account_key is not a valid base64 key")
			}
			s.client, err = container.NewClientWithSharedKeyCredential(containerURL, cred, opts)
		} else {
			cred, cerr := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: opts.ClientOptions})
			if cerr != nil {
				return fmt.Errorf("azure store: azidentity's default credentials: %w", cerr)
			}
			s.client, err = container.NewClient(containerURL, cred, opts)
		}
	}
	if err != nil {
		return fmt.Errorf("azure store: setting up the client: %w", err)
	}
	s.pool = bufpool.New(s.MaxBuffers, int(s.BlockSize))
	return nil
}

// Validate checks the configuration.
func (s *AzureStore) Validate() error {
	if !containerName.MatchString(s.Container) {
		return fmt.Errorf("azure store: container %q is not a valid container name (3 to 63 lowercase letters, digits and single hyphens)", s.Container)
	}
	if s.BlockSize < MinAzureBlockSize || s.BlockSize > maxAzureBlockSize {
		return fmt.Errorf("azure store: block_size must be between 64KiB and 4000MiB, got %d", s.BlockSize)
	}
	if s.MaxBuffers < 1 {
		return fmt.Errorf("azure store: max_buffers must be at least 1, got %d", s.MaxBuffers)
	}
	if s.ConnectionString != "" {
		if s.AccountName != "" || s.AccountKey != "" || s.Endpoint != "" {
			return fmt.Errorf("azure store: connection_string replaces endpoint, account_name and account_key")
		}
		return nil
	}
	if s.AccountName == "" && s.Endpoint == "" {
		return fmt.Errorf("azure store: account_name, endpoint or connection_string is required")
	}
	if s.AccountKey != "" && s.AccountName == "" {
		return fmt.Errorf("azure store: account_key needs account_name")
	}
	if s.Endpoint != "" && !strings.Contains(s.Endpoint, "{") {
		u, err := url.Parse(s.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("azure store: endpoint %q is not an http or https URL", s.Endpoint)
		}
	}
	return nil
}

// Cleanup closes idle connections to Azure and lets the buffers go.
func (s *AzureStore) Cleanup() error {
	if s.transport != nil {
		s.transport.CloseIdleConnections()
	}
	if s.pool != nil {
		s.pool.Close()
	}
	return nil
}

func (s *AzureStore) MaxFileSize() int64 { return s.BlockSize * maxAzureBlocks }

func (s *AzureStore) IdleBound() time.Duration { return azureClientIdle }

func (s *AzureStore) Pooled() bool { return true }

// Begin starts one request's files.
func (s *AzureStore) Begin(ctx context.Context, logger *zap.Logger) store.Batch {
	bctx, cancel := context.WithCancel(ctx)
	return &azureBatch{s: s, req: ctx, ctx: bctx, cancel: cancel, logger: logger}
}

// azureBatch is one request's blobs. Its methods and its files' are called
// one at a time (see store.Batch for on which goroutine); only block uploads
// run on goroutines of their own, which a file waits for in Finish and the
// batch in Discard.
type azureBatch struct {
	s      *AzureStore
	req    context.Context // the request's
	ctx    context.Context // req's child, cancelled on Discard
	cancel context.CancelFunc
	logger *zap.Logger
	files  []*azureFile
	ready  bool // the container answered
}

// azureFile is one blob being written.
type azureFile struct {
	b    *azureBatch
	name string
	blob *blockblob.Client
	info store.FileInfo
	buf  []byte // being filled; nil when none is held
	ids  []string

	// stages runs the block uploads, blocksInFlight at a time;
	// blockFailed, its context, is cancelled with the first failure as its
	// cause.
	stages      *errgroup.Group
	blockFailed context.Context

	committing bool // Put Block List was sent: the blob may exist
}

// Create checks, for the request's first file, that the container answers,
// so that an unreachable server, refused credentials or a missing container
// fail the upload before the file's bytes are read; and that the file's
// metadata fits.
func (b *azureBatch) Create(info store.FileInfo) (store.StoredFile, error) {
	if n := metadataSize(azureMetadata(info)); n > maxAzureMetadata {
		return nil, &store.Error{Status: http.StatusBadRequest, Code: store.CodeMetadataTooLarge, Limit: "azure metadata",
			Message: fmt.Sprintf("the file's name and field, encoded, take %d bytes of metadata, more than the store's %d", n, maxAzureMetadata)}
	}
	if !b.ready {
		ctx, cancel := context.WithTimeout(b.ctx, azureOpTimeout)
		_, err := b.s.client.GetProperties(ctx, nil)
		cancel()
		if err != nil {
			return nil, b.failure(err)
		}
		b.ready = true
	}
	var id [16]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand)
	name := path.Join(time.Now().UTC().Format("2006/01/02"), hex.EncodeToString(id[:]))
	if p := strings.Trim(b.s.Prefix, "/"); p != "" {
		name = p + "/" + name
	}
	f := &azureFile{b: b, name: name, blob: b.s.client.NewBlockBlobClient(name), info: info}
	f.stages, f.blockFailed = errgroup.WithContext(context.WithoutCancel(b.ctx))
	f.stages.SetLimit(blocksInFlight)
	b.files = append(b.files, f)
	return f, nil
}

func (f *azureFile) Location() store.Location {
	return store.Location{Bucket: f.b.s.Container, Key: f.name}
}

// Write gathers data into block buffers; each full one is staged in the
// background.
func (f *azureFile) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if err := f.failed(); err != nil {
			return written, err
		}
		if f.buf == nil {
			buf, err := f.b.s.pool.Get(f.b.ctx)
			if err != nil {
				return written, f.b.failure(err)
			}
			f.buf = buf
		}
		n := copy(f.buf[len(f.buf):cap(f.buf)], p)
		f.buf = f.buf[:len(f.buf)+n]
		p = p[n:]
		written += n
		if len(f.buf) == cap(f.buf) {
			if err := f.stage(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// Finish stages the last block and waits for every block of the file.
func (f *azureFile) Finish(info store.FileInfo) error {
	f.info = info
	if f.buf != nil && len(f.buf) > 0 {
		if err := f.stage(); err != nil {
			return err
		}
	}
	return f.stages.Wait()
}

// blockID names the i-th block: base64 of a fixed-width number, as Azure
// wants every block ID of a blob to be the same length.
func blockID(i int) string {
	return base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%05d", i))
}

// stage starts the upload of the buffer as the next block. It waits while
// blocksInFlight blocks of the file are going up already. The buffer goes
// back to the pool when the block is up.
func (f *azureFile) stage() error {
	b := f.b
	if len(f.ids) == maxAzureBlocks {
		return store.Failed(fmt.Errorf("blob %s: more than %d blocks", f.name, maxAzureBlocks)) // max_part_size forbids it
	}
	if err := b.ctx.Err(); err != nil {
		return b.failure(err)
	}
	buf, id := f.buf, blockID(len(f.ids))
	f.buf = nil
	f.ids = append(f.ids, id)
	f.stages.Go(func() error {
		defer b.s.pool.Put(buf)
		// Cancelled with the batch: a block never committed is no blob.
		ctx, cancel := context.WithTimeout(b.ctx, azureOpTimeout)
		defer cancel()
		if _, err := f.blob.StageBlock(ctx, id, streaming.NopCloser(bytes.NewReader(buf)), nil); err != nil {
			return b.failure(err)
		}
		return nil
	})
	return nil
}

// failed returns the error of the first block that failed, if one did. Only
// before Finish: waiting for the stages ends their context.
func (f *azureFile) failed() error {
	if f.blockFailed.Err() != nil {
		return context.Cause(f.blockFailed)
	}
	return nil
}

// azureMetadata is a blob's metadata: names are C# identifiers, values
// ASCII, so the client's field and filename go percent-encoded.
func azureMetadata(info store.FileInfo) map[string]*string {
	meta := map[string]*string{
		"field":    ptr(url.PathEscape(info.Field)),
		"filename": ptr(url.PathEscape(info.Filename)),
	}
	for name, sum := range info.Digests {
		meta[name] = ptr(sum)
	}
	return meta
}

// metadataSize is the metadata's size as Azure counts it, with room for the
// digests that come later.
func metadataSize(meta map[string]*string) int {
	n := 512 // the digests, once known
	for k, v := range meta {
		n += len(k) + len(*v)
	}
	return n
}

func ptr(s string) *string { return &s }

// Commit commits every blob's block list, with its Content-Type and
// metadata. Every file has finished, so no block is in flight.
func (b *azureBatch) Commit() error {
	for _, f := range b.files {
		if f.committing {
			continue
		}
		ct := f.info.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		// Not cancelled with the request: a commit must be known, to be
		// undone; one whose answer was lost is deleted on Discard.
		f.committing = true
		ctx, cancel := context.WithTimeout(context.WithoutCancel(b.ctx), azureOpTimeout)
		_, err := f.blob.CommitBlockList(ctx, f.ids, &blockblob.CommitBlockListOptions{
			HTTPHeaders: &blob.HTTPHeaders{BlobContentType: &ct},
			Metadata:    azureMetadata(f.info),
		})
		cancel()
		if err != nil {
			return b.failure(err)
		}
	}
	return nil
}

// Discard stops the block uploads in flight and deletes the blobs the batch
// committed. Blocks staged and never committed are left to Azure, which
// removes them after a week. It runs even when the request's context has
// ended, within azureCleanupTimeout.
func (b *azureBatch) Discard() {
	b.cancel()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(b.req), azureCleanupTimeout)
	defer cancel()
	for _, f := range b.files {
		_ = f.stages.Wait() // the error, if any, was the request's
		if f.buf != nil {
			b.s.pool.Put(f.buf)
			f.buf = nil
		}
		if !f.committing {
			continue
		}
		_, err := f.blob.Delete(ctx, nil)
		if err != nil && !bloberror.HasCode(err, bloberror.BlobNotFound) {
			b.logger.Error("removing from azure", zap.String("container", b.s.Container), zap.String("blob", f.name), zap.Error(err))
		}
	}
	b.files = nil
}

// failure classifies an error of Azure or of waiting on it. The message
// says what failed, never with the credentials; the cause goes to the logs.
func (b *azureBatch) failure(err error) *store.Error {
	if b.req.Err() != nil {
		return &store.Error{Status: store.StatusClientClosed, Code: store.CodeClientGone, Message: "client went away", Err: err}
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		switch status := re.StatusCode; {
		case bloberror.HasCode(err, bloberror.ContainerNotFound):
			return &store.Error{Status: http.StatusBadGateway, Code: store.CodeStoreNoBucket, Message: "the store's container does not exist", Err: err}
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			return &store.Error{Status: http.StatusBadGateway, Code: store.CodeStoreDenied, Message: "the store refused the gateway's credentials", Err: err}
		case status >= 500:
			return &store.Error{Status: http.StatusServiceUnavailable, Code: store.CodeStoreUnavailable, Message: "the store is unavailable", Err: err}
		}
		return &store.Error{Status: http.StatusBadGateway, Code: store.CodeStoreFailed, Message: "the store failed", Err: err}
	}
	var ae *azidentity.AuthenticationFailedError
	if errors.As(err, &ae) { // a token refused by Entra ID
		return &store.Error{Status: http.StatusBadGateway, Code: store.CodeStoreDenied, Message: "the store refused the gateway's credentials", Err: err}
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &store.Error{Status: http.StatusServiceUnavailable, Code: store.CodeStoreUnavailable, Message: "the store is unavailable", Err: err}
	}
	return &store.Error{Status: http.StatusBadGateway, Code: store.CodeStoreFailed, Message: "the store failed", Err: err}
}

// Interface guards
var (
	_ store.Store           = (*AzureStore)(nil)
	_ store.MaxFileSizer    = (*AzureStore)(nil)
	_ store.IdleBounder     = (*AzureStore)(nil)
	_ store.Pooled          = (*AzureStore)(nil)
	_ caddy.Provisioner     = (*AzureStore)(nil)
	_ caddy.Validator       = (*AzureStore)(nil)
	_ caddy.CleanerUpper    = (*AzureStore)(nil)
	_ caddyfile.Unmarshaler = (*AzureStore)(nil)
)
