#!/usr/bin/env bash
# Prepares .gpu-bundle/, the one folder a GPU host needs for scripts/gpu-acceptance.sh:
# containerd, ctr, runc and the Go runc shim extracted from Debian's packages, busybox-static,
# this repo's release binaries (and the CRI check, gpu-cri, with a static pause), packed as
# bins.tar.xz; and a Debian bookworm rootfs for the real-image checks.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-bundle
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/debs" "$work/x" "$work/bin"
# The shim and CLI as `just image` ships them: linked for glibc 2.31.
release=$(scripts/release.sh)
cargo build --release -p integration --bin gpu-cri --bin pack-image --bin glibc-image
(cd "$work/debs" && apt-get download -q containerd runc busybox-static crun libyajl2 >/dev/null)
for d in "$work"/debs/*.deb; do dpkg -x "$d" "$work/x"; done
cp "$work"/x/usr/bin/{containerd,ctr,containerd-shim-runc-v2} "$work/x/usr/sbin/runc" "$work/x/bin/busybox" "$work/bin/"
# crun (the optional faster delegate) with its one library beside it, found through its RUNPATH.
command -v patchelf >/dev/null || apt-get install -y -qq patchelf >/dev/null
mkdir -p "$work/bin/lib"
cp "$work"/x/usr/bin/crun "$work/bin/"
cp -L "$work"/x/usr/lib/*-linux-gnu/libyajl.so.2 "$work/bin/lib/"
# crun re-executes itself from a sealed copy, where $ORIGIN is gone: also name the directory the
# acceptance script unpacks the bundle into.
patchelf --set-rpath '$ORIGIN/lib:/tmp/nvs-gpu/bin/lib' "$work/bin/crun"
# The shim's lifecycle tests, run on the GPU host with crun as the delegate.
cargo test --release -p integration --test shim --no-run 2>&1 | grep -oE 'target/release/deps/shim-[0-9a-f]+' | head -1 |
    xargs -I{} cp {} "$work/bin/shim-tests"
# The acceptance checks that moved to Rust (integration/tests/gpu_host.rs).
cargo test --release -p integration --test gpu_host --no-run 2>&1 | grep -oE 'target/release/deps/gpu_host-[0-9a-f]+' | head -1 |
    xargs -I{} cp {} "$work/bin/gpu-host-tests"
cp "$release"/{containerd-shim-nvidia-v2,nvidia-shim} target/release/{gpu-cri,pack-image,glibc-image} "$work/bin/"
# containerd 2.x's daemon (sid, from `just setup`) for the CRI check of NVIDIA's own CDI spec,
# which containerd applies itself (1.6 cannot), driven by 1.6's ctr (the carry limit is 64 MiB);
# and that spec, as nvidia-ctk wrote it on the H200.
mkdir -p "$work/bin/c2"
cp .cache/containerd2/usr/bin/containerd "$work/bin/c2/"
spec=../shared/reference/fixtures/nvidia-ctk-h200/nvidia-ctk-default.yaml
if [ -f "$spec" ]; then cp "$spec" "$work/bin/nvidia-ctk-default.yaml"; fi
# The CRI check's pod sandbox program, static: a GPU host need not have a static libc.
printf '#include <signal.h>\n#include <unistd.h>\nstatic void bye(int s){(void)s;_exit(0);}\nint main(void){signal(SIGINT,bye);signal(SIGTERM,bye);for(;;)pause();}\n' >"$work/pause.c"
cc -static -O2 -o "$work/bin/pause" "$work/pause.c"
tar -C "$work/bin" -cf - . | xz -T0 -9e > "$out/bins.tar.xz"
# A real Debian image for the real-image checks, built once and kept in .cache/.
if [ ! -f .cache/debian-rootfs.tar ]; then
    mkdir -p .cache
    scripts/images/debian.sh .cache/debian-rootfs.tar
fi
[ -f "$out/debian-rootfs.tar.xz" ] && [ "$out/debian-rootfs.tar.xz" -nt .cache/debian-rootfs.tar ] ||
    xz -T0 -9e -c .cache/debian-rootfs.tar >"$out/debian-rootfs.tar.xz"
ls -la "$out"
echo "bundle ready: carry .gpu-bundle and run: bash scripts/gpu-acceptance.sh .gpu-bundle \$OUT"
