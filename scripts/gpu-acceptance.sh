#!/usr/bin/env bash
# GPU acceptance suite for containerd-shim-nvidia-v2. Runs on any GPU host as root:
#   bash scripts/gpu-acceptance.sh BUNDLE OUTDIR      (BUNDLE from `just gpu-acceptance`)
# Starts a private containerd, builds a minimal glibc image from the host's own libraries and a
# CUDA program compiled with nvcc, runs the checks through `ctr run --runtime
# io.containerd.nvidia.v2`, measures start latency against containerd's Go runc shim, and writes
# OUTDIR/report.md (plus logs). Env: DRIVER_ROOT (default /usr/local/nvidia if it has bin/, else /),
# ITER (latency iterations, default 20).
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

# --- containerd ------------------------------------------------------------------------------
. "$HERE/gpu/lib.sh"
NS=acceptance
private_containerd_config "$W"
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
# 0. Installed as on a node: `nvidia-shim install` puts the binaries in $W/node/bin, keeps the
#    shim config written above, writes the CDI spec and adds the runtime to containerd's config
#    (version 2, in place). containerd starts from that config with $W/node/bin first on PATH, so
#    every check below runs the installed shim. A second install must change nothing.
install_args=(install --source-dir "$W/bin" --bin-dir "$W/node/bin" --shim-config "$W/shim.toml"
    --containerd-config "$W/containerd.toml" --cdi-spec "$W/cdi/nvidia.yaml" --restart none)
o_install=$(nvidia-shim "${install_args[@]}" 2>&1); rc_install=$?
o_again=$(nvidia-shim "${install_args[@]}" 2>&1)
echo "$o_install" >"$OUT/install.txt"
echo "$o_again" >>"$OUT/install.txt"
export PATH="$W/node/bin:$PATH"
# containerd passes its environment to shims: the shim finds its config through it.
CTR=(ctr --address "$SOCK" --namespace "$NS")
start_containerd "$W/containerd.log"
log "containerd: $("${CTR[@]}" version 2>&1 | grep -m1 Version)"

# --- image -----------------------------------------------------------------------------------
R="$W/rootfs"
mkdir -p "$R"/{bin,sbin,etc,tmp,proc,sys,dev,run,root,usr/bin,usr/local/stubs,lib64}
cp "$W/bin/busybox" "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
cp /etc/debian_version "$R/etc/debian_version" 2>/dev/null || echo 12.0 >"$R/etc/debian_version"
"$NVCC" -O2 -arch=sm_90 -o "$R/usr/bin/cudacheck" "$HERE/gpu/cudacheck.cu" >>"$LOG" 2>&1 || log "nvcc failed"
"$NVCC" -O2 -arch=sm_90 -o "$R/usr/bin/gpuhold" "$HERE/gpu/gpuhold.cu" >>"$LOG" 2>&1 || log "nvcc gpuhold failed"
"$NVCC" -O2 -arch=sm_90 -o "$R/usr/bin/gpuwork" "$HERE/gpu/gpuwork.cu" >>"$LOG" 2>&1 || log "nvcc gpuwork failed"
# The host's own glibc libraries that cudacheck and the injected nvidia-smi need.
for f in $( (ldd "$R/usr/bin/cudacheck"; ldd "$HOST_SMI") | grep -o '/[^ ]*' | sort -u); do
    mkdir -p "$R$(dirname "$f")"
    cp -L "$f" "$R$f"
done
LDCONFIG=/sbin/ldconfig.real
[ -x "$LDCONFIG" ] || LDCONFIG=/sbin/ldconfig
cp "$LDCONFIG" "$R/sbin/ldconfig"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$R/usr/local/stubs/libcuda.so.1" "$HERE/gpu/stub.c"
MA=/lib/$(uname -m)-linux-gnu
printf '/usr/local/stubs\n%s\n/usr%s\n' "$MA" "$MA" >"$R/etc/ld.so.conf"
"$LDCONFIG" -r "$R"
printf '%s\n/usr%s\n' "$MA" "$MA" >"$R/etc/ld.so.conf"
log "image cache before injection: $("$LDCONFIG" -p -C "$R/etc/ld.so.cache" 2>/dev/null | grep libcuda | oneline)"

# Images are packed by the tests' own packer (integration/src/image.rs).
pack_image() { "$W/bin/pack-image" "$1" "$2" "$3"; } # rootfs name tar
IMG=docker.io/library/gpu-acceptance:latest
pack_image "$R" "$IMG" "$W/image.tar"
SNAP=overlayfs
"${CTR[@]}" images import "$W/image.tar" >>"$LOG" 2>&1
if ! "${CTR[@]}" run --rm "$IMG" probe true >>"$LOG" 2>&1; then
    SNAP=native
    "${CTR[@]}" images import --snapshotter native "$W/image.tar" >>"$LOG" 2>&1
