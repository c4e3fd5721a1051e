//! Scenarios: one request through a filter, described in YAML (configuration, the request, what
//! the upstream and any called cluster answer, what must come out), and run in the harness the
//! way Envoy would run it. The same files drive the harness-vs-Envoy fidelity tests and
//! `wasmctl run --scenario`.
//!
//! ```
//! use proxy_wasm_harness::scenario::Scenario;
//!
//! let s = Scenario::from_yaml(r#"
//! name: seed
//! root_id: my_root_id
//! configuration: '{"name":"resp-header-demo","value":"added by our filter"}'
//! request: {method: GET, path: /productpage}
//! upstream: {status: 200, headers: [[x-up, "1"]]}
//! expect:
//!   response_headers: {resp-header-demo: [added by our filter]}
//! "#).unwrap();
//! assert_eq!(s.request.path, "/productpage");
//! ```

use crate::abi::Action;
use crate::error::{Error, Result};
use crate::headers::HeaderMap;
use crate::host::Host;
use crate::plugin::Plugin;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One scenario.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name.
    pub name: String,
    /// Which module the scenario is for (a name the test runner maps to a file).
    #[serde(default)]
    pub module: String,
    /// The plugin's root id.
    #[serde(default)]
    pub root_id: String,
    /// The plugin configuration.
    #[serde(default)]
    pub configuration: String,
    /// The VM configuration (`vm_config.configuration`), read in `proxy_on_vm_start`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vm_configuration: String,
    /// What the client sends.
    #[serde(default)]
    pub request: Request,
    /// What the upstream answers.
    #[serde(default)]
    pub upstream: Answer,
    /// Clusters the filter may call (`proxy_http_call`) and what each answers.
    #[serde(default)]
    pub clusters: BTreeMap<String, Answer>,
    /// What must come out.
    #[serde(default)]
    pub expect: Expect,
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers besides the pseudo-headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body (sent with end of stream).
    pub body: String,
}

impl Default for Request {
    fn default() -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

/// What an upstream or called cluster answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Headers besides `:status`, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Default for Answer {
    fn default() -> Answer {
        Answer {
            status: 200,
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

/// Expectations; every given field must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expect {
    /// Status the client gets.
    pub status: Option<u16>,
    /// Response headers with all their values, in order.
    pub response_headers: BTreeMap<String, Vec<String>>,
    /// Response headers that must be absent.
    pub response_absent: Vec<String>,
    /// Headers the upstream receives, with all their values.
    pub upstream_headers: BTreeMap<String, Vec<String>>,
    /// Headers the upstream must not receive.
    pub upstream_absent: Vec<String>,
    /// Whether the upstream is reached at all.
    pub upstream_reached: Option<bool>,
    /// Body the client gets.
    pub body: Option<String>,
}

/// What came out of a scenario, comparable between the harness and Envoy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Outcome {
    /// Status the client got.
    pub status: u16,
    /// Response headers (name, value) in order, without the ones the proxy itself generates.
    pub response_headers: Vec<(String, String)>,
    /// Body the client got.
    pub body: String,
    /// Headers the upstream received, or `None` when it was not reached.
    pub upstream_headers: Option<Vec<(String, String)>>,
    /// Local response the filter sent: (status, details).
    pub local_response: Option<(u16, String)>,
}

/// Headers a proxy adds or rewrites on its own (Envoy: routing, tracing, timing, framing);
/// left out when outcomes are compared, since the harness is not a router.
pub const PROXY_HEADERS: &[&str] = &[
    ":authority",
    ":scheme",
    ":method",
    ":path",
    ":status",
    "host",
    "date",
    "server",
    "content-length",
    "transfer-encoding",
    "x-forwarded-proto",
    "x-request-id",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-upstream-service-time",
];

/// Keep the headers a filter is responsible for.
pub fn filtered<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    pairs
        .filter(|(k, _)| !PROXY_HEADERS.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}

impl Scenario {
    /// Parse a scenario from YAML; errors name the line and the field.
    pub fn from_yaml(text: &str) -> std::result::Result<Scenario, String> {
        serde_norway::from_str(text).map_err(|e| e.to_string())
    }

