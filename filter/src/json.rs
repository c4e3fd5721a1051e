//! A small, strict JSON reader (RFC 8259) that keeps the line and column of every value.
//!
//! The filter reads one small document per configuration, and every byte of the module counts:
//! this reader is a few kilobytes of wasm where a general-purpose JSON library is a hundred. It
//! rejects duplicate keys, trailing data, and nesting deeper than [`MAX_DEPTH`].
//!
//! ```
//! use header_filter::json::{parse, Json};
//!
//! let doc = parse(br#"{"name": "x-a", "n": [1, true]}"#).unwrap();
//! let Json::Object(fields) = &doc.value else { panic!() };
//! assert_eq!(fields[0].0, "name");
//! assert_eq!(fields[1].1.at.column, 22);
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// How deep arrays and objects may nest.
pub const MAX_DEPTH: usize = 32;

/// A position in the document: 1-based line and column (in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

/// A value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Json,
    /// Where its first byte is.
    pub at: Pos,
}

/// A JSON value. Numbers keep their text: the configuration has no numeric fields, and an
/// error message should show what the user wrote.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Node>),
    /// An object, in document order.
    Object(Vec<(String, Node)>),
}

impl Json {
    /// What kind of value this is, for error messages ("a string", "an array", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// Malformed JSON: what was expected and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub at: Pos,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.message, self.at)
    }
}

/// Shows a string in double quotes with control characters, quotes and backslashes escaped;
/// lighter on the module than `{:?}`, which brings Unicode tables along.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", Unquoted(self.0))
    }
}

/// Shows a string escaped as in [`Quoted`], without the quotes: for user text inside a larger
/// quoted form, such as a placeholder `${...}` in an error.
pub struct Unquoted<'a>(pub &'a str);

impl fmt::Display for Unquoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            write!(f, "{}", Escaped(c))?;
        }
        Ok(())
    }
}

/// Shows one character in single quotes, escaped as in [`Quoted`].
pub struct CharName(pub char);

impl fmt::Display for CharName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", Escaped(self.0))
    }
}

struct Escaped(char);

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            '"' => f.write_str("\\\""),
            '\\' => f.write_str("\\\\"),
            '\n' => f.write_str("\\n"),
            '\r' => f.write_str("\\r"),
            '\t' => f.write_str("\\t"),
            '\0' => f.write_str("\\0"),
            c if c.is_control() => write!(f, "\\u{{{:x}}}", c as u32),
            c => write!(f, "{c}"),
        }
    }
}

