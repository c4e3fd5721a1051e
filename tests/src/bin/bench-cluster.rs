//! `make bench-cluster` (`scripts/bench-cluster`): the controller at 10, 100 and 1000 simulated
//! nodes on the real control plane (kwok for Nodes and Pods, simulated node agents, a real
//! registry), one or more controller binaries side by side; see [`e2e::benchcluster`] for what
//! is measured and how. Writes `results.json`, `results.md` and `scale.svg` to the output
//! directory (default `docs/bench-cluster`; `--quick` (sizes 10 and 100): `target/bench-cluster-quick`).

use e2e::benchcluster::{self, Binary, Options};
use plotters::prelude::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: bench-cluster [--quick] [--sizes 10,100,1000] [--controller LABEL=WASMCTL]...
                     [--changes N] [--resync SECONDS] [--rest SECONDS] [--no-rollout] [--no-istiod]
                     [--out DIR]

  --quick              sizes 10 and 100, fewer changes, a shorter rest window, no rollout, no istiod;
                       written to target/bench-cluster-quick unless --out says otherwise
  --sizes LIST         node counts (default 10,100,1000); 10 Pods per node, one
                       FilterDeployment per 10 nodes' worth of Pods
  --controller L=PATH  a wasmctl binary to run as the controller, labelled L in the results;
                       repeat to compare builds in one run (default: after=target/release/wasmctl)
  --changes N          FilterDeployment changes timed per size (default 30)
  --resync SECONDS     the controller's --resync (default 30)
  --rest SECONDS       the window at rest in which writes are counted (default 75)
  --no-rollout         skip the re-pushed tag's envoyFilter rollout
  --no-istiod          skip istiod's cost per delivery mode (measured with the first --controller)
  --out DIR            where results.json, results.md and scale.svg go (default docs/bench-cluster)";