    /// The request headers Envoy's connection manager hands the first filter.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            (":authority".to_string(), "example.test".to_string()),
            (":path".to_string(), self.request.path.clone()),
            (":method".to_string(), self.request.method.clone()),
            (":scheme".to_string(), "http".to_string()),
        ];
        h.extend(self.request.headers.iter().cloned());
        h.push(("x-forwarded-proto".into(), "http".into()));
        h.push((
            "x-request-id".into(),
            "00000000-0000-4000-8000-000000000000".into(),
        ));
        h
    }

    /// Check an outcome against the expectations; every failure is listed.
    pub fn check(&self, o: &Outcome) -> std::result::Result<(), Vec<String>> {
        let e = &self.expect;
        let mut bad = Vec::new();
        if let Some(s) = e.status
            && s != o.status
        {
            bad.push(format!("status: expected {s}, got {}", o.status));
        }
        let values = |pairs: &[(String, String)], name: &str| -> Vec<String> {
            pairs
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .collect()
        };
        for (name, want) in &e.response_headers {
            let got = values(&o.response_headers, name);
            if &got != want {
                bad.push(format!(
                    "response header {name}: expected {want:?}, got {got:?}"
                ));
            }
        }
        for name in &e.response_absent {
            if !values(&o.response_headers, name).is_empty() {
                bad.push(format!("response header {name}: expected absent"));
            }
        }
        if let Some(reached) = e.upstream_reached
            && reached != o.upstream_headers.is_some()
        {
            bad.push(format!("upstream reached: expected {reached}"));
        }
        let up = o.upstream_headers.clone().unwrap_or_default();
        for (name, want) in &e.upstream_headers {
            let got = values(&up, name);
            if &got != want {
                bad.push(format!(
                    "upstream header {name}: expected {want:?}, got {got:?}"
                ));
            }
        }
        for name in &e.upstream_absent {
            if !values(&up, name).is_empty() {
                bad.push(format!("upstream header {name}: expected absent"));
            }
        }
        if let Some(b) = &e.body
            && b != &o.body
        {
            bad.push(format!("body: expected {b:?}, got {:?}", o.body));
        }
        if bad.is_empty() { Ok(()) } else { Err(bad) }
    }

    /// Run the scenario through a plugin as Envoy would: request headers (and body), any HTTP
    /// calls answered from [`Scenario::clusters`], the upstream's answer unless the filter
    /// answered locally, then the end of the stream.
    pub fn run(&self, plugin: &Plugin) -> Result<Outcome> {
        let host = plugin.host();
        let mut s = plugin.http_stream()?;
        let req = self.request_headers();
        let pairs = as_pairs(&req);
        let has_body = !self.request.body.is_empty();
        let mut action = s.send_request_headers(&pairs, !has_body)?;
        self.answer_calls(&host)?;
        s.sync()?;
        if has_body && s.local_response().is_none() {
            action = s.send_request_body(self.request.body.as_bytes(), true)?;
            self.answer_calls(&host)?;
            s.sync()?;
        }
        let resumed = s.resumed().contains(&0);
        let mut outcome = Outcome::default();
        if let Some(local) = s.local_response() {
            let resp = s.response_headers();
            outcome.status = local.status as u16;
            outcome.local_response = Some((local.status as u16, local.details.clone()));
            outcome.response_headers = filtered(pair_iter(&resp));
            outcome.body = String::from_utf8_lossy(&s.response_body()).into_owned();
        } else if action == Action::Continue || resumed {
            outcome.upstream_headers = Some(filtered(pair_iter(&s.request_headers())));
            let mut up = vec![(":status".to_string(), self.upstream.status.to_string())];
            up.extend(self.upstream.headers.iter().cloned());
            up.push((
                "content-length".into(),
                self.upstream.body.len().to_string(),
            ));
            let has_resp_body = !self.upstream.body.is_empty();
            s.send_response_headers(&as_pairs(&up), !has_resp_body)?;
            if has_resp_body {
                s.send_response_body(self.upstream.body.as_bytes(), true)?;
            }
            let resp = s.response_headers();
            outcome.status = resp
                .get(":status")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            outcome.response_headers = filtered(pair_iter(&resp));
            outcome.body = String::from_utf8_lossy(&s.response_body()).into_owned();
        } else {
            return Err(Error::Usage(format!(
                "scenario {:?}: the filter paused the request and never resumed it",
                self.name
            )));
        }
        s.complete()?;
        Ok(outcome)
    }

    /// Run a bootstrap service (Envoy's `WasmService`: a plugin with a root context and no
    /// stream) for `advance` of host time: ticks fire in time order, the work each tick queued
    /// runs before the next, and its HTTP calls are answered from [`Scenario::clusters`] at once,
    /// before the next tick, as a nearby cluster answers in Envoy. Calls made while the plugin
    /// started are answered first.
    pub fn run_service(&self, plugin: &Plugin, advance: std::time::Duration) -> Result<()> {
        let host = plugin.host();
        self.answer_calls(&host)?;
        let target = host.now_nanos() + advance.as_nanos() as u64;
        while let Some(at) = host.next_tick_nanos().filter(|t| *t <= target) {
            host.advance(std::time::Duration::from_nanos(
                at.saturating_sub(host.now_nanos()),
            ))?;
            self.answer_calls(&host)?;
        }
        host.advance(std::time::Duration::from_nanos(
            target.saturating_sub(host.now_nanos()),
        ))
    }

    fn answer_calls(&self, host: &Host) -> Result<()> {
        // Answering may make the filter call again: loop until nothing is pending.
        for _ in 0..16 {
            let pending = host.pending_http_calls();
            let Some(call) = pending.first() else {
                return Ok(());
            };
            match self.clusters.get(&call.upstream) {
                Some(a) => {
                    let mut h = vec![(":status".to_string(), a.status.to_string())];
                    h.extend(a.headers.iter().cloned());
                    h.push(("content-length".into(), a.body.len().to_string()));
                    host.respond_http_call(call.token, &as_pairs(&h), a.body.as_bytes(), &[])?;
                }
                // No such cluster in the scenario: Envoy's async client answers 503.
                None => host.respond_http_call(call.token, &[(":status", "503")], b"", &[])?,
            }
        }
        Err(Error::Usage(format!(
            "scenario {:?}: more than 16 HTTP calls",
            self.name
        )))
    }
}

fn as_pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn pair_iter(h: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    h.iter()
        .map(|(k, v)| (k, std::str::from_utf8(v).unwrap_or("")))
}
