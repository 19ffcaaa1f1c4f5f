//! `pack-image ROOTFS NAME OUT.tar`: packs a root filesystem as a one-layer OCI image archive
//! named NAME (command `sh`), with the same packer the tests use — for the GPU acceptance run,
//! which builds its images on the GPU host.

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [rootfs, name, out] = args.as_slice() else {
        bail!("usage: pack-image ROOTFS NAME OUT.tar");
    };
    let work = tempfile::tempdir()?;
    let archive = integration::image::pack(rootfs.as_ref(), name, work.path())?;
    std::fs::copy(archive, out)?;
    Ok(())
}
