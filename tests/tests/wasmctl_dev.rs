//! `wasmctl dev` against a real Envoy: requests flow without pause while the module is rewritten
//! five times; every good version is served within a second of its file being complete, a version
//! that fails `proxy_on_configure` is refused with the module's own message while the old one
//! keeps serving, and SIGINT leaves nothing running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::http1::Client;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A proxy-wasm module that adds `x-version: <version>` to every response; `good: false` makes
/// `proxy_on_configure` log an error and fail, as a filter refusing its configuration does.
fn module(version: u32, good: bool) -> Vec<u8> {
    let value = version.to_string();
    let message = format!("version {version} refuses this configuration");
    let configure = if good {
        "(i32.const 1)".to_string()
    } else {
        format!(
            "(drop (call $log (i32.const 4) (i32.const 64) (i32.const {}))) (i32.const 0)",
            message.len()
        )
    };
    let wat = format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-version")
  (data (i32.const 32) "{value}")
  (data (i32.const 64) "{message}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) {configure})
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 16) (i32.const 9) (i32.const 32) (i32.const {len})))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))"#,
        len = value.len()
    );
    wat::parse_str(wat).unwrap()
}

/// Write the module as a build does its last step: a complete file renamed into place.
fn write_module(path: &Path, bytes: &[u8]) -> Instant {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    Instant::now()
}

/// Every response the load saw: when, and the version (`None` for a failed request).
type Seen = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A running `wasmctl dev`: its output line by line, the Envoy it started.
struct Dev {
    child: std::process::Child,
    output: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
    listener: SocketAddr,
    envoy_pid: u32,
}

impl Dev {
    /// Start `wasmctl dev ARGS` in `dir` and wait for its banner.
    fn start(dir: &Path, args: &[&str]) -> Dev {
        let mut child = Command::new(e2e::wasmctl_bin())
            .arg("dev")
            .args(args)
            .env("ENVOY_BIN", e2e::envoy::envoy_bin())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(Vec::<String>::new()));
        let (tx, lines) = mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (output, tx) = (output.clone(), tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let mut dev = Dev {
            child,
            output,
            lines,
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            envoy_pid: 0,
        };
        let banner = dev.wait_line("serves http://", Duration::from_secs(90));
        dev.listener = banner
            .split("serves http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        dev.envoy_pid = banner
            .split("(pid ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(pid_alive(dev.envoy_pid), "{banner}");
        dev
    }

    fn transcript(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// The next line containing `what`, within `deadline`.
    fn wait_line(&self, what: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line with {what:?} within {deadline:?}:\n{}",
                    self.transcript()
                ),
            }
        }
    }

