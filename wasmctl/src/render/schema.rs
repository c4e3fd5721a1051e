//! A structural-schema validator: checks an object against the `openAPIV3Schema` of a
//! CustomResourceDefinition the way the Kubernetes API server would, so rendered Istio resources
//! (and `FilterDeployment`s against our own CRD) are checked without a cluster.
//!
//! Honoured: `type`, `properties`, `required`, `additionalProperties` (schema or boolean),
//! `items`, `enum`, `format` (`int32`, `int64`, `uint32`), `nullable`,
//! `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`, `minLength`,
//! `maxLength`, `pattern`, `minimum`, `maximum`, `minItems`, `maxItems`, `minProperties`,
//! `maxProperties`, and the value-validation combinators `allOf`, `anyOf`, `oneOf`, `not`.
//! A field the schema does not declare (where the API server would prune it) is an error: a
//! rendered object must not lose anything on the way in. CEL rules
//! (`x-kubernetes-validations`) are not evaluated; [`Report::cel_rules`] counts those met.
//!
//! ```
//! use serde_json::json;
//! use wasmctl::render::schema;
//!
//! let s = json!({"type": "object", "properties": {"port": {"type": "integer", "format": "int32"}}});
//! assert!(schema::validate(&s, &json!({"port": 80})).violations.is_empty());
//! let r = schema::validate(&s, &json!({"prot": 80}));
//! assert_eq!(r.violations[0].path, ".prot");
//! ```

use serde_json::Value;

/// One way the object breaks the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON path, e.g. `.spec.configPatches[0].applyTo`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// The outcome of a validation.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Everything found wrong.
    pub violations: Vec<Violation>,
    /// CEL rules (`x-kubernetes-validations`) on the visited nodes, not evaluated.
    pub cel_rules: usize,
}

/// Validate `value` against `schema`.
pub fn validate(schema: &Value, value: &Value) -> Report {
    let mut r = Report::default();
    node(schema, value, "", true, &mut r);
    r
}

/// The `openAPIV3Schema` of `version` in a CRD document, if that version is served.
pub fn crd_schema<'a>(crd: &'a Value, version: &str) -> Option<&'a Value> {
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| {
            v.get("name").and_then(Value::as_str) == Some(version)
                && v.get("served").and_then(Value::as_bool) == Some(true)
        })?
        .pointer("/schema/openAPIV3Schema")
}

/// Validate a whole custom resource: `apiVersion` and `kind` must match the CRD, `metadata`
/// needs a name (the API server checks the rest of it), and the other fields go through the
/// version's schema.
pub fn validate_resource(crd: &Value, object: &Value) -> Report {
    let mut r = Report::default();
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = crd
        .pointer("/spec/names/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let version = api_version
        .strip_prefix(group)
        .and_then(|v| v.strip_prefix('/'));
    let Some(schema) = version.and_then(|v| crd_schema(crd, v)) else {
        r.violations.push(Violation {
            path: ".apiVersion".into(),
            reason: format!("{api_version:?} is not a served version of group {group}"),
        });
        return r;
    };
    if object.get("kind").and_then(Value::as_str) != Some(kind) {
        r.violations.push(Violation {
            path: ".kind".into(),
            reason: format!("expected {kind}"),
        });
    }
    match object.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => {}
        _ => r.violations.push(Violation {
            path: ".metadata.name".into(),
            reason: "required".into(),
        }),
    }
    let mut rest = object.clone();
    if let Some(m) = rest.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        m.remove("metadata");
    }
    node(schema, &rest, "", true, &mut r);
    r
}

fn push(r: &mut Report, path: &str, reason: impl Into<String>) {
    r.violations.push(Violation {
        path: if path.is_empty() {
            ".".into()
        } else {
            path.into()
        },
        reason: reason.into(),
    });
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `structural`: this node's properties prune unknown fields (false inside combinators, whose
/// branches only validate).
fn node(s: &Value, v: &Value, path: &str, structural: bool, r: &mut Report) {
    let flag = |k: &str| s.get(k).and_then(Value::as_bool) == Some(true);
    if let Some(rules) = s.get("x-kubernetes-validations").and_then(Value::as_array) {
        r.cel_rules += rules.len();
    }
    if v.is_null() {
        if !flag("nullable") {
            push(
                r,
                path,
                "null is not allowed here (the schema is not nullable)",
            );
        }
        return;
    }
    if flag("x-kubernetes-int-or-string") {
        if !matches!(type_name(v), "integer" | "string") {
            push(
                r,
                path,
                format!("expected an integer or a string, got {}", type_name(v)),
            );
            return;
        }
    } else if let Some(t) = s.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            push(r, path, format!("expected {t}, got {actual}"));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        let allowed: Vec<String> = e.iter().map(Value::to_string).collect();
        push(r, path, format!("{v} is not one of {}", allowed.join(", ")));
    }
    match v {
        Value::String(text) => string(s, text, path, r),
        Value::Number(n) => number(s, n, path, r),
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                push(r, path, format!("{len} items, at most {max} allowed"));
            }
            if let Some(min) = s.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                push(r, path, format!("{len} items, at least {min} required"));
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    node(item, x, &format!("{path}[{i}]"), structural, r);
                }
            }
        }
        Value::Object(map) => object(s, map, path, structural, r),
        _ => {}
    }
    combinators(s, v, path, r);
}

