//! `make bench-envoy`: what a header filter costs in a real Envoy, against native configuration,
//! Lua and a minimal Rust SDK filter.
//!
//! Starts, on 127.0.0.1, a cheap upstream (an Envoy answering every request itself) and one Envoy
//! per configuration (one worker), pins the Envoy under test to CPU 0 and the load generator and
//! upstream to CPU 1 (when the machine has two CPUs), and drives each configuration with `wrk` on
//! keep-alive connections, for a bounded time, in interleaved rounds whose starting configuration
//! rotates. Each sample reads the Envoy's CPU time (`/proc/PID/task/*/schedstat`) before and
//! after, so the cost per request does not depend on how busy the machine is; the report is made of
//! medians and of ratios paired within a round.
//!
//! Writes `results.json`, `results.md` (the tables) and two SVG plots (`added-us.svg`,
//! `wasm-filters.svg`) into `--out`: by default `docs/bench` for a full run, and
//! `target/bench-quick` for `--quick` (a regression check, not a result to commit).
//!
//! ```sh
//! cargo run --release -p e2e --bin bench-envoy -- [--quick] [--rounds N] [--duration SECS]
//!     [--warmup SECS] [--connections N] [--configs a,b,..] [--out DIR]
//! ```

use e2e::envoy::{Envoy, bootstrap, wasm_filter};
use e2e::http1;
use plotters::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// The header every configuration adds (the seed configuration's).
const NAME: &str = "hello";
const VALUE: &str = "hello details";
const SEED: &str = r#"{"name":"hello","value":"hello details"}"#;
/// A realistic configuration: request and response rules, a condition, a per-request placeholder
/// and a constant one.
const FIVE_RULES: &str = r#"{"rules":[
 {"direction":"request","op":"set","name":"x-route","value":"${request.method} ${request.path}"},
 {"direction":"request","op":"remove","name":"x-internal-token"},
 {"direction":"response","name":"hello","value":"hello details"},
 {"direction":"response","op":"set","name":"x-served-by","value":"${node.id}"},
 {"direction":"response","op":"set","name":"x-debug-seen","value":"yes","when":{"header_present":"x-debug"}}
]}"#;

/// Three fixed response headers: three host calls per request, no request phase. Beside the seed
/// (one call), what one more header write costs (opt-in: `--configs`).
const THREE_WRITES: &str = r#"{"rules":[
 {"direction":"response","name":"hello","value":"hello details"},
 {"direction":"response","op":"set","name":"x-a","value":"1"},
 {"direction":"response","op":"set","name":"x-b","value":"2"}
]}"#;

/// One fixed request header and the seed's response header: two host calls, one of them a
/// request-header write, after which Envoy matches the route again (opt-in: `--configs`).
const REQUEST_WRITE: &str = r#"{"rules":[
 {"direction":"request","op":"set","name":"x-route","value":"fixed"},
 {"direction":"response","name":"hello","value":"hello details"}
]}"#;

/// Configurations measured only when `--configs` names them: they take a full run past its time
/// budget and answer a narrower question (where the 5-rule configuration's cost goes).
const OPT_IN: &[&str] = &["three_writes", "request_write"];

/// One Envoy configuration under test.
struct Setup {
    key: &'static str,
    label: &'static str,
    /// Wasm filters in the chain.
    wasm: usize,
    /// How many `hello` values a response carries.
    hellos: usize,
}

const SETUPS: &[Setup] = &[
    Setup {
        key: "none",
        label: "no filter",
        wasm: 0,
        hellos: 0,
    },
    Setup {
        key: "route",
        label: "native route response_headers_to_add",
        wasm: 0,
        hellos: 1,
    },
    Setup {
        key: "header_mutation",
        label: "native header_mutation filter",
        wasm: 0,
        hellos: 1,
    },
    Setup {
        key: "lua",
        label: "Lua filter",
        wasm: 0,
        hellos: 1,
    },
    Setup {
        key: "floor",
        label: "floor module (examples/floor-filter: only what Envoy needs)",
        wasm: 1,
        hellos: 1,
    },
    Setup {
        key: "floor_exports",
        label: "floor module with the header filter's exports (examples/floor-filter)",
        wasm: 1,
        hellos: 1,
    },
    Setup {
        key: "minimal",
        label: "minimal Rust SDK filter (examples/minimal-filter)",
        wasm: 1,
        hellos: 1,
    },
    Setup {
        key: "seed",
        label: "header_filter, seed configuration",
        wasm: 1,
        hellos: 1,
    },
    Setup {
        key: "five_rules",
        label: "header_filter, 5 rules",
        wasm: 1,
        hellos: 1,
    },
    Setup {
        key: "three_writes",
        label: "header_filter, 3 response headers (opt-in)",
        wasm: 1,
        hellos: 1,
    },
    Setup {
        key: "request_write",
        label: "header_filter, 1 request + 1 response header (opt-in)",
        wasm: 1,
        hellos: 1,
    },
    Setup {
        key: "seed_x2",
        label: "header_filter twice in the chain",
        wasm: 2,
        hellos: 2,
    },
    Setup {
        key: "compare",
        label: "--compare module, seed configuration",
        wasm: 1,
        hellos: 1,
    },
    Setup {
        key: "compare_five_rules",
        label: "--compare module, 5 rules",
        wasm: 1,
        hellos: 1,
    },
    Setup {
        key: "seed_x3",
        label: "header_filter three times in the chain",
        wasm: 3,
        hellos: 3,
    },
];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    /// To the upstream and back.
    Proxy,
    /// Answered by the route's `direct_response`.
    Direct,
}

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Mode::Proxy => "proxy",
            Mode::Direct => "direct",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Mode::Proxy => "/bench",
            Mode::Direct => "/direct",
        }
    }
}

