package streamproxy

import (
	"testing"

	"github.com/streamproxy/caddy-stream-proxy/store"
)

// The store API's list of digests, which the object stores size their
// metadata by, is the hash subdirective's.
func TestStoreDigestSizes(t *testing.T) {
	if len(store.DigestHexSizes) != len(hashes) {
		t.Fatalf("store.DigestHexSizes has %d digests, the hash subdirective %d", len(store.DigestHexSizes), len(hashes))
	}
	for name, h := range hashes {
		if got, want := store.DigestHexSizes[name], 2*h().Size(); got != want {
			t.Errorf("%s: store.DigestHexSizes says %d hex digits, the hash gives %d", name, got, want)
		}
	}
}
