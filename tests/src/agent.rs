//! The node agent (`wasmctl agent`) as a process for a test: started with a status file on a
//! free port, read through `/status` and `/metrics`, stopped with SIGTERM (or killed on drop,
//! when its log is printed if the test failed).

use crate::http1;
use serde_json::Value;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Agent options for tests against a local plain-HTTP registry: resync every second, and retries
/// that back off from 200 ms to at most 1 s, so that changes and recoveries show within seconds.
pub const FAST: [&str; 7] = [
    "--resync",
    "1s",
    "--plain-http",
    "--backoff-initial",
    "200ms",
    "--backoff-max",
    "1s",
];

/// How long the agent may take to write its first status.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running agent.
pub struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its status listener.
    pub addr: SocketAddr,
}

impl Agent {
    /// Start `wasmctl agent --images IMAGES --dir DIR --listen 127.0.0.1:0 --status-file ...`
    /// plus `args` (e.g. `--resync 1s --plain-http`), and wait for its listener.
    pub fn start(images: &Path, dir: &Path, args: &[&str]) -> Agent {
        Agent::start_with_env(images, dir, args, &[])
    }

    /// [`Agent::start`] with environment variables added (e.g. `KUBECONFIG` for the node report).
    pub fn start_with_env(
        images: &Path,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Agent {
        let tmp = tempfile::tempdir().expect("temp dir");
        let status = tmp.path().join("status.json");
        let log = fs::File::create(tmp.path().join("agent.log")).expect("agent log");
        let child = Command::new(crate::wasmctl_bin())
            .arg("agent")
            .arg("--images")
            .arg(images)
            .arg("--dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--status-file"])
            .arg(&status)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("run wasmctl agent");
        let mut agent = Agent {
            child: Some(child),
            dir: tmp,
            addr: "127.0.0.1:0".parse().expect("addr"),
        };
        let addr = crate::poll_until(Instant::now() + START_DEADLINE, || {
            if let Some(s) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "agent exited at startup with {s}\n---- log ----\n{}",
                    agent.log()
                );
            }
            fs::read(&status)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["listen"].as_str().and_then(|a| a.parse().ok()))
        });
        match addr {
            Some(addr) => {
                agent.addr = addr;
                agent
            }
            None => panic!(
                "agent wrote no status within {START_DEADLINE:?}\n---- log ----\n{}",
                agent.log()
            ),
        }
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Its log lines with `event=EVENT`.
    pub fn events(&self, event: &str) -> Vec<String> {
        let key = format!(" event={event} ");
        let end = format!(" event={event}");
        self.log()
            .lines()
            .filter(|l| l.contains(&key) || l.ends_with(&end))
            .map(str::to_string)
            .collect()
    }

    /// `/status` as JSON.
    pub fn status(&self) -> Value {
        let r = http1::get(self.addr, "/status", &[]).expect("GET /status");
        assert_eq!(r.status(), 200, "{}", r.text());
        serde_json::from_slice(&r.body).expect("status JSON")
    }

    /// The status of entry `name`.
    pub fn image(&self, name: &str) -> Value {
        self.status()["images"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        http1::get(self.addr, "/metrics", &[])
            .expect("GET /metrics")
            .text()
    }

    /// The value of metric `family` for entry `name`.
    pub fn metric(&self, family: &str, name: &str) -> Option<f64> {
        let prefix = format!("{family}{{name=\"{name}\",");
        self.metrics()
            .lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        http1::get(self.addr, "/readyz", &[]).is_ok_and(|r| r.status() == 200)
    }

    /// Poll `cond` until it holds; fail with `what` and the log after `deadline`.
    pub fn wait_for(&self, what: &str, deadline: Duration, mut cond: impl FnMut(&Agent) -> bool) {
        if crate::poll_until(Instant::now() + deadline, || cond(self).then_some(())).is_none() {
            panic!(
                "agent: {what} did not happen within {deadline:?}\n---- status ----\n{}\n---- log ----\n{}",
                serde_json::to_string_pretty(&self.status()).unwrap_or_default(),
                self.log()
            );
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Send SIGTERM and wait (up to 20 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM {} failed", child.id());
        let end = Instant::now() + Duration::from_secs(20);
        match crate::poll_until(end, || child.try_wait().expect("wait agent")) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent ignored SIGTERM for 20 s\n---- log ----\n{}",
                    self.log()
                );
            }
        }
    }

    /// Its temporary directory (log, status file).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
    }
}

/// Run `wasmctl ARGS` and return stdout; fail the test with its output when it fails.
pub fn wasmctl(args: &[&str]) -> String {
    let out = Command::new(crate::wasmctl_bin())
        .args(args)
        .output()
        .expect("run wasmctl");
    assert!(
        out.status.success(),
        "wasmctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `wasmctl push --plain-http REFERENCE MODULE --root-id ROOT_ID [EXTRA]`; returns the manifest
/// digest.
pub fn push(reference: &str, module: &Path, root_id: &str, extra: &[&str]) -> String {
    let m = module.to_string_lossy();
    let mut args = vec!["push", reference, &m, "--plain-http", "-q"];
    if !root_id.is_empty() {
        args.extend(["--root-id", root_id]);
    }
    args.extend(extra);
    let out = wasmctl(&args);
    out.lines()
        .find_map(|l| l.strip_prefix("digest: "))
        .expect("push prints the digest")
        .trim()
        .to_string()
}

/// Write `text` to `path` atomically (temporary file and rename), as Kubernetes and editors do.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    fs::write(&tmp, text).expect("write temp");
    fs::rename(&tmp, path).expect("rename into place");
}

/// The symlink `DIR/<name>.wasm`'s target.
pub fn link_target(dir: &Path, name: &str) -> Option<String> {
    fs::read_link(dir.join(format!("{name}.wasm")))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Hex sha256 of a file, with `sha256sum`.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Standard base64 (with padding), for `dockerconfigjson` `auth` fields.
pub fn base64(text: &str) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
