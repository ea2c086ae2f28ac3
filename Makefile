# weft: developer and CI entry points.
#
#   make deps    check (as root: install) the Debian packages the workspace builds against
#   make test    deps, then formatting, clippy and every test of the workspace
#   make demo    deps, then a release build and `weft demo`: a 3-node cluster on loopback,
#                a workload, a leader kill, and a check that no acknowledged write was lost
#   make bench   the criterion benches of weft-bench
#   make clean   remove the build cache
#
# Written for GNU make but kept to POSIX make features; recipes run in /bin/sh.

# Debian packages needed to build the workspace (bindgen needs libclang; RDMA verbs need
# libibverbs and librdmacm; the verifier needs Z3; `weft learn` draws with Graphviz; the
# fault suite cuts a node off with iptables).
PACKAGES = build-essential pkg-config libclang-dev libibverbs-dev librdmacm-dev libz3-dev graphviz iproute2 iptables

# Build cache outside the clone, shared by CI runs and every checkout of a developer.
CARGO_TARGET_DIR ?= $(HOME)/.cache/weft/target
CARGO = CARGO_TARGET_DIR="$(CARGO_TARGET_DIR)" cargo
WEFT = $(CARGO_TARGET_DIR)/release/weft

.PHONY: help deps test demo bench clean

help:
	@echo "targets:"
	@echo "  make deps    check (as root: install) the system packages: $(PACKAGES)"
	@echo "  make test    fmt check, clippy -D warnings, all tests"
	@echo "  make demo    release build, then a 3-node cluster, a workload and a leader kill"
	@echo "  make bench   cargo bench -p weft-bench"
	@echo "  make clean   remove the build cache ($(CARGO_TARGET_DIR))"

deps:
	@if ! command -v cargo >/dev/null 2>&1; then \
		echo "error: cargo not found on PATH." >&2; \
		echo "Install the Rust toolchain (https://rustup.rs), then make sure ~/.cargo/bin is on PATH." >&2; \
		exit 1; \
	fi
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
		echo "warning: dpkg-query not found; cannot check system packages." >&2; \
		echo "Make sure the equivalents of these Debian packages are installed: $(PACKAGES)" >&2; \
		exit 0; \
	fi; \
	missing=""; \
	for p in $(PACKAGES); do \
		status=$$(dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null || true); \
		if [ "$$status" != "install ok installed" ]; then missing="$$missing $$p"; fi; \
	done; \
	if [ -z "$$missing" ]; then \
		echo "deps: all system packages installed ($(PACKAGES))"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "deps: installing$$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	else \
		echo "error: missing system packages:$$missing" >&2; \
		echo "Install them with:" >&2; \
		echo "  sudo apt-get install -y$$missing" >&2; \
		exit 1; \
	fi

test: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# The C interop test links the emulator's static library, which only a build of the
	# hw-sim library itself produces (tests build its rlib alone).
	$(CARGO) build -p hw-sim --lib
	@if cargo nextest --version >/dev/null 2>&1; then \
		echo '$(CARGO) test --workspace --doc'; \
		$(CARGO) test --workspace --doc || exit 1; \
		echo '$(CARGO) nextest run --workspace'; \
		$(CARGO) nextest run --workspace || exit 1; \
	else \
		echo "cargo-nextest not installed; using cargo test"; \
		echo '$(CARGO) test --workspace'; \
		$(CARGO) test --workspace || exit 1; \
	fi

demo: deps
	$(CARGO) build --release -p weft
	$(WEFT) demo

bench: deps
	$(CARGO) bench -p weft-bench

clean:
	$(CARGO) clean