/// Parse one JSON document.
pub fn parse(input: &[u8]) -> Result<Node, SyntaxError> {
    let mut p = Parser {
        s: input,
        i: 0,
        line: 1,
        line_start: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i < p.s.len() {
        return Err(p.err("trailing data after the JSON document"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
    line_start: usize,
}

impl Parser<'_> {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.i - self.line_start + 1,
        }
    }

    fn err(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            message: message.into(),
            at: self.pos(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b'\n' => {
                    self.i += 1;
                    self.line += 1;
                    self.line_start = self.i;
                }
                b' ' | b'\t' | b'\r' => self.i += 1,
                _ => break,
            }
        }
    }

    fn expect_end(&self, what: &str) -> SyntaxError {
        match self.peek() {
            None => self.err(format!("unexpected end of input, expected {what}")),
            Some(b) if b.is_ascii_graphic() => {
                self.err(format!("unexpected '{}', expected {what}", b as char))
            }
            Some(b) => self.err(format!("unexpected byte 0x{b:02x}, expected {what}")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        let at = self.pos();
        let value = match self.peek() {
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Json::String(self.string()?),
            Some(b't') => self.word("true", Json::Bool(true))?,
            Some(b'f') => self.word("false", Json::Bool(false))?,
            Some(b'n') => self.word("null", Json::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return Err(self.expect_end("a value")),
        };
        Ok(Node { value, at })
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json, SyntaxError> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(self.expect_end("a value"))
        }
    }

    fn number(&mut self) -> Result<Json, SyntaxError> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while matches!(p.peek(), Some(b'0'..=b'9')) {
                p.i += 1;
            }
            p.i > from
        };
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        if self.peek() == Some(b'0') {
            self.i += 1;
        } else if !digits(self) {
            return Err(self.expect_end("a digit"));
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !digits(self) {
                return Err(self.expect_end("a digit"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !digits(self) {
                return Err(self.expect_end("a digit"));
            }
        }
        Ok(Json::Number(
            // Only ASCII digits, signs, '.', 'e' were consumed.
            self.s[start..self.i].iter().map(|&b| b as char).collect(),
        ))
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.expect_end("a hex digit")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.i += 1; // opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            match b {
                b'"' => {
                    self.i += 1;
                    break;
                }
                b'\\' => {
                    self.i += 1;
                    let esc = self.peek();
                    self.i += 1;
                    let c = match esc {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !self.s[self.i..].starts_with(b"\\u") {
                                    return Err(self.err("lone UTF-16 surrogate in \\u escape"));
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("invalid UTF-16 surrogate pair"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(code)
                                .ok_or_else(|| self.err("lone UTF-16 surrogate in \\u escape"))?
                        }
                        _ => {
                            self.i -= 1;
                            return Err(self.err("invalid escape in string"));
                        }
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => {
                    return Err(
                        self.err(format!("control character 0x{b:02x} in string (escape it)"))
                    );
                }
                _ => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn array(&mut self, depth: usize) -> Result<Json, SyntaxError> {
        if depth >= MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH}")));
        }
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.expect_end("',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, SyntaxError> {
        if depth >= MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH}")));
        }
        self.i += 1;
        let mut fields: Vec<(String, Node)> = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Json::Object(fields));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.expect_end("a field name in double quotes"));
            }
            let key_at = self.pos();
            let key = self.string()?;
            if fields.iter().any(|(k, _)| *k == key) {
                return Err(SyntaxError {
                    message: format!("duplicate field {}", Quoted(&key)),
                    at: key_at,
                });
            }
            self.ws();
            if self.peek() != Some(b':') {
                return Err(self.expect_end("':'"));
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth + 1)?;
            fields.push((key, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Object(fields));
                }
                _ => return Err(self.expect_end("',' or '}'")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse(s.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn parses_every_kind_of_value() {
        let n = parse(
            br#" {"a": [null, true, false, -1.5e3, 0, "x\"\u00e9\ud83d\ude00\n"], "b": {}} "#,
        )
        .unwrap();
        let Json::Object(f) = n.value else { panic!() };
        let Json::Array(items) = &f[0].1.value else {
            panic!()
        };
        assert_eq!(items[0].value, Json::Null);
        assert_eq!(items[1].value, Json::Bool(true));
        assert_eq!(items[2].value, Json::Bool(false));
        assert_eq!(items[3].value, Json::Number("-1.5e3".into()));
        assert_eq!(items[4].value, Json::Number("0".into()));
        assert_eq!(items[5].value, Json::String("x\"é😀\n".into()));
        assert_eq!(f[1].1.value, Json::Object(vec![]));
        assert_eq!(n.at, Pos { line: 1, column: 2 });
    }

    #[test]
    fn quoting_escapes_what_would_break_a_line() {
        assert_eq!(
            Quoted("a\"b\\c\r\n\u{1}é").to_string(),
            r#""a\"b\\c\r\n\u{1}é""#
        );
        assert_eq!(CharName('\0').to_string(), r"'\0'");
    }

    #[test]
    fn positions_count_lines_and_columns() {
        let n = parse(b"{\n  \"k\":\n    \"v\"}").unwrap();
        let Json::Object(f) = n.value else { panic!() };
        assert_eq!(f[0].1.at, Pos { line: 3, column: 5 });
    }

    #[test]
    fn rejects_malformed_input_with_position() {
        assert_eq!(
            err(""),
            "unexpected end of input, expected a value at line 1 column 1"
        );
        assert_eq!(
            err(r#"{"a" 1}"#),
            "unexpected '1', expected ':' at line 1 column 6"
        );
        assert_eq!(
            err(r#"{"a":1,}"#),
            "unexpected '}', expected a field name in double quotes at line 1 column 8"
        );
        assert_eq!(
            err("[1 2]"),
            "unexpected '2', expected ',' or ']' at line 1 column 4"
        );
        assert_eq!(
            err("{\n\"a\":tru}"),
            "unexpected 't', expected a value at line 2 column 5"
        );
        assert_eq!(err(r#""abc"#), "unterminated string at line 1 column 5");
        assert_eq!(
            err(r#"{"a":1,"a":2}"#),
            "duplicate field \"a\" at line 1 column 8"
        );
        assert_eq!(
            err("1 2"),
            "trailing data after the JSON document at line 1 column 3"
        );
        assert_eq!(
            err(r#""\q""#),
            "invalid escape in string at line 1 column 3"
        );
        assert_eq!(
            err("\"a\u{1}\""),
            "control character 0x01 in string (escape it) at line 1 column 3"
        );
        assert_eq!(
            err(r#""\ud800""#),
            "lone UTF-16 surrogate in \\u escape at line 1 column 8"
        );
        assert_eq!(
            err("01"),
            "trailing data after the JSON document at line 1 column 2"
        );
        assert_eq!(
            err("-"),
            "unexpected end of input, expected a digit at line 1 column 2"
        );
        assert!(err(&"[".repeat(40)).starts_with("nesting deeper than 32"));
    }
}
