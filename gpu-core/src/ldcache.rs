//! glibc's `ld.so.cache`: a reader for both layouts (old `ld.so-1.7.0` followed by the new one, or
//! the new `glibc-ld.so.cache1.1` alone) and a writer of the new layout.
//!
//! The shim reads the driver root's cache to find libraries and writes the container's cache so
//! the container's loader resolves injected libraries without running `ldconfig` (no program from
//! the image ever runs). Entries must be sorted the way glibc's binary search expects: descending
//! by [`libcmp`], then by flags descending.

use std::cmp::Ordering;

const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const NEW_HEADER: usize = 48;
const NEW_ENTRY: usize = 24;
const OLD_ENTRY: usize = 12;
/// Set in `hwcap` when the entry refers to the glibc-hwcaps extension.
const HWCAP_EXTENSION: u64 = 1 << 62;

/// `FLAG_ELF_LIBC6`.
pub const FLAG_ELF_LIBC6: i32 = 0x0003;
/// The flags of a 64-bit library for this build's architecture.
pub const FLAGS_LIB64: i32 = FLAG_ELF_LIBC6
    | if cfg!(target_arch = "aarch64") {
        0x0a00 // FLAG_AARCH64_LIB64
    } else {
        0x0300 // FLAG_X8664_LIB64
    };
/// The flags of a 32-bit (i386/armhf) library.
pub const FLAGS_LIB32: i32 = FLAG_ELF_LIBC6;

/// One cache entry: a name the loader looks up and the path it loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Library flags (ELF class and architecture).
    pub flags: i32,
    /// The name looked up, e.g. `libcuda.so.1`.
    pub key: String,
    /// The path loaded, e.g. `/usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05`.
    pub value: String,
    /// hwcap bits (0 for plain entries).
    pub hwcap: u64,
}

impl Entry {
    /// A plain entry.
    pub fn new(flags: i32, key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            flags,
            key: key.into(),
            value: value.into(),
            hwcap: 0,
        }
    }

    /// Whether the entry is a 64-bit library of this architecture.
    pub fn is_lib64(&self) -> bool {
        self.flags == FLAGS_LIB64
    }
}

/// Why a cache could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LdCacheError {
    /// Neither magic matched.
    #[error("not an ld.so.cache (unknown magic)")]
    BadMagic,
    /// A count or offset points outside the file.
    #[error("truncated or corrupt ld.so.cache")]
    Corrupt,
    /// A big-endian cache on this little-endian host (or the other way round).
    #[error("ld.so.cache of foreign endianness")]
    ForeignEndian,
    /// Over one of the [`Limits`]: a real cache never is, a crafted one may be.
    #[error("ld.so.cache over the bounds: {0}")]
    TooLarge(String),
}

/// Bounds on what [`parse`] accepts, so a crafted cache (every entry pointing at one long
/// string, say) cannot make the reader allocate or the writer write without bound.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most entries.
    pub max_entries: usize,
    /// Longest key or value, in bytes (a path: `PATH_MAX`).
    pub max_string: usize,
    /// Most bytes of strings over all entries, as copied out (shared strings count each time).
    pub max_total_strings: usize,
}

impl Limits {
    /// Bounds for an image's cache: a full desktop distribution's cache holds a few thousand
    /// entries and well under 1 MiB of strings.
    pub const IMAGE: Limits = Limits {
        max_entries: 32 * 1024,
        max_string: 4096,
        max_total_strings: 4 << 20,
    };
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, LdCacheError> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(LdCacheError::Corrupt)
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, LdCacheError> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
        .ok_or(LdCacheError::Corrupt)
}