const MODES: [Mode; 2] = [Mode::Proxy, Mode::Direct];

struct Args {
    rounds: usize,
    duration: u64,
    warmup: u64,
    connections: u32,
    configs: Vec<&'static Setup>,
    out: PathBuf,
    quick: bool,
    /// Another build of `header_filter.wasm` to measure beside the shipped one (before/after).
    compare: Option<PathBuf>,
    /// Envoy starts per one-filter configuration for the VM start median.
    vm_starts: usize,
}

fn usage() -> String {
    "usage: bench-envoy [--quick] [--rounds N] [--duration SECS] [--warmup SECS] \
     [--connections N] [--configs KEY,..] [--compare OTHER.wasm] [--vm-starts N] [--out DIR]"
        .to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        // Many short rounds rather than a few long ones: the two samples of a pair are taken
        // close together, so a change in the machine's load moves both.
        rounds: 9,
        duration: 3,
        warmup: 2,
        connections: 16,
        configs: SETUPS
            .iter()
            .filter(|s| !s.key.starts_with("compare") && !OPT_IN.contains(&s.key))
            .collect(),
        out: e2e::workspace_root().join("docs/bench"),
        quick: false,
        compare: None,
        vm_starts: 5,
    };
    let mut it = std::env::args().skip(1);
    let mut out_given = false;
    let num = |v: Option<String>, flag: &str| -> Result<u64, String> {
        v.and_then(|s| s.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive number\n{}", usage()))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--quick" => {
                a.quick = true;
                a.rounds = 2;
                a.duration = 2;
                a.warmup = 1;
                a.vm_starts = 3;
            }
            "--vm-starts" => a.vm_starts = num(it.next(), "--vm-starts")? as usize,
            "--rounds" => a.rounds = num(it.next(), "--rounds")? as usize,
            "--duration" => a.duration = num(it.next(), "--duration")?,
            "--warmup" => a.warmup = num(it.next(), "--warmup")?,
            "--connections" => a.connections = num(it.next(), "--connections")? as u32,
            "--out" => {
                out_given = true;
                a.out = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("--out needs a directory\n{}", usage()))?
            }
            "--configs" => {
                let list = it.next().unwrap_or_default();
                let mut chosen = Vec::new();
                for k in list.split(',') {
                    let s = SETUPS.iter().find(|s| s.key == k).ok_or_else(|| {
                        let keys: Vec<_> = SETUPS.iter().map(|s| s.key).collect();
                        format!("--configs: unknown {k:?}, known: {}", keys.join(", "))
                    })?;
                    chosen.push(s);
                }
                if !chosen.iter().any(|s| s.key == "none") {
                    chosen.insert(0, &SETUPS[0]);
                }
                a.configs = chosen;
            }
            "--compare" => {
                let p = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("--compare needs a .wasm file\n{}", usage()))?;
                if !p.is_file() {
                    return Err(format!("--compare: {} is not a file", p.display()));
                }
                a.compare = Some(p);
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    if a.compare.is_some() && !a.configs.iter().any(|s| s.key.starts_with("compare")) {
        a.configs
            .extend(SETUPS.iter().filter(|s| s.key.starts_with("compare")));
    }
    if a.compare.is_none() {
        a.configs.retain(|s| !s.key.starts_with("compare"));
    }
    if a.quick && !out_given {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| e2e::workspace_root().join("target"));
        a.out = target.join("bench-quick");
    }
    Ok(a)
}

/// The `route_config` of the listener in an [`e2e::envoy::bootstrap`].
fn virtual_host(config: &mut Value) -> Option<&mut Value> {
    config.pointer_mut(
        "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0",
    )
}

fn header_value() -> Value {
    json!({"header": {"key": NAME, "value": VALUE}, "append_action": "APPEND_IF_EXISTS_OR_ADD"})
}

/// Several wasm filters sharing one VM (same `vm_id` and code), as Envoy runs them.
fn header_filters(wasm: &Path, count: usize, configuration: &str) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let name = if i == 0 {
                "header_filter".to_string()
            } else {
                format!("header_filter_{i}")
            };
            let mut f = wasm_filter(&name, "my_root_id", wasm, configuration);
            if let Some(vm) = f.pointer_mut("/typed_config/config/vm_config/vm_id") {
                *vm = json!("header_filter");
            }
            f
        })
        .collect()
}

/// The modules under test.
struct Modules {
    filter: PathBuf,
    minimal: PathBuf,
    floor: PathBuf,
    floor_exports: PathBuf,
    compare: Option<PathBuf>,
}

