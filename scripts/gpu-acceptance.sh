#!/usr/bin/env bash
# GPU acceptance suite for containerd-shim-nvidia-v2. Runs on any GPU host as root:
#   bash scripts/gpu-acceptance.sh BUNDLE OUTDIR      (BUNDLE from `just gpu-acceptance`)
# Builds what the checks need on the GPU host (a minimal glibc image from the host's own libraries
# with CUDA programs compiled by nvcc, the real images' roots), then runs the Rust tests that hold
# the checks — integration/tests/gpu_host.rs (install, injection, real images, accounting,
# GPU-aware pause, the latency and memory tables), gpu-cri (CRI), the shim lifecycle tests with
# crun — each on the tests' own harness, and writes OUTDIR/report.md (plus their output).
# Env: DRIVER_ROOT (default /usr/local/nvidia if it has bin/, else /), ITER (latency iterations,
# default 20), PODS (pods for the memory table, default 50), DELEGATE (runc or crun).
set -uo pipefail
BUNDLE=$(realpath "$1")
OUT=$(realpath -m "$2")
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
W=/tmp/nvs-gpu
rm -rf "$W"
mkdir -p "$W/bin" "$W/cache"
tar -C "$W/bin" -xJf "$BUNDLE/bins.tar.xz"
export PATH="$W/bin:$PATH"
if [ -z "${DRIVER_ROOT:-}" ]; then
    if [ -x /usr/local/nvidia/bin/nvidia-smi ]; then DRIVER_ROOT=/usr/local/nvidia; else DRIVER_ROOT=/; fi
fi
HOST_SMI=$(command -v nvidia-smi || echo "$DRIVER_ROOT/bin/nvidia-smi")
NVCC=$(command -v nvcc || ls /usr/local/cuda*/bin/nvcc 2>/dev/null | head -1)
ITER=${ITER:-20}
LOG="$OUT/log.txt"
REPORT="$OUT/report.md"
: >"$LOG"
RESULTS=()
FAILS=0
log() { echo "$*" | tee -a "$LOG" >&2; }
record() { # n name PASS|FAIL saw
    RESULTS+=("| $1 | $2 | $3 | $4 |")
    [ "$3" = PASS ] || FAILS=$((FAILS + 1))
    log "check $1 ($2): $3 — $4"
}
oneline() { tr '\n' ' ' | sed 's/|/\//g; s/  */ /g' | cut -c1-300; }

# --- shim configs ------------------------------------------------------------------------------
cat >"$W/shim.toml" <<EOF
[driver]
root = "$DRIVER_ROOT"
cache_dir = "$W/cache"
[gpu]
cdi_spec_dirs = ["$W/cdi"]
EOF
# crun as the delegate: the same config plus [runc] binary. DELEGATE=crun runs every check with it.
cp "$W/shim.toml" "$W/shim-crun.toml"
printf '[runc]\nbinary = "%s"\n' "$W/bin/crun" >>"$W/shim-crun.toml"
DELEGATE=${DELEGATE:-runc}
[ "$DELEGATE" = crun ] && cp "$W/shim-crun.toml" "$W/shim.toml"
CRUN_OK=0
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && "$W/bin/crun" --version >/dev/null 2>&1; then CRUN_OK=1; fi
if [ $CRUN_OK = 1 ] && [ "$DELEGATE" = runc ]; then export NVIDIA_SHIM_GPU_CRUN_CONFIG="$W/shim-crun.toml"; fi
PODS=${PODS:-50}
export ITER PODS

# --- image -----------------------------------------------------------------------------------
R="$W/rootfs"
for p in cudacheck gpuhold gpuwork; do
    "$NVCC" -O2 -arch=sm_90 -o "$W/$p" "$HERE/gpu/$p.cu" >>"$LOG" 2>&1 || log "nvcc $p failed"
done
# The tests' glibc image (integration/src/image.rs: busybox, the host's glibc, ldconfig, a stale
# libcuda stub in its cache) with the CUDA programs and the libraries nvidia-smi loads.
NVIDIA_SHIM_BUSYBOX="$W/bin/busybox" "$W/bin/glibc-image" "$R" "$W/cudacheck" "$W/gpuhold" "$W/gpuwork" \
    "libs:$HOST_SMI" >>"$LOG" 2>&1 || log "glibc-image failed"
LDCONFIG=/sbin/ldconfig.real
[ -x "$LDCONFIG" ] || LDCONFIG=/sbin/ldconfig

# Images are packed by the tests' own packer (integration/src/image.rs).
pack_image() { "$W/bin/pack-image" "$1" "$2" "$3"; } # rootfs name tar
IMG=docker.io/library/gpu-acceptance:latest
pack_image "$R" "$IMG" "$W/image.tar"
log "host GPUs: $("$HOST_SMI" -L | oneline)"