/// The NUL-terminated string at `off`, at most `max` bytes long (the scan stops there too, so a
/// string without a terminator costs `max` bytes, not the rest of the file).
fn cstr_at(b: &[u8], off: usize, max: usize) -> Result<String, LdCacheError> {
    let rest = b.get(off..).ok_or(LdCacheError::Corrupt)?;
    let window = &rest[..rest.len().min(max + 1)];
    let Some(end) = window.iter().position(|c| *c == 0) else {
        return Err(if window.len() > max {
            LdCacheError::TooLarge(format!(
                "a string at offset {off} is longer than {max} bytes"
            ))
        } else {
            LdCacheError::Corrupt
        });
    };
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Parses a trusted cache (the host's or a driver root's); see [`parse_bounded`].
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, LdCacheError> {
    parse_bounded(
        bytes,
        Limits {
            max_entries: usize::MAX,
            max_string: 4096,
            max_total_strings: usize::MAX,
        },
    )
}

/// Parses a cache file's bytes into its entries (new-format entries; the old section is skipped),
/// refusing anything over `limits` before allocating for it.
pub fn parse_bounded(bytes: &[u8], limits: Limits) -> Result<Vec<Entry>, LdCacheError> {
    let start = if bytes.starts_with(NEW_MAGIC) {
        0
    } else if bytes.starts_with(OLD_MAGIC) {
        let nlibs = u32_at(bytes, 12)? as usize;
        let end = 16usize
            .checked_add(nlibs.checked_mul(OLD_ENTRY).ok_or(LdCacheError::Corrupt)?)
            .ok_or(LdCacheError::Corrupt)?;
        let aligned = (end + 7) & !7;
        if !bytes
            .get(aligned..)
            .is_some_and(|b| b.starts_with(NEW_MAGIC))
        {
            // An old-format-only cache: nothing a modern loader reads.
            return Ok(Vec::new());
        }
        aligned
    } else {
        return Err(LdCacheError::BadMagic);
    };
    let b = &bytes[start..];
    let nlibs = u32_at(b, 20)? as usize;
    let endian = *b.get(28).ok_or(LdCacheError::Corrupt)?;
    let ours = if cfg!(target_endian = "little") { 2 } else { 3 };
    if endian > 1 && endian != ours {
        return Err(LdCacheError::ForeignEndian);
    }
    let table_end = NEW_HEADER
        .checked_add(nlibs.checked_mul(NEW_ENTRY).ok_or(LdCacheError::Corrupt)?)
        .ok_or(LdCacheError::Corrupt)?;
    if table_end > b.len() {
        return Err(LdCacheError::Corrupt);
    }
    if nlibs > limits.max_entries {
        return Err(LdCacheError::TooLarge(format!(
            "{nlibs} entries (limit {})",
            limits.max_entries
        )));
    }
    let mut out = Vec::with_capacity(nlibs);
    let mut total = 0usize;
    for i in 0..nlibs {
        let e = NEW_HEADER + i * NEW_ENTRY;
        let flags = u32_at(b, e)? as i32;
        let key = cstr_at(b, u32_at(b, e + 4)? as usize, limits.max_string)?;
        let value = cstr_at(b, u32_at(b, e + 8)? as usize, limits.max_string)?;
        let hwcap = u64_at(b, e + 16)?;
        total = total.saturating_add(key.len() + value.len());
        if total > limits.max_total_strings {
            return Err(LdCacheError::TooLarge(format!(
                "more than {} bytes of names",
                limits.max_total_strings
            )));
        }
        out.push(Entry {
            flags,
            key,
            value,
            hwcap,
        });
    }
    Ok(out)
}

/// glibc's `_dl_cache_libcmp`: compares names with digit runs compared numerically.
pub fn libcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        let (ca, cb) = (a[i], b.get(j).copied().unwrap_or(0));
        if ca.is_ascii_digit() {
            if !cb.is_ascii_digit() {
                return Ordering::Greater;
            }
            let (mut va, mut vb) = (0u64, 0u64);
            while i < a.len() && a[i].is_ascii_digit() {
                va = va.saturating_mul(10).saturating_add(u64::from(a[i] - b'0'));
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                vb = vb.saturating_mul(10).saturating_add(u64::from(b[j] - b'0'));
                j += 1;
            }
            if va != vb {
                return va.cmp(&vb);
            }
        } else if cb.is_ascii_digit() {
            return Ordering::Less;
        } else if ca != cb {
            return ca.cmp(&cb);
        } else {
            i += 1;
            j += 1;
        }
    }
    0u8.cmp(&b.get(j).copied().unwrap_or(0))
}

