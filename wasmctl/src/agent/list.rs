//! The image list: what the agent keeps on the node.
//!
//! YAML (what `wasmctl render` writes into ConfigMap `wasm-agent-images`):
//!
//! ```yaml
//! images:
//!   - name: default.details-hello        # file DIR/<name>.wasm
//!     image: registry.example.com/filters/header-filter:v1
//!     pullSecret: regcred                # optional: <secrets-dir>/regcred/.dockerconfigjson
//!     ecds:                              # optional: the local stand-in for the control plane
//!       file: /etc/envoy/ecds/header-filter.yaml
//!       filterName: header-filter
//!       configuration: '{"name":"resp-header-demo","value":"added by our filter"}'
//! ```
//!
//! or plain lines, `IMAGE` or `NAME IMAGE`, with `#` comments. A plain `IMAGE` is named after the
//! last component of its repository.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// One image to keep on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Entry {
    /// Stable name: the module is `DIR/<name>.wasm`.
    pub name: String,
    /// `REGISTRY/REPOSITORY:TAG` or `REGISTRY/REPOSITORY@sha256:...`.
    pub image: String,
    /// A pull secret directory under `--secrets-dir` holding `.dockerconfigjson`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
    /// Write an Envoy ECDS file for this module (what istiod pushes in a mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecds: Option<Ecds>,
    /// A cosign public key file: only a digest signed with it is pulled (overrides the
    /// agent's `--verify-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_key: Option<PathBuf>,
}

/// An ECDS resource the agent writes whenever the entry's module or this block changes: an
/// `envoy.extensions.filters.http.wasm.v3.Wasm` filter (V8) whose code is the content-addressed
/// `DIR/<sha256>.wasm`, so every version is a distinct file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ecds {
    /// The file Envoy's `config_discovery` `path_config_source` watches (replaced atomically,
    /// so Envoy's `watched_directory` sees a rename).
    pub file: PathBuf,
    /// The filter's name: the `TypedExtensionConfig` name and the HTTP filter's name in Envoy
    /// (default: the entry's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_name: Option<String>,
    /// The plugin's root id (default: the first `rootIds` of the image's runtime config, else
    /// empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// The VM id (default: the filter name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_id: Option<String>,
    /// The plugin configuration (a string, e.g. the header filter's JSON).
    #[serde(default)]
    pub configuration: String,
    /// Let requests through when the plugin fails (default: fail closed).
    #[serde(default)]
    pub fail_open: bool,
}

impl Ecds {
    /// The filter's name in Envoy.
    pub fn filter_name<'a>(&'a self, entry: &'a str) -> &'a str {
        self.filter_name.as_deref().unwrap_or(entry)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    images: Option<Vec<Entry>>,
}

/// Parse an image list (YAML with `images:`, or plain lines) and check every entry; the error
/// names the entry (index and name) or the line, and the field.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let entries = if looks_like_yaml(text) {
        let doc: Document =
            serde_norway::from_str(text).map_err(|e| format!("not a valid image list: {e}"))?;
        doc.images.unwrap_or_default()
    } else {
        plain(text)?
    };
    check(&entries)?;
    Ok(entries)
}

fn looks_like_yaml(text: &str) -> bool {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .any(|l| l.starts_with("images:") || l.starts_with('{') || l.starts_with("---"))
}

fn plain(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let (name, image) = match words.as_slice() {
            [image] => (derived_name(image), image.to_string()),
            [name, image] => (name.to_string(), image.to_string()),
            _ => {
                return Err(format!(
                    "line {}: expected IMAGE or NAME IMAGE, got {} words",
                    i + 1,
                    words.len()
                ));
            }
        };
        out.push(Entry {
            name,
            image,
            pull_secret: None,
            ecds: None,
            verify_key: None,
        });
    }
    Ok(out)
}

