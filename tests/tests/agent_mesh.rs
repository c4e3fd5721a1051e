//! The local mesh: a real registry, `wasmctl push`, the node agent and an Envoy whose Wasm filter
//! comes by ECDS from the file the agent writes. A tag re-pushed with new code reaches the same
//! Envoy process with no failed request; a bad new version never replaces the good one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::agent::{Agent, link_target, push, write_atomic};
use e2e::envoy::{Envoy, bootstrap, ecds_filter};
use e2e::http1::{self, Message, Upstream};
use e2e::load::Load;
use e2e::registry::Registry;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The most requests one load across an update sends.
const MAX_REQUESTS: u64 = 200_000;

const CONFIG: &str = r#"{"name":"resp-header-demo","value":"added by our filter"}"#;
const FILTER: &str = "header-filter";
const NAME: &str = "demo.header-filter";
const RESYNC: Duration = Duration::from_secs(1);

/// The image list with one entry and its ECDS block (root id from the image).
fn list(image: &str, ecds: &Path, configuration: &str) -> String {
    format!(
        "images:\n  - name: {NAME}\n    image: {image}\n    ecds:\n      file: {}\n      filterName: {FILTER}\n      configuration: '{}'\n",
        ecds.display(),
        configuration.replace('\'', "''")
    )
}

fn classify(m: &Message) -> String {
    if m.status() != 200 {
        return format!("status {}", m.status());
    }
    match (m.header("resp-header-demo"), m.header("x-as-filter")) {
        (Some("added by our filter"), None) => "old".into(),
        (None, Some(c)) if c == CONFIG => "new".into(),
        (None, None) => "none".into(),
        (a, b) => format!("unexpected resp-header-demo={a:?} x-as-filter={b:?}"),
    }
}

struct Mesh {
    registry: Registry,
    reference: String,
    work: tempfile::TempDir,
    agent: Agent,
    _upstream: Upstream,
    envoy: Envoy,
}

impl Mesh {
    fn dir(&self) -> PathBuf {
        self.work.path().join("modules")
    }
    fn ecds(&self) -> PathBuf {
        self.work.path().join("ecds").join(format!("{FILTER}.yaml"))
    }
    fn list_file(&self) -> PathBuf {
        self.work.path().join("images.yaml")
    }
    fn get(&self) -> Message {
        http1::get(self.envoy.listener, "/details/0", &[]).expect("GET through envoy")
    }
    fn stat(&self, which: &str) -> u64 {
        self.envoy
            .stat(&format!(
                "extension_config_discovery.http_filter.{FILTER}.{which}"
            ))
            .unwrap_or(0)
    }
}

/// Registry with v1 of the header filter, the agent on a list naming it (ECDS block), and an
/// Envoy loading the filter by ECDS from the agent's file.
fn mesh() -> Mesh {
    let registry = Registry::start();
    let reference = registry.reference("filters/header-filter:v1");
    push(&reference, &e2e::filter_wasm(), "my_root_id", &[]);
    let work = tempfile::tempdir().unwrap();
    let (dir, ecds) = (
        work.path().join("modules"),
        work.path().join("ecds").join(format!("{FILTER}.yaml")),
    );
    let list_file = work.path().join("images.yaml");
    write_atomic(&list_file, &list(&reference, &ecds, CONFIG));
    let agent = Agent::start(&list_file, &dir, &e2e::agent::FAST);
    agent.wait_for("v1 in place", Duration::from_secs(30), Agent::ready);
    assert!(ecds.exists(), "no ECDS file\n{}", agent.log());
    let upstream = Upstream::serving(&[("content-type", "application/json")], Some("{}"));
    // wasm logs at info: a per-request debug line for thousands of requests drowns the log.
    let envoy = Envoy::start_with(
        &bootstrap(upstream.addr(), vec![ecds_filter(FILTER, &ecds)]),
        &["--component-log-level", "wasm:info"],
    )
    .unwrap_or_else(|f| panic!("{}\n---- envoy log ----\n{}", f.reason, f.log));
    Mesh {
        registry,
        reference,
        work,
        agent,
        _upstream: upstream,
        envoy,
    }
}