fn order(x: &Entry, y: &Entry) -> Ordering {
    libcmp(&y.key, &x.key)
        .then(y.flags.cmp(&x.flags))
        .then(y.hwcap.cmp(&x.hwcap))
}

/// Sorts entries the way ldconfig writes them (descending name, then flags descending).
pub fn sort(entries: &mut [Entry]) {
    entries.sort_by(order);
}

/// Serialises entries as a new-format cache (sorted first; hwcap-extension entries dropped since
/// no extension section is written).
pub fn write(entries: &[Entry]) -> Vec<u8> {
    // Borrow, don't clone: an image's cache has hundreds of entries and this runs on every
    // GPU container's Create.
    let mut entries: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.hwcap & HWCAP_EXTENSION == 0)
        .collect();
    entries.sort_by(|x, y| order(x, y));
    let strings_start = NEW_HEADER + entries.len() * NEW_ENTRY;
    let mut strings: Vec<u8> = Vec::with_capacity(entries.len() * 48);
    // Each string is stored once per use; sharing equal strings (as ldconfig does) saves a few
    // bytes but costs a hash of every name on each Create.
    let mut push = |s: &str| -> u32 {
        let off = (strings_start + strings.len()) as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        off
    };
    let mut table = Vec::with_capacity(entries.len() * NEW_ENTRY);
    for e in &entries {
        let k = push(&e.key);
        let v = push(&e.value);
        table.extend_from_slice(&e.flags.to_ne_bytes());
        table.extend_from_slice(&k.to_ne_bytes());
        table.extend_from_slice(&v.to_ne_bytes());
        table.extend_from_slice(&0u32.to_ne_bytes());
        table.extend_from_slice(&e.hwcap.to_ne_bytes());
    }
    let mut out = Vec::with_capacity(strings_start + strings.len());
    out.extend_from_slice(NEW_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_ne_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
    out.push(if cfg!(target_endian = "little") { 2 } else { 3 });
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&0u32.to_ne_bytes()); // no extension section
    out.extend_from_slice(&[0; 12]);
    out.extend_from_slice(&table);
    out.extend_from_slice(&strings);
    out
}

