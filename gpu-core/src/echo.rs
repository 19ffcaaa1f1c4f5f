//! Echoing input back in errors and logs, bounded: a 5 MB env value must not become a 5 MB log
//! line or an error too large for containerd's ttrpc client to receive.

/// Bytes of input an error or log line quotes before cutting it short.
pub const ECHO_LIMIT: usize = 256;

/// `s` quoted as Rust's `{:?}` does, cut to [`ECHO_LIMIT`] bytes with `… (N bytes)` after it.
pub fn quoted(s: &str) -> String {
    if s.len() <= ECHO_LIMIT {
        return format!("{s:?}");
    }
    format!("{:?}… ({} bytes)", head(s, ECHO_LIMIT), s.len())
}

/// `s` as is, cut to `limit` bytes with `… (N bytes)` after it.
pub fn clipped(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    format!("{}… ({} bytes)", head(s, limit), s.len())
}

/// The longest prefix of `s` of at most `limit` bytes that ends on a character boundary.
fn head(s: &str, limit: usize) -> &str {
    let mut end = limit.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_cut_with_its_length() {
        assert_eq!(quoted("0,1"), "\"0,1\"");
        let big = "x".repeat(1 << 20);
        let q = quoted(&big);
        assert!(q.len() < ECHO_LIMIT + 40, "{}", q.len());
        assert!(q.ends_with("… (1048576 bytes)"), "{q}");
        // Never splits a multi-byte character.
        let s = "é".repeat(300);
        assert!(clipped(&s, 255).starts_with('é'));
        assert!(clipped(&s, 255).contains("(600 bytes)"));
    }
}
