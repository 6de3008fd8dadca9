# The Makefile calls scripts in deploy/local; it does not become a shell program itself.
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/maas-platform/maas/pkg/obs.Version=$(VERSION)

.PHONY: help build run test bench faults fmt vet lint clean

help: ## show this help
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## build gateway, control and worker into bin/
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./gateway ./control ./worker

run: build ## start the whole platform locally (PostgreSQL and Redis under .data/)
	@bash deploy/local/run.sh

test: ## vet + every test (unit, integration, end to end) against real PostgreSQL and Redis
	@bash deploy/local/test.sh

bench: build ## the standard benchmark suite (bench/results/)
	@bash deploy/local/bench.sh $(BENCH_ARGS)

faults: build ## the fault suite with full outages and the 10-minute soak (bench/results/faults.md)
	@bash deploy/local/faults.sh $(FAULTS_ARGS)

fmt: ## gofmt the tree
	gofmt -w $$(git ls-files '*.go')

vet: ## go vet
	$(GO) vet ./...

clean: ## remove build output (keeps .data/)
	rm -rf $(BIN)
