//! `wasmctl test [MODULE] [SCENARIO...|DIR]`: scenario files run against one module as a suite,
//! the way `cargo test` runs tests: a line per scenario (`PASS file (name)` or `FAIL file (name)`
//! and, under a failure, each expectation that did not hold: the field, the expected value and
//! the actual one), then `N passed, N failed` alone on the last line; the command exits 1 when
//! any scenario failed.
//!
//! Each scenario runs in a fresh harness host, as `wasmctl run --scenario` runs it, with the
//! module compiled once for the whole suite. A scenario is self-contained: its `root_id` and
//! `configuration` are used as written; a scenario with `connection:` runs a TCP connection
//! through the module as a network filter, any other an HTTP request. A scenario file that does
//! not parse, and a module that fails to start or traps (or is of the other kind of filter than
//! the scenario, which the message names), fail that scenario; the others still run.
//!
//! The module is the argument ending in `.wasm`; the others are scenario files (`.yaml`, `.yml`)
//! or folders, of which every `.yaml` and `.yml` file directly inside (not in subfolders) runs,
//! in name order. What is not given comes from the project file ([`crate::project`],
//! `wasmctl.yaml`, in the working folder or above it): its `module` and its `scenarios` folder.
//!
//! `--junit FILE` writes a JUnit XML report as well (one `testcase` per scenario file, its
//! `classname` the module's file name), atomically.
//!
//! ```no_run
//! use wasmctl::suite::{TestArgs, run};
//!
//! let args = TestArgs {
//!     paths: vec!["header_filter.wasm".into(), "scenarios".into()],
//!     junit: Some("target/junit.xml".into()),
//! };
//! let all_passed = run(&args)?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use crate::project::{self, Project};
use crate::run::{load, run_loaded};
use anyhow::{Context as _, bail};
use proxy_wasm_harness::scenario::Scenario;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `wasmctl test`'s arguments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TestArgs {
    /// The module (the one argument ending in .wasm) and the scenario files (.yaml, .yml) or
    /// folders (their .yaml and .yml files, in name order, not recursive) to run; default: the
    /// module and the scenarios folder of wasmctl.yaml
    #[arg(value_name = "MODULE.wasm|SCENARIO|DIR")]
    pub paths: Vec<PathBuf>,
    /// Also write a JUnit XML report to FILE (replaced atomically)
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// How one scenario ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every expectation held.
    Pass,
    /// The scenario ran; these expectations did not hold (field, expected, actual).
    Failed(Vec<String>),
    /// The scenario could not run: its file does not parse, or the module failed to start or
    /// trapped. The message says which.
    Error(String),
}

/// One scenario's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The scenario file, as shown (relative to the working folder when under it).
    pub file: String,
    /// The scenario's name (its file's stem when the file does not parse).
    pub name: String,
    /// How it ended.
    pub verdict: Verdict,
    /// How long it took (reading, parsing, running, checking).
    pub time: Duration,
}

impl CaseResult {
    /// Whether the scenario passed.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }
}

/// What the suite runs: a module and scenario files.
struct Plan {
    module: PathBuf,
    scenarios: Vec<PathBuf>,
}

/// Run the suite `a` describes: prints a line per scenario and the closing `N passed, N
/// failed`, writes the JUnit report if asked. `Ok(false)` when any scenario failed; an error
/// when there is nothing to run (no module, no scenarios, a module that does not compile).
pub fn run(a: &TestArgs) -> anyhow::Result<bool> {
    let cwd = std::env::current_dir().context("cannot read the working folder")?;
    let plan = plan(a, &cwd)?;
    let module = load(&plan.module)?;
    let module_name = plan
        .module
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| plan.module.display().to_string());
    let started = Instant::now();
    say(&format!(
        "running {} scenario{} against {}\n",
        plan.scenarios.len(),
        if plan.scenarios.len() == 1 { "" } else { "s" },
        shown(&plan.module, &cwd)
    ))?;
    let mut results = Vec::with_capacity(plan.scenarios.len());
    for file in &plan.scenarios {
        let r = run_one(&module, &plan.module, file, &cwd);
        say(&case_lines(&r))?;
        results.push(r);
    }
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| !r.passed()).count();
    say(&format!(
        "{} passed, {failed} failed\n",
        results.len() - failed
    ))?;
    if let Some(path) = &a.junit {
        write_junit(path, &module_name, &results, elapsed)?;
    }
    Ok(failed == 0)
}

