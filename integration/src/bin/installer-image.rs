//! `installer-image BIN_DIR OUT.tar`: the installer's OCI image archive (see `just image`).

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bin_dir, out] = args.as_slice() else {
        bail!("usage: installer-image BIN_DIR OUT.tar");
    };
    integration::installer::build(bin_dir.as_ref(), out.as_ref())?;
    let size = std::fs::metadata(out)?.len();
    println!(
        "{out}: {} ({:.1} MiB)",
        integration::installer::IMAGE,
        size as f64 / 1048576.0
    );
    Ok(())
}
