package streamproxy

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
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
//	stream_proxy [<matcher>] [<backend-url>] {
//		to <backend-url>
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
//		transport http {
//			...
//		}
//		header_up [+|-]<field> [<value|regexp> [<replacement>]]
//		max_body_size <size>
//		max_part_size <size>
//		max_parts <n>
//		max_field_size <size>
//		max_part_header_size <size>
//		allow_fields <name...>
//		allow_types <mime-pattern...>
//		hash sha256|sha1|md5|crc32c ...
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name

	if d.NextArg() {
		h.To = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}

	for d.NextBlock(0) {
		switch d.Val() {
		case "to":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if h.To != "" {
				return d.Err("backend already specified")
			}
			h.To = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}

		case "mode":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch d.Val() {
			case ModeForward, ModePerPart, ModeStore:
			default:
				return d.Errf("unknown mode %q (want forward, per_part or store)", d.Val())
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
			for _, p := range h.AllowTypes {
				if !validTypePattern(p) {
					return d.Errf("allow_types: %q is not a media type or type/* pattern", p)
				}
			}

		case "hash":
			h.Hash = append(h.Hash, d.RemainingArgs()...)
			if len(h.Hash) == 0 {
				return d.ArgErr()
			}
			if err := checkHashNames(h.Hash); err != nil {
				return d.Err(err.Error())
			}

		case "transport":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if h.TransportRaw != nil {
				return d.Err("transport already specified")
			}
			name := d.Val()
			modID := "http.reverse_proxy.transport." + name
			unm, err := caddyfile.UnmarshalModule(d, modID)
			if err != nil {
				return err
			}
			rt, ok := unm.(http.RoundTripper)
			if !ok {
				return d.Errf("module %s (%T) is not a RoundTripper", modID, unm)
			}
			h.TransportRaw = caddyconfig.JSONModuleObject(rt, "protocol", name, nil)

		case "header_up":
			if h.HeaderUp == nil {
				h.HeaderUp = new(headers.HeaderOps)
			}
			args := d.RemainingArgs()
			var err error
			switch len(args) {
			case 1:
				err = headers.CaddyfileHeaderOp(h.HeaderUp, args[0], "", nil)
			case 2:
				err = headers.CaddyfileHeaderOp(h.HeaderUp, args[0], args[1], nil)
			case 3:
				err = headers.CaddyfileHeaderOp(h.HeaderUp, args[0], args[1], &args[2])
			default:
				return d.ArgErr()
			}
			if err != nil {
				return d.Err(err.Error())
			}

		case "max_body_size":
			if err := parseSize(d, &h.MaxBodySize); err != nil {
				return err
			}
		case "max_part_size":
			if err := parseSize(d, &h.MaxPartSize); err != nil {
				return err
			}
		case "max_field_size":
			if err := parseSize(d, &h.MaxFieldSize); err != nil {
				return err
			}
		case "max_part_header_size":
			if err := parseSize(d, &h.MaxPartHeaderSize); err != nil {
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

		default:
			return d.Errf("unrecognized subdirective %s", d.Val())
		}
	}
	return nil
}

// unmarshalStore reads `store <dir>`, `store file <dir> {...}` or
// `store s3 {...}` into a store module's JSON. A bare directory is the file
// store's, unless it names a store module; `store ./s3` is a directory.
func unmarshalStore(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	name := d.Val()
	if name != "file" && name != "s3" {
		name = "file"
		d.Prev() // the module's segment starts at "store", then the directory
	}
	unm, err := caddyfile.UnmarshalModule(d, "http.handlers.stream_proxy.stores."+name)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(unm, "module", name, nil), nil
}

// parseSize reads one size argument such as 10GiB or 512KB.
func parseSize(d *caddyfile.Dispenser, dst *int64) error {
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

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
