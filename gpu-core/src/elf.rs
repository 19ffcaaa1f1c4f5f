//! Just enough ELF to read a shared library's class and `DT_SONAME` (the name programs link
//! against and `dlopen`), without running anything.

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

/// Random access to the bytes of a file or a buffer.
trait Source {
    fn bytes(&self, off: u64, len: usize) -> Option<Vec<u8>>;
}

impl Source for &[u8] {
    fn bytes(&self, off: u64, len: usize) -> Option<Vec<u8>> {
        let off = usize::try_from(off).ok()?;
        self.get(off..off.checked_add(len)?).map(<[u8]>::to_vec)
    }
}

/// A file and its length: a read past the end is refused before anything is allocated for it.
struct FileSource(std::fs::File, u64);

impl Source for FileSource {
    fn bytes(&self, off: u64, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        if off.checked_add(len as u64)? > self.1 {
            return None;
        }
        let mut b = vec![0u8; len];
        self.0.read_exact_at(&mut b, off).ok()?;
        Some(b)
    }
}

fn uint(b: &[u8], off: usize, size: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(size)?)?;
    Some(match size {
        2 => u64::from(u16::from_le_bytes(s.try_into().ok()?)),
        4 => u64::from(u32::from_le_bytes(s.try_into().ok()?)),
        _ => u64::from_le_bytes(s.try_into().ok()?),
    })
}

/// Reads the ELF headers of `path` (only the headers, the dynamic section and one string are
/// read, wherever they sit in the file). Returns `None` for anything that is not a
/// little-endian ELF we can parse.
pub fn read(path: &Path) -> Option<ElfInfo> {
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    parse_from(&FileSource(f, len))
}

/// The contents of section `name` of the 64-bit little-endian ELF file at `path`, at most `max`
/// bytes of it. Only the section headers, their name table and that section are read.
pub fn section(path: &Path, name: &str, max: usize) -> Option<Vec<u8>> {
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let src = FileSource(f, len);
    let h = src.bytes(0, 64)?;
    if h.get(0..4)? != b"\x7fELF" || *h.get(4)? != 2 || *h.get(5)? != 1 {
        return None;
    }
    let shoff = uint(&h, 0x28, 8)?;
    let (shentsize, shnum, shstrndx) = (uint(&h, 0x3a, 2)?, uint(&h, 0x3c, 2)?, uint(&h, 0x3e, 2)?);
    if shentsize != 64 || shnum > 4096 || shstrndx >= shnum {
        return None;
    }
    let table = src.bytes(shoff, usize::try_from(shentsize * shnum).ok()?)?;
    // (name offset, file offset, size) of header i.
    let header = |i: u64| -> Option<(u64, u64, u64)> {
        let at = usize::try_from(i * shentsize).ok()?;
        Some((
            uint(&table, at, 4)?,
            uint(&table, at + 0x18, 8)?,
            uint(&table, at + 0x20, 8)?,
        ))
    };
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = src.bytes(str_off, usize::try_from(str_size.min(1 << 16)).ok()?)?;
    (0..shnum).find_map(|i| {
        let (n, off, size) = header(i)?;
        let at = usize::try_from(n).ok()?;
        let end = at + names.get(at..)?.iter().position(|c| *c == 0)?;
        if &names[at..end] != name.as_bytes() {
            return None;
        }
        src.bytes(off, usize::try_from(size).ok()?.min(max))
    })
}

/// Parses ELF bytes (see [`read`]).
pub fn parse(b: &[u8]) -> Option<ElfInfo> {
    parse_from(&b)
}

/// Load segments `(offset, vaddr, filesz)` and the dynamic segment `(offset, size)`, from the
/// program headers the ELF header `h` points at.
type Segments = (Vec<(u64, u64, u64)>, Option<(u64, u64)>);

