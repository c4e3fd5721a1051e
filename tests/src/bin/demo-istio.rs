//! `make demo-istio`: the toolkit on a real control plane. etcd, kube-apiserver,
//! kube-controller-manager and istiod (built from their Go modules) start on 127.0.0.1; the
//! header filter is pushed to a registry; `wasmctl render | kubectl apply` deploys it to bookinfo's
//! details-v1, whose sidecar is an Envoy started by Istio's pilot-agent (no Pod: no kubelet runs
//! here). Both delivery modes are shown, each with an update that reaches the same Envoy:
//! envoyFilter (the node agent puts the module on the node) and wasmPlugin (pilot-agent pulls the
//! image). Everything is stopped on the way out, also on failure.

use e2e::agent::{Agent, FAST, wasmctl, write_atomic};
use e2e::controlplane::{self, ControlPlane};
use e2e::http1::Upstream;
use e2e::registry::Registry;
use e2e::sidecar::{Sidecar, Workload};
use e2e::transcript::{curl, has, indent, step, wait};
use std::fs;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

const DETAILS: &str =
    r#"{"id":0,"author":"William Shakespeare","year":1595,"type":"paperback","pages":200}"#;
const PROPAGATION: Duration = Duration::from_secs(60);

/// `kubectl ARGS` (input on stdin if any), shown and printed.
fn kubectl(
    cp: &ControlPlane,
    shown: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, String> {
    println!("$ {shown}");
    let out = cp.kubectl_stdin(args, input);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    indent(&text);
    if text.trim().is_empty() {
        indent(&String::from_utf8_lossy(&out.stderr));
    }
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{shown}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `wasmctl render --plain-http FILES | kubectl apply --server-side -f -`, shown and printed.
fn render_apply(cp: &ControlPlane, files: &[&Path]) -> Result<(), String> {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut args = vec!["render", "--plain-http"];
    args.extend(names.iter().map(String::as_str));
    let rendered = wasmctl(&args);
    kubectl(
        cp,
        &format!(
            "wasmctl render --plain-http {} | kubectl apply --server-side -f -",
            names.join(" ")
        ),
        &[
            "apply",
            "--server-side",
            "--field-manager=wasmctl-demo",
            "-f",
            "-",
        ],
        Some(&rendered),
    )
    .map(drop)
}

/// The example's FilterDeployment, with its image in the local registry, no pull secret (the
/// registry is anonymous), and the edits given.
fn example(dir: &Path, name: &str, image: &str, edits: &[(&str, &str)]) -> Result<String, String> {
    let path = e2e::workspace_root()
        .join("manifests/examples")
        .join(name)
        .join("filterdeployment.yaml");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::new();
    for line in text
        .lines()
        .filter(|l| !l.trim_start().starts_with("pullSecret:"))
    {
        let t = line.trim_start();
        match t.strip_prefix("image:") {
            Some(_) => out.push_str(&format!(
                "{}image: {image}\n",
                &line[..line.len() - t.len()]
            )),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    for (from, to) in edits {
        out = out.replace(from, to);
    }
    fs::write(dir, &out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Print that the sidecar's Envoy is still process `pid`, or fail.
fn same_envoy(details: &Sidecar, pid: u32) -> Result<(), String> {
    match details.envoy_pid() {
        Some(now) if now == pid => {
            println!("    same Envoy process: pid {now}");
            Ok(())
        }
        other => Err(format!("the sidecar's Envoy was pid {pid}, now {other:?}")),
    }
}

fn run() -> Result<(), String> {
    step("building header_filter.wasm (v1), the AssemblyScript example (v2) and the control plane");
    let v1 = e2e::filter_wasm();
    let v2 = e2e::assemblyscript_wasm();
    println!("    wasmctl {}", e2e::wasmctl_bin().display());
    println!(
        "    control plane binaries: {}",
        controlplane::bin_dir().display()
    );

    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cp = ControlPlane::start_in(&work.path().join("control-plane"), true)?;
    let e = &cp.endpoints;
    step(&format!(
        "control plane on 127.0.0.1: etcd {}, kube-apiserver https://{}, istiod xDS {} (HTTP {})",
        e.etcd, e.api, e.xds, e.istiod_http
    ));
    indent(&fs::read_to_string(cp.dir().join("env")).unwrap_or_default());
    let crds = cp.kubectl_ok(&["get", "crd", "-o", "name"]);
    println!(
        "$ kubectl get crd -o name | grep -c istio.io\n    {}",
        crds.lines().filter(|l| l.contains("istio.io")).count()
    );

    let registry = Registry::start();
    let reference = registry.reference("filters/header-filter:v1");
    step(&format!("registry on {}; push v1", registry.addr));
    println!(
        "$ wasmctl push {reference} {} --root-id my_root_id --plain-http",
        v1.display()
    );
    let pushed = wasmctl(&[
        "push",
        &reference,
        &v1.to_string_lossy(),
        "--root-id",
        "my_root_id",
        "--plain-http",
        "-q",
    ]);
    indent(&pushed);
    let v1_pinned = pushed
        .lines()
        .find_map(|l| l.strip_prefix("pinned: "))
        .ok_or("push printed no pinned reference")?
        .trim()
        .to_string();

    step("the CRD and the node agent's manifests");
    let manifests = e2e::workspace_root().join("manifests");
    kubectl(
        &cp,
        "kubectl apply --server-side -k manifests/",
        &[
            "apply",
            "--server-side",
            "--field-manager=wasmctl-demo",
            "-k",
            &manifests.to_string_lossy(),
        ],
        None,
    )?;

    step("envoyFilter delivery: render bookinfo-details and apply");
    let fd = work.path().join("filterdeployment.yaml");
    let workload = e2e::workspace_root().join("manifests/examples/bookinfo-details/workload.yaml");
    indent(&example(&fd, "bookinfo-details", &reference, &[])?);
    render_apply(&cp, &[&fd, &workload])?;

    let node = work.path().join("node");
    let list = e2e::mesh::image_list_text(&cp);
    let list_file = work.path().join("images.yaml");
    write_atomic(&list_file, &list);
    let agent = Agent::start(&list_file, &node, &FAST);
    step(&format!(
        "node agent (pid {}) on the ConfigMap's image list (written to {} as the kubelet mounts it), modules in {}",
        agent.pid(),
        list_file.display(),
        node.display()
    ));
    wait("the module on the node", PROPAGATION, || {
        node.join("default.details-v1-wasmfiltering.wasm").exists()
    })?;
    indent(&agent.events("updated").join("\n"));

    let app = Upstream::serving(&[("content-type", "application/json")], Some(DETAILS));
    let details = Sidecar::start_with_app(
        &cp,
        Workload::new(
            "default",
            "details-v1-7d8f9c",
            &[("app", "details"), ("version", "v1")],
        ),
        &node,
        app,
    );
    let pid = details
        .envoy_pid()
        .ok_or("the sidecar's Envoy is not running")?;
    step(&format!(
        "workload default/details-v1-7d8f9c (app=details, version=v1): app on {}, sidecar by pilot-agent, Envoy pid {pid}, inbound {}; {} mounted at /var/local/lib/wasm-filters",
        details.app.addr(),
        details.inbound,
        node.display()
    ));
    let url = format!("http://{}/details/0", details.inbound);
    let hello = |v: &str| {
        let v = v.to_string();
        move |r: &e2e::http1::Message| r.header("hello") == Some(v.as_str())
    };
    details.get_until("/details/0", PROPAGATION, hello("hello details"));
    if !has(&curl(&url)?, "hello: hello details") {
        return Err("envoyFilter: the response lacks hello: hello details".into());
    }

    step("new parameters: render and apply again");
    example(
        &fd,
        "bookinfo-details",
        &reference,
        &[("hello details", "hello details, v2 parameters")],
    )?;
    render_apply(&cp, &[&fd, &workload])?;
    let took = wait("the new parameters in the sidecar", PROPAGATION, || {
        hello("hello details, v2 parameters")(&details.get("/details/0"))
    })?;
    println!("    served {took:.1?} after the apply");
    let t = curl(&url)?;
    same_envoy(&details, pid)?;
    if !has(&t, "hello: hello details, v2 parameters") {
        return Err("envoyFilter update: the response lacks the new header".into());
    }

    step("wasmPlugin delivery: replace the EnvoyFilter with the WasmPlugin example");
    kubectl(
        &cp,
        "kubectl delete envoyfilter details-v1-wasmfiltering",
        &["delete", "envoyfilter", "details-v1-wasmfiltering"],
        None,
    )?;
    let port = format!("port: {}", details.inbound.port());
    println!(
        "    (placement.port: the sidecar's inbound port, {})",
        details.inbound.port()
    );
    indent(&example(
        &fd,
        "bookinfo-details-wasmplugin",
        &reference,
        &[("port: 9080", &port)],
    )?);
    render_apply(&cp, &[&fd])?;
    let took = wait("the WasmPlugin in the sidecar", PROPAGATION, || {
        let r = details.get("/details/0");
        hello("hello details")(&r)
    })?;
    println!("    served {took:.1?} after the apply; pilot-agent's log:");
    indent(
        &details
            .log()
            .lines()
            .filter(|l| l.contains("\twasm\t"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    if !has(&curl(&url)?, "hello: hello details") {
        return Err("wasmPlugin: the response lacks hello: hello details".into());
    }

    step(
        "push v2 under the same tag (AssemblyScript: adds x-as-filter), render (new digest) and apply",
    );
    println!(
        "$ wasmctl push {reference} {} --root-id as_filter --plain-http",
        v2.display()
    );
    indent(&wasmctl(&[
        "push",
        &reference,
        &v2.to_string_lossy(),
        "--root-id",
        "as_filter",
        "--plain-http",
        "-q",
    ]));
    example(
        &fd,
        "bookinfo-details-wasmplugin",
        &reference,
        &[
            ("port: 9080", &port),
            ("rootId: my_root_id", "rootId: as_filter"),
        ],
    )?;
    render_apply(&cp, &[&fd])?;
    let took = wait("v2 in the sidecar", PROPAGATION, || {
        details.get("/details/0").header("x-as-filter").is_some()
    })?;
    println!("    served {took:.1?} after the apply");
    let t = curl(&url)?;
    same_envoy(&details, pid)?;
    if !t.to_ascii_lowercase().contains("x-as-filter:") {
        return Err("wasmPlugin update: the response lacks x-as-filter".into());
    }

    step(
        "trafficExtension delivery (Istio 1.30's successor of WasmPlugin): replace the WasmPlugin",
    );
    kubectl(
        &cp,
        "kubectl delete wasmplugin details-v1-wasmplugin",
        &["delete", "wasmplugin", "details-v1-wasmplugin"],
        None,
    )?;
    indent(&example(
        &fd,
        "bookinfo-details-trafficextension",
        &reference,
        &[
            ("port: 9080", &port),
            ("rootId: my_root_id", "rootId: as_filter"),
        ],
    )?);
    render_apply(&cp, &[&fd])?;
    let took = wait("the TrafficExtension in the sidecar", PROPAGATION, || {
        let dump = details.config_dump("").to_string();
        dump.contains("details-v1-trafficextension")
            && details.get("/details/0").header("x-as-filter").is_some()
    })?;
    println!("    served {took:.1?} after the apply");
    same_envoy(&details, pid)?;
    if !curl(&url)?.to_ascii_lowercase().contains("x-as-filter:") {
        return Err("trafficExtension: the response lacks x-as-filter".into());
    }

    step("the controller: wasmctl controller keeps FilterDeployments applied (no render step)");
    kubectl(
        &cp,
        "kubectl delete trafficextension details-v1-trafficextension",
        &["delete", "trafficextension", "details-v1-trafficextension"],
        None,
    )?;
    wait(
        "the TrafficExtension gone from the sidecar",
        PROPAGATION,
        || {
            details.get("/details/0").header("x-as-filter").is_none()
                && details.get("/details/0").header("hello").is_none()
        },
    )?;
    println!("    the sidecar serves no filter now");
    let controller = e2e::controller::Controller::start(&cp, &["--plain-http", "--resync", "10s"]);
    println!(
        "    wasmctl controller (pid {}) --plain-http --resync 10s; /metrics, /readyz on http://{}",
        controller.pid(),
        controller.addr
    );
    let fd_text = example(&fd, "bookinfo-details", &v1_pinned, &[])?;
    indent(&fd_text);
    kubectl(
        &cp,
        &format!("kubectl apply -f {}", fd.display()),
        &["apply", "-f", &fd.to_string_lossy()],
        None,
    )?;
    wait("the FilterDeployment ready", PROPAGATION, || {
        cp.kubectl(&[
            "get",
            "filterdeployment",
            "details-v1-wasmfiltering",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
        ])
        .stdout
            == b"True"
    })?;
    kubectl(
        &cp,
        "kubectl get filterdeployment",
        &["get", "filterdeployment"],
        None,
    )?;
    kubectl(
        &cp,
        "kubectl get envoyfilter,wasmplugin",
        &["get", "envoyfilter,wasmplugin"],
        None,
    )?;
    // The kubelet's part: the ConfigMap's new content reaches the agent's mounted file.
    let list = e2e::mesh::image_list_text(&cp);
    write_atomic(&list_file, &list);
    println!("    image list, as the controller wrote it (and the kubelet mounts it):");
    indent(&list);
    let took = wait(
        "the controller's EnvoyFilter in the sidecar",
        PROPAGATION,
        || {
            let r = details.get("/details/0");
            hello("hello details")(&r)
        },
    )?;
    println!("    served {took:.1?} after Ready");
    if !has(&curl(&url)?, "hello: hello details") {
        return Err("controller: the response lacks hello: hello details".into());
    }
    kubectl(
        &cp,
        "kubectl delete filterdeployment details-v1-wasmfiltering",
        &["delete", "filterdeployment", "details-v1-wasmfiltering"],
        None,
    )?;
    wait("the filter gone from the sidecar", PROPAGATION, || {
        details.get("/details/0").header("hello").is_none()
    })?;
    kubectl(
        &cp,
        "kubectl get envoyfilter,filterdeployment",
        &["get", "envoyfilter,filterdeployment"],
        None,
    )?;
    let t = curl(&url)?;
    if t.to_ascii_lowercase().contains("\nhello:") {
        return Err("controller: the header outlived the FilterDeployment".into());
    }
    same_envoy(&details, pid)?;
    drop(controller);

    let cp_dir = cp.dir().to_path_buf();
    drop(details);
    drop(agent);
    drop(registry);
    drop(cp);
    let left = Command::new("pgrep")
        .args(["-f", &cp_dir.to_string_lossy()])
        .output()
        .map(|o| o.stdout.is_empty());
    step(&format!(
        "stopped the sidecar (Envoy pid {pid}), the agent, the registry and the control plane (nothing left running from {}: {})",
        cp_dir.display(),
        left.unwrap_or(false)
    ));
    println!(
        "\nOK: the three delivery modes served the filter through istiod, each update reached the same Envoy, and the controller applied and removed a FilterDeployment"
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
