//! Fidelity: every scenario under `tests/scenarios/` runs in the harness and in a real Envoy 1.40
//! with the same module, in front of upstreams that answer as the scenario says. Both must meet
//! the scenario's expectations and agree with each other on status, body, response headers and
//! the headers the upstream received (the proxy's own headers, `scenario::PROXY_HEADERS`, aside).

// Helpers outside #[test] functions fail the test loudly.
#![allow(clippy::unwrap_used, clippy::panic)]

use e2e::envoy::{Envoy, bootstrap_with_clusters, wasm_filter};
use e2e::http1::{Client, Upstream};
use proxy_wasm_harness::Host;
use proxy_wasm_harness::scenario::{Outcome, Scenario, filtered};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The module a scenario names.
fn module_file(name: &str) -> PathBuf {
    match name {
        "" | "header_filter" => e2e::filter_wasm(),
        "callout_filter" => e2e::callout_wasm(),
        "go_filter" => e2e::go_wasm(),
        other => panic!("unknown module {other:?} in a scenario"),
    }
}

fn scenarios() -> Vec<(String, Scenario)> {
    let dir = e2e::workspace_root().join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let s = Scenario::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), s)
        })
        .collect()
}

fn in_harness(s: &Scenario) -> Result<Outcome, String> {
    let module = e2e::harness_module(&module_file(&s.module));
    let host = Host::new();
    // As in the Envoy run: the upstream cluster and the scenario's clusters exist, no others.
    let mut known: Vec<&str> = vec!["upstream"];
    known.extend(s.clusters.keys().map(String::as_str));
    host.set_clusters(&known);
    let plugin = host
        .plugin(&module)
        .name("scenario")
        .vm_id("scenario")
        .root_id(&s.root_id)
        .configuration(&s.configuration)
        .start()
        .map_err(|e| format!("plugin did not start: {e}; logs: {:?}", host.logs()))?;
    s.run(&plugin).map_err(|e| e.to_string())
}

fn in_envoy(s: &Scenario) -> Result<Outcome, String> {
    let answer = |a: &proxy_wasm_harness::scenario::Answer| {
        let h: Vec<(&str, &str)> = a
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Upstream::answering(a.status, &h, Some(&a.body))
    };
    let upstream = answer(&s.upstream);
    let clusters: Vec<(String, Upstream)> = s
        .clusters
        .iter()
        .map(|(n, a)| (n.clone(), answer(a)))
        .collect();
    let extra: Vec<(&str, SocketAddr)> = clusters
        .iter()
        .map(|(n, u)| (n.as_str(), u.addr()))
        .collect();
    let filter = wasm_filter(
        "scenario",
        &s.root_id,
        &module_file(&s.module),
        &s.configuration,
    );
    let envoy = Envoy::start(&bootstrap_with_clusters(
        upstream.addr(),
        vec![filter],
        &extra,
    ))
    .map_err(|f| format!("{}\n{}", f.reason, f.log))?;
    let headers: Vec<(&str, &str)> = s
        .request
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut c = Client::connect(envoy.listener).map_err(|e| e.to_string())?;
    let resp = c
        .send(
            &s.request.method,
            &s.request.path,
            &headers,
            s.request.body.as_bytes(),
        )
        .map_err(|e| format!("request failed: {e}\n{}", envoy.log()))?;
    let received = upstream.received();
    Ok(Outcome {
        status: resp.status(),
        response_headers: filtered(resp.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        body: resp.text(),
        upstream_headers: received
            .last()
            .map(|m| filtered(m.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))),
        local_response: None,
    })
}

/// Headers grouped by name (values in order): what a client can observe of a header map.
fn by_name(h: &[(String, String)]) -> Vec<(String, String)> {
    let mut v = h.to_vec();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn every_scenario_agrees_between_the_harness_and_envoy() {
    let all = scenarios();
    assert!(all.len() >= 20, "only {} scenarios", all.len());
    let mut failures = Vec::new();
    for (file, s) in &all {
        let harness = in_harness(s);
        let envoy = in_envoy(s);
        let mut problems = Vec::new();
        match (&harness, &envoy) {
            (Ok(h), Ok(e)) => {
                if let Err(bad) = s.check(h) {
                    problems.push(format!("harness: {bad:?}"));
                }
                if let Err(bad) = s.check(e) {
                    problems.push(format!("envoy: {bad:?}"));
                }
                if h.status != e.status {
                    problems.push(format!("status: harness {} envoy {}", h.status, e.status));
                }
                if h.body != e.body {
                    problems.push(format!("body: harness {:?} envoy {:?}", h.body, e.body));
                }
                if by_name(&h.response_headers) != by_name(&e.response_headers) {
                    problems.push(format!(
                        "response headers:\n  harness {:?}\n  envoy   {:?}",
                        by_name(&h.response_headers),
                        by_name(&e.response_headers)
                    ));
                }
                let up = |o: &Outcome| o.upstream_headers.as_deref().map(by_name);
                if up(h) != up(e) {
                    problems.push(format!(
                        "upstream headers:\n  harness {:?}\n  envoy   {:?}",
                        up(h),
                        up(e)
                    ));
                }
            }
            (h, e) => problems.push(format!("harness: {h:?}\nenvoy: {e:?}")),
        }
        if problems.is_empty() {
            println!("ok   {file} ({})", s.name);
        } else {
            println!("FAIL {file} ({})", s.name);
            failures.push(format!("{file}: {}", problems.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
}
