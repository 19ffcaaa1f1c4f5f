#!/usr/bin/env bash
# Installs what the tests and the demo need, only where missing: containerd and runc (Debian
# bookworm's 1.6.20 / 1.1.5), busybox-static (the test image's userland), util-linux's `script`.
set -euo pipefail
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v script >/dev/null || need+=(bsdutils)
command -v sha256sum >/dev/null || need+=(coreutils)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# containerd's Go runc shim ships with the containerd package; the benchmark compares against it.
command -v containerd-shim-runc-v2 >/dev/null || echo "note: containerd-shim-runc-v2 not found (only the benchmark needs it)"
