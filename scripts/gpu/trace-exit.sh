#!/usr/bin/env bash
# Diagnostic: where does the time between the shim's Wait answer and containerd's next request go?
# One long-lived pod shim, strace attached, 5 short containers through it. Usage: BUNDLE OUTDIR
set -uo pipefail
BUNDLE=$(realpath "$1"); OUT=$(realpath -m "$2"); mkdir -p "$OUT"
W=/tmp/nvs-trace; rm -rf "$W"; mkdir -p "$W/bin"
tar -C "$W/bin" -xJf "$BUNDLE/bins.tar.xz"
export PATH="$W/bin:$PATH"
ST() { LD_LIBRARY_PATH="$BUNDLE/strace" "$BUNDLE/strace/strace" "$@"; }
. "$(dirname "$0")/lib.sh"
private_containerd_config "$W"
setsid containerd --log-level debug --config "$W/containerd.toml" >"$W/containerd.log" 2>&1 &
CTR=(ctr --address "$SOCK" --namespace t)
wait_containerd
for r in r0 r1 r2 r3 r4 r5 g0 g1 g2 g3 g4 g5; do
    mkdir -p "$W/$r/bin" "$W/$r/proc" "$W/$r/dev" "$W/$r/sys"
    cp "$W/bin/busybox" "$W/$r/bin/"; ln -s busybox "$W/$r/bin/sleep"; ln -s busybox "$W/$r/bin/true"
done
for kind in ours go; do
    rt=io.containerd.nvidia.v2; bin=containerd-shim-nvidia-v2; p=r
    [ $kind = go ] && rt=io.containerd.runc.v2 && bin=containerd-shim-runc-v2 && p=g
    ann=io.kubernetes.cri.sandbox-id=pod-$kind
    "${CTR[@]}" run -d --runtime $rt --annotation $ann --rootfs "$W/${p}0" ${kind}0 /bin/sleep 100
    pid=$(pgrep -f "$bin .*-address $SOCK" | head -1)
    ST -f -tt -T -e trace=\!futex,rt_sigprocmask,sigaltstack -p "$pid" -o "$W/strace-$kind.txt" &
    stp=$!
    sleep 0.5
    "${CTR[@]}" events >"$W/events-$kind.txt" &
    ev=$!
    sleep 0.2
    for i in 1 2 3 4 5; do
        s=$(date +%s.%N)
        "${CTR[@]}" run --rm --runtime $rt --annotation $ann --rootfs "$W/${p}$i" ${kind}$i /bin/true
        echo "RUN p$([ $kind = go ] && echo a || echo b)$i $s $(date +%s.%N)" >>"$W/runs.txt"
    done
    sleep 0.3
    kill $ev $stp
    "${CTR[@]}" task kill -s KILL ${kind}0; sleep 0.3; "${CTR[@]}" task delete ${kind}0; "${CTR[@]}" c rm ${kind}0
    sed -E "s/\"container_id\":\"${kind}([0-9])\"/\"container_id\":\"p$([ $kind = go ] && echo a || echo b)\\1\"/" "$W/events-$kind.txt" >>"$W/events.txt"
done
cat "$W/runs.txt" "$W/events.txt" >"$OUT/diag.txt"
cp "$W/strace-ours.txt" "$OUT/" ; cp "$W/strace-go.txt" "$OUT/"
grep -E 'wait returns|state request|delete request|init exit published|output EOF' "$W/containerd.log" | grep -oE 'time="[^"]+"|msg="[^"]+"|id=ours[0-9]' | paste -sd' ' | sed 's/ time=/\ntime=/g' >"$OUT/shimlog.txt"
pkill -f "containerd --log-level debug --config $W/containerd.toml"
