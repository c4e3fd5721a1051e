//! Image signatures in cosign's format, with cosign's key files, offline.
//!
//! - Keys: the public key is a PEM `PUBLIC KEY` (PKIX, ECDSA P-256), as `cosign generate-key-pair`
//!   writes `cosign.pub`; the private key a PEM `ENCRYPTED SIGSTORE PRIVATE KEY` (or the older
//!   `ENCRYPTED COSIGN PRIVATE KEY`): JSON naming the KDF (scrypt, with its salt and parameters)
//!   and the cipher (NaCl secretbox, with its nonce), whose ciphertext is the PKCS #8 key.
//! - A signature covers a "simple signing" payload naming the repository and the manifest digest
//!   (`critical.image.docker-manifest-digest`), optional annotations beside it. It is an ASN.1 DER
//!   ECDSA signature over the payload's SHA-256, base64 in the layer annotation
//!   `dev.cosignproject.cosign/signature`.
//! - Storage: an OCI manifest tagged `sha256-<hex>.sig` in the image's repository, one layer per
//!   signature (media type `application/vnd.dev.cosign.simplesigning.v1+json`, the payload as the
//!   blob). Signing again appends a layer.
//!
//! No transparency log and no certificate authority: key pairs only. Nothing here opens a
//! connection other than to the image's registry.

use crate::error::{Error, Result};
use crate::oci::layout::sha256_digest;
use crate::oci::registry::{Options, Remote};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use oci_client::RegistryOperation;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// The payload's media type, as cosign writes it.
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The payload's `critical.type`.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The largest signature manifest or payload read (cosign's are a few hundred bytes).
const MAX_SIGNATURE_BYTES: u64 = 1 << 20;

fn key_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Key {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The PEM block labelled `label`, decoded.
fn pem_block(text: &str, labels: &[&str], path: &Path) -> Result<(String, Vec<u8>)> {
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(start) = text.find(&begin) {
            let body = &text[start + begin.len()..];
            let stop = body
                .find(&end)
                .ok_or_else(|| key_error(path, format!("the PEM block {label} is not closed")))?;
            let b64: String = body[..stop].split_whitespace().collect();
            let bytes = B64.decode(b64).map_err(|e| {
                key_error(path, format!("the PEM block {label} is not base64: {e}"))
            })?;
            return Ok((label.to_string(), bytes));
        }
    }
    Err(key_error(
        path,
        format!("no PEM block {} found", labels.join(" or ")),
    ))
}

/// A cosign public key file (`cosign.pub`).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read key", path, e))?;
    parse_public_key(&text, path)
}

/// A cosign public key (PEM `PUBLIC KEY`); `origin` names where it came from in errors.
pub fn parse_public_key(text: &str, origin: &Path) -> Result<VerifyingKey> {
    let path = origin;
    let (_, der) = pem_block(text, &["PUBLIC KEY"], path)?;
    VerifyingKey::from_public_key_der(&der).map_err(|e| {
        key_error(
            path,
            format!("not an ECDSA P-256 public key (cosign's default): {e}"),
        )
    })
}

/// A cosign private key file (`cosign.key`), decrypted with `password` (cosign reads it from
/// `COSIGN_PASSWORD`; an empty password is valid).
pub fn load_private_key(path: &Path, password: &[u8]) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read key", path, e))?;
    let (label, body) = pem_block(
        &text,
        &[
            "ENCRYPTED SIGSTORE PRIVATE KEY",
            "ENCRYPTED COSIGN PRIVATE KEY",
            "PRIVATE KEY",
        ],
        path,
    )?;
    let der = if label == "PRIVATE KEY" {
        body
    } else {
        decrypt(&body, password, path)?
    };
    SigningKey::from_pkcs8_der(&der).map_err(|e| {
        key_error(
            path,
            format!("not an ECDSA P-256 private key (cosign's default): {e}"),
        )
    })
}

