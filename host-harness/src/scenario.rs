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

/// What came out of a scenario, comparable between the harness and Envoy: everything a client,
/// the upstream and a called cluster observe, in order, duplicates kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Outcome {
    /// Status the client got.
    pub status: u16,
    /// Every response header the client got, in order (as HTTP/1 writes them, after the status
    /// line), the proxy's own (`date`, `server`, ...) included.
    pub response_headers: Vec<(String, String)>,
    /// Body the client got.
    pub body: String,
    /// What the upstream received, or `None` when it was not reached.
    pub upstream: Option<WireRequest>,
    /// Local response the filter sent: (status, details).
    pub local_response: Option<(u16, String)>,
}

/// A request as it crossed the wire to an upstream or a called cluster (HTTP/1): method and
/// path from the request line, every header in order (`:authority` written as `host`), body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct WireRequest {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl WireRequest {
    /// How Envoy's HTTP/1 codec writes a header map: `:method` and `:path` go to the request
    /// line, `:authority` becomes `host` where it stands, other pseudo-headers are dropped.
    pub fn from_map(map: &HeaderMap, body: &[u8]) -> WireRequest {
        let mut w = WireRequest {
            body: String::from_utf8_lossy(body).into_owned(),
            ..WireRequest::default()
        };
        for (k, v) in pair_iter(map) {
            match k {
                ":method" => w.method = v.to_string(),
                ":path" => w.path = v.to_string(),
                ":authority" => w.headers.push(("host".into(), v.to_string())),
                k if k.starts_with(':') => {}
                k => w.headers.push((k.to_string(), v.to_string())),
            }
        }
        w
    }

    /// What Envoy's HTTP/1 codec adds while writing a request: `content-length: 0`, at the
    /// end, for a request with no body and none given whose method usually carries one (all
    /// but GET, HEAD, DELETE, TRACE and CONNECT).
    pub fn framed(mut self) -> WireRequest {
        let bodiless_method = matches!(
            self.method.as_str(),
            "GET" | "HEAD" | "DELETE" | "TRACE" | "CONNECT"
        );
        if self.body.is_empty()
            && !bodiless_method
            && !self.headers.iter().any(|(k, _)| k == "content-length")
        {
            self.headers.push(("content-length".into(), "0".into()));
        }
        self
    }

    /// How Envoy's async client sends an HTTP call (`proxy_http_call`): the module's map in wire
    /// form, then `x-envoy-internal: true` and `x-envoy-expected-rq-timeout-ms` (the call's
    /// timeout), which it adds.
    pub fn of_call(call: &crate::host::HttpCall) -> WireRequest {
        let mut w = WireRequest::from_map(&call.headers, &call.body);
        w.headers.push(("x-envoy-internal".into(), "true".into()));
        w.headers.push((
            "x-envoy-expected-rq-timeout-ms".into(),
            call.timeout_ms.to_string(),
        ));
        w.framed()
    }
}

pub use crate::headers::{JOINED_REQUEST_HEADERS, JOINED_RESPONSE_HEADERS};

/// Headers as Envoy's codec stores them: a repeat of a name in `joined` is appended to the first
/// value with a comma; any other repeat stays a pair of its own.
pub fn join_repeated(headers: Vec<(String, String)>, joined: &[&str]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        if joined.contains(&k.as_str())
            && let Some(first) = out.iter_mut().find(|(n, _)| *n == k)
        {
            first.1.push(',');
            first.1.push_str(&v);
        } else {
            out.push((k, v));
        }
    }
    out
}

/// `x-envoy-expected-rq-timeout-ms`: Envoy's router adds it to every upstream request, after
/// the filters (the route's default timeout, 15 s).
pub const EXPECTED_TIMEOUT_MS: &str = "15000";

/// The `x-request-id` the scenario runner's connection manager gives every request (Envoy's is a
/// random UUID). Its other per-run values: `x-envoy-upstream-service-time` is `0`, as no host time
/// passes, and `date` is the host clock's.
pub const REQUEST_ID: &str = "00000000-0000-4000-8000-000000000000";

