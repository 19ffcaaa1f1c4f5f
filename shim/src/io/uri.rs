//! stdio URIs as containerd sends them: a FIFO path or `fifo://`, `file://`, `binary://` with
//! query arguments, or nothing.

use std::path::PathBuf;

/// Where the container's output goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

pub(super) fn parse_target(uri: &str) -> Result<Target, String> {
    if uri.is_empty() {
        return Ok(Target::Null);
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Ok(Target::Fifo(uri.into()));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = percent_decode(path);
    match scheme {
        "fifo" => Ok(Target::Fifo(path.into())),
        "file" => Ok(Target::File(path.into())),
        "binary" => {
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(percent_decode(k));
                if !v.is_empty() {
                    args.push(percent_decode(v));
                }
            }
            Ok(Target::Binary {
                path: path.into(),
                args,
            })
        }
        other => Err(format!(
            "unsupported stdio scheme {other:?} in {uri:?} (supported: fifo, file, binary)"
        )),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("").unwrap(), Target::Null);
        assert_eq!(
            parse_target("/run/x/stdout").unwrap(),
            Target::Fifo("/run/x/stdout".into())
        );
        assert_eq!(
            parse_target("fifo:///a/b").unwrap(),
            Target::Fifo("/a/b".into())
        );
        assert_eq!(
            parse_target("file:///var/log/a%20b.log").unwrap(),
            Target::File("/var/log/a b.log".into())
        );
        assert_eq!(
            parse_target("binary:///usr/bin/logger?id=7&flag").unwrap(),
            Target::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["id".into(), "7".into(), "flag".into()]
            }
        );
        assert!(parse_target("tcp://x").unwrap_err().contains("tcp"));
    }
}
