//! Configuration: parse the plugin configuration JSON, validate it, and compile it into rules that
//! the per-request path runs without JSON work.
//!
//! Two forms are accepted:
//!
//! ```json
//! {"name": "resp-header-demo", "value": "added by our filter"}
//! ```
//!
//! appends one header to every response, and
//!
//! ```json
//! {"rules": [
//!   {"direction": "request", "op": "set", "name": "x-route", "value": "${request.method} ${request.path}",
//!    "when": {"path_prefix": "/api"}},
//!   {"direction": "response", "op": "remove", "name": "server"}
//! ]}
//! ```
//!
//! is the full form. Nothing here touches proxy-wasm: the host is reached through the [`Stream`]
//! trait, which the wasm glue implements with host calls and tests implement with plain maps.
//!
//! ```
//! use header_filter::config::{Config, Direction};
//!
//! let cfg = Config::compile(br#"{"name":"resp-header-demo","value":"added by our filter"}"#, &|_| None)
//!     .unwrap();
//! assert_eq!(cfg.rules().len(), 1);
//! assert_eq!(cfg.rules()[0].direction, Direction::Response);
//! assert!(!cfg.needs_request_phase());
//! ```

use crate::json::{self, CharName, Json, Node, Quoted, Unquoted};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use alloc::{format, vec};
use core::fmt::{self, Write as _};

/// The most rules one configuration may hold (the per-stream state is one 64-bit set).
pub const MAX_RULES: usize = 64;

/// Every placeholder the value syntax knows, for error messages and docs.
pub const PLACEHOLDERS: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.method",
    "request.host",
    "request.scheme",
    "request.id",
    "request.protocol",
    "request.header.<name>",
    "source.address",
    "destination.address",
    "plugin.root_id",
    "plugin.name",
    "plugin.vm_id",
    "node.id",
    "node.cluster",
];

/// A configuration that was rejected, with the field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The plugin configuration is empty.
    Empty,
    /// The configuration is not well-formed JSON.
    Syntax(String),
    /// A field has the wrong type or is not a known field.
    Shape {
        /// Path of the field, e.g. `rules[1].op`, or `.` for the top level.
        field: String,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A field parsed but its value is not allowed.
    Invalid {
        /// Path of the field, e.g. `rules[0].name`.
        field: String,
        /// Why the value is rejected.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Empty => f.write_str(
                "configuration is empty: expected {\"name\":..,\"value\":..} or {\"rules\":[..]}",
            ),
            ConfigError::Syntax(m) => write!(f, "malformed JSON: {m}"),
            ConfigError::Shape { field, message } | ConfigError::Invalid { field, message } => {
                write!(f, "{field}: {message}")
            }
        }
    }
}

impl core::error::Error for ConfigError {}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Which header map a rule changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Request headers, on their way to the upstream.
    Request,
    /// Response headers, on their way to the client.
    Response,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Request => "request",
            Direction::Response => "response",
        })
    }
}

/// What a rule does to its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add a value; existing values of the header stay.
    Append,
    /// Replace every value of the header with this one.
    Set,
    /// Add the header only when it is not there yet.
    SetIfAbsent,
    /// Remove every value of the header.
    Remove,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Append => "append",
            Op::Set => "set",
            Op::SetIfAbsent => "set-if-absent",
            Op::Remove => "remove",
        })
    }
}

struct RawRule {
    direction: Direction,
    op: Op,
    name: String,
    value: Option<String>,
    when: Option<RawWhen>,
}

struct RawWhen {
    path_prefix: Option<String>,
    method: Option<String>,
    header_present: Option<String>,
}

type Fields = [(String, Node)];

fn field_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn shape(field: impl Into<String>, message: String) -> ConfigError {
    ConfigError::Shape {
        field: field.into(),
        message,
    }
}

/// Shows names separated by ", ".
struct List<'a>(&'a [&'a str]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
        }
        Ok(())
    }
}

/// An object whose fields are all among `known`.
fn object<'a>(n: &'a Node, path: &str, known: &[&str]) -> Result<&'a Fields, ConfigError> {
    let Json::Object(fields) = &n.value else {
        return Err(shape(
            if path.is_empty() { "." } else { path },
            format!("expected an object, found {} at {}", n.value.kind(), n.at),
        ));
    };
    if let Some((k, v)) = fields.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        // The key is the user's: quoted (and escaped) unless it is a plain name, so that the
        // error stays one line and the path stays readable.
        let plain = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let key = if plain {
            k.clone()
        } else {
            Quoted(k).to_string()
        };
        return Err(shape(
            field_path(path, &key),
            format!(
                "unknown field at {}, expected one of: {}",
                v.at,
                List(known)
            ),
        ));
    }
    Ok(fields)
}

fn get<'a>(fields: &'a Fields, key: &str) -> Option<&'a Node> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn string(n: &Node, path: &str) -> Result<String, ConfigError> {
    match &n.value {
        Json::String(s) => Ok(s.clone()),
        other => Err(shape(
            path,
            format!("expected a string, found {} at {}", other.kind(), n.at),
        )),
    }
}

fn opt_string(fields: &Fields, parent: &str, key: &str) -> Result<Option<String>, ConfigError> {
    get(fields, key)
        .map(|n| string(n, &field_path(parent, key)))
        .transpose()
}

fn choice<T: Copy>(n: &Node, path: &str, options: &[(&str, T)]) -> Result<T, ConfigError> {
    let s = string(n, path)?;
    match options.iter().find(|(name, _)| *name == s) {
        Some((_, v)) => Ok(*v),
        None => {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            let names = List(&names);
            Err(shape(
                path,
                format!(
                    "unknown value {} at {}, expected one of: {}",
                    Quoted(&s),
                    n.at,
                    names
                ),
            ))
        }
    }
}

