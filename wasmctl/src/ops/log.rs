//! One `key=value` (logfmt) line per event on stderr: `ts=... level=... event=... k=v ...`.

use super::time::{rfc3339, unix_now};
use std::fmt::Write as _;

/// A log line's value: bare when it is a simple word, else double-quoted with escapes.
fn value(v: &str) -> String {
    let simple = !v.is_empty()
        && v.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'=' && c != b'\\');
    if simple {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

/// Write one structured line to stderr: `ts=... level=... event=... k=v ...`.
pub fn log(level: &str, event: &str, fields: &[(&str, &str)]) {
    let mut line = format!("ts={} level={level} event={event}", rfc3339(unix_now()));
    for (k, v) in fields {
        let _ = write!(line, " {k}={}", value(v));
    }
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_values_only_when_needed() {
        assert_eq!(value("abc"), "abc");
        assert_eq!(value("a b"), "\"a b\"");
        assert_eq!(value(""), "\"\"");
    }
}
