//! The header filter's configuration reader and compiler (`filter_config`) and its rule engine
//! (`filter_headers`), run natively: the same code the wasm module runs.

use header_filter::config::{Config, ConfigError, Direction, Outcome, PLACEHOLDERS, Stream};
use header_filter::json::{self, Json, Node, Pos, Quoted};
use std::collections::HashMap;

/// Constant attributes as Envoy would answer them; some hold `$` and braces, so that the
/// canonical form must escape what they fill in.
fn constants(path: &[&str]) -> Option<String> {
    match path {
        ["plugin_root_id"] => Some("root$id${node.id}".into()),
        ["plugin_name"] => Some("$$".into()),
        ["plugin_vm_id"] => Some("vm".into()),
        ["xds", "node", "id"] => Some("node-1".into()),
        _ => None,
    }
}

/// `filter_config`: any bytes as a plugin configuration.
///
/// - The JSON reader agrees with serde_json on what is JSON and what it means (but for what it
///   refuses on purpose: duplicate keys, nesting deeper than 32), and a document it accepts
///   reads back the same once written out.
/// - A configuration the compiler accepts compiles again from its canonical form
///   ([`Config::to_json`]) to an equal configuration, whatever the constant attributes are.
/// - Every error names a position (in range) or a field (a path that exists in the document's
///   grammar), and fits on one line: the filter logs it.
/// - Nothing panics, here or when the compiled rules run on a fixed request.
pub fn filter_config(data: &[u8]) {
    json_reader(data);
    match Config::compile(data, &constants) {
        Ok(cfg) => {
            let canonical = cfg.to_json();
            for answer in [&constants as &dyn Fn(&[&str]) -> Option<String>, &|_| None] {
                match Config::compile(canonical.as_bytes(), answer) {
                    Ok(again) => assert_eq!(
                        again, cfg,
                        "the canonical form compiles to another configuration:\n{canonical}"
                    ),
                    Err(e) => panic!("the canonical form is refused: {e}\n{canonical}"),
                }
            }
            let mut s = FakeStream::default();
            s.request.push((":path".into(), "/api/v1?q=1".into()));
            s.request.push((":method".into(), "GET".into()));
            s.request.push(("x-debug".into(), "1".into()));
            s.response.push(("server".into(), "upstream".into()));
            let state = cfg.on_request(&mut s);
            cfg.on_response(&state, &mut s);
        }
        Err(e) => check_error(data, &e),
    }
}

/// The reader against serde_json, and a round trip through text.
fn json_reader(data: &[u8]) {
    let ours = json::parse(data);
    let theirs = serde_json::from_slice::<serde_json::Value>(data);
    match (&ours, &theirs) {
        (Ok(node), Ok(value)) => same_meaning(node, value),
        (Ok(_), Err(e)) => assert!(
            e.to_string().contains("number out of range"),
            "we read what serde_json refuses ({e})"
        ),
        (Err(e), Ok(_)) => assert!(
            e.message.starts_with("duplicate field") || e.message.starts_with("nesting deeper"),
            "we refuse what serde_json reads: {e}"
        ),
        (Err(_), Err(_)) => {}
    }
    match ours {
        Ok(node) => {
            let mut text = String::new();
            write_json(&node.value, &mut text);
            match json::parse(text.as_bytes()) {
                Ok(again) => assert!(
                    same_value(&node.value, &again.value),
                    "written out and read back, the document changed:\n{text}"
                ),
                Err(e) => panic!("our own output is refused: {e}\n{text}"),
            }
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            position_in(data, e.at, &e.to_string());
            one_line(&e.to_string());
        }
    }
}

fn same_meaning(node: &Node, v: &serde_json::Value) {
    use serde_json::Value as V;
    match (&node.value, v) {
        (Json::Null, V::Null) => {}
        (Json::Bool(a), V::Bool(b)) => assert_eq!(a, b),
        (Json::String(a), V::String(b)) => assert_eq!(a, b),
        (Json::Number(text), V::Number(n)) => {
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(text);
            match parsed {
                Ok(V::Number(m)) => assert_eq!(&m, n, "number {text}"),
                other => panic!("number {text} reads as {other:?}"),
            }
        }
        (Json::Array(a), V::Array(b)) => {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                same_meaning(x, y);
            }
        }
        (Json::Object(a), V::Object(b)) => {
            assert_eq!(a.len(), b.len(), "object sizes differ");
            for (k, x) in a {
                match b.get(k) {
                    Some(y) => same_meaning(x, y),
                    None => panic!("serde_json has no field {k:?}"),
                }
            }
        }
        (a, b) => panic!("we read {a:?}, serde_json reads {b:?}"),
    }
}

