//! Registry credentials in the Docker config format: `~/.docker/config.json` (where `docker login`
//! and oras look; `$DOCKER_CONFIG` moves it) and Kubernetes `dockerconfigjson` pull secrets, both
//! `{"auths": {"HOST": {"auth": base64("USER:PASSWORD")}}}`.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let file = dir.path().join("config.json");
//! wasmctl::oci::auth::store(&file, "127.0.0.1:5000", "alice", "s3cret").unwrap();
//! let c = wasmctl::oci::auth::find(&file, "127.0.0.1:5000").unwrap().unwrap();
//! assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "s3cret"));
//! // The password never shows in a description of the credentials.
//! assert!(!c.describe().contains("s3cret"));
//! ```

use crate::error::{Error, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use std::fmt;
use std::path::{Path, PathBuf};

/// A user name and password for one registry, and the file they came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token; never printed.
    pub password: String,
    /// The file they were read from.
    pub source: PathBuf,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

impl Credentials {
    /// `user "alice" from /root/.docker/config.json`: which credentials, never the secret.
    pub fn describe(&self) -> String {
        format!("user {:?} from {}", self.username, self.source.display())
    }
}

/// The Docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// The key a registry is stored under: the host[:port], without scheme or path.
pub fn normalize_host(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match k.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        _ => k,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read credentials file", path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::Credentials {
            path: path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        })
}

/// Find credentials for `registry` in `path`. `Ok(None)` when the file does not exist or has no
/// entry for it; an error when the file or the entry is malformed, or the entry defers to a
/// credential helper (not supported).
pub fn find(path: &Path, registry: &str) -> Result<Option<Credentials>> {
    let Some(doc) = read_json(path)? else {
        return Ok(None);
    };
    let bad = |reason: String| Error::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    // `{"auths": {...}}` (config.json, dockerconfigjson) or the legacy `.dockercfg` map.
    let auths = match doc.get("auths") {
        Some(a) => a,
        None => &doc,
    };
    let Some(auths) = auths.as_object() else {
        return Err(bad("\"auths\" is not an object".to_string()));
    };
    let want = normalize_host(registry);
    let Some((key, entry)) = auths.iter().find(|(k, _)| normalize_host(k) == want) else {
        if doc.get("credsStore").is_some() || doc.get("credHelpers").is_some() {
            return Err(bad(format!(
                "no entry for {want} in \"auths\", and credential helpers (credsStore/credHelpers) are not supported; store credentials with `wasmctl login {want} -u USER --password-stdin`"
            )));
        }
        return Ok(None);
    };
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(auth) = field("auth") {
        let decoded = STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("auths.{key}.auth is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad(format!("auths.{key}.auth is not UTF-8 once decoded")))?;
        let Some((user, pass)) = decoded.split_once(':') else {
            return Err(bad(format!(
                "auths.{key}.auth does not decode to USER:PASSWORD"
            )));
        };
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
            source: path.to_path_buf(),
        }));
    }
    if let (Some(user), Some(pass)) = (field("username"), field("password")) {
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
            source: path.to_path_buf(),
        }));
    }
    if field("identitytoken").is_some() || field("registrytoken").is_some() {
        return Err(bad(format!(
            "auths.{key} holds an identity/registry token, which is not supported; log in with a user name and password"
        )));
    }
    Err(bad(format!(
        "auths.{key} has neither \"auth\" nor \"username\"/\"password\""
    )))
}

/// Store `username`/`password` for `registry` in `path` as `auths.<host>.auth`, keeping every
/// other entry and setting; the file is replaced atomically and readable by its owner only.
pub fn store(path: &Path, registry: &str, username: &str, password: &str) -> Result<()> {
    if username.contains(':') {
        return Err(Error::Usage(format!(
            "user name {username:?} contains ':', which the Docker config format cannot store"
        )));
    }
    let mut doc = read_json(path)?.unwrap_or_else(|| json!({}));
    let Some(obj) = doc.as_object_mut() else {
        return Err(Error::Credentials {
            path: path.to_path_buf(),
            reason: "the top level is not an object".to_string(),
        });
    };
    let auths = obj.entry("auths").or_insert_with(|| json!({}));
    let Some(auths) = auths.as_object_mut() else {
        return Err(Error::Credentials {
            path: path.to_path_buf(),
            reason: "\"auths\" is not an object".to_string(),
        });
    };
    let host = normalize_host(registry);
    // Replace any other spelling of the same registry (https://HOST, HOST/v2/).
    auths.retain(|k, _| normalize_host(k) != host);
    auths.insert(
        host,
        json!({"auth": STANDARD.encode(format!("{username}:{password}"))}),
    );
    let text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create directory", dir, e))?;
    crate::fsutil::write_atomic(path, &text, 0o600)
}
