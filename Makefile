# Gatehouse. `make run` starts the demo (gatehouse dev); `make test` runs every test.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
STATICCHECK_VERSION ?= v0.8.2

.PHONY: all build run test test-go test-policies bench bench-scale bench-boot lint fuzz soak clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/gatehouse ./cmd/gatehouse
	$(GO) build -o bin/loadgen ./cmd/loadgen

## run: control endpoint + sidecar on the embedded demo world
run: build
	./bin/gatehouse dev

## test: vet, Go tests (race detector), and the shipped policies' Rego tests
test: build test-go test-policies

test-go:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

test-policies: build
	./bin/gatehouse test --coverage --threshold 90 policies
	./bin/gatehouse check policies

## fuzz: each fuzz target in turn for $(FUZZTIME); `make test` runs their seed corpora
FUZZTIME     ?= 30s
FUZZMINIMIZE ?= 10x
# bbolt files and fsyncs dominate some targets: keep their temp files in RAM
FUZZTMP      ?= $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo $${TMPDIR:-/tmp})
FUZZ_TARGETS := envoy:FuzzCheckRequest envoy:FuzzHTTPService token:FuzzVerifyToken token:FuzzTokenClaims \
	replica:FuzzSyncStream bundle:FuzzOpenBundle control:FuzzWrite
fuzz:
	@failed=""; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t#*:}; \
		echo "== $$fn (./$$pkg, $(FUZZTIME))"; \
		TMPDIR=$(FUZZTMP) $(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) \
			-fuzzminimizetime $(FUZZMINIMIZE) ./$$pkg || failed="$$failed $$fn"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failing targets:$$failed (inputs under <pkg>/testdata/fuzz/)"; exit 1; fi

## soak: SOAK_DURATION (default 5m) of load at 70% of peak with a control write every second and a
## policy edit every 10 s; fails on errors, wrong decisions, RSS or goroutine growth (not in CI)
SOAK_DURATION ?= 5m
soak: build
	$(GO) build -o bin/soak ./bench/soak
	SOAK_DURATION=$(SOAK_DURATION) bin/soak

## bench: end-to-end load, hot and cold, against a no-op ext_authz floor in the same run
## (BENCH_1M=1 adds the 1M-grant world, BENCH_PEER=1 opa-envoy-plugin; see bench/README.md)
bench: build
	bench/bench.sh

## bench-scale: control write throughput at concurrency 1 and 16 in one run (group commit; issue 11)
bench-scale:
	$(GO) test -run '^$$' -bench 'GroupCommit$$' -benchtime 9x ./control/

## bench-boot: a new sidecar's bootstrap at 200k and 1M grants (time, peak RSS, bytes per entity) and
## one control endpoint's fan-out to 2,000 change streams (BENCH_BOOT_SIZES, BENCH_FOLLOWERS; see bench/boot.sh)
bench-boot:
	bench/boot.sh

## lint: formatting (gofmt, Rego fmt), vet, staticcheck, a doc.go in every
## package, no non-test file over 620 lines without "<file> is long ... on purpose" at its top,
## every source path README.md names exists
lint: build
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@for d in $$($(GO) list -f '{{.Dir}}' ./...); do [ -f "$$d/doc.go" ] || { echo "no doc.go in $$d"; exit 1; }; done
	@for f in $$(git ls-files '*.go' | grep -v '_test\.go$$'); do n=$$(wc -l < "$$f"); \
		if [ "$$n" -gt 620 ] && ! head -1 "$$f" | grep -q ' is long .* on purpose'; then echo "$$f: $$n lines, no reason at its top"; exit 1; fi; done
	@for f in $$(grep -oE '[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+\.(go|rego)' README.md | sort -u); do \
		[ -e "$$f" ] || { echo "README.md names $$f, which does not exist"; exit 1; }; done
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	./bin/gatehouse fmt --list --fail policies

clean:
	rm -rf bin var
