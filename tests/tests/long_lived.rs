//! What a user holds across filter updates, in envoyFilter delivery through istiod: an idle
//! HTTP/1.1 keep-alive connection, a streaming HTTP/1.1 response (a chunk every 100 ms), a
//! WebSocket echoing every 100 ms, and one HTTP/2 connection with a long stream, all through the
//! sidecar's inbound listener while 10 updates (new module and new parameters, alternately) are
//! applied and each one is served.
//!
//! The same run first does this with the EnvoyFilter in the form wasmctl rendered before (the
//! Wasm config inline in the listener's HTTP filter) and reports what it loses; then applies the
//! current rendering over it (ECDS: the Wasm config as an extension config the HTTP filter names)
//! under load, with no failed request; then repeats the 10 updates, and nothing may be lost: no
//! connection closed, no stream cut, no drain, no listener changed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::agent::{self, Agent};
use e2e::controlplane::ControlPlane;
use e2e::http1::{self, Message};
use e2e::load::Load;
use e2e::longlived::{App, Held, Holder};
use e2e::mesh::*;
use e2e::registry::Registry;
use e2e::sidecar::{Sidecar, Workload};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const UPDATES: usize = 10;

/// The header filter with a custom section `version: N` appended: the same behaviour, another
/// module (another sha256, another file on the node).
fn module(work: &Path, n: usize) -> PathBuf {
    let mut bytes = std::fs::read(e2e::filter_wasm()).unwrap();
    let name = b"version";
    let payload = n.to_string();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128, "one LEB128 byte");
    bytes.push(0);
    bytes.push(size as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload.as_bytes());
    let path = work.join(format!("filter-{n}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The EnvoyFilter as wasmctl rendered it before ECDS: the extension config's Wasm filter inline
/// in the `HTTP_FILTER` patch.
fn inline_form(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .map(|o| {
            if o["kind"] != "EnvoyFilter" {
                return o.clone();
            }
            let patches = o["spec"]["configPatches"].as_array().unwrap();
            let ext = patches
                .iter()
                .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
                .unwrap();
            let mut http = patches
                .iter()
                .find(|p| p["applyTo"] == "HTTP_FILTER")
                .unwrap()
                .clone();
            http["patch"]["value"] = ext["patch"]["value"].clone();
            let mut o = o.clone();
            o["spec"]["configPatches"] = json!([http]);
            o
        })
        .collect()
}

fn yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| serde_json::to_string(o).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Applies versions of the bookinfo-details FilterDeployment: renders it (tag pinned, module
/// resolved), hands the agent the image list and waits for the module on the node, then applies
/// the objects in the chosen form.
struct Deployer<'a> {
    cp: &'a ControlPlane,
    registry: &'a Registry,
    work: PathBuf,
    node: PathBuf,
    images: PathBuf,
    agent: Option<Agent>,
    value: String,
}

impl Deployer<'_> {
    /// Render the current version; returns the objects and the module's sha256.
    fn render(&mut self) -> (Vec<Value>, String) {
        let fd = example(
            "bookinfo-details",
            self.registry,
            "filters/header-filter:v1",
        )
        .replace("hello details", &self.value);
        let objects = docs(&render_details(&self.work, &fd));
        let ef = objects.iter().find(|o| o["kind"] == "EnvoyFilter").unwrap();
        let file = ef.to_string();
        let sha = file
            .split("/var/local/lib/wasm-filters/")
            .nth(1)
            .and_then(|t| t.split(".wasm").next())
            .unwrap()
            .to_string();
        let list =
            objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap()["data"]["images.yaml"]
                .as_str()
                .unwrap()
                .to_string();
        agent::write_atomic(&self.images, &list);
        if self.agent.is_none() {
            self.agent = Some(Agent::start(&self.images, &self.node, &agent::FAST));
        }
        let path = self.node.join(format!("{sha}.wasm"));
        self.agent
            .as_ref()
            .unwrap()
            .wait_for("the module on the node", PROPAGATION, |_| path.exists());
        (objects, sha)
    }

    /// Push module `n` under the tag.
    fn push(&mut self, n: usize) {
        agent::push(
            &self.registry.reference("filters/header-filter:v1"),
            &module(&self.work, n),
            "my_root_id",
            &[],
        );
    }

    fn apply(&self, objects: &[Value], inline: bool) {
        let objects = if inline {
            inline_form(objects)
        } else {
            objects.to_vec()
        };
        self.cp.apply(&yaml(&objects)).unwrap();
    }
}

fn hello(m: &Message) -> Option<&str> {
    m.header("hello")
}

fn served(m: &Message) -> String {
    match (m.status(), hello(m)) {
        (200, Some(_)) => "served".into(),
        (s, h) => format!("status {s}, hello {h:?}"),
    }
}

/// Wait until the sidecar serves `sha` (its config names the module file) and, on a new
/// connection, `value`.
fn wait_served(sidecar: &Sidecar, sha: &str, value: &str) -> Duration {
    let t = Instant::now();
    let ok = e2e::poll_until(Instant::now() + PROPAGATION, || {
        let dump = http1::get(sidecar.admin, "/config_dump", &[]).ok()?.text();
        let get = http1::get(sidecar.inbound, "/details/0", &[]).ok()?;
        (dump.contains(&format!("{sha}.wasm")) && hello(&get) == Some(value)).then_some(())
    });
    assert!(
        ok.is_some(),
        "the sidecar never served module {sha} with {value:?}\n{}",
        sidecar.log()
    );
    t.elapsed()
}

/// Envoy's counters this test watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    modified: u64,
    in_place: u64,
    drain_close: u64,
}

