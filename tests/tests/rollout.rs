//! Safe rollouts in envoyFilter delivery, on the real control plane with two "nodes": two node
//! agents (each with its own module directory and pull-secret directory, each reporting what it
//! holds through the API with the agent's service account), two sidecars (each mounting its
//! node's directory), and a Pod object per node (no kubelet runs here: the Pods say which node
//! runs the workload, and stay Pending).
//!
//! The EnvoyFilter names the content-addressed module file; the controller switches it to a new
//! module only when both nodes hold it, so no sidecar is ever told to load a file it lacks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::agent::{self, Agent};
use e2e::controller::Controller;
use e2e::controlplane::ControlPlane;
use e2e::kubelet::{Kubelet, Volume};
use e2e::load::{Load, Report};
use e2e::mesh::*;
use e2e::registry::Registry;
use e2e::sidecar::{Sidecar, Workload};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const USER: &str = "puller";
const PASSWORD: &str = "roll-Out-7";
const NAME: &str = "details-v1-wasmfiltering";

fn dockerconfig(host: &str, password: &str) -> String {
    let auth = agent::base64(&format!("{USER}:{password}"));
    format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#)
}

struct Node {
    name: &'static str,
    dir: PathBuf,
    secrets: PathBuf,
    agent: Option<Agent>,
    sidecar: Option<Sidecar>,
}

impl Node {
    fn start_agent(&mut self, list: &Path, kubeconfig: &Path) {
        let args = [
            &agent::FAST[..],
            &["--grace", "3s", "--node-name", self.name, "--secrets-dir"],
            &[self.secrets.to_str().unwrap()],
        ]
        .concat();
        self.agent = Some(Agent::start_with_env(
            list,
            &self.dir,
            &args,
            &[("KUBECONFIG", kubeconfig)],
        ));
    }
    fn sidecar(&self) -> &Sidecar {
        self.sidecar.as_ref().unwrap()
    }
    fn set_password(&self, host: &str, password: &str) {
        let d = self.secrets.join("regcred");
        fs::create_dir_all(&d).unwrap();
        agent::write_atomic(&d.join(".dockerconfigjson"), &dockerconfig(host, password));
    }
}

fn fd_json(cp: &ControlPlane) -> Value {
    serde_json::from_str(&cp.kubectl_ok(&[
        "get",
        "filterdeployment",
        "-n",
        "default",
        NAME,
        "-o",
        "json",
    ]))
    .unwrap()
}

