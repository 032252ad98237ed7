package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// TestCaddyfileAdapt checks testdata/*.caddyfiletest: a Caddyfile, a line of
// dashes, and the JSON that `caddy adapt` must produce from it.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	sep := regexp.MustCompile(`(?m)^-{10,}\s*$`)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			halves := sep.Split(string(data), 2)
			if len(halves) != 2 {
				t.Fatal("want a Caddyfile, a line of dashes, and JSON")
			}
			if !caddytest.CompareAdapt(t, f, halves[0], "caddyfile", strings.TrimSpace(halves[1])) {
				t.Fatal("adapted JSON differs from the golden file (diff above)")
			}
		})
	}
}

// TestExampleValidates adapts Caddyfile.example and provisions every module in
// it, as `caddy adapt --validate` does.
func TestExampleValidates(t *testing.T) {
	data, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(data, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warnings {
		t.Errorf("warning: %s", w.String())
	}
	if !strings.Contains(string(cfgJSON), `"handler":"stream_proxy"`) {
		t.Fatal("the example has no stream_proxy handler")
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(&cfg); err != nil {
		t.Fatal(err)
	}
}
