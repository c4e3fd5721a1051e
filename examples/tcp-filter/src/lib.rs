//! `tcp-filter`: a proxy-wasm network (TCP) filter on the Rust SDK. Each connection counts the
//! bytes it carries each way, and when it closes the filter logs one line:
//! `tcp-filter PREFIX: downstream N bytes, upstream M bytes`.
//!
//! The plugin configuration is a flat JSON object (string and boolean values, no escapes),
//! every field optional:
//!
//! - `prefix` (string, default `tcp`): the name in the log lines, `{"prefix": "mongodb"}`;
//! - `uppercase` (`"downstream"`, `"upstream"` or `"both"`): the bytes of that side reach the
//!   other upper-cased (ASCII letters): the client's bytes on their way to the upstream
//!   (`downstream`), the upstream's on their way to the client (`upstream`), or both; by default
//!   the bytes pass unchanged;
//! - `log_events` (boolean, default false): also log each callback at info level with what it
//!   was given (`new connection`, `downstream data 6 bytes`, `... end of stream`, `downstream
//!   close (peer Remote)`, `upstream close (peer Unknown)`, `done`), which shows the order in
//!   which the proxy delivers a connection's events;
//! - `cluster` (string): route each connection to this cluster of the `tcp_proxy` that follows
//!   the filter: on a new connection the filter sets the filter state object
//!   `envoy.tcp_proxy.cluster` with Envoy's foreign function `set_envoy_filter_state`, reads it
//!   back (`filter_state.envoy.tcp_proxy.cluster`) and logs `routed to CLUSTER (filter state
//!   VALUE)`, or the status the call failed with.
//!
//! Counts are of the bytes as they arrived, before any rewriting. An unknown field or a value of
//! the wrong type fails `on_configure`, naming the field.

/// Which side's bytes the filter upper-cases (`uppercase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Uppercase {
    /// None: the bytes pass unchanged.
    #[default]
    None,
    /// The client's bytes (downstream data, on their way to the upstream).
    Downstream,
    /// The upstream's bytes (upstream data, on their way to the client).
    Upstream,
    /// Both.
    Both,
}

impl Uppercase {
    /// Whether the client's bytes are upper-cased.
    pub fn downstream(self) -> bool {
        matches!(self, Uppercase::Downstream | Uppercase::Both)
    }

    /// Whether the upstream's bytes are upper-cased.
    pub fn upstream(self) -> bool {
        matches!(self, Uppercase::Upstream | Uppercase::Both)
    }
}

/// The plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The name in the log lines.
    pub prefix: String,
    /// Which side's bytes are upper-cased.
    pub uppercase: Uppercase,
    /// Log each callback.
    pub log_events: bool,
    /// The `tcp_proxy` cluster each connection goes to (`None`: `tcp_proxy`'s own).
    pub cluster: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            prefix: "tcp".into(),
            uppercase: Uppercase::None,
            log_events: false,
            cluster: None,
        }
    }
}

/// A value of the flat JSON object.
#[derive(Debug, PartialEq, Eq)]
enum Value<'a> {
    Str(&'a str),
    Bool(bool),
}

/// The `"key": value` pairs of a flat JSON object whose values are strings (no escapes) or
/// booleans, in order.
fn pairs(text: &str) -> Result<Vec<(&str, Value<'_>)>, String> {
    let not_object = || "the configuration is not a JSON object".to_string();
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(not_object)?;
    let mut out = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let r = rest.strip_prefix('"').ok_or_else(not_object)?;
        let end = r.find('"').ok_or_else(not_object)?;
        let key = &r[..end];
        let r = r[end + 1..].trim_start();
        let r = r
            .strip_prefix(':')
            .ok_or_else(|| format!("{key}: expected ':' after the field name"))?
            .trim_start();
        let (value, r) = if let Some(s) = r.strip_prefix('"') {
            let end = s
                .find('"')
                .ok_or_else(|| format!("{key}: unterminated string"))?;
            if s[..end].contains('\\') {
                return Err(format!("{key}: escapes are not supported"));
            }
            (Value::Str(&s[..end]), &s[end + 1..])
        } else if let Some(r) = r.strip_prefix("true") {
            (Value::Bool(true), r)
        } else if let Some(r) = r.strip_prefix("false") {
            (Value::Bool(false), r)
        } else {
            return Err(format!("{key}: expected a string or a boolean"));
        };
        out.push((key, value));
        let r = r.trim_start();
        rest = match r.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if r.is_empty() => r,
            None => return Err(format!("{key}: expected ',' or '}}' after the value")),
        };
    }
    Ok(out)
}

