package streamproxy

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"

	"github.com/streamproxy/caddy-stream-proxy/store"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("stream_proxy", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("stream_proxy", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	sp := new(Handler)
	err := sp.UnmarshalCaddyfile(h.Dispenser)
	return sp, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	stream_proxy [<matcher>] [<upstreams...>] {
//		to <upstreams...>
//		mode forward|per_part|store
//		store [file] <dir> {
//			file_mode <octal>
//			dir_mode <octal>
//			layout date|flat
//		}
//		store s3 {
//			bucket <name>
//			prefix <key-prefix>
//			endpoint <url>
//			region <region>
//			use_path_style
//			access_key_id <id>
//			secret_access_key <secret>
//			part_size <size>
//			max_buffers <n>
//		}
//		store azure {
//			container <name>
//			prefix <name-prefix>
//			endpoint <url>
//			account_name <name>
//			account_key <key>
//			connection_string <string>
//			block_size <size>
//			max_buffers <n>
//		}
//		max_body_size <size>
//		max_part_size <size>
//		max_parts <n>
//		max_field_size <size>
//		max_part_header_size <size>
//		max_form_header_size <size>
//		allow_fields <name...>
//		allow_types <mime-pattern...>
//		verify_types
//		hash sha256|sha1|md5|crc32c ...
//		min_rate <size>|off [<grace>]
//		backend_stall_timeout <duration>
//
//		# reverse_proxy's own, with its syntax and meaning
//		lb_policy, lb_retries, lb_try_duration, lb_try_interval, lb_retry_match
//		health_*, fail_duration, max_fails, unhealthy_*
//		dynamic, trusted_proxies, header_up, header_down, transport
//		flush_interval, verbose_logs
//	}
//
// An upstream is host:port or scheme://host:port[/path[?query]]. A path
// (placeholders allowed) replaces the client's path and query in every
// backend request; without one, the client's are kept. Every upstream must
// name the same path.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name

	rp := proxyTokens{directive: d.Token()}
	for d.NextArg() {
		if err := rp.addUpstream(d); err != nil {
			return err
		}
	}

	for d.NextBlock(0) {
		switch d.Val() {
		case "to":
			if !d.NextArg() {
				return d.ArgErr()
			}
			for {
				if err := rp.addUpstream(d); err != nil {
					return err
				}
				if !d.NextArg() {
					break
				}
			}

		case "mode":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Mode = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}

		case "store":
			if h.StoreRaw != nil {
				return d.Err("store already specified")
			}
			raw, err := unmarshalStore(d)
			if err != nil {
				return err
			}
			h.StoreRaw = raw

		case "allow_fields":
			h.AllowFields = append(h.AllowFields, d.RemainingArgs()...)
			if len(h.AllowFields) == 0 {
				return d.ArgErr()
			}

		case "allow_types":
			h.AllowTypes = append(h.AllowTypes, d.RemainingArgs()...)
			if len(h.AllowTypes) == 0 {
				return d.ArgErr()
			}

		case "verify_types":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.VerifyTypes = true

		case "hash":
			h.Hash = append(h.Hash, d.RemainingArgs()...)
			if len(h.Hash) == 0 {
				return d.ArgErr()
			}

		case "max_body_size":
			if err := store.ParseSize(d, &h.MaxBodySize); err != nil {
				return err
			}
		case "max_part_size":
			if err := store.ParseSize(d, &h.MaxPartSize); err != nil {
				return err
			}
		case "max_field_size":
			if err := store.ParseSize(d, &h.MaxFieldSize); err != nil {
				return err
			}
		case "max_part_header_size":
			if err := store.ParseSize(d, &h.MaxPartHeaderSize); err != nil {
				return err
			}
		case "backend_stall_timeout":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("backend_stall_timeout must be a positive duration, got %q", d.Val())
			}
			h.BackendStallTimeout = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "max_form_header_size":
			if err := store.ParseSize(d, &h.MaxFormHeaderSize); err != nil {
				return err
			}
		case "max_parts":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("max_parts must be a positive whole number, got %q", d.Val())
			}
			h.MaxParts = n
			if d.NextArg() {
				return d.ArgErr()
			}
		case "min_rate":
			if err := h.parseMinRate(d); err != nil {
				return err
			}

		default:
			if !proxySubdirective(d.Val()) {
				return d.Errf("unrecognized subdirective %s", d.Val())
			}
			rp.block = append(rp.block, d.NextSegment()...)
		}
	}

	if len(rp.upstreams) == 0 && len(rp.block) == 0 {
		return nil
	}
	proxy, err := rp.handler()
	if err != nil {
		return err
	}
	h.ProxyRaw = caddyconfig.JSONModuleObject(proxy, "handler", "reverse_proxy", nil)
	return nil
}

