//! The real control plane for a test: etcd, kube-apiserver, kube-controller-manager and istiod,
//! built from their Go modules by `scripts/control-plane-build` (pins in
//! `controlplane/versions.env`), started on 127.0.0.1 with free ports, each waited for with a
//! deadline, and stopped by process id when the [`ControlPlane`] is dropped (also when the test
//! fails, when the tail of every log is printed). `scripts/control-plane up DIR` runs the same
//! code and leaves the processes running for a person.
//!
//! Nothing here is simulated: the API server validates against the real CRD schemas (Istio's
//! from the pinned module), istiod translates the resources into xDS, and the sidecars in
//! [`crate::sidecar`] are Envoys started by Istio's own pilot-agent. This control plane alone has
//! no nodes: a workload is an app process plus a sidecar whose labels come from the proxy's
//! metadata, which makes the tests on it fast and lets them break one "node" at a time. The
//! same control plane with real nodes, Pods and an in-cluster istiod is [`crate::cluster`].
//!
//! ```no_run
//! let cp = e2e::controlplane::ControlPlane::start();
//! let crds = cp.kubectl_ok(&["get", "crd", "-o", "name"]);
//! assert!(crds.contains("envoyfilters.networking.istio.io"));
//! ```

use serde_json::json;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long each component may take to become ready (a cold API server on a loaded 2-core
/// machine takes about ten seconds).
pub const READY_DEADLINE: Duration = Duration::from_secs(90);

/// The namespace istiod runs in (and takes its root namespace from).
pub const ISTIO_NAMESPACE: &str = "istio-system";

/// The admin's bearer token in the API server's static token file: a test credential for a
/// loopback-only server that lives as long as the test.
const ADMIN_TOKEN: &str = "e2e-admin-token";

/// The directory holding the control plane's binaries and Istio's files for the pinned
/// versions, built (once per machine) by `scripts/control-plane-build` when missing.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| script_output("scripts/control-plane-build"))
}

/// Run a build script of the repository (`scripts/...`) and return the directory it prints.
pub(crate) fn script_output(script: &str) -> PathBuf {
    let path = crate::workspace_root().join(script);
    let out = Command::new(&path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} failed with {}",
        path.display(),
        out.status
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A binary of the control plane (`etcd`, `kube-apiserver`, `kubectl`, `pilot-agent`, ...).
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A file of the pinned Istio module that the build copied beside the binaries
/// (`crd-all.gen.yaml`, `envoy_bootstrap.json`).
pub fn istio_file(name: &str) -> PathBuf {
    bin_dir().join("istio").join(name)
}

/// A free port on 127.0.0.1 (the kernel's choice; a race with another process is possible
/// until the server binds it, and each start below retries on that).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether a component's HTTPS `/healthz` on 127.0.0.1:`port` answers 200 (its certificate is
/// self-signed).
fn healthz(port: u16) -> bool {
    Command::new("curl")
        .args(["-skf", "-o", "/dev/null"])
        .arg(format!("https://127.0.0.1:{port}/healthz"))
        .status()
        .is_ok_and(|s| s.success())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A started process, its log file, and whether it is ours to stop.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Start `cmd` with stdout and stderr into `log`. With `tied`, the process gets SIGKILL when
    /// the thread that started it ends (`setpriv --pdeathsig`), so a test that dies without
    /// unwinding leaves nothing running; `scripts/control-plane up` starts it untied.
    pub(crate) fn spawn(name: &str, cmd: Command, log: PathBuf, tied: bool) -> Proc {
        let file = fs::File::create(&log).expect("log file");
        let program = cmd.get_program().to_owned();
        let mut real = if tied {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(&program);
            c.args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            if let Some(d) = cmd.get_current_dir() {
                c.current_dir(d);
            }
            c
        } else {
            cmd
        };
        let child = real
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.to_string_lossy()));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// `Some(reason)` once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(format!("{} exited with {s}", self.name)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.name)),
        }
    }

    /// The last `lines` lines of its log.
    pub(crate) fn tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL and wait.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `ready` until it returns true, failing with `what`, the reason the process gave (if it
/// exited) and its log's tail when `proc` exits or the deadline passes.
pub(crate) fn wait_ready(
    proc: &mut Proc,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_DEADLINE;
    crate::poll_until(deadline, || {
        if let Some(e) = proc.exited() {
            return Some(Err(e));
        }
        ready().then_some(Ok(()))
    })
    .unwrap_or_else(|| Err(format!("{what} not ready within {READY_DEADLINE:?}")))
    .map_err(|e| format!("{e}\n---- {} log (tail) ----\n{}", proc.name, proc.tail(40)))
}

/// Where the control plane listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// kube-apiserver (HTTPS).
    pub api: SocketAddr,
    /// istiod's plaintext xDS (gRPC).
    pub xds: SocketAddr,
    /// istiod's HTTP server (`/ready`, `/debug/configz`, `/debug/syncz`).
    pub istiod_http: SocketAddr,
    /// istiod's monitoring port (`/metrics`).
    pub istiod_monitoring: SocketAddr,
    /// etcd's client URL.
    pub etcd: SocketAddr,
}

