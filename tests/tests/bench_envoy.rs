//! The Envoy benchmark's tooling, in a tiny run: `bench-envoy` starts its Envoys, drives them with
//! wrk, and writes a sane results file, the tables and both plots. (The figures themselves are
//! not asserted: speed is shown by the benchmark, not by tests.)

use serde_json::Value;
use std::process::Command;

#[test]
fn a_tiny_run_writes_results_tables_and_plots() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_bench-envoy"))
        .args([
            "--configs",
            "route,seed,minimal,floor,floor_exports,seed_x2",
        ])
        .args(["--rounds", "1", "--duration", "1", "--warmup", "1"])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run bench-envoy");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench-envoy failed:\n{stderr}");

    let results: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let configs = results["configs"].as_array().unwrap();
    let keys: Vec<&str> = configs.iter().map(|c| c["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "none",
            "route",
            "seed",
            "minimal",
            "floor",
            "floor_exports",
            "seed_x2"
        ]
    );
    for c in configs {
        for mode in ["proxy", "direct"] {
            let m = &c["modes"][mode];
            for field in ["requests_per_s", "cpu_us_per_request", "p50_us", "p99_us"] {
                let v = m[field].as_f64().unwrap_or(0.0);
                assert!(v > 0.0, "{} {mode} {field} = {}", c["key"], m[field]);
            }
            assert!(m["added_us_vs_none"].is_number(), "{}", c["key"]);
            assert_eq!(m["rounds"].as_array().unwrap().len(), 1);
        }
        assert!(c["rss_ready_mib"].as_f64().unwrap() > 1.0);
        if c["wasm_filters"].as_u64().unwrap() > 0 {
            assert!(
                c["vm_start_ms"].as_f64().is_some(),
                "{}: no wasm VM start in Envoy's log",
                c["key"]
            );
        }
    }
    // Baselines are zero against themselves; the goal ratios are computed.
    assert_eq!(configs[0]["modes"]["proxy"]["added_us_vs_none"], 0.0);
    assert_eq!(configs[1]["modes"]["direct"]["added_us_vs_native"], 0.0);
    for goal in [
        "seed_vs_minimal_added_proxy",
        "seed_vs_minimal_added_direct",
        "seed_throughput_vs_native_proxy",
        "seed_vs_floor_added_proxy",
        "seed_vs_floor_exports_added_direct",
        "floor_exports_vs_floor_added_least_proxy",
        "seed_rss_minus_floor_mib",
    ] {
        assert!(results["goals"][goal].is_number(), "goal {goal} missing");
    }
    assert!(results["modules"]["header_filter.wasm"].as_u64().unwrap() > 10_000);
    // The floor modules are a page of memory; the header filter's is read from its own module.
    let pages = &results["initial_memory_pages"];
    assert_eq!(pages["floor.wasm"], 1);
    assert_eq!(pages["floor-exports.wasm"], 1);
    let filter = e2e::harness_module(&e2e::filter_wasm());
    assert_eq!(
        pages["header_filter.wasm"].as_u64(),
        filter.memory_pages().map(|(min, _)| min)
    );

    let table = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        table.contains("| header_filter, seed configuration |"),
        "{table}"
    );
    assert!(table.contains("seed_vs_minimal_added_proxy"), "{table}");

    let bars = std::fs::read_to_string(out.path().join("added-us.svg")).unwrap();
    assert!(bars.starts_with("<svg"), "added-us.svg is not SVG");
    for label in [
        "ours: seed",
        "minimal SDK",
        "route add",
        "ours x2",
        "proxy",
        "direct",
    ] {
        assert!(bars.contains(label), "added-us.svg lacks {label:?}");
    }
    let line = std::fs::read_to_string(out.path().join("wasm-filters.svg")).unwrap();
    assert!(line.starts_with("<svg"), "wasm-filters.svg is not SVG");
    assert!(
        line.contains("<polyline") || line.contains("<path"),
        "no line drawn"
    );
    assert!(line.contains("wasm filters in the chain"));
}

/// A quick run is a regression check: it writes under `target/bench-quick`, never over the
/// committed full-run results in `docs/bench/`.
#[test]
fn a_quick_run_leaves_the_committed_results_alone() {
    let committed = e2e::workspace_root().join("docs/bench/results.json");
    let before = std::fs::read(&committed).unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| e2e::workspace_root().join("target"));
    let quick = target.join("bench-quick/results.json");
    let _ = std::fs::remove_file(&quick);
    let run = Command::new(env!("CARGO_BIN_EXE_bench-envoy"))
        .args(["--quick", "--configs", "route"])
        .args(["--rounds", "1", "--duration", "1", "--warmup", "1"])
        .output()
        .expect("run bench-envoy");
    assert!(
        run.status.success(),
        "bench-envoy failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read(&committed).unwrap(),
        before,
        "docs/bench/results.json changed"
    );
    let results: Value = serde_json::from_slice(&std::fs::read(&quick).unwrap()).unwrap();
    assert_eq!(results["quick"], true);
}