fn envoy_config(s: &Setup, upstream: SocketAddr, m: &Modules) -> Value {
    let (filter, minimal, compare) = (
        m.filter.as_path(),
        m.minimal.as_path(),
        m.compare.as_deref(),
    );
    let filters = match s.key {
        "header_mutation" => vec![json!({
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {"response_mutations": [{"append": header_value()}]},
            },
        })],
        "lua" => vec![json!({
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": format!(
                    "function envoy_on_response(h)\n  h:headers():add(\"{NAME}\", \"{VALUE}\")\nend\n"
                )},
            },
        })],
        "minimal" => vec![wasm_filter(
            "minimal_filter",
            "minimal",
            minimal,
            &format!("{NAME}: {VALUE}"),
        )],
        // The floor module adds `hello: hello details` itself and reads no configuration.
        "floor" => vec![wasm_filter("floor", "", &m.floor, "")],
        "floor_exports" => vec![wasm_filter("floor_exports", "", &m.floor_exports, "")],
        "seed" => header_filters(filter, 1, SEED),
        "compare" => header_filters(compare.unwrap_or(filter), 1, SEED),
        "compare_five_rules" => header_filters(compare.unwrap_or(filter), 1, FIVE_RULES),
        "five_rules" => header_filters(filter, 1, FIVE_RULES),
        "three_writes" => header_filters(filter, 1, THREE_WRITES),
        "request_write" => header_filters(filter, 1, REQUEST_WRITE),
        "seed_x2" => header_filters(filter, 2, SEED),
        "seed_x3" => header_filters(filter, 3, SEED),
        _ => vec![],
    };
    let mut config = bootstrap(upstream, filters);
    if s.key == "route"
        && let Some(vh) = virtual_host(&mut config)
    {
        vh["response_headers_to_add"] = json!([header_value()]);
    }
    config
}

/// The upstream: an Envoy that answers every request itself (cheaper than any upstream written
/// for the tests, and as fast as the Envoy under test's own direct response).
fn upstream_config() -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "main",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "upstream",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "upstream\n"}}},
                    ]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        }]},
    })
}

/// CPU time of every thread of a process, in nanoseconds.
fn cpu_ns(pid: u32) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let path = entry
            .map_err(|e| format!("{dir}: {e}"))?
            .path()
            .join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(text) = fs::read_to_string(&path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("{}: unexpected content {text:?}", path.display()))?;
        }
    }
    Ok(total)
}

/// A module's initial linear memory in 64 KiB pages, from its memory section (`None` when it
/// defines none or cannot be read).
fn initial_pages(path: &Path) -> Option<u64> {
    let bytes = fs::read(path).ok()?;
    fn leb(b: &[u8], at: &mut usize) -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = *b.get(*at)?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
        }
    }
    let mut at = 8;
    while at < bytes.len() {
        let id = bytes[at];
        at += 1;
        let len = leb(&bytes, &mut at)? as usize;
        if id == 5 {
            let mut p = at;
            let _count = leb(&bytes, &mut p)?;
            let _flags = *bytes.get(p)?;
            p += 1;
            return leb(&bytes, &mut p);
        }
        at += len;
    }
    None
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Pin every thread of `pid` to `cpu` (no-op on a one-CPU machine).
fn pin(pid: u32, cpu: usize, cpus: usize) -> Result<(), String> {
    if cpus < 2 {
        return Ok(());
    }
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output()
        .map_err(|e| format!("cannot run taskset: {e} (Debian util-linux)"))?;
    if !out.status.success() {
        return Err(format!(
            "taskset -a -p -c {cpu} {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// What one `wrk` run reported.
#[derive(Debug, Default, Clone)]
struct Wrk {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// Non-2xx responses and socket errors.
    errors: u64,
}

fn duration_us(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Result<Wrk, String> {
    let mut w = Wrk::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => w.p50_us = duration_us(v).unwrap_or(0.0),
            ["99%", v] => w.p99_us = duration_us(v).unwrap_or(0.0),
            ["Requests/sec:", v] => w.rps = v.parse().unwrap_or(0.0),
            [n, "requests", "in", ..] => w.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => w.errors += n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                w.errors += rest
                    .iter()
                    .filter_map(|t| t.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    if w.requests == 0 || w.rps == 0.0 || w.p50_us == 0.0 {
        return Err(format!("cannot read wrk's report:\n{out}"));
    }
    Ok(w)
}

fn run_wrk(
    target: SocketAddr,
    path: &str,
    secs: u64,
    connections: u32,
    cpus: usize,
) -> Result<Wrk, String> {
    let url = format!("http://{target}{path}");
    let mut cmd = if cpus >= 2 {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "wrk"]);
        c
    } else {
        Command::new("wrk")
    };
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--timeout",
        "5s",
        "--latency",
        &url,
    ]);
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run wrk: {e} (Debian wrk; run scripts/setup)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk {url} failed with {}: {}{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_wrk(&text)
}

/// One measurement: a configuration, a mode, a round.
#[derive(Debug, Clone)]
struct Sample {
    wrk: Wrk,
    cpu_us_per_request: f64,
    /// The upstream Envoy's CPU per request in the same run (zero for direct responses).
    upstream_cpu_us_per_request: f64,
}

/// A running configuration.
struct Running {
    setup: &'static Setup,
    envoy: Envoy,
    /// Spawn to ready.
    start_ms: f64,
    /// "Base Wasm created" to the first "Thread-Local Wasm created" in Envoy's log.
    vm_start_ms: Option<f64>,
    rss_ready_kib: Option<u64>,
}

/// Milliseconds since midnight of a log line's `[YYYY-MM-DD HH:MM:SS.mmm]` stamp.
fn log_ms(line: &str) -> Option<f64> {
    let stamp = line.strip_prefix('[')?.get(11..23)?;
    let (hms, ms) = stamp.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<f64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60.0 + m) * 60.0 + s) * 1e3 + ms.parse::<f64>().ok()?)
}

