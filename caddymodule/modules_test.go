package streamproxy

import (
	"testing"

	"github.com/streamproxy/caddy-stream-proxy/formreader"
	"github.com/streamproxy/caddy-stream-proxy/store"
)

// The store API's list of digests, which the object stores size their
// metadata by, is the hash subdirective's.
func TestStoreDigestSizes(t *testing.T) {
	names := formreader.HashNames()
	if len(store.DigestHexSizes) != len(names) {
		t.Fatalf("store.DigestHexSizes has %d digests, the hash subdirective %d", len(store.DigestHexSizes), len(names))
	}
	for _, name := range names {
		if got, want := store.DigestHexSizes[name], formreader.HexSize(name); got != want {
			t.Errorf("%s: store.DigestHexSizes says %d hex digits, the hash gives %d", name, got, want)
		}
	}
}
