//! The built-in upstream of `wasmctl dev --echo`: an HTTP/1.1 server on 127.0.0.1 that answers
//! every request with what it received (method, path, headers in order, body) as JSON, so the
//! author sees what the filter did to the request. Keep-alive; bodies by `content-length` or
//! chunked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Start the echo server on a free port of 127.0.0.1; it runs until the process exits.
pub fn start() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = std::thread::Builder::new()
                    .name("echo-conn".into())
                    .spawn(move || serve(conn));
            }
        })?;
    Ok(addr)
}

/// The largest request body echoed; a larger one is answered 413.
const MAX_BODY: usize = 8 << 20;

fn serve(conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut out = write_half;
    while let Some(req) = read_request(&mut reader) {
        let (status, body) = match req {
            Ok(r) => (200, r),
            Err(e) => (e.0, serde_json::json!({"error": e.1})),
        };
        let body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            if status == 200 { "OK" } else { "Bad Request" },
            body.len() + 1
        );
        // One write: a response in pieces waits on Nagle and delayed ACKs (40 ms a request).
        let mut response = head.into_bytes();
        response.extend_from_slice(&body);
        response.push(b'\n');
        if out.write_all(&response).is_err() {
            return;
        }
        if status != 200 {
            return;
        }
    }
}

type Echo = Result<serde_json::Value, (u16, String)>;

/// One request, `None` at the end of the connection.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<Echo> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Some(Err((400, format!("bad request line {line:?}"))));
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        match read_chunked(r) {
            Ok(b) => b,
            Err(e) => return Some(Err((400, e))),
        }
    } else {
        let len = header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if len > MAX_BODY {
            return Some(Err((413, format!("body of {len} bytes: over {MAX_BODY}"))));
        }
        let mut b = vec![0; len];
        r.read_exact(&mut b).ok()?;
        b
    };
    // "name: value", one a line when pretty-printed; in order, repeats kept.
    let headers: Vec<String> = headers
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    Some(Ok(serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    })))
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).map_err(|e| e.to_string())?;
        let size = size.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        if n == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut t = String::new();
                if r.read_line(&mut t).map_err(|e| e.to_string())? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + n > MAX_BODY {
            return Err(format!("chunked body over {MAX_BODY} bytes"));
        }
        let start = body.len();
        body.resize(start + n, 0);
        r.read_exact(&mut body[start..])
            .map_err(|e| e.to_string())?;
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf).map_err(|e| e.to_string())?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exchange(addr: SocketAddr, raw: &str, responses: usize) -> Vec<serde_json::Value> {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(raw.as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        let mut out = Vec::new();
        for _ in 0..responses {
            let mut len = 0;
            loop {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if l.trim().is_empty() {
                    break;
                }
            }
            let mut b = vec![0; len];
            r.read_exact(&mut b).unwrap();
            out.push(serde_json::from_slice(&b).unwrap());
        }
        out
    }

    #[test]
    fn echoes_requests_on_one_connection_with_both_body_framings() {
        let addr = start().unwrap();
        let got = exchange(
            addr,
            "POST /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\ncontent-length: 3\r\n\r\nabc\
             PUT /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n",
            2,
        );
        assert_eq!(got[0]["method"], "POST");
        assert_eq!(got[0]["path"], "/a?b=1");
        assert_eq!(got[0]["headers"][1], "x-a: 1");
        assert_eq!(got[0]["body"], "abc");
        assert_eq!(got[1]["method"], "PUT");
        assert_eq!(got[1]["body"], "def");
    }
}
