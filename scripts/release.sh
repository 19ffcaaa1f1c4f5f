#!/usr/bin/env bash
# Release binaries of the shim and the CLI that run on glibc 2.31 and newer (Ubuntu 20.04, Debian
# 11, RHEL 9): cargo-zigbuild links them against glibc 2.31's symbols with zig (both from PyPI,
# pinned, installed here into .cache/pytools when missing). Prints the directory holding them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .cache/pytools/bin/cargo-zigbuild ]; then
    [ -x .cache/pytools/bin/pip ] || python3 -m venv .cache/pytools
    .cache/pytools/bin/pip install -q ziglang==0.17.0 cargo-zigbuild==0.24.1 >&2
fi
target="$(uname -m)-unknown-linux-gnu"
PATH="$PWD/.cache/pytools/bin:$PATH" cargo zigbuild -q --release -p containerd-shim-nvidia-v2 -p nvidia-shim \
    --target "$target.2.31" --target-dir target/zig >&2
dir="target/zig/$target/release"
for b in containerd-shim-nvidia-v2 nvidia-shim; do
    need=$(objdump -T "$dir/$b" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)
    if [ "$(printf '%s\nGLIBC_2.31\n' "$need" | sort -V | tail -1)" != GLIBC_2.31 ]; then
        echo "$b needs $need, more than glibc 2.31" >&2
        exit 1
    fi
    echo "$b: needs $need" >&2
done
echo "$dir"