    /// SIGINT; then wasmctl exits 0 within 15 s, Envoy is gone and the listener closed.
    fn interrupt(mut self) {
        // SAFETY: a signal to the child this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let end = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "still running 15 s after SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}\n{}", self.transcript());
        let end = Instant::now() + Duration::from_secs(5);
        while pid_alive(self.envoy_pid) {
            assert!(
                Instant::now() < end,
                "Envoy (pid {}) outlived wasmctl dev",
                self.envoy_pid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            TcpStream::connect(self.listener).is_err(),
            "the listener is still open"
        );
        assert!(
            self.transcript()
                .contains(&format!("stopped Envoy (pid {})", self.envoy_pid))
        );
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // Also when the test failed: by process id; Envoy follows its parent.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dev_swaps_in_every_good_build_refuses_a_bad_one_and_stops_clean() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("filter.wasm");
    write_module(&wasm, &module(1, true));
    let dev = Dev::start(dir.path(), &["filter.wasm", "--port", "0", "--echo"]);
    let listener = dev.listener;
    let transcript = || dev.transcript();
    let wait_line = |what: &str, d: Duration| dev.wait_line(what, d);

    // Requests without pause on one keep-alive connection (a new one only if it is closed,
    // which counts as a failure too).
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut client = Client::connect(listener).ok();
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let got = client.as_mut().and_then(|c| c.get("/", &[]).ok());
                let version = got
                    .as_ref()
                    .filter(|m| m.status() == 200)
                    .and_then(|m| m.header("x-version").map(str::to_string));
                if got.is_none() {
                    client = Client::connect(listener).ok();
                }
                seen.lock().unwrap().push((Instant::now(), version));
            }
        })
    };
    let served_at = |version: &str, after: Instant| -> Option<Instant> {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(t, v)| *t >= after && v.as_deref() == Some(version))
            .map(|(t, _)| *t)
    };
    let first = Instant::now() + Duration::from_secs(10);
    while served_at("1", Instant::now() - Duration::from_secs(60)).is_none() {
        assert!(
            Instant::now() < first,
            "version 1 never served:\n{}",
            transcript()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut delays = Vec::new();
    for (version, good) in [(2, true), (3, true), (4, false), (5, true), (6, true)] {
        let complete = write_module(&wasm, &module(version, good));
        let v = version.to_string();
        if good {
            let deadline = complete + Duration::from_secs(10);
            let at = loop {
                if let Some(t) = served_at(&v, complete) {
                    break t;
                }
                assert!(
                    Instant::now() < deadline,
                    "version {v} never served:\n{}",
                    transcript()
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            delays.push((version, at - complete));
        } else {
            let refused = wait_line("refused", Duration::from_secs(10));
            wait_line("still serving", Duration::from_secs(5));
            assert!(
                transcript().contains("version 4 refuses this configuration"),
                "the module's own message is shown: {refused}\n{}",
                transcript()
            );
            // The old version keeps serving.
            std::thread::sleep(Duration::from_millis(1500));
            let recent: Vec<Option<String>> = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| *t >= complete)
                .map(|(_, v)| v.clone())
                .collect();
            assert!(!recent.is_empty());
            assert!(
                recent.iter().all(|v| v.as_deref() == Some("3")),
                "after the refusal: {:?}",
                recent.iter().collect::<std::collections::BTreeSet<_>>()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let seen = seen.lock().unwrap();
    let failed = seen.iter().filter(|(_, v)| v.is_none()).count();
    eprintln!(
        "{} requests, {failed} failed; served after the file was complete: {delays:?}",
        seen.len()
    );
    assert_eq!(failed, 0, "failed requests:\n{}", transcript());
    for (version, d) in &delays {
        assert!(
            *d <= Duration::from_secs(1),
            "version {version} served {d:?} after its file was complete"
        );
    }

    // SIGINT stops everything it started.
    dev.interrupt();
}

/// The header filter's response header, on a fresh connection.
fn header_of(listener: SocketAddr) -> Option<String> {
    let r = e2e::http1::get(listener, "/", &[]).ok()?;
    r.header("x-dev").map(str::to_string)
}

#[test]
fn dev_in_a_project_rebuilds_on_source_changes_and_follows_its_config_file() {
    // A project whose "build" picks one of two modules by a source file: the header filter, and
    // the same filter with a custom section appended (another sha256, same behaviour).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for d in ["src", "prebuilt", "out"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    let filter = std::fs::read(e2e::filter_wasm()).unwrap();
    let mut other = filter.clone();
    other.extend_from_slice(&[0, 6, 4, b'n', b'o', b't', b'e', b'x']);
    std::fs::write(p.join("prebuilt/a.wasm"), &filter).unwrap();
    std::fs::write(p.join("prebuilt/b.wasm"), &other).unwrap();
    std::fs::write(p.join("src/which"), "a\n").unwrap();
    std::fs::write(p.join("config.json"), r#"{"name":"x-dev","value":"one"}"#).unwrap();
    std::fs::write(
        p.join("wasmctl.yaml"),
        "module: out/filter.wasm\n\
         build: cp prebuilt/$(cat src/which).wasm out/filter.wasm\n\
         rootId: my_root_id\n\
         config: '@config.json'\n",
    )
    .unwrap();
    let sha = |b: &[u8]| {
        let out = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(b)?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..12].to_string()
    };
    // Started from a folder below the project's: wasmctl.yaml is found above, as cargo finds
    // Cargo.toml. The module does not exist until the first build.
    let dev = Dev::start(&p.join("src"), &["--build", "--port", "0"]);
    let served = dev.transcript();
    assert!(
        served.contains("build: cp prebuilt/$(cat src/which).wasm out/filter.wasm"),
        "{served}"
    );
    dev.wait_line(
        &format!("serving module sha256 {}", sha(&filter)),
        Duration::from_secs(5),
    );
    assert_eq!(header_of(dev.listener).as_deref(), Some("one"));

    // A source changes: the build reruns and its module is swapped in.
    std::fs::write(p.join("src/which"), "b\n").unwrap();
    dev.wait_line(
        &format!("serving module sha256 {}", sha(&other)),
        Duration::from_secs(20),
    );
    assert_eq!(header_of(dev.listener).as_deref(), Some("one"));

    // The configuration file changes: the same module with the new configuration.
    let tmp = p.join("config.json.tmp");
    std::fs::write(&tmp, r#"{"name":"x-dev","value":"two"}"#).unwrap();
    std::fs::rename(&tmp, p.join("config.json")).unwrap();
    dev.wait_line(r#""value":"two""#, Duration::from_secs(20));
    assert_eq!(header_of(dev.listener).as_deref(), Some("two"));

    // A configuration the filter refuses: its own message, and "two" keeps serving.
    std::fs::write(&tmp, r#"{"value":"no name"}"#).unwrap();
    std::fs::rename(&tmp, p.join("config.json")).unwrap();
    let refused = dev.wait_line("refused", Duration::from_secs(20));
    dev.wait_line("still serving", Duration::from_secs(5));
    assert_eq!(header_of(dev.listener).as_deref(), Some("two"), "{refused}");
    eprintln!("{}", dev.transcript());
    dev.interrupt();
}
