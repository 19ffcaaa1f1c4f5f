//! Just enough ELF to read a shared library's class and `DT_SONAME` (the name programs link
//! against and `dlopen`), without running anything.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_STRTAB: u64 = 5;
const DT_SONAME: u64 = 14;

/// What we learn from a library's headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfInfo {
    /// ELFCLASS64.
    pub is_64bit: bool,
    /// `DT_SONAME`, if present.
    pub soname: Option<String>,
}

struct Reader<'a> {
    b: &'a [u8],
    wide: bool,
}

impl Reader<'_> {
    fn uint(&self, off: usize, size: usize) -> Option<u64> {
        let s = self.b.get(off..off.checked_add(size)?)?;
        Some(match size {
            2 => u64::from(u16::from_le_bytes(s.try_into().ok()?)),
            4 => u64::from(u32::from_le_bytes(s.try_into().ok()?)),
            _ => u64::from_le_bytes(s.try_into().ok()?),
        })
    }
    fn word(&self, off: usize) -> Option<u64> {
        self.uint(off, if self.wide { 8 } else { 4 })
    }
}

/// Reads the ELF headers of `path`. Returns `None` for anything that is not a little-endian ELF
/// shared object we can parse (the caller then skips the file).
pub fn read(path: &Path) -> Option<ElfInfo> {
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    // Program headers and the dynamic section sit near the start, but the string table can be
    // anywhere in the first loaded segment; cap what we read.
    let want = len.min(4 << 20) as usize;
    let mut b = vec![0u8; want];
    f.seek(SeekFrom::Start(0)).ok()?;
    f.read_exact(&mut b).ok()?;
    parse(&b)
}

/// Parses ELF bytes (see [`read`]).
pub fn parse(b: &[u8]) -> Option<ElfInfo> {
    if b.get(0..4)? != b"\x7fELF" || *b.get(5)? != 1 {
        return None; // not ELF, or big-endian
    }
    let wide = match b.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let r = Reader { b, wide };
    let (phoff, phentsize, phnum) = if wide {
        (r.uint(0x20, 8)?, r.uint(0x36, 2)?, r.uint(0x38, 2)?)
    } else {
        (r.uint(0x1c, 4)?, r.uint(0x2a, 2)?, r.uint(0x2c, 2)?)
    };
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = usize::try_from(phoff + i * phentsize).ok()?;
        let ptype = r.uint(ph, 4)? as u32;
        // (p_offset, p_vaddr, p_filesz)
        let (off, vaddr, filesz) = if wide {
            (r.uint(ph + 8, 8)?, r.uint(ph + 16, 8)?, r.uint(ph + 32, 8)?)
        } else {
            (r.uint(ph + 4, 4)?, r.uint(ph + 8, 4)?, r.uint(ph + 16, 4)?)
        };
        match ptype {
            PT_LOAD => loads.push((off, vaddr, filesz)),
            PT_DYNAMIC => dynamic = Some((off, filesz)),
            _ => {}
        }
    }
    let mut info = ElfInfo {
        is_64bit: wide,
        soname: None,
    };
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Some(info);
    };
    let ent = if wide { 16 } else { 8 };
    let (mut strtab, mut soname) = (None, None);
    let mut p = usize::try_from(dyn_off).ok()?;
    let end = p.checked_add(usize::try_from(dyn_size).ok()?)?;
    while p + ent <= end {
        let tag = r.word(p)?;
        let val = r.word(p + ent / 2)?;
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_SONAME => soname = Some(val),
            _ => {}
        }
        p += ent;
    }
    if let (Some(strtab), Some(name)) = (strtab, soname) {
        // DT_STRTAB is a virtual address: map it to a file offset through the load segments.
        let file_off = loads
            .iter()
            .find(|(_, va, sz)| strtab >= *va && strtab < va + sz)
            .map(|(off, va, _)| strtab - va + off)?;
        let start = usize::try_from(file_off.checked_add(name)?).ok()?;
        let rest = b.get(start..)?;
        let n = rest.iter().position(|c| *c == 0)?;
        info.soname = Some(String::from_utf8_lossy(&rest[..n]).into_owned());
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libc_soname() {
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/aarch64-linux-gnu/libc.so.6",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
        let Some(libc) = libc else { return };
        let info = read(libc).unwrap();
        assert!(info.is_64bit);
        assert_eq!(info.soname.as_deref(), Some("libc.so.6"));
    }

    #[test]
    fn non_elf_is_none() {
        assert_eq!(parse(b"#!/bin/sh\n"), None);
        assert_eq!(parse(b"\x7fELF"), None);
    }
}
