//! A TCP relay on 127.0.0.1 in front of a server that can be made to stall: while stalled it
//! keeps every connection open and accepts new ones, but forwards nothing either way, as a
//! server (or a network path) that hangs does. Used to show that a client bounds its calls.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A running relay; it stops accepting when dropped (connections end with their peers).
pub struct StallProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    stalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl StallProxy {
    /// Relay 127.0.0.1:FREE to `target`.
    pub fn start(target: SocketAddr) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let stalled = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (stalled.clone(), stop.clone());
        // Blocking accepts; drop wakes the last one with a connection of its own.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                match client {
                    Ok(client) => {
                        let Ok(upstream) = TcpStream::connect(target) else {
                            continue;
                        };
                        for (from, to) in [
                            (client.try_clone(), upstream.try_clone()),
                            (upstream.try_clone(), client.try_clone()),
                        ] {
                            if let (Ok(from), Ok(to)) = (from, to) {
                                let (s, st) = (s.clone(), st.clone());
                                std::thread::spawn(move || pump(from, to, &s, &st));
                            }
                        }
                    }
                    Err(_) => continue,
                }
            }
        });
        StallProxy {
            addr,
            stalled,
            stop,
        }
    }

    /// Stop forwarding (`true`) or forward again (`false`).
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copy `from` to `to`, holding each chunk while stalled.
fn pump(mut from: TcpStream, mut to: TcpStream, stalled: &AtomicBool, stop: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if stalled.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A chunk read just before a stall still waits for the stall to end.
                while stalled.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
