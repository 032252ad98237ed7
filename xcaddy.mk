# Build, run, test and benchmark caddy-stream-proxy.
#
#   make -f xcaddy.mk run     the example gateway (Caddyfile.example) and its demo backends
#   make -f xcaddy.mk test    vet, every test, and checks of the xcaddy-built binary
#
# xcaddy and versitygw (the S3 server of the tests) are installed into ./bin at
# pinned versions; Azurite (Azure's Blob Storage emulator, for store azure's
# tests) with npm ci, pinned in integration/azurite/package-lock.json. The
# browser test needs Debian's chromium and Node.js: `test` installs them with
# apt-get where they are missing (as root, as CI runs), and playwright-core
# (pinned in integration/browser/package-lock.json) with npm ci.

SHELL          := /bin/bash
.SHELLFLAGS    := -eu -o pipefail -c
MODULE         := github.com/streamproxy/caddy-stream-proxy
CADDY_VERSION  ?= v2.11.9
XCADDY_VERSION ?= v0.4.5
VERSITYGW_VERSION ?= v1.8.0
BIN            := $(CURDIR)/bin
XCADDY         := $(BIN)/xcaddy
CADDY          := $(BIN)/caddy
UPLOADBENCH    := $(BIN)/uploadbench
VERSITYGW      := $(BIN)/versitygw
DEMO_BACKENDS  ?= 127.0.0.1:9001 127.0.0.1:9002
BENCH_SIZE     ?= 2GiB
BENCH_RUNS     ?= 5
FUZZTIME       ?= 10s

.PHONY: build run test browser-deps unit check-binary bench rss slow concurrent s3-concurrent gobench fuzz adapt list-modules clean versitygw azurite

$(XCADDY):
	GOBIN=$(BIN) go install github.com/caddyserver/xcaddy/cmd/xcaddy@$(XCADDY_VERSION)

# versitygw, a real S3 server, for the S3 store's tests and benchmark.
$(VERSITYGW):
	GOBIN=$(BIN) go install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)

## versitygw: the S3 server the tests run, at bin/versitygw
versitygw: $(VERSITYGW)

