//! A connection scenario (`connection:`) driven through a real Envoy: a client connects to the
//! listener of [`crate::envoy::tcp_proxy_bootstrap`], a scripted upstream server (127.0.0.1, a
//! port chosen by the kernel) accepts what `tcp_proxy` connects, and each step is played on the
//! side it names. With several upstream clusters (the scenario's `tcp_clusters`), each has a
//! server of its own, and the one that accepts the connection is the cluster `tcp_proxy` chose. After each step the driver waits for Envoy to have taken it in, so that each
//! chunk is one read of Envoy's (one `proxy_on_*_data`), as in the harness:
//!
//! - a chunk sent: until Envoy counted the bytes read (`tcp.PREFIX.downstream_cx_rx_bytes_total`
//!   for the client's, `cluster.NAME.upstream_cx_rx_bytes_total` for the upstream's);
//! - a close (`shutdown(Write)`): until the other end saw the end of stream, or the connection
//!   is gone;
//!
//! and, at the end, until Envoy destroyed the connection (`listener.main.downstream_cx_destroy`:
//! the wasm context's `proxy_on_done`, `proxy_on_log` and `proxy_on_delete` ran before it). Every
//! wait polls with a deadline.

use crate::envoy::{Envoy, TCP_STAT_PREFIX};
use proxy_wasm_harness::scenario::{ConnectionOutcome, End, Scenario, Step};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one step may take in Envoy.
pub const STEP_DEADLINE: Duration = Duration::from_secs(10);

/// What one end of the connection has received, and when it saw the end of stream.
#[derive(Debug, Default)]
struct Received {
    bytes: Vec<u8>,
    eof: Option<Instant>,
}

/// One end of the connection as the test holds it: its socket and a thread reading it.
struct Peer {
    stream: TcpStream,
    got: Arc<Mutex<Received>>,
}

impl Peer {
    fn new(stream: TcpStream) -> Result<Peer, String> {
        let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
        let got = Arc::new(Mutex::new(Received::default()));
        let into = got.clone();
        // Ends when the socket does: at the end of stream, or on an error (a reset).
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        into.lock().unwrap().eof = Some(Instant::now());
                        return;
                    }
                    Ok(n) => into.lock().unwrap().bytes.extend_from_slice(&buf[..n]),
                }
            }
        });
        Ok(Peer { stream, got })
    }

    fn bytes(&self) -> Vec<u8> {
        self.got.lock().unwrap().bytes.clone()
    }

    fn eof(&self) -> Option<Instant> {
        self.got.lock().unwrap().eof
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Unblocks the reader thread whatever state the connection is in.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Play `scenario`'s connection through `envoy` (built by [`crate::envoy::tcp_proxy_bootstrap`]
/// with the addresses of `upstreams`, (cluster name, its server)): which cluster got the
/// connection, what each end received and the order in which Envoy closed them.
pub fn drive(
    envoy: &Envoy,
    upstreams: &[(&str, &TcpListener)],
    scenario: &Scenario,
) -> Result<ConnectionOutcome, String> {
    let steps = scenario.steps_to_run()?;
    for (_, l) in upstreams {
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let client = TcpStream::connect(envoy.listener).map_err(|e| format!("connect: {e}"))?;
    let (cluster, accepted) = crate::poll_until(Instant::now() + STEP_DEADLINE, || {
        upstreams
            .iter()
            .find_map(|(name, l)| l.accept().ok().map(|(s, _)| (name.to_string(), s)))
    })
    .ok_or("tcp_proxy never connected to an upstream")?;
    accepted.set_nonblocking(false).map_err(|e| e.to_string())?;
    let upstream_rx = format!("cluster.{cluster}.upstream_cx_rx_bytes_total");
    let client = Peer::new(client)?;
    let server = Peer::new(accepted)?;
    let stat = |name: &str| envoy.stat(name).unwrap_or(0);
    let destroyed = || stat("listener.main.downstream_cx_destroy") >= 1;
    let (mut from_client, mut from_server) = (0u64, 0u64);
    for (i, (step, _)) in steps.iter().enumerate() {
        let waited = match step {
            Step::Downstream(t) => {
                (&client.stream)
                    .write_all(t.as_bytes())
                    .map_err(|e| format!("connection[{i}]: the client cannot send: {e}"))?;
                from_client += t.len() as u64;
                let read = format!("tcp.{TCP_STAT_PREFIX}.downstream_cx_rx_bytes_total");
                crate::poll_until(Instant::now() + STEP_DEADLINE, || {
                    (stat(&read) >= from_client).then_some(())
                })
            }
            Step::Upstream(t) => {
                (&server.stream)
                    .write_all(t.as_bytes())
                    .map_err(|e| format!("connection[{i}]: the upstream cannot send: {e}"))?;
                from_server += t.len() as u64;
                crate::poll_until(Instant::now() + STEP_DEADLINE, || {
                    (stat(&upstream_rx) >= from_server).then_some(())
                })
            }
            // A close is taken in when the other end sees it, or the connection is gone (a
            // filter that holds the end of stream: then nothing shows it but the deadline).
            Step::Close(End::Downstream) => {
                client
                    .stream
                    .shutdown(Shutdown::Write)
                    .map_err(|e| format!("connection[{i}]: the client cannot close: {e}"))?;
                crate::poll_until(Instant::now() + STEP_DEADLINE, || {
                    (server.eof().is_some() || destroyed()).then_some(())
                })
            }
            Step::Close(End::Upstream) => {
                server
                    .stream
                    .shutdown(Shutdown::Write)
                    .map_err(|e| format!("connection[{i}]: the upstream cannot close: {e}"))?;
                crate::poll_until(Instant::now() + STEP_DEADLINE, || {
                    (client.eof().is_some() || destroyed()).then_some(())
                })
            }
        };
        if waited.is_none() && !matches!(step, Step::Close(_)) {
            return Err(format!(
                "connection[{i}] ({step}): Envoy did not read it within {STEP_DEADLINE:?}"
            ));
        }
    }
    crate::poll_until(Instant::now() + STEP_DEADLINE, || {
        (destroyed() && client.eof().is_some() && server.eof().is_some()).then_some(())
    })
    .ok_or_else(|| format!("Envoy did not close the connection within {STEP_DEADLINE:?}"))?;
    let mut closed = [
        (server.eof(), End::Upstream),
        (client.eof(), End::Downstream),
    ];
    closed.sort_by_key(|(at, _)| *at);
    // One connection: no other cluster's server was connected to meanwhile.
    if let Some((other, _)) = upstreams
        .iter()
        .find(|(name, l)| *name != cluster && l.accept().is_ok())
    {
        return Err(format!(
            "tcp_proxy connected to {other} as well as to {cluster}"
        ));
    }
    Ok(ConnectionOutcome {
        upstream_cluster: cluster,
        upstream_received: String::from_utf8_lossy(&server.bytes()).into_owned(),
        downstream_received: String::from_utf8_lossy(&client.bytes()).into_owned(),
        closed: closed.iter().map(|(_, e)| *e).collect(),
    })
}