fn segments(src: &impl Source, h: &[u8], wide: bool) -> Option<Segments> {
    let (phoff, phentsize, phnum) = if wide {
        (uint(h, 0x20, 8)?, uint(h, 0x36, 2)?, uint(h, 0x38, 2)?)
    } else {
        (uint(h, 0x1c, 4)?, uint(h, 0x2a, 2)?, uint(h, 0x2c, 2)?)
    };
    // The program header entry has one size per class; anything else is not an ELF we read.
    if phentsize != if wide { 56 } else { 32 } {
        return None;
    }
    let ph_all = src.bytes(phoff, usize::try_from(phentsize * phnum).ok()?)?;
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum as usize {
        let ph = i * phentsize as usize;
        let ptype = uint(&ph_all, ph, 4)? as u32;
        // (p_offset, p_vaddr, p_filesz)
        let (off, vaddr, filesz) = if wide {
            (
                uint(&ph_all, ph + 8, 8)?,
                uint(&ph_all, ph + 16, 8)?,
                uint(&ph_all, ph + 32, 8)?,
            )
        } else {
            (
                uint(&ph_all, ph + 4, 4)?,
                uint(&ph_all, ph + 8, 4)?,
                uint(&ph_all, ph + 16, 4)?,
            )
        };
        match ptype {
            PT_LOAD => loads.push((off, vaddr, filesz)),
            PT_DYNAMIC => dynamic = Some((off, filesz)),
            _ => {}
        }
    }
    Some((loads, dynamic))
}

/// `DT_STRTAB` and `DT_SONAME` from the dynamic segment.
fn dynamic_tags(
    src: &impl Source,
    (off, size): (u64, u64),
    wide: bool,
) -> Option<(Option<u64>, Option<u64>)> {
    let ent = if wide { 16 } else { 8 };
    let word = ent / 2;
    let dynamic = src.bytes(off, usize::try_from(size.min(1 << 20)).ok()?)?;
    let (mut strtab, mut soname) = (None, None);
    let mut p = 0;
    while p + ent <= dynamic.len() {
        let tag = uint(&dynamic, p, word)?;
        let val = uint(&dynamic, p + word, word)?;
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_SONAME => soname = Some(val),
            _ => {}
        }
        p += ent;
    }
    Some((strtab, soname))
}

fn parse_from(src: &impl Source) -> Option<ElfInfo> {
    let h = src.bytes(0, 64).or_else(|| src.bytes(0, 52))?;
    if h.get(0..4)? != b"\x7fELF" || *h.get(5)? != 1 {
        return None; // not ELF, or big-endian
    }
    let wide = match h.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let (loads, dynamic) = segments(src, &h, wide)?;
    let mut info = ElfInfo {
        is_64bit: wide,
        soname: None,
    };
    let Some(dynamic) = dynamic else {
        return Some(info);
    };
    if let (Some(strtab), Some(name)) = dynamic_tags(src, dynamic, wide)? {
        // DT_STRTAB is a virtual address: map it to a file offset through the load segments. A
        // name we cannot reach leaves the soname unknown, not the file.
        info.soname = loads
            .iter()
            .find(|(_, va, sz)| strtab >= *va && strtab - va < *sz)
            .and_then(|(off, va, _)| (strtab - va).checked_add(*off))
            .and_then(|file_off| file_off.checked_add(name))
            .and_then(|start| {
                // A soname is short; read a little and stop at its NUL.
                (0..3).find_map(|k| src.bytes(start, 256 >> k))
            })
            .and_then(|rest| {
                let n = rest.iter().position(|c| *c == 0)?;
                Some(String::from_utf8_lossy(&rest[..n]).into_owned())
            });
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
    fn dynamic_section_far_into_a_large_library() {
        // libcuda is ~100 MB with its dynamic section near the end: headers are read in place.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("big.c");
        std::fs::write(
            &src,
            "const char pad[8<<20] = {1};\nconst char *f(void){return pad;}\n",
        )
        .unwrap();
        let lib = d.path().join("libbig.so.9");
        let ok = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libbig.so.1", "-o"])
            .arg(&lib)
            .arg(&src)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return; // no C compiler
        }
        assert_eq!(read(&lib).unwrap().soname.as_deref(), Some("libbig.so.1"));
    }

    #[test]
    fn non_elf_is_none() {
        assert_eq!(parse(b"#!/bin/sh\n"), None);
        assert_eq!(parse(b"\x7fELF"), None);
    }

    #[test]
    fn reads_a_named_section_of_a_real_binary() {
        // Every Rust test binary has a .comment or .text section; the running one is at hand.
        let exe = std::env::current_exe().unwrap();
        let text = section(&exe, ".text", 16).expect(".text");
        assert_eq!(text.len(), 16);
        assert!(section(&exe, ".no-such-section", 16).is_none());
        assert!(section(Path::new("/nonexistent"), ".text", 16).is_none());
    }
}
