//! `scripts/control-plane up DIR`: start the real control plane (etcd, kube-apiserver,
//! kube-controller-manager, istiod) on 127.0.0.1 with its files in DIR, print `DIR/env`, and
//! leave it running; `scripts/control-plane down DIR` stops the processes listed in `DIR/pids`.

use e2e::controlplane::ControlPlane;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [verb, dir] = args.as_slice() else {
        eprintln!("usage: control-plane up DIR");
        return ExitCode::from(2);
    };
    if verb != "up" {
        eprintln!("usage: control-plane up DIR (`down` is scripts/control-plane down DIR)");
        return ExitCode::from(2);
    }
    let dir = PathBuf::from(dir);
    if dir.join("pids").exists() {
        eprintln!(
            "{} holds a control plane already (its pids file exists): `scripts/control-plane down {}` first",
            dir.display(),
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    match ControlPlane::start_in(&dir, false) {
        Ok(cp) => {
            print!("{}", cp.env_lines());
            eprintln!(
                "control plane up; logs and pids in {} (`. {}/env; kubectl get crd`)",
                cp.dir().display(),
                cp.dir().display()
            );
            cp.detach();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("control plane failed to start: {e}");
            ExitCode::FAILURE
        }
    }
}
