//! A Gateway API `Gateway` served for real: the Gateway API CRDs (standard channel, from the Go
//! module `sigs.k8s.io/gateway-api` at the version the Istio pin requires, fetched by
//! `scripts/gateway-api-crds`) applied to the [`ControlPlane`]'s API server, istiod translating
//! the `Gateway` and its `HTTPRoute`s, and an Envoy started by Istio's pilot-agent as a router
//! (`pilot-agent proxy router`) serving them.
//!
//! What a kubelet and istiod's gateway deployment controller would do is done here by hand:
//! - The `Gateway` is deployed manually, as Istio documents it ("manual deployment":
//!   `spec.addresses` names a Service of type Hostname), so istiod's deployment controller
//!   leaves it alone: a managed Gateway gets a Deployment rendered from the injection templates
//!   (`kube-gateway`), which this control plane does not run, and whose Pods no kubelet would
//!   start here. The Service selects the router by `gateway.networking.k8s.io/gateway-name`, the
//!   label a managed gateway's Pods carry and the one Istio's policy attachment reads to decide
//!   whether a `WasmPlugin` or `TrafficExtension` with `targetRefs` to the Gateway applies.
//! - The router has no Pod: its identity and labels go to pilot-agent as a sidecar's do
//!   ([`crate::sidecar`]); istiod then finds the Service by those labels and binds the Gateway's
//!   listener on the Service's `targetPort`.
//! - istiod binds a gateway's listeners on `0.0.0.0` (a Gateway API listener has no bind
//!   address), so the router runs in a network namespace of the test's own: a holder process
//!   (`unshare --net`) keeps it, the relay (`cluster relay`, [`crate::netns::relay_main`])
//!   carries the ports the router dials (istiod's xDS, the registry, the backend) from the
//!   namespace's 127.0.0.1 to the host's, and the test dials into the namespace
//!   ([`Router::get`]). Nothing on the host changes; the namespace goes with its processes.
//!
//! ```no_run
//! # let relay_bin = std::path::Path::new("target/debug/cluster");
//! use e2e::controlplane::ControlPlane;
//! use e2e::gateway::{self, Router};
//! use e2e::http1::Upstream;
//!
//! let cp = ControlPlane::start();
//! gateway::install_crds(&cp);
//! let backend = Upstream::start(&[]);
//! cp.apply(&gateway::resources("default", "gw", backend.addr())).unwrap();
//! let router = Router::start(&cp, "default", "gw", &[cp.endpoints.xds, backend.addr()], relay_bin);
//! assert_eq!(router.get("/details/0").unwrap().status(), 200);
//! ```

use crate::controlplane::{self, ControlPlane, Proc};
use crate::http1::{self, Message};
use crate::netns;
use serde_json::json;
use std::fs;
use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The port the router's Envoy listens on inside its namespace: the gateway Service's
/// `targetPort` (its `port` is the Gateway listener's, 80).
pub const LISTENER_PORT: u16 = 8080;

/// Envoy's admin port inside the router's namespace.
pub const ADMIN_PORT: u16 = 15000;

/// The router's address (`INSTANCE_IP`; a loopback address of its namespace). Not the
/// backend's 127.0.0.1: istiod takes a proxy's labels and service targets from the service
/// instances at its address in its namespace before its metadata, and the backend's
/// `ServiceEntry` endpoint is such an instance.
pub const ROUTER_IP: &str = "127.0.0.2";

/// The backend's host name in the mesh (the `ServiceEntry`'s, in the Gateway's namespace: a
/// `Hostname` backendRef resolves in the route's namespace).
pub const BACKEND_HOST: &str = "details.backend.example";

/// The label a gateway's Pods carry, which Istio reads to attach `targetRefs` policies.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The directory of the Gateway API CRD YAMLs (standard channel) for the pinned version,
/// fetched (once per machine) by `scripts/gateway-api-crds`.
pub fn crds_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| controlplane::script_output("scripts/gateway-api-crds"))
}