fi
log "snapshotter: $SNAP"

run() { "${CTR[@]}" run --rm --snapshotter "$SNAP" --runtime io.containerd.nvidia.v2 "$@"; }

# 0 (cont.). The shim serving a container is the installed binary.
"${CTR[@]}" run -d --snapshotter "$SNAP" --runtime io.containerd.nvidia.v2 "$IMG" c0 sleep 60 >>"$LOG" 2>&1
shim_exe=""
for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "-address $SOCK .*-id c0\|-id c0 .*-address $SOCK"; then
        shim_exe=$(readlink "$p/exe"); break
    fi
done
"${CTR[@]}" task delete -f c0 >>"$LOG" 2>&1
"${CTR[@]}" container delete c0 >>"$LOG" 2>&1
if [ $rc_install = 0 ] && [ "$shim_exe" = "$W/node/bin/containerd-shim-nvidia-v2" ] &&
    echo "$o_again" | grep -q 'binaries: unchanged' && echo "$o_again" | grep -q 'containerd: not restarted (config unchanged)'; then
    record 0 "installed by nvidia-shim install; the running shim is the installed one" PASS "$(echo "$o_install" | oneline); shim: $shim_exe; again: $(echo "$o_again" | grep -E 'binaries|containerd:' | oneline)"
else record 0 "installed by nvidia-shim install; the running shim is the installed one" FAIL "rc=$rc_install shim=$shim_exe $(echo "$o_install $o_again" | oneline)"; fi
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

# 1–15. integration/tests/gpu_host.rs, through the tests' own harness (private containerd,
#      packer, nothing-left-behind check): NVIDIA_VISIBLE_DEVICES (all, an index, a UUID, none,
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
o=$(NVIDIA_SHIM_BIN_DIR="$W/bin" NVIDIA_SHIM_BUSYBOX="$W/bin/busybox" NVIDIA_SHIM_PAUSE="$W/bin/pause" \
    timeout 300 "$W/bin/gpu-cri" "$W/shim.toml" "$W/cdi" "$W/image.tar" "$IMG" 2>&1)
echo "$o" >"$OUT/check16.txt"
if echo "$o" | grep -q '^CRI PASS'; then
    record 16 "CRI pod (handler nvidia): env and CDI routes run nvidia-smi and CUDA" PASS "$(echo "$o" | oneline)"
else record 16 "CRI pod (handler nvidia): env and CDI routes run nvidia-smi and CUDA" FAIL "$(echo "$o" | tail -5 | oneline)"; fi

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

# --- latency -----------------------------------------------------------------------------------
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(((e - s) / 1000)); }
: >"$W/a"; : >"$W/b"; : >"$W/c"; : >"$W/d"; : >"$W/e"
crun_cfg=(--runtime-config-path "$W/shim-crun.toml")
for i in $(seq "$ITER"); do
    ms "${CTR[@]}" run --rm --snapshotter "$SNAP" --runtime io.containerd.runc.v2 "$IMG" la$i true >>"$W/a"
    ms run "$IMG" lb$i true >>"$W/b"
    ms run --env NVIDIA_VISIBLE_DEVICES=all "$IMG" lc$i true >>"$W/c"
    if [ $CRUN_OK = 1 ] && [ "$DELEGATE" = runc ]; then
        ms run "${crun_cfg[@]}" "$IMG" ld$i true >>"$W/d"
        ms run "${crun_cfg[@]}" --env NVIDIA_VISIBLE_DEVICES=all "$IMG" le$i true >>"$W/e"
    fi
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'; }
ma=$(median "$W/a"); mb=$(median "$W/b"); mc=$(median "$W/c"); md=$(median "$W/d"); me=$(median "$W/e")
ratio=$(awk -v c="$mc" -v a="$ma" 'BEGIN {printf "%.3f", c/a}')
ratio_b=$(awk -v b="$mb" -v a="$ma" 'BEGIN {printf "%.3f", b/a}')