struct Args {
    sizes: Vec<usize>,
    binaries: Vec<Binary>,
    opts: Options,
    out: PathBuf,
    quick: bool,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut quick = false;
    let mut sizes = None;
    let mut binaries = Vec::new();
    let mut out = None;
    let mut changes = None;
    let mut resync = None;
    let mut rest = None;
    let mut rollout = None;
    let mut istiod = None;
    let num = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.ok_or(format!("{what} needs a value"))?
            .parse()
            .map_err(|e| format!("{what}: {e}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--quick" => quick = true,
            "--sizes" => {
                let v = it.next().ok_or("--sizes needs a value")?;
                sizes = Some(
                    v.split(',')
                        .map(|s| {
                            s.trim()
                                .parse::<usize>()
                                .map_err(|e| format!("--sizes: {e}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                );
            }
            "--controller" => {
                let v = it.next().ok_or("--controller needs LABEL=PATH")?;
                let (label, path) = v.split_once('=').ok_or("--controller needs LABEL=PATH")?;
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(format!(
                        "--controller {label}: {} is no file",
                        path.display()
                    ));
                }
                binaries.push(Binary {
                    label: label.to_string(),
                    path,
                });
            }
            "--changes" => changes = Some(num(it.next(), "--changes")? as usize),
            "--resync" => resync = Some(Duration::from_secs(num(it.next(), "--resync")?)),
            "--rest" => rest = Some(Duration::from_secs(num(it.next(), "--rest")?)),
            "--no-rollout" => rollout = Some(false),
            "--no-istiod" => istiod = Some(false),
            "--out" => out = Some(PathBuf::from(it.next().ok_or("--out needs a value")?)),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let mut opts = if quick {
        Options::quick()
    } else {
        Options::full()
    };
    if let Some(c) = changes {
        opts.changes = c;
    }
    if let Some(r) = resync {
        opts.resync = r;
    }
    if let Some(r) = rest {
        opts.rest = r;
    }
    if let Some(r) = rollout {
        opts.rollout = r;
    }
    if let Some(i) = istiod {
        opts.istiod = i;
    }
    if binaries.is_empty() {
        let path = e2e::target_dir().join("release/wasmctl");
        if !path.is_file() {
            return Err(format!(
                "{} is missing: cargo build --release -p wasmctl (scripts/bench-cluster does), or --controller",
                path.display()
            ));
        }
        binaries.push(Binary {
            label: "after".into(),
            path,
        });
    }
    let root = e2e::workspace_root();
    Ok(Args {
        sizes: sizes.unwrap_or(if quick {
            vec![10, 100]
        } else {
            vec![10, 100, 1000]
        }),
        binaries,
        opts,
        out: out.unwrap_or_else(|| {
            if quick {
                e2e::target_dir().join("bench-cluster-quick")
            } else {
                root.join("docs/bench-cluster")
            }
        }),
        quick,
    })
}

/// A figure of one result: (column, how to read it, digits).
type Figure = (&'static str, fn(&Value) -> f64, usize);

fn figures() -> Vec<Figure> {
    vec![
        (
            "all Ready (s)",
            |r| r["startup"]["span"]["seconds"].as_f64().unwrap_or(f64::NAN),
            2,
        ),
        (
            "change p50 (ms)",
            |r| r["changes"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
            0,
        ),
        (
            "change p99 (ms)",
            |r| r["changes"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
            0,
        ),
        (
            "requests / reconcile, start",
            |r| {
                r["startup"]["span"]["requests_per_reconcile"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            },
            1,
        ),
        (
            "requests / reconcile, changes",
            |r| {
                r["changes"]["span"]["requests_per_reconcile"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            },
            1,
        ),
        (
            "requests at start",
            |r| {
                r["startup"]["span"]["requests"]["total"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            },
            0,
        ),
        (
            "writes / min at rest",
            |r| r["rest"]["writes_per_minute"].as_f64().unwrap_or(f64::NAN),
            1,
        ),
        (
            "reads / min at rest",
            |r| r["rest"]["reads_per_minute"].as_f64().unwrap_or(f64::NAN),
            1,
        ),
        (
            "CPU at start (s)",
            |r| {
                r["startup"]["span"]["cpu_seconds"]
                    .as_f64()
                    .unwrap_or(f64::NAN)
            },
            2,
        ),
        (
            "CPU at rest (%)",
            |r| r["rest"]["cpu_percent"].as_f64().unwrap_or(f64::NAN),
            2,
        ),
        (
            "RSS peak (MiB)",
            |r| r["rss_mib"]["peak"].as_f64().unwrap_or(f64::NAN),
            1,
        ),
        (
            "rollout gate (s)",
            |r| r["rollout"]["gate_seconds"].as_f64().unwrap_or(f64::NAN),
            2,
        ),
    ]
}

fn fmt(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".into()
    }
}

fn markdown(results: &[Value], command: &str) -> String {
    let figs = figures();
    let mut md = String::new();
    md.push_str(&format!("Command: `{command}`\n\n"));
    md.push_str("| nodes | Pods | FilterDeployments | controller |");
    for (name, _, _) in &figs {
        md.push_str(&format!(" {name} |"));
    }
    md.push_str("\n| ---: | ---: | ---: | --- |");
    for _ in &figs {
        md.push_str(" ---: |");
    }
    md.push('\n');
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {} |",
            r["nodes"],
            r["pods"],
            r["filterdeployments"],
            r["controller"].as_str().unwrap_or("")
        ));
        for (_, get, d) in &figs {
            md.push_str(&format!(" {} |", fmt(get(r), *d)));
        }
        md.push('\n');
    }
    // Growth 100 -> 1000 (or between the two largest sizes), per controller.
    let mut sizes: Vec<u64> = results.iter().filter_map(|r| r["nodes"].as_u64()).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.len() >= 2 {
        let (a, b) = (sizes[sizes.len() - 2], sizes[sizes.len() - 1]);
        md.push_str(&format!(
            "\nGrowth from {a} to {b} nodes ({}x the nodes, Pods and FilterDeployments; linear is {}x):\n\n",
            b / a.max(1),
            b / a.max(1)
        ));
        md.push_str("| figure |");
        let labels = labels(results);
        for l in &labels {
            md.push_str(&format!(" {l} |"));
        }
        md.push_str("\n| --- |");
        for _ in &labels {
            md.push_str(" ---: |");
        }
        md.push('\n');
        for (name, get, _) in &figs {
            md.push_str(&format!("| {name} |"));
            for l in &labels {
                let at = |n: u64| {
                    results
                        .iter()
                        .find(|r| r["nodes"].as_u64() == Some(n) && r["controller"] == l.as_str())
                        .map(get)
                        .unwrap_or(f64::NAN)
                };
                let (va, vb) = (at(a), at(b));
                let g = if va > 0.0 && vb.is_finite() {
                    format!("{:.1}x", vb / va)
                } else if va == 0.0 && vb == 0.0 {
                    "0 -> 0".into()
                } else {
                    format!("{} -> {}", fmt(va, 1), fmt(vb, 1))
                };
                md.push_str(&format!(" {g} |"));
            }
            md.push('\n');
        }
    }
    md
}

/// istiod's table: for each size measured with istiod, each delivery mode.
fn istiod_markdown(results: &[Value]) -> String {
    let rows: Vec<&Value> = results.iter().filter(|r| r["istiod"].is_object()).collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\nistiod, for the same objects in each delivery mode: new parameters for every FilterDeployment at once, \
         from that change until every connected sidecar serves them and istiod is quiet \
         (push time and convergence: istiod's histograms over that span):\n\n\
         | nodes | objects | sidecars | delivery | served (s) | istiod CPU (s) | pushes | push time mean (ms) | convergence mean (ms) | push context init mean (ms) |\n\
         | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        for mode in ["envoyFilter", "wasmPlugin", "trafficExtension"] {
            let m = &r["istiod"][mode];
            if m.is_null() {
                continue;
            }
            let f = |v: &Value, d: usize| fmt(v.as_f64().unwrap_or(f64::NAN), d);
            md.push_str(&format!(
                "| {} | {} | {} | {mode} | {} | {} | {} | {} | {} | {} |\n",
                r["nodes"],
                m["objects"],
                m["sidecars"],
                f(&m["served_seconds"], 2),
                f(&m["istiod_cpu_seconds"], 2),
                f(&m["pushes"], 0),
                f(&m["push_time"]["mean_ms"], 2),
                f(&m["proxy_convergence"]["mean_ms"], 2),
                f(&m["pushcontext_init"]["mean_ms"], 2),
            ));
        }
    }
    md
}

fn labels(results: &[Value]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for r in results {
        let l = r["controller"].as_str().unwrap_or("").to_string();
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    labels
}

fn plot_err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

const COLORS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
];

/// Log-log panels: each figure against the node count, one line per controller.
fn plot(path: &Path, results: &[Value]) -> Result<(), String> {
    let panels: Vec<Figure> = figures()
        .into_iter()
        .filter(|(n, _, _)| {
            matches!(
                *n,
                "all Ready (s)"
                    | "change p99 (ms)"
                    | "requests at start"
                    | "reads / min at rest"
                    | "CPU at start (s)"
                    | "rollout gate (s)"
            )
        })
        .collect();
    let labels = labels(results);
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let areas = root.split_evenly((2, 3));
    let xs: Vec<f64> = results.iter().filter_map(|r| r["nodes"].as_f64()).collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min) * 0.8,
        xs.iter().copied().fold(1.0, f64::max) * 1.25,
    );
    for (area, (name, get, _)) in areas.iter().zip(&panels) {
        let vals: Vec<f64> = results
            .iter()
            .map(get)
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) * 0.5;
        let hi = vals.iter().copied().fold(1.0, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(area)
            .caption(*name, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(50)
            .build_cartesian_2d((x0..x1).log_scale(), (lo..hi).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("nodes")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if *y >= 10.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                }
            })
            .draw()
            .map_err(plot_err)?;
        for (i, l) in labels.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| r["controller"] == l.as_str())
                .filter_map(|r| Some((r["nodes"].as_f64()?, get(r))))
                .filter(|(_, v)| v.is_finite() && *v > 0.0)
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(l.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-cluster: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("bench-cluster: {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    let root = e2e::workspace_root();
    let before = args
        .binaries
        .iter()
        .find(|b| b.label == "before")
        .map(|b| {
            let p = b.path.strip_prefix(root).unwrap_or(&b.path);
            format!(" BEFORE={}", p.display())
        })
        .unwrap_or_default();
    let command = format!(
        "make bench-cluster{}{before}",
        if args.quick { " QUICK=1" } else { "" }
    );
    let started = std::time::Instant::now();
    let machine = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    });
    let svg = args.out.join("scale.svg");
    let write_all = |results: &[Value], done: bool| -> Result<String, String> {
        let doc = json!({
            "command": command,
            "complete": done,
            "machine": machine,
            "options": {
                "pods_per_node": args.opts.pods_per_node,
                "nodes_per_filterdeployment": args.opts.nodes_per_fd,
                "changes": args.opts.changes,
                "resync_seconds": args.opts.resync.as_secs(),
                "rest_seconds": args.opts.rest.as_secs(),
                "rollout": args.opts.rollout,
                "istiod": args.opts.istiod,
                "istiod_sidecars": benchcluster::SIDECARS,
            },
            "controllers": args.binaries.iter().map(|b| json!({"label": b.label, "path": b.shown()})).collect::<Vec<_>>(),
            "minutes": (started.elapsed().as_secs_f64() / 60.0 * 10.0).round() / 10.0,
            "results": results,
        });
        let md = markdown(results, &command) + &istiod_markdown(results);
        let json_text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
        write(&args.out.join("results.json"), &json_text)?;
        write(&args.out.join("results.md"), &md)?;
        plot(&svg, results)?;
        Ok(md)
    };
    // Written after every measurement, so that a run stopped half-way leaves what it measured.
    let results = benchcluster::run_with(&args.opts, &args.sizes, &args.binaries, |r| {
        if let Err(e) = write_all(r, false) {
            eprintln!("bench-cluster: {e}");
        }
    });
    let md = match write_all(&results, true) {
        Ok(md) => md,
        Err(e) => {
            eprintln!("bench-cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{md}");
    eprintln!(
        "bench-cluster: wrote {} (results.json, results.md, scale.svg) in {:.1} min",
        args.out.display(),
        started.elapsed().as_secs_f64() / 60.0
    );
    ExitCode::SUCCESS
}