/// Parse the plugin configuration (empty: every default). Errors name the field.
pub fn parse(config: &str) -> Result<Config, String> {
    let mut c = Config::default();
    if config.trim().is_empty() {
        return Ok(c);
    }
    for (key, value) in pairs(config)? {
        match (key, value) {
            ("prefix", Value::Str(p)) => c.prefix = p.to_string(),
            ("prefix", _) => return Err("prefix: expected a string".into()),
            ("uppercase", Value::Str("downstream")) => c.uppercase = Uppercase::Downstream,
            ("uppercase", Value::Str("upstream")) => c.uppercase = Uppercase::Upstream,
            ("uppercase", Value::Str("both")) => c.uppercase = Uppercase::Both,
            ("uppercase", _) => {
                return Err("uppercase: expected \"downstream\", \"upstream\" or \"both\"".into());
            }
            ("log_events", Value::Bool(b)) => c.log_events = b,
            ("log_events", _) => return Err("log_events: expected true or false".into()),
            ("cluster", Value::Str(name)) if !name.is_empty() => {
                c.cluster = Some(name.to_string());
            }
            ("cluster", _) => return Err("cluster: expected a cluster name".into()),
            (other, _) => {
                return Err(format!(
                    "unknown field {other:?} (expected prefix, uppercase, log_events, cluster)"
                ));
            }
        }
    }
    Ok(c)
}

/// The filter state object that picks `tcp_proxy`'s cluster.
pub const TCP_PROXY_CLUSTER: &str = "envoy.tcp_proxy.cluster";

/// The arguments of Envoy's foreign function `set_envoy_filter_state`: the protobuf message
/// `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments` with `path` (field 1) and
/// `value` (field 2); `span` (field 3) left at its default, the filter chain.
pub fn set_filter_state_arguments(path: &str, value: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(path.len() + value.len() + 12);
    for (tag, s) in [(0x0a, path), (0x12, value)] {
        if s.is_empty() {
            continue;
        }
        b.push(tag);
        let mut n = s.len();
        while n >= 0x80 {
            b.push((n as u8) | 0x80);
            n >>= 7;
        }
        b.push(n as u8);
        b.extend_from_slice(s.as_bytes());
    }
    b
}