/// The name of a plain `IMAGE` line: the repository's last component, lower-cased, with
/// characters outside `[a-z0-9._-]` replaced by `-`.
pub fn derived_name(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repo = last.split(':').next().unwrap_or(last);
    repo.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Is `name` a valid entry name: `[a-z0-9][a-z0-9._-]{0,127}`, and not 64 hex digits (the
/// content-addressed files' names).
pub fn valid_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok_first = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'));
    if !ok_first || !ok_rest || b.len() > 128 {
        return Err(format!(
            "name {name:?} must match [a-z0-9][a-z0-9._-]{{0,127}}"
        ));
    }
    if b.len() == 64 && b.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "name {name:?} is 64 hex digits, which is how module files are named; choose another"
        ));
    }
    Ok(())
}

fn check(entries: &[Entry]) -> Result<(), String> {
    let mut names = BTreeSet::new();
    let mut ecds_files = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let at = format!("images[{i}] ({})", e.name);
        valid_name(&e.name).map_err(|r| format!("{at}: name: {r}"))?;
        if !names.insert(e.name.as_str()) {
            return Err(format!(
                "{at}: name: {:?} is listed twice (each entry needs its own name)",
                e.name
            ));
        }
        crate::oci::registry::parse_reference(&e.image).map_err(|r| format!("{at}: image: {r}"))?;
        if let Some(s) = &e.pull_secret {
            let ok = !s.is_empty()
                && s.len() <= 253
                && s.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'
                })
                && !s.starts_with('.');
            if !ok {
                return Err(format!(
                    "{at}: pullSecret: {s:?} is not a Kubernetes secret name ([a-z0-9.-], not starting with '.')"
                ));
            }
        }
        if let Some(x) = &e.ecds {
            if x.file.as_os_str().is_empty() || x.file.file_name().is_none() {
                return Err(format!("{at}: ecds.file: {:?} is not a file", x.file));
            }
            if x.filter_name(&e.name).is_empty() {
                return Err(format!("{at}: ecds.filterName: empty"));
            }
            if !ecds_files.insert(x.file.clone()) {
                return Err(format!(
                    "{at}: ecds.file: {} is written by another entry too",
                    x.file.display()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml_with_ecds() {
        let l = parse(
            "images:\n  - name: default.details-hello\n    image: r.example/f/h:v1\n    pullSecret: regcred\n  - name: b\n    image: r.example/f/h@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n    ecds: {file: /tmp/x.yaml, configuration: '{}'}\n",
        )
        .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].pull_secret.as_deref(), Some("regcred"));
        let e = l[1].ecds.as_ref().unwrap();
        assert_eq!(e.filter_name("b"), "b");
        assert!(!e.fail_open);
        assert_eq!(parse("images: []\n").unwrap(), vec![]);
        assert_eq!(parse("# nothing\n").unwrap(), vec![]);
    }

    #[test]
    fn parses_plain_lines() {
        let l = parse(
            "# filters\nr.example/f/header_filter:v1\nmine r.example/f/h:v2 # pinned later\n",
        )
        .unwrap();
        assert_eq!(l[0].name, "header_filter");
        assert_eq!(l[1].name, "mine");
        assert_eq!(l[1].image, "r.example/f/h:v2");
    }

    #[test]
    fn errors_name_entry_and_field() {
        let e = parse("images:\n  - name: a\n    image: r/x:v1\n    pulSecret: x\n").unwrap_err();
        assert!(e.contains("pulSecret"), "{e}");
        let e = parse("images:\n  - {name: Bad, image: r/x:v1}\n").unwrap_err();
        assert!(e.contains("images[0] (Bad): name"), "{e}");
        let e = parse("images:\n  - {name: a, image: r/x:v1}\n  - {name: a, image: r/y:v1}\n")
            .unwrap_err();
        assert!(e.contains("images[1] (a): name"), "{e}");
        let e = parse("images:\n  - {name: a, image: 'r/x:v1 x'}\n").unwrap_err();
        assert!(e.contains("images[0] (a): image"), "{e}");
        let e = parse("images:\n  - {name: a, image: r/x:v1, pullSecret: ../etc}\n").unwrap_err();
        assert!(e.contains("pullSecret"), "{e}");
        let e = parse("a b c\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let hex = "a".repeat(64);
        let e = parse(&format!("{hex} r/x:v1\n")).unwrap_err();
        assert!(e.contains("64 hex"), "{e}");
    }
}
