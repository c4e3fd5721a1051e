//! Image references (`[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`), parsed by hand with the grammar and
//! normalisation of Docker's distribution/reference package.
//!
//! `oci-client`'s own parser compiles a large Unicode regular expression on first use, which costs
//! most of a short `wasmctl` run's start-up; this parser does the same job in a single pass and says
//! which part of the reference is wrong.
//!
//! ```
//! let r = wasmctl::oci::reference::parse("ghcr.io/acme/header-filter:v1")?;
//! assert_eq!((r.registry(), r.repository(), r.tag()), ("ghcr.io", "acme/header-filter", Some("v1")));
//! let r = wasmctl::oci::reference::parse("header-filter")?;
//! assert_eq!((r.registry(), r.repository(), r.tag()), ("docker.io", "library/header-filter", Some("latest")));
//! assert!(wasmctl::oci::reference::parse("ghcr.io/Acme/f:v1").unwrap_err().contains("repository"));
//! # Ok::<(), String>(())
//! ```

use oci_client::Reference;

/// Longest repository name a registry accepts.
const NAME_MAX: usize = 255;
/// Longest tag.
const TAG_MAX: usize = 128;

/// Parse `text` (without an `oci://` prefix) into a normalised reference: no registry means
/// `docker.io`, a one-component Docker Hub name gains `library/`, no tag and no digest means
/// `latest`. The error says which part is wrong and why.
pub fn parse(text: &str) -> Result<Reference, String> {
    if text.is_empty() {
        return Err("empty".to_string());
    }
    // The digest follows the last '@'; the tag follows a ':' after the last '/'.
    let (rest, digest) = match text.rsplit_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    let (registry, repository) = split_registry(name)?;
    check_repository(&repository)?;
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.to_string(), d.to_string())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.to_string()),
        (Some(t), None) => Reference::with_tag(registry, repository, t.to_string()),
        (None, None) => Reference::with_tag(registry, repository, "latest".to_string()),
    })
}

/// Split off the registry the way Docker does: the first component is a registry when it has a
/// '.' or a ':' or is `localhost`.
fn split_registry(name: &str) -> Result<(String, String), String> {
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            check_registry(first)?;
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let registry = if registry == "index.docker.io" {
        "docker.io".to_string()
    } else {
        registry
    };
    let repository = if registry == "docker.io" && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    Ok((registry, repository))
}

/// `host[:port]`: host is dot-separated labels of letters, digits and inner hyphens, or a
/// bracketed IPv6 address.
fn check_registry(registry: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("registry \"{registry}\": {why}"));
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, after)) => {
                if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                    return bad("not an IPv6 address in brackets");
                }
                (None, after.strip_prefix(':'))
            }
            None => return bad("'[' without ']'"),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        for label in host.split('.') {
            let ok = !label.is_empty()
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return bad(&format!(
                    "host label \"{label}\" must be letters, digits and inner hyphens"
                ));
            }
        }
    }
    if let Some(port) = port
        && (port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()))
    {
        return bad(&format!("port \"{port}\" is not a number"));
    }
    Ok(())
}

/// Path components of lowercase letters and digits, joined by '.', '_', '__' or runs of '-'.
fn check_repository(repository: &str) -> Result<(), String> {
    if repository.len() > NAME_MAX {
        return Err(format!(
            "repository is {} characters long; the limit is {NAME_MAX}",
            repository.len()
        ));
    }
    for component in repository.split('/') {
        if !valid_component(component) {
            return Err(format!(
                "repository \"{repository}\": component \"{component}\" must be lowercase \
                 letters and digits, separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A word character, then up to 127 word characters, '.' or '-'.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(word);
    if !first_ok || !chars.all(|c| word(c) || c == '.' || c == '-') || tag.len() > TAG_MAX {
        return Err(format!(
            "tag \"{tag}\" must start with a letter, digit or '_' and hold at most {TAG_MAX} \
             letters, digits, '_', '.' or '-'"
        ));
    }
    Ok(())
}

/// `algorithm:hex`; sha256, sha384 and sha512 with their exact lengths.
fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest \"{digest}\" is not ALGORITHM:HEX"));
    };
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        other => {
            return Err(format!(
                "digest algorithm \"{other}\" is not supported (sha256, sha384, sha512)"
            ));
        }
    };
    if hex.len() != want
        || !hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(format!(
            "digest \"{digest}\": {algorithm} needs {want} lowercase hex digits"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> (String, String, Option<String>, Option<String>) {
        let r = parse(text).unwrap();
        (
            r.registry().to_string(),
            r.repository().to_string(),
            r.tag().map(str::to_string),
            r.digest().map(str::to_string),
        )
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn agrees_with_oci_spec_on_valid_references() {
        // The same results as oci-client's regex-based parser gives.
        let cases = [
            "header-filter",
            "acme/header-filter:v1",
            "docker.io/header-filter",
            "index.docker.io/acme/f:1.0",
            "localhost/f",
            "localhost:5000/a/b/c:tag_1.2-rc",
            "127.0.0.1:5000/filters/header-filter:v1",
            "ghcr.io/acme/my.filter__x--y:latest",
            "registry.example.com/f/h",
        ];
        for c in cases {
            let ours = parse(c).unwrap();
            let theirs: Reference = c.parse().unwrap();
            assert_eq!(ours.whole(), theirs.whole(), "{c}");
            assert_eq!(ours.tag(), theirs.tag(), "{c}");
        }
        for c in [format!("ghcr.io/a/f@{D}"), format!("ghcr.io/a/f:v1@{D}")] {
            let ours = parse(&c).unwrap();
            let theirs: Reference = c.parse().unwrap();
            assert_eq!(ours.whole(), theirs.whole(), "{c}");
        }
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(
            parts("f"),
            (
                "docker.io".into(),
                "library/f".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parts(&format!("127.0.0.1:5000/a/f@{D}")),
            ("127.0.0.1:5000".into(), "a/f".into(), None, Some(D.into()))
        );
        assert_eq!(
            parts("[::1]:5000/f:v1"),
            ("[::1]:5000".into(), "f".into(), Some("v1".into()), None)
        );
    }

    #[test]
    fn names_the_wrong_part() {
        let cases = [
            ("ghcr.io/Acme/f:v1", "repository"),
            ("ghcr.io/a//f", "component \"\""),
            ("ghcr.io/a/f:-v1", "tag \"-v1\""),
            ("ghcr.io/a/f:v 1", "tag"),
            ("ghcr.io/a/f@sha256:abc", "64 lowercase hex"),
            ("ghcr.io/a/f@md5:abc", "\"md5\" is not supported"),
            ("ghcr.io/a/f@abc", "ALGORITHM:HEX"),
            ("bad_host.io/f", "host label \"bad_host\""),
            ("host.io:50x/f", "port \"50x\""),
            ("127.0.0.1:5000/Bad Name", "repository"),
            ("", "empty"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let long = format!("ghcr.io/{}", "a".repeat(300));
        assert!(parse(&long).unwrap_err().contains("limit is 255"));
    }

    #[test]
    fn refuses_what_oci_spec_refuses() {
        for c in ["ghcr.io/a/F", "a/f:", "a/f@", ":v1", "a/f:v1:v2", "-a/f"] {
            assert!(c.parse::<Reference>().is_err(), "oci-spec accepts {c}");
            assert!(parse(c).is_err(), "we accept {c}");
        }
    }
}
