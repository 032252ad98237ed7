package store

import (
	"math"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// ParseSize reads the one size argument (8MiB, 512KB; as humanize reads
// it) of the subdirective d is on into dst, for the Caddyfile parsing of
// stores and of the handler: 1 byte to 8 EiB.
func ParseSize(d *caddyfile.Dispenser, dst *int64) error {
	name := d.Val()
	if !d.NextArg() {
		return d.ArgErr()
	}
	n, err := humanize.ParseBytes(d.Val())
	if err != nil {
		return d.Errf("%s: parsing size %q: %v", name, d.Val(), err)
	}
	if n == 0 || n > math.MaxInt64 {
		return d.Errf("%s must be between 1 byte and 8EiB, got %q", name, d.Val())
	}
	*dst = int64(n)
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}
