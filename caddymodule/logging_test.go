package streamproxy

import (
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Part-level detail is logged at debug level, with structured fields and
// never a byte of the body or a credential.
func TestLogs(t *testing.T) {
	be := echoBackend(t)
	h := provision(t, &Handler{ProxyRaw: proxyTo(be.URL), MaxPartSize: 8})
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)

	r := formRequest(twoFiles)
	r.Header.Set("Authorization", "Bearer secret-token")
	w := serve(h, r, failNext)
	if w.Code != 413 {
		t.Fatalf("status %d", w.Code)
	}
	var sawPart, sawRefusal, sawSummary bool
	for _, e := range logs.All() {
		ctx := e.ContextMap()
		for _, v := range ctx {
			if s, ok := v.(string); ok && (strings.Contains(s, "RIFF") || strings.Contains(s, "secret-token")) {
				t.Errorf("log %q carries a body or credential: %v", e.Message, ctx)
			}
		}
		switch e.Message {
		case "part done":
			sawPart = ctx["field"] == "model" && ctx["bytes"] == int64(4)
		case "upload refused":
			sawRefusal = ctx["code"] == CodePartTooLarge && ctx["field"] == "audio" && e.Level == zapcore.DebugLevel
		case "upload finished":
			sawSummary = true
		}
	}
	if !sawPart || !sawRefusal || !sawSummary {
		t.Errorf("part=%v refusal=%v summary=%v in %d entries", sawPart, sawRefusal, sawSummary, logs.Len())
	}
}