/// How the API server serves real nodes and Pods ([`crate::cluster`]): they reach it at
/// `advertise:api_port` (the relay in the cluster's router namespace carries that to 127.0.0.1),
/// kubelets and kube-proxy present static tokens, and the API server reaches kubelets and Pods
/// through `egress`, an HTTP CONNECT proxy on a Unix socket (the Konnectivity egress mode) that
/// dials inside the cluster's network.
#[derive(Debug, Clone)]
pub struct NodeAccess {
    /// The API server's address for nodes and Pods: the `kubernetes` Service's endpoint.
    pub advertise: std::net::Ipv4Addr,
    /// Its port, chosen before it starts (the relay listens on the same port at `advertise`).
    pub api_port: u16,
    /// The egress proxy's Unix socket.
    pub egress: PathBuf,
    /// Static bearer tokens: (token, user, comma-separated groups).
    pub tokens: Vec<(String, String, String)>,
    /// The Pods' address range (every node's range lies inside it).
    pub cluster_cidr: String,
}

impl NodeAccess {
    /// A CA (`pki/ca.{key,crt}`), the API server's serving certificate for every address it is
    /// reached at, its client certificate for kubelets, the egress configuration; and the
    /// flags naming them.
    fn apiserver_flags(&self, pki: &Path, cmd: &mut Command) -> Result<(), String> {
        crate::self_signed(pki, "/CN=envoy-wasm-toolkit cluster CA", "ca.key", "ca.crt");
        crate::ca_signed(
            pki,
            ("ca.key", "ca.crt"),
            "/CN=kube-apiserver",
            ("apiserver.key", "apiserver.crt"),
            &format!(
                "subjectAltName=IP:127.0.0.1,IP:{},IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
                self.advertise
            ),
        );
        crate::ca_signed(
            pki,
            ("ca.key", "ca.crt"),
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            ("kubelet-client.key", "kubelet-client.crt"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        let egress = pki.join("egress.yaml");
        fs::write(
            &egress,
            format!(
                "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      uds:\n        udsName: {}\n",
                self.egress.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let path = |f: &str| pki.join(f).display().to_string();
        cmd.arg(format!("--advertise-address={}", self.advertise))
            .arg(format!("--tls-cert-file={}", path("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", path("apiserver.key")))
            .arg(format!("--client-ca-file={}", path("ca.crt")))
            .arg(format!(
                "--kubelet-client-certificate={}",
                path("kubelet-client.crt")
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                path("kubelet-client.key")
            ))
            .arg(format!(
                "--egress-selector-config-file={}",
                egress.display()
            ))
            .args([
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--endpoint-reconciler-type=lease",
                // Webhooks and aggregated APIs by their Pods' addresses: the egress proxy
                // reaches Pods; Service addresses exist only where kube-proxy runs (the nodes).
                "--enable-aggregator-routing=true",
                // Kubelets by address: their host names resolve nowhere.
                "--kubelet-preferred-address-types=InternalIP",
            ]);
        Ok(())
    }
}

/// A running control plane.
pub struct ControlPlane {
    procs: Vec<Proc>,
    dir: PathBuf,
    nodes: Option<NodeAccess>,
    audit: Option<String>,
    _temp: Option<tempfile::TempDir>,
    /// Its addresses.
    pub endpoints: Endpoints,
    /// The admin kubeconfig (`DIR/kubeconfig`).
    pub kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Start one in a temporary directory, tied to the calling thread; stopped on drop.
    pub fn start() -> ControlPlane {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut cp = ControlPlane::start_in(temp.path(), true).unwrap_or_else(|e| panic!("{e}"));
        cp._temp = Some(temp);
        cp
    }

    /// Start one whose files (data, logs, kubeconfig, `env`) live in `dir`. `tied`: see
    /// [`Proc::spawn`]. On failure everything started so far is stopped.
    pub fn start_in(dir: &Path, tied: bool) -> Result<ControlPlane, String> {
        ControlPlane::start_with(dir, tied, None, None)
    }

    /// [`ControlPlane::start_in`] for a cluster of real nodes ([`crate::cluster`]): the API
    /// server as `nodes` describes it (its address for nodes and Pods, node credentials, the
    /// egress proxy to kubelets), kube-scheduler beside the controller manager, and no istiod
    /// (the cluster installs it as a Pod).
    pub fn start_for_nodes(
        dir: &Path,
        tied: bool,
        nodes: NodeAccess,
    ) -> Result<ControlPlane, String> {
        ControlPlane::start_with(dir, tied, Some(nodes), None)
    }

    /// [`ControlPlane::start_in`] with the API server writing an audit log
    /// ([`ControlPlane::audit_log`], JSON lines) under the audit `policy` (an `audit.k8s.io/v1`
    /// `Policy` in YAML): who asked for what, request by request (the benchmarks count a
    /// client's requests with it; the API server's own metrics do not tell clients apart).
    pub fn start_audited(dir: &Path, tied: bool, policy: &str) -> Result<ControlPlane, String> {
        ControlPlane::start_with(dir, tied, None, Some(policy.to_string()))
    }

    fn start_with(
        dir: &Path,
        tied: bool,
        nodes: Option<NodeAccess>,
        audit: Option<String>,
    ) -> Result<ControlPlane, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dir = dir.canonicalize().map_err(|e| e.to_string())?;
        let mut cp = ControlPlane {
            procs: Vec::new(),
            kubeconfig: dir.join("kubeconfig"),
            nodes: nodes.clone(),
            audit,
            dir,
            _temp: None,
            endpoints: Endpoints {
                api: loopback(0),
                xds: loopback(0),
                istiod_http: loopback(0),
                istiod_monitoring: loopback(0),
                etcd: loopback(0),
            },
        };
        cp.start_etcd(tied)?;
        cp.start_apiserver(tied)?;
        cp.start_controller_manager(tied)?;
        if cp.nodes.is_some() {
            cp.start_scheduler(tied)?;
        }
        cp.install_istio_base()?;
        if cp.nodes.is_none() {
            cp.start_istiod(tied)?;
        }
        fs::write(cp.dir.join("env"), cp.env_lines()).map_err(|e| e.to_string())?;
        fs::write(
            cp.dir.join("pids"),
            cp.procs
                .iter()
                .map(|p| format!("{} {}\n", p.child.id(), p.name))
                .collect::<String>(),
        )
        .map_err(|e| e.to_string())?;
        Ok(cp)
    }

    /// The directory of its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id of the component `name` (`etcd`, `kube-apiserver`, `istiod`, ...).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// The API server's audit log (written only when started by [`ControlPlane::start_audited`]).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// The shell lines of `DIR/env`: `KUBECONFIG`, `ISTIOD_XDS`, `ISTIOD_HTTP`, `PATH` with the
    /// control plane's binaries (kubectl, istioctl) first.
    pub fn env_lines(&self) -> String {
        let e = &self.endpoints;
        format!(
            "export KUBECONFIG={}\nexport ISTIOD_XDS={}\nexport ISTIOD_HTTP={}\nexport ISTIOD_MONITORING={}\nexport KUBE_APISERVER=https://{}\nexport PATH={}:$PATH\n",
            self.kubeconfig.display(),
            e.xds,
            e.istiod_http,
            e.istiod_monitoring,
            e.api,
            bin_dir().display()
        )
    }

    fn fail(&mut self, e: String) -> String {
        self.stop();
        e
    }

    fn start_etcd(&mut self, tied: bool) -> Result<(), String> {
        let (client, peer) = (free_port(), free_port());
        let mut cmd = Command::new(bin("etcd"));
        cmd.arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .args(["--name", "e2e"])
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=e2e=http://127.0.0.1:{peer}"))
            // A test's data dies with it: no fsync, as envtest runs etcd.
            .args(["--unsafe-no-fsync", "--log-level", "warn"]);
        let mut p = Proc::spawn("etcd", cmd, self.dir.join("etcd.log"), tied);
        self.endpoints.etcd = loopback(client);
        let r = wait_ready(&mut p, "etcd", || {
            crate::http1::get(loopback(client), "/health", &[])
                .is_ok_and(|r| r.status() == 200 && r.text().contains("true"))
        });
        self.procs.push(p);
        r.map_err(|e| self.fail(e))
    }

    fn start_apiserver(&mut self, tied: bool) -> Result<(), String> {
        let pki = self.dir.join("pki");
        fs::create_dir_all(&pki).map_err(|e| e.to_string())?;
        // The service-account signing key pair, and the admin's static token.
        crate::openssl(&pki, &["genrsa", "-out", "sa.key", "2048"]);
        crate::openssl(&pki, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        let mut tokens = format!("{ADMIN_TOKEN},admin,admin,\"system:masters\"\n");
        if let Some(n) = &self.nodes {
            for (token, user, groups) in &n.tokens {
                tokens.push_str(&format!("{token},{user},{user},\"{groups}\"\n"));
            }
        }
        fs::write(pki.join("tokens.csv"), tokens).map_err(|e| e.to_string())?;
        let port = self.nodes.as_ref().map_or_else(free_port, |n| n.api_port);
        let mut cmd = Command::new(bin("kube-apiserver"));
        cmd.arg(format!("--etcd-servers=http://{}", self.endpoints.etcd))
            .arg(format!("--secure-port={port}"))
            .args([
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--bind-address=127.0.0.1",
            ]);
        let serving_ca = match &self.nodes {
            None => {
                cmd.arg("--cert-dir").arg(pki.join("serving")).args([
                    "--advertise-address=127.0.0.1",
                    "--authorization-mode=RBAC",
                    "--endpoint-reconciler-type=none",
                ]);
                pki.join("serving/apiserver.crt")
            }
            Some(n) => {
                n.apiserver_flags(&pki, &mut cmd)?;
                pki.join("ca.crt")
            }
        };
        cmd.arg(format!(
            "--token-auth-file={}",
            pki.join("tokens.csv").display()
        ))
        .arg(format!("--service-account-issuer=https://127.0.0.1:{port}"))
        .arg(format!(
            "--service-account-key-file={}",
            pki.join("sa.pub").display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki.join("sa.key").display()
        ))
        .args(["--v=0"]);
        if let Some(policy) = &self.audit {
            let file = pki.join("audit-policy.yaml");
            fs::write(&file, policy).map_err(|e| e.to_string())?;
            cmd.arg(format!("--audit-policy-file={}", file.display()))
                .arg(format!("--audit-log-path={}", self.audit_log().display()))
                .args(["--audit-log-format=json", "--audit-log-maxsize=0"]);
        }
        let mut p = Proc::spawn(
            "kube-apiserver",
            cmd,
            self.dir.join("kube-apiserver.log"),
            tied,
        );
        self.endpoints.api = loopback(port);
        // The self-signed serving certificate is written at startup: the kubeconfig trusts it
        // (or the cluster's CA, which signed the serving certificate).
        self.write_kubeconfig(&serving_ca);
        let r = wait_ready(&mut p, "kube-apiserver", || {
            serving_ca.exists() && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        self.procs.push(p);
        r.map_err(|e| self.fail(e))
    }

    fn write_kubeconfig(&self, ca: &Path) {
        let kc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": format!("https://{}", self.endpoints.api),
                "certificate-authority": ca,
            }}],
            "users": [{"name": "admin", "user": {"token": ADMIN_TOKEN}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
            "current-context": "e2e",
        });
        fs::write(
            &self.kubeconfig,
            serde_json::to_vec_pretty(&kc).expect("json"),
        )
        .expect("write kubeconfig");
    }

    /// A kubeconfig that authenticates as the service account `namespace/name` (a token from
    /// the TokenRequest API, valid for an hour): what a Pod running as it would present.
    pub fn kubeconfig_for(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=1h"]);
        let text = fs::read_to_string(&self.kubeconfig).expect("read kubeconfig");
        let mut kc: serde_json::Value = serde_json::from_str(&text).expect("kubeconfig json");
        kc["users"][0]["user"] = json!({"token": token.trim()});
        let path = self.dir.join(format!("kubeconfig-{namespace}-{name}"));
        fs::write(&path, serde_json::to_vec_pretty(&kc).expect("json")).expect("write kubeconfig");
        path
    }

    fn start_controller_manager(&mut self, tied: bool) -> Result<(), String> {
        let port = free_port();
        let kc = self.kubeconfig.display().to_string();
        let mut cmd = Command::new(bin("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={kc}"))
            .arg(format!("--authentication-kubeconfig={kc}"))
            .arg(format!("--authorization-kubeconfig={kc}"))
            .args(["--bind-address=127.0.0.1", "--leader-elect=false"])
            .arg(format!("--secure-port={port}"))
            .arg("--cert-dir")
            .arg(self.dir.join("pki/kcm"))
            .arg(format!(
                "--root-ca-file={}",
                self.dir
                    .join(match self.nodes {
                        None => "pki/serving/apiserver.crt",
                        Some(_) => "pki/ca.crt",
                    })
                    .display()
            ))
            .arg(format!(
                "--service-account-private-key-file={}",
                self.dir.join("pki/sa.key").display()
            ))
            .args(["--service-cluster-ip-range=10.0.0.0/24", "--v=0"]);
        if let Some(n) = &self.nodes {
            // Nodes are registered with their Pod ranges (see `crate::cluster`); the
            // controller manager only needs to know the whole.
            cmd.arg(format!("--cluster-cidr={}", n.cluster_cidr))
                .arg("--allocate-node-cidrs=false");
        }
        let mut p = Proc::spawn(
            "kube-controller-manager",
            cmd,
            self.dir.join("kube-controller-manager.log"),
            tied,
        );
        let r = wait_ready(&mut p, "kube-controller-manager", || healthz(port));
        self.procs.push(p);
        r.map_err(|e| self.fail(e))
    }

    fn start_scheduler(&mut self, tied: bool) -> Result<(), String> {
        let port = free_port();
        let kc = self.kubeconfig.display().to_string();
        let mut cmd = Command::new(bin("kube-scheduler"));
        cmd.arg(format!("--kubeconfig={kc}"))
            .arg(format!("--authentication-kubeconfig={kc}"))
            .arg(format!("--authorization-kubeconfig={kc}"))
            .args(["--bind-address=127.0.0.1", "--leader-elect=false"])
            .arg(format!("--secure-port={port}"))
            .arg("--cert-dir")
            .arg(self.dir.join("pki/scheduler"))
            .args(["--v=0"]);
        let mut p = Proc::spawn(
            "kube-scheduler",
            cmd,
            self.dir.join("kube-scheduler.log"),
            tied,
        );
        let r = wait_ready(&mut p, "kube-scheduler", || healthz(port));
        self.procs.push(p);
        r.map_err(|e| self.fail(e))
    }

    fn install_istio_base(&mut self) -> Result<(), String> {
        let crds = istio_file("crd-all.gen.yaml");
        let steps: [&[&str]; 3] = [
            &["create", "namespace", ISTIO_NAMESPACE],
            &[
                "apply",
                "--server-side",
                "-f",
                crds.to_str().expect("utf-8 path"),
            ],
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd",
                "--all",
            ],
        ];
        for args in steps {
            let out = self.kubectl(args);
            if !out.status.success() {
                let e = format!(
                    "kubectl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
                return Err(self.fail(e));
            }
        }
        // Mesh-wide plaintext: sidecars here hold no workload certificates, and a PERMISSIVE
        // listener would wait for them forever.
        self.apply(PEER_AUTHENTICATION).map_err(|e| self.fail(e))?;
        Ok(())
    }

    fn start_istiod(&mut self, tied: bool) -> Result<(), String> {
        let (xds, http, monitoring) = (free_port(), free_port(), free_port());
        let mesh = self.dir.join("mesh.yaml");
        fs::write(&mesh, mesh_config(loopback(xds))).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin("pilot-discovery"));
        cmd.arg("discovery")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--meshConfig={}", mesh.display()))
            .arg(format!("--grpcAddr=127.0.0.1:{xds}"))
            .arg(format!("--httpAddr=127.0.0.1:{http}"))
            .arg(format!("--monitoringAddr=127.0.0.1:{monitoring}"))
            .args([
                "--secureGRPCAddr=",
                "--httpsAddr=",
                "--ctrlz_address=127.0.0.1",
            ])
            .arg(format!("--ctrlz_port={}", free_port()))
            .args(["--clusterID=Kubernetes", "--domain=cluster.local"])
            .args(["--log_output_level=default:info"])
            .current_dir(&self.dir)
            .envs(ISTIOD_ENV.iter().copied())
            .env("POD_NAMESPACE", ISTIO_NAMESPACE)
            .env("POD_NAME", "istiod-e2e");
        let mut p = Proc::spawn("istiod", cmd, self.dir.join("istiod.log"), tied);
        self.endpoints.xds = loopback(xds);
        self.endpoints.istiod_http = loopback(http);
        self.endpoints.istiod_monitoring = loopback(monitoring);
        let r = wait_ready(&mut p, "istiod", || {
            crate::http1::get(loopback(http), "/ready", &[]).is_ok_and(|r| r.status() == 200)
        });
        self.procs.push(p);
        r.map_err(|e| self.fail(e))
    }

    /// Run the pinned `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    /// [`ControlPlane::kubectl`] with `input` on its standard input (`-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(bin("kubectl"))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(text) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(text.as_bytes())
                .expect("write kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// `kubectl create secret docker-registry NAME` in `namespace` for `server`.
    pub fn create_pull_secret(
        &self,
        namespace: &str,
        name: &str,
        server: &str,
        user: &str,
        password: &str,
    ) {
        self.kubectl_ok(&[
            "create",
            "secret",
            "docker-registry",
            name,
            "-n",
            namespace,
            &format!("--docker-server={server}"),
            &format!("--docker-username={user}"),
            &format!("--docker-password={password}"),
        ]);
    }

    /// `kubectl ARGS`, failing the test with its error output unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply --server-side -f -` of `yaml` as field manager `e2e`; returns stdout, or
    /// stderr as the error.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        self.apply_as("e2e", yaml)
    }

    /// [`ControlPlane::apply`] as field manager `manager`: server-side apply drops the fields a
    /// manager owned and no longer sends, so each source of fields applies under its own name.
    pub fn apply_as(&self, manager: &str, yaml: &str) -> Result<String, String> {
        let manager = format!("--field-manager={manager}");
        let out = self.kubectl_stdin(&["apply", "--server-side", &manager, "-f", "-"], Some(yaml));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// istiod's `/debug/configz`: every config resource istiod holds, as JSON.
    pub fn istiod_configz(&self) -> serde_json::Value {
        let r = crate::http1::get(self.endpoints.istiod_http, "/debug/configz", &[])
            .expect("istiod /debug/configz");
        serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null)
    }

    /// The tail of every component's log.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                format!(
                    "---- {} ({}) ----\n{}\n",
                    p.name,
                    p.log.display(),
                    p.tail(30)
                )
            })
            .collect()
    }

    /// Leave the processes running (for `scripts/control-plane up`): their pids stay in
    /// `DIR/pids` for `scripts/control-plane down`.
    pub fn detach(mut self) {
        self.procs.clear();
        self._temp = None;
    }

    /// Stop every process, newest first.
    pub fn stop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        while let Some(mut p) = self.procs.pop() {
            p.kill();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// istiod's environment: the upstream Envoy that serves as the sidecar here is not Istio's proxy
/// build and rejects Istio's own filters (`istio.alpn`, `istio.metadata_exchange`, `istio.stats`),
/// so istiod is told not to send them; no CA, no webhooks (nothing runs in a Pod to need them).
///
/// Plaintext xDS streams are authenticated (`XDS_AUTH_PLAINTEXT`): each sidecar presents its
/// service account's token, as a Pod's does, so that istiod trusts it with the image pull
/// secrets its WasmPlugins name.
pub const ISTIOD_ENV: [(&str, &str); 8] = [
    ("XDS_AUTH_PLAINTEXT", "true"),
    ("PILOT_ENABLE_ALPN_FILTER", "false"),
    ("PILOT_ENABLE_METADATA_EXCHANGE", "false"),
    ("ENABLE_CA_SERVER", "false"),
    ("INJECT_ENABLED", "false"),
    ("INJECTION_WEBHOOK_CONFIG_NAME", ""),
    ("VALIDATION_WEBHOOK_CONFIG_NAME", ""),
    ("ENABLE_LEADER_ELECTION", "false"),
];

/// The mesh-wide `PeerAuthentication` with mTLS off.
pub const PEER_AUTHENTICATION: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: DISABLE
";

/// The mesh configuration: sidecars find istiod at `xds` in plaintext; no auto mTLS (the
/// sidecars have no certificates); no telemetry filters (see [`ISTIOD_ENV`]).
pub fn mesh_config(xds: SocketAddr) -> String {
    format!(
        "enableAutoMtls: false\n\
         enablePrometheusMerge: false\n\
         enableTracing: false\n\
         defaultConfig:\n  discoveryAddress: {xds}\n  controlPlaneAuthPolicy: NONE\n"
    )
}
