//! A workload without a Pod, for the tests on the control plane alone: an app process (the
//! recording [`http1::Upstream`]) and an Envoy sidecar started by Istio's own pilot-agent,
//! configured by the real istiod of a [`ControlPlane`]. Sidecars injected into real Pods by
//! istiod's webhook run on [`crate::cluster`].
//!
//! What a kubelet would do for a Pod is done here by hand, and only that:
//! - the workload's identity (namespace, name, labels, service account) goes to pilot-agent in
//!   the environment the sidecar injector would set, and a token of its service account
//!   (`kubectl create token`, audience `istio-ca`) where a projected volume would put it; istiod takes the labels from the proxy's
//!   metadata when no Pod matches, so `EnvoyFilter.workloadSelector` and `WasmPlugin.selector`
//!   apply as in a cluster;
//! - the node's wasm directory is bind-mounted read-only at [`NODE_DIR`] inside a mount
//!   namespace of the sidecar's own (the `hostPath` volume the rendered annotations ask for),
//!   and a private directory at `/var/lib/istio/data` (Istio's wasm cache);
//! - the sidecar runs in a PID namespace of its own, so killing it takes Envoy with it.
//!
//! Traffic is not intercepted (`ISTIO_META_INTERCEPTION_MODE=NONE`): a `Sidecar` resource gives
//! the proxy one inbound listener on 127.0.0.1 (a free port) in front of the app, and limits its
//! outbound listeners to `istio-system`, which serves nothing here.

use crate::controlplane::{self, ControlPlane, Proc};
use crate::http1;
use serde_json::{Value, json};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the rendered EnvoyFilter tells Envoy to read modules (the node directory's mount point).
pub const NODE_DIR: &str = "/var/local/lib/wasm-filters";

/// How long a sidecar may take from start to serving its inbound listener.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Who the workload is.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Namespace (created when missing).
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod labels.
    pub labels: Vec<(String, String)>,
    /// Service account (created when missing).
    pub service_account: String,
}

impl Workload {
    /// A workload `name` in `namespace` with `labels` and the `default` service account.
    pub fn new(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            namespace: namespace.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".into(),
        }
    }

    fn labels_json(&self) -> Value {
        Value::Object(
            self.labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }
}

/// A running workload: app plus sidecar.
pub struct Sidecar {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    /// The app behind the sidecar.
    pub app: http1::Upstream,
    /// The sidecar's inbound listener (127.0.0.1).
    pub inbound: SocketAddr,
    /// Envoy's admin interface.
    pub admin: SocketAddr,
    /// The node directory mounted at [`NODE_DIR`].
    pub node_dir: PathBuf,
    /// Who it is.
    pub workload: Workload,
}

impl Sidecar {
    /// Start `workload` in front of an app that echoes the request headers, with its node
    /// directory `node_dir`, and wait until Envoy serves the inbound listener istiod gave it.
    pub fn start(cp: &ControlPlane, workload: Workload, node_dir: &Path) -> Sidecar {
        Sidecar::start_with_app(cp, workload, node_dir, http1::Upstream::start(&[]))
    }

    /// [`Sidecar::start`] in front of `app`.
    pub fn start_with_app(
        cp: &ControlPlane,
        workload: Workload,
        node_dir: &Path,
        app: http1::Upstream,
    ) -> Sidecar {
        let addr = app.addr();
        Sidecar::start_routed(cp, workload, node_dir, app, addr, "HTTP")
    }

    /// [`Sidecar::start`] in front of an app of the caller's at `app_addr` (`app` stays idle).
    pub fn start_in_front_of(
        cp: &ControlPlane,
        workload: Workload,
        node_dir: &Path,
        app_addr: SocketAddr,
    ) -> Sidecar {
        Sidecar::in_front_of(cp, workload, node_dir, app_addr, "HTTP")
    }

    /// [`Sidecar::start_in_front_of`] with a TCP inbound port: Istio gives it a `tcp_proxy`
    /// filter chain (network filters apply, HTTP filters do not).
    pub fn start_tcp(
        cp: &ControlPlane,
        workload: Workload,
        node_dir: &Path,
        app_addr: SocketAddr,
    ) -> Sidecar {
        Sidecar::in_front_of(cp, workload, node_dir, app_addr, "TCP")
    }

    fn in_front_of(
        cp: &ControlPlane,
        workload: Workload,
        node_dir: &Path,
        app_addr: SocketAddr,
        protocol: &str,
    ) -> Sidecar {
        let idle = http1::Upstream::start(&[]);
        Sidecar::start_routed(cp, workload, node_dir, idle, app_addr, protocol)
    }