/// Headers a proxy adds or rewrites on its own (Envoy: routing, tracing, timing, framing). A
/// report of what a *filter* changed (`wasmctl run`) leaves them out; outcomes are compared with
/// them.
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

/// Keep the headers a filter is responsible for (for showing what a filter changed).
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

    /// What the client sends, in order, as curl would: `host` (the request's own, else
    /// `example.test`) first, the request's headers, and a `content-length` for a body.
    pub fn client_headers(&self) -> Vec<(String, String)> {
        let mut h = Vec::new();
        if !self
            .request
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"))
        {
            h.push(("host".to_string(), "example.test".to_string()));
        }
        h.extend(
            self.request
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
        );
        if !self.request.body.is_empty() {
            h.push((
                "content-length".to_string(),
                self.request.body.len().to_string(),
            ));
        }
        h
    }

    /// The request headers Envoy's connection manager hands the first filter: the pseudo-headers
    /// first (`:authority` from `host`, `:path`, `:method`, `:scheme`), the client's other
    /// headers in order, then `x-forwarded-proto` and `x-request-id`, which the connection
    /// manager adds.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        let client = self.client_headers();
        let authority = client
            .iter()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut h = vec![
            (":authority".to_string(), authority),
            (":path".to_string(), self.request.path.clone()),
            (":method".to_string(), self.request.method.clone()),
            (":scheme".to_string(), "http".to_string()),
        ];
        h.extend(join_repeated(
            client.into_iter().filter(|(k, _)| k != "host").collect(),
            JOINED_REQUEST_HEADERS,
        ));
        h.push(("x-forwarded-proto".into(), "http".into()));
        h.push(("x-request-id".into(), REQUEST_ID.into()));
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
            && reached != o.upstream.is_some()
        {
            bad.push(format!("upstream reached: expected {reached}"));
        }
        let up = o
            .upstream
            .as_ref()
            .map(|u| u.headers.clone())
            .unwrap_or_default();
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
        self.prepare().run(plugin)
    }

    /// The scenario ready to run many times: the maps the proxy hands the filter are built
    /// once (`wasmctl bench` runs it thousands of times).
    pub fn prepare(&self) -> Prepared<'_> {
        let mut response = vec![(":status".to_string(), self.upstream.status.to_string())];
        response.extend(join_repeated(
            self.upstream
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            JOINED_RESPONSE_HEADERS,
        ));
        // A 204 carries no content-length: Envoy drops the upstream's.
        if self.upstream.status != 204 {
            response.push((
                "content-length".into(),
                self.upstream.body.len().to_string(),
            ));
        }
        // The router's timing header, which the filters see.
        response.push(("x-envoy-upstream-service-time".into(), "0".into()));
        Prepared {
            scenario: self,
            request: self.request_headers(),
            response,
            date: std::cell::RefCell::new((u64::MAX, String::new())),
        }
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
                    h.extend(join_repeated(
                        a.headers
                            .iter()
                            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                            .collect(),
                        JOINED_RESPONSE_HEADERS,
                    ));
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

/// A scenario ready to run many times ([`Scenario::prepare`]).
pub struct Prepared<'a> {
    scenario: &'a Scenario,
    /// What the connection manager hands the first filter.
    request: Vec<(String, String)>,
    /// What the codec and the router hand the filters of the upstream's answer.
    response: Vec<(String, String)>,
    /// The `date` header for the second of host time it was made in.
    date: std::cell::RefCell<(u64, String)>,
}

