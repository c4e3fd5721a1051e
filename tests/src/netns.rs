//! Network namespaces for the local cluster ([`crate::cluster`]): commands run inside one
//! (`nsenter`), the processes in one, and the relay that joins a namespace to this machine's
//! loopback without giving the host any other address.
//!
//! The cluster's network lives entirely in namespaces it creates: a router namespace with the
//! bridge the nodes hang on, and one namespace per node. The control plane and the registry stay
//! on 127.0.0.1 in the host's namespace. The relay is one process with a foot in each: it
//! listens inside the router namespace (the address nodes and Pods use for the API server and
//! the registry) and dials 127.0.0.1 on the host, and it serves the API server's egress proxy
//! (HTTP `CONNECT` over a Unix socket, the Konnectivity "HTTPConnect" mode), dialing node and Pod
//! addresses from inside the router namespace. A socket keeps the namespace it was made in, so a
//! thread that enters a namespace (`setns`, per thread for network namespaces) makes the socket
//! and hands it back.
//!
//! ```no_run
//! // Listen on 10.250.0.1:5000 inside the namespace of process 4242; each connection is
//! // carried to the registry on the host's 127.0.0.1:35000.
//! e2e::netns::relay_main(&[
//!     "--netns".into(), "/proc/4242/ns/net".into(),
//!     "--forward".into(), "10.250.0.1:5000=127.0.0.1:35000".into(),
//! ]).unwrap();
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// How long a dial from the relay may take (an address with nothing behind it answers at once
/// with a refusal; one that is not routed times out).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Run `f` on a new thread that has entered the network namespace at `ns` (a
/// `/proc/PID/ns/net` path); sockets it makes belong to that namespace for good.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = File::open(ns)?;
    std::thread::spawn(move || {
        // SAFETY: setns with a valid namespace fd affects only this thread's network namespace
        // (CLONE_NEWNET may be entered per thread); the fd lives until the call returns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("namespace thread panicked"))?
}

/// `nsenter --net=NS [--mount=...] -- ARGS`: a command inside a namespace of `pid` (`net`, or
/// `net` and `mount` when `mount`).
pub fn nsenter(pid: u32, mount: bool, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/proc/{pid}/ns/net"));
    if mount {
        c.arg(format!("--mount=/proc/{pid}/ns/mnt"));
    }
    c.arg("--").args(args);
    c
}

/// Run `sh -c script` in the namespaces of `pid` (see [`nsenter`]); Err names the script and
/// its error output.
pub fn sh_in(pid: u32, mount: bool, script: &str) -> Result<Output, String> {
    let out = nsenter(pid, mount, &["sh", "-ec", script])
        .output()
        .map_err(|e| format!("nsenter: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "in the namespace of {pid}: `{}` failed ({}): {}",
            script.trim(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespace identity of `kind` (`net`, `mnt`) for `pid`, as `readlink /proc/PID/ns/KIND`
/// shows it (`net:[4026532281]`).
pub fn ns_id(pid: u32, kind: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Every process whose `kind` namespace is `id`.
pub fn pids_in_ns(kind: &str, id: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| ns_id(*pid, kind).as_deref() == Some(id))
        .collect()
}

/// A byte stream the relay carries: TCP, or the API server's Unix socket.
trait Conn: Read + Write + Send + Sized + 'static {
    fn dup(&self) -> std::io::Result<Self>;
    fn close_write(&self);
}

impl Conn for TcpStream {
    fn dup(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Conn for UnixStream {
    fn dup(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

fn pipe(mut from: impl Conn, mut to: impl Conn) {
    let _ = std::io::copy(&mut from, &mut to);
    to.close_write();
}

/// Carry bytes both ways between `a` and `b` until both sides have closed.
fn splice(a: impl Conn, b: impl Conn) {
    let (Ok(a2), Ok(b2)) = (a.dup(), b.dup()) else {
        return;
    };
    std::thread::spawn(move || pipe(a2, b2));
    pipe(b, a);
}

fn dial(ns: Option<&Path>, target: SocketAddr) -> std::io::Result<TcpStream> {
    match ns {
        Some(ns) => in_netns(ns, move || {
            TcpStream::connect_timeout(&target, DIAL_TIMEOUT)
        }),
        None => TcpStream::connect_timeout(&target, DIAL_TIMEOUT),
    }
}

/// Accept on `listener` forever; each connection is spliced to `target`, dialed in the
/// host's namespace.
fn forward(listener: TcpListener, target: SocketAddr) {
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || match dial(None, target) {
            Ok(up) => splice(conn, up),
            Err(e) => eprintln!("relay: {target}: {e}"),
        });
    }
}

/// One HTTP `CONNECT host:port` on `conn`: dial it inside `ns`, answer 200 and splice, or
/// answer 502 with the reason.
fn connect_proxy(mut conn: impl Conn, ns: PathBuf) {
    let Ok(read_half) = conn.dup() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // The headers up to the blank line; nothing follows them until the tunnel is up.
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut parts = request.split_whitespace();
    let target = match (parts.next(), parts.next()) {
        (Some("CONNECT"), Some(authority)) => authority.to_string(),
        _ => {
            let _ = conn.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
            return;
        }
    };
    let addr: Result<SocketAddr, String> = target
        .parse()
        .map_err(|e| format!("{target}: {e} (an IP:port is expected)"));
    let up = addr.and_then(|a| dial(Some(&ns), a).map_err(|e| format!("{target}: {e}")));
    match up {
        Ok(mut up) => {
            if conn
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .is_err()
            {
                return;
            }
            // Bytes the client sent after its headers were buffered by the reader.
            let early = reader.buffer().to_vec();
            if !early.is_empty() && up.write_all(&early).is_err() {
                return;
            }
            splice(conn, up);
        }
        Err(e) => {
            eprintln!("relay: CONNECT {e}");
            let _ = conn.write_all(
                format!(
                    "HTTP/1.1 502 Bad Gateway\r\ncontent-length: {}\r\n\r\n{e}",
                    e.len()
                )
                .as_bytes(),
            );
        }
    }
}

fn parse_pair(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (l, t) = s
        .split_once('=')
        .ok_or_else(|| format!("{s}: LISTEN=TARGET expected"))?;
    let l = l.parse().map_err(|e| format!("{l}: {e}"))?;
    let t = t.parse().map_err(|e| format!("{t}: {e}"))?;
    Ok((l, t))
}

/// The relay process (`cluster relay ...`):
/// - `--netns PATH`: the namespace it joins to the host (required, first);
/// - `--forward LISTEN=TARGET`: listen on LISTEN inside the namespace, dial TARGET on the host;
/// - `--connect-proxy SOCKET`: an HTTP CONNECT proxy on the Unix socket SOCKET (the API
///   server's egress transport) that dials inside the namespace.
///
/// Returns only on a bad argument or a listener that cannot be made; otherwise serves until
/// killed.
pub fn relay_main(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    let mut ns: Option<PathBuf> = None;
    let mut threads = Vec::new();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        match flag.as_str() {
            "--netns" => ns = Some(PathBuf::from(value)),
            "--forward" | "--connect-proxy" => {
                let ns = ns.clone().ok_or("--netns comes first")?;
                match flag.as_str() {
                    "--forward" => {
                        let (listen, target) = parse_pair(&value)?;
                        let l = in_netns(&ns, move || TcpListener::bind(listen))
                            .map_err(|e| format!("listen on {listen} in {}: {e}", ns.display()))?;
                        threads.push(std::thread::spawn(move || forward(l, target)));
                    }
                    _ => {
                        let _ = std::fs::remove_file(&value);
                        let l = UnixListener::bind(&value)
                            .map_err(|e| format!("listen on {value}: {e}"))?;
                        threads.push(std::thread::spawn(move || {
                            for conn in l.incoming().flatten() {
                                let ns = ns.clone();
                                std::thread::spawn(move || connect_proxy(conn, ns));
                            }
                        }));
                    }
                }
            }
            other => return Err(format!("unknown relay flag {other}")),
        }
    }
    eprintln!("relay: serving {} listeners", threads.len());
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
