package streamproxy

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

func TestRouteExpand(t *testing.T) {
	tmpl := parseRoute("/v1/{http.stream_proxy.form.model}/{http.stream_proxy.part.index}/{env.SP_ROUTE_TEST}")
	t.Setenv("SP_ROUTE_TEST", "a/b c")
	for _, tc := range []struct {
		model, want, code string
	}{
		{"openai/whisper-large-v3", "/v1/openai/whisper-large-v3/3/a/b%20c", ""},
		{"%2e%2e", "/v1/%252e%252e/3/a/b%20c", ""},
		{"x?y#z", "/v1/x%3Fy%23z/3/a/b%20c", ""},
		{"..", "", CodeRouteValueInvalid},
		{"..;a", "", CodeRouteValueInvalid},
		{"a\\b", "", CodeRouteValueInvalid},
		{"a//b", "", CodeRouteValueInvalid},
		{"a\tb", "", CodeRouteValueInvalid},
		{"", "", CodeRouteFieldMissing},
	} {
		repl := caddy.NewReplacer()
		repl.Set("http.stream_proxy.part.index", 3)
		if tc.model != "" {
			repl.Set("http.stream_proxy.form.model", tc.model)
		}
		got, uerr := tmpl.expand(repl, nil)
		switch {
		case tc.code != "" && (uerr == nil || uerr.Code != tc.code || uerr.Status != 400):
			t.Errorf("%q: %q %v, want %s", tc.model, got, uerr, tc.code)
		case tc.code == "" && (uerr != nil || got != tc.want):
			t.Errorf("%q: %q %v, want %q", tc.model, got, uerr, tc.want)
		}
	}
	// A field read but too long to keep says so.
	_, uerr := tmpl.expand(caddy.NewReplacer(), map[string]bool{"model": true})
	if uerr == nil || uerr.Code != CodeRouteFieldMissing || !strings.Contains(uerr.Message, "longer than") {
		t.Errorf("dropped field: %v", uerr)
	}
}
