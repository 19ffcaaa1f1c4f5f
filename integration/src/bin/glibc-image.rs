//! `glibc-image ROOTFS [BINARY | libs:BINARY]...`: lays out the tests' glibc image root at
//! ROOTFS (busybox, glibc, `dlcheck`, `ldconfig`, a stale libcuda stub in its loader cache) and
//! adds each BINARY to /usr/bin with the libraries it loads (`libs:` adds only the libraries) —
//! the GPU acceptance's image, from the builder the other tests use.

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((root, bins)) = args.split_first() else {
        bail!("usage: glibc-image ROOTFS [BINARY | libs:BINARY]...");
    };
    let root = std::path::Path::new(root);
    integration::image::glibc_rootfs(root)?;
    for b in bins {
        match b.strip_prefix("libs:") {
            Some(path) => integration::image::add_binary(root, path.as_ref(), true)?,
            None => integration::image::add_binary(root, b.as_ref(), false)?,
        }
    }
    Ok(())
}
