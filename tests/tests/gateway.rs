//! A Gateway API `Gateway` served for real (`e2e::gateway`): the Gateway API CRDs from their Go
//! module, istiod's Gateway API support translating a `Gateway` and an `HTTPRoute`, and Istio's
//! pilot-agent running Envoy as that Gateway's router. A FilterDeployment with `spec.targetRefs`
//! to the Gateway (manifests/examples/gateway-trafficextension), rendered by `wasmctl render` in
//! each image-based delivery, adds the filter's header to responses through the gateway; the
//! envoyFilter delivery is refused for it (its admission checks: `istio_mesh`'s
//! `target_refs_are_checked_at_admission_and_by_render`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::controlplane::ControlPlane;
use e2e::gateway::{self, Router};
use e2e::http1;
use e2e::mesh::{example, hello, push_filter, wasmctl_in};
use e2e::registry::Registry;
use std::path::Path;
use std::time::{Duration, Instant};

/// The Gateway the example FilterDeployment targets.
const GATEWAY: &str = "bookinfo-gateway";
const NAMESPACE: &str = "default";
/// The example FilterDeployment's name, and so its rendered object's.
const FILTER: &str = "bookinfo-gateway-hello";
/// How long a change may take to reach the router (a deadline polled against, generous for a
/// loaded 2-core machine: istiod's push, pilot-agent's fetch, V8's compile).
const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn a_gateway_serves_the_filter_attached_by_target_refs_in_each_image_based_delivery() {
    assert!(
        e2e::is_root(),
        "the router runs in a network namespace of its own: needs root"
    );
    let start = Instant::now();
    let cp = ControlPlane::start();
    // After istiod: it starts its Gateway API controllers when the CRDs appear.
    gateway::install_crds(&cp);
    let registry = Registry::start();
    let digest = push_filter(&registry);
    let backend = http1::Upstream::start(&[("x-backend", "details")]);
    cp.apply(&gateway::resources(NAMESPACE, GATEWAY, backend.addr()))
        .unwrap();
    let accepted = e2e::poll_until(Instant::now() + DEADLINE, || {
        gateway::condition(&cp, "gateway", NAMESPACE, GATEWAY, "Accepted").filter(|c| c.0 == "True")
    });
    assert!(
        accepted.is_some(),
        "istiod did not accept the Gateway: {:?}\n{}",
        gateway::condition(&cp, "gateway", NAMESPACE, GATEWAY, "Accepted"),
        cp.logs()
    );
    let class = gateway::condition(&cp, "gatewayclass", "", "istio", "Accepted");
    println!("gatewayclass/istio Accepted: {class:?}");
    println!("gateway Accepted: {accepted:?}");

    let router = Router::start(
        &cp,
        NAMESPACE,
        GATEWAY,
        &[cp.endpoints.xds, registry.addr, backend.addr()],
        Path::new(env!("CARGO_BIN_EXE_cluster")),
    );
    println!("router ready {:?} after the start", start.elapsed());
    let r = router
        .get_until("/details/0", DEADLINE, |r| r.status() == 200)
        .unwrap_or_else(|e| panic!("no response through the gateway: {e}\n{}", router.log()));
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.header("x-backend"), Some("details"), "{r:?}");
    assert_eq!(hello(&r), None, "a filter before any was deployed");
    assert_eq!(backend.last().path(), "/details/0");
    // Only the HTTPRoute's path is routed: the gateway itself answers anything else.
    let other = router.get("/elsewhere").unwrap();
    assert_eq!(other.status(), 404, "{other:?}");
    for ty in ["Accepted", "ResolvedRefs"] {
        let c = gateway::condition(&cp, "httproute", NAMESPACE, "details", ty);
        println!("httproute {ty}: {c:?}");
        assert_eq!(c.map(|c| c.0).as_deref(), Some("True"), "httproute {ty}");
    }
    println!(
        "gateway Programmed: {:?}",
        gateway::condition(&cp, "gateway", NAMESPACE, GATEWAY, "Programmed")
    );

    let work = tempfile::tempdir().unwrap();
    let fd_path = work.path().join("filterdeployment.yaml");
    for (mode, kind) in [
        ("wasm-plugin", "wasmplugin"),
        ("traffic-extension", "trafficextension"),
    ] {
        let value = format!("hello gateway ({mode})");
        let fd = example(
            "gateway-trafficextension",
            &registry,
            "filters/header-filter:v1",
        )
        .replace("value: hello gateway", &format!("value: {value}"));
        std::fs::write(&fd_path, &fd).unwrap();
        let rendered = wasmctl_in(
            work.path(),
            &[
                "render".into(),
                "--plain-http".into(),
                "--mode".into(),
                mode.into(),
                fd_path.display().to_string(),
            ],
        );
        assert!(
            rendered.contains(&format!("header-filter@{digest}")),
            "{rendered}"
        );
        assert!(
            rendered.contains("kind: Gateway") && !rendered.contains("selector"),
            "{rendered}"
        );
        let applied = Instant::now();
        cp.apply(&rendered).unwrap();
        let r = router
            .get_until("/details/0", DEADLINE, |r| hello(r) == Some(value.as_str()))
            .unwrap_or_else(|e| panic!("{mode}: {e}\n{}", router.log()));
        assert_eq!(r.status(), 200, "{mode}: {r:?}");
        assert_eq!(
            hello(&r),
            Some(value.as_str()),
            "{mode}: {r:?}\n{}",
            router.log()
        );
        println!(
            "{mode}: `hello: {value}` through the gateway {:?} after the apply",
            applied.elapsed()
        );
        // Istio's fetcher brought the module: the filter came by ECDS, named after the object.
        let ecds = router
            .admin("/config_dump?resource=ecds_filters")
            .unwrap()
            .text();
        assert!(ecds.contains(&format!("{NAMESPACE}.{FILTER}")), "{ecds}");

        // Removed, the header goes: the next mode's header is that mode's doing.
        cp.kubectl_ok(&["delete", kind, "-n", NAMESPACE, FILTER]);
        let r = router
            .get_until("/details/0", DEADLINE, |r| {
                r.status() == 200 && hello(r).is_none()
            })
            .unwrap();
        assert_eq!(
            hello(&r),
            None,
            "{mode}: the filter stayed after the delete"
        );
    }

    // The envoyFilter delivery cannot reach a gateway (Istio's gateway template mounts no node
    // directory): render refuses it for this very FilterDeployment, and says why.
    let out = std::process::Command::new(e2e::wasmctl_bin())
        .args(["render", "--no-resolve", "--mode", "envoy-filter"])
        .arg(&fd_path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "rendered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("spec.targetRefs"), "{err}");
    println!("envoy-filter: refused: {}", err.trim());
    println!("whole test {:?}", start.elapsed());
}