fn counters(sidecar: &Sidecar) -> Counters {
    let text = http1::get(sidecar.admin, "/stats", &[]).unwrap().text();
    let sum = |suffix: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.ends_with(suffix))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    };
    Counters {
        modified: sum("listener_manager.listener_modified"),
        in_place: sum("listener_manager.listener_in_place_updated"),
        drain_close: sum(".downstream_cx_drain_close"),
    }
}

/// What the held connections went through during one series of updates.
struct Series {
    held: Vec<(String, Held)>,
    idle_kept: Result<(), String>,
    before: Counters,
    after: Counters,
}

impl Series {
    fn lost(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .held
            .iter()
            .filter_map(|(what, h)| {
                h.cut
                    .as_ref()
                    .map(|why| format!("{what} cut after {} messages: {why}", h.received))
            })
            .collect();
        if let Err(e) = &self.idle_kept {
            out.push(format!("idle HTTP/1.1 keep-alive connection: {e}"));
        }
        out
    }

    fn print(&self, form: &str) {
        println!(
            "{form}: counters before {:?}, after {:?}",
            self.before, self.after
        );
        for (what, h) in &self.held {
            println!("{form}: {what}: {} received, cut: {:?}", h.received, h.cut);
        }
        println!("{form}: idle keep-alive connection: {:?}", self.idle_kept);
    }
}

/// Hold the four connections open across `UPDATES` calls of `update` (each returns once its
/// version is served), then see what they went through; the idle connection must then be
/// answered with `hello: final_value()`.
fn hold_during(
    sidecar: &Sidecar,
    mut update: impl FnMut(usize),
    final_value: impl Fn() -> String,
) -> Series {
    let mut idle = http1::Client::connect(sidecar.inbound).unwrap();
    let first = idle.get("/details/0", &[]).unwrap();
    assert!(hello(&first).is_some(), "{:?}", first.headers);
    let holders = [
        Holder::stream(sidecar.inbound),
        Holder::websocket(sidecar.inbound),
        Holder::http2_stream(sidecar.inbound),
    ];
    let flowing = e2e::poll_until(Instant::now() + Duration::from_secs(10), || {
        holders.iter().all(|h| h.received() >= 5).then_some(())
    });
    assert!(
        flowing.is_some(),
        "the held connections do not flow: {:?}",
        holders
            .iter()
            .map(|h| (h.what().to_string(), h.received(), h.cut()))
            .collect::<Vec<_>>()
    );
    let before = counters(sidecar);
    for i in 1..=UPDATES {
        update(i);
    }
    // Past the sidecar's drain time (1 s here): 2 s more of chunks and echoes, or a cut.
    let seen: Vec<u64> = holders.iter().map(Holder::received).collect();
    e2e::poll_until(Instant::now() + Duration::from_secs(10), || {
        holders
            .iter()
            .zip(&seen)
            .all(|(h, n)| h.cut() || h.received() >= n + 20)
            .then_some(())
    });
    let after = counters(sidecar);
    let held = holders
        .into_iter()
        .map(|h| (h.what().to_string(), h.finish()))
        .collect();
    let want = final_value();
    let idle_kept = match idle.get("/details/0", &[]) {
        Ok(m) if hello(&m) == Some(want.as_str()) => Ok(()),
        Ok(m) => Err(format!("answered {} {:?}", m.status(), hello(&m))),
        Err(e) => Err(format!("closed ({e})")),
    };
    Series {
        held,
        idle_kept,
        before,
        after,
    }
}

