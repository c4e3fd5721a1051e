//! `wasmctl new DIR --lang rust|go|assemblyscript [--name NAME]`: a filter project that builds and
//! passes `wasmctl test` as created.
//!
//! Every language gets the same filter (a proxy-wasm HTTP filter on the language's SDK that adds
//! the header its JSON configuration names to every response, and fails to configure, with a log
//! line saying why, when the configuration is not JSON or has no `name`), the SDK pinned with the
//! ecosystem's lock file, a [`crate::project`] file (`wasmctl.yaml`), two scenarios, a README, a
//! `.gitignore` and a GitHub Actions workflow. The templates are in `wasmctl/templates/<lang>/`,
//! compiled in; `{{name}}` (and, for Rust, `{{crate}}`: the name in snake case, as the `.wasm`
//! file is named) are replaced.
//!
//! ```
//! use wasmctl::new::{Lang, create};
//!
//! let parent = tempfile::tempdir()?;
//! let created = create(&parent.path().join("my-filter"), Lang::Rust, None)?;
//! assert_eq!(created.name, "my-filter");
//! assert!(created.files.contains(&"Cargo.lock".into()));
//! assert_eq!(
//!     created.project.module,
//!     parent.path().join("my-filter/target/wasm32-wasip1/release/my_filter.wasm")
//! );
//! # Ok::<(), anyhow::Error>(())
//! ```

use crate::project::{self, Project};
use anyhow::{Context as _, bail};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// `wasmctl new`'s arguments.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The project's folder: created, or an empty one
    pub dir: PathBuf,
    /// The filter's language and proxy-wasm SDK
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// The project's name: package, module and .wasm file names, root id (lowercase letters,
    /// digits, '-' and '_', starting with a letter; default: DIR's last component)
    #[arg(long)]
    pub name: Option<String>,
}

/// A project's language, with the proxy-wasm SDK and the build tool it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, proxy-wasm Rust SDK 0.2.5, built by cargo for wasm32-wasip1
    Rust,
    /// Go 1.24 or newer, proxy-wasm Go SDK, built by go for wasip1
    Go,
    /// AssemblyScript 0.14, @solo-io/proxy-runtime 0.1.8, built by npm and asc
    Assemblyscript,
}

