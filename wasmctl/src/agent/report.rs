//! How the agent reports: one `key=value` log line per event on stderr, Prometheus text
//! metrics, a status JSON document, and the small HTTP server that serves them on 127.0.0.1.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-25T21:14:40.123Z`.
pub fn rfc3339(unix: f64) -> String {
    let ms = (unix * 1000.0) as i64;
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// A log line's value: bare when it is a simple word, else double-quoted with escapes.
fn value(v: &str) -> String {
    let simple = !v.is_empty()
        && v.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'=' && c != b'\\');
    if simple {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

/// Write one structured line to stderr: `ts=... level=... event=... k=v ...`.
pub fn log(level: &str, event: &str, fields: &[(&str, &str)]) {
    let mut line = format!("ts={} level={level} event={event}", rfc3339(unix_now()));
    for (k, v) in fields {
        let _ = write!(line, " {k}={}", value(v));
    }
    eprintln!("{line}");
}

/// A duration as the flags take it: `500ms`, `1s`, `2m`, `1h`, `1m30s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<f64>() {
        return secs(n, text);
    }
    let mut total = 0.0;
    let mut rest = t;
    if rest.is_empty() {
        return Err(format!("{text:?}: empty duration"));
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{text:?}: expected a number before {unit:?}"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use ms, s, m or h, e.g. 30s)"
                ));
            }
        };
        total += n * scale;
        rest = next;
    }
    secs(total, text)
}

fn secs(n: f64, text: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(n).map_err(|_| format!("{text:?}: not a valid duration"))
}

/// Escape a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the HTTP endpoints serve, rebuilt by the agent after each change.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Every listed image has a good module in place.
    pub ready: bool,
    /// Why not ready, when not.
    pub not_ready: String,
    /// `/metrics`.
    pub metrics: String,
    /// `/status`.
    pub status: String,
}

/// Serve `/healthz`, `/readyz`, `/metrics` and `/status` on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, published: Arc<Mutex<Published>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let published = published.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            // The request head only; bodies are not expected.
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let mut words = head.split_whitespace();
            let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let path = target.split('?').next().unwrap_or("");
            let p = published.lock().map(|p| p.clone()).unwrap_or_default();
            let (status, ctype, body) = match (method, path) {
                ("GET" | "HEAD", "/healthz") => (200, "text/plain", "ok\n".to_string()),
                ("GET" | "HEAD", "/readyz") if p.ready => (200, "text/plain", "ready\n".into()),
                ("GET" | "HEAD", "/readyz") => {
                    (503, "text/plain", format!("not ready: {}\n", p.not_ready))
                }
                ("GET" | "HEAD", "/metrics") => {
                    (200, "text/plain; version=0.0.4", p.metrics.clone())
                }
                ("GET" | "HEAD", "/status") => (200, "application/json", p.status.clone()),
                ("GET" | "HEAD", _) => (
                    404,
                    "text/plain",
                    "not found: try /healthz, /readyz, /metrics, /status\n".into(),
                ),
                _ => (405, "text/plain", "only GET and HEAD\n".into()),
            };
            let reason = match status {
                200 => "OK",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Service Unavailable",
            };
            let mut out = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if method != "HEAD" {
                out.extend_from_slice(body.as_bytes());
            }
            let _ = conn.write_all(&out).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// Bind the status listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_values() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_641_280.5), "2026-11-25T21:14:40.500Z");
        assert_eq!(value("abc"), "abc");
        assert_eq!(value("a b"), "\"a b\"");
        assert_eq!(value(""), "\"\"");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(
            parse_duration("5 minutes")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