fn kind_of(i: usize) -> &'static str {
    if i % 2 == 1 {
        "new module"
    } else {
        "new parameters"
    }
}

/// 10 envoyFilter updates (odd: a new module, even: new parameters) in `inline` form or not,
/// each served, while the four connections are held.
fn series(d: &mut Deployer, sidecar: &Sidecar, inline: bool, first_module: usize) -> Series {
    let value = std::cell::RefCell::new(d.value.clone());
    hold_during(
        sidecar,
        |i| {
            if i % 2 == 1 {
                d.push(first_module + i);
            } else {
                d.value = format!("hello details u{}", first_module + i);
            }
            let (objects, sha) = d.render();
            d.apply(&objects, inline);
            let took = wait_served(sidecar, &sha, &d.value);
            value.replace(d.value.clone());
            println!("update {i} ({}): served after {took:?}", kind_of(i));
        },
        || value.borrow().clone(),
    )
}

#[test]
fn updates_through_ecds_keep_every_connection_and_stream() {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let app = App::start();
    apply_manifests(&cp);
    let mut d = Deployer {
        cp: &cp,
        registry: &registry,
        work: work.path().to_path_buf(),
        node: work.path().join("node"),
        images: work.path().join("images.yaml"),
        agent: None,
        value: "hello details".into(),
    };
    d.push(0);
    let (objects, sha) = d.render();
    d.apply(&objects, true);
    let sidecar = Sidecar::start_in_front_of(
        &cp,
        Workload::new("default", "details-v1-0", DETAILS),
        &d.node,
        app.addr,
    );
    wait_served(&sidecar, &sha, "hello details");

    // The inline form: every update is a listener update.
    let old = series(&mut d, &sidecar, true, 0);
    old.print("inline");
    let lost = old.lost();
    println!("the inline form lost: {lost:#?}");
    assert!(
        !lost.is_empty() && old.after.modified >= old.before.modified + UPDATES as u64,
        "the inline form lost nothing: this test cannot see a drop"
    );

    // Taking over: the ECDS form applied over the inline one, under load.
    let load = Load::start(
        sidecar.inbound,
        "/details/0",
        4,
        LOAD_MAX,
        Duration::from_secs(60),
        served,
    );
    let warm = e2e::poll_until(Instant::now() + Duration::from_secs(20), || {
        (load.seen("served") >= 200).then_some(())
    });
    assert!(warm.is_some(), "no load");
    let (objects, sha) = d.render();
    d.apply(&objects, false);
    let ecds = e2e::poll_until(Instant::now() + PROPAGATION, || {
        let dump = http1::get(sidecar.admin, "/config_dump?resource=ecds_filters", &[])
            .ok()?
            .text();
        dump.contains(&format!("{sha}.wasm")).then_some(())
    });
    assert!(
        ecds.is_some(),
        "the filter never came through ECDS\n{}",
        sidecar.log()
    );
    let seen = load.seen("served");
    let more = e2e::poll_until(Instant::now() + Duration::from_secs(20), || {
        (load.seen("served") >= seen + 200).then_some(())
    });
    assert!(more.is_some(), "the load stopped after the takeover");
    let report = load.finish();
    println!(
        "takeover: {} responses {:?}, errors {}",
        report.responses,
        report.classes,
        report.errors.len()
    );
    report.assert_clean(&["served"]);

    // The ECDS form: nothing may be lost.
    let new = series(&mut d, &sidecar, false, 100);
    new.print("ecds");
    assert_eq!(
        new.lost(),
        Vec::<String>::new(),
        "connections lost through ECDS"
    );
    for (what, h) in &new.held {
        assert!(h.received >= 20, "{what} received only {}", h.received);
    }
    assert_eq!(
        new.after, new.before,
        "a listener changed or drained during the ECDS updates"
    );
}