/// The module and the scenario files: from the arguments, the rest from the project file.
fn plan(a: &TestArgs, cwd: &Path) -> anyhow::Result<Plan> {
    let mut module: Option<&PathBuf> = None;
    let mut given: Vec<&PathBuf> = Vec::new();
    for p in &a.paths {
        if has_extension(p, &["wasm"]) {
            if let Some(first) = module {
                bail!(
                    "two modules given ({} and {}): pass at most one MODULE.wasm",
                    first.display(),
                    p.display()
                );
            }
            module = Some(p);
        } else {
            given.push(p);
        }
    }
    let project = if module.is_none() || given.is_empty() {
        Project::find(cwd)?
    } else {
        None
    };
    let project_file = |p: &Project| p.dir.join(project::FILE);
    let module = match (module, &project) {
        (Some(m), _) => {
            if !m.is_file() {
                bail!("module {}: no such file", m.display());
            }
            m.clone()
        }
        (None, Some(p)) => {
            if !p.module.is_file() {
                let build = match &p.build {
                    Some(cmd) => format!("build it first: run `{cmd}` in {}", p.dir.display()),
                    None => format!(
                        "build it first (the project file has no build command; add `build: COMMAND` to {})",
                        project_file(p).display()
                    ),
                };
                bail!(
                    "module {} (named by {}) does not exist: {build}",
                    p.module.display(),
                    project_file(p).display()
                );
            }
            p.module.clone()
        }
        (None, None) => bail!(
            "no module to test: pass MODULE (a .wasm file), or run in a project made by `wasmctl new` \
             (a folder with a {} in it or above it; none found from {})",
            project::FILE,
            cwd.display()
        ),
    };
    let mut scenarios = Vec::new();
    let mut looked = Vec::new();
    if given.is_empty() {
        let Some(p) = &project else {
            bail!(
                "no scenarios to run: pass SCENARIO files or folders after the module, or run in a \
                 project made by `wasmctl new` (its {} names a scenarios folder)",
                project::FILE
            );
        };
        if !p.scenarios.is_dir() {
            bail!(
                "the scenarios folder {} (named by {}) does not exist",
                p.scenarios.display(),
                project_file(p).display()
            );
        }
        scenarios.extend(scenario_files(&p.scenarios)?);
        looked.push(format!(
            "{} (from {})",
            p.scenarios.display(),
            project_file(p).display()
        ));
    } else {
        for p in given {
            if p.is_dir() {
                scenarios.extend(scenario_files(p)?);
                looked.push(p.display().to_string());
            } else if has_extension(p, &["yaml", "yml"]) {
                if !p.is_file() {
                    bail!("scenario {}: no such file", p.display());
                }
                scenarios.push(p.clone());
            } else if !p.exists() {
                bail!("{}: no such file or folder", p.display());
            } else {
                bail!(
                    "{}: not a module (.wasm), a scenario file (.yaml, .yml) or a folder of them",
                    p.display()
                );
            }
        }
    }
    if scenarios.is_empty() {
        bail!(
            "no scenario files (.yaml, .yml) found in {}",
            looked.join(", ")
        );
    }
    Ok(Plan { module, scenarios })
}

fn has_extension(p: &Path, exts: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The `.yaml` and `.yml` files directly in `dir`, by name.
fn scenario_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read folder {}", dir.display()))?;
        let path = entry.path();
        if path.is_file() && has_extension(&path, &["yaml", "yml"]) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `path` relative to `cwd` when it is under it.
fn shown(path: &Path, cwd: &Path) -> String {
    path.strip_prefix(cwd).unwrap_or(path).display().to_string()
}

/// Write to stdout; a closed pipe (`wasmctl test | head`) is not an error.
fn say(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// Read, parse, run and check one scenario file.
fn run_one(
    module: &proxy_wasm_harness::Module,
    module_file: &Path,
    file: &Path,
    cwd: &Path,
) -> CaseResult {
    let started = Instant::now();
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (name, verdict) = match std::fs::read_to_string(file) {
        Err(e) => (
            stem,
            Verdict::Error(format!("cannot read the scenario file: {e}")),
        ),
        Ok(text) => match Scenario::from_yaml(&text) {
            Err(message) => (
                name_in(&text).unwrap_or(stem),
                Verdict::Error(format!(
                    "scenario {} does not parse: {message}",
                    shown(file, cwd)
                )),
            ),
            Ok(s) => {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_loaded(module, module_file, &s)
                }));
                let verdict = match ran {
                    Ok(Ok(report)) if report.failed_expectations().is_empty() => Verdict::Pass,
                    Ok(Ok(report)) => Verdict::Failed(report.failed_expectations().to_vec()),
                    Ok(Err(e)) => Verdict::Error(e.to_string()),
                    Err(panic) => Verdict::Error(format!(
                        "the harness panicked: {}",
                        panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("(no message)")
                    )),
                };
                (s.name, verdict)
            }
        },
    };
    CaseResult {
        file: shown(file, cwd),
        name,
        verdict,
        time: started.elapsed(),
    }
}