/// The secretbox-encrypted key of cosign's (and go-securesystemslib's) `encrypted` format.
fn decrypt(body: &[u8], password: &[u8], path: &Path) -> Result<Vec<u8>> {
    use crypto_secretbox::aead::{Aead as _, KeyInit as _};
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| key_error(path, format!("the encrypted key is not JSON: {e}")))?;
    let field = |p: &str| -> Result<&Value> {
        doc.pointer(p)
            .ok_or_else(|| key_error(path, format!("the encrypted key has no {p}")))
    };
    let kdf = field("/kdf/name")?.as_str().unwrap_or("");
    if kdf != "scrypt" {
        return Err(key_error(
            path,
            format!("KDF {kdf:?} is not supported (cosign uses scrypt)"),
        ));
    }
    let cipher = field("/cipher/name")?.as_str().unwrap_or("");
    if cipher != "nacl/secretbox" {
        return Err(key_error(
            path,
            format!("cipher {cipher:?} is not supported (cosign uses nacl/secretbox)"),
        ));
    }
    let b64 = |p: &str| -> Result<Vec<u8>> {
        let s = field(p)?
            .as_str()
            .ok_or_else(|| key_error(path, format!("{p} is not a string")))?;
        B64.decode(s)
            .map_err(|e| key_error(path, format!("{p} is not base64: {e}")))
    };
    let salt = b64("/kdf/salt")?;
    let nonce = b64("/cipher/nonce")?;
    let ciphertext = b64("/ciphertext")?;
    let n = field("/kdf/params/N")?.as_u64().unwrap_or(0);
    let r = field("/kdf/params/r")?.as_u64().unwrap_or(0);
    let p = field("/kdf/params/p")?.as_u64().unwrap_or(0);
    if !n.is_power_of_two()
        || n < 2
        || r == 0
        || p == 0
        || r > u32::MAX as u64
        || p > u32::MAX as u64
    {
        return Err(key_error(
            path,
            format!("scrypt parameters N={n} r={r} p={p} are not valid"),
        ));
    }
    let params = scrypt::Params::new(n.trailing_zeros() as u8, r as u32, p as u32, 32)
        .map_err(|e| key_error(path, format!("scrypt parameters: {e}")))?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, &salt, &params, &mut key)
        .map_err(|e| key_error(path, format!("scrypt: {e}")))?;
    if nonce.len() != 24 {
        return Err(key_error(
            path,
            format!("the nonce has {} bytes, secretbox needs 24", nonce.len()),
        ));
    }
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&key.into());
    cipher
        .decrypt(
            crypto_secretbox::Nonce::from_slice(&nonce),
            ciphertext.as_slice(),
        )
        .map_err(|_| {
            key_error(
                path,
                "cannot decrypt: wrong password (cosign reads it from COSIGN_PASSWORD)",
            )
        })
}

/// The simple-signing payload for `repository` (`REGISTRY/REPO`) at `digest`, as cosign writes
/// it (keys in this order; `optional` null without annotations).
pub fn payload(repository: &str, digest: &str, annotations: &BTreeMap<String, String>) -> Vec<u8> {
    let optional = if annotations.is_empty() {
        Value::Null
    } else {
        json!(annotations)
    };
    // serde_json keeps maps sorted, which is the order cosign writes: critical{identity, image,
    // type}, optional.
    let v = json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": optional,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// What a signature says, once it verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `critical.identity.docker-reference`.
    pub repository: String,
    /// `critical.image.docker-manifest-digest`.
    pub digest: String,
    /// `optional`, as strings.
    pub annotations: BTreeMap<String, String>,
}

/// Parse a payload.
pub fn parse_payload(bytes: &[u8]) -> std::result::Result<Claim, String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("payload is not JSON: {e}"))?;
    let s = |p: &str| -> std::result::Result<String, String> {
        v.pointer(p)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("payload has no {p}"))
    };
    let kind = s("/critical/type")?;
    if kind != PAYLOAD_TYPE {
        return Err(format!("payload type is {kind:?}, not {PAYLOAD_TYPE:?}"));
    }
    let annotations = v
        .get("optional")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Claim {
        repository: s("/critical/identity/docker-reference")?,
        digest: s("/critical/image/docker-manifest-digest")?,
        annotations,
    })
}