/// Merges `ours` into an existing cache: entries of the same name and flags are replaced, so a
/// stale stub the image's cache points at can no longer shadow the injected library.
pub fn merge(existing: Vec<Entry>, ours: &[Entry]) -> Vec<Entry> {
    let mut out: Vec<Entry> = existing
        .into_iter()
        .filter(|e| !ours.iter().any(|o| o.key == e.key && o.flags == e.flags))
        .collect();
    for o in ours {
        if !out.iter().any(|e| e.key == o.key && e.flags == o.flags) {
            out.push(o.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcmp_matches_glibc() {
        assert_eq!(libcmp("libc.so.6", "libc.so.6"), Ordering::Equal);
        assert_eq!(libcmp("libc.so.10", "libc.so.9"), Ordering::Greater);
        assert_eq!(libcmp("liba.so", "libb.so"), Ordering::Less);
        assert_eq!(libcmp("libcuda.so", "libcuda.so.1"), Ordering::Less);
        assert_eq!(libcmp("lib1", "liba"), Ordering::Greater);
        assert_eq!(libcmp("liba", "lib1"), Ordering::Less);
    }

    #[test]
    fn write_then_parse_round_trips_sorted() {
        let entries = vec![
            Entry::new(FLAGS_LIB64, "libcuda.so.1", "/usr/lib/x/libcuda.so.580.1"),
            Entry::new(FLAGS_LIB64, "libc.so.6", "/lib/x/libc.so.6"),
            Entry::new(FLAGS_LIB32, "libc.so.6", "/lib/i386/libc.so.6"),
            Entry::new(FLAGS_LIB64, "libz.so.1", "/lib/x/libz.so.1"),
        ];
        let bytes = write(&entries);
        let back = parse(&bytes).unwrap();
        assert_eq!(back.len(), 4);
        let keys: Vec<&str> = back.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["libz.so.1", "libcuda.so.1", "libc.so.6", "libc.so.6"]
        );
        assert_eq!(
            back[2].flags, FLAGS_LIB64,
            "higher flags first among equal names"
        );
    }

    #[test]
    fn reads_the_hosts_own_cache() {
        // Every glibc system has one; it must parse and contain libc.
        let Ok(bytes) = std::fs::read("/etc/ld.so.cache") else {
            return;
        };
        let entries = parse(&bytes).unwrap();
        assert!(entries.iter().any(|e| e.key == "libc.so.6"), "{entries:?}");
        // Rewriting it keeps every plain entry.
        let again = parse(&write(&entries)).unwrap();
        let plain = entries
            .iter()
            .filter(|e| e.hwcap & HWCAP_EXTENSION == 0)
            .count();
        assert_eq!(again.len(), plain);
    }

    #[test]
    fn merge_replaces_a_stale_stub() {
        let image = vec![
            Entry::new(
                FLAGS_LIB64,
                "libcuda.so.1",
                "/usr/local/cuda/stubs/libcuda.so.1",
            ),
            Entry::new(FLAGS_LIB64, "libm.so.6", "/lib/libm.so.6"),
        ];
        let ours = [Entry::new(
            FLAGS_LIB64,
            "libcuda.so.1",
            "/usr/lib64/libcuda.so.580.1",
        )];
        let merged = merge(image, &ours);
        let cuda: Vec<_> = merged.iter().filter(|e| e.key == "libcuda.so.1").collect();
        assert_eq!(cuda.len(), 1);
        assert_eq!(cuda[0].value, "/usr/lib64/libcuda.so.580.1");
        assert!(merged.iter().any(|e| e.key == "libm.so.6"));
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert_eq!(parse(b"hello"), Err(LdCacheError::BadMagic));
        let mut b = write(&[Entry::new(FLAGS_LIB64, "a", "b")]);
        b.truncate(60);
        assert_eq!(parse(&b), Err(LdCacheError::Corrupt));
        let mut b = write(&[]);
        b[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(parse(&b), Err(LdCacheError::Corrupt));
    }

    use crate::fixture::crafted_ld_cache as shared_string_cache;

    #[test]
    fn crafted_caches_are_refused_within_bounds() {
        // The adversarial run's case: 200k entries sharing an 11 MB string.
        let b = shared_string_cache(200_000, 11 << 20);
        assert!(matches!(
            parse_bounded(&b, Limits::IMAGE),
            Err(LdCacheError::TooLarge(_))
        ));
        // Few entries, one long shared string: each string is over the per-string bound.
        let b = shared_string_cache(10, 100_000);
        let e = parse_bounded(&b, Limits::IMAGE).unwrap_err();
        assert!(e.to_string().contains("longer than 4096"), "{e}");
        // Many entries sharing a path-sized string: the total bound trips.
        let b = shared_string_cache(30_000, 4000);
        let e = parse_bounded(&b, Limits::IMAGE).unwrap_err();
        assert!(e.to_string().contains("bytes of names"), "{e}");
        // Within bounds it parses, and writing it back stays proportionate.
        let b = shared_string_cache(1000, 100);
        let entries = parse_bounded(&b, Limits::IMAGE).unwrap();
        assert_eq!(entries.len(), 1000);
        assert!(write(&entries).len() < 48 + 1000 * (24 + 2 * 101) + 1);
    }
}