impl Prepared<'_> {
    /// Run the scenario once: what [`Scenario::run`] does.
    pub fn run(&self, plugin: &Plugin) -> Result<Outcome> {
        self.drive(plugin, true)
    }

    /// Run the scenario once as [`Prepared::run`] does, the filter seeing the same, but build
    /// no [`Outcome`] (only its status when a local reply was sent): what a filter costs, for
    /// benchmarks.
    pub fn run_unobserved(&self, plugin: &Plugin) -> Result<()> {
        self.drive(plugin, false).map(|_| ())
    }

    fn drive(&self, plugin: &Plugin, keep: bool) -> Result<Outcome> {
        let sc = self.scenario;
        let host = plugin.host();
        let mut s = plugin.http_stream()?;
        // What Envoy's configuration tells a filter, as a scenario's Envoy is configured: one
        // unnamed route to the cluster `upstream`, on a listener of no set direction.
        s.set_property(&["xds", "cluster_name"], "upstream");
        s.set_property(&["xds", "route_name"], "");
        s.set_property(&["xds", "listener_direction"], 0i64.to_le_bytes());
        let pairs = as_pairs(&self.request);
        let has_body = !sc.request.body.is_empty();
        let mut action = s.send_request_headers(&pairs, !has_body)?;
        sc.answer_calls(&host)?;
        s.sync()?;
        if has_body && s.local_response().is_none() {
            action = s.send_request_body(sc.request.body.as_bytes(), true)?;
            sc.answer_calls(&host)?;
            s.sync()?;
        }
        let resumed = s.resumed().contains(&0);
        let mut outcome = Outcome::default();
        if let Some(local) = s.local_response() {
            outcome.status = local.status as u16;
            outcome.local_response = Some((local.status as u16, local.details.clone()));
        } else if action == Action::Continue || resumed {
            // The router, after every filter.
            s.proxy_request_headers(&[("x-envoy-expected-rq-timeout-ms", EXPECTED_TIMEOUT_MS)]);
            if keep {
                let wire = WireRequest::from_map(&s.request_headers(), &s.request_body());
                outcome.upstream = Some(wire.framed());
            }
            // What Envoy's codec makes of the upstream's answer.
            let has_resp_body = !sc.upstream.body.is_empty();
            s.send_response_headers(&as_pairs(&self.response), !has_resp_body)?;
            if has_resp_body {
                s.send_response_body(sc.upstream.body.as_bytes(), true)?;
            }
            if keep {
                outcome.status = s
                    .response_headers()
                    .get(":status")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        } else {
            return Err(Error::Usage(format!(
                "scenario {:?}: the filter paused the request and never resumed it",
                sc.name
            )));
        }
        // What the client gets: the final map without `:status`, then what the connection
        // manager adds to every response after the filters.
        {
            // The date changes once a second: formatted once per second of host time.
            let now = host.now_nanos() / 1_000_000_000;
            let mut date = self.date.borrow_mut();
            if date.0 != now {
                *date = (now, http_date(host.now_nanos()));
            }
            s.proxy_response_headers(&[("date", &date.1), ("server", "envoy")]);
        }
        if keep {
            let resp = s.response_headers();
            outcome.response_headers = pair_iter(&resp)
                .filter(|(k, _)| *k != ":status")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            outcome.body = String::from_utf8_lossy(&s.response_body()).into_owned();
        }
        s.complete()?;
        Ok(outcome)
    }
}

/// An HTTP date (RFC 9110 IMF-fixdate) of a host-clock reading.
pub fn http_date(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn as_pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn pair_iter(h: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    h.iter()
        .map(|(k, v)| (k, std::str::from_utf8(v).unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(1_700_000_000_000_000_000),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        assert_eq!(
            http_date(951_782_400_000_000_000),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }

    #[test]
    fn the_wire_form_moves_pseudo_headers_to_the_request_line_and_host() {
        let map = HeaderMap::from_pairs(&[
            (":authority", "a.test"),
            (":path", "/p"),
            (":method", "PUT"),
            (":scheme", "http"),
            ("x-a", "1"),
            ("x-a", "2"),
        ]);
        let w = WireRequest::from_map(&map, b"body");
        assert_eq!((w.method.as_str(), w.path.as_str()), ("PUT", "/p"));
        let names: Vec<&str> = w.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["host", "x-a", "x-a"]);
        assert_eq!(w.body, "body");
    }
}
