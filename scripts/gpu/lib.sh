# Sourced by scripts/gpu-acceptance.sh.

# Writes a private containerd config for work dir $1 (root, state, sockets under it; CRI off)
# to $1/containerd.toml and sets SOCK.
private_containerd_config() {
    SOCK="$1/containerd.sock"
    cat >"$1/containerd.toml" <<EOC
version = 2
root = "$1/root"
state = "$1/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
EOC
}

# Waits until containerd answers on the ctr command line in the CTR array.
wait_containerd() {
    for _ in $(seq 100); do "${CTR[@]}" version >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