nvidia-shim --config "$W/shim.toml" list --env NVIDIA_VISIBLE_DEVICES=all >"$OUT/list.txt" 2>&1

# Roots of the real images checks 12–15 use (the Rust test packs and runs them).
if [ -f "$BUNDLE/debian-rootfs.tar.xz" ]; then
    D="$W/rootfs-debian"
    mkdir -p "$D"
    xz -dc "$BUNDLE/debian-rootfs.tar.xz" | tar -C "$D" -xf -
    cp "$HERE/gpu/realimage.py" "$HERE/gpu/egl.py" "$D/"
    export NVIDIA_SHIM_DEBIAN_ROOTFS="$D"
fi
# A /usr/lib64 image (RHEL/UBI layout: glibc in /usr/lib64, /lib64 -> usr/lib64, no multiarch dir).
L64="$W/rootfs-lib64"
mkdir -p "$L64"/{bin,sbin,etc,tmp,proc,sys,dev,run,root,usr/bin,usr/lib64}
cp -a "$R"/bin/. "$L64/bin/"
cp "$R/usr/bin/cudacheck" "$L64/usr/bin/"
cp "$R/sbin/ldconfig" "$L64/sbin/"
cp "$R/etc/passwd" "$L64/etc/"
find "$R/lib" "$R/usr/lib" "$R/lib64" -type f -name '*.so*' -exec cp {} "$L64/usr/lib64/" \; 2>/dev/null
ln -s usr/lib64 "$L64/lib64"
echo /usr/lib64 >"$L64/etc/ld.so.conf"
"$LDCONFIG" -r "$L64"
export NVIDIA_SHIM_LIB64_ROOTFS="$L64"
# The host's own (older) CUDA forward-compat libraries, for check 15.
if ls /usr/local/cuda/compat/libcuda.so.*.* >/dev/null 2>&1; then
    export NVIDIA_SHIM_COMPAT_DIR=/usr/local/cuda/compat
fi

# 0–15, 18, 19 and the tables: integration/tests/gpu_host.rs, through the tests' own harness
#      (private containerd, packer, nothing-left-behind check): 0 install by `nvidia-shim
#      install`, the installed binary serving a GPU container; NVIDIA_VISIBLE_DEVICES (all, an index, a UUID, none,
#      void, unset), utility only, an unmet requirement leaving nothing behind, a stale libcuda
#      stub in the image's cache, a plain container beside a GPU one, eight at once,
#      `nvidia-shim info` vs nvidia-smi, /proc/driver/nvidia masks, a FIFO at the image's
#      ld.so.cache, and the real images: Debian bookworm (nvidia-smi, Triton's check, PTX JIT,
#      `ld -lcuda`, again after ldconfig), /usr/lib64, graphics (Vulkan, EGL), older compat libs;
#      18 accounting (top vs nvidia-smi per process, metrics parsed) and 19 GPU-aware pause (memory
#      released, a second container allocates it, the first resumes with its data intact).
o=$(cd "$W" && PATH="$W/bin:$PATH" NVIDIA_SHIM_GPU_HOST=1 NVIDIA_SHIM_BIN_DIR="$W/bin" \
    NVIDIA_SHIM_BUSYBOX="$W/bin/busybox" NVIDIA_SHIM_GPU_IMAGE="$W/image.tar" NVIDIA_SHIM_GPU_IMAGE_REF="$IMG" \
    NVIDIA_SHIM_GPU_CONFIG="$W/shim.toml" NVIDIA_SHIM_HOST_SMI="$HOST_SMI" NVIDIA_SHIM_GPU_ROOTFS="$R" \
    NVIDIA_SHIM_GPU_OUT="$OUT" \
    timeout 600 "$W/bin/gpu-host-tests" --nocapture --test-threads=1 2>&1)
echo "$o" >"$OUT/gpu-host-tests.txt"
while IFS='|' read -r _ n name verdict saw; do
    record "$n" "$name" "$verdict" "$saw"
done < <(echo "$o" | grep -o 'ACCEPTANCE|.*')
if [ "$(echo "$o" | grep -c 'ACCEPTANCE|')" -lt 13 ]; then
    record 1 "integration/tests/gpu_host.rs" FAIL "$(echo "$o" | tail -5 | oneline)"
fi