/// Whether two `REGISTRY/REPO` names are the same repository (Docker Hub has two host names:
/// cosign writes `index.docker.io`, references usually say `docker.io`).
pub fn same_repository(a: &str, b: &str) -> bool {
    let norm = |s: &str| match s.strip_prefix("index.docker.io/") {
        Some(rest) => format!("docker.io/{rest}"),
        None => s.to_string(),
    };
    norm(a) == norm(b)
}

/// `sha256-<hex>.sig`: the tag of `digest`'s signatures.
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// Sign `payload` with `key`: base64 of the DER signature.
pub fn sign_payload(key: &SigningKey, payload: &[u8]) -> String {
    let sig: DerSignature = key.sign(payload);
    B64.encode(sig.as_bytes())
}

/// Whether `signature` (base64 DER) over `payload` verifies with `key`.
pub fn verify_payload(
    key: &VerifyingKey,
    payload: &[u8],
    signature: &str,
) -> std::result::Result<(), String> {
    let der = B64
        .decode(signature.trim())
        .map_err(|e| format!("the signature is not base64: {e}"))?;
    let sig = DerSignature::from_bytes(&der)
        .map_err(|e| format!("the signature is not an ECDSA signature: {e}"))?;
    key.verify(payload, &sig)
        .map_err(|_| "the signature does not verify with this key (another key, or a payload changed after signing)".to_string())
}

/// What `sign` did.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The manifest digest signed.
    pub digest: String,
    /// `REGISTRY/REPO:sha256-<hex>.sig`.
    pub signature_reference: String,
    /// Signatures now stored for the digest (this one included).
    pub count: usize,
}

/// Resolve `reference` to its manifest digest, sign it with `key` and store the signature
/// beside it, keeping the signatures already there.
pub async fn sign(
    reference: &str,
    key: &SigningKey,
    annotations: &BTreeMap<String, String>,
    opts: &Options,
) -> Result<Signed> {
    let remote = Remote::connect(reference, opts, RegistryOperation::Push).await?;
    let digest = remote.resolve_digest().await?;
    let repository = remote.repository_name();
    let body = payload(&repository, &digest, annotations);
    let signature = sign_payload(key, &body);
    let sig_remote = remote.at_tag(&signature_tag(&digest))?;

    let mut layers: Vec<Value> = match sig_remote.raw_manifest(MAX_SIGNATURE_BYTES).await? {
        Some((bytes, _)) => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|m| m.get("layers").and_then(Value::as_array).cloned())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let payload_digest = sha256_digest(&body);
    let mine = json!({
        "mediaType": PAYLOAD_MEDIA_TYPE,
        "size": body.len(),
        "digest": payload_digest,
        "annotations": {SIGNATURE_ANNOTATION: signature},
    });
    if !layers.contains(&mine) {
        layers.push(mine);
    }
    let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"diff_ids": diff_ids, "type": "layers"},
    }))
    .unwrap_or_default();
    sig_remote.put_blob(&body).await?;
    sig_remote.put_blob(&config).await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "size": config.len(), "digest": sha256_digest(&config)},
        "layers": layers,
    }))
    .unwrap_or_default();
    sig_remote
        .put_manifest(manifest, MANIFEST_MEDIA_TYPE)
        .await?;
    Ok(Signed {
        signature_reference: sig_remote.text().to_string(),
        count: layers.len(),
        digest,
    })
}

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest digest the reference names now.
    pub digest: String,
    /// Each signature that verified with the key, for this digest.
    pub claims: Vec<Claim>,
}

