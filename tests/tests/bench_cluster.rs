#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The cluster benchmark's regression check, at its quick sizes (`make bench-cluster QUICK=1`):
//! the controller as `make test` builds it, on the real control plane with 10 and then 100
//! Nodes simulated by kwok (10 Pods each), one FilterDeployment per 10 Nodes' worth of Pods,
//! simulated node agents and a real registry (see `e2e::benchcluster`). Every FilterDeployment
//! must become Ready and follow parameter changes, and the controller must write nothing to
//! the API server at rest (a window spanning two or three resyncs, counted in the API server's
//! audit log). Times are printed, never asserted: this machine is shared.

use e2e::benchcluster::{self, Binary, Options};

#[test]
fn the_controller_writes_nothing_at_rest_with_10_and_100_nodes() {
    let started = std::time::Instant::now();
    let opts = Options::quick();
    let bin = Binary {
        label: "debug".into(),
        path: e2e::wasmctl_bin(),
    };
    let results = benchcluster::run(&opts, &[10, 100], &[bin]);
    assert_eq!(results.len(), 2);
    for r in &results {
        let rest = &r["rest"]["span"];
        println!(
            "{} nodes: all Ready in {} s; change p50 {} ms, p99 {} ms; at rest {} s: {} writes, {} reads ({})",
            r["nodes"],
            r["startup"]["span"]["seconds"],
            r["changes"]["p50_ms"],
            r["changes"]["p99_ms"],
            rest["seconds"],
            rest["requests"]["writes"],
            rest["requests"]["reads"],
            rest["requests"]["by_resource"]
        );
        assert_eq!(
            rest["requests"]["writes"], 0,
            "{} nodes: the controller wrote at rest: {}",
            r["nodes"], rest["requests"]["by_resource"]
        );
        assert_eq!(
            rest["writes_metric"], 0.0,
            "{} nodes: wasm_controller_writes_total moved at rest",
            r["nodes"]
        );
        assert!(
            rest["reconciles"].as_f64().unwrap_or(0.0) > 0.0,
            "{} nodes: no resync ran in the window at rest: it proves nothing",
            r["nodes"]
        );
    }
    println!("bench_cluster: {:.0} s", started.elapsed().as_secs_f64());
}