fn raw_rule(n: &Node, path: &str) -> Result<RawRule, ConfigError> {
    let f = object(n, path, &["direction", "op", "name", "value", "when"])?;
    let required = |key: &str| get(f, key).ok_or_else(|| invalid(field_path(path, key), "missing"));
    let direction = choice(
        required("direction")?,
        &field_path(path, "direction"),
        &[
            ("request", Direction::Request),
            ("response", Direction::Response),
        ],
    )?;
    let op = match get(f, "op") {
        None => Op::Append,
        Some(n) => choice(
            n,
            &field_path(path, "op"),
            &[
                ("append", Op::Append),
                ("set", Op::Set),
                ("set-if-absent", Op::SetIfAbsent),
                ("remove", Op::Remove),
            ],
        )?,
    };
    let name = string(required("name")?, &field_path(path, "name"))?;
    let value = opt_string(f, path, "value")?;
    let when = match get(f, "when") {
        None => None,
        Some(n) => {
            let wpath = field_path(path, "when");
            let w = object(n, &wpath, &["path_prefix", "method", "header_present"])?;
            Some(RawWhen {
                path_prefix: opt_string(w, &wpath, "path_prefix")?,
                method: opt_string(w, &wpath, "method")?,
                header_present: opt_string(w, &wpath, "header_present")?,
            })
        }
    };
    Ok(RawRule {
        direction,
        op,
        name,
        value,
        when,
    })
}

/// A value read per stream: an Envoy attribute or a request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    /// An Envoy attribute read with `proxy_get_property`, e.g. `["request", "path"]`.
    Property(&'static [&'static str]),
    /// A request header's value (the first one), by lower-case name.
    RequestHeader(String),
}

/// One piece of a value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Lit(String),
    /// Text read from the stream.
    Attr(Attr),
}

/// A header value: fixed text, or text with placeholders that are filled per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// Fixed text (constant placeholders such as `${node.id}` are already filled in).
    Static(String),
    /// Text with per-stream placeholders.
    Dynamic(Vec<Segment>),
}

impl Template {
    /// Whether the value needs the stream to be rendered.
    pub fn is_dynamic(&self) -> bool {
        matches!(self, Template::Dynamic(_))
    }
}

/// Which streams a rule applies to; every present test must hold. Tests see the request as it
/// reached the filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Condition {
    /// `:path` starts with this.
    pub path_prefix: Option<String>,
    /// `:method` equals this (case-sensitive, as HTTP methods are).
    pub method: Option<String>,
    /// The request carries this header (lower-case name).
    pub header_present: Option<String>,
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which header map it changes.
    pub direction: Direction,
    /// What it does.
    pub op: Op,
    /// Lower-case header name.
    pub name: String,
    /// The value (empty static text for `remove`).
    pub value: Template,
    /// When it applies; `None` is always.
    pub when: Option<Condition>,
}

/// A compiled configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    rules: Vec<Rule>,
    request_phase: bool,
    response_rules: u64,
    /// Request `remove` rules that may look at the request as it arrived and skip the host call
    /// when the header is not there: the request is read anyway (a condition or a placeholder)
    /// and no earlier request rule writes the same header.
    remove_if_present: u64,
}

/// What happened to one rule on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The header map was changed.
    Applied,
    /// The condition did not hold, the value rendered empty, or `set-if-absent` found the header.
    Skipped,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped",
        })
    }
}

/// The host as the rules see it: header maps and attributes of one stream.
pub trait Stream {
    /// An attribute's value as text, `None` when absent or not text.
    fn property(&mut self, path: &[&str]) -> Option<String>;
    /// The first value of a header in the given map.
    fn header(&mut self, map: Direction, name: &str) -> Option<String>;
    /// The first value of a request header as the request reached the filter, before any rule
    /// changed it: what conditions and placeholders read. By default [`Stream::header`] on the
    /// request; the wasm glue answers every such read of a stream from one fetch of the map.
    fn request_header(&mut self, name: &str) -> Option<String> {
        self.header(Direction::Request, name)
    }
    /// Add a value to a header.
    fn append_header(&mut self, map: Direction, name: &str, value: &str);
    /// Replace all values of a header.
    fn set_header(&mut self, map: Direction, name: &str, value: &str);
    /// Remove a header.
    fn remove_header(&mut self, map: Direction, name: &str);
    /// Report a rule's outcome (metrics, debug log).
    fn outcome(&mut self, rule: usize, outcome: Outcome);
}

/// What the request phase leaves for the response phase of the same stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// Response rules whose condition held (bit i is rule i).
    active: u64,
    /// Values of dynamic response rules, rendered from the request.
    values: Vec<(usize, String)>,
}

