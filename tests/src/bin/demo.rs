//! `make demo`: the header filter in a real Envoy in front of a "details" upstream, shown with
//! curl. Everything started here listens on 127.0.0.1 and is stopped on the way out.

use e2e::envoy::{Envoy, bootstrap, envoy_bin, wasm_filter};
use e2e::http1::Upstream;
use std::process::{Command, ExitCode};

const CONFIG: &str = r#"{"name":"resp-header-demo","value":"added by our filter"}"#;
const DETAILS: &str =
    r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200}"#;

fn step(s: &str) {
    println!("\n==> {s}");
}

fn main() -> ExitCode {
    step(
        "building header_filter.wasm (cargo build --release --target wasm32-wasip1 -p header-filter)",
    );
    let wasm = e2e::filter_wasm();
    let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    println!("    {} ({size} bytes)", wasm.display());

    let details = Upstream::serving(&[("content-type", "application/json")], Some(DETAILS));
    step(&format!("upstream \"details\" on {}", details.addr()));

    let filter = wasm_filter("header_filter", "my_root_id", &wasm, CONFIG);
    let envoy = match Envoy::start(&bootstrap(details.addr(), vec![filter])) {
        Ok(e) => e,
        Err(f) => {
            eprintln!("envoy did not start: {}\n{}", f.reason, f.log);
            return ExitCode::FAILURE;
        }
    };
    step(&format!(
        "envoy ({}) pid {} listening on {}, admin on {}; filter root_id my_root_id, configuration {CONFIG}",
        envoy_bin().display(),
        envoy.pid(),
        envoy.listener,
        envoy.admin
    ));

    let url = format!("http://{}/details/0", envoy.listener);
    step(&format!("curl -si {url}"));
    let out = match Command::new("curl")
        .args(["-si", "--max-time", "10", &url])
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cannot run curl: {e} (run scripts/setup)");
            return ExitCode::FAILURE;
        }
    };
    let transcript = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    println!("{}", transcript.trim_end());
    let found = transcript
        .lines()
        .any(|l| l.eq_ignore_ascii_case("resp-header-demo: added by our filter"));

    step("filter log lines (Envoy's wasm log)");
    // Each worker VM logs its configuration: show every distinct message once.
    let log = envoy.log();
    let mut shown: Vec<&str> = Vec::new();
    for line in log.lines().filter(|l| l.contains("header-filter:")) {
        let msg = line.split("header-filter:").nth(1).unwrap_or(line).trim();
        if !shown.contains(&msg) {
            shown.push(msg);
            println!("    header-filter: {msg}");
        }
    }
    let applied = envoy.stat("wasmcustom.header_filter.header_filter.rule_0.applied");
    println!("    stat wasmcustom.header_filter.header_filter.rule_0.applied = {applied:?}");

    let pid = envoy.pid();
    drop(envoy);
    drop(details);
    step(&format!("stopped envoy (pid {pid}) and the upstream"));
    if found && out.status.success() {
        println!("\nOK: the response carries resp-header-demo: added by our filter");
        ExitCode::SUCCESS
    } else {
        eprintln!("\nFAILED: the response lacks resp-header-demo: added by our filter");
        ExitCode::FAILURE
    }
}