fn vm_start_ms(log: &str) -> Option<f64> {
    let base = log.lines().find(|l| l.contains("Base Wasm created"))?;
    let local = log
        .lines()
        .find(|l| l.contains("Thread-Local Wasm created"))?;
    Some(log_ms(local)? - log_ms(base)?)
}

/// Check that a configuration does what it claims before measuring it.
fn check(r: &Running) -> Result<(), String> {
    for mode in MODES {
        let resp = http1::get(r.envoy.listener, mode.path(), &[])
            .map_err(|e| format!("{} {}: {e}", r.setup.key, mode.path()))?;
        let hellos = resp.values(NAME).len();
        if resp.status() != 200 || hellos != r.setup.hellos {
            return Err(format!(
                "{}: GET {} answered {} with {hellos} {NAME:?} header(s), expected 200 with {}:\n{:?}",
                r.setup.key,
                mode.path(),
                resp.status(),
                r.setup.hellos,
                resp.headers
            ));
        }
    }
    Ok(())
}

/// Lower Envoy's `wasm` log level to info and wait until the filters follow (they re-read it
/// every second): per-request debug lines would be measured otherwise.
fn quiet_logs(running: &[Running]) -> Result<(), String> {
    for r in running {
        let mut c = http1::Client::connect(r.envoy.admin).map_err(|e| e.to_string())?;
        c.request("POST", "/logging?wasm=info", &[])
            .map_err(|e| format!("{}: POST /logging: {e}", r.setup.key))?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in running.iter().filter(|r| {
        r.setup.key.starts_with("seed")
            || [
                "five_rules",
                "compare",
                "compare_five_rules",
                "three_writes",
                "request_write",
            ]
            .contains(&r.setup.key)
    }) {
        // Quiet once a request adds no debug line (or a request fails, which is reported).
        let quiet = e2e::poll_until(deadline, || {
            let before = r.envoy.log().matches("): applied").count();
            match http1::get(r.envoy.listener, "/direct", &[]) {
                Err(e) => Some(Err(e.to_string())),
                Ok(_) => (r.envoy.log().matches("): applied").count() == before).then_some(Ok(())),
            }
        });
        quiet.ok_or_else(|| format!("{}: the filter still logs every request", r.setup.key))??;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Samples by configuration key and mode, one per round, in round order.
type Samples = BTreeMap<(String, Mode), Vec<Sample>>;

fn get<'a>(samples: &'a Samples, key: &str, mode: Mode) -> Option<&'a Vec<Sample>> {
    samples.get(&(key.to_string(), mode))
}

/// Per round, `f(sample of key, sample of base)`; the median over rounds.
fn paired(
    samples: &Samples,
    key: &str,
    base: &str,
    mode: Mode,
    f: impl Fn(&Sample, &Sample) -> f64,
) -> f64 {
    let (Some(a), Some(b)) = (get(samples, key, mode), get(samples, base, mode)) else {
        return f64::NAN;
    };
    median(a.iter().zip(b).map(|(x, y)| f(x, y)).collect())
}

fn added(samples: &Samples, key: &str, base: &str, mode: Mode) -> f64 {
    paired(samples, key, base, mode, |x, y| {
        x.cpu_us_per_request - y.cpu_us_per_request
    })
}

/// The least-disturbed round's CPU per request: other processes only ever add to a sample's cost
/// (evicted caches, stolen time), so the minimum is the estimate least moved by them.
fn least(samples: &Samples, key: &str, mode: Mode) -> f64 {
    get(samples, key, mode)
        .into_iter()
        .flatten()
        .map(|s| s.cpu_us_per_request)
        .fold(f64::NAN, f64::min)
}

/// Added cost of `key` over `base` from each one's least-disturbed round.
fn added_least(samples: &Samples, key: &str, base: &str, mode: Mode) -> f64 {
    least(samples, key, mode) - least(samples, base, mode)
}

/// Ratio of added costs (against no filter), least-disturbed rounds.
fn added_ratio_least(samples: &Samples, key: &str, base: &str, mode: Mode) -> f64 {
    added_least(samples, key, "none", mode) / added_least(samples, base, "none", mode)
}

/// Ratio of added cost (against no filter) of `key` to `base`, paired per round.
fn added_ratio(samples: &Samples, key: &str, base: &str, mode: Mode) -> f64 {
    let (Some(a), Some(b), Some(none)) = (
        get(samples, key, mode),
        get(samples, base, mode),
        get(samples, "none", mode),
    ) else {
        return f64::NAN;
    };
    median(
        a.iter()
            .zip(b)
            .zip(none)
            .map(|((x, y), n)| {
                (x.cpu_us_per_request - n.cpu_us_per_request)
                    / (y.cpu_us_per_request - n.cpu_us_per_request)
            })
            .collect(),
    )
}

fn round(x: f64, digits: i32) -> Value {
    if x.is_finite() {
        let p = 10f64.powi(digits);
        json!((x * p).round() / p)
    } else {
        Value::Null
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // Readable like any other file in the checkout (a temporary file starts as 0600).
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

fn plot_err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// Bars of added µs per request against no filter, one panel per mode.
fn plot_added(path: &Path, labels: &[&str], panels: &[(Mode, Vec<f64>)]) -> Result<(), String> {
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let areas = root.split_evenly((panels.len(), 1));
    for (area, (mode, values)) in areas.iter().zip(panels) {
        let top = values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(1.0, f64::max)
            * 1.2;
        let bottom = values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::min)
            * 1.2;
        let n = labels.len();
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "Envoy CPU added per request vs no filter, {} (µs, least-disturbed rounds)",
                    mode.key()
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((0..n).into_segmented(), bottom..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => {
                    labels.get(*i).map(|s| s.to_string()).unwrap_or_default()
                }
                _ => String::new(),
            })
            .y_desc("µs / request")
            .draw()
            .map_err(plot_err)?;
        let color = match mode {
            Mode::Proxy => RGBColor(31, 119, 180),
            Mode::Direct => RGBColor(255, 127, 14),
        };
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(color.filled())
                    .margin(14)
                    .data(
                        values
                            .iter()
                            .enumerate()
                            .filter(|(_, v)| v.is_finite())
                            .map(|(i, v)| (i, *v)),
                    ),
            )
            .map_err(plot_err)?;
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(i, v)| {
                        Text::new(
                            format!("{v:.1}"),
                            (SegmentValue::CenterOf(i), v.max(0.0)),
                            ("sans-serif", 13),
                        )
                    }),
            )
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

