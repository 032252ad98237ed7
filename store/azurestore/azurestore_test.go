package azurestore

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	azurite "github.com/streamproxy/caddy-stream-proxy/integration/azuritetest"
	"github.com/streamproxy/caddy-stream-proxy/store"
)

// The Caddyfile's options, and what Validate refuses.
func TestAzureStoreConfig(t *testing.T) {
	var s AzureStore
	d := caddyfile.NewTestDispenser(`azure {
		container uploads
		prefix in/
		endpoint http://127.0.0.1:10000/devstoreaccount1
		account_name devstoreaccount1
		account_key {env.AZURE_STORAGE_KEY}
		block_size 1MiB
		max_buffers 4
	}`)
	if err := s.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if s.Container != "uploads" || s.Prefix != "in/" || s.AccountKey != "{env.AZURE_STORAGE_KEY}" || s.BlockSize != 1<<20 || s.MaxBuffers != 4 {
		t.Fatalf("parsed %+v", s)
	}
	for _, bad := range []string{"azure extra", "azure {\n bucket x\n}", "azure {\n block_size\n}", "azure {\n max_buffers 0\n}", "azure {\n container a b\n}"} {
		var s AzureStore
		if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	for name, s := range map[string]AzureStore{
		"no container":          {AccountName: "a", BlockSize: DefaultAzureBlockSize, MaxBuffers: 1},
		"bad container":         {Container: "Up_loads", AccountName: "a", BlockSize: DefaultAzureBlockSize, MaxBuffers: 1},
		"small block":           {Container: "up", AccountName: "a", BlockSize: 1024, MaxBuffers: 1},
		"no account":            {Container: "ups", BlockSize: DefaultAzureBlockSize, MaxBuffers: 1},
		"key without account":   {Container: "ups", Endpoint: "http://x", AccountKey: "k", BlockSize: DefaultAzureBlockSize, MaxBuffers: 1},
		"connection and a key":  {Container: "ups", ConnectionString: "x", AccountKey: "k", BlockSize: DefaultAzureBlockSize, MaxBuffers: 1},
		"endpoint not http(s)":  {Container: "ups", Endpoint: "ftp://x", BlockSize: DefaultAzureBlockSize, MaxBuffers: 1},
		"no buffers":            {Container: "ups", AccountName: "a", BlockSize: DefaultAzureBlockSize},
		"block larger than max": {Container: "ups", AccountName: "a", BlockSize: 5000 << 20, MaxBuffers: 1},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
	// Provision: defaults, placeholders, and a key that is no key.
	t.Setenv("SP_TEST_AZURE_KEY", azurite.Key)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	ok := AzureStore{Container: "ups", AccountName: azurite.Account, AccountKey: "{env.SP_TEST_AZURE_KEY}"}
	if err := ok.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer ok.Cleanup()
	if ok.BlockSize != DefaultAzureBlockSize || ok.MaxBuffers != DefaultAzureMaxBuffers ||
		ok.client.URL() != "https://devstoreaccount1.blob.core.windows.net/ups" {
		t.Fatalf("provisioned %+v at %s", ok, ok.client.URL())
	}
	bad := AzureStore{Container: "ups", AccountName: "a", AccountKey: "not base64!"}
	if err := bad.Provision(ctx); err == nil || strings.Contains(err.Error(), "not base64!") {
		t.Fatalf("a bad key: %v", err)
	}
}

// Block IDs are base64 of a fixed-width number: all the same length, in
// order.
func TestAzureBlockID(t *testing.T) {
	if id := blockID(0); id != base64.StdEncoding.EncodeToString([]byte("00000")) {
		t.Fatalf("block 0: %s", id)
	}
	if len(blockID(maxAzureBlocks-1)) != len(blockID(0)) {
		t.Fatal("block IDs of different lengths")
	}
}

// Azure stalls mid-file: the block upload times out, the upload fails with
// 503, and nothing is committed. A filename too long for Azure's metadata is
// refused before any byte is read.
func TestAzureStoreStall(t *testing.T) {
	az := azurite.Start(t)
	c := az.CreateContainer(t, "stall")
	target, _ := url.Parse("http://127.0.0.1:" + az.Port)
	rp := httputil.NewSingleHostReverseProxy(target)
	done := make(chan struct{})
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Query().Get("comp") == "block" {
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

	old := azureOpTimeout
	azureOpTimeout = 500 * time.Millisecond
	defer func() { azureOpTimeout = old }()
	s := &AzureStore{Container: "stall", Endpoint: proxy.URL + "/" + azurite.Account, AccountName: azurite.Account,
		AccountKey: azurite.Key, BlockSize: MinAzureBlockSize, MaxBuffers: 2}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Cleanup()

	batch := s.Begin(context.Background(), zap.NewNop())
	var se *store.Error
	if _, err := batch.Create(store.FileInfo{Field: "f", Filename: strings.Repeat("é", 2000)}); !errors.As(err, &se) || se.Code != store.CodeMetadataTooLarge {
		t.Fatalf("a filename over the metadata's size: %v", err)
	}
	f, err := batch.Create(store.FileInfo{Field: "f", Filename: "f.bin"})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 16<<10)
	var werr error
	for sent := 0; sent < 1<<20 && werr == nil; sent += len(data) {
		_, werr = f.Write(data)
	}
	if werr == nil {
		werr = f.Finish(store.FileInfo{Field: "f", Filename: "f.bin", Size: 1 << 20})
	}
	if !errors.As(werr, &se) || se.Status != http.StatusServiceUnavailable || se.Code != store.CodeStoreUnavailable {
		t.Fatalf("error %v, want 503 store_unavailable", werr)
	}
	batch.Discard()
	pager := c.NewListBlobsFlatPager(nil)
	for pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil || len(page.Segment.BlobItems) != 0 {
			t.Fatalf("blobs left: %v %v", page.Segment.BlobItems, err)
		}
	}
	if s.pool.InUse() != 0 {
		t.Fatalf("%d buffers still in use", s.pool.InUse())
	}
}
