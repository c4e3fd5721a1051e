//! `wasmctl run`: one request through a filter in the proxy-wasm harness, and a report of what
//! the filter did (headers added, changed, removed; local response; logs; metrics; HTTP calls).
//!
//! ```no_run
//! use proxy_wasm_harness::scenario::Scenario;
//! use wasmctl::run::{run, Report};
//!
//! let mut s = Scenario::from_yaml("name: seed\nrequest: {path: /}").unwrap();
//! s.root_id = "my_root_id".into();
//! s.configuration = r#"{"name":"resp-header-demo","value":"added by our filter"}"#.into();
//! let report: Report = run("header_filter.wasm".as_ref(), &s).unwrap();
//! print!("{report}");
//! ```

use crate::error::{Error, Result};
use proxy_wasm_harness::abi::LogLevel;
use proxy_wasm_harness::scenario::{Outcome, Scenario};
use proxy_wasm_harness::{Host, Module, Runtime};
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// One header change the filter made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum Change {
    /// A header (or value) that was not there.
    Added {
        /// Name.
        name: String,
        /// Value.
        value: String,
    },
    /// A header whose values differ.
    Changed {
        /// Name.
        name: String,
        /// Values before.
        before: Vec<String>,
        /// Values after.
        after: Vec<String>,
    },
    /// A header that is gone.
    Removed {
        /// Name.
        name: String,
    },
}

/// What `wasmctl run` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Outcome (status, headers, body, what the upstream got).
    pub outcome: Outcome,
    /// Changes to the request headers (what the upstream got against what the client sent).
    pub request_changes: Vec<Change>,
    /// Changes to the response headers (what the client got against what the upstream sent).
    pub response_changes: Vec<Change>,
    /// Log lines: (level, message).
    pub logs: Vec<(String, String)>,
    /// Metrics: (name, kind, value).
    pub metrics: Vec<(String, String, i64)>,
    /// HTTP calls the filter made: (cluster, method, path).
    pub http_calls: Vec<(String, String, String)>,
    /// Expectations of the scenario that did not hold.
    pub failed_expectations: Vec<String>,
}

