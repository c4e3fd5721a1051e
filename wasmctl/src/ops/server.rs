//! The small HTTP server on the status address: `/healthz`, `/readyz`, `/metrics`, `/status`,
//! serving what its owner last published.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What the HTTP endpoints serve, rebuilt by its owner (agent, controller) after each change.
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
                    (200, super::metrics::CONTENT_TYPE, p.metrics.clone())
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