fn ecds_dump(sidecar: &Sidecar) -> String {
    http1::get(sidecar.admin, "/config_dump?resource=ecds_filters", &[])
        .map(|r| r.text())
        .unwrap_or_default()
}

/// The image-based deliveries (`example`: the WasmPlugin or TrafficExtension example): istiod
/// sends the filter through ECDS and pilot-agent fetches each new digest; 10 updates (new module,
/// new parameters) while the four connections are held: none is cut, no listener changes.
fn image_based(example_name: &str) {
    let cp = ControlPlane::start();
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let app = App::start();
    apply_manifests(&cp);
    let sidecar = Sidecar::start_in_front_of(
        &cp,
        Workload::new("default", "details-v1-0", DETAILS),
        &work.path().join("node"),
        app.addr,
    );
    let mut value = "hello details".to_string();
    let push = |n: usize| {
        agent::push(
            &registry.reference("filters/header-filter:v1"),
            &module(work.path(), n),
            "my_root_id",
            &[],
        )
    };
    let apply = |value: &str| -> String {
        let fd = example(example_name, &registry, "filters/header-filter:v1")
            .replace("port: 9080", &format!("port: {}", sidecar.inbound.port()))
            .replace("value: hello details", &format!("value: {value}"));
        let rendered = render(work.path(), &[("fd.yaml", &fd)]);
        cp.apply(&rendered).unwrap();
        rendered
    };
    let wait = |value: &str, dump_before: Option<&str>| {
        let ok = e2e::poll_until(Instant::now() + PROPAGATION, || {
            let dump = ecds_dump(&sidecar);
            let moved = dump_before.is_none_or(|b| dump != b);
            let get = http1::get(sidecar.inbound, "/details/0", &[]).ok()?;
            (moved && hello(&get) == Some(value)).then_some(())
        });
        assert!(
            ok.is_some(),
            "the sidecar never served {value:?}\n{}",
            sidecar.log()
        );
    };
    let mut digest = push(0);
    let rendered = apply(&value);
    assert!(rendered.contains(&format!("@{digest}")), "{rendered}");
    wait(&value, None);
    let value_cell = std::cell::RefCell::new(value.clone());
    let s = hold_during(
        &sidecar,
        |i| {
            let t = Instant::now();
            let before = ecds_dump(&sidecar);
            if i % 2 == 1 {
                let d = push(i);
                assert_ne!(d, digest, "module {i} is the same image");
                digest = d;
            } else {
                value = format!("hello details u{i}");
            }
            let rendered = apply(&value);
            assert!(rendered.contains(&format!("@{digest}")), "{rendered}");
            wait(&value, Some(&before));
            value_cell.replace(value.clone());
            println!(
                "update {i} ({}): served after {:?}",
                kind_of(i),
                t.elapsed()
            );
        },
        || value_cell.borrow().clone(),
    );
    s.print(example_name);
    assert_eq!(s.lost(), Vec::<String>::new(), "connections lost");
    for (what, h) in &s.held {
        assert!(h.received >= 20, "{what} received only {}", h.received);
    }
    assert_eq!(
        s.after, s.before,
        "a listener changed or drained during the updates"
    );
}

#[test]
fn wasm_plugin_updates_keep_every_connection_and_stream() {
    image_based("bookinfo-details-wasmplugin");
}

#[test]
fn traffic_extension_updates_keep_every_connection_and_stream() {
    image_based("bookinfo-details-trafficextension");
}
