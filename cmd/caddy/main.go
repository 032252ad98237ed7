// Command caddy runs Caddy with its standard modules plus stream_proxy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/streamproxy/caddy-stream-proxy/caddymodule"
)

func main() {
	caddycmd.Main()
}