fn string(s: &Value, text: &str, path: &str, r: &mut Report) {
    let len = text.chars().count() as u64;
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        push(r, path, format!("{len} characters, at most {max} allowed"));
    }
    if let Some(min) = s.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        push(
            r,
            path,
            format!("{len} characters, at least {min} required"),
        );
    }
    if let Some(p) = s.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(p) {
            Ok(re) if !re.is_match(text) => {
                push(r, path, format!("{text:?} does not match the pattern {p}"));
            }
            Ok(_) => {}
            Err(e) => push(
                r,
                path,
                format!("the schema's pattern {p} does not compile: {e}"),
            ),
        }
    }
}

fn number(s: &Value, n: &serde_json::Number, path: &str, r: &mut Report) {
    let range = match s.get("format").and_then(Value::as_str) {
        Some("int32") => Some((i64::from(i32::MIN) as f64, i64::from(i32::MAX) as f64)),
        Some("uint32") => Some((0.0, f64::from(u32::MAX))),
        Some("int64") => Some((i64::MIN as f64, i64::MAX as f64)),
        _ => None,
    };
    let x = n.as_f64().unwrap_or_default();
    if let Some((lo, hi)) = range
        && (x < lo || x > hi)
    {
        push(r, path, format!("{n} is out of range for its format"));
    }
    if let Some(min) = s.get("minimum").and_then(Value::as_f64)
        && x < min
    {
        push(r, path, format!("{n} is below the minimum {min}"));
    }
    if let Some(max) = s.get("maximum").and_then(Value::as_f64)
        && x > max
    {
        push(r, path, format!("{n} is above the maximum {max}"));
    }
}

fn object(
    s: &Value,
    map: &serde_json::Map<String, Value>,
    path: &str,
    structural: bool,
    r: &mut Report,
) {
    let len = map.len() as u64;
    if let Some(max) = s.get("maxProperties").and_then(Value::as_u64)
        && len > max
    {
        push(r, path, format!("{len} properties, at most {max} allowed"));
    }
    if let Some(min) = s.get("minProperties").and_then(Value::as_u64)
        && len < min
    {
        push(
            r,
            path,
            format!("{len} properties, at least {min} required"),
        );
    }
    if let Some(req) = s.get("required").and_then(Value::as_array) {
        for k in req.iter().filter_map(Value::as_str) {
            if !map.contains_key(k) {
                push(r, &format!("{path}.{k}"), "required field missing");
            }
        }
    }
    let props = s.get("properties").and_then(Value::as_object);
    let additional = s.get("additionalProperties");
    let preserve = s
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    for (k, x) in map {
        let p = format!("{path}.{k}");
        if let Some(ps) = props.and_then(|ps| ps.get(k)) {
            node(ps, x, &p, structural, r);
        } else if let Some(a) = additional.filter(|a| a.is_object()) {
            node(a, x, &p, structural, r);
        } else if additional == Some(&Value::Bool(true)) || preserve || !structural {
            // Kept as is by the API server (or a combinator branch, which never prunes).
        } else if additional == Some(&Value::Bool(false)) {
            push(
                r,
                &p,
                "unknown field: the schema forbids additional properties",
            );
        } else {
            push(r, &p, "unknown field: the API server would prune (drop) it");
        }
    }
}

fn passes(s: &Value, v: &Value, path: &str) -> bool {
    let mut r = Report::default();
    node(s, v, path, false, &mut r);
    r.violations.is_empty()
}

fn combinators(s: &Value, v: &Value, path: &str, r: &mut Report) {
    if let Some(all) = s.get("allOf").and_then(Value::as_array) {
        for b in all {
            let mut sub = Report::default();
            node(b, v, path, false, &mut sub);
            r.violations.extend(sub.violations);
        }
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|b| passes(b, v, path))
    {
        push(r, path, "matches none of the anyOf alternatives");
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|b| passes(b, v, path)).count();
        if n != 1 {
            push(
                r,
                path,
                format!("matches {n} of the oneOf alternatives, exactly 1 required"),
            );
        }
    }
    if let Some(not) = s.get("not")
        && passes(not, v, path)
    {
        push(r, path, "matches the schema under `not`");
    }
}