    fn start_routed(
        cp: &ControlPlane,
        workload: Workload,
        node_dir: &Path,
        app: http1::Upstream,
        app_addr: SocketAddr,
        protocol: &str,
    ) -> Sidecar {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = controlplane::free_port();
        let inbound: SocketAddr = ([127, 0, 0, 1], port).into();
        let admin: SocketAddr = ([127, 0, 0, 1], controlplane::free_port()).into();
        ensure_namespace(cp, &workload);
        cp.apply(&sidecar_resource_for(&workload, port, app_addr, protocol))
            .unwrap_or_else(|e| panic!("apply the Sidecar resource: {e}"));
        // The projected service-account token a Pod gets (audience istio-ca), where
        // pilot-agent reads it: istiod authenticates the sidecar with it.
        let token = cp.kubectl_ok(&[
            "create",
            "token",
            &workload.service_account,
            "-n",
            &workload.namespace,
            "--audience=istio-ca",
            "--duration=24h",
        ]);
        let tokens = dir.path().join("var/run/secrets/tokens");
        fs::create_dir_all(&tokens).expect("token dir");
        fs::write(tokens.join("istio-token"), token.trim()).expect("write token");
        let cache = dir.path().join("istio-data");
        fs::create_dir_all(&cache).expect("wasm cache dir");
        fs::create_dir_all(node_dir).expect("node dir");
        let proxy_config = json!({
            "discoveryAddress": cp.endpoints.xds.to_string(),
            "controlPlaneAuthPolicy": "NONE",
            "binaryPath": crate::envoy::envoy_bin(),
            "proxyAdminPort": admin.port(),
            "statusPort": controlplane::free_port(),
            "concurrency": 1,
            "drainDuration": "1s",
            "terminationDrainDuration": "1s",
            "proxyMetadata": {"METRICS_LOCALHOST_ACCESS_ONLY": "true"},
            // Istio keeps few of Envoy's stats; the tests read ECDS's (filters delivered as
            // extension configs) and the listeners' drains too.
            "proxyStatsMatcher": {"inclusionPrefixes": [
                "extension_config_discovery", "listener.", "listener_manager.", "http.",
            ]},
        });
        // The kubelet's part: mounts in a namespace of the sidecar's own, then pilot-agent.
        // Without root, a mount point that cannot be made comes from a private tmpfs over its
        // parent (/var/local, /var/lib: seen by this sidecar alone).
        let script = format!(
            "set -e; \
             mkdir -p {NODE_DIR} 2>/dev/null || {{ mount -t tmpfs -o mode=755 tmpfs /var/local && mkdir -p {NODE_DIR}; }}; \
             mkdir -p /var/lib/istio/data 2>/dev/null || {{ mount -t tmpfs -o mode=755 tmpfs /var/lib && mkdir -p /var/lib/istio/data; }}; \
             mount --bind -o ro '{}' {NODE_DIR}; mount --bind '{}' /var/lib/istio/data; \
             exec '{}' proxy sidecar --proxyLogLevel=warning,wasm:debug",
            node_dir.display(),
            cache.display(),
            controlplane::bin("pilot-agent").display()
        );
        let mut cmd = Command::new("unshare");
        // Without root, a user namespace of its own (mapped to root inside) allows the mounts.
        if !crate::is_root() {
            cmd.args(["--user", "--map-root-user"]);
        }
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            &script,
        ])
        .current_dir(dir.path())
        .env("PROXY_CONFIG", proxy_config.to_string())
        .env(
            "ISTIO_BOOTSTRAP",
            controlplane::istio_file("envoy_bootstrap.json"),
        )
        .env("ENVOY_STATUS_PORT", controlplane::free_port().to_string())
        .env(
            "ENVOY_PROMETHEUS_PORT",
            controlplane::free_port().to_string(),
        )
        .env("POD_NAME", &workload.name)
        .env("POD_NAMESPACE", &workload.namespace)
        .env("SERVICE_ACCOUNT", &workload.service_account)
        .env("INSTANCE_IP", "127.0.0.1")
        .env("ISTIO_METAJSON_LABELS", workload.labels_json().to_string())
        .env("ISTIO_META_WORKLOAD_NAME", &workload.name)
        .envs(SIDECAR_ENV.iter().copied());
        let proc = Proc::spawn(
            &format!("sidecar {}/{}", workload.namespace, workload.name),
            cmd,
            dir.path().join("sidecar.log"),
            true,
        );
        let mut sidecar = Sidecar {
            proc: Some(proc),
            dir,
            app,
            inbound,
            admin,
            node_dir: node_dir.to_path_buf(),
            workload,
        };
        let listener = format!("127.0.0.1_{port}");
        let r = {
            let proc = sidecar.proc.as_mut().expect("running");
            controlplane::wait_ready(proc, "sidecar", || {
                http1::get(admin, "/ready", &[]).is_ok_and(|r| r.status() == 200)
                    && http1::get(admin, "/listeners", &[])
                        .is_ok_and(|r| r.text().lines().any(|l| l.starts_with(&listener)))
            })
        };
        if let Err(e) = r {
            panic!("{e}\n(istiod log)\n{}", cp.logs());
        }
        sidecar
    }

    /// `GET path` through the inbound listener.
    pub fn get(&self, path: &str) -> http1::Message {
        http1::get(self.inbound, path, &[]).expect("request through the sidecar")
    }

    /// Poll `GET path` until `check` accepts the response (or the deadline passes), returning the
    /// last response.
    pub fn get_until(
        &self,
        path: &str,
        deadline: Duration,
        check: impl Fn(&http1::Message) -> bool,
    ) -> http1::Message {
        let mut last = None;
        crate::poll_until(Instant::now() + deadline, || {
            let r = http1::get(self.inbound, path, &[]).ok()?;
            let ok = check(&r);
            last = Some(r);
            ok.then_some(())
        });
        last.expect("no response through the sidecar")
    }

    /// A stat of the sidecar's Envoy by full name.
    pub fn stat(&self, name: &str) -> Option<u64> {
        crate::envoy::admin_stat(self.admin, name)
    }

    /// The JSON of Envoy's `/config_dump` (optionally `?resource=...` and the like).
    pub fn config_dump(&self, query: &str) -> Value {
        let r = http1::get(self.admin, &format!("/config_dump{query}"), &[])
            .expect("sidecar /config_dump");
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    /// Everything pilot-agent and Envoy logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    /// The process id of the sidecar's Envoy (a descendant of the sidecar process).
    pub fn envoy_pid(&self) -> Option<u32> {
        let root = self.proc.as_ref()?.child.id();
        descendants(root).into_iter().find(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "envoy")
        })
    }

    /// Stop the sidecar (pilot-agent and Envoy, by pid) and the app.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if std::thread::panicking() {
                eprintln!("---- {} log (tail) ----\n{}", p.name, p.tail(60));
            }
            p.kill();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop();
    }
}