#[test]
fn a_repushed_tag_reaches_the_same_envoy_with_no_failed_request() {
    let v2_wasm = e2e::assemblyscript_wasm(); // built before the clock starts
    let m = mesh();
    let v1_sha = m.agent.image(NAME)["sha256"].as_str().unwrap().to_string();
    assert_eq!(
        link_target(&m.dir(), NAME).as_deref(),
        Some(format!("{v1_sha}.wasm").as_str())
    );
    let ecds_v1 = fs::read_to_string(m.ecds()).unwrap();
    assert!(ecds_v1.contains(&format!("{v1_sha}.wasm")), "{ecds_v1}");
    assert!(ecds_v1.contains("\"root_id\": \"my_root_id\""), "{ecds_v1}");
    let first = m.get();
    assert_eq!(classify(&first), "old", "{first:?}");
    let pid = m.envoy.pid();
    let reloads_before = m.stat("config_reload");

    // Bounded load across the update: 4 keep-alive connections, at most 200000 requests or 60 s
    // (an idle machine sends 30000 within the agent's 1 s resync).
    let load = Load::start(
        m.envoy.listener,
        "/details/0",
        4,
        MAX_REQUESTS,
        Duration::from_secs(60),
        classify,
    );
    let warm = e2e::poll_until(Instant::now() + Duration::from_secs(20), || {
        (load.seen("old") >= 200).then_some(())
    });
    assert!(warm.is_some(), "load saw no old responses");

    // v2: other code (the AssemblyScript example, root id as_filter) under the same tag.
    push(&m.reference, &v2_wasm, "as_filter", &[]);
    let pushed = Instant::now();
    let mut agent_latency = None;
    // Until the new code has served 500 responses (or the load ends), noting when the agent
    // rewrote the ECDS file; the assertions below say what was not reached.
    e2e::poll_until(pushed + Duration::from_secs(30), || {
        if agent_latency.is_none()
            && fs::read_to_string(m.ecds()).is_ok_and(|t| !t.contains(&v1_sha))
        {
            agent_latency = Some(pushed.elapsed());
        }
        (load.seen("new") >= 500 || load.sent() >= MAX_REQUESTS).then_some(())
    });
    let to_envoy = pushed.elapsed();
    let report = load.finish();
    println!(
        "load: {} responses {:?} (first seen {:?}), errors {}; agent rewrote ECDS {:?} after the push; load saw 500 new responses {:?} after it",
        report.responses,
        report.classes,
        report.first_seen,
        report.errors.len(),
        agent_latency,
        to_envoy
    );
    report.assert_clean(&["old", "new"]);
    assert!(report.classes["new"] >= 500, "{:?}", report.classes);
    let agent_latency = agent_latency.expect("the ECDS file was rewritten");
    assert!(
        agent_latency <= RESYNC + Duration::from_secs(1),
        "the agent took {agent_latency:?} (resync {RESYNC:?})\n{}",
        m.agent.log()
    );

    // Same Envoy process, one more ECDS reload, and the new module is a distinct file.
    assert_eq!(m.envoy.pid(), pid);
    assert!(m.stat("config_reload") > reloads_before);
    assert_eq!(m.stat("update_rejected"), 0);
    let v2 = m.agent.image(NAME);
    let v2_sha = v2["sha256"].as_str().unwrap();
    assert_ne!(v2_sha, v1_sha);
    assert_eq!(v2_sha, e2e::agent::sha256_file(&v2_wasm));
    assert_eq!(
        link_target(&m.dir(), NAME).as_deref(),
        Some(format!("{v2_sha}.wasm").as_str())
    );
    let ecds_v2 = fs::read_to_string(m.ecds()).unwrap();
    assert!(ecds_v2.contains("\"root_id\": \"as_filter\""), "{ecds_v2}");
    assert_eq!(m.agent.events("updated").len(), 2, "{}", m.agent.log());
    // The old version stays until the grace period (default 5 min) is over.
    assert!(m.dir().join(format!("{v1_sha}.wasm")).exists());
    drop(m.registry);
}