/// Added µs per request against the number of wasm filters in the chain, one line per mode.
fn plot_wasm_count(path: &Path, lines: &[(Mode, Vec<(usize, f64)>)]) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let top = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.15;
    let maxx = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .max()
        .unwrap_or(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Envoy CPU added per request by N header_filter wasm filters (µs, least-disturbed rounds)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..maxx as f64 + 0.2, 0f64..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_labels(maxx + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("wasm filters in the chain (one shared VM)")
        .y_desc("µs / request")
        .draw()
        .map_err(plot_err)?;
    for (mode, points) in lines {
        let color = match mode {
            Mode::Proxy => RGBColor(31, 119, 180),
            Mode::Direct => RGBColor(255, 127, 14),
        };
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(x, v)| (*x as f64, *v))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(mode.key())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

fn run(args: &Args) -> Result<(), String> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    eprintln!("bench-envoy: building the wasm modules");
    let modules = Modules {
        filter: e2e::filter_wasm(),
        minimal: e2e::minimal_wasm(),
        floor: e2e::floor_wasm(),
        floor_exports: e2e::floor_exports_wasm(),
        compare: args.compare.clone(),
    };
    let (filter, minimal, floor) = (&modules.filter, &modules.minimal, &modules.floor);
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);

    let mut upstream = Envoy::start_with(&upstream_config(), &["--log-level", "warn"])
        .map_err(|f| format!("upstream envoy: {}\n{}", f.reason, f.log))?;
    pin(upstream.pid(), 1, cpus)?;

    let mut running = Vec::new();
    for s in &args.configs {
        let config = envoy_config(s, upstream.listener, &modules);
        let t = Instant::now();
        let envoy = Envoy::start_with(
            &config,
            &["--log-level", "info", "--component-log-level", "wasm:debug"],
        )
        .map_err(|f| format!("{}: {}\n{}", s.key, f.reason, f.log))?;
        let start_ms = t.elapsed().as_secs_f64() * 1e3;
        pin(envoy.pid(), 0, cpus)?;
        let r = Running {
            setup: s,
            vm_start_ms: vm_start_ms(&envoy.log()),
            rss_ready_kib: rss_kib(envoy.pid()),
            envoy,
            start_ms,
        };
        eprintln!(
            "bench-envoy: {:<16} pid {} ready in {:.0} ms{}",
            s.key,
            r.envoy.pid(),
            start_ms,
            r.vm_start_ms
                .map(|v| format!(", wasm VM {v:.0} ms"))
                .unwrap_or_default()
        );
        check(&r)?;
        running.push(r);
    }
    quiet_logs(&running)?;

    eprintln!(
        "bench-envoy: warm-up {} s per configuration and mode; then {} round(s) of {} s each, {} connection(s)",
        args.warmup, args.rounds, args.duration, args.connections
    );
    for r in &running {
        for mode in MODES {
            run_wrk(
                r.envoy.listener,
                mode.path(),
                args.warmup,
                args.connections,
                cpus,
            )?;
        }
    }
    let mut samples: Samples = BTreeMap::new();
    let n = running.len();
    let started = Instant::now();
    for round in 0..args.rounds {
        for i in 0..n {
            let r = &running[(i + round) % n];
            // Alternate which mode goes first, too.
            let modes = if round % 2 == 0 {
                MODES
            } else {
                [MODES[1], MODES[0]]
            };
            for mode in modes {
                let pid = r.envoy.pid();
                let before = cpu_ns(pid)?;
                let up_before = cpu_ns(upstream.pid())?;
                let wrk = run_wrk(
                    r.envoy.listener,
                    mode.path(),
                    args.duration,
                    args.connections,
                    cpus,
                )?;
                let after = cpu_ns(pid)?;
                let up_after = cpu_ns(upstream.pid())?;
                if wrk.errors > 0 {
                    return Err(format!(
                        "{} {}: {} errors in wrk's run",
                        r.setup.key,
                        mode.key(),
                        wrk.errors
                    ));
                }
                let cpu = (after - before) as f64 / 1e3 / wrk.requests as f64;
                let up = (up_after - up_before) as f64 / 1e3 / wrk.requests as f64;
                samples
                    .entry((r.setup.key.to_string(), mode))
                    .or_default()
                    .push(Sample {
                        wrk,
                        cpu_us_per_request: cpu,
                        upstream_cpu_us_per_request: up,
                    });
            }
        }
        eprintln!(
            "bench-envoy: round {}/{} done ({:.0} s)",
            round + 1,
            args.rounds,
            started.elapsed().as_secs_f64()
        );
    }
    // Every configuration again, to be sure nothing broke under load.
    for r in &running {
        check(r)?;
    }
    // VM start varies from one start to the next: start the one-filter configurations again,
    // alternately, for a median.
    let mut vm_starts: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in &running {
        if let Some(v) = r.vm_start_ms {
            vm_starts.entry(r.setup.key).or_default().push(v);
        }
    }
    for _ in 1..args.vm_starts {
        for r in running.iter().filter(|r| r.setup.wasm == 1) {
            let config = envoy_config(r.setup, upstream.listener, &modules);
            let mut envoy = Envoy::start_with(
                &config,
                &["--log-level", "info", "--component-log-level", "wasm:debug"],
            )
            .map_err(|f| format!("{}: {}\n{}", r.setup.key, f.reason, f.log))?;
            if let Some(v) = vm_start_ms(&envoy.log()) {
                vm_starts.entry(r.setup.key).or_default().push(v);
            }
            envoy.stop();
        }
    }
    let vm = |k: &str| vm_starts.get(k).map(|v| median(v.clone()));

    // Per configuration and mode.
    let keys: Vec<&str> = running.iter().map(|r| r.setup.key).collect();
    let has = |k: &str| keys.contains(&k);
    let native = if has("route") { "route" } else { "none" };
    let mut configs = Vec::new();
    for r in &running {
        let mut modes = serde_json::Map::new();
        for mode in MODES {
            let s = get(&samples, r.setup.key, mode)
                .cloned()
                .unwrap_or_default();
            let m = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
            modes.insert(
                mode.key().into(),
                json!({
                    "requests_per_s": round(m(|x| x.wrk.rps), 0),
                    "p50_us": round(m(|x| x.wrk.p50_us), 1),
                    "p99_us": round(m(|x| x.wrk.p99_us), 1),
                    "cpu_us_per_request": round(m(|x| x.cpu_us_per_request), 2),
                    "upstream_cpu_us_per_request": round(m(|x| x.upstream_cpu_us_per_request), 2),
                    "added_us_vs_none": round(added(&samples, r.setup.key, "none", mode), 2),
                    "cpu_us_per_request_least": round(least(&samples, r.setup.key, mode), 2),
                    "added_us_vs_none_least": round(added_least(&samples, r.setup.key, "none", mode), 2),
                    "added_us_vs_native": round(added(&samples, r.setup.key, native, mode), 2),
                    "throughput_vs_native": round(paired(&samples, r.setup.key, native, mode, |x, y| x.wrk.rps / y.wrk.rps), 3),
                    "rounds": s.iter().map(|x| json!({
                        "requests": x.wrk.requests,
                        "requests_per_s": round(x.wrk.rps, 0),
                        "cpu_us_per_request": round(x.cpu_us_per_request, 3),
                        "p50_us": x.wrk.p50_us,
                        "p99_us": x.wrk.p99_us,
                    })).collect::<Vec<_>>(),
                }),
            );
        }
        configs.push(json!({
            "key": r.setup.key,
            "label": r.setup.label,
            "wasm_filters": r.setup.wasm,
            "start_ms": round(r.start_ms, 0),
            "vm_start_ms": vm(r.setup.key).map(|v| round(v, 0)),
            "vm_start_samples_ms": vm_starts.get(r.setup.key).cloned().unwrap_or_default(),
            "rss_ready_mib": r.rss_ready_kib.map(|k| round(k as f64 / 1024.0, 1)),
            "rss_after_mib": rss_kib(r.envoy.pid()).map(|k| round(k as f64 / 1024.0, 1)),
            "modes": modes,
        }));
    }
    let mut goals = serde_json::Map::new();
    for mode in MODES {
        let m = mode.key();
        // Against the floor: what each module adds above what V8 and the ABI impose.
        for (key, floor) in [
            ("seed", "floor"),
            ("five_rules", "floor"),
            ("minimal", "floor"),
            ("floor_exports", "floor"),
            ("seed", "floor_exports"),
            ("five_rules", "floor_exports"),
        ] {
            if has(key) && has(floor) {
                goals.insert(
                    format!("{key}_vs_{floor}_added_{m}"),
                    round(added_ratio(&samples, key, floor, mode), 3),
                );
                goals.insert(
                    format!("{key}_vs_{floor}_added_least_{m}"),
                    round(added_ratio_least(&samples, key, floor, mode), 3),
                );
            }
        }
        for key in ["seed", "five_rules", "compare", "compare_five_rules"] {
            if has(key) && has("minimal") {
                goals.insert(
                    format!("{key}_vs_minimal_added_{m}"),
                    round(added_ratio(&samples, key, "minimal", mode), 3),
                );
                goals.insert(
                    format!("{key}_vs_minimal_added_least_{m}"),
                    round(added_ratio_least(&samples, key, "minimal", mode), 3),
                );
            }
        }
        // What one more header write costs (paired against the seed's one write): a response
        // header, and a request header with the route match Envoy then repeats.
        if has("three_writes") && has("seed") {
            goals.insert(
                format!("response_write_us_{m}"),
                round(added(&samples, "three_writes", "seed", mode) / 2.0, 2),
            );
        }
        if has("request_write") && has("seed") {
            goals.insert(
                format!("request_write_us_{m}"),
                round(added(&samples, "request_write", "seed", mode), 2),
            );
        }
        if has("seed") && has("lua") {
            goals.insert(
                format!("seed_minus_lua_us_{m}"),
                round(added(&samples, "seed", "lua", mode), 2),
            );
        }
        if has("seed") && has("route") {
            goals.insert(
                format!("seed_throughput_vs_native_{m}"),
                round(
                    paired(&samples, "seed", "route", mode, |x, y| {
                        x.wrk.rps / y.wrk.rps
                    }),
                    3,
                ),
            );
        }
    }
    if let (Some(a), Some(b)) = (vm("seed"), vm("minimal")) {
        goals.insert("seed_vs_minimal_vm_start".into(), round(a / b, 3));
    }
    // Memory: Envoy's RSS with the header filter against the floor module, after the load.
    let rss_after = |k: &str| {
        configs
            .iter()
            .find(|c| c["key"] == k)
            .and_then(|c| c["rss_after_mib"].as_f64())
    };
    for key in ["seed", "five_rules", "minimal"] {
        if let (Some(a), Some(b)) = (rss_after(key), rss_after("floor")) {
            goals.insert(format!("{key}_rss_minus_floor_mib"), round(a - b, 1));
        }
    }
    let results = json!({
        "tool": "bench-envoy (tests/src/bin/bench-envoy.rs)",
        // Envoy names its own path in --version: shown relative to the clone (the project's
        // .venv), so the committed results name no machine's directories.
        "envoy": Command::new(e2e::envoy::envoy_bin()).arg("--version").output().ok()
            .map(|o| {
                let root = format!("{}/", e2e::workspace_root().display());
                String::from_utf8_lossy(&o.stdout).trim().replace(&root, "")
            }),
        "wrk": {"threads": 1, "connections": args.connections, "keep_alive": true},
        "cpus": cpus,
        "pinned": cpus >= 2,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "quick": args.quick,
        "modules": {
            "header_filter.wasm": size(filter),
            "minimal_filter.wasm": size(minimal),
            "floor.wasm": size(floor),
            "floor-exports.wasm": size(&modules.floor_exports),
            "compare": args.compare.as_ref().map(|p| json!({"path": p.display().to_string(), "bytes": size(p)})),
        },
        "vm_start_ms": {"header_filter": vm("seed").map(|v| round(v, 0)), "minimal_filter": vm("minimal").map(|v| round(v, 0))},
        // Each module's initial linear memory (64 KiB pages): what every VM of every worker starts
        // with.
        "initial_memory_pages": {
            "header_filter.wasm": initial_pages(filter),
            "minimal_filter.wasm": initial_pages(minimal),
            "floor.wasm": initial_pages(floor),
            "floor-exports.wasm": initial_pages(&modules.floor_exports),
        },
        "upstream_cpu_note": "the upstream is an Envoy answering directly, pinned with wrk on CPU 1; its CPU is not in cpu_us_per_request (see upstream_cpu_us_per_request)",
        "upstream_rss_mib": rss_kib(upstream.pid()).map(|k| round(k as f64 / 1024.0, 1)),
        "goals": goals,
        "configs": configs,
    });
    upstream.stop();

    let out = &args.out;
    write_atomic(
        &out.join("results.json"),
        format!(
            "{}\n",
            serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?
        )
        .as_bytes(),
    )?;
    let table = markdown(&results);
    write_atomic(&out.join("results.md"), table.as_bytes())?;

    // Plots.
    let shown: Vec<&Running> = running.iter().filter(|r| r.setup.key != "none").collect();
    let labels: Vec<&str> = shown.iter().map(|r| short(r.setup.key)).collect();
    let panels: Vec<(Mode, Vec<f64>)> = MODES
        .iter()
        .map(|&mode| {
            (
                mode,
                shown
                    .iter()
                    .map(|r| added_least(&samples, r.setup.key, "none", mode))
                    .collect(),
            )
        })
        .collect();
    tmp_plot(&out.join("added-us.svg"), |p| {
        plot_added(p, &labels, &panels)
    })?;
    let lines: Vec<(Mode, Vec<(usize, f64)>)> = MODES
        .iter()
        .map(|&mode| {
            let pts = [(0, "none"), (1, "seed"), (2, "seed_x2"), (3, "seed_x3")]
                .iter()
                .filter(|(_, k)| has(k))
                .map(|(n, k)| (*n, added_least(&samples, k, "none", mode)))
                .collect();
            (mode, pts)
        })
        .collect();
    tmp_plot(&out.join("wasm-filters.svg"), |p| {
        plot_wasm_count(p, &lines)
    })?;
    println!("{table}");
    eprintln!(
        "bench-envoy: wrote {}/results.json, results.md, added-us.svg, wasm-filters.svg",
        out.display()
    );
    Ok(())
}

