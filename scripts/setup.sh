#!/usr/bin/env bash
# Installs what the tests and the demo need, only where missing: containerd and runc (Debian
# bookworm's 1.6.20 / 1.1.5), busybox-static (the test image's userland), util-linux's `script`,
# protoc.
set -euo pipefail
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v script >/dev/null || need+=(bsdutils)
command -v sha256sum >/dev/null || need+=(coreutils)
# protoc: the CRI test client's build generates its gRPC code from the CRI protobuf files.
command -v protoc >/dev/null || need+=(protobuf-compiler)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# containerd's Go runc shim ships with the containerd package; the benchmark compares against it.
command -v containerd-shim-runc-v2 >/dev/null || echo "note: containerd-shim-runc-v2 not found (only the benchmark needs it)"

# containerd 1.7 (trixie) and 2.x (sid) for the CRI and config tests: extracted, not installed,
# from the Debian mirror this machine already uses, into .cache/containerd17 and .cache/containerd2.
fetch_containerd() { # suite dir
    local suite=$1 dir=$2
    [ -x "$dir/usr/bin/containerd" ] && return 0
    local mirror apt_dir opts
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    apt_dir=$(mktemp -d)
    mkdir -p "$apt_dir/lists/partial" "$dir"
    echo "deb $mirror $suite main" >"$apt_dir/sources.list"
    opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o "Dir::State::Lists=$apt_dir/lists" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
    echo "fetching containerd from $mirror $suite"
    apt-get "${opts[@]}" update -qq
    (cd "$apt_dir" && apt-get "${opts[@]}" download -qq containerd)
    dpkg -x "$apt_dir"/containerd_*.deb "$dir"
    rm -rf "$apt_dir"
}
fetch_containerd sid .cache/containerd2
fetch_containerd trixie .cache/containerd17

# kubernetes-validate (PyPI, pinned, in .cache/pytools) checks the manifests offline: its
# Kubernetes schemas come with the package.
if [ ! -x .cache/pytools/bin/kubernetes-validate ]; then
    command -v python3 >/dev/null || apt-get install -y -qq python3 python3-venv >/dev/null
    python3 -m venv .cache/pytools
    .cache/pytools/bin/pip install -q kubernetes-validate==1.37.0
fi
