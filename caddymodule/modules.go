package streamproxy

// The stores of the `http.handlers.stream_proxy.stores` namespace that come
// with the handler: building Caddy with this package brings them all.
import (
	_ "github.com/streamproxy/caddy-stream-proxy/store/azurestore"
	_ "github.com/streamproxy/caddy-stream-proxy/store/filestore"
	_ "github.com/streamproxy/caddy-stream-proxy/store/s3store"
)