impl Config {
    /// Parse and compile a plugin configuration. `constant` answers the attributes that do not
    /// change per stream (`["plugin_root_id"]`, `["xds", "node", "id"]`, ...); it is called here only.
    pub fn compile(
        json: &[u8],
        constant: &dyn Fn(&[&str]) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::Empty);
        }
        let doc = json::parse(json).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        if !matches!(doc.value, Json::Object(_)) {
            return Err(shape(
                ".",
                format!(
                    "expected a JSON object ({{\"name\":..,\"value\":..}} or {{\"rules\":[..]}}), found {}",
                    doc.value.kind()
                ),
            ));
        }
        let top = object(&doc, "", &["name", "value", "rules"])?;
        let rules = match get(top, "rules") {
            None => None,
            Some(n) => match &n.value {
                Json::Array(items) => Some(items),
                other => {
                    return Err(shape(
                        "rules",
                        format!("expected an array, found {} at {}", other.kind(), n.at),
                    ));
                }
            },
        };
        let raw = (
            opt_string(top, "", "name")?,
            opt_string(top, "", "value")?,
            rules,
        );
        let raw_rules = match raw {
            (None, None, None) => {
                return Err(invalid(
                    ".",
                    "no rules: give \"name\" and \"value\", or a \"rules\" list",
                ));
            }
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(invalid(
                    ".",
                    "\"name\"/\"value\" and \"rules\" are two forms of configuration; use one",
                ));
            }
            (Some(name), Some(value), None) => {
                return Config::from_rules(
                    vec![(
                        "name".to_string(),
                        "value".to_string(),
                        RawRule {
                            direction: Direction::Response,
                            op: Op::Append,
                            name,
                            value: Some(value),
                            when: None,
                        },
                    )],
                    constant,
                );
            }
            (Some(_), None, None) => {
                return Err(invalid("value", "missing: the short form needs \"value\""));
            }
            (None, Some(_), None) => {
                return Err(invalid("name", "missing: the short form needs \"name\""));
            }
            (None, None, Some(rules)) => rules,
        };
        if raw_rules.is_empty() {
            return Err(invalid("rules", "empty: give at least one rule"));
        }
        if raw_rules.len() > MAX_RULES {
            return Err(invalid(
                "rules",
                format!("{} rules, at most {MAX_RULES} are allowed", raw_rules.len()),
            ));
        }
        let mut labelled = Vec::with_capacity(raw_rules.len());
        for (i, n) in raw_rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            let rule = raw_rule(n, &path)?;
            labelled.push((format!("{path}.name"), format!("{path}.value"), rule));
        }
        Config::from_rules(labelled, constant)
    }

    fn from_rules(
        raw: Vec<(String, String, RawRule)>,
        constant: &dyn Fn(&[&str]) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut rules = Vec::with_capacity(raw.len());
        for (i, (name_field, value_field, r)) in raw.into_iter().enumerate() {
            let name = header_name(&r.name).map_err(|m| invalid(&name_field, m))?;
            let value = match (r.op, r.value) {
                (Op::Remove, None) => Template::Static(String::new()),
                (Op::Remove, Some(_)) => {
                    return Err(invalid(
                        value_field,
                        "not allowed with op \"remove\" (remove takes no value)",
                    ));
                }
                (op, None) => {
                    return Err(invalid(
                        value_field,
                        format!("missing: op \"{op}\" needs a value"),
                    ));
                }
                (_, Some(v)) => template(&v, constant).map_err(|m| invalid(&value_field, m))?,
            };
            let when = match r.when {
                None => None,
                Some(w) => Some(condition(w, &format!("rules[{i}].when"))?),
            };
            rules.push(Rule {
                direction: r.direction,
                op: r.op,
                name,
                value,
                when,
            });
        }
        let request_phase = rules
            .iter()
            .any(|r| r.direction == Direction::Request || r.when.is_some() || r.value.is_dynamic());
        let response_rules = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.direction == Direction::Response)
            .fold(0u64, |acc, (i, _)| acc | (1 << i));
        let reads_request = rules
            .iter()
            .any(|r| r.when.is_some() || r.value.is_dynamic());
        let remove_if_present = if reads_request {
            rules
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    r.direction == Direction::Request
                        && r.op == Op::Remove
                        && !rules
                            .iter()
                            .take(*i)
                            .any(|e| e.direction == Direction::Request && e.name == r.name)
                })
                .fold(0u64, |acc, (i, _)| acc | (1 << i))
        } else {
            0
        };
        Ok(Config {
            rules,
            request_phase,
            response_rules,
            remove_if_present,
        })
    }

    /// The compiled rules, in configuration order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether request headers must be looked at (a request rule, a condition, or a placeholder).
    /// When false the request phase is skipped entirely.
    pub fn needs_request_phase(&self) -> bool {
        self.request_phase
    }

    /// Whether any rule changes response headers.
    pub fn has_response_rules(&self) -> bool {
        self.response_rules != 0
    }

    /// The configuration in canonical form: the full `{"rules":[..]}` form with every field that
    /// matters written out (`op` always, `value` unless `remove`), names lower-cased, constant
    /// placeholders filled in and a literal `$` written `$$`. Compiling it gives an equal
    /// [`Config`] (whatever `constant` answers): it says what a configuration means, and the
    /// fuzz targets hold the compiler to it.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"rules\":[");
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"direction\":");
            json_string(&mut out, &r.direction.to_string());
            out.push_str(",\"op\":");
            json_string(&mut out, &r.op.to_string());
            out.push_str(",\"name\":");
            json_string(&mut out, &r.name);
            if r.op != Op::Remove {
                out.push_str(",\"value\":");
                json_string(&mut out, &template_text(&r.value));
            }
            if let Some(c) = &r.when {
                out.push_str(",\"when\":{");
                let tests = [
                    ("path_prefix", &c.path_prefix),
                    ("method", &c.method),
                    ("header_present", &c.header_present),
                ];
                let mut first = true;
                for (key, value) in tests {
                    if let Some(v) = value {
                        if !first {
                            out.push(',');
                        }
                        first = false;
                        json_string(&mut out, key);
                        out.push(':');
                        json_string(&mut out, v);
                    }
                }
                out.push('}');
            }
            out.push('}');
        }
        out.push_str("]}");
        out
    }

    /// The state a stream starts with when its request phase was skipped: every response rule
    /// active, nothing rendered.
    pub fn initial_state(&self) -> StreamState {
        StreamState {
            active: self.response_rules,
            values: Vec::new(),
        }
    }

    /// Request headers arrived: evaluate conditions and placeholders against the request as it
    /// reached the filter, apply the request rules, and return what the response rules need.
    pub fn on_request(&self, s: &mut impl Stream) -> StreamState {
        let mut state = self.initial_state();
        if !self.request_phase {
            return state;
        }
        let mut req = RequestCache::default();
        let mut request_values: Vec<(usize, String)> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let bit = 1u64 << i;
            let holds = match &rule.when {
                None => true,
                Some(c) => req.holds(c, s),
            };
            let rendered = if holds {
                match &rule.value {
                    Template::Static(_) => None,
                    Template::Dynamic(segs) => Some(req.render(segs, s)),
                }
            } else {
                None
            };
            let usable = holds && rendered.as_ref().is_none_or(|v| !v.is_empty());
            match rule.direction {
                Direction::Response => {
                    if !usable {
                        state.active &= !bit;
                    } else if let Some(v) = rendered {
                        state.values.push((i, v));
                    }
                }
                Direction::Request => {
                    if !usable {
                        s.outcome(i, Outcome::Skipped);
                    } else if let Some(v) = rendered {
                        request_values.push((i, v));
                    } else {
                        state.active |= bit;
                    }
                }
            }
        }
        // Conditions and values are settled; now change the request.
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.direction != Direction::Request {
                continue;
            }
            let value = match &rule.value {
                Template::Static(_)
                    if self.remove_if_present & (1 << i) != 0
                        && state.active & (1 << i) != 0
                        && s.request_header(&rule.name).is_none() =>
                {
                    // Removing a header that is not there changes nothing: no host call.
                    s.outcome(i, Outcome::Applied);
                    continue;
                }
                Template::Static(v) if state.active & (1 << i) != 0 => v.as_str(),
                Template::Static(_) => continue,
                Template::Dynamic(_) => match request_values.iter().find(|(j, _)| *j == i) {
                    Some((_, v)) => v.as_str(),
                    None => continue,
                },
            };
            let outcome = apply(rule, Direction::Request, value, s);
            s.outcome(i, outcome);
        }
        state.active &= self.response_rules;
        state
    }

    /// Response headers arrived: apply the response rules that the request phase left active.
    pub fn on_response(&self, state: &StreamState, s: &mut impl Stream) {
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.direction != Direction::Response {
                continue;
            }
            if state.active & (1 << i) == 0 {
                s.outcome(i, Outcome::Skipped);
                continue;
            }
            let value = match &rule.value {
                Template::Static(v) => v.as_str(),
                Template::Dynamic(_) => match state.values.iter().find(|(j, _)| *j == i) {
                    Some((_, v)) => v.as_str(),
                    None => {
                        s.outcome(i, Outcome::Skipped);
                        continue;
                    }
                },
            };
            let outcome = apply(rule, Direction::Response, value, s);
            s.outcome(i, outcome);
        }
    }
}

