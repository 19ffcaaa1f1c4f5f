//! `nvidia-shim`: the operator's CLI (see `nvidia-shim --help`).

fn main() {
    let code = containerd_shim_nvidia_v2::cli::main(std::env::args().skip(1).collect());
    std::process::exit(code);
}
