package streamproxy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    string // JSON of the handler, or "" when an error is expected
		err     string // part of the expected error
		invalid string // part of the error Validate gives for what parsed
	}{
		{
			name:  "backend as argument",
			input: `stream_proxy http://127.0.0.1:9000/upload`,
			want:  `{"proxy":{"handler":"reverse_proxy","rewrite":{"uri":"/upload?"},"upstreams":[{"dial":"127.0.0.1:9000"}]}}`,
		},
		{
			name:  "min_rate with a grace",
			input: "stream_proxy {\n mode store\n store /up\n min_rate 1KiB 45s\n}",
			want:  `{"mode":"store","store":{"module":"file","root":"/up"},"min_rate":1024,"min_rate_grace":45000000000}`,
		},
		{
			name:  "min_rate off",
			input: "stream_proxy {\n mode store\n store /up\n min_rate off\n}",
			want:  `{"mode":"store","store":{"module":"file","root":"/up"},"min_rate":-1}`,
		},
		{name: "min_rate without a rate", input: "stream_proxy {\n min_rate\n}", err: "wrong argument count"},
		{name: "min_rate of zero", input: "stream_proxy {\n min_rate 0\n}", err: "at least 1 byte per second"},
		{name: "min_rate off with a grace", input: "stream_proxy {\n min_rate off 10s\n}", err: "wrong argument count"},
		{name: "min_rate with a bad grace", input: "stream_proxy {\n min_rate 500 soon\n}", err: "parsing grace"},
		{name: "min_rate with a negative grace", input: "stream_proxy {\n min_rate 500 -1s\n}", err: "grace must be positive"},
		{name: "min_rate with three arguments", input: "stream_proxy {\n min_rate 500 10s 20s\n}", err: "wrong argument count"},
		{
			name:  "upstreams with different paths",
			input: "stream_proxy {\n to http://a:9000/v1?x=1 http://b:9000/v2?x=1\n}",
			err:   "every upstream must name the same path",
		},
		{
			name:  "upstreams with different schemes",
			input: "stream_proxy {\n to http://a:9000/v1 https://b:9443/v1\n}",
			err:   "must use the same scheme",
		},
		{
			name: "pool of one scheme",
			input: `stream_proxy a:9000 {
				to b:9000
				lb_policy least_conn
				lb_retries 2
				health_uri /healthz
				health_interval 5s
				fail_duration 30s
				max_fails 1
				trusted_proxies 10.0.0.0/8
				header_down -Server
			}`,
			want: `{"proxy":{"handler":"reverse_proxy","headers":{"response":{"delete":["Server"]}},` +
				`"health_checks":{"active":{"interval":5000000000,"uri":"/healthz"},"passive":{"fail_duration":30000000000,"max_fails":1}},` +
				`"load_balancing":{"retries":2,"selection_policy":{"policy":"least_conn"}},"trusted_proxies":["10.0.0.0/8"],` +
				`"upstreams":[{"dial":"a:9000"},{"dial":"b:9000"}]}}`,
		},
		{
			name: "every subdirective",
			input: `stream_proxy {
				to http://{env.BACKEND}:9000
				mode forward
				max_body_size 10GiB
				max_part_size 512KB
				max_parts 50
				max_field_size 1KiB
				max_part_header_size 8KiB
				max_form_header_size 256KiB
				header_up X-Tenant {http.request.header.X-Tenant}
				header_up -Cookie
			}`,
			want: `{"proxy":{"handler":"reverse_proxy","headers":{"request":{"delete":["Cookie"],"set":{"X-Tenant":["{http.request.header.X-Tenant}"]}}},` +
				`"upstreams":[{"dial":"{env.BACKEND}:9000"}]},"mode":"forward",` +
				`"max_body_size":10737418240,"max_part_size":512000,"max_parts":50,"max_field_size":1024,"max_part_header_size":8192,"max_form_header_size":262144}`,
		},
		{
			name: "transport block",
			input: `stream_proxy http://b:1 {
				transport http {
					dial_timeout 2s
					response_header_timeout 30s
				}
			}`,
			want: `{"proxy":{"handler":"reverse_proxy","transport":{"dial_timeout":2000000000,"protocol":"http","response_header_timeout":30000000000},"upstreams":[{"dial":"b:1"}]}}`,
		},
		{name: "bad scheme", input: `stream_proxy ftp://a:1`, err: "unsupported URL scheme"},
		{name: "request_buffers", input: "stream_proxy http://a:1 {\n request_buffers 1MB\n}", err: "unrecognized subdirective request_buffers"},
		{name: "handle_response", input: "stream_proxy http://a:1 {\n handle_response {\n }\n}", err: "unrecognized subdirective handle_response"},
		{name: "rewrite", input: "stream_proxy http://a:1 {\n rewrite /x\n}", err: "unrecognized subdirective rewrite"},
		{name: "to without value", input: "stream_proxy {\n to\n}", err: "wrong argument count"},
		{name: "unknown mode", input: "stream_proxy http://a:1 {\n mode fast\n}", invalid: `unknown mode "fast"`},
		{
			name: "store mode",
			input: `stream_proxy {
				mode store
				store /var/uploads {
					file_mode 0600
					layout flat
				}
				allow_fields audio meta
				allow_types audio/* application/json
				hash sha256 crc32c
			}`,
			want: `{"mode":"store","store":{"file_mode":"0600","layout":"flat","module":"file","root":"/var/uploads"},` +
				`"allow_fields":["audio","meta"],"allow_types":["audio/*","application/json"],"hash":["sha256","crc32c"]}`,
		},
		{name: "unknown store option", input: "stream_proxy {\n store /x {\n owner me\n }\n}", err: "unrecognized store option owner"},
		{name: "store twice", input: "stream_proxy {\n store /x\n store /y\n}", err: "store already specified"},
		{
			name:  "store file",
			input: "stream_proxy {\n mode store\n store file /var/up {\n layout flat\n }\n}",
			want:  `{"mode":"store","store":{"layout":"flat","module":"file","root":"/var/up"}}`,
		},
		{
			name:  "a directory named like nothing else",
			input: "stream_proxy {\n mode store\n store ./s3\n}",
			want:  `{"mode":"store","store":{"module":"file","root":"./s3"}}`,
		},
		{
			name: "store s3",
			input: `stream_proxy {
				mode store
				store s3 {
					bucket uploads
					prefix in/
					endpoint http://127.0.0.1:7070
					region eu-west-3
					use_path_style
					access_key_id {env.S3_KEY}
					secret_access_key {env.S3_SECRET}
					part_size 16MiB
					max_buffers 64
				}
			}`,
			want: `{"mode":"store","store":{"access_key_id":"{env.S3_KEY}","bucket":"uploads","endpoint":"http://127.0.0.1:7070",` +
				`"max_buffers":64,"module":"s3","part_size":16777216,"prefix":"in/","region":"eu-west-3",` +
				`"secret_access_key":"{env.S3_SECRET}","use_path_style":true}}`,
		},
		{name: "store file without dir", input: "stream_proxy {\n store file\n}", err: "wrong argument count"},
		{name: "store s3 with an argument", input: "stream_proxy {\n store s3 bucket\n}", err: "wrong argument count"},
		{name: "unknown s3 option", input: "stream_proxy {\n store s3 {\n acl public\n }\n}", err: "unrecognized s3 store option acl"},
		{name: "bad max_buffers", input: "stream_proxy {\n store s3 {\n max_buffers none\n }\n}", err: "positive whole number"},
		{
			name:  "cleanup_budget and backend_stall_timeout",
			input: "stream_proxy {\n mode store\n backend_stall_timeout 90s\n store s3 {\n bucket b\n cleanup_budget 5m\n }\n}",
			want:  `{"mode":"store","store":{"bucket":"b","cleanup_budget":300000000000,"module":"s3"},"backend_stall_timeout":90000000000}`,
		},
		{name: "bad cleanup_budget", input: "stream_proxy {\n store s3 {\n cleanup_budget soon\n }\n}", err: "positive duration"},
		{name: "zero backend_stall_timeout", input: "stream_proxy http://a:1 {\n backend_stall_timeout 0s\n}", err: "positive duration"},
		{name: "backend_stall_timeout without value", input: "stream_proxy http://a:1 {\n backend_stall_timeout\n}", err: "wrong argument count"},
		{name: "use_path_style with a value", input: "stream_proxy {\n store s3 {\n use_path_style yes\n }\n}", err: "wrong argument count"},
		{name: "unknown hash", input: "stream_proxy http://a:1 {\n hash sha3\n}", invalid: `unknown hash "sha3"`},
		{name: "hash twice", input: "stream_proxy http://a:1 {\n hash md5 md5\n}", invalid: "listed twice"},
		{name: "hash without names", input: "stream_proxy http://a:1 {\n hash\n}", err: "wrong argument count"},
		{name: "bad type pattern", input: "stream_proxy http://a:1 {\n allow_types audio\n}", invalid: "not a media type"},
		{name: "allow_fields without names", input: "stream_proxy http://a:1 {\n allow_fields\n}", err: "wrong argument count"},
		{name: "bad size", input: "stream_proxy http://a:1 {\n max_body_size lots\n}", err: "parsing size"},
		{name: "zero size", input: "stream_proxy http://a:1 {\n max_part_size 0\n}", err: "between 1 byte"},
		{name: "size with extra arg", input: "stream_proxy http://a:1 {\n max_part_size 1MB 2MB\n}", err: "wrong argument count"},
		{name: "bad part count", input: "stream_proxy http://a:1 {\n max_parts -3\n}", err: "positive whole number"},
		{name: "unknown subdirective", input: "stream_proxy http://a:1 {\n buffer_size 1MB\n}", err: "unrecognized subdirective buffer_size"},
		{name: "unknown transport", input: "stream_proxy http://a:1 {\n transport carrier_pigeon\n}", err: "carrier_pigeon"},
		{name: "header_up without field", input: "stream_proxy http://a:1 {\n header_up\n}", err: "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.invalid != "" {
				// Parsed as written; Validate refuses it.
				h.proxy = &reverseproxy.Handler{}
				if h.Mode == "" {
					h.Mode = ModeForward // Provision's default
				}
				if err := h.Validate(); err == nil || !strings.Contains(err.Error(), tc.invalid) {
					t.Fatalf("Validate: error %v, want one containing %q", err, tc.invalid)
				}
				return
			}
			got, _ := json.Marshal(&h)
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}
