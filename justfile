# containerd-shim-nvidia-v2 — task runner. Every recipe installs what it needs first.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List recipes.
default:
    @just --list

# Install containerd, runc and busybox-static from Debian if missing (idempotent; needs root).
setup:
    scripts/setup.sh

# Build every crate (debug) and the test binaries.
build:
    cargo build --workspace --all-targets

# Build the release binaries.
release:
    cargo build --release --workspace --bins

# Run a container through the shim under a private containerd and show what happened.
demo: setup build
    cargo run -q -p integration --bin demo

# The whole test suite: unit tests, then end-to-end tests under a real containerd and runc.
test: setup build
    cargo test --workspace --exclude integration --features gpu-core/fixture
    cargo test -p integration -- --test-threads=1

# fmt, clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# The installer's OCI image archive, target/nvidia-shim-installer.tar, without Docker: release
# binaries linked against glibc 2.31 (zig from PyPI as the linker) so they run on older GPU node
# OSes, on a base of only the C library they load. The same binaries give the same archive.
image: setup
    cargo run -q -p integration --bin installer-image -- "$(scripts/release.sh)" target/nvidia-shim-installer.tar

# Prepare .gpu-bundle/ (Debian containerd/ctr/runc/Go shim + our release binaries) for a GPU host;
# there, as root: bash scripts/gpu-acceptance.sh .gpu-bundle OUTDIR  → OUTDIR/report.md
gpu-acceptance: setup
    scripts/gpu-bundle.sh

# Benchmarks (not tests): our shim vs containerd's Go runc shim under one containerd, release
# build; then gpu-core's planning benchmark. ITER = latency iterations per variant.
bench ITER="30": setup
    cargo build --release --workspace --bins
    NVIDIA_SHIM_BIN_DIR=target/release cargo run -q --release -p integration --bin bench -- {{ITER}}
    cargo bench -p gpu-core --features fixture --bench plan -- --noplot
