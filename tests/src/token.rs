//! A token issuer for the registry's Bearer flow (Docker's token authentication): a small HTTP
//! server on 127.0.0.1 that checks HTTP basic credentials and answers `GET /token?scope=...&
//! service=...` with a JWT signed RS256 by a key whose certificate the registry trusts
//! (`auth.token.rootcertbundle`), carrying the certificate in the `x5c` header. Keys and
//! certificates are made with `openssl`; signatures with `openssl dgst`. Every request is
//! recorded, so tests can see which credentials arrived and which scopes were asked for.

use crate::http1::{self, Message};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `service` the registry names in its challenge and the token's audience.
pub const SERVICE: &str = "e2e-registry";
/// The token's issuer, as the registry is configured to expect.
pub const ISSUER: &str = "e2e-token-issuer";

/// A running token issuer.
pub struct TokenIssuer {
    /// Where it listens.
    pub addr: SocketAddr,
    dir: PathBuf,
    requests: Arc<Mutex<Vec<Message>>>,
    stop: Arc<AtomicBool>,
}

struct Signer {
    key: PathBuf,
    cert_der_b64: String,
    user: String,
    password: String,
}

impl TokenIssuer {
    /// Make a signing key and certificate in `dir` and serve tokens to `user`/`password`.
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenIssuer {
        crate::self_signed(dir, "/CN=e2e token signer", "token.key", "token.pem");
        let der = crate::openssl(dir, &["x509", "-in", "token.pem", "-outform", "DER"]);
        let signer = Arc::new(Signer {
            key: dir.join("token.key"),
            cert_der_b64: STANDARD.encode(der),
            user: user.to_string(),
            password: password.to_string(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token issuer");
        let addr = listener.local_addr().expect("token issuer address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, st) = (requests.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (rec, signer) = (rec.clone(), signer.clone());
                thread::spawn(move || {
                    let Ok(mut w) = conn.try_clone() else { return };
                    let mut r = BufReader::new(conn);
                    while let Ok(Some(req)) = http1::read_message(&mut r, false) {
                        let (status, body) = answer(&signer, &req);
                        rec.lock().expect("requests").push(req);
                        let line = format!("HTTP/1.1 {status}");
                        let headers =
                            [("content-type".to_string(), "application/json".to_string())];
                        if http1::write_message(&mut w, &line, &headers, body.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        TokenIssuer {
            addr,
            dir: dir.to_path_buf(),
            requests,
            stop,
        }
    }

    /// The realm URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate the registry must trust for the tokens' signatures.
    pub fn certificate(&self) -> PathBuf {
        self.dir.join("token.pem")
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<Message> {
        self.requests.lock().expect("requests").clone()
    }

    /// The `scope` parameters asked for so far, decoded (`repository:NAME:ACTIONS`).
    pub fn scopes(&self) -> Vec<String> {
        self.requests()
            .iter()
            .flat_map(|r| query(r.path()))
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v)
            .collect()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// Query parameters, percent-decoded, in order.
fn query(path: &str) -> Vec<(String, String)> {
    let Some((_, q)) = path.split_once('?') else {
        return Vec::new();
    };
    let decode = |s: &str| {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 3;
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// 401 for wrong credentials; otherwise a token granting what each `repository:NAME:ACTIONS`
/// scope asks (nothing for an anonymous request).
fn answer(signer: &Signer, req: &Message) -> (&'static str, String) {
    let authenticated = match req.header("authorization") {
        None => false,
        Some(v) => {
            let expected = STANDARD.encode(format!("{}:{}", signer.user, signer.password));
            if v.strip_prefix("Basic ") != Some(expected.as_str()) {
                return (
                    "401 Unauthorized",
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.into(),
                );
            }
            true
        }
    };
    let mut access = Vec::new();
    for (k, v) in query(req.path()) {
        if k != "scope" {
            continue;
        }
        let mut parts = v.splitn(3, ':');
        if let (Some("repository"), Some(name), Some(actions)) =
            (parts.next(), parts.next(), parts.next())
        {
            let actions: Vec<&str> = if authenticated {
                actions.split(',').collect()
            } else {
                Vec::new()
            };
            access
                .push(serde_json::json!({"type": "repository", "name": name, "actions": actions}));
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [signer.cert_der_b64]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": if authenticated { signer.user.as_str() } else { "" },
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", access.len()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&signer.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().expect("openssl dgst");
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(out.stdout));
    (
        "200 OK",
        serde_json::json!({"token": token, "expires_in": 300}).to_string(),
    )
}
