//! Just enough HTTP/1.1 for the tests: an upstream that records what it received and answers
//! as told, and a keep-alive client. Plain `std::net`, so a test sees every byte Envoy sent.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A request or response head plus body.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// Request line or status line.
    pub start: String,
    /// Headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// When a test server finished reading it (requests an [`Upstream`] received).
    pub received_at: Option<std::time::Instant>,
}

impl Message {
    /// Every value of a header, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.values(name).into_iter().next()
    }

    /// The status code of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The request target of a request.
    pub fn path(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Read one message; `Ok(None)` on a clean close before any byte.
pub fn read_message(
    r: &mut impl BufRead,
    is_response_to_head: bool,
) -> io::Result<Option<Message>> {
    let mut start = String::new();
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    let start = start.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "eof in headers",
            ));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad header line {line:?}"),
            )
        })?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut msg = Message {
        start,
        headers,
        body: Vec::new(),
        received_at: None,
    };
    if is_response_to_head {
        return Ok(Some(msg));
    }
    if msg
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                let mut trailer = String::new();
                while r.read_line(&mut trailer)? > 2 {
                    trailer.clear();
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            chunk.truncate(size);
            msg.body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = msg.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        msg.body = vec![0; len];
        r.read_exact(&mut msg.body)?;
    }
    Ok(Some(msg))
}

/// Write one message with a content-length.
pub fn write_message(
    w: &mut impl Write,
    start: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// An upstream on 127.0.0.1 that records every request and answers 200 with fixed headers and,
/// unless a fixed body is given, a body listing the request headers it received (`name: value`
/// lines).
pub struct Upstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Message>>>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    /// Start an upstream whose responses carry `response_headers` (besides content-length) and
    /// echo the request headers.
    pub fn start(response_headers: &[(&str, &str)]) -> Upstream {
        Upstream::serving(response_headers, None)
    }

    /// Start an upstream whose responses carry `response_headers` and `body`, or echo the
    /// request headers when `body` is `None`.
    pub fn serving(response_headers: &[(&str, &str)], body: Option<&str>) -> Upstream {
        Upstream::answering(200, response_headers, body)
    }

    /// Start an upstream that answers `status` with `response_headers` and `body` (or the echo
    /// of the request headers when `body` is `None`).
    pub fn answering(
        status: u16,
        response_headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Upstream {
        let body: Arc<Option<String>> = Arc::new(body.map(str::to_string));
        let status_line = Arc::new(format!("HTTP/1.1 {status} {}", reason(status)));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let headers: Arc<Vec<(String, String)>> = Arc::new(
            response_headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let (rec, st) = (received.clone(), stop.clone());
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (rec, headers, body) = (rec.clone(), headers.clone(), body.clone());
                let line = status_line.clone();
                thread::spawn(move || serve(conn, &rec, &line, &headers, body.as_deref()));
            }
        });
        Upstream {
            addr,
            received,
            stop,
            accept: Some(accept),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Message> {
        self.received.lock().expect("upstream lock").clone()
    }

    /// The last request received.
    pub fn last(&self) -> Message {
        self.received()
            .pop()
            .expect("the upstream received no request")
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve(
    conn: TcpStream,
    rec: &Mutex<Vec<Message>>,
    status_line: &str,
    headers: &[(String, String)],
    fixed: Option<&str>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    while let Ok(Some(req)) = read_message(&mut r, false) {
        let body = match fixed {
            Some(b) => b.to_string(),
            None => req
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}\n"))
                .collect(),
        };
        let req = Message {
            received_at: Some(std::time::Instant::now()),
            ..req
        };
        rec.lock().expect("upstream lock").push(req);
        if write_message(&mut w, status_line, headers, body.as_bytes()).is_err() {
            return;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.addr).map(|s| s.shutdown(Shutdown::Both));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connect to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            addr,
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// This end of the connection (what the server sees as the client's address).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    /// Send one request on this connection and read the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Message> {
        self.send(method, path, headers, b"")
    }

    /// Send one request with a body on this connection and read the response. The request
    /// carries `host: ADDRESS` unless `headers` has a `host`, and `content-length` only with a
    /// body.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Message> {
        // As curl does: `host` first (the address, unless the caller gives one), and a
        // content-length only for a body.
        let mut out = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            out.push_str(&format!("host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            out.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        self.writer.write_all(&bytes)?;
        self.writer.flush()?;
        read_message(&mut self.reader, method == "HEAD")?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))
    }

    /// `GET path` with extra headers.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Message> {
        self.request("GET", path, headers)
    }
}

/// One request on a fresh connection.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> io::Result<Message> {
    Client::connect(addr)?.get(path, headers)
}

/// Parse the upstream's echo body back into headers.
pub fn echoed(body: &str) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for line in body.lines() {
        if let Some((k, v)) = line.split_once(": ") {
            m.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    m
}
