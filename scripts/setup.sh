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

# containerd 2.x (config version 3) for the config tests: extracted, not installed, from the
# Debian mirror this machine already uses (sid suite), into .cache/containerd2.
c2=.cache/containerd2
if [ ! -x "$c2/usr/bin/containerd" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    apt_dir=$(mktemp -d)
    mkdir -p "$apt_dir/lists/partial" "$c2"
    echo "deb $mirror sid main" >"$apt_dir/sources.list"
    opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o "Dir::State::Lists=$apt_dir/lists" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
    echo "fetching containerd 2.x from $mirror sid"
    apt-get "${opts[@]}" update -qq
    (cd "$apt_dir" && apt-get "${opts[@]}" download -qq containerd)
    dpkg -x "$apt_dir"/containerd_*.deb "$c2"
    rm -rf "$apt_dir"
fi