/// The `name:` of a scenario file that does not parse as a scenario, if it is YAML with one.
fn name_in(text: &str) -> Option<String> {
    let v: serde_norway::Value = serde_norway::from_str(text).ok()?;
    v.get("name")?.as_str().map(str::to_string)
}

/// A scenario's lines in the output: `PASS file (name)`, or `FAIL file (name)` and one
/// indented line per failed expectation (or per line of the error).
fn case_lines(r: &CaseResult) -> String {
    let mut out = String::new();
    let word = if r.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(out, "{word} {} ({})", r.file, r.name);
    let details: Vec<&str> = match &r.verdict {
        Verdict::Pass => Vec::new(),
        Verdict::Failed(bad) => bad.iter().map(String::as_str).collect(),
        Verdict::Error(e) => e.lines().collect(),
    };
    for d in details {
        let _ = writeln!(out, "    {d}");
    }
    out
}

/// Text for XML: `&`, `<`, `>`, `"`, `'` as entities; in attributes also tabs and line ends
/// (which attribute normalization would otherwise turn into spaces); characters XML 1.0 does
/// not allow at all (most C0 controls) as `\u{..}`.
fn xml_escape(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\r' if attribute => out.push_str("&#13;"),
            '\t' if attribute => out.push_str("&#9;"),
            '\n' | '\r' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// The JUnit XML report: a `testsuites` holding one `testsuite` (named after the module) with a
/// `testcase` per scenario; a failed expectation is a `failure`, a scenario that could not run
/// an `error`.
pub fn junit_xml(module_name: &str, results: &[CaseResult], elapsed: Duration) -> String {
    let failures = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Failed(_)))
        .count();
    let errors = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Error(_)))
        .count();
    let a = |t: &str| xml_escape(t, true);
    let secs = |d: Duration| format!("{:.3}", d.as_secs_f64());
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let counts = format!(
        "tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{}\"",
        results.len(),
        secs(elapsed)
    );
    let _ = writeln!(x, "<testsuites name=\"wasmctl test\" {counts}>");
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" {counts} skipped=\"0\">",
        a(module_name)
    );
    for r in results {
        let _ = write!(
            x,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\">",
            a(module_name),
            a(&r.file),
            secs(r.time)
        );
        let (element, kind, message, text) = match &r.verdict {
            Verdict::Pass => (None, "", String::new(), String::new()),
            Verdict::Failed(bad) => (
                Some("failure"),
                "expectations",
                format!(
                    "{} expectation(s) not met: {}",
                    bad.len(),
                    bad.first().map(String::as_str).unwrap_or_default()
                ),
                bad.join("\n"),
            ),
            Verdict::Error(e) => (
                Some("error"),
                "error",
                e.lines().next().unwrap_or_default().to_string(),
                e.clone(),
            ),
        };
        if let Some(element) = element {
            let _ = write!(
                x,
                "\n      <{element} message=\"{}\" type=\"{kind}\">{}</{element}>",
                a(&message),
                xml_escape(&text, false)
            );
        }
        let _ = writeln!(
            x,
            "\n      <system-out>scenario: {}</system-out>\n    </testcase>",
            xml_escape(&r.name, false)
        );
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// Write the JUnit report to `path` atomically (a temporary file in its folder, renamed).
fn write_junit(
    path: &Path,
    module_name: &str,
    results: &[CaseResult],
    elapsed: Duration,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--junit: cannot create folder {}", dir.display()))?;
    }
    let xml = junit_xml(module_name, results, elapsed);
    crate::fsutil::write_atomic(path, xml.as_bytes(), 0o644)
        .with_context(|| format!("--junit {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn case(file: &str, verdict: Verdict) -> CaseResult {
        CaseResult {
            file: file.into(),
            name: format!("name of {file}"),
            verdict,
            time: Duration::from_millis(12),
        }
    }

    #[test]
    fn lines_show_each_failed_expectation_indented() {
        let r = case(
            "s/a.yaml",
            Verdict::Failed(vec![
                "status: expected 200, got 404".into(),
                "response header x-a: expected [\"1\"], got []".into(),
            ]),
        );
        assert_eq!(
            case_lines(&r),
            "FAIL s/a.yaml (name of s/a.yaml)\n    status: expected 200, got 404\n    response header x-a: expected [\"1\"], got []\n"
        );
        assert_eq!(
            case_lines(&case("b.yml", Verdict::Pass)),
            "PASS b.yml (name of b.yml)\n"
        );
        let e = case(
            "c.yaml",
            Verdict::Error("m.wasm: trap\nmodule log:\n  [info] x".into()),
        );
        assert_eq!(
            case_lines(&e),
            "FAIL c.yaml (name of c.yaml)\n    m.wasm: trap\n    module log:\n      [info] x\n"
        );
    }

    #[test]
    fn junit_counts_failures_and_errors_and_escapes_everything() {
        let results = [
            case("a.yaml", Verdict::Pass),
            case(
                "b<&>.yaml",
                Verdict::Failed(vec!["body: expected \"<\", got \"'\"".into()]),
            ),
            case(
                "c.yaml",
                Verdict::Error("does not parse\nline 2\u{1}".into()),
            ),
        ];
        let x = junit_xml("f\"x.wasm", &results, Duration::from_millis(1500));
        assert!(
            x.contains(
                r#"<testsuites name="wasmctl test" tests="3" failures="1" errors="1" time="1.500">"#
            ),
            "{x}"
        );
        assert!(
            x.contains(r#"classname="f&quot;x.wasm" name="b&lt;&amp;&gt;.yaml" time="0.012""#),
            "{x}"
        );
        assert!(x.contains(r#"message="1 expectation(s) not met: body: expected &quot;&lt;&quot;, got &quot;&apos;&quot;""#), "{x}");
        assert!(
            x.contains(r#"<error message="does not parse" type="error">does not parse"#),
            "{x}"
        );
        assert!(x.contains("line 2\\u{1}</error>"), "{x}");
        assert!(!x.contains('\u{1}'));
        assert_eq!(xml_escape("a\nb", true), "a&#10;b");
    }

    #[test]
    fn folders_give_their_yaml_files_by_name_and_not_their_subfolders() {
        let d = tempfile::tempdir().unwrap();
        for f in ["b.yaml", "a.yml", "c.txt", "sub/d.yaml"] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "name: x\n").unwrap();
        }
        let got = scenario_files(d.path()).unwrap();
        assert_eq!(got, [d.path().join("a.yml"), d.path().join("b.yaml")]);
    }

    #[test]
    fn the_plan_says_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let args = |paths: &[&str]| TestArgs {
            paths: paths.iter().map(|p| d.path().join(p)).collect(),
            junit: None,
        };
        let e = plan(&args(&[]), d.path()).err().unwrap().to_string();
        assert!(
            e.contains("pass MODULE") && e.contains("wasmctl new"),
            "{e}"
        );
        std::fs::write(d.path().join("m.wasm"), b"").unwrap();
        std::fs::create_dir(d.path().join("empty")).unwrap();
        let e = plan(&args(&["m.wasm", "empty"]), d.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("no scenario files") && e.contains("empty"),
            "{e}"
        );
        let e = plan(&args(&["m.wasm", "n.wasm"]), d.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("two modules"), "{e}");
        std::fs::write(
            d.path().join(project::FILE),
            "module: out/f.wasm\nbuild: make wasm\n",
        )
        .unwrap();
        let e = plan(&args(&[]), d.path()).err().unwrap().to_string();
        assert!(e.contains("out/f.wasm") && e.contains("`make wasm`"), "{e}");
    }
}
