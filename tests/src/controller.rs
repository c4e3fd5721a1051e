//! `wasmctl controller` as a process for a test: started against a [`ControlPlane`]'s API
//! server with its HTTP listener on a free port, read through `/readyz`, `/metrics` and
//! `/status`, stopped with SIGTERM or SIGKILL (or killed on drop, when its log is printed if the
//! test failed).

use crate::controlplane::{self, ControlPlane, Proc};
use crate::http1;
use std::net::SocketAddr;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// Controller options for tests: a local plain-HTTP registry, resync every 2 s, quick retries.
pub const FAST: [&str; 7] = [
    "--plain-http",
    "--resync",
    "2s",
    "--backoff-initial",
    "200ms",
    "--backoff-max",
    "2s",
];

/// A running controller.
pub struct Controller {
    proc: Option<Proc>,
    _dir: tempfile::TempDir,
    /// Its HTTP listener.
    pub addr: SocketAddr,
}

impl Controller {
    /// Start `wasmctl controller --listen 127.0.0.1:PORT ARGS` with the control plane's admin
    /// kubeconfig, and wait until `/readyz` answers 200.
    pub fn start(cp: &ControlPlane, args: &[&str]) -> Controller {
        Controller::start_with(&cp.kubeconfig, args)
    }

    /// [`Controller::start`] with the credentials of `kubeconfig` (e.g.
    /// [`ControlPlane::kubeconfig_for`] the controller's service account).
    pub fn start_with(kubeconfig: &std::path::Path, args: &[&str]) -> Controller {
        Controller::start_wrapped(kubeconfig, args, &[], &[])
    }

    /// [`Controller::start_with`] run through `wrapper` (a command that runs the rest of its
    /// arguments, e.g. `faketime -f +1h`) with `env` added.
    pub fn start_wrapped(
        kubeconfig: &std::path::Path,
        args: &[&str],
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Controller {
        Controller::start_program(&crate::wasmctl_bin(), kubeconfig, args, wrapper, env)
    }

    /// [`Controller::start_wrapped`] with `wasmctl` at `program` (e.g. a build of another
    /// version, as the benchmarks compare).
    pub fn start_program(
        program: &std::path::Path,
        kubeconfig: &std::path::Path,
        args: &[&str],
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Controller {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr: SocketAddr = ([127, 0, 0, 1], controlplane::free_port()).into();
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.envs(env.iter().copied());
        cmd.arg("controller")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("KUBECONFIG", kubeconfig);
        let proc = Proc::spawn(
            "wasmctl controller",
            cmd,
            dir.path().join("controller.log"),
            true,
        );
        let mut c = Controller {
            proc: Some(proc),
            _dir: dir,
            addr,
        };
        let p = c.proc.as_mut().expect("running");
        if let Err(e) = controlplane::wait_ready(p, "wasmctl controller", || {
            http1::get(addr, "/readyz", &[]).is_ok_and(|r| r.status() == 200)
        }) {
            panic!("{e}");
        }
        c
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        http1::get(self.addr, "/metrics", &[])
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// A sample of `/metrics` by its full name with labels (e.g.
    /// `wasm_controller_reconciles_total{result="success"}`); 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Whether this replica holds the lease (`wasm_controller_leader 1`).
    pub fn leads(&self) -> bool {
        self.metric("wasm_controller_leader") == 1.0
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| p.child.try_wait().ok().flatten().is_none())
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map(|p| p.child.id()).unwrap_or(0)
    }

    /// SIGTERM, and wait (up to 20 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut p = self.proc.take().expect("controller running");
        let ok = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let end = Instant::now() + Duration::from_secs(20);
        match crate::poll_until(end, || p.child.try_wait().expect("wait")) {
            Some(s) => s,
            None => {
                p.kill();
                panic!("the controller ignored SIGTERM for 20 s\n{}", p.tail(40));
            }
        }
    }

    /// SIGKILL (a crash: no chance to give up the lease).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            if std::thread::panicking() {
                eprintln!("---- {} log (tail) ----\n{}", p.name, p.tail(80));
            }
            p.kill();
        }
    }
}