/// Check that `reference` (its digest now) carries a signature that verifies with `key`, for
/// exactly that digest and repository.
pub async fn verify(reference: &str, key: &VerifyingKey, opts: &Options) -> Result<Verified> {
    let remote = Remote::connect(reference, opts, RegistryOperation::Pull).await?;
    let digest = remote.resolve_digest().await?;
    let repository = remote.repository_name();
    let sig_remote = remote.at_tag(&signature_tag(&digest))?;
    let refused = |reason: String| Error::NotVerified {
        reference: reference.to_string(),
        digest: digest.clone(),
        reason,
    };
    let Some((bytes, _)) = sig_remote.raw_manifest(MAX_SIGNATURE_BYTES).await? else {
        return Err(refused(format!(
            "no signature: {} does not exist",
            sig_remote.text()
        )));
    };
    let manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| refused(format!("{}: not JSON: {e}", sig_remote.text())))?;
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut claims = Vec::new();
    let mut reasons = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        if layer["mediaType"] != PAYLOAD_MEDIA_TYPE {
            continue;
        }
        let Some(signature) = layer["annotations"][SIGNATURE_ANNOTATION].as_str() else {
            reasons.push(format!("layer {i}: no {SIGNATURE_ANNOTATION} annotation"));
            continue;
        };
        let (Some(blob_digest), Some(size)) = (layer["digest"].as_str(), layer["size"].as_u64())
        else {
            reasons.push(format!("layer {i}: no digest or size"));
            continue;
        };
        let body = match sig_remote
            .get_blob(blob_digest, size, MAX_SIGNATURE_BYTES)
            .await
        {
            Ok(b) => b,
            Err(Error::DigestMismatch { actual, .. }) => {
                reasons.push(format!(
                    "layer {i}: the payload's bytes do not match its digest {blob_digest} (they hash to {actual}: changed in the registry after signing)"
                ));
                continue;
            }
            Err(e) => {
                reasons.push(format!("layer {i}: {e}"));
                continue;
            }
        };
        if let Err(e) = verify_payload(key, &body, signature) {
            reasons.push(format!("layer {i}: {e}"));
            continue;
        }
        match parse_payload(&body) {
            Err(e) => reasons.push(format!("layer {i}: {e}")),
            Ok(c) if c.digest != digest => reasons.push(format!(
                "layer {i}: signed for another digest, {} (the tag was moved after signing?)",
                c.digest
            )),
            Ok(c) if !same_repository(&c.repository, &repository) => reasons.push(format!(
                "layer {i}: the payload names another image, {} (not {repository})",
                c.repository
            )),
            Ok(c) => claims.push(c),
        }
    }
    if claims.is_empty() {
        if reasons.is_empty() {
            reasons.push(format!("{} holds no signature layer", sig_remote.text()));
        }
        return Err(refused(reasons.join("; ")));
    }
    Ok(Verified { digest, claims })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_slice(&[7u8; 32]).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn payload_has_cosigns_shape_and_parses_back() {
        let mut a = BTreeMap::new();
        let empty = payload("r.example/f", "sha256:ab", &a);
        assert_eq!(
            String::from_utf8_lossy(&empty),
            r#"{"critical":{"identity":{"docker-reference":"r.example/f"},"image":{"docker-manifest-digest":"sha256:ab"},"type":"cosign container image signature"},"optional":null}"#
        );
        a.insert("team".to_string(), "mesh".to_string());
        let c = parse_payload(&payload("r.example/f", "sha256:ab", &a))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.digest, "sha256:ab");
        assert_eq!(c.repository, "r.example/f");
        assert_eq!(c.annotations, a);
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_and_payload() {
        let k = key();
        let body = payload("r.example/f", "sha256:ab", &BTreeMap::new());
        let sig = sign_payload(&k, &body);
        assert!(verify_payload(k.verifying_key(), &body, &sig).is_ok());
        let other = SigningKey::from_slice(&[9u8; 32]).unwrap_or_else(|_| unreachable!());
        assert!(verify_payload(other.verifying_key(), &body, &sig).is_err());
        let changed = payload("r.example/f", "sha256:cd", &BTreeMap::new());
        assert!(verify_payload(k.verifying_key(), &changed, &sig).is_err());
        assert!(verify_payload(k.verifying_key(), &body, "not base64!").is_err());
    }

    #[test]
    fn docker_hub_has_two_names() {
        assert!(same_repository(
            "index.docker.io/library/f",
            "docker.io/library/f"
        ));
        assert!(!same_repository("r.example/a", "r.example/b"));
    }

    #[test]
    fn signature_tags_follow_cosigns_convention() {
        assert_eq!(signature_tag("sha256:abc"), "sha256-abc.sig");
    }
}
