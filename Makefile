# One entry point for building, testing and demonstrating the toolkit. CI runs `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
WASM := target/wasm32-wasip1/wasm/header_filter.wasm

.PHONY: help setup setup-rust control-plane gateway-api nodes kwok cluster-up cluster-down demo-cluster cosign go-example build image test test-fast lint lint-filters demo demo-istio docs bench-oci bench-envoy bench-cluster fuzz fuzz-merge clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: ## Install what is missing: wasm32-wasip1, Envoy 1.40, docker-registry, htpasswd, oras-py, curl, node/npm
	@scripts/setup

# Only the Rust targets and components: what test-fast and lint need.
setup-rust:
	@scripts/setup --rust

control-plane: ## Build etcd, kube-apiserver, kube-controller-manager, kubectl, istiod, pilot-agent, istioctl (Go modules; cached)
	@scripts/control-plane-build >/dev/null

gateway-api: ## Fetch the Gateway API CRDs (standard channel) from their Go module, at the version the Istio pin requires (cached)
	@scripts/gateway-api-crds >/dev/null

nodes: ## Build containerd, its runc shim, ctr and CoreDNS for the local cluster's nodes (Go modules; cached)
	@scripts/node-build >/dev/null

kwok: ## Build kwok from its Go module (simulated Nodes and Pods for bench-cluster; cached)
	@scripts/kwok-build >/dev/null

cluster-up: setup control-plane nodes ## A real 2-node cluster (kubelet, containerd, runc, kube-proxy, CoreDNS) in CLUSTER_DIR (default target/cluster)
	@scripts/cluster up $(or $(CLUSTER_DIR),$(CURDIR)/target/cluster)

cluster-down: ## Stop the cluster in CLUSTER_DIR and restore the host
	@scripts/cluster down $(or $(CLUSTER_DIR),$(CURDIR)/target/cluster)

cosign: ## Build cosign from its Go module (the signature tests' independent client; cached)
	@scripts/cosign-build >/dev/null

go-example: ## Build the Go examples (proxy-wasm Go SDK, wasip1): target/go-filter/go_filter.wasm and the like
	@for e in go-filter go-tcp-filter go-grpc-filter; do \
	  w=$$(scripts/go-example-build $$e) && ls -l "$$w" | awk '{print "built", $$NF, $$5, "bytes"}' || exit 1; \
	done

build: setup ## Build the filter: target/wasm32-wasip1/wasm/header_filter.wasm
	$(CARGO) build --profile wasm --target wasm32-wasip1 -p header-filter
	@ls -l $(WASM) | awk '{print "built", $$NF, $$5, "bytes"}'

image: setup ## The wasmctl image (static binary, FROM scratch) with buildah; PUSH=REF [PLAIN_HTTP=1] pushes it
	@scripts/image $(if $(PUSH),--push $(PUSH),) $(if $(PLAIN_HTTP),--plain-http,)

# clippy checks every crate and dependency in check mode (metadata only): artifacts of their own,
# beside the test builds, with the same features (--workspace --all-targets, as `cargo test
# --workspace` resolves them), so build scripts and proc macros are shared.
lint: setup-rust lint-filters ## cargo fmt --check, then clippy -D warnings on every crate and target (host) and on the filters (wasm)
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The filters' no-panic rule (clippy denies unwrap/expect/panic) is checked on every test run; the
# whole-workspace clippy lives in `lint`, so a test run does not compile every dependency twice.
lint-filters: setup-rust
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --target wasm32-wasip1 -p header-filter -p callout-filter -p minimal-filter -p tcp-filter -p grpc-filter -- -D warnings

test: setup control-plane gateway-api nodes cosign kwok lint-filters ## fmt, the filters' clippy, then every test (filter, harness, Envoy, registry, Istio, a real cluster; as root)
	E2E_WASMCTL_BIN="$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug/wasmctl" $(CARGO) test --workspace

# The integration tests that start no external process: wasmctl's render tests (not
# render_schemas: Istio's CRDs come from the control-plane build, and kubectl), the harness's own,
# the fuzz corpora replayed, and the e2e tests that drive compiled modules in the harness or
# `wasmctl run`. Every other e2e test starts Envoy, a registry, an API server, istiod, a
# cluster, oras, cosign, wrk, npm or git.
FAST_TESTS := render_errors render_snapshots render_envoy_types failures host_calls foreign_functions replay harness_filter harness_host_calls wasmctl_run

# The same cargo profile and features as `make test` (--workspace; only the targets narrowed), so
# one never rebuilds what the other built. --doc cannot share an invocation with other targets.
test-fast: setup-rust ## Every test that starts no external process: unit tests of every crate, harness, render, plan, fuzz corpora, doc tests
	E2E_WASMCTL_BIN="$${CARGO_TARGET_DIR:-$(CURDIR)/target}/debug/wasmctl" $(CARGO) test --workspace --lib --bins $(addprefix --test ,$(FAST_TESTS))
	$(CARGO) test --workspace --doc

demo: setup ## Registry, push, node agent, Envoy by ECDS, curl, then a hot update under the same tag; stop all
	@scripts/demo

demo-istio: setup control-plane ## The real control plane: render | kubectl apply, the three delivery modes through istiod, updates; stop all
	@scripts/demo-istio

demo-cluster: setup control-plane nodes ## The whole path on a real 2-node cluster: injection, agent, controller, curl from a Pod, an upgrade; then down
	@scripts/demo-cluster

docs: setup ## Rewrite the docs' transcripts (README.md), module sizes and digests (every doc) from a real run
	UPDATE_DOCS=1 $(CARGO) test -p e2e --test docs_figures -- --nocapture

bench-oci: setup ## Push/pull time of wasmctl vs oras-py, 1 MB and 20 MB modules (not part of test)
	@scripts/bench-oci

bench-envoy: setup ## Envoy load benchmark -> docs/bench (about 15 min with --compare; QUICK=1: under 2 min, -> target/bench-quick)
	@scripts/bench-envoy $(if $(QUICK),--quick,)

bench-cluster: setup control-plane kwok ## The controller at 10, 100, 1000 kwok nodes on the real control plane -> docs/bench-cluster (BEFORE=WASMCTL compares; QUICK=1: 10, 100)
	@scripts/bench-cluster $(if $(QUICK),--quick,) $(if $(BEFORE),--before $(BEFORE),)

fuzz: ## Fuzz every target for FUZZ_SECONDS each (default 60) with cargo-fuzz on nightly (both installed if missing); FUZZ_SANITIZER=address for ASan
	@FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) FUZZ_SANITIZER=$(or $(FUZZ_SANITIZER),none) scripts/fuzz $(FUZZ_TARGETS)

fuzz-merge: ## Fold the inputs `make fuzz` found (fuzz/corpus-new) into the committed corpora, where they add coverage
	@FUZZ_SANITIZER=$(or $(FUZZ_SANITIZER),none) scripts/fuzz --merge $(FUZZ_TARGETS)

clean: ## Remove build output
	$(CARGO) clean
	rm -rf examples/assemblyscript/build
