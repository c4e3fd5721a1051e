//! `scripts/cluster up DIR [--nodes N]`: a real cluster on this machine (see `e2e::cluster`),
//! left running with its files in DIR; prints `DIR/env`. `scripts/cluster down DIR` takes it
//! down and restores the host. `cluster relay ...` is the cluster's relay process
//! (`e2e::netns::relay_main`).

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cluster up DIR [--nodes N] | cluster down DIR | cluster relay ARGS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("relay") => match e2e::netns::relay_main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay: {e}");
                ExitCode::from(2)
            }
        },
        Some("up") => up(&args[1..]),
        Some("down") if args.len() == 2 => match e2e::cluster::down_dir(&PathBuf::from(&args[1])) {
            Ok(()) => {
                eprintln!("cluster: {} is down; the host is as it was", args[1]);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cluster down: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn up(args: &[String]) -> ExitCode {
    let mut dir = None;
    let mut nodes = 2usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nodes" => match it.next().and_then(|n| n.parse().ok()) {
                Some(n) if (1..=9).contains(&n) => nodes = n,
                _ => {
                    eprintln!("--nodes takes a number from 1 to 9\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            d if dir.is_none() && !d.starts_with("--") => dir = Some(PathBuf::from(d)),
            other => {
                eprintln!("unexpected argument {other}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if dir.join("cluster.json").exists() {
        eprintln!(
            "{} holds a cluster already: `scripts/cluster down {}` first",
            dir.display(),
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    let start = std::time::Instant::now();
    match e2e::cluster::Cluster::start_in(&dir, nodes, false) {
        Ok(c) => {
            print!("{}", c.env_lines());
            eprintln!(
                "cluster: {nodes} nodes Ready in {:.0} s; logs in {} (`. {}/env; kubectl get nodes`)",
                start.elapsed().as_secs_f64(),
                c.dir().display(),
                c.dir().display()
            );
            c.detach();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cluster failed to come up: {e}");
            ExitCode::FAILURE
        }
    }
}
