//! A real CNCF Distribution registry (Debian `docker-registry`) for a test: `docker-registry
//! serve CONFIG` on 127.0.0.1 with a free port and storage in a temp dir, optionally with htpasswd
//! basic auth (`htpasswd -B`, Debian `apache2-utils`). Ready when `/v2/` answers (deadline, no
//! fixed sleep); stopped by process id on drop, also when the test fails (its log is printed then).

use crate::http1;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the registry may take to answer `/v2/`.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A running registry.
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The token issuer of a [`Registry::start_with_token_auth`] registry.
    pub issuer: Option<crate::token::TokenIssuer>,
    /// Its address.
    pub addr: SocketAddr,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Registry {
        Registry::launch(None, false, false, "wasmctl-test")
    }

    /// A registry requiring HTTP basic auth for `user`/`password` (bcrypt htpasswd).
    pub fn start_with_htpasswd(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user, password)), false, false, "wasmctl-test")
    }

    /// [`Registry::start_with_htpasswd`] whose basic challenge names `realm`. Istio's wasm
    /// fetcher refuses any challenge whose realm is not an http(s) URL of a public host (its
    /// guard against bearer realms that point inside the network applies to basic challenges
    /// too), so a registry that pilot-agent pulls from needs a URL-shaped realm.
    pub fn start_with_htpasswd_realm(user: &str, password: &str, realm: &str) -> Registry {
        Registry::launch(Some((user, password)), false, false, realm)
    }

    /// An anonymous registry serving HTTPS for 127.0.0.1 with a certificate from a test CA
    /// made with `openssl`; [`Registry::certificate`] is the CA's PEM file.
    pub fn start_tls() -> Registry {
        Registry::launch(None, true, false, "wasmctl-test")
    }

    /// The CA certificate that signed a [`Registry::start_tls`] registry's certificate.
    pub fn certificate(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A registry speaking Docker's Bearer token flow: its challenge sends clients to a
    /// [`crate::token::TokenIssuer`] that gives `user`/`password` tokens for what they ask.
    pub fn start_with_token_auth(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user, password)), false, true, "wasmctl-test")
    }

    fn launch(auth: Option<(&str, &str)>, tls: bool, token: bool, realm: &str) -> Registry {
        let mut dir = tempfile::tempdir().expect("temp dir");
        let storage = dir.path().join("storage");
        fs::create_dir_all(&storage).expect("storage dir");
        let mut auth_yaml = String::new();
        let mut issuer = None;
        if let (true, Some((user, password))) = (token, auth) {
            let t = crate::token::TokenIssuer::start(dir.path(), user, password);
            auth_yaml = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm(),
                crate::token::SERVICE,
                crate::token::ISSUER,
                t.certificate().display()
            );
            issuer = Some(t);
        } else if let Some((user, password)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd (Debian apache2-utils; run scripts/setup)");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let file = dir.path().join("htpasswd");
            fs::write(&file, out.stdout).expect("write htpasswd");
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: {realm}\n    path: {}\n",
                file.display()
            );
        }
        let mut tls_yaml = String::new();
        if tls {
            let d = dir.path();
            let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
            // A CA, and the registry's certificate signed by it (webpki refuses a CA
            // certificate as the server's own).
            crate::self_signed(d, "/CN=e2e test CA", "ca.key", "ca.pem");
            crate::ca_signed(
                d,
                ("ca.key", "ca.pem"),
                "/CN=127.0.0.1",
                ("key.pem", "cert.pem"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            );
            tls_yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        // A port taken between probing and binding makes the registry exit: try again.
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls_yaml}{auth_yaml}",
                storage.display()
            );
            let cfg = dir.path().join("config.yml");
            fs::write(&cfg, config).expect("write config");
            let log = fs::File::create(dir.path().join("registry.log")).expect("log");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("run docker-registry (Debian docker-registry; run scripts/setup)");
            let mut reg = Registry {
                child: Some(child),
                dir,
                issuer: issuer.take(),
                addr,
            };
            match reg.wait_ready() {
                Ok(()) => return reg,
                Err(exited) if exited => {
                    reg.stop();
                    issuer = reg.issuer.take();
                    dir = reg.take_dir();
                    continue;
                }
                Err(_) => panic!(
                    "registry not ready within {READY_DEADLINE:?}\n---- log ----\n{}",
                    reg.log()
                ),
            }
        }
        panic!("registry could not bind a free port in 5 tries");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.child = None;
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }

    /// Err(true): the process exited (retry on another port); Err(false): deadline.
    fn wait_ready(&mut self) -> Result<(), bool> {
        let (child, addr) = (&mut self.child, self.addr);
        crate::poll_until(Instant::now() + READY_DEADLINE, || {
            if let Some(child) = child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                return Some(Err(true));
            }
            // 200 anonymous, 401 with auth: either way it serves the API; a TLS listener
            // answers plain HTTP with 400.
            http1::get(addr, "/v2/", &[])
                .is_ok_and(|r| matches!(r.status(), 200 | 401 | 400))
                .then_some(Ok(()))
        })
        .unwrap_or(Err(false))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:PORT/REPO`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.addr)
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Kill it (by pid) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the registry again after [`Registry::stop`], on the same address, storage and
    /// configuration; waits until it answers.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "registry {} is still running",
            self.addr
        );
        let log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.path().join("registry.log"))
            .expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("run docker-registry");
        self.child = Some(child);
        if let Err(exited) = self.wait_ready() {
            panic!(
                "registry {} did not come back (exited: {exited})\n---- log ----\n{}",
                self.addr,
                self.log()
            );
        }
    }

    /// The directory the registry keeps its files in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("---- registry {} log ----\n{}", self.addr, self.log());
        }
        self.stop();
    }
}