/// Apply the Gateway API CRDs to `cp` and wait until the API server serves them. istiod picks
/// them up while it runs (it watches CRDs and starts its Gateway API controllers when they
/// appear), so they may come after it.
pub fn install_crds(cp: &ControlPlane) {
    let dir = crds_dir().to_str().expect("utf-8 path").to_string();
    cp.kubectl_ok(&["apply", "--server-side", "--field-manager=e2e", "-f", &dir]);
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/gatewayclasses.gateway.networking.k8s.io",
        "crd/gateways.gateway.networking.k8s.io",
        "crd/httproutes.gateway.networking.k8s.io",
    ]);
}

/// The objects of a manually deployed Gateway `name` in `namespace` (class `istio`, one HTTP
/// listener on port 80), the Service it names (selecting the router by
/// [`GATEWAY_NAME_LABEL`], `targetPort` [`LISTENER_PORT`]), and an `HTTPRoute` sending
/// `/details` to `backend` (a `ServiceEntry` [`BACKEND_HOST`] whose endpoint is `backend`'s port
/// on 127.0.0.1; Kubernetes refuses loopback addresses in Endpoints).
pub fn resources(namespace: &str, name: &str, backend: SocketAddr) -> String {
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        // The router's identity (kube-controller-manager makes it too, eventually).
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "default", "namespace": namespace}}),
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "details", "namespace": namespace},
            "spec": {
                "hosts": [BACKEND_HOST],
                "location": "MESH_EXTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": 9080, "name": "http", "protocol": "HTTP",
                           "targetPort": backend.port()}],
                "endpoints": [{"address": backend.ip().to_string()}],
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {GATEWAY_NAME_LABEL: name},
                "ports": [{"name": "http", "port": 80, "targetPort": LISTENER_PORT}],
            },
        }),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "gatewayClassName": "istio",
                "addresses": [{"type": "Hostname",
                               "value": format!("{name}.{namespace}.svc.cluster.local")}],
                "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                               "allowedRoutes": {"namespaces": {"from": "Same"}}}],
            },
        }),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "details", "namespace": namespace},
            "spec": {
                "parentRefs": [{"name": name}],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/details"}}],
                    "backendRefs": [{"group": "networking.istio.io", "kind": "Hostname",
                                     "name": BACKEND_HOST, "port": 9080}],
                }],
            },
        }),
    ];
    objects
        .iter()
        .map(|o| serde_json::to_string(o).expect("json"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A condition of a Gateway API object's status (`Accepted`, `Programmed`, ...):
/// `(status, reason, message)`, if istiod has written it; `namespace` empty for a
/// cluster-scoped kind (`gatewayclass`).
pub fn condition(
    cp: &ControlPlane,
    kind: &str,
    namespace: &str,
    name: &str,
    ty: &str,
) -> Option<(String, String, String)> {
    let mut args = vec!["get", kind, name, "-o", "json"];
    if !namespace.is_empty() {
        args.extend(["-n", namespace]);
    }
    let out = cp.kubectl(&args);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    // An HTTPRoute's conditions are per parent; a Gateway's at the top.
    let lists = [
        v.pointer("/status/conditions"),
        v.pointer("/status/parents/0/conditions"),
    ];
    lists
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_array())
        .flatten()
        .find(|c| c["type"] == ty)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

/// `GET path` to `addr` inside the network namespace `ns` (`/proc/PID/ns/net`), on a new
/// connection closed after the response.
pub fn get_in(ns: &Path, addr: SocketAddr, path: &str) -> io::Result<Message> {
    let stream = netns::in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut writer = stream.try_clone()?;
    write!(
        writer,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    writer.flush()?;
    http1::read_message(&mut BufReader::new(stream), false)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))
}

/// A gateway router: pilot-agent (`proxy router`) and its Envoy in a network namespace of
/// their own, with the relay that joins it to the host's loopback.
pub struct Router {
    procs: Vec<Proc>,
    dir: tempfile::TempDir,
    ns: PathBuf,
    /// The Gateway it serves (`namespace`, `name`).
    pub gateway: (String, String),
}

impl Router {
    /// Start the router of Gateway `name` in `namespace` (labels: [`GATEWAY_NAME_LABEL`] and
    /// the class, as a managed gateway's Pods have them), with `forwards` (ports of the host's
    /// 127.0.0.1 it dials: istiod's xDS first, then the registry, the backend) reachable at the
    /// same addresses in its namespace; `relay_bin` is this crate's `cluster` binary. Returns
    /// once Envoy is ready and serves the Gateway's listener.
    pub fn start(
        cp: &ControlPlane,
        namespace: &str,
        name: &str,
        forwards: &[SocketAddr],
        relay_bin: &Path,
    ) -> Router {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut router = Router {
            procs: Vec::new(),
            ns: PathBuf::new(),
            dir,
            gateway: (namespace.into(), name.into()),
        };
        router.start_namespace(forwards, relay_bin);
        router.start_proxy(cp, forwards[0]);
        router
    }

    /// The holder of the namespace (loopback up) and the relay into it.
    fn start_namespace(&mut self, forwards: &[SocketAddr], relay_bin: &Path) {
        let mut holder = Command::new("unshare");
        holder.args(["--net", "--", "sleep", "infinity"]);
        let p = Proc::spawn(
            "router netns",
            holder,
            self.dir.path().join("netns.log"),
            true,
        );
        let pid = p.child.id();
        self.procs.push(p);
        let ours = netns::ns_id(std::process::id(), "net");
        crate::poll_until(Instant::now() + Duration::from_secs(20), || {
            let theirs = netns::ns_id(pid, "net")?;
            (Some(&theirs) != ours.as_ref()).then_some(())
        })
        .unwrap_or_else(|| panic!("process {pid} did not enter a network namespace of its own"));
        netns::sh_in(pid, false, "ip link set lo up").unwrap_or_else(|e| panic!("{e}"));
        self.ns = PathBuf::from(format!("/proc/{pid}/ns/net"));

        let mut relay = Command::new(relay_bin);
        relay.arg("relay").arg("--netns").arg(&self.ns);
        for a in forwards {
            relay.arg("--forward").arg(format!("{a}={a}"));
        }
        let mut p = Proc::spawn(
            "router relay",
            relay,
            self.dir.path().join("relay.log"),
            true,
        );
        // Listening: a connection to each forwarded port inside the namespace is accepted.
        let ns = self.ns.clone();
        let all = forwards.to_vec();
        let r = controlplane::wait_ready(&mut p, "the relay", || {
            all.iter().all(|a| {
                let a = *a;
                netns::in_netns(&ns, move || {
                    TcpStream::connect_timeout(&a, Duration::from_secs(2))
                })
                .is_ok()
            })
        });
        self.procs.push(p);
        if let Err(e) = r {
            panic!("{e}");
        }
    }

    /// pilot-agent as a router, in the namespace, with mount and PID namespaces of its own:
    /// Istio's wasm cache, `/var/lib/istio/data`, is a private directory bind-mounted there
    /// (over a private tmpfs on `/var/lib` when the host has no such directory, so the host is
    /// never written), and killing it takes Envoy with it.
    fn start_proxy(&mut self, cp: &ControlPlane, xds: SocketAddr) {
        let (namespace, name) = self.gateway.clone();
        let pod = format!("{name}-istio-0");
        let token = cp.kubectl_ok(&[
            "create",
            "token",
            "default",
            "-n",
            &namespace,
            "--audience=istio-ca",
            "--duration=24h",
        ]);
        let dir = self.dir.path();
        let tokens = dir.join("var/run/secrets/tokens");
        fs::create_dir_all(&tokens).expect("token dir");
        fs::write(tokens.join("istio-token"), token.trim()).expect("write token");
        let cache = dir.join("istio-data");
        fs::create_dir_all(&cache).expect("wasm cache dir");
        let proxy_config = json!({
            "discoveryAddress": xds.to_string(),
            "controlPlaneAuthPolicy": "NONE",
            "binaryPath": crate::envoy::envoy_bin(),
            "proxyAdminPort": ADMIN_PORT,
            "concurrency": 1,
            "drainDuration": "1s",
            "terminationDrainDuration": "1s",
        });
        let labels = json!({
            GATEWAY_NAME_LABEL: name,
            "gateway.networking.k8s.io/gateway-class-name": "istio",
            "service.istio.io/canonical-name": format!("{name}-istio"),
        });
        let script = format!(
            "set -e; \
             [ -d /var/lib/istio/data ] || {{ mount -t tmpfs -o mode=755 tmpfs /var/lib && mkdir -p /var/lib/istio/data; }}; \
             mount --bind '{}' /var/lib/istio/data; \
             exec '{}' proxy router --domain {namespace}.svc.cluster.local \
               --proxyLogLevel=warning,wasm:debug",
            cache.display(),
            controlplane::bin("pilot-agent").display()
        );
        let mut cmd = netns::nsenter(
            self.holder_pid(),
            false,
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
                &script,
            ],
        );
        cmd.current_dir(dir)
            .env("PROXY_CONFIG", proxy_config.to_string())
            .env(
                "ISTIO_BOOTSTRAP",
                controlplane::istio_file("envoy_bootstrap.json"),
            )
            .env("POD_NAME", &pod)
            .env("POD_NAMESPACE", &namespace)
            .env("SERVICE_ACCOUNT", "default")
            .env("INSTANCE_IP", ROUTER_IP)
            .env("ISTIO_METAJSON_LABELS", labels.to_string())
            .env("ISTIO_META_WORKLOAD_NAME", format!("{name}-istio"))
            .env("ISTIO_META_POD_PORTS", "[]")
            .envs(crate::sidecar::SIDECAR_ENV.iter().copied());
        let mut p = Proc::spawn(
            &format!("router {namespace}/{name}"),
            cmd,
            dir.join("router.log"),
            true,
        );
        let listener = format!("0.0.0.0_{LISTENER_PORT}");
        let ns = self.ns.clone();
        let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
        let r = controlplane::wait_ready(&mut p, "the router", || {
            get_in(&ns, admin, "/ready").is_ok_and(|r| r.status() == 200)
                && get_in(&ns, admin, "/listeners")
                    .is_ok_and(|r| r.text().lines().any(|l| l.starts_with(&listener)))
        });
        self.procs.push(p);
        if let Err(e) = r {
            panic!("{e}\n(control plane logs)\n{}", cp.logs());
        }
    }

    fn holder_pid(&self) -> u32 {
        self.procs[0].child.id()
    }

    /// The router's network namespace (`/proc/PID/ns/net`).
    pub fn netns(&self) -> &Path {
        &self.ns
    }

    /// `GET path` through the Gateway's listener (port 80 of its Service: the router's
    /// [`LISTENER_PORT`] inside its namespace).
    pub fn get(&self, path: &str) -> io::Result<Message> {
        get_in(
            &self.ns,
            SocketAddr::from(([127, 0, 0, 1], LISTENER_PORT)),
            path,
        )
    }

    /// Poll `GET path` until `check` accepts the response or `deadline` passes; returns the
    /// last response (or the last error) and when it came.
    pub fn get_until(
        &self,
        path: &str,
        deadline: Duration,
        check: impl Fn(&Message) -> bool,
    ) -> Result<Message, String> {
        let mut last = Err("no request made".to_string());
        crate::poll_until(Instant::now() + deadline, || {
            let r = self.get(path).map_err(|e| e.to_string());
            let ok = r.as_ref().is_ok_and(&check);
            last = r;
            ok.then_some(())
        });
        last
    }

    /// A page of Envoy's admin interface (`/config_dump`, `/stats?filter=...`).
    pub fn admin(&self, path: &str) -> io::Result<Message> {
        get_in(
            &self.ns,
            SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
            path,
        )
    }

    /// Everything pilot-agent and Envoy logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("router.log")).unwrap_or_default()
    }

    /// Stop the router, the relay and the namespace's holder (newest first, by pid).
    pub fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            if std::thread::panicking() {
                eprintln!("---- {} log (tail) ----\n{}", p.name, p.tail(60));
            }
            p.kill();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop();
    }
}