/// Render a plot to a temporary file beside `path`, then rename it into place.
fn tmp_plot(path: &Path, draw: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    let tmp = path.with_extension("svg.tmp");
    draw(&tmp)?;
    let bytes = fs::read(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let _ = fs::remove_file(&tmp);
    write_atomic(path, &bytes)
}

fn short(key: &str) -> &'static str {
    match key {
        "route" => "route add",
        "header_mutation" => "header_mutation",
        "lua" => "Lua",
        "floor" => "floor module",
        "floor_exports" => "floor + exports",
        "minimal" => "minimal SDK",
        "seed" => "ours: seed",
        "five_rules" => "ours: 5 rules",
        "three_writes" => "ours: 3 writes",
        "request_write" => "ours: req+resp",
        "seed_x2" => "ours x2",
        "seed_x3" => "ours x3",
        "compare" => "compare: seed",
        "compare_five_rules" => "compare: 5 rules",
        _ => "no filter",
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The results as Markdown tables (what BENCHMARKS.md quotes).
fn markdown(r: &Value) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Envoy: {}; {} CPU(s), pinned: {}; {} round(s) x {} s per configuration and mode, wrk 1 thread, {} keep-alive connections.\n\n",
        cell(&r["envoy"]), r["cpus"], r["pinned"], r["rounds"], r["duration_s"], r["wrk"]["connections"]
    ));
    for mode in MODES {
        let m = mode.key();
        s.push_str(&format!("**{m}**\n\n| configuration | req/s | p50 µs | p99 µs | Envoy CPU µs/req | added µs vs none | added µs vs native | throughput vs native | least CPU µs/req | added µs vs none, least |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"));
        for c in r["configs"].as_array().into_iter().flatten() {
            let x = &c["modes"][m];
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                cell(&c["label"]).trim_matches('"'),
                cell(&x["requests_per_s"]),
                cell(&x["p50_us"]),
                cell(&x["p99_us"]),
                cell(&x["cpu_us_per_request"]),
                cell(&x["added_us_vs_none"]),
                cell(&x["added_us_vs_native"]),
                cell(&x["throughput_vs_native"]),
                cell(&x["cpu_us_per_request_least"]),
                cell(&x["added_us_vs_none_least"]),
            ));
        }
        if mode == Mode::Proxy {
            let up: Vec<f64> = r["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["modes"][m]["upstream_cpu_us_per_request"].as_f64())
                .collect();
            s.push_str(&format!(
                "\nThe upstream (an Envoy answering directly, on the load generator's CPU) spent {} µs of CPU per proxied request (median over configurations); it is not in the Envoy CPU column.\n",
                cell(&round(median(up), 1))
            ));
        }
        s.push('\n');
    }
    s.push_str("| configuration | wasm filters | start to ready ms | wasm VM start ms (median) | RSS ready MiB | RSS after load MiB |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for c in r["configs"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            cell(&c["label"]).trim_matches('"'),
            cell(&c["wasm_filters"]),
            cell(&c["start_ms"]),
            cell(&c["vm_start_ms"]),
            cell(&c["rss_ready_mib"]),
            cell(&c["rss_after_mib"]),
        ));
    }
    s.push_str("\n| goal figure | value |\n| --- | ---: |\n");
    if let Some(g) = r["goals"].as_object() {
        for (k, v) in g {
            s.push_str(&format!("| {k} | {} |\n", cell(v)));
        }
    }
    s.push_str(&format!(
        "| header_filter.wasm bytes | {} |\n| minimal_filter.wasm bytes | {} |\n",
        cell(&r["modules"]["header_filter.wasm"]),
        cell(&r["modules"]["minimal_filter.wasm"])
    ));
    s
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-envoy: {e}");
            ExitCode::FAILURE
        }
    }
}
