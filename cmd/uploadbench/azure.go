package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/streamproxy/caddy-stream-proxy/integration/azuritetest"
)

// The store-azure path: stream_proxy in store mode into Azurite, beside the
// same file bytes staged straight into that Azurite with the SDK, block by
// block at the same block size and with as many blocks in flight per file
// (4) as the gateway, then committed.
const (
	azureContainer      = "uploadbench"
	azureBlocksInFlight = 4 // the gateway's blocksInFlight
	modeStoreAzure      = "store-azure"
	modeAzureDirect     = "azure-direct" // a route, not a stream_proxy mode
)

// azureOptions say where Azurite is and how the gateway's store azure is set up.
type azureOptions struct {
	azurite   string
	blockSize int64
	buffers   int
}

// azureTarget is an Azurite on a free loopback port with an empty container.
// Close must be called: it kills the process and removes its directory.
type azureTarget struct {
	srv    *azuritetest.Server
	dir    string
	client *container.Client
	tr     *http.Transport
	opts   azureOptions
}

func startAzureTarget(ctx context.Context, opts azureOptions) (t *azureTarget, err error) {
	if _, err := exec.LookPath(opts.azurite); err != nil {
		return nil, fmt.Errorf("-azurite: %w (make -f xcaddy.mk azurite)", err)
	}
	dir, err := os.MkdirTemp("", "uploadbench-azure-")
	if err != nil {
		return nil, err
	}
	t = &azureTarget{dir: dir, opts: opts}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if t.srv, err = azuritetest.Launch(opts.azurite, dir); err != nil {
		return t, err
	}
	t.tr = &http.Transport{MaxIdleConnsPerHost: 2 * azureBlocksInFlight}
	if t.client, err = t.srv.NewClient(azureContainer, t.tr); err != nil {
		return t, err
	}
	if _, err := t.client.Create(ctx, nil); err != nil {
		return t, fmt.Errorf("creating the container: %w", err)
	}
	return t, nil
}

func (t *azureTarget) Close() {
	if t.srv != nil {
		t.srv.Kill()
	}
	if t.tr != nil {
		t.tr.CloseIdleConnections()
	}
	_ = os.RemoveAll(t.dir)
}

// caddyBlock is the gateway's store azure block.
func (t *azureTarget) caddyBlock() string {
	return fmt.Sprintf("store azure {\n\t\t\tcontainer %s\n\t\t\tendpoint %s\n\t\t\taccount_name %s\n\t\t\taccount_key %s\n\t\t\tblock_size %d\n\t\t\tmax_buffers %d\n\t\t}",
		azureContainer, t.srv.Endpoint, azuritetest.Account, azuritetest.Key, t.opts.blockSize, t.opts.buffers)
}

// uploadDirect uploads each file of b as its own block blob, one file after
// the other, up to azureBlocksInFlight blocks at once, as the gateway does.
func (t *azureTarget) uploadDirect(ctx context.Context, b *body, p *progress) (uploadResult, []string, error) {
	return uploadEachFile(ctx, b, p, t.opts.blockSize, azureBlocksInFlight, func(key string) (objectUpload, error) {
		return azureBlob{t.client.NewBlockBlobClient(key)}, nil
	})
}

// azureBlob is a block blob uploaded block by block, committed at the end.
type azureBlob struct{ bb *blockblob.Client }

func blockID(num int) string {
	return base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%016d", num))
}

func (a azureBlob) put(ctx context.Context, num int, data []byte) error {
	_, err := a.bb.StageBlock(ctx, blockID(num), streaming.NopCloser(bytes.NewReader(data)), nil)
	return err
}

func (a azureBlob) commit(ctx context.Context, parts int) error {
	ids := make([]string, parts)
	for i := range ids {
		ids[i] = blockID(i)
	}
	ct := "application/octet-stream"
	_, err := a.bb.CommitBlockList(ctx, ids, &blockblob.CommitBlockListOptions{HTTPHeaders: &blob.HTTPHeaders{BlobContentType: &ct}})
	return err
}

// abort leaves the staged blocks: the service drops blocks never committed
// (Azure after a week).
func (a azureBlob) abort() {}

// verifyObjects reads each file's blob back (outside the timing) and
// compares it with what was sent; keys are by file order.
func (t *azureTarget) verifyObjects(ctx context.Context, want []expectedPart, keyOf func(i int, p expectedPart) string) error {
	return verifyEachFile(want, keyOf, func(key string) (io.ReadCloser, error) {
		out, err := t.client.NewBlobClient(key).DownloadStream(ctx, nil)
		if err != nil {
			return nil, err
		}
		return out.Body, nil
	})
}

// empty deletes every blob of the container.
func (t *azureTarget) empty(ctx context.Context) error {
	pager := t.client.NewListBlobsFlatPager(nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return err
		}
		for _, item := range page.Segment.BlobItems {
			if _, err := t.client.NewBlobClient(*item.Name).Delete(ctx, nil); err != nil {
				return err
			}
		}
	}
	return nil
}