fn values(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

/// The changes from `before` to `after`, by header name, in order of first appearance.
pub fn diff(before: &[(String, String)], after: &[(String, String)]) -> Vec<Change> {
    let mut names: Vec<&str> = Vec::new();
    for (k, _) in before.iter().chain(after) {
        if !names.contains(&k.as_str()) {
            names.push(k);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let (b, a) = (values(before, name), values(after, name));
        if b == a {
            continue;
        }
        if a.is_empty() {
            out.push(Change::Removed { name: name.into() });
        } else if a.starts_with(&b) {
            for v in &a[b.len()..] {
                out.push(Change::Added {
                    name: name.into(),
                    value: v.clone(),
                });
            }
        } else {
            out.push(Change::Changed {
                name: name.into(),
                before: b,
                after: a,
            });
        }
    }
    out
}

/// A fresh host that knows `scenario`'s clusters (and `upstream`), with the `wasm` log level
/// `level`, and the scenario's plugin started in it.
pub(crate) fn start(
    module: &Module,
    scenario: &Scenario,
    level: LogLevel,
) -> (Host, proxy_wasm_harness::Result<proxy_wasm_harness::Plugin>) {
    let host = Host::new();
    host.set_log_level(level);
    let mut known: Vec<&str> = vec!["upstream"];
    known.extend(scenario.clusters.keys().map(String::as_str));
    host.set_clusters(&known);
    let plugin = host
        .plugin(module)
        .root_id(&scenario.root_id)
        .configuration(&scenario.configuration)
        .start();
    (host, plugin)
}

/// Load `module` and run `scenario` through it in a fresh harness host.
pub fn run(module: &Path, scenario: &Scenario) -> Result<Report> {
    let m = Module::from_file(&Runtime::shared(), module).map_err(|e| Error::Harness {
        file: module.to_path_buf(),
        message: e.to_string(),
    })?;
    let (host, plugin) = start(&m, scenario, LogLevel::Trace);
    let logs = |host: &Host| {
        host.logs()
            .into_iter()
            .map(|l| (l.level.to_string(), l.message))
            .collect::<Vec<_>>()
    };
    let plugin = match plugin {
        Ok(p) => p,
        Err(e) => {
            let lines: Vec<String> = logs(&host)
                .into_iter()
                .map(|(l, m)| format!("  [{l}] {m}"))
                .collect();
            return Err(Error::Harness {
                file: module.to_path_buf(),
                message: format!("{e}\nmodule log:\n{}", lines.join("\n")),
            });
        }
    };
    let outcome = scenario.run(&plugin).map_err(|e| Error::Harness {
        file: module.to_path_buf(),
        message: e.to_string(),
    })?;
    // Stop the plugin as Envoy does when its filter is removed (`proxy_on_done`, then
    // `proxy_on_delete` of the root context), so that what a filter keeps in the VM and reports
    // on stop (counters it sums before adding them to the host's, say) is in the report.
    plugin.shutdown().map_err(|e| Error::Harness {
        file: module.to_path_buf(),
        message: format!("stopping the plugin after the request: {e}"),
    })?;
    let client_sent = proxy_wasm_harness::scenario::filtered(
        scenario
            .request_headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let upstream_sent: Vec<(String, String)> = scenario
        .upstream
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let request_changes = outcome
        .upstream_headers
        .as_ref()
        .map(|up| diff(&client_sent, up))
        .unwrap_or_default();
    let response_base = if outcome.local_response.is_some() {
        Vec::new()
    } else {
        upstream_sent
    };
    let response_changes = diff(&response_base, &outcome.response_headers);
    let failed_expectations = scenario.check(&outcome).err().unwrap_or_default();
    Ok(Report {
        scenario: scenario.name.clone(),
        request_changes,
        response_changes,
        logs: logs(&host),
        metrics: host
            .metrics()
            .into_iter()
            .map(|m| (m.name, format!("{:?}", m.kind).to_lowercase(), m.value))
            .collect(),
        http_calls: host
            .http_calls_made()
            .into_iter()
            .map(|c| {
                (
                    c.upstream,
                    c.headers.get(":method").unwrap_or_default(),
                    c.headers.get(":path").unwrap_or_default(),
                )
            })
            .collect(),
        outcome,
        failed_expectations,
    })
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { name, value } => write!(f, "+ {name}: {value}"),
            Change::Changed {
                name,
                before,
                after,
            } => write!(f, "~ {name}: {} -> {}", before.join(", "), after.join(", ")),
            Change::Removed { name } => write!(f, "- {name}"),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.outcome;
        writeln!(f, "scenario: {}", self.scenario)?;
        match &o.local_response {
            Some((status, details)) if details.is_empty() => {
                writeln!(f, "local response: {status}, the upstream was not called")?
            }
            Some((status, details)) => writeln!(
                f,
                "local response: {status} ({details}), the upstream was not called"
            )?,
            None => writeln!(f, "status: {}", o.status)?,
        }
        writeln!(f, "request headers (client -> upstream):")?;
        if o.upstream_headers.is_none() {
            writeln!(f, "  (not sent upstream)")?;
        } else if self.request_changes.is_empty() {
            writeln!(f, "  (unchanged)")?;
        }
        for c in &self.request_changes {
            writeln!(f, "  {c}")?;
        }
        writeln!(f, "response headers (-> client):")?;
        if self.response_changes.is_empty() {
            writeln!(f, "  (unchanged)")?;
        }
        for c in &self.response_changes {
            writeln!(f, "  {c}")?;
        }
        if !o.body.is_empty() {
            writeln!(f, "body: {:?}", o.body)?;
        }
        writeln!(f, "http calls: {}", self.http_calls.len())?;
        for (cluster, method, path) in &self.http_calls {
            writeln!(f, "  {cluster}: {method} {path}")?;
        }
        writeln!(f, "logs:")?;
        for (level, msg) in &self.logs {
            writeln!(f, "  [{level}] {msg}")?;
        }
        writeln!(f, "metrics:")?;
        for (name, kind, value) in &self.metrics {
            writeln!(f, "  {name} ({kind}) = {value}")?;
        }
        if !self.failed_expectations.is_empty() {
            writeln!(f, "expectations NOT met:")?;
            for e in &self.failed_expectations {
                writeln!(f, "  {e}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn diff_names_added_changed_and_removed_headers() {
        let before = p(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let after = p(&[("a", "1"), ("a", "x"), ("b", "9"), ("d", "4")]);
        let d = diff(&before, &after);
        let shown: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["+ a: x", "~ b: 2 -> 9", "- c", "+ d: 4"]);
    }
}