impl Lang {
    /// The name `--lang` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Go => "go",
            Lang::Assemblyscript => "assemblyscript",
        }
    }

    /// The files of a project in this language: their paths in the project and their templates.
    fn templates(self) -> &'static [Template] {
        match self {
            Lang::Rust => RUST,
            Lang::Go => GO,
            Lang::Assemblyscript => ASSEMBLYSCRIPT,
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A template: the file's path in the project, and its text with `{{placeholders}}`.
struct Template {
    path: &'static str,
    text: &'static str,
}

/// Templates of one language, compiled in from `wasmctl/templates/<lang>/<path>`: the files
/// named, then the ones every language has (each language has its own copy of them).
macro_rules! templates {
    ($lang:literal: $($path:literal),* $(,)?) => {
        templates!(@all $lang: $($path,)* "wasmctl.yaml", "scenarios/adds-header.yaml",
            "scenarios/upstream-header-kept.yaml", "README.md", ".gitignore",
            ".github/workflows/ci.yml")
    };
    (@all $lang:literal: $($path:literal),* $(,)?) => {
        &[$(Template {
            path: $path,
            text: include_str!(concat!("../templates/", $lang, "/", $path)),
        }),*]
    };
}

const RUST: &[Template] = templates!("rust": "Cargo.toml", "Cargo.lock", "src/lib.rs");

const GO: &[Template] = templates!("go": "go.mod", "go.sum", "main.go");

const ASSEMBLYSCRIPT: &[Template] = templates!("assemblyscript":
    "package.json",
    "package-lock.json",
    "assembly/index.ts",
    "assembly/tsconfig.json",
);

/// A project `create` wrote.
#[derive(Debug)]
pub struct Created {
    /// The project's folder, as given.
    pub dir: PathBuf,
    /// The project's name.
    pub name: String,
    /// Its language.
    pub lang: Lang,
    /// The files written, relative to `dir`, in the order written.
    pub files: Vec<PathBuf>,
    /// Its project file, as `wasmctl test` and `wasmctl dev` read it.
    pub project: Project,
}

/// Write a new `lang` project into `dir` (created, or an existing empty folder) and return what
/// was written. The name defaults to `dir`'s last component; either way it must be one every
/// ecosystem accepts ([`check_name`]). Nothing is written when `dir` holds anything.
pub fn create(dir: &Path, lang: Lang, name: Option<&str>) -> anyhow::Result<Created> {
    let name = match name {
        Some(n) => {
            check_name(n).map_err(|why| anyhow::anyhow!("--name {n:?}: {why}"))?;
            n.to_string()
        }
        None => {
            let n = last_component(dir)?;
            check_name(&n).map_err(|why| {
                anyhow::anyhow!(
                    "the project name {n:?} (the last component of {}) is not usable: {why}; \
                     give one with --name",
                    dir.display()
                )
            })?;
            n
        }
    };
    check_dir(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let vars = [("name", name.as_str()), ("crate", &name.replace('-', "_"))];
    let mut files = Vec::new();
    for t in lang.templates() {
        let mut text = render(t.text, &vars);
        if t.path == "Cargo.lock" {
            text = sort_lock_packages(&text);
        }
        let path = dir.join(t.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // create_new: never overwrite a file that appeared since the folder was checked.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        files.push(PathBuf::from(t.path));
    }
    let file = dir.join(project::FILE);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let project = Project::from_yaml(&text, &file)?;
    Ok(Created {
        dir: dir.to_path_buf(),
        name,
        lang,
        files,
        project,
    })
}

/// Run `wasmctl new`: write the project, then say what was written and what to run next.
pub fn run(a: &NewArgs) -> anyhow::Result<()> {
    let c = create(&a.dir, a.lang, a.name.as_deref())?;
    println!("created {} ({}) in {}:", c.name, c.lang, c.dir.display());
    for f in &c.files {
        println!("  {}", c.dir.join(f).display());
    }
    println!();
    println!("next:");
    println!("  cd {}", shell_word(&c.dir.display().to_string()));
    if let Some(build) = &c.project.build {
        println!("  {build}");
    }
    println!("  wasmctl test");
    println!("  wasmctl dev --build");
    Ok(())
}

/// Why `name` is not a project name, if it is not: it must suit a cargo package, a Go module
/// path, an npm package, a file name and a root id alike.
pub fn check_name(name: &str) -> Result<(), String> {
    const ALLOWED: &str = "a name has lowercase letters, digits, '-' and '_', starts with a letter, \
                           and is at most 64 characters long";
    let Some(first) = name.chars().next() else {
        return Err(format!("empty; {ALLOWED}"));
    };
    if !first.is_ascii_lowercase() {
        return Err(format!("starts with {first:?}; {ALLOWED}"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(format!("{c:?} is not allowed; {ALLOWED}"));
    }
    if name.len() > 64 {
        return Err(format!("{} characters long; {ALLOWED}", name.len()));
    }
    if name == "node_modules" {
        return Err("npm refuses the name node_modules".to_string());
    }
    Ok(())
}

/// The last component of `dir` (of its absolute form, so `.` names the current folder).
fn last_component(dir: &Path) -> anyhow::Result<String> {
    let full = std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let Some(last) = full.file_name() else {
        bail!(
            "{} has no last component to name the project after; give a name with --name",
            dir.display()
        );
    };
    Ok(last.to_string_lossy().into_owned())
}

/// A folder the project may go into: absent, or an empty folder.
fn check_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty: wasmctl new writes a project into a new or an \
                     empty folder",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() && !dir.is_dir() => {
            bail!("{} exists and is not a folder", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// `text` with every `{{key}}` of `vars` replaced by its value.
fn render(text: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(text.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{{{k}}}}}"), v)
    })
}

/// A `Cargo.lock` with its `[[package]]` entries in cargo's order (by name, then version), as
/// `cargo build --locked` requires: the template's root package moved when its name changed.
fn sort_lock_packages(lock: &str) -> String {
    const SEP: &str = "\n[[package]]\n";
    let mut parts = lock.split(SEP);
    let head = parts.next().unwrap_or_default();
    let mut packages: Vec<String> = parts
        .map(|p| {
            let p = p.trim_end_matches('\n');
            format!("{p}\n")
        })
        .collect();
    let key = |p: &String| -> (String, String) {
        let field = |f: &str| {
            p.lines()
                .find_map(|l| l.strip_prefix(f))
                .unwrap_or_default()
                .trim_matches('"')
                .to_string()
        };
        (field("name = "), field("version = "))
    };
    packages.sort_by_key(key);
    let mut out = head.to_string();
    for p in &packages {
        out.push_str(SEP);
        out.push_str(p);
    }
    out
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+:@%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const ALL: [Lang; 3] = [Lang::Rust, Lang::Go, Lang::Assemblyscript];

    /// Any `{{word}}` left in a text (`${{ expr }}` in workflows and Rust's `main! {{` are not
    /// placeholders).
    fn leftover_placeholders(text: &str) -> Vec<String> {
        let re = regex::Regex::new(r"\{\{[A-Za-z_][A-Za-z0-9_]*\}\}").unwrap();
        re.find_iter(text).map(|m| m.as_str().to_string()).collect()
    }

    #[test]
    fn every_placeholder_is_substituted() {
        for lang in ALL {
            // Every placeholder the templates use is one `create` knows.
            for t in lang.templates() {
                let left = leftover_placeholders(&render(t.text, &[("name", "n"), ("crate", "n")]));
                assert!(left.is_empty(), "{lang} {}: {left:?}", t.path);
            }
            let parent = tempfile::tempdir().unwrap();
            let c = create(&parent.path().join("my-filter"), lang, None).unwrap();
            for f in &c.files {
                let text = std::fs::read_to_string(c.dir.join(f)).unwrap();
                assert!(leftover_placeholders(&text).is_empty(), "{lang} {f:?}");
                assert!(!text.contains("zzplaceholder"), "{lang} {f:?}");
            }
            let project = std::fs::read_to_string(c.dir.join("wasmctl.yaml")).unwrap();
            assert!(project.contains(r#"rootId: "my-filter""#), "{project}");
        }
    }

    #[test]
    fn the_rust_names_are_substituted_where_cargo_looks() {
        let parent = tempfile::tempdir().unwrap();
        let c = create(&parent.path().join("x"), Lang::Rust, Some("my-filter")).unwrap();
        let toml = std::fs::read_to_string(c.dir.join("Cargo.toml")).unwrap();
        assert!(toml.contains("name = \"my-filter\""), "{toml}");
        assert!(toml.contains("proxy-wasm = \"=0.2.5\""), "{toml}");
        assert_eq!(
            c.project.module,
            c.dir.join("target/wasm32-wasip1/release/my_filter.wasm")
        );
        assert_eq!(
            c.project.build.as_deref(),
            Some("cargo build --target wasm32-wasip1 --release")
        );
        assert_eq!(c.project.root_id, "my-filter");
        let config: serde_json::Value =
            serde_json::from_str(c.project.config.as_deref().unwrap()).unwrap();
        assert_eq!(config["name"], "x-added-by");
        // The lock's packages stay in cargo's order with the root package renamed.
        let lock = std::fs::read_to_string(c.dir.join("Cargo.lock")).unwrap();
        let names: Vec<&str> = lock
            .lines()
            .filter_map(|l| l.strip_prefix("name = "))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.contains(&"\"my-filter\""), "{names:?}");
        assert!(lock.starts_with("# This file is automatically @generated by Cargo."));
        assert!(lock.ends_with('\n') && !lock.ends_with("\n\n"), "{lock}");
    }

    #[test]
    fn sorting_the_lock_keeps_every_entry() {
        let lock = "version = 4\n\n[[package]]\nname = \"z\"\nversion = \"1\"\n\n[[package]]\n\
                    name = \"a\"\nversion = \"2\"\ndependencies = [\n \"z\",\n]\n";
        assert_eq!(
            sort_lock_packages(lock),
            "version = 4\n\n[[package]]\nname = \"a\"\nversion = \"2\"\ndependencies = [\n \
             \"z\",\n]\n\n[[package]]\nname = \"z\"\nversion = \"1\"\n"
        );
    }

    #[test]
    fn a_non_empty_folder_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("notes.txt"), "mine").unwrap();
        let e = create(d.path(), Lang::Go, Some("ok"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&d.path().display().to_string()), "{e}");
        assert!(e.contains("not empty"), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);

        // An empty folder is fine, and `.`-like paths take the folder's own name.
        let empty = d.path().join("empty-one");
        std::fs::create_dir(&empty).unwrap();
        let c = create(&empty.join("."), Lang::Go, None).unwrap();
        assert_eq!(c.name, "empty-one");

        let file = d.path().join("notes.txt");
        let e = create(&file, Lang::Go, Some("ok")).unwrap_err().to_string();
        assert!(e.contains("notes.txt") && e.contains("not a folder"), "{e}");
    }

    #[test]
    fn a_bad_name_is_refused_naming_the_flag() {
        let d = tempfile::tempdir().unwrap();
        for bad in [
            "My-Filter",
            "1filter",
            "-x",
            "my filter",
            "a.b",
            "",
            "node_modules",
        ] {
            let e = create(&d.path().join("p"), Lang::Rust, Some(bad))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--name"), "{bad}: {e}");
            assert!(!d.path().join("p").exists(), "{bad}: nothing is written");
        }
        let e = create(&d.path().join("p"), Lang::Rust, Some("My-Filter"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lowercase letters, digits, '-' and '_'"), "{e}");
        // A folder whose name is not usable: the error says to give --name.
        let e = create(&d.path().join("My Filter"), Lang::Go, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--name") && e.contains("My Filter"), "{e}");
        for good in ["f", "my-filter", "my_filter2", "a-b_c-9"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn each_language_has_its_files() {
        let common = [
            "wasmctl.yaml",
            "scenarios/adds-header.yaml",
            "scenarios/upstream-header-kept.yaml",
            "README.md",
            ".gitignore",
            ".github/workflows/ci.yml",
        ];
        let own: [(Lang, &[&str]); 3] = [
            (Lang::Rust, &["Cargo.toml", "Cargo.lock", "src/lib.rs"]),
            (Lang::Go, &["go.mod", "go.sum", "main.go"]),
            (
                Lang::Assemblyscript,
                &[
                    "package.json",
                    "package-lock.json",
                    "assembly/index.ts",
                    "assembly/tsconfig.json",
                ],
            ),
        ];
        for (lang, own) in own {
            let d = tempfile::tempdir().unwrap();
            let c = create(&d.path().join("f"), lang, None).unwrap();
            let mut want: Vec<PathBuf> = own.iter().chain(&common).map(PathBuf::from).collect();
            want.sort();
            let mut got = c.files.clone();
            got.sort();
            assert_eq!(got, want, "{lang}");
            // Nothing else is in the folder.
            let mut on_disk = Vec::new();
            walk(&c.dir, &c.dir, &mut on_disk);
            on_disk.sort();
            assert_eq!(on_disk, want, "{lang}");
        }
    }

    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }

    #[test]
    fn the_scenarios_parse_and_use_the_projects_root_id_and_config() {
        for lang in ALL {
            let d = tempfile::tempdir().unwrap();
            let c = create(&d.path().join("hdr"), lang, None).unwrap();
            for f in c.files.iter().filter(|f| f.starts_with("scenarios")) {
                let text = std::fs::read_to_string(c.dir.join(f)).unwrap();
                let s = proxy_wasm_harness::scenario::Scenario::from_yaml(&text)
                    .unwrap_or_else(|e| panic!("{lang} {f:?}: {e}"));
                assert_eq!(s.root_id, c.project.root_id, "{lang} {f:?}");
                let config: serde_json::Value = serde_json::from_str(&s.configuration).unwrap();
                assert!(config["name"].is_string(), "{lang} {f:?}");
            }
        }
    }

    #[test]
    fn the_ci_workflow_parses_and_builds_then_runs_wasmctl_test() {
        let builds = [
            (
                Lang::Rust,
                "cargo build --locked --target wasm32-wasip1 --release",
            ),
            (
                Lang::Go,
                "mkdir -p build && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o build/f.wasm .",
            ),
            (
                Lang::Assemblyscript,
                "npm ci --no-audit --no-fund && npm run asbuild",
            ),
        ];
        for (lang, build) in builds {
            let d = tempfile::tempdir().unwrap();
            let c = create(&d.path().join("f"), lang, None).unwrap();
            let text = std::fs::read_to_string(c.dir.join(".github/workflows/ci.yml")).unwrap();
            let ci: serde_norway::Value = serde_norway::from_str(&text).unwrap();
            let install = ci["env"]["WASMCTL_INSTALL"].as_str().unwrap();
            assert!(
                install.contains("cargo install --locked wasmctl"),
                "{install}"
            );
            let steps = ci["jobs"]["test"]["steps"].as_sequence().unwrap();
            let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
            let at = |want: &str| {
                runs.iter()
                    .position(|r| r.contains(want))
                    .unwrap_or_else(|| panic!("{lang}: no step runs {want:?}: {runs:?}"))
            };
            let (b, i, t) = (
                at(build),
                at("$WASMCTL_INSTALL"),
                at("wasmctl test --junit"),
            );
            assert!(b < t && i < t, "{lang}: {runs:?}");
            // CI runs the project's own build (Rust adds --locked; for AssemblyScript the
            // project's skips `npm ci` while node_modules is up to date).
            let own = c.project.build.as_deref().unwrap();
            match lang {
                Lang::Rust => assert_eq!(build.replace(" --locked", ""), own),
                Lang::Go => assert_eq!(build, own),
                Lang::Assemblyscript => assert!(own.ends_with("npm run asbuild"), "{own}"),
            }
        }
    }
}