fn same_value(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(&p.value, &q.value))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k, p), (l, q))| k == l && same_value(&p.value, &q.value))
        }
        (x, y) => x == y,
    }
}

fn write_json(v: &Json, out: &mut String) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(n),
        Json::String(s) => write_string(s, out),
        Json::Array(items) => {
            out.push('[');
            for (i, n) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(&n.value, out);
            }
            out.push(']');
        }
        Json::Object(fields) => {
            out.push('{');
            for (i, (k, n)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_json(&n.value, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An error message is logged as one line: no control characters in it but tab (which a
/// header value may hold, and an error may quote).
fn one_line(message: &str) {
    assert!(
        !message.chars().any(|c| c.is_control() && c != '\t'),
        "error message is not one clean line: {message:?}"
    );
}

/// `at` is a position of `data`: a line it has, a column of that line (or just past its end).
fn position_in(data: &[u8], at: Pos, message: &str) {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    assert!(
        at.line >= 1 && at.line <= lines.len(),
        "{message}: no line {} in {} lines",
        at.line,
        lines.len()
    );
    let len = lines[at.line - 1].len();
    assert!(
        at.column >= 1 && at.column <= len + 1,
        "{message}: line {} has {len} bytes, no column {}",
        at.line,
        at.column
    );
}

/// The position a message ends on: the last `at line L column C` in it (user text quoted
/// earlier in the message may look like one too).
fn last_position(message: &str) -> Option<Pos> {
    let i = message.rfind("at line ")?;
    let rest = &message[i + "at line ".len()..];
    let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[line.len()..].strip_prefix(" column ")?;
    let column: String = after.chars().take_while(char::is_ascii_digit).collect();
    Some(Pos {
        line: line.parse().ok()?,
        column: column.parse().ok()?,
    })
}

/// The value at `path` (object keys) in the document, if there is one.
fn lookup<'a>(node: &'a Node, path: &[&str]) -> Option<&'a Node> {
    let mut n = node;
    for key in path {
        n = match &n.value {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)?,
            _ => return None,
        };
    }
    Some(n)
}

/// Rule `i` of the document.
fn rule(doc: &Node, i: usize) -> Option<&Node> {
    match &lookup(doc, &["rules"])?.value {
        Json::Array(items) => items.get(i),
        _ => None,
    }
}

/// Whether the object `at` has a field `key` (as written in a path: plain, or quoted).
fn has_key(at: Option<&Node>, key: &str) -> bool {
    matches!(
        at.map(|n| &n.value),
        Some(Json::Object(f)) if f.iter().any(|(k, _)| k == key || Quoted(k).to_string() == key)
    )
}

/// A field path of the configuration: `.`, a top-level key, `rules[i]`, `rules[i].key`,
/// `rules[i].when.key`, naming a rule the document has; for an unknown field, the path of a
/// key the document has.
fn check_field(data: &[u8], field: &str, message: &str) {
    assert!(!field.is_empty(), "{message}: empty field");
    if field == "." {
        return;
    }
    let doc = json::parse(data).ok();
    if message.contains("unknown field") {
        let doc = doc.unwrap_or_else(|| panic!("{message}: no document"));
        let mut found = has_key(Some(&doc), field);
        for i in 0..64 {
            let prefix = format!("rules[{i}].");
            if let Some(key) = field.strip_prefix(&prefix) {
                let r = rule(&doc, i);
                found |= has_key(r, key);
                if let Some(key) = key.strip_prefix("when.") {
                    found |= has_key(r.and_then(|r| lookup(r, &["when"])), key);
                }
            }
        }
        assert!(found, "{message}: the document has no field {field:?}");
        return;
    }
    let Some(rest) = field.strip_prefix("rules[") else {
        assert!(
            ["name", "value", "rules"].contains(&field),
            "{message}: no such field {field:?}"
        );
        return;
    };
    let (index, rest) = rest
        .split_once(']')
        .unwrap_or_else(|| panic!("{message}: malformed field {field:?}"));
    let index: usize = index
        .parse()
        .unwrap_or_else(|_| panic!("{message}: malformed index in {field:?}"));
    let doc = doc.unwrap_or_else(|| panic!("{message}: no document"));
    assert!(rule(&doc, index).is_some(), "{message}: no rule {index}");
    if rest.is_empty() {
        return;
    }
    let key = rest
        .strip_prefix('.')
        .unwrap_or_else(|| panic!("{message}: malformed field {field:?}"));
    let ok = match key.strip_prefix("when.") {
        Some(k) => ["path_prefix", "method", "header_present"].contains(&k),
        None => ["direction", "op", "name", "value", "when"].contains(&key),
    };
    assert!(ok, "{message}: no such field {field:?}");
}

fn check_error(data: &[u8], e: &ConfigError) {
    let message = e.to_string();
    one_line(&message);
    match e {
        ConfigError::Empty => assert!(
            data.iter().all(u8::is_ascii_whitespace),
            "{message}: the configuration is not empty"
        ),
        ConfigError::Syntax(m) => match last_position(m) {
            Some(at) => position_in(data, at, &message),
            None => panic!("{message}: names no position"),
        },
        ConfigError::Shape { field, message: m } | ConfigError::Invalid { field, message: m } => {
            check_field(data, field, &message);
            assert!(message.starts_with(field.as_str()), "{message}");
            if let Some(at) = last_position(m) {
                position_in(data, at, &message);
            }
        }
    }
}

/// A stream whose header maps and attributes the input chose; every write is checked as it
/// happens.
#[derive(Default)]
struct FakeStream {
    request: Vec<(String, String)>,
    response: Vec<(String, String)>,
    properties: HashMap<String, String>,
    writes: Vec<(Direction, String, Option<String>)>,
}

impl FakeStream {
    fn map(&mut self, d: Direction) -> &mut Vec<(String, String)> {
        match d {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }

    fn checked(&mut self, map: Direction, name: &str, value: Option<&str>) {
        assert!(
            !name.is_empty()
                && !name.starts_with(':')
                && name.bytes().all(|b| {
                    b.is_ascii_alphanumeric() && !b.is_ascii_uppercase()
                        || b"!#$%&'*+-.^_`|~".contains(&b)
                }),
            "the filter writes header name {name:?}"
        );
        if let Some(v) = value {
            assert!(
                !v.contains(['\r', '\n', '\0']),
                "CR, LF or NUL reaches the value of {name}: {v:?}"
            );
            assert!(
                !v.chars().any(|c| c.is_ascii_control() && c != '\t'),
                "a control character reaches the value of {name}: {v:?}"
            );
        }
        self.writes
            .push((map, name.to_string(), value.map(str::to_string)));
    }
}

impl Stream for FakeStream {
    fn property(&mut self, path: &[&str]) -> Option<String> {
        self.properties.get(&path.join(".")).cloned()
    }
    fn header(&mut self, map: Direction, name: &str) -> Option<String> {
        self.map(map)
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
    fn append_header(&mut self, map: Direction, name: &str, value: &str) {
        self.checked(map, name, Some(value));
        self.map(map).push((name.into(), value.into()));
    }
    fn set_header(&mut self, map: Direction, name: &str, value: &str) {
        self.checked(map, name, Some(value));
        self.map(map).retain(|(k, _)| k != name);
        self.map(map).push((name.into(), value.into()));
    }
    fn remove_header(&mut self, map: Direction, name: &str) {
        self.checked(map, name, None);
        self.map(map).retain(|(k, _)| k != name);
    }
    fn outcome(&mut self, _rule: usize, _outcome: Outcome) {}
}

/// Reads the input a byte at a time; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn text(&mut self) -> String {
        let n = usize::from(self.byte() % 16).min(self.0.len());
        let (t, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(t).into_owned()
    }

    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[usize::from(self.byte()) % from.len()]
    }
}

const NAMES: &[&str] = &["x-a", "X-B", "server", "x-debug", "x-a", "content-type"];

/// A configuration built from bytes: a few rules with placeholders, literal text from the
/// input, conditions. Most of them compile, which raw bytes seldom do.
fn generated_config(b: &mut Bytes<'_>) -> String {
    use serde_json::{Map, Value, json};
    let n = 1 + usize::from(b.byte() % 5);
    let mut rules = Vec::new();
    for _ in 0..n {
        let mut r = Map::new();
        r.insert("direction".into(), json!(b.pick(&["request", "response"])));
        let op = b.pick(&["append", "set", "set-if-absent", "remove"]);
        r.insert("op".into(), json!(op));
        r.insert("name".into(), json!(b.pick(NAMES)));
        if op != "remove" {
            let mut value = String::new();
            for _ in 0..b.byte() % 4 {
                match b.byte() % 3 {
                    0 => value.push_str(&b.text().replace('$', "$$")),
                    1 => {
                        let p = b.pick(PLACEHOLDERS);
                        let p = p.replace("<name>", b.pick(NAMES));
                        value.push_str(&format!("${{{p}}}"));
                    }
                    _ => value.push_str(b.pick(&[" ", "$$", "/", "\t", "é"])),
                }
            }
            r.insert("value".into(), json!(value));
        }
        let when = b.byte();
        if when & 7 != 0 {
            let mut w = Map::new();
            if when & 1 != 0 {
                w.insert("path_prefix".into(), json!(format!("/{}", b.text())));
            }
            if when & 2 != 0 {
                w.insert("method".into(), json!(b.pick(&["GET", "POST", "PUT"])));
            }
            if when & 4 != 0 {
                w.insert("header_present".into(), json!(b.pick(NAMES)));
            }
            r.insert("when".into(), Value::Object(w));
        }
        rules.push(Value::Object(r));
    }
    json!({ "rules": rules }).to_string()
}

/// The attributes a stream answers, in the order the input's property records name them.
const PROPERTIES: &[&str] = &[
    "request.url_path",
    "request.host",
    "request.scheme",
    "request.id",
    "request.protocol",
    "source.address",
    "destination.address",
];

/// `filter_headers`: a configuration (JSON, or generated from bytes when the input starts with
/// a control byte), then after a 0xff byte the request: records `[kind][n][n bytes][m][m
/// bytes]` that add a request header, a response header, an attribute, or set `node.id`.
/// Header values and attributes may hold any character, CR, LF and NUL included.
///
/// Whatever the rules and the request, the filter writes only valid lower-case header names,
/// and no CR, LF, NUL or other control character (but tab) into a header value; running the same
/// stream twice writes the same.
pub fn filter_headers(data: &[u8]) {
    let (config, request) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let config = match config.first() {
        Some(&b) if b < 0x20 && !b.is_ascii_whitespace() => {
            generated_config(&mut Bytes(&config[1..])).into_bytes()
        }
        _ => config.to_vec(),
    };
    let mut stream = FakeStream::default();
    let mut node_id = None;
    let mut r = Bytes(request);
    while !r.0.is_empty() {
        let kind = r.byte();
        let (name, value) = (r.text(), r.text());
        match kind % 4 {
            0 => stream.request.push((name.to_ascii_lowercase(), value)),
            1 => stream.response.push((name.to_ascii_lowercase(), value)),
            2 => {
                let p = PROPERTIES[usize::from(kind / 4) % PROPERTIES.len()];
                stream.properties.insert(p.to_string(), value);
            }
            _ => node_id = Some(value),
        }
    }
    let constant = |path: &[&str]| match path {
        ["xds", "node", "id"] => node_id.clone(),
        _ => constants(path),
    };
    let Ok(cfg) = Config::compile(&config, &constant) else {
        return;
    };
    let (request, response, properties) = (
        stream.request.clone(),
        stream.response.clone(),
        stream.properties.clone(),
    );
    let state = cfg.on_request(&mut stream);
    cfg.on_response(&state, &mut stream);
    let mut again = FakeStream {
        request,
        response,
        properties,
        writes: Vec::new(),
    };
    let state = cfg.on_request(&mut again);
    cfg.on_response(&state, &mut again);
    assert_eq!(stream.writes, again.writes, "the same stream, other writes");
}