// proxySubdirective reports whether name is one of reverse_proxy's
// subdirectives that stream_proxy passes on to it. The others would undo
// what stream_proxy is for: request_buffers holds bodies in memory, rewrite
// and method change the request it builds, handle_response and
// replace_status take over the answer it reports.
func proxySubdirective(name string) bool {
	switch name {
	case "dynamic", "fail_duration", "max_fails", "trusted_proxies", "header_up", "header_down",
		"transport", "flush_interval", "verbose_logs":
		return true
	}
	return strings.HasPrefix(name, "lb_") || strings.HasPrefix(name, "health_") || strings.HasPrefix(name, "unhealthy_")
}

// proxyTokens gathers the tokens of the reverse_proxy that stream_proxy
// provisions inside itself: the upstreams, stripped of their paths, and the
// subdirectives passed through, for reverse_proxy's own parser.
type proxyTokens struct {
	directive caddyfile.Token
	upstreams []caddyfile.Token
	block     []caddyfile.Token
	uri       string // the upstreams' path and query, if any
	hasURI    bool   // uri was set by the first upstream
}

// addUpstream takes the current token as an upstream. A URL's path and query
// go to the rewrite, since reverse_proxy's upstreams are addresses only.
func (p *proxyTokens) addUpstream(d *caddyfile.Dispenser) error {
	addr, uri := d.Val(), ""
	if scheme, rest, ok := strings.Cut(addr, "://"); ok {
		host := rest
		if i := strings.IndexAny(rest, "/?"); i >= 0 {
			host, uri = rest[:i], rest[i:]
			if !strings.Contains(uri, "?") {
				uri += "?" // a path replaces the client's query too
			}
		}
		addr = scheme + "://" + host
		if scheme == "http" && strings.Contains(host, "{") {
			addr = host // reverse_proxy takes placeholders in addresses without a scheme; http is its default
		}
	}
	if !p.hasURI {
		p.uri, p.hasURI = uri, true
	} else if uri != p.uri {
		return d.Errf("upstream %s: every upstream must name the same path (%q, not %q)", d.Val(), p.uri, uri)
	}
	tok := p.directive // on the directive's line, where reverse_proxy reads upstreams
	tok.Text = addr
	p.upstreams = append(p.upstreams, tok)
	return nil
}

// handler parses the gathered tokens with reverse_proxy's own parser.
func (p *proxyTokens) handler() (*reverseproxy.Handler, error) {
	tokens := []caddyfile.Token{p.directive}
	tokens[0].Text = "reverse_proxy"
	tokens = append(tokens, p.upstreams...)
	if len(p.block) > 0 {
		open, last := p.directive, p.block[len(p.block)-1]
		open.Text = "{"
		closing := last
		closing.Text = "}"
		closing.Line = last.Line + last.NumLineBreaks() + 1
		tokens = append(append(append(tokens, open), p.block...), closing)
	}
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
		return nil, err
	}
	if p.uri != "" {
		rp.Rewrite = &rewrite.Rewrite{URI: p.uri}
	}
	return rp, nil
}

// unmarshalStore reads `store <dir>`, `store file <dir> {...}`,
// `store s3 {...}` or `store azure {...}` into a store module's JSON. A bare directory is the file
// store's, unless it names a store module; `store ./s3` is a directory.
func unmarshalStore(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	name := d.Val()
	if name != "file" && name != "s3" && name != "azure" {
		name = "file"
		d.Prev() // the module's segment starts at "store", then the directory
	}
	unm, err := caddyfile.UnmarshalModule(d, "http.handlers.stream_proxy.stores."+name)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(unm, "module", name, nil), nil
}

// parseMinRate reads `min_rate <size>|off [<grace>]`: the size is per
// second (500B, 1KiB).
func (h *Handler) parseMinRate(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	if d.Val() == "off" {
		h.MinRate = minRateOff
		if d.NextArg() {
			return d.ArgErr()
		}
		return nil
	}
	n, err := humanize.ParseBytes(d.Val())
	if err != nil {
		return d.Errf("min_rate: parsing size %q: %v", d.Val(), err)
	}
	if n == 0 || n > math.MaxInt64 {
		return d.Errf("min_rate must be at least 1 byte per second, or off, got %q", d.Val())
	}
	h.MinRate = int64(n)
	if d.NextArg() {
		grace, err := caddy.ParseDuration(d.Val())
		if err != nil {
			return d.Errf("min_rate: parsing grace %q: %v", d.Val(), err)
		}
		if grace <= 0 {
			return d.Errf("min_rate: grace must be positive, got %q", d.Val())
		}
		h.MinRateGrace = caddy.Duration(grace)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
