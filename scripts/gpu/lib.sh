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

# Starts the private containerd (config $W/containerd.toml, shim config $W/shim.toml) with the
# extra arguments given, its output to the file named first; its PID is kept in CONTAINERD_PID.
start_containerd() { # logfile [containerd args...]
    local log=$1
    shift
    NVIDIA_SHIM_CONFIG="$W/shim.toml" containerd "$@" --config "$W/containerd.toml" >"$log" 2>&1 &
    CONTAINERD_PID=$!
    wait_containerd
}

# Stops the containerd this script started (and only it), waiting until it is gone.
stop_containerd() {
    [ -n "${CONTAINERD_PID:-}" ] || return 0
    kill "$CONTAINERD_PID" 2>/dev/null
    wait "$CONTAINERD_PID" 2>/dev/null
    CONTAINERD_PID=
}
