//! `make demo`: the whole path on one machine, with real parts. The header filter is pushed to a
//! registry; the node agent pulls it into a module directory and writes an ECDS file; an Envoy
//! sidecar in front of a "details" upstream loads the filter by ECDS; curl shows the header. Then
//! a new version is pushed under the same tag and reaches the same Envoy with no restart.
//! Everything started here listens on 127.0.0.1 and is stopped on the way out.

use e2e::agent::{Agent, wasmctl, write_atomic};
use e2e::envoy::{Envoy, bootstrap, ecds_filter, envoy_bin};
use e2e::http1::Upstream;
use e2e::registry::Registry;
use e2e::transcript::{curl, has, indent, step, wait};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

const CONFIG: &str = r#"{"name":"resp-header-demo","value":"added by our filter"}"#;
const DETAILS: &str =
    r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200}"#;
const FILTER: &str = "header-filter";
const NAME: &str = "default.details-header";

fn push(reference: &str, module: &Path, root_id: &str) -> Result<String, String> {
    println!(
        "$ wasmctl push {reference} {} --root-id {root_id} --plain-http",
        module.display()
    );
    let out = wasmctl(&[
        "push",
        reference,
        &module.to_string_lossy(),
        "--root-id",
        root_id,
        "--plain-http",
        "-q",
    ]);
    indent(&out);
    out.lines()
        .find_map(|l| l.strip_prefix("digest: "))
        .map(str::to_string)
        .ok_or_else(|| "push printed no digest".to_string())
}

fn agent_lines(agent: &Agent, from: usize) -> usize {
    let log = agent.log();
    let lines: Vec<&str> = log.lines().collect();
    for l in lines.iter().skip(from) {
        println!("    {l}");
    }
    lines.len()
}

fn run() -> Result<(), String> {
    step("building header_filter.wasm (v1) and the AssemblyScript example (v2)");
    let v1 = e2e::filter_wasm();
    let v2 = e2e::assemblyscript_wasm();
    println!("    v1 {}", v1.display());
    println!("    v2 {}", v2.display());
    let wasmctl_bin = e2e::wasmctl_bin();
    println!("    wasmctl {}", wasmctl_bin.display());

    let registry = Registry::start();
    step(&format!(
        "registry (Debian docker-registry) on {}, storage {}",
        registry.addr,
        registry.storage().display()
    ));
    let reference = registry.reference("filters/header-filter:v1");
    step("push v1: the header filter, in the two-layer layout Istio loads");
    let d1 = push(&reference, &v1, "my_root_id")?;

    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (dir, ecds) = (
        work.path().join("wasm-filters"),
        work.path().join("ecds").join(format!("{FILTER}.yaml")),
    );
    let list = work.path().join("images.yaml");
    let list_text = format!(
        "images:\n  - name: {NAME}\n    image: {reference}\n    ecds:\n      file: {}\n      filterName: {FILTER}\n      configuration: '{CONFIG}'\n",
        ecds.display()
    );
    write_atomic(&list, &list_text);
    step(&format!("image list {}", list.display()));
    indent(&list_text);

    let agent = Agent::start(
        &list,
        &dir,
        &["--resync", "2s", "--plain-http", "--grace", "1m"],
    );
    step(&format!(
        "wasmctl agent (pid {}) --images {} --dir {} --resync 2s; status on http://{}",
        agent.pid(),
        list.display(),
        dir.display(),
        agent.addr
    ));
    wait("agent ready", Duration::from_secs(30), || agent.ready())?;
    let mut seen = agent_lines(&agent, 0);
    let ls = Command::new("ls")
        .args(["-l", "--time-style=+"])
        .arg(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    println!("$ ls -l {}", dir.display());
    indent(&String::from_utf8_lossy(&ls.stdout));

    let details = Upstream::serving(&[("content-type", "application/json")], Some(DETAILS));
    step(&format!("upstream \"details\" on {}", details.addr()));
    let envoy = Envoy::start(&bootstrap(details.addr(), vec![ecds_filter(FILTER, &ecds)]))
        .map_err(|f| format!("envoy did not start: {}\n{}", f.reason, f.log))?;
    let pid = envoy.pid();
    step(&format!(
        "envoy ({}) pid {pid} on {}, admin {}; HTTP filter {FILTER} by ECDS from {}",
        envoy_bin().display(),
        envoy.listener,
        envoy.admin,
        ecds.display()
    ));
    let url = format!("http://{}/details/0", envoy.listener);
    let first = curl(&url)?;
    if !has(&first, "resp-header-demo: added by our filter") {
        return Err("v1: the response lacks resp-header-demo: added by our filter".into());
    }

    step(
        "push v2 under the same tag: other code (AssemblyScript, adds x-as-filter: <configuration>)",
    );
    let d2 = push(&reference, &v2, "as_filter")?;
    println!("    tag v1 moved from {d1} to {d2}");
    let took = wait("v2 in Envoy", Duration::from_secs(30), || {
        e2e::http1::get(envoy.listener, "/details/0", &[])
            .is_ok_and(|r| r.header("x-as-filter").is_some())
    })?;
    step(&format!(
        "agent log: the new digest pulled, the ECDS file rewritten ({took:.1?} after the push)"
    ));
    seen = agent_lines(&agent, seen);
    let _ = seen;
    let second = curl(&url)?;
    let reloads = envoy.stat(&format!(
        "extension_config_discovery.http_filter.{FILTER}.config_reload"
    ));
    println!(
        "    same envoy process: pid {} (was {pid}); stat extension_config_discovery.http_filter.{FILTER}.config_reload = {reloads:?}",
        envoy.pid()
    );
    let metrics = agent.metrics();
    step(&format!(
        "agent metrics (http://{}/metrics), excerpt",
        agent.addr
    ));
    for l in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.contains("pulls") || l.contains("resolves") || l.starts_with("wasm_agent_ready"))
    }) {
        println!("    {l}");
    }

    let mut agent = agent;
    let apid = agent.pid();
    let status = agent.terminate();
    drop(envoy);
    drop(details);
    drop(registry);
    step(&format!(
        "stopped the agent (pid {apid}, SIGTERM: {status}), envoy (pid {pid}), the upstream and the registry"
    ));
    if !has(&second, &format!("x-as-filter: {CONFIG}")) {
        return Err("v2: the response lacks x-as-filter".into());
    }
    println!(
        "\nOK: v1 added resp-header-demo: added by our filter; v2, pushed under the same tag, reached the same Envoy"
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nFAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
