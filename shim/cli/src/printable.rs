//! Text from annotations and records, made safe to print on an operator's terminal: names come
//! from whoever created the container, and a raw ESC, CR or right-to-left override in them would
//! let that person rewrite or hide lines of the operator's screen.

/// `s` with every control character (C0, DEL, C1) and every bidirectional-formatting character
/// written as a `\u{…}` escape; everything else as is.
pub fn escaped(s: &str) -> String {
    if !s.chars().any(unsafe_char) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped_and_names_are_not() {
        assert_eq!(escaped("pod-1 (ctr)"), "pod-1 (ctr)");
        assert_eq!(escaped("ünï/名前"), "ünï/名前");
        let hostile = "a\x1b[2J\rb\0c\nd\u{202E}e\u{9b}f";
        let e = escaped(hostile);
        assert!(
            !e.chars().any(unsafe_char),
            "a control character got through: {e:?}"
        );
        assert_eq!(e, "a\\u{1b}[2J\\u{d}b\\u{0}c\\u{a}d\\u{202e}e\\u{9b}f");
    }
}
