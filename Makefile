# raftlb build, checks and tests. `make test` is what CI runs (as root, see .ci/run).

SHELL       := /bin/bash
.SHELLFLAGS := -euo pipefail -c
GO          ?= go
BIN         := bin/raftlb

# Tools are pinned here and run with `go run`, never added to the module graph.
BUF         := $(GO) run github.com/bufbuild/buf/cmd/buf@v1.75.0

# Packages that need root, namespaces or BPF: tested without -race, which slows them
# past their timing assumptions and adds nothing to code that mostly waits on the kernel.
PRIVILEGED_RE := /(deploy/lab|deploy/e2e|dataplane|agent|cmd/raftlb)(/|$$)
# -count=1: the e2e packages build the raftlb binary in TestMain, which the test cache
# cannot see, so a cached pass could hide a change to the binary.
TEST_FLAGS    ?= -p 2 -count=1 -timeout 20m
BENCH_COUNT   ?= 6

.PHONY: all build generate lint-proto check-generated check-bpf fmt-check vet test test-go bench bench-tools demo lab-down clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/raftlb

## Protobuf

generate:
	$(BUF) generate

lint-proto:
	$(BUF) lint
	@# FILE-level breaking check against the previous commit, when there is one that
	@# already had the API (a first commit or a shallow clone has nothing to compare).
	@if git rev-parse -q --verify 'HEAD~1^{commit}' >/dev/null 2>&1 && \
	    git cat-file -e 'HEAD~1:buf.yaml' 2>/dev/null; then \
		echo "$(BUF) breaking --against .git#ref=HEAD~1"; \
		$(BUF) breaking --against '.git#ref=HEAD~1'; \
	else \
		echo "lint-proto: no HEAD~1 with buf.yaml, skipping buf breaking"; \
	fi

# Generated code is committed: regenerate and fail if that changes anything. The
# comparison is with the tree as it was before regenerating (in CI, the commit), so it
# also works while .proto edits are not yet committed.
check-generated:
	@before=$$(mktemp -d); trap 'rm -rf "$$before"' EXIT; \
	cp -a proto/. "$$before"/; \
	$(BUF) generate; \
	if ! diff -r "$$before" proto >/dev/null; then \
		diff -ru "$$before" proto | head -n 40; \
		echo "check-generated: generated code in proto/ is stale; run make generate"; \
		exit 1; \
	fi; \
	echo "check-generated: proto/ is up to date"
	@# bpf2go output is committed too, and built by clang which CI need not have:
	@# check it exists here; `make check-bpf` regenerates it where clang is installed.
	@for f in $$(grep -rl --include='*.go' 'go:generate.*bpf2go' dataplane 2>/dev/null || true); do \
		d=$$(dirname $$f); \
		if ! ls $$d/*_bpfe[lb].go >/dev/null 2>&1; then echo "check-generated: no bpf2go output next to $$f"; exit 1; fi; \
	done

# Regenerate the BPF objects and compare the generated Go (the .o files depend on the
# clang version, the Go bindings only on the sources).
check-bpf:
	@command -v clang >/dev/null || { echo "check-bpf: clang not installed"; exit 1; }
	$(GO) generate ./dataplane/...
	git diff --exit-code -- 'dataplane/*.go' 'dataplane/**/*.go'

## Go checks

fmt-check:
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard -- '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

test-go:
	@pure=$$($(GO) list ./... | grep -Ev '$(PRIVILEGED_RE)' || true); \
	priv=$$($(GO) list ./... | grep -E '$(PRIVILEGED_RE)' || true); \
	rc=0; \
	if [ -n "$$pure" ]; then echo "go test -race $(TEST_FLAGS) (pure packages)"; $(GO) test -race $(TEST_FLAGS) $$pure || rc=1; fi; \
	if [ -n "$$priv" ]; then echo "go test $(TEST_FLAGS) (privileged packages)"; $(GO) test $(TEST_FLAGS) $$priv || rc=1; fi; \
	exit $$rc

test: check-generated lint-proto fmt-check vet test-go

## Measuring

# The packets/s benchmark's tools (Debian packages), installed when missing.
bench-tools:
	@command -v trafgen >/dev/null && command -v conntrack >/dev/null && command -v nft >/dev/null && command -v perf >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends netsniff-ng conntrack nftables linux-perf >/dev/null; }

# Go benchmarks (medians of BENCH_COUNT runs), rendered into BENCHMARKS.md.
bench: bench-tools
	mkdir -p bin
	$(GO) test -run '^$$' -bench . -benchmem -count $(BENCH_COUNT) ./server/... ./dataplane/... | tee bin/bench-go.txt
	@# Lab benchmarks (root): each run brings up its own lab, so they run apart from the rest.
	$(GO) test -run '^$$' -bench . -count $(BENCH_COUNT) ./deploy/e2e/ | tee -a bin/bench-go.txt
	@# Failover (root, ~4 min): each benchmark runs its own 24 (or 3x20) trials in one go.
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./deploy/e2e/failover/ | tee -a bin/bench-go.txt
	@# Packets/s through a director in a netns lab (root, perf; ~18 min): a section of its own.
	$(GO) run ./deploy/bench/pps -perf-runs 3 -o bin/bench-pps.md
	$(GO) run ./deploy/bench -o BENCHMARKS.md bin/bench-go.txt
	cat bin/bench-pps.md >> BENCHMARKS.md

## Lab

demo: build
	$(BIN) lab demo

lab-down: build
	$(BIN) lab down

clean:
	rm -rf bin
