# Gatehouse. `make run` starts the demo (gatehouse dev); `make test` runs every test.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
STATICCHECK_VERSION ?= v0.8.2

.PHONY: all build run test test-go test-policies bench lint clean

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

## bench: end-to-end load, hot and cold, against a no-op ext_authz floor in the same run
## (BENCH_1M=1 adds the 1M-grant world, BENCH_PEER=1 opa-envoy-plugin; see bench/README.md)
bench: build
	bench/bench.sh

## lint: formatting (gofmt, Rego fmt), vet, staticcheck
lint: build
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	./bin/gatehouse fmt --list --fail policies

clean:
	rm -rf bin var
