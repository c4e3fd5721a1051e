//! Long-lived connections through a proxy, and what happens to them: an app on 127.0.0.1 that
//! answers `GET /stream` with a chunk every 100 ms (HTTP/1.1 chunked) until the client goes,
//! echoes WebSocket frames after an HTTP/1.1 Upgrade, and answers anything else with a short
//! body; and the clients that hold such connections open and report whether they were cut.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

/// The app.
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl App {
    /// Start it on a free port.
    pub fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the app");
        let addr = listener.local_addr().expect("app address");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        // Blocking accepts; drop wakes the last one with a connection of its own.
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    let st = st.clone();
                    thread::spawn(move || serve(conn, &st));
                }
            }
        });
        App { addr, stop }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// The request head (up to the blank line), lower-cased header names.
fn read_head(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Some((path, headers))
}

fn serve(conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nodelay(true);
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    while let Some((path, headers)) = read_head(&mut r) {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
            let key = header("sec-websocket-key").unwrap_or("");
            let accept = websocket_accept(key);
            let _ = write!(
                w,
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            );
            // Echo every frame back unmasked.
            while let Some(payload) = read_frame(&mut r) {
                if w.write_all(&frame(&payload, None)).is_err() {
                    return;
                }
            }
            return;
        }
        if path.starts_with("/stream") {
            if w
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
                .is_err()
            {
                return;
            }
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let chunk = format!("chunk {i}\n");
                if write!(w, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        let body = "ok\n";
        if write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .is_err()
        {
            return;
        }
    }
}

/// One WebSocket frame's payload (masked or not); `None` at the end or on close.
fn read_frame(r: &mut impl Read) -> Option<Vec<u8>> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).ok()?;
    if h[0] & 0x0f == 0x8 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).ok()?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        len = u64::from_be_bytes(b);
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).ok()?;
    }
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    r.read_exact(&mut payload).ok()?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Some(payload)
}

/// A final text frame with `payload`, masked with `mask` (clients must mask).
fn frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x81];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455: base64 of the SHA-1 of key + the GUID).
pub fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    let digest = sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// SHA-1 (only for the WebSocket handshake).
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, c) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// What one held connection went through.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Chunks (or echoes) received.
    pub received: u64,
    /// Why it ended before it was let go, if it did.
    pub cut: Option<String>,
}

/// A connection held open by a thread until [`Holder::finish`].
pub struct Holder {
    what: String,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    handle: Option<thread::JoinHandle<Option<String>>>,
    child: Option<Child>,
}

impl Holder {
    /// `GET /stream` over HTTP/1.1, reading chunks.
    pub fn stream(addr: SocketAddr) -> Holder {
        Holder::thread("HTTP/1.1 stream", move |stop, received| {
            let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            s.write_all(b"GET /stream HTTP/1.1\r\nhost: details\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) => return Err("the connection was closed".into()),
                    Ok(_) if line.starts_with("chunk ") => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        })
    }

    /// A WebSocket: a frame every 100 ms, each echo counted.
    pub fn websocket(addr: SocketAddr) -> Holder {
        Holder::thread("WebSocket", move |stop, received| {
            let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            let key = "dGhlIHNhbXBsZSBub25jZQ==";
            write!(
                s,
                "GET /ws HTTP/1.1\r\nhost: details\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n"
            )
            .map_err(|e| e.to_string())?;
            let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
            let mut status = String::new();
            r.read_line(&mut status).map_err(|e| e.to_string())?;
            if !status.contains(" 101 ") {
                return Err(format!("no upgrade: {}", status.trim()));
            }
            let mut accepted = false;
            loop {
                let mut l = String::new();
                r.read_line(&mut l).map_err(|e| e.to_string())?;
                if l.trim().is_empty() {
                    break;
                }
                accepted |= l.to_ascii_lowercase().trim()
                    == format!("sec-websocket-accept: {}", websocket_accept(key))
                        .to_ascii_lowercase();
            }
            if !accepted {
                return Err("the upgrade's accept key is wrong".into());
            }
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msg = format!("ping {n}");
                s.write_all(&frame(msg.as_bytes(), Some([1, 2, 3, 4])))
                    .map_err(|e| format!("send: {e}"))?;
                match read_frame(&mut r) {
                    Some(p) if p == msg.as_bytes() => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(p) => return Err(format!("echo {:?}", String::from_utf8_lossy(&p))),
                    None => return Err("the connection was closed".into()),
                }
                n += 1;
                thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
    }

    /// `GET /stream` over one HTTP/2 connection (curl, prior knowledge), reading chunks.
    pub fn http2_stream(addr: SocketAddr) -> Holder {
        let mut child = Command::new("curl")
            .args([
                "-sSN",
                "--http2-prior-knowledge",
                "-o",
                "-",
                "-w",
                "\ncurl: %{http_version}\n",
            ])
            .arg(format!("http://{addr}/stream"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run curl");
        let stdout = child.stdout.take().expect("curl stdout");
        let mut h = Holder::thread("HTTP/2 stream", move |stop, received| {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while !stop.load(Ordering::Relaxed) {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) => return Err("curl's stream ended".into()),
                    Ok(_) if line.starts_with("chunk ") => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) if line.starts_with("curl: ") => {
                        return Err(format!("the stream ended ({})", line.trim()));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        });
        h.child = Some(child);
        h
    }

    fn thread(
        what: &str,
        body: impl FnOnce(&AtomicBool, &AtomicU64) -> Result<(), String> + Send + 'static,
    ) -> Holder {
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (st, rc) = (stop.clone(), received.clone());
        let handle = thread::spawn(move || body(&st, &rc).err());
        Holder {
            what: what.to_string(),
            stop,
            received,
            handle: Some(handle),
            child: None,
        }
    }

    /// What it holds.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Chunks or echoes so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Whether it was cut already.
    pub fn cut(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| h.is_finished())
    }

    /// Let go, and say what it went through.
    pub fn finish(mut self) -> Held {
        self.stop.store(true, Ordering::SeqCst);
        // A thread still reading a live stream returns at its next line (100 ms).
        let early = self.cut();
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let why = self.handle.take().and_then(|h| h.join().ok()).flatten();
        Held {
            received: self.received(),
            cut: if early {
                why.or(Some("ended".into()))
            } else {
                None
            },
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_key_is_rfc_6455s() {
        // The example of RFC 6455, section 1.3.
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn the_app_streams_and_echoes_directly() {
        let app = App::start();
        let s = Holder::stream(app.addr);
        let w = Holder::websocket(app.addr);
        crate::poll_until(std::time::Instant::now() + Duration::from_secs(10), || {
            (s.received() >= 3 && w.received() >= 3).then_some(())
        });
        let (s, w) = (s.finish(), w.finish());
        assert!(s.cut.is_none() && s.received >= 3, "{s:?}");
        assert!(w.cut.is_none() && w.received >= 3, "{w:?}");
    }
}