#[test]
fn bad_new_versions_do_not_replace_the_serving_filter() {
    let m = mesh();
    let v1 = m.agent.image(NAME);
    let v1_sha = v1["sha256"].as_str().unwrap().to_string();
    let ecds_v1 = fs::read(m.ecds()).unwrap();
    assert_eq!(classify(&m.get()), "old");

    // (a) Not wasm under the tag: the agent refuses it, names image and layer, keeps v1.
    let junk = m.work.path().join("filter.wasm");
    fs::write(&junk, "this is a text file, not a module\n").unwrap();
    push(&m.reference, &junk, "my_root_id", &["--force"]);
    let refused = |e: &str| {
        e.contains(&m.reference) && e.contains("layer 1") && e.contains("not a WebAssembly module")
    };
    m.agent.wait_for(
        "refusal of the non-wasm layer",
        Duration::from_secs(20),
        |a| {
            let i = a.image(NAME);
            i["state"] == "failing" && i["lastError"].as_str().is_some_and(refused)
        },
    );
    assert!(
        m.agent.events("failed").iter().any(|l| refused(l)),
        "{}",
        m.agent.log()
    );
    assert_eq!(
        link_target(&m.dir(), NAME).as_deref(),
        Some(format!("{v1_sha}.wasm").as_str())
    );
    assert_eq!(fs::read(m.ecds()).unwrap(), ecds_v1, "ECDS file changed");
    assert_eq!(m.agent.image(NAME)["sha256"], v1_sha.as_str());
    assert!(m.agent.metric("wasm_agent_failures_total", NAME).unwrap() >= 1.0);
    assert_eq!(classify(&m.get()), "old");

    // The good image pushed again (same manifest digest): recovered without a download.
    let pulls = m.agent.metric("wasm_agent_pulls_total", NAME).unwrap();
    push(&m.reference, &e2e::filter_wasm(), "my_root_id", &[]);
    m.agent.wait_for("recovery", Duration::from_secs(20), |a| {
        a.image(NAME)["state"] == "ok"
    });
    assert_eq!(m.agent.events("recovered").len(), 1, "{}", m.agent.log());

    // (b) A configuration the filter's on_configure refuses: the agent writes it, Envoy rejects
    // the ECDS update, and the old filter keeps serving.
    let bad = r#"{"rules":[{"direction":"response","op":"sett","name":"x","value":"y"}]}"#;
    write_atomic(&m.list_file(), &list(&m.reference, &m.ecds(), bad));
    let rejected = e2e::poll_until(Instant::now() + Duration::from_secs(30), || {
        (m.stat("update_rejected") > 0).then_some(())
    });
    assert!(
        rejected.is_some(),
        "envoy did not reject the update\n---- agent ----\n{}\n---- envoy ----\n{}",
        m.agent.log(),
        m.envoy.log()
    );
    assert!(fs::read_to_string(m.ecds()).unwrap().contains("sett"));
    assert!(m.envoy.log().contains("rejected"), "{}", m.envoy.log());
    for _ in 0..20 {
        assert_eq!(classify(&m.get()), "old");
    }
    assert_eq!(
        m.agent.metric("wasm_agent_pulls_total", NAME).unwrap(),
        pulls,
        "no module download for a configuration change or an unchanged digest"
    );

    // A good configuration alone (same module): rewritten, accepted, served.
    let reloads = m.stat("config_reload");
    let good = r#"{"name":"resp-header-demo","value":"configured again"}"#;
    write_atomic(&m.list_file(), &list(&m.reference, &m.ecds(), good));
    let served = e2e::poll_until(Instant::now() + Duration::from_secs(30), || {
        (m.get().header("resp-header-demo") == Some("configured again")).then_some(())
    });
    assert!(
        served.is_some(),
        "new configuration not served\n{}",
        m.agent.log()
    );
    assert!(m.stat("config_reload") > reloads);
    assert_eq!(
        m.agent.metric("wasm_agent_pulls_total", NAME).unwrap(),
        pulls
    );
}