fn condition(fd: &Value) -> (String, String) {
    let c = fd["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null);
    (
        format!(
            "{}/{}",
            c["status"].as_str().unwrap_or(""),
            c["reason"].as_str().unwrap_or("")
        ),
        c["message"].as_str().unwrap_or("").to_string(),
    )
}

/// The module file the EnvoyFilter names.
fn served_file(cp: &ControlPlane) -> String {
    cp.kubectl_ok(&[
        "get",
        "envoyfilter",
        "-n",
        "default",
        NAME,
        "-o",
        "jsonpath={.spec.configPatches[0].patch.value.typed_config.config.vm_config.code.local.filename}",
    ])
}

/// Poll until `cond` holds on the FilterDeployment, recording every Ready status/reason seen.
fn watch(
    cp: &ControlPlane,
    what: &str,
    seen: &mut Vec<String>,
    deadline: Duration,
    cond: impl Fn(&Value) -> bool,
    c: &Controller,
) -> Value {
    let mut last = Value::Null;
    let ok = e2e::poll_until(Instant::now() + deadline, || {
        last = fd_json(cp);
        let (r, _) = condition(&last);
        if seen.last() != Some(&r) {
            seen.push(r);
        }
        cond(&last).then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: not within {deadline:?}; seen {seen:?}\n{}\n---- controller ----\n{}",
        serde_json::to_string_pretty(&last["status"]).unwrap(),
        c.log()
    );
    last
}

fn loads(nodes: &[Node], class: &str) -> Vec<Load> {
    nodes
        .iter()
        .map(|n| load_from(n.sidecar(), class))
        .collect()
}

fn finish(loads: Vec<Load>, class: &str, n: u64) -> Vec<Report> {
    loads
        .into_iter()
        .map(|l| finish_after(l, class, n))
        .collect()
}

/// Stop the loads once each saw `n` responses of the last class; every request answered, the
/// classes seen in `order`.
fn assert_served(loads: Vec<Load>, order: &[&str], n: u64) {
    for r in finish(loads, order[order.len() - 1], n) {
        r.assert_clean(order);
    }
}

#[test]
fn rollouts_wait_for_every_node_and_never_break_a_request() {
    let v2_wasm = e2e::assemblyscript_wasm();
    let cp = ControlPlane::start();
    let registry = Registry::start_with_htpasswd(USER, PASSWORD);
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    let docker = work.path().join("docker");
    fs::create_dir_all(&docker).unwrap();
    fs::write(docker.join("config.json"), dockerconfig(&host, PASSWORD)).unwrap();
    let push = |module: &Path, root: &str| -> String {
        let m = module.display().to_string();
        let out = wasmctl_in(
            work.path(),
            &[
                "push".into(),
                registry.reference("filters/header-filter:v1"),
                m,
                "--plain-http".into(),
                "-q".into(),
                "--root-id".into(),
                root.into(),
            ],
        );
        out.lines()
            .find_map(|l| l.strip_prefix("digest: "))
            .unwrap()
            .trim()
            .to_string()
    };
    let v1 = push(&e2e::filter_wasm(), "as_filter");

    apply_manifests(&cp);
    cp.create_pull_secret("default", "regcred", &host, USER, PASSWORD);
    let mut nodes: Vec<Node> = ["node-a", "node-b"]
        .into_iter()
        .map(|name| Node {
            name,
            dir: work.path().join(name).join("wasm-filters"),
            secrets: work.path().join(name).join("secrets"),
            agent: None,
            sidecar: None,
        })
        .collect();
    cp.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: default\n",
    )
    .unwrap();
    let deployment = fs::read_to_string(examples().join("bookinfo-details/workload.yaml")).unwrap();
    cp.apply_as("e2e-workloads", &deployment).unwrap();
    for n in &nodes {
        n.set_password(&host, PASSWORD);
        cp.apply_as(
            "e2e-nodes",
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {}\n",
                n.name
            ),
        )
        .unwrap();
        cp.apply_as(
            "e2e-workloads",
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: details-v1-{0}\n  namespace: default\n  labels: {{app: details, version: v1}}\nspec:\n  nodeName: {0}\n  containers:\n  - name: details\n    image: docker.io/istio/examples-bookinfo-details-v1:1.20.3\n",
                n.name
            ),
        )
        .unwrap();
    }
    // A node with no matching workload: its agent holds nothing, and waits for nothing.
    cp.apply_as(
        "e2e-nodes",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-idle\n",
    )
    .unwrap();

    // The kubelet's part: the ConfigMap's content, kept in step in each node's mounted file,
    // beside everything below until the test ends (also on failure).
    let list = work.path().join("images.yaml");
    let _kubelet = Kubelet::start(&cp.kubeconfig, vec![Volume::image_list(&list)]);
    let agent_kc = cp.kubeconfig_for("wasm-system", "wasm-agent");
    for n in nodes.iter_mut() {
        n.start_agent(&list, &agent_kc);
    }
    let args = [&e2e::controller::FAST[..], &["--rollout-timeout", "8s"]].concat();
    let mut controller = Controller::start(&cp, &args);
    let fd = example_with(
        "bookinfo-details",
        &registry,
        "filters/header-filter:v1",
        true,
    )
    .replace("rootId: my_root_id", "rootId: as_filter");
    cp.apply(&fd).unwrap();

    // A. The first version: the EnvoyFilter appears once both nodes hold the module.
    let mut seen = Vec::new();
    let obj = watch(
        &cp,
        "v1 applied",
        &mut seen,
        PROPAGATION,
        |f| condition(f).0 == "True/Applied" && f["status"]["digest"] == v1.as_str(),
        &controller,
    );
    let v1_file = served_file(&cp);
    let v1_sha = v1_file
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".wasm")
        .to_string();
    assert_eq!(v1_sha, agent::sha256_file(&e2e::filter_wasm()), "{obj}");
    for n in nodes.iter_mut() {
        assert!(n.dir.join(format!("{v1_sha}.wasm")).exists());
        // The FilterDeployment selects app and version; the node label keeps each sidecar's
        // own Sidecar resource (its inbound port) apart.
        let labels = [DETAILS, &[("node", n.name)]].concat();
        n.sidecar = Some(Sidecar::start(
            &cp,
            Workload::new("default", &format!("details-v1-{}", n.name), &labels),
            &n.dir,
        ));
        n.sidecar()
            .get_until("/details/0", PROPAGATION, |r| classify(r) == "old");
    }
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n.sidecar().envoy_pid().unwrap())
        .collect();
    let reports = cp.kubectl_ok(&[
        "get",
        "configmap",
        "-n",
        "wasm-system",
        "-l",
        "filters.envoy-wasm-toolkit.io/node-report",
        "-o",
        "name",
    ]);
    assert!(
        reports.contains("wasm-node-node-a") && reports.contains("wasm-node-node-b"),
        "{reports}"
    );

    // B. A re-pushed tag: both nodes get it, the status walks through the rollout, the
    // EnvoyFilter switches, both sidecars serve it; no request fails, no Envoy restarts.
    let load = loads(&nodes, "old");
    let v2 = push(&v2_wasm, "as_filter");
    let mut seen = Vec::new();
    watch(
        &cp,
        "v2 rolled out",
        &mut seen,
        PROPAGATION,
        |f| condition(f).0 == "True/Applied" && f["status"]["digest"] == v2.as_str(),
        &controller,
    );
    assert!(
        seen.iter().any(|s| s == "True/RollingOut"),
        "the status never showed the rollout: {seen:?}"
    );
    assert_served(load, &["old", "new"], 300);
    let v2_sha = agent::sha256_file(&v2_wasm);
    assert_eq!(
        served_file(&cp),
        format!("/var/local/lib/wasm-filters/{v2_sha}.wasm")
    );

    // C. Rollback to v1 by digest: both nodes may still hold it, or pull it again; same way.
    let load = loads(&nodes, "new");
    cp.apply(&fd.replace(
        &registry.reference("filters/header-filter:v1"),
        &registry.reference(&format!("filters/header-filter@{v1}")),
    ))
    .unwrap();
    let mut seen = Vec::new();
    watch(
        &cp,
        "rolled back",
        &mut seen,
        PROPAGATION,
        |f| condition(f).0 == "True/Applied" && f["status"]["digest"] == v1.as_str(),
        &controller,
    );
    assert_served(load, &["new", "old"], 300);
    assert_eq!(served_file(&cp), v1_file);
    // The agents collect v2 once no entry names it (grace 3 s here).
    e2e::poll_until(Instant::now() + PROPAGATION, || {
        nodes
            .iter()
            .all(|n| !n.dir.join(format!("{v2_sha}.wasm")).exists())
            .then_some(())
    })
    .expect("v2 collected on both nodes");

    // D. node-b cannot pull (its credentials broken); back to the tag (v2): node-a gets it,
    // node-b does not, the EnvoyFilter stays on v1, both sidecars keep serving v1, and the
    // status names node-b, then, after the rollout timeout, says Ready=False.
    nodes[1].set_password(&host, "wrong-password");
    let load_d = loads(&nodes, "old");
    cp.apply(&fd).unwrap();
    let mut seen = Vec::new();
    let obj = watch(
        &cp,
        "pending on node-b",
        &mut seen,
        PROPAGATION,
        |f| {
            f["status"]["rollout"]["pendingNodes"] == serde_json::json!(["node-b"])
                && f["status"]["rollout"]["digest"] == v2.as_str()
        },
        &controller,
    );
    assert_eq!(
        obj["status"]["digest"],
        v1.as_str(),
        "v1 serves while node-b is pending"
    );
    e2e::poll_until(Instant::now() + PROPAGATION, || {
        nodes[0]
            .dir
            .join(format!("{v2_sha}.wasm"))
            .exists()
            .then_some(())
    })
    .expect("node-a pulled v2");
    let obj = watch(
        &cp,
        "stalled",
        &mut seen,
        PROPAGATION,
        |f| condition(f).0 == "False/RolloutStalled",
        &controller,
    );
    let (_, message) = condition(&obj);
    assert!(
        message.contains("node-b") && !message.contains("node-a") && !message.contains("node-idle"),
        "{message}"
    );
    assert_eq!(
        served_file(&cp),
        v1_file,
        "the EnvoyFilter moved while node-b lacked the module"
    );
    assert_served(load_d, &["old"], 0);

    // E. Mid-rollout restarts: the controller and node-a's agent. Nothing a live EnvoyFilter
    // names is deleted.
    controller.kill();
    let mut a = nodes[0].agent.take().unwrap();
    a.terminate();
    controller = Controller::start(&cp, &args);
    nodes[0].start_agent(&list, &agent_kc);
    for n in &nodes {
        assert!(
            n.dir.join(format!("{v1_sha}.wasm")).exists(),
            "{}: the served module is gone",
            n.name
        );
    }

    // F. The fault removed: node-b pulls, the rollout completes, both serve v2.
    let load = loads(&nodes, "old");
    nodes[1].set_password(&host, PASSWORD);
    let mut seen = Vec::new();
    watch(
        &cp,
        "v2 after the fault",
        &mut seen,
        PROPAGATION,
        |f| condition(f).0 == "True/Applied" && f["status"]["digest"] == v2.as_str(),
        &controller,
    );
    assert_served(load, &["old", "new"], 300);
    assert_eq!(
        served_file(&cp),
        format!("/var/local/lib/wasm-filters/{v2_sha}.wasm")
    );
    let now: Vec<u32> = nodes
        .iter()
        .map(|n| n.sidecar().envoy_pid().unwrap())
        .collect();
    assert_eq!(now, pids, "an Envoy was restarted");
    let idle = cp.kubectl(&[
        "get",
        "configmap",
        "-n",
        "wasm-system",
        "wasm-node-node-idle",
    ]);
    assert!(
        !idle.status.success(),
        "no agent runs on node-idle, and it held nothing back"
    );
}