/// pilot-agent's environment for every sidecar here: no certificates to fetch (the mesh runs
/// without mTLS, `controlPlaneAuthPolicy: NONE`), no cloud metadata probing, no DNS proxy, no
/// gRPC bootstrap file, and no outbound listeners below 1024.
pub const SIDECAR_ENV: [(&str, &str); 6] = [
    ("FILE_MOUNTED_CERTS", "true"),
    ("CLOUD_PLATFORM", "none"),
    ("GRPC_XDS_BOOTSTRAP", ""),
    ("ISTIO_META_INTERCEPTION_MODE", "NONE"),
    ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
    ("ISTIO_META_UNPRIVILEGED_POD", "true"),
];

fn ensure_namespace(cp: &ControlPlane, w: &Workload) {
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {ns}\n",
        ns = w.namespace,
        sa = w.service_account
    );
    cp.apply(&yaml)
        .unwrap_or_else(|e| panic!("create namespace {}: {e}", w.namespace));
}

/// The `Sidecar` resource that gives a workload without interception its inbound listener.
pub fn sidecar_resource(w: &Workload, port: u16, app: SocketAddr) -> String {
    sidecar_resource_for(w, port, app, "HTTP")
}

/// [`sidecar_resource`] with the ingress port's `protocol` (`HTTP`, `TCP`).
pub fn sidecar_resource_for(w: &Workload, port: u16, app: SocketAddr, protocol: &str) -> String {
    let v = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": w.name, "namespace": w.namespace},
        "spec": {
            "workloadSelector": {"labels": w.labels_json()},
            "ingress": [{
                "port": {"number": port, "protocol": protocol, "name": protocol.to_ascii_lowercase()},
                "bind": "127.0.0.1",
                "defaultEndpoint": format!("127.0.0.1:{}", app.port()),
            }],
            "egress": [{"hosts": [format!("{}/*", controlplane::ISTIO_NAMESPACE)]}],
        },
    });
    serde_json::to_string(&v).expect("json")
}

/// Every process below `root` (children, grandchildren, ...), from `/proc`.
pub fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| {
                    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                    // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'
                    let ppid = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()?;
                    Some((pid, ppid))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}