fn apply(rule: &Rule, map: Direction, value: &str, s: &mut impl Stream) -> Outcome {
    match rule.op {
        Op::Append => s.append_header(map, &rule.name, value),
        Op::Set => s.set_header(map, &rule.name, value),
        Op::SetIfAbsent => {
            if s.header(map, &rule.name).is_some() {
                return Outcome::Skipped;
            }
            s.append_header(map, &rule.name, value);
        }
        Op::Remove => s.remove_header(map, &rule.name),
    }
    Outcome::Applied
}

/// Request values read at most once per stream.
#[derive(Default)]
struct RequestCache {
    path: Option<Option<String>>,
    method: Option<Option<String>>,
}

impl RequestCache {
    fn path(&mut self, s: &mut impl Stream) -> Option<&str> {
        self.path
            .get_or_insert_with(|| s.request_header(":path"))
            .as_deref()
    }

    fn method(&mut self, s: &mut impl Stream) -> Option<&str> {
        self.method
            .get_or_insert_with(|| s.request_header(":method"))
            .as_deref()
    }

    fn holds(&mut self, c: &Condition, s: &mut impl Stream) -> bool {
        if let Some(prefix) = &c.path_prefix
            && !self.path(s).is_some_and(|p| p.starts_with(prefix.as_str()))
        {
            return false;
        }
        if let Some(method) = &c.method
            && self.method(s) != Some(method.as_str())
        {
            return false;
        }
        if let Some(h) = &c.header_present
            && s.request_header(h).is_none()
        {
            return false;
        }
        true
    }

    fn render(&mut self, segs: &[Segment], s: &mut impl Stream) -> String {
        let mut out = String::new();
        for seg in segs {
            match seg {
                Segment::Lit(t) => out.push_str(t),
                Segment::Attr(Attr::RequestHeader(h)) => {
                    if let Some(v) = s.request_header(h) {
                        // Envoy refuses a request whose header holds CR, LF or NUL; a host that
                        // lets one through still must not get it into another header.
                        if valid_value(&v).is_ok() {
                            out.push_str(&v);
                        }
                    }
                }
                Segment::Attr(Attr::Property(path)) => {
                    if let Some(v) = s.property(path) {
                        // Attributes come from Envoy; still never let one break the header.
                        if valid_value(&v).is_ok() {
                            out.push_str(&v);
                        }
                    }
                }
            }
        }
        out
    }
}