# --- per-pod memory: PODS pods of one container and one shim each, ours (GPU) and Go's (plain) --
PODS=${PODS:-50}
pods_memory() { # runtime tag [extra ctr args] → "rss pss uss" sums over the shims, KiB
    local runtime=$1 tag=$2 bin
    shift 2
    for i in $(seq "$PODS"); do
        "${CTR[@]}" run -d --snapshotter "$SNAP" --runtime "$runtime" "$@" \
            --annotation "io.kubernetes.cri.sandbox-id=$tag$i" "$IMG" "$tag$i" sleep 600 >/dev/null 2>&1
    done
    if [ "$runtime" = io.containerd.runc.v2 ]; then bin=containerd-shim-runc-v2; else bin=containerd-shim-nvidia-v2; fi
    for p in $(pgrep -f "$bin .*-address $SOCK"); do
        awk '/^Rss:/ {r=$2} /^Pss:/ {p=$2} /^Private_(Clean|Dirty):/ {u+=$2} END {print r, p, u}' "/proc/$p/smaps_rollup"
    done >"$W/mem-$tag"
    for i in $(seq "$PODS"); do "${CTR[@]}" task kill -s SIGKILL "$tag$i" >/dev/null 2>&1; done
    for i in $(seq "$PODS"); do
        for _ in $(seq 50); do "${CTR[@]}" task delete "$tag$i" >/dev/null 2>&1 && break; sleep 0.1; done
        "${CTR[@]}" containers rm "$tag$i" >/dev/null 2>&1
    done
    awk '{r+=$1; p+=$2; u+=$3; n++} END {printf "%d %d %d %d", n, r, p, u}' "$W/mem-$tag"
}
read -r go_n go_rss go_pss go_uss <<<"$(pods_memory io.containerd.runc.v2 mgo)"
read -r our_n our_rss our_pss our_uss <<<"$(pods_memory io.containerd.nvidia.v2 mour --env NVIDIA_VISIBLE_DEVICES=all)"

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
    echo "- containerd $("${CTR[@]}" version | awk '/Version/ {print $2; exit}'), runc $(runc --version | awk 'NR==1 {print $3}'), snapshotter $SNAP"
    echo "- Delegate under the checks: $DELEGATE ($("$W/bin/$DELEGATE" --version 2>/dev/null | head -1 || true))"
    echo "- Result: $((${#RESULTS[@]} - FAILS))/${#RESULTS[@]} checks pass"
    echo
    echo "| # | check | result | what it saw |"
    echo "|---|---|---|---|"
    printf '%s\n' "${RESULTS[@]}" | sort -t'|' -k2,2n -s
    echo
    echo "## Start latency: median \`ctr run --rm … true\`, $ITER interleaved iterations each"
    echo
    echo "| runtime | median (ms) | vs Go runc shim |"
    echo "|---|---|---|"
    echo "| (a) containerd-shim-runc-v2 (Go), no GPU | $((ma / 1000)).$(printf %03d $((ma % 1000))) | 1.000 |"
    echo "| (b) containerd-shim-nvidia-v2, no GPU | $((mb / 1000)).$(printf %03d $((mb % 1000))) | $ratio_b |"
    echo "| (c) containerd-shim-nvidia-v2, NVIDIA_VISIBLE_DEVICES=all | $((mc / 1000)).$(printf %03d $((mc % 1000))) | $ratio |"
    if [ -s "$W/d" ] && [ -s "$W/e" ]; then
        echo "| (d) containerd-shim-nvidia-v2 + crun, no GPU | $((md / 1000)).$(printf %03d $((md % 1000))) | $(awk -v x="$md" -v a="$ma" 'BEGIN {printf "%.3f", x/a}') |"
        echo "| (e) containerd-shim-nvidia-v2 + crun, NVIDIA_VISIBLE_DEVICES=all | $((me / 1000)).$(printf %03d $((me % 1000))) | $(awk -v x="$me" -v a="$ma" 'BEGIN {printf "%.3f", x/a}') |"
    fi
    echo
    echo "Target (c)/(a) ≤ 1.03: $(awk -v r="$ratio" 'BEGIN {print (r <= 1.03) ? "met" : "NOT met"}') ($ratio). GPU overhead (c)/(b): $(awk -v c="$mc" -v b="$mb" 'BEGIN {printf "%.3f", c/b}') (goal ≤ 1.02)."
    echo
    echo "## Per-pod memory: $PODS pods, one container and one shim each (KiB, summed over the shims)"
    echo
    echo "| shims | count | RSS | PSS | USS | PSS per shim |"
    echo "|---|---|---|---|---|---|"
    echo "| containerd-shim-runc-v2 (Go), no GPU | $go_n | $go_rss | $go_pss | $go_uss | $((go_pss / (go_n > 0 ? go_n : 1))) |"
    echo "| containerd-shim-nvidia-v2, NVIDIA_VISIBLE_DEVICES=all | $our_n | $our_rss | $our_pss | $our_uss | $((our_pss / (our_n > 0 ? our_n : 1))) |"
    echo
    echo "Summed PSS, ours / Go: $(awk -v o="$our_pss" -v g="$go_pss" 'BEGIN {printf "%.2f", (g > 0 ? o / g : 0)}') (goal ≤ 0.25); one shim's RSS: $((our_rss / (our_n > 0 ? our_n : 1))) KiB (goal ≤ 4096)."
} >"$REPORT"
cat "$REPORT"
stop_containerd
exit $((FAILS > 0))
