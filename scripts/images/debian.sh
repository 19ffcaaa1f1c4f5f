#!/usr/bin/env bash
# Builds a real Debian bookworm rootfs for the GPU acceptance run with mmdebstrap (minbase plus
# python3 and binutils: what Triton's driver check, `ld -lcuda` and a ctypes CUDA program need;
# vulkan-tools, glvnd's libEGL and libXext (which NVIDIA's Vulkan ICD links) for the graphics
# checks),
# trimmed of docs, locales, caches, perl and apt (the GPU bundle must stay under 64 MiB), as a
# tar at $1. The mirror is the one this machine's apt
# sources already use.
set -euo pipefail
out=$(realpath -m "$1")
command -v mmdebstrap >/dev/null || apt-get install -y -qq mmdebstrap >/dev/null
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
mmdebstrap --variant=minbase --quiet \
    --include=python3-minimal,libpython3.11-stdlib,binutils,vulkan-tools,libvulkan1,libegl1,libxext6 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/share/zoneinfo "$1"/usr/lib/python3*/test \
        "$1"/usr/share/perl "$1"/usr/lib/*-linux-gnu/perl "$1"/usr/lib/*-linux-gnu/gconv "$1"/usr/lib/*-linux-gnu/libgprofng* \
        "$1"/usr/bin/*-dwp "$1"/usr/bin/*ld.gold "$1"/usr/bin/*gprofng* \
        "$1"/usr/bin/perl* "$1"/usr/lib/*-linux-gnu/libperl* "$1"/usr/bin/apt* "$1"/usr/lib/*-linux-gnu/libapt* \
        "$1"/usr/lib/apt "$1"/usr/lib/*-linux-gnu/libgnutls* "$1"/usr/lib/*-linux-gnu/libdb-*' \
    bookworm "$out" "$mirror"
ls -la "$out"