# Azurite, Microsoft's Azure Storage emulator, for store azure's tests.
AZURITE_DIR := integration/azurite
AZURITE     := $(CURDIR)/$(AZURITE_DIR)/node_modules/.bin/azurite-blob
$(AZURITE): $(AZURITE_DIR)/package-lock.json
	if ! command -v npm >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; fi
	cd $(AZURITE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

## azurite: the Azure Blob Storage emulator the tests run, at integration/azurite/node_modules/.bin/azurite-blob
azurite: $(AZURITE)

# The module is not published, so the lookup of its package path that xcaddy's
# `go get` makes must end in "not found"; some module proxies refuse (403)
# instead, so any proxy error falls through to "off", which means not found.
XCADDY_GOPROXY ?= $(shell go env GOPROXY | sed 's/,direct$$//')|off

# What bin/caddy is built from: the module's Go sources outside the test-only
# and tool directories, and the module's requirements.
CADDY_SOURCES := $(shell find . \( -path ./bin -o -path ./integration -o -path ./cmd -o -path ./.git \) -prune \
	-o -name '*.go' ! -name '*_test.go' -print) go.mod go.sum

## build: Caddy with the standard modules plus stream_proxy, built by xcaddy, at bin/caddy
build: $(CADDY)

# A file target: bin/caddy is rebuilt only when a source it is built from changed.
# Built with go's default flags (xcaddy's own add -trimpath and build tags),
# so that it reuses the packages `go vet` and the tests compiled: on a cold
# cache that saves Caddy's second compile, 3 to 4 minutes on two cores.
XCADDY_GO_BUILD_FLAGS ?= -ldflags '-w -s'
$(CADDY): $(CADDY_SOURCES) | $(XCADDY)
	cd $(BIN) && GOPROXY='$(XCADDY_GOPROXY)' XCADDY_GO_BUILD_FLAGS="$(XCADDY_GO_BUILD_FLAGS)" $(XCADDY) build $(CADDY_VERSION) \
		--output $(CADDY) \
		--with $(MODULE)/caddymodule \
		--replace $(MODULE)=$(CURDIR)

$(UPLOADBENCH): $(shell find cmd/uploadbench -name '*.go' 2>/dev/null) go.mod
	go build -o $(UPLOADBENCH) ./cmd/uploadbench

## run: the gateway on :8080 with Caddyfile.example, and the two demo backends it fronts.
## Ctrl-C stops all three; the recipe then ends with status 0 (Caddy's graceful stop).
run: $(CADDY) $(UPLOADBENCH)
	backends=; for addr in $(DEMO_BACKENDS); do $(UPLOADBENCH) backend -listen $$addr & backends="$$backends $$!"; done; \
	trap 'kill $$backends 2>/dev/null || true' EXIT; \
	trap 'exit 0' INT TERM; \
	$(CADDY) run --config Caddyfile.example --adapter caddyfile

## test: everything CI runs
test: browser-deps unit check-binary

## browser-deps: chromium and node from Debian's packages where missing, playwright-core from npm
BROWSER_DIR := integration/browser
browser-deps:
	if [ ! -x /usr/bin/chromium ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi
	if ! command -v node >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; fi
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --loglevel=error

unit: $(VERSITYGW) $(AZURITE)
	test -z "$$(gofmt -l caddymodule formreader store cmd integration)" || { gofmt -l caddymodule formreader store cmd integration; exit 1; }
	go vet ./...
	# No store and not the form reader imports the handler; the form reader imports no Caddy.
	test -z "$$(go list -deps ./store/... ./formreader/ | grep /caddymodule)" || { echo "the handler imported by:"; go list -deps ./store/... ./formreader/ | grep /caddymodule; exit 1; }
	test -z "$$(go list -deps ./formreader/ | grep caddyserver)" || { echo "formreader imports Caddy"; exit 1; }
	# The handler, the stores and the end-to-end tests under the race detector; the rest plain.
	SP_VERSITYGW=$(VERSITYGW) SP_AZURITE=$(AZURITE) go test -race -count=1 -timeout 25m ./caddymodule/ ./formreader/ ./store/... ./integration/
	SP_VERSITYGW=$(VERSITYGW) SP_AZURITE=$(AZURITE) go test -count=1 -timeout 20m $$(go list ./... | grep -v -e '/caddymodule$$' -e '/integration$$' -e '/store$$' -e '/store/' -e '/formreader$$')

## check-binary: the xcaddy build lists the module and adapts the example
check-binary: build
	$(CADDY) list-modules | grep -qx 'http.handlers.stream_proxy'
	$(CADDY) adapt --config Caddyfile.example --adapter caddyfile --validate >/dev/null
	@echo "bin/caddy: http.handlers.stream_proxy present, Caddyfile.example adapts and validates"

## bench: direct vs reverse_proxy vs stream_proxy, side by side, one table
bench: build $(UPLOADBENCH)
	$(UPLOADBENCH) compare -caddy $(CADDY) -size $(BENCH_SIZE) -runs $(BENCH_RUNS) -modes forward,per_part,store

## rss: the gateway's peak RSS after a small and a large upload
rss: build $(UPLOADBENCH)
	$(UPLOADBENCH) rss -caddy $(CADDY) -sizes 64MiB,4GiB

## slow: SLOW_UPLOADS uploads held open at once, each a small form trickled at SLOW_RATE for
## SLOW_DURATION into a discarding backend, through reverse_proxy then stream_proxy, each in a
## fresh gateway: the gateway's RSS per upload (peak minus idle) side by side; loopback only.
## The open-files limit is raised to the hard limit (uploadbench raises the soft one)
SLOW_UPLOADS  ?= 3000
SLOW_RATE     ?= 4KiB
SLOW_DURATION ?= 15s
slow: build $(UPLOADBENCH)
	ulimit -n "$$(ulimit -Hn)"; \
	$(UPLOADBENCH) slow -caddy $(CADDY) -n $(SLOW_UPLOADS) -rate $(SLOW_RATE) -duration $(SLOW_DURATION)

## concurrent: CONCURRENCY uploads of CONCURRENT_SIZE at once through stream_proxy (forward),
## all verified, then the gateway's peak RSS (VmHWM); loopback only, ports 18080 and 19001
CONCURRENCY     ?= 256
CONCURRENT_SIZE ?= 64MiB
concurrent: build $(UPLOADBENCH)
	printf '{\n\tadmin off\n}\nhttp://127.0.0.1:18080 {\n\tstream_proxy http://127.0.0.1:19001\n}\n' > $(BIN)/concurrent.Caddyfile
	$(UPLOADBENCH) backend -listen 127.0.0.1:19001 2>/dev/null & backend=$$!; \
	$(CADDY) run --config $(BIN)/concurrent.Caddyfile --adapter caddyfile >/dev/null 2>&1 & gateway=$$!; \
	trap 'kill $$backend $$gateway 2>/dev/null' EXIT INT TERM; \
	sleep 2; \
	$(UPLOADBENCH) upload -url http://127.0.0.1:18080/up -size $(CONCURRENT_SIZE) -files 1 -concurrency $(CONCURRENCY) -verify | grep -E "^(aggregate|uploadbench)"; \
	grep VmHWM /proc/$$gateway/status

## s3-concurrent: S3_CONCURRENCY uploads of S3_CONCURRENT_SIZE at once through stream_proxy
## (store s3, part_size 8MiB, max_buffers S3_BUFFERS) into versitygw, then the gateway's peak
## RSS (VmHWM) beside max_buffers x part_size + 100MiB; loopback only, ports 18081 and 19070
S3_CONCURRENCY     ?= 64
S3_CONCURRENT_SIZE ?= 256MiB
S3_BUFFERS         ?= 32
s3-concurrent: build $(UPLOADBENCH) $(VERSITYGW)
	rm -rf $(BIN)/s3-root && mkdir -p $(BIN)/s3-root/bench
	printf '{\n\tadmin off\n}\nhttp://127.0.0.1:18081 {\n\tstream_proxy {\n\t\tmode store\n\t\tstore s3 {\n\t\t\tbucket bench\n\t\t\tendpoint http://127.0.0.1:19070\n\t\t\tuse_path_style\n\t\t\taccess_key_id bench\n\t\t\tsecret_access_key bench-secret\n\t\t\tpart_size 8MiB\n\t\t\tmax_buffers $(S3_BUFFERS)\n\t\t}\n\t}\n}\n' > $(BIN)/s3.Caddyfile
	ROOT_ACCESS_KEY=bench ROOT_SECRET_KEY=bench-secret $(VERSITYGW) --port 127.0.0.1:19070 posix $(BIN)/s3-root >/dev/null 2>&1 & s3=$$!; \
	$(CADDY) run --config $(BIN)/s3.Caddyfile --adapter caddyfile >/dev/null 2>&1 & gateway=$$!; \
	trap 'kill $$s3 $$gateway 2>/dev/null; rm -rf $(BIN)/s3-root' EXIT INT TERM; \
	sleep 2; \
	$(UPLOADBENCH) upload -url http://127.0.0.1:18081/up -size $(S3_CONCURRENT_SIZE) -files 1 -concurrency $(S3_CONCURRENCY) | grep -E "^(aggregate|uploadbench)"; \
	grep VmHWM /proc/$$gateway/status; \
	echo "bound: $(S3_BUFFERS) x 8MiB + 100MiB = $$(( $(S3_BUFFERS) * 8 + 100 )) MiB"

## gobench: Go benchmarks of the hot path
gobench:
	go test -run '^$$' -bench . -benchmem ./caddymodule

## fuzz: the form reader's fuzz target, then the forward path's, each for FUZZTIME
fuzz:
	go test -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME) ./formreader
	go test -run '^$$' -fuzz FuzzForward -fuzztime $(FUZZTIME) ./caddymodule

## adapt: the example as JSON
adapt: build
	$(CADDY) adapt --config Caddyfile.example --adapter caddyfile --pretty

list-modules: build
	$(CADDY) list-modules

clean:
	rm -rf $(BIN)