#[cfg(target_family = "wasm")]
mod glue {
    use super::Config;
    use proxy_wasm::traits::{Context, RootContext, StreamContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, PeerType};
    use std::rc::Rc;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(Root { config: Rc::new(Config::default()) })
        });
    }}

    struct Root {
        config: Rc<Config>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let Some(bytes) = self.get_plugin_configuration() else {
                return true;
            };
            let Ok(text) = String::from_utf8(bytes) else {
                log::warn!("tcp-filter: the configuration is not UTF-8");
                return false;
            };
            match super::parse(&text) {
                Ok(c) => {
                    self.config = Rc::new(c);
                    true
                }
                Err(e) => {
                    log::warn!("tcp-filter: invalid configuration: {e}");
                    false
                }
            }
        }

        fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
            Some(Box::new(Connection {
                config: self.config.clone(),
                downstream: 0,
                upstream: 0,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::StreamContext)
        }
    }

    struct Connection {
        config: Rc<Config>,
        downstream: usize,
        upstream: usize,
    }

    impl Connection {
        fn event(&self, what: std::fmt::Arguments<'_>) {
            if self.config.log_events {
                log::info!("tcp-filter {}: {what}", self.config.prefix);
            }
        }

        fn data(size: usize, end_of_stream: bool) -> String {
            let end = if end_of_stream { ", end of stream" } else { "" };
            format!("{size} bytes{end}")
        }
    }

    impl Context for Connection {
        fn on_done(&mut self) -> bool {
            self.event(format_args!("done"));
            true
        }
    }

    impl Connection {
        /// Point `tcp_proxy` at `cluster`, read the filter state back and log what happened.
        fn route(&self, cluster: &str) {
            let prefix = &self.config.prefix;
            let args = super::set_filter_state_arguments(super::TCP_PROXY_CLUSTER, cluster);
            if let Err(status) =
                proxy_wasm::hostcalls::call_foreign_function("set_envoy_filter_state", Some(&args))
            {
                log::warn!("tcp-filter {prefix}: set_envoy_filter_state failed: {status:?}");
                return;
            }
            let read = self
                .get_property(vec!["filter_state", super::TCP_PROXY_CLUSTER])
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            log::info!(
                "tcp-filter {prefix}: routed to {cluster} (filter state {})",
                read.as_deref().unwrap_or("not readable")
            );
        }
    }

    impl StreamContext for Connection {
        fn on_new_connection(&mut self) -> Action {
            self.event(format_args!("new connection"));
            if let Some(cluster) = &self.config.cluster {
                self.route(cluster);
            }
            Action::Continue
        }

        fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
            self.event(format_args!(
                "downstream data {}",
                Self::data(data_size, end_of_stream)
            ));
            self.downstream += data_size;
            if self.config.uppercase.downstream()
                && data_size > 0
                && let Some(bytes) = self.get_downstream_data(0, data_size)
            {
                self.set_downstream_data(0, data_size, &bytes.to_ascii_uppercase());
            }
            Action::Continue
        }

        fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
            self.event(format_args!(
                "upstream data {}",
                Self::data(data_size, end_of_stream)
            ));
            self.upstream += data_size;
            if self.config.uppercase.upstream()
                && data_size > 0
                && let Some(bytes) = self.get_upstream_data(0, data_size)
            {
                self.set_upstream_data(0, data_size, &bytes.to_ascii_uppercase());
            }
            Action::Continue
        }

        fn on_downstream_close(&mut self, peer_type: PeerType) {
            self.event(format_args!("downstream close (peer {peer_type:?})"));
        }

        fn on_upstream_close(&mut self, peer_type: PeerType) {
            self.event(format_args!("upstream close (peer {peer_type:?})"));
        }

        fn on_log(&mut self) {
            log::info!(
                "tcp-filter {}: downstream {} bytes, upstream {} bytes",
                self.config.prefix,
                self.downstream,
                self.upstream
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{Config, Uppercase, parse};

    #[test]
    fn reads_the_prefix() {
        assert_eq!(
            parse(r#"{"prefix": "mongodb"}"#).map(|c| c.prefix),
            Ok("mongodb".into())
        );
        assert_eq!(parse(""), Ok(Config::default()));
        assert_eq!(parse("{}"), Ok(Config::default()));
        assert_eq!(parse(" { } "), Ok(Config::default()));
        assert!(parse("mongodb").is_err());
        assert_eq!(
            parse(r#"{"prefix": 1}"#),
            Err("prefix: expected a string or a boolean".into())
        );
        assert_eq!(
            parse(r#"{"prefix": true}"#),
            Err("prefix: expected a string".into())
        );
    }

    #[test]
    fn reads_uppercase_and_log_events() {
        let c = parse(r#"{"prefix":"echo","uppercase":"both","log_events":true}"#).unwrap();
        assert_eq!(
            c,
            Config {
                prefix: "echo".into(),
                uppercase: Uppercase::Both,
                log_events: true,
                cluster: None,
            }
        );
        assert!(c.uppercase.downstream() && c.uppercase.upstream());
        let c = parse(r#"{"uppercase": "downstream", "log_events": false}"#).unwrap();
        assert!(c.uppercase.downstream() && !c.uppercase.upstream());
        assert!(!c.log_events);
        assert_eq!(
            parse(r#"{"uppercase": true}"#),
            Err(r#"uppercase: expected "downstream", "upstream" or "both""#.into())
        );
        assert_eq!(
            parse(r#"{"log_events": "yes"}"#),
            Err("log_events: expected true or false".into())
        );
    }

    #[test]
    fn reads_the_cluster_and_encodes_the_filter_state_arguments() {
        assert_eq!(
            parse(r#"{"cluster": "b_side"}"#)
                .unwrap()
                .cluster
                .as_deref(),
            Some("b_side")
        );
        assert_eq!(parse("{}").unwrap().cluster, None);
        assert_eq!(
            parse(r#"{"cluster": ""}"#),
            Err("cluster: expected a cluster name".into())
        );
        // field 1 (path), field 2 (value): tag, length, bytes.
        assert_eq!(
            super::set_filter_state_arguments("k", "vv"),
            b"\x0a\x01k\x12\x02vv"
        );
        let long = "x".repeat(200);
        let b = super::set_filter_state_arguments(&long, "");
        assert_eq!(&b[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(b.len(), 203);
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            parse(r#"{"prefix": "a", "upper": "both"}"#),
            Err(
                r#"unknown field "upper" (expected prefix, uppercase, log_events, cluster)"#.into()
            )
        );
        assert_eq!(
            parse(r#"{"prefix": "a\"b"}"#),
            Err("prefix: escapes are not supported".into())
        );
        assert_eq!(
            parse(r#"{"prefix": "a" "b": 1}"#),
            Err("prefix: expected ',' or '}' after the value".into())
        );
        assert_eq!(
            parse(r#"{"prefix" "a"}"#),
            Err("prefix: expected ':' after the field name".into())
        );
    }
}
