//! `wasmctl new` for every language: the project it writes builds with the command its
//! `wasmctl.yaml` names (run as `wasmctl dev --build` runs it: `sh -c` in the project's folder),
//! leaves its lock file as it was, and passes `wasmctl test` as created; a broken expectation
//! makes `wasmctl test` fail naming the scenario. Needs cargo with wasm32-wasip1, Go 1.24 or
//! newer, and node/npm (`scripts/setup`); dependencies come from the package registries or their
//! caches (~/.cargo, Go's module cache, ~/.npm).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Instant;

/// One language at a time: the builds use both cores, and the times printed are per language.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The project's name (and folder).
const NAME: &str = "hello-filter";

/// The lock file each language's project commits.
fn lock_file(lang: &str) -> &'static str {
    match lang {
        "rust" => "Cargo.lock",
        "go" => "go.sum",
        "assemblyscript" => "package-lock.json",
        _ => panic!("unknown language {lang}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run `cmd`; its output, or a panic naming `what` with the status and output.
fn output(what: &str, cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

fn must_succeed(what: &str, cmd: &mut Command) -> Output {
    let out = output(what, cmd);
    assert!(
        out.status.success(),
        "{what} failed with {}:\n{}",
        out.status,
        text(&out)
    );
    out
}

/// The project's build command, as the project file says.
fn project_field(dir: &Path, field: &str) -> String {
    let text = std::fs::read_to_string(dir.join("wasmctl.yaml")).unwrap();
    let v: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("wasmctl.yaml has no {field}:\n{text}"))
        .to_string()
}

fn new_project_builds_and_passes(lang: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let wasmctl = e2e::wasmctl_bin();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join(NAME);
    let start = Instant::now();

    let out = must_succeed(
        "wasmctl new",
        Command::new(&wasmctl)
            .current_dir(parent.path())
            .args(["new", NAME, "--lang", lang]),
    );
    let printed = text(&out);
    assert!(
        printed.contains(&format!("cd {NAME}")) && printed.contains("wasmctl test"),
        "{printed}"
    );
    let lock = std::fs::read(dir.join(lock_file(lang))).unwrap();

    // The build exactly as written, where `wasmctl dev --build` runs it.
    let build = project_field(&dir, "build");
    let mut cmd = Command::new("sh");
    cmd.current_dir(&dir).args(["-c", &build]);
    // The project's module path is under its own target/, where cargo writes by default.
    cmd.env_remove("CARGO_TARGET_DIR");
    if lang == "go" {
        let flags = std::env::var("GOFLAGS").unwrap_or_default();
        cmd.env("GOFLAGS", format!("{flags} -mod=readonly").trim());
    }
    must_succeed(&format!("the {lang} project's build `{build}`"), &mut cmd);
    let module = dir.join(project_field(&dir, "module"));
    assert!(
        module.is_file(),
        "{} missing after the build",
        module.display()
    );
    assert!(
        std::fs::read(dir.join(lock_file(lang))).unwrap() == lock,
        "the build changed {}",
        lock_file(lang)
    );

    let out = output(
        "wasmctl test",
        Command::new(&wasmctl).current_dir(&dir).arg("test"),
    );
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "wasmctl test:\n{report}");
    assert!(report.contains("2 passed, 0 failed"), "{report}");
    eprintln!(
        "{lang}: from `wasmctl new` to a passing `wasmctl test` in {:.1}s",
        start.elapsed().as_secs_f64()
    );

    // Each scenario holds by itself too (`wasmctl run --scenario`: exit 0, or 3 when an
    // expectation fails).
    for entry in std::fs::read_dir(dir.join("scenarios")).unwrap() {
        let file = entry.unwrap().path();
        must_succeed(
            &format!("wasmctl run --scenario {}", file.display()),
            Command::new(&wasmctl)
                .current_dir(&dir)
                .arg("run")
                .arg(&module)
                .arg("--scenario")
                .arg(&file),
        );
    }

    // A broken expectation: the suite fails, naming the scenario.
    let file = dir.join("scenarios/adds-header.yaml");
    let scenario = std::fs::read_to_string(&file).unwrap();
    let wanted = format!("x-added-by: [\"{NAME}\"]");
    assert!(scenario.contains(&wanted), "{scenario}");
    std::fs::write(
        &file,
        scenario.replace(&wanted, "x-added-by: [\"someone else\"]"),
    )
    .unwrap();
    let name: serde_norway::Value = serde_norway::from_str(&scenario).unwrap();
    let name = name["name"].as_str().unwrap();
    let out = output(
        "wasmctl test",
        Command::new(&wasmctl).current_dir(&dir).arg("test"),
    );
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "wasmctl test:\n{report}");
    assert!(
        report.contains(name),
        "the failed scenario is not named:\n{report}"
    );
}

#[test]
fn a_new_rust_project_builds_and_passes_its_scenarios() {
    new_project_builds_and_passes("rust");
}

#[test]
fn a_new_go_project_builds_and_passes_its_scenarios() {
    new_project_builds_and_passes("go");
}

#[test]
fn a_new_assemblyscript_project_builds_and_passes_its_scenarios() {
    new_project_builds_and_passes("assemblyscript");
}
