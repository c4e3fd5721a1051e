//! A clone is enough: no tracked file names a path outside the repository (a sibling checkout,
//! a data directory next to it, the absolute path of one machine). What the project needs from
//! outside comes from package registries through `scripts/setup` and the Go modules of
//! `scripts/control-plane-build`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn no_tracked_file_points_outside_the_clone() {
    let root = e2e::workspace_root();
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("git ls-files");
    if !out.status.success() {
        panic!(
            "git ls-files failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Built from pieces so that this file does not match itself.
    let parent = ["..", "/"].concat();
    let patterns = [
        format!("{parent}shared"),
        ["/wo", "rk/"].concat(),
        ["shared", "/data/"].concat(),
    ];
    let mut found = Vec::new();
    for path in out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = String::from_utf8_lossy(path).into_owned();
        let Ok(text) = std::fs::read_to_string(root.join(&path)) else {
            continue; // binary (images, corpora)
        };
        for (n, line) in text.lines().enumerate() {
            if let Some(p) = patterns.iter().find(|p| line.contains(p.as_str())) {
                found.push(format!("{path}:{}: {p:?} in {:?}", n + 1, line.trim()));
            }
            if path.ends_with(".md") {
                for link in relative_links(line) {
                    if escapes(&path, link) {
                        found.push(format!("{path}:{}: link {link:?} leaves the clone", n + 1));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "paths outside the clone:\n{}",
        found.join("\n")
    );
}

/// The targets of the Markdown links `[text](target)` on `line` that are relative paths.
fn relative_links(line: &str) -> Vec<&str> {
    line.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &line[i + 2..];
            let target = &rest[..rest.find(')')?];
            let target = target.split('#').next().unwrap_or("");
            let external = target.contains("://") || target.starts_with("mailto:");
            (!target.is_empty() && !external).then_some(target)
        })
        .collect()
}

/// Whether `link`, relative to the file `path` (relative to the root), leaves the root.
fn escapes(path: &str, link: &str) -> bool {
    if link.starts_with('/') {
        return true;
    }
    let mut depth: i64 = path.matches('/').count() as i64;
    for part in link.split('/') {
        match part {
            ".." => depth -= 1,
            "." | "" => {}
            _ => depth += 1,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

#[test]
fn links_are_checked_against_the_root() {
    assert!(!escapes(
        "examples/minimal-filter/README.md",
        "../../BENCHMARKS.md"
    ));
    assert!(escapes(
        "examples/minimal-filter/README.md",
        "../../../x.md"
    ));
    assert!(escapes("README.md", "/etc/passwd"));
    assert_eq!(
        relative_links("see [a](../b.md#x) and [c](https://d/e)"),
        ["../b.md"]
    );
}