# 16. Kubernetes' path: a pod through CRI (containerd's CRI plugin, handler `nvidia` as the README
#     configures it), one container by the device plugin's env route and one by its CDI route,
#     each running nvidia-smi and a CUDA kernel through ExecSync; the sandbox gets no GPU.
mkdir -p "$W/cdi"
nvidia-shim --config "$W/shim.toml" cdi generate --output "$W/cdi/nvidia.yaml" >>"$LOG" 2>&1
# 20. NVIDIA's own CDI spec (nvidia-ctk, six createContainer hooks), applied by containerd 2.x for
#     the CRI CDIDevices field, on a host without nvidia-cdi-hook: nvidia-smi and a CUDA kernel.
SPEC=()
[ -f "$W/bin/nvidia-ctk-default.yaml" ] && SPEC=("$W/bin/nvidia-ctk-default.yaml")
o=$(NVIDIA_SHIM_BIN_DIR="$W/bin" NVIDIA_SHIM_BUSYBOX="$W/bin/busybox" NVIDIA_SHIM_PAUSE="$W/bin/pause" \
    NVIDIA_SHIM_CONTAINERD2_DIR="$W/bin/c2" \
    timeout 400 "$W/bin/gpu-cri" "$W/shim.toml" "$W/cdi" "$W/image.tar" "$IMG" "${SPEC[@]}" 2>&1)
echo "$o" >"$OUT/check16.txt"
if echo "$o" | grep -q '^CRI PASS'; then
    record 16 "CRI pod (handler nvidia): env and CDI routes run nvidia-smi and CUDA" PASS "$(echo "$o" | grep -v HOOKLESS | grep -v '^hookless' | oneline)"
else record 16 "CRI pod (handler nvidia): env and CDI routes run nvidia-smi and CUDA" FAIL "$(echo "$o" | grep -v -i hookless | tail -5 | oneline)"; fi
if [ ${#SPEC[@]} = 1 ]; then
    name="NVIDIA's CDI spec without NVIDIA's hooks: containerd 2.x CDIDevices nvidia.com/gpu=0, no nvidia-cdi-hook on the host"
    if echo "$o" | grep -q '^HOOKLESS PASS'; then
        record 20 "$name" PASS "$(echo "$o" | grep -E '^(spec|hookless)' | oneline)"
    else record 20 "$name" FAIL "$(echo "$o" | grep -iE 'hookless|^spec' | tail -4 | oneline)"; fi
fi

# 17. The shim's lifecycle scenarios (integration/tests/shim.rs, containerd 1.6) with crun as the
#     delegate: run --rm exit codes and output, detached + exec (tty through the console socket),
#     ps, kill, delete, pause/resume, metrics, Update, OOM events, pods sharing a shim, a killed
#     shim, a containerd restart, task API v3, a bad config — nothing left behind after each.
if [ $CRUN_OK = 1 ] && [ "$DELEGATE" = runc ]; then
    o=$(cd "$W" && PATH="$W/bin:$PATH" NVIDIA_SHIM_BIN_DIR="$W/bin" NVIDIA_SHIM_BUSYBOX="$W/bin/busybox" \
        NVIDIA_SHIM_CONFIG="$W/shim-crun.toml" timeout 400 "$W/bin/shim-tests" containerd_1_6:: --test-threads=1 2>&1)
    echo "$o" >"$OUT/check17.txt"
    if echo "$o" | grep -q '^test result: ok'; then
        record 17 "lifecycle scenarios with crun as the delegate" PASS "$(echo "$o" | grep -cE '^test .* ok$') scenarios: $(echo "$o" | grep -E '^test .* ok$' | sed 's/^test containerd_1_6::\([a-z_0-9]*\) .*/\1/' | oneline)"
    else record 17 "lifecycle scenarios with crun as the delegate" FAIL "$(echo "$o" | grep -E 'FAILED|Error' | head -6 | oneline)"; fi
fi

# --- report ------------------------------------------------------------------------------------
gpu_model=$("$HOST_SMI" --query-gpu=name --format=csv,noheader | sort | uniq -c | oneline)
driver=$("$HOST_SMI" --query-gpu=driver_version --format=csv,noheader | head -1)
{
    echo "# GPU acceptance run"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- GPU: $gpu_model"
    echo "- Driver: $driver (root \`$DRIVER_ROOT\`), CUDA compiler: $("$NVCC" --version | grep -o 'release [0-9.]*')"
    echo "- Host: $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r), cgroup $(stat -fc %T /sys/fs/cgroup)"
    echo "- containerd $(containerd --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1 {print $3}')"
    echo "- Delegate under the checks: $DELEGATE ($("$W/bin/$DELEGATE" --version 2>/dev/null | head -1 || true))"
    echo "- Result: $((${#RESULTS[@]} - FAILS))/${#RESULTS[@]} checks pass"
    echo
    echo "| # | check | result | what it saw |"
    echo "|---|---|---|---|"
    printf '%s\n' "${RESULTS[@]}" | sort -t'|' -k2,2n -s
    echo
    cat "$OUT/tables.md" 2>/dev/null
} >"$REPORT"
cat "$REPORT"
exit $((FAILS > 0))