fn condition(w: RawWhen, field: &str) -> Result<Condition, ConfigError> {
    if w.path_prefix.is_none() && w.method.is_none() && w.header_present.is_none() {
        return Err(invalid(
            field,
            "empty condition: give path_prefix, method or header_present (or drop \"when\")",
        ));
    }
    if let Some(p) = &w.path_prefix
        && !p.starts_with('/')
    {
        return Err(invalid(
            format!("{field}.path_prefix"),
            format!("{} must start with '/'", Quoted(p)),
        ));
    }
    if let Some(m) = &w.method
        && (m.is_empty() || !m.bytes().all(is_tchar))
    {
        return Err(invalid(
            format!("{field}.method"),
            format!("{} is not an HTTP method token", Quoted(m)),
        ));
    }
    let header_present = match w.header_present {
        None => None,
        Some(h) => {
            Some(header_name(&h).map_err(|m| invalid(format!("{field}.header_present"), m))?)
        }
    };
    Ok(Condition {
        path_prefix: w.path_prefix,
        method: w.method,
        header_present,
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Validate a header name and return it in lower case.
fn header_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("empty header name".into());
    }
    if name.starts_with(':') {
        return Err(format!(
            "pseudo-header {} may not be changed or tested (only regular headers)",
            Quoted(name)
        ));
    }
    if let Some((pos, c)) = name
        .char_indices()
        .find(|(_, c)| !c.is_ascii() || !is_tchar(*c as u8))
    {
        return Err(format!(
            "invalid header name {}: character {} at byte {pos} is not allowed in a header name",
            Quoted(name),
            CharName(c)
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// A header value may hold visible characters, spaces and tabs: no CR, LF, NUL or other controls.
fn valid_value(v: &str) -> Result<(), String> {
    match v
        .char_indices()
        .find(|(_, c)| c.is_ascii_control() && *c != '\t')
    {
        None => Ok(()),
        Some((pos, c)) => Err(format!(
            "character {} at byte {pos} is not allowed in a header value (no CR, LF, NUL or other control characters)",
            CharName(c)
        )),
    }
}

/// Parse a value with `${...}` placeholders (`$$` is a literal `$`).
fn template(v: &str, constant: &dyn Fn(&[&str]) -> Option<String>) -> Result<Template, String> {
    valid_value(v)?;
    let mut segs: Vec<Segment> = Vec::new();
    let mut lit = String::new();
    let mut rest = v;
    // split_once rather than indexing: no char-boundary panics, so no panic formatting in the module.
    while let Some((before, after)) = rest.split_once('$') {
        lit.push_str(before);
        if let Some(tail) = after.strip_prefix('$') {
            lit.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some((key, tail)) = body.split_once('}') else {
                return Err(format!(
                    "unterminated placeholder \"${{{}\": close it with '}}' (write $$ for a literal '$')",
                    Unquoted(body)
                ));
            };
            let key = key.trim();
            match placeholder(key)? {
                Placeholder::Constant(path) => {
                    let value = constant(path).unwrap_or_default();
                    valid_value(&value).map_err(|m| {
                        format!(
                            "placeholder ${{{}}} resolved to a bad value: {m}",
                            Unquoted(key)
                        )
                    })?;
                    lit.push_str(&value);
                }
                Placeholder::Stream(attr) => {
                    if !lit.is_empty() {
                        segs.push(Segment::Lit(core::mem::take(&mut lit)));
                    }
                    segs.push(Segment::Attr(attr));
                }
            }
            rest = tail;
        } else {
            lit.push('$');
            rest = after;
        }
    }
    lit.push_str(rest);
    if segs.is_empty() {
        return Ok(Template::Static(lit));
    }
    if !lit.is_empty() {
        segs.push(Segment::Lit(lit));
    }
    Ok(Template::Dynamic(segs))
}

/// A value template as configuration text: literal `$` doubled, stream attributes as their
/// placeholders (the inverse of [`template`] for what it produced).
fn template_text(t: &Template) -> String {
    let mut out = String::new();
    let lit = |out: &mut String, s: &str| {
        for c in s.chars() {
            if c == '$' {
                out.push('$');
            }
            out.push(c);
        }
    };
    match t {
        Template::Static(s) => lit(&mut out, s),
        Template::Dynamic(segs) => {
            for seg in segs {
                match seg {
                    Segment::Lit(s) => lit(&mut out, s),
                    Segment::Attr(Attr::RequestHeader(h)) => {
                        out.push_str("${");
                        match h.as_str() {
                            ":path" => out.push_str("request.path"),
                            ":method" => out.push_str("request.method"),
                            h => {
                                out.push_str("request.header.");
                                out.push_str(h);
                            }
                        }
                        out.push('}');
                    }
                    Segment::Attr(Attr::Property(path)) => {
                        out.push_str("${");
                        for (i, part) in path.iter().enumerate() {
                            if i > 0 {
                                out.push('.');
                            }
                            out.push_str(part);
                        }
                        out.push('}');
                    }
                }
            }
        }
    }
    out
}

/// Append `s` as a JSON string: quotes, backslashes and control characters escaped.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            // Writing to a String cannot fail.
            c if (c as u32) < 0x20 => _ = write!(out, "\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
}

enum Placeholder {
    Constant(&'static [&'static str]),
    Stream(Attr),
}

fn placeholder(key: &str) -> Result<Placeholder, String> {
    use Placeholder::{Constant, Stream};
    let p = |path: &'static [&'static str]| Stream(Attr::Property(path));
    Ok(match key {
        // The attributes `request.path` and `request.method` are the `:path` and `:method`
        // headers: read them with the other request headers, in the same fetch.
        "request.path" => Stream(Attr::RequestHeader(":path".into())),
        "request.url_path" => p(&["request", "url_path"]),
        "request.method" => Stream(Attr::RequestHeader(":method".into())),
        "request.host" => p(&["request", "host"]),
        "request.scheme" => p(&["request", "scheme"]),
        "request.id" => p(&["request", "id"]),
        "request.protocol" => p(&["request", "protocol"]),
        "source.address" => p(&["source", "address"]),
        "destination.address" => p(&["destination", "address"]),
        "plugin.root_id" => Constant(&["plugin_root_id"]),
        "plugin.name" => Constant(&["plugin_name"]),
        "plugin.vm_id" => Constant(&["plugin_vm_id"]),
        "node.id" => Constant(&["xds", "node", "id"]),
        "node.cluster" => Constant(&["xds", "node", "cluster"]),
        _ => {
            if let Some(h) = key.strip_prefix("request.header.") {
                let name = header_name(h)
                    .map_err(|m| format!("placeholder ${{{}}}: {m}", Unquoted(key)))?;
                Stream(Attr::RequestHeader(name))
            } else {
                return Err(format!(
                    "unknown placeholder ${{{}}}; known: {}",
                    Unquoted(key),
                    List(PLACEHOLDERS)
                ));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn consts(path: &[&str]) -> Option<String> {
        match path {
            ["plugin_root_id"] => Some("my_root_id".into()),
            ["xds", "node", "id"] => Some("node-1".into()),
            _ => None,
        }
    }

    fn compile(json: &str) -> Result<Config, ConfigError> {
        Config::compile(json.as_bytes(), &consts)
    }

    fn err(json: &str) -> String {
        compile(json).unwrap_err().to_string()
    }

    /// A stream made of plain maps: what Envoy would hold.
    #[derive(Default)]
    struct Fake {
        req: Vec<(String, String)>,
        resp: Vec<(String, String)>,
        props: HashMap<String, String>,
        outcomes: Vec<(usize, Outcome)>,
        /// Host calls that remove a header.
        removes: usize,
    }

    impl Fake {
        fn request(pairs: &[(&str, &str)]) -> Fake {
            Fake {
                req: pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Fake::default()
            }
        }
        fn map(&mut self, d: Direction) -> &mut Vec<(String, String)> {
            match d {
                Direction::Request => &mut self.req,
                Direction::Response => &mut self.resp,
            }
        }
        fn values(&self, d: Direction, name: &str) -> Vec<&str> {
            let m = match d {
                Direction::Request => &self.req,
                Direction::Response => &self.resp,
            };
            m.iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        }
    }

    impl Stream for Fake {
        fn property(&mut self, path: &[&str]) -> Option<String> {
            self.props.get(&path.join(".")).cloned()
        }
        fn header(&mut self, map: Direction, name: &str) -> Option<String> {
            self.map(map)
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
        fn append_header(&mut self, map: Direction, name: &str, value: &str) {
            self.map(map).push((name.into(), value.into()));
        }
        fn set_header(&mut self, map: Direction, name: &str, value: &str) {
            self.map(map).retain(|(k, _)| k != name);
            self.append_header(map, name, value);
        }
        fn remove_header(&mut self, map: Direction, name: &str) {
            self.removes += 1;
            self.map(map).retain(|(k, _)| k != name);
        }
        fn outcome(&mut self, rule: usize, outcome: Outcome) {
            self.outcomes.push((rule, outcome));
        }
    }

    fn run(cfg: &Config, s: &mut Fake) {
        let state = cfg.on_request(s);
        cfg.on_response(&state, s);
    }

    #[test]
    fn short_form_appends_to_every_response() {
        let cfg = compile(r#"{"name":"resp-header-demo","value":"added by our filter"}"#).unwrap();
        assert!(!cfg.needs_request_phase());
        let mut s = Fake::request(&[(":path", "/"), (":method", "GET")]);
        s.resp
            .push(("resp-header-demo".into(), "from upstream".into()));
        run(&cfg, &mut s);
        assert_eq!(
            s.values(Direction::Response, "resp-header-demo"),
            ["from upstream", "added by our filter"]
        );
        assert_eq!(s.outcomes, [(0, Outcome::Applied)]);
        assert_eq!(s.req.len(), 2, "request untouched");
    }

    #[test]
    fn names_are_lower_cased() {
        let cfg = compile(r#"{"name":"X-Hello","value":"v"}"#).unwrap();
        assert_eq!(cfg.rules()[0].name, "x-hello");
    }

    #[test]
    fn ops_behave_as_documented() {
        let cfg = compile(
            r#"{"rules":[
            {"direction":"request","op":"set","name":"x-set","value":"new"},
            {"direction":"request","op":"set-if-absent","name":"x-keep","value":"filter"},
            {"direction":"request","op":"set-if-absent","name":"x-fill","value":"filter"},
            {"direction":"request","op":"remove","name":"x-drop"},
            {"direction":"request","name":"x-append","value":"two"},
            {"direction":"response","op":"remove","name":"server"}
        ]}"#,
        )
        .unwrap();
        let mut s = Fake::request(&[
            (":path", "/"),
            ("x-set", "old"),
            ("x-set", "older"),
            ("x-keep", "client"),
            ("x-drop", "bye"),
            ("x-append", "one"),
        ]);
        s.resp.push(("server".into(), "upstream".into()));
        run(&cfg, &mut s);
        assert_eq!(s.values(Direction::Request, "x-set"), ["new"]);
        assert_eq!(s.values(Direction::Request, "x-keep"), ["client"]);
        assert_eq!(s.values(Direction::Request, "x-fill"), ["filter"]);
        assert!(s.values(Direction::Request, "x-drop").is_empty());
        assert_eq!(s.values(Direction::Request, "x-append"), ["one", "two"]);
        assert!(s.values(Direction::Response, "server").is_empty());
        assert!(s.outcomes.contains(&(1, Outcome::Skipped)));
        assert!(s.outcomes.contains(&(2, Outcome::Applied)));
    }

    #[test]
    fn conditions_select_streams() {
        let cfg = compile(
            r#"{"rules":[
            {"direction":"response","name":"x-api","value":"yes","when":{"path_prefix":"/api"}},
            {"direction":"response","name":"x-post","value":"yes","when":{"method":"POST"}},
            {"direction":"response","name":"x-debug","value":"yes","when":{"header_present":"X-Debug"}},
            {"direction":"request","name":"x-both","value":"yes","when":{"path_prefix":"/api","method":"GET"}}
        ]}"#,
        )
        .unwrap();
        let mut s = Fake::request(&[(":path", "/api/v1"), (":method", "GET")]);
        run(&cfg, &mut s);
        assert_eq!(s.values(Direction::Response, "x-api"), ["yes"]);
        assert!(s.values(Direction::Response, "x-post").is_empty());
        assert!(s.values(Direction::Response, "x-debug").is_empty());
        assert_eq!(s.values(Direction::Request, "x-both"), ["yes"]);

        let mut s = Fake::request(&[(":path", "/other"), (":method", "POST"), ("x-debug", "1")]);
        run(&cfg, &mut s);
        assert!(s.values(Direction::Response, "x-api").is_empty());
        assert_eq!(s.values(Direction::Response, "x-post"), ["yes"]);
        assert_eq!(s.values(Direction::Response, "x-debug"), ["yes"]);
        assert!(s.values(Direction::Request, "x-both").is_empty());
        assert!(s.outcomes.contains(&(0, Outcome::Skipped)));
        assert!(s.outcomes.contains(&(3, Outcome::Skipped)));
    }

    #[test]
    fn conditions_see_the_request_as_it_arrived() {
        let cfg = compile(
            r#"{"rules":[
            {"direction":"request","op":"remove","name":"x-debug"},
            {"direction":"response","name":"x-was-debug","value":"yes","when":{"header_present":"x-debug"}}
        ]}"#,
        )
        .unwrap();
        let mut s = Fake::request(&[(":path", "/"), ("x-debug", "1")]);
        run(&cfg, &mut s);
        assert!(s.values(Direction::Request, "x-debug").is_empty());
        assert_eq!(s.values(Direction::Response, "x-was-debug"), ["yes"]);
    }

    #[test]
    fn placeholders_resolve() {
        let cfg = compile(
            r#"{"rules":[
            {"direction":"request","op":"set","name":"x-route","value":"${request.method} ${request.path}"},
            {"direction":"response","name":"x-user","value":"user=${request.header.X-User}"},
            {"direction":"response","name":"x-who","value":"${plugin.root_id}@${node.id} costs $$5 or $"}
        ]}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.rules()[2].value,
            Template::Static("my_root_id@node-1 costs $5 or $".into())
        );
        let mut s = Fake::request(&[(":path", "/a?b=c"), (":method", "PUT"), ("x-user", "ann")]);
        s.props.insert("request.path".into(), "/a?b=c".into());
        s.props.insert("request.method".into(), "PUT".into());
        run(&cfg, &mut s);
        assert_eq!(s.values(Direction::Request, "x-route"), ["PUT /a?b=c"]);
        assert_eq!(s.values(Direction::Response, "x-user"), ["user=ann"]);
        assert_eq!(
            s.values(Direction::Response, "x-who"),
            ["my_root_id@node-1 costs $5 or $"]
        );
    }

    #[test]
    fn a_request_value_that_would_break_a_header_renders_as_nothing() {
        let cfg = compile(
            r#"{"rules":[{"direction":"response","name":"x-user","value":"user=${request.header.x-user}"}]}"#,
        )
        .unwrap();
        let mut s = Fake::request(&[(":path", "/"), ("x-user", "ann\r\nx-evil: 1")]);
        run(&cfg, &mut s);
        assert_eq!(s.values(Direction::Response, "x-user"), ["user="]);
    }

    #[test]
    fn the_canonical_form_compiles_to_the_same_configuration() {
        let cfg = compile(
            r#"{"rules":[
            {"direction":"request","op":"set","name":"X-Route","value":"${request.method} ${request.path} $$ ${request.url_path}","when":{"path_prefix":"/a\u0001","method":"GET"}},
            {"direction":"response","op":"remove","name":"server","when":{"header_present":"X-Debug"}},
            {"direction":"response","name":"x-who","value":"${plugin.root_id}@${node.id}: ${request.header.x-user} \"q\" \\"}
        ]}"#,
        )
        .unwrap();
        let canonical = cfg.to_json();
        assert!(canonical.contains(r#""name":"x-route","value":"${request.method} ${request.path} $$ ${request.url_path}""#), "{canonical}");
        assert!(
            canonical.contains(r#""path_prefix":"/a\u0001""#),
            "{canonical}"
        );
        assert_eq!(
            Config::compile(canonical.as_bytes(), &|_| None).unwrap(),
            cfg
        );
        let short = compile(r#"{"name":"A","value":"$5"}"#).unwrap();
        assert_eq!(
            short.to_json(),
            r#"{"rules":[{"direction":"response","op":"append","name":"a","value":"$$5"}]}"#
        );
    }

    #[test]
    fn empty_rendered_value_skips_the_rule() {
        let cfg = compile(
            r#"{"rules":[{"direction":"response","name":"x-user","value":"${request.header.x-user}"}]}"#,
        )
        .unwrap();
        let mut s = Fake::request(&[(":path", "/")]);
        run(&cfg, &mut s);
        assert!(s.values(Direction::Response, "x-user").is_empty());
        assert_eq!(s.outcomes, [(0, Outcome::Skipped)]);
    }

    #[test]
    fn rejects_bad_configuration_naming_the_field() {
        let cases: &[(&str, &str)] = &[
            ("", "configuration is empty"),
            ("  \n", "configuration is empty"),
            ("{}", "no rules"),
            (
                r#"{"name":"a","value":"b","extra":1}"#,
                "extra: unknown field at line 1 column 33, expected one of: name, value, rules",
            ),
            (r#"{"name":"a"}"#, "value: missing"),
            (r#"{"value":"a"}"#, "name: missing"),
            (r#"{"name":"a","value":"b","rules":[]}"#, "use one"),
            (r#"{"rules":[]}"#, "rules: empty"),
            (
                r#"{"name":"bad header","value":"b"}"#,
                "name: invalid header name \"bad header\"",
            ),
            (
                r#"{"name":":status","value":"b"}"#,
                "name: pseudo-header \":status\"",
            ),
            (
                r#"{"name":"x","value":"a\r\nb"}"#,
                "value: character '\\r' at byte 1",
            ),
            (
                r#"{"name":"x","value":"a\u0000"}"#,
                "value: character '\\0'",
            ),
            (
                r#"{"rules":[{"direction":"request","op":"set","name":":path","value":"/"}]}"#,
                "rules[0].name: pseudo-header \":path\"",
            ),
            (
                r#"{"rules":[{"direction":"sideways","name":"x","value":"v"}]}"#,
                "rules[0].direction: unknown value \"sideways\"",
            ),
            (
                r#"{"rules":[{"direction":"request","op":"sett","name":"x","value":"v"}]}"#,
                "rules[0].op: unknown value \"sett\" at line 1 column 39, expected one of: append, set, set-if-absent, remove",
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x"}]}"#,
                "rules[0].value: missing: op \"append\" needs a value",
            ),
            (
                r#"{"rules":[{"direction":"request","op":"remove","name":"x","value":"v"}]}"#,
                "rules[0].value: not allowed",
            ),
            (
                r#"{"rules":[{"direction":"request","value":"v"}]}"#,
                "rules[0].name: missing",
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x","value":"v","when":{}}]}"#,
                "rules[0].when: empty condition",
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x","value":"v","when":{"path_prefix":"api"}}]}"#,
                "rules[0].when.path_prefix",
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x","value":"v","when":{"method":"G T"}}]}"#,
                "rules[0].when.method",
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x","value":"v","when":{"header_present":":authority"}}]}"#,
                "rules[0].when.header_present: pseudo-header",
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x","value":"v","when":{"paths":"/"}}]}"#,
                "rules[0].when.paths: unknown field",
            ),
            (
                r#"{"name":"x","value":"${a\u009b\"}"}"#,
                r#"value: unknown placeholder ${a\u{9b}\"}; known: "#,
            ),
            (
                r#"{"name":"a","value":"b","x\ny.z":1}"#,
                r#""x\ny.z": unknown field at line 1 column 34"#,
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x","value":"${nope}"}]}"#,
                "rules[0].value: unknown placeholder ${nope}",
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x","value":"${request.path"}]}"#,
                "rules[0].value: unterminated placeholder",
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x","value":"${request.header.a b}"}]}"#,
                "invalid header name",
            ),
            (
                r#"{"name":"x","value":5}"#,
                "value: expected a string, found a number at line 1 column 21",
            ),
            (r#"[1]"#, ".: expected a JSON object"),
            (
                r#"{"rules":{}}"#,
                "rules: expected an array, found an object",
            ),
            (
                r#"{"rules":["x"]}"#,
                "rules[0]: expected an object, found a string",
            ),
            (
                r#"{"rules":[{"direction":"request","name":"x","value":"v","when":{"method":1}}]}"#,
                "rules[0].when.method: expected a string, found a number",
            ),
        ];
        for (json, want) in cases {
            let got = err(json);
            assert!(got.contains(want), "{json}\n  got:  {got}\n  want: {want}");
        }
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let got = err("{\n  \"name\": \"x\",\n  \"value\": \"y\"\n");
        assert!(got.starts_with("malformed JSON:"), "{got}");
        assert!(got.contains("line 4 column 1"), "{got}");
        let got = err(r#"{"name":"x" "value":"y"}"#);
        assert!(got.contains("line 1 column 13"), "{got}");
        let got = err(r#"{"name":"x","value":"y"} trailing"#);
        assert!(got.contains("trailing data"), "{got}");
    }

    #[test]
    fn too_many_rules_are_rejected() {
        let rule = r#"{"direction":"request","name":"x","value":"v"}"#;
        let rules = vec![rule; MAX_RULES + 1].join(",");
        let got = err(&format!(r#"{{"rules":[{rules}]}}"#));
        assert!(got.contains("65 rules, at most 64"), "{got}");
        let rules = vec![rule; MAX_RULES].join(",");
        assert_eq!(
            compile(&format!(r#"{{"rules":[{rules}]}}"#))
                .unwrap()
                .rules()
                .len(),
            64
        );
    }

    #[test]
    fn request_path_and_method_are_the_pseudo_headers() {
        let cfg = compile(
            r#"{"rules":[{"direction":"request","op":"set","name":"x-route","value":"${request.method} ${request.path}"}]}"#,
        )
        .unwrap();
        // No attribute is set: the values come from the request's own header map.
        let mut s = Fake::request(&[(":path", "/p?q"), (":method", "GET")]);
        run(&cfg, &mut s);
        assert_eq!(s.values(Direction::Request, "x-route"), ["GET /p?q"]);
    }

    #[test]
    fn removing_an_absent_header_makes_no_host_call_when_the_request_is_read_anyway() {
        let cfg = compile(
            r#"{"rules":[
            {"direction":"request","op":"remove","name":"x-token"},
            {"direction":"request","op":"set","name":"x-route","value":"${request.path}"}
        ]}"#,
        )
        .unwrap();
        let mut s = Fake::request(&[(":path", "/")]);
        run(&cfg, &mut s);
        assert_eq!(s.removes, 0);
        assert!(s.outcomes.contains(&(0, Outcome::Applied)));
        let mut s = Fake::request(&[(":path", "/"), ("x-token", "secret")]);
        run(&cfg, &mut s);
        assert_eq!(s.removes, 1);
        assert!(s.values(Direction::Request, "x-token").is_empty());

        // An earlier rule may add the header: then the remove always happens.
        let cfg = compile(
            r#"{"rules":[
            {"direction":"request","name":"x-token","value":"${request.path}"},
            {"direction":"request","op":"remove","name":"x-token"}
        ]}"#,
        )
        .unwrap();
        let mut s = Fake::request(&[(":path", "/")]);
        run(&cfg, &mut s);
        assert_eq!(s.removes, 1);
        assert!(s.values(Direction::Request, "x-token").is_empty());

        // Nothing else reads the request: a plain remove call, no read first.
        let cfg = compile(r#"{"rules":[{"direction":"request","op":"remove","name":"x-token"}]}"#)
            .unwrap();
        let mut s = Fake::request(&[(":path", "/")]);
        run(&cfg, &mut s);
        assert_eq!(s.removes, 1);
    }

    #[test]
    fn request_phase_is_skipped_only_when_nothing_needs_it() {
        let c = |j: &str| compile(j).unwrap().needs_request_phase();
        assert!(!c(
            r#"{"rules":[{"direction":"response","name":"a","value":"${node.id}"}]}"#
        ));
        assert!(c(
            r#"{"rules":[{"direction":"response","name":"a","value":"${request.path}"}]}"#
        ));
        assert!(c(
            r#"{"rules":[{"direction":"request","name":"a","value":"b"}]}"#
        ));
        assert!(c(
            r#"{"rules":[{"direction":"response","name":"a","value":"b","when":{"method":"GET"}}]}"#
        ));
    }
}
