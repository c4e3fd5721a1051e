//! The docs quote real output and figures that the build determines; these tests hold them to a
//! real run.
//!
//! README.md: the `make demo` transcript (abridged: `...` lines mark omitted output) and the
//! `wasmctl run` example are run again and compared line by line; the module sizes are compared
//! with the built module and with the last benchmark run (`docs/bench/results.json`).
//! host-harness/README.md: its example is compiled and run here as written.
//!
//! Every Markdown doc of the project (found by walking the workspace: README.md, BENCHMARKS.md,
//! `docs/*.md`, the READMEs of `filter/`, `host-harness/`, `wasmctl/`, `examples/*/`,
//! `manifests/`, `fuzz/`; not build output, installed packages, hidden directories, fuzz corpora
//! or `docs/bench/`, the benchmark's generated record of its own run) is scanned for:
//! - sizes of `header_filter.wasm`: the agent's `bytes=N` and `wasmctl push`'s `pushed N bytes`
//!   wherever they occur, and the sentences of [`DOC_FIGURES`] (filter/README.md's artifact size,
//!   examples/go-filter/README.md's `53 KB`, BENCHMARKS.md's sizes from the benchmark run and the
//!   module's code section in KB), against the built module or `docs/bench/results.json`;
//! - the size of the Go example module (`go_filter.wasm`, in bytes and MB) as built;
//! - digests, whole or cut short with `...` (then a prefix is checked): the module's sha256
//!   (`sha256=HEX`, `sha256 HEX`, the agent's file `HEX.wasm`) against the built module, and
//!   manifest digests (`sha256:HEX`) against a real `wasmctl push IMAGE header_filter.wasm
//!   --root-id my_root_id` (pushes are reproducible). A digest of anything else
//!   (`previous_sha256=HEX`, another module's image) is nothing a test reproduces: docs mask it
//!   (`sha256:...`).
//!
//! A figure must stay where the scan finds it ([`MUST_SHOW`], [`DOC_FIGURES`]), so rewording a
//! line out of the test's reach fails too.
//!
//! `make docs` runs them with `UPDATE_DOCS=1`: each documented line is then replaced by the real
//! line it corresponds to, each size figure by the real size and each digest by the real one (an
//! abbreviation keeps its length), in every doc checked; one lock serialises reading and
//! rewriting the docs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Serialises reading and rewriting the docs between the tests of this file (one lock for every
/// doc: a test may check several, and README.md is checked by several tests).
static DOCS_LOCK: Mutex<()> = Mutex::new(());

fn readme_path() -> PathBuf {
    e2e::workspace_root().join("README.md")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1")
}

/// Run `check` on the lines of `doc` (a path relative to the workspace root; `what` it checks, for
/// messages); with `UPDATE_DOCS=1` it may edit them and the result is written back. Returns
/// whatever `check` reports (in update mode: what it could not fix).
fn edit_doc(
    doc: &str,
    what: &str,
    check: impl FnOnce(&mut Vec<String>, bool) -> Vec<String>,
) -> Vec<String> {
    let _guard = DOCS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = e2e::workspace_root().join(doc);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let update = updating();
    let failures = check(&mut lines, update);
    let mut new = lines.join("\n");
    if text.ends_with('\n') {
        new.push('\n');
    }
    if update && new != text {
        std::fs::write(&path, &new).unwrap();
        eprintln!("{doc}: {what} rewritten from a real run");
    }
    failures
}

/// [`edit_doc`] on README.md; fails with what `check` reports.
fn with_readme(what: &str, check: impl FnOnce(&mut Vec<String>, bool) -> Vec<String>) {
    let failures = edit_doc("README.md", what, check);
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// Lines that differ from run to run

/// `line` with the tokens that differ from one run to the next replaced by placeholders, so that
/// a documented line and a real one compare equal when they differ only there:
/// - 127.0.0.1 ports (`127.0.0.1:<port>`),
/// - temporary directories (`/tmp/.tmp<tmp>`),
/// - process ids (`pid <pid>`, `(was <pid>)`),
/// - `ts=` timestamps, the `date:` header, `x-envoy-upstream-service-time`,
/// - a measured duration in parentheses (`(<duration> after the push)`),
/// - the owner and group of `ls -l` lines (whoever runs it).
///
/// Module sizes, digests and every other header are kept: they must match exactly.
fn mask(line: &str) -> String {
    if line.starts_with("date: ") {
        return "date: <date>".to_string();
    }
    let digit = |c: char| c.is_ascii_digit();
    let mut l = mask_after(line, "127.0.0.1:", digit, "<port>");
    l = mask_after(&l, "/tmp/.tmp", |c| c.is_ascii_alphanumeric(), "<tmp>");
    l = mask_after(&l, "pid ", digit, "<pid>");
    l = mask_after(&l, "(was ", digit, "<pid>");
    l = mask_after(&l, "ts=", |c| !c.is_whitespace(), "<ts>");
    l = mask_after(&l, "x-envoy-upstream-service-time: ", digit, "<ms>");
    l = mask_durations(&l);
    mask_ls_owner(&l)
}

/// Replace the run of `keep` characters after each `marker` (at a word start) by `placeholder`.
fn mask_after(line: &str, marker: &str, keep: impl Fn(char) -> bool, placeholder: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(marker) {
        let before = &rest[..at];
        let word_start = before
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        out.push_str(before);
        out.push_str(marker);
        rest = &rest[at + marker.len()..];
        let end = rest.find(|c| !keep(c)).unwrap_or(rest.len());
        if word_start && end > 0 {
            out.push_str(placeholder);
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// `(1.9s`, `(950.3ms` and the like (Rust's `Duration` debug form) become `(<duration>`.
fn mask_durations(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find('(') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let num = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num == 0 {
            continue;
        }
        let unit = ["ns", "µs", "ms", "s"]
            .into_iter()
            .find(|u| rest[num..].starts_with(u));
        if let Some(u) = unit {
            let after = &rest[num + u.len()..];
            if !after.starts_with(|c: char| c.is_alphanumeric()) {
                out.push_str("<duration>");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// In an `ls -l` line (`-rw-r--r-- 1 OWNER GROUP SIZE ...`), OWNER and GROUP become `<owner>`.
fn mask_ls_owner(line: &str) -> String {
    let mut words = Vec::new(); // byte ranges of the first four words
    let mut start = None;
    for (i, c) in line.char_indices().chain([(line.len(), ' ')]) {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                words.push((s, i));
                start = None;
                if words.len() == 4 {
                    break;
                }
            }
            _ => {}
        }
    }
    let is_mode = |w: &str| {
        w.len() == 10
            && w.starts_with(['-', 'd', 'l'])
            && w[1..].chars().all(|c| "rwxsStT-".contains(c))
    };
    match words[..] {
        [(m0, m1), _, (o0, o1), (g0, g1)] if is_mode(&line[m0..m1]) => format!(
            "{}<owner>{}<owner>{}",
            &line[..o0],
            &line[o1..g0],
            &line[g1..]
        ),
        _ => line.to_string(),
    }
}

/// What pairs a documented line with a real one when they differ: [`mask`], then every number
/// and hex string (an alphanumeric run of `0-9a-f` with a digit) as `#`.
fn shape(line: &str) -> String {
    let masked = mask(line);
    let mut out = String::with_capacity(masked.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let hex = run.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        if hex && run.chars().any(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in masked.chars() {
        if c.is_ascii_alphanumeric() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// How alike two lines are: the characters their masked forms share at the start and the end.
fn likeness(a: &str, b: &str) -> usize {
    let (a, b) = (mask(a), mask(b));
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    (prefix + suffix).min(a.len().min(b.len()))
}

// ---------------------------------------------------------------------------------------------
// Documented blocks against real output

/// A fenced code block of README.md: index (0-based) of its first content line, and the lines.
struct Block {
    first: usize,
    lines: Vec<String>,
}

/// The one fenced block whose first line starts with `opening`.
fn find_block(readme: &[String], opening: &str) -> Block {
    let mut found = Vec::new();
    let mut i = 0;
    while i < readme.len() {
        if readme[i].starts_with("```") {
            let first = i + 1;
            let end = (first..readme.len())
                .find(|&j| readme[j].trim_end() == "```")
                .unwrap_or(readme.len());
            if readme.get(first).is_some_and(|l| l.starts_with(opening)) {
                found.push(Block {
                    first,
                    lines: readme[first..end].to_vec(),
                });
            }
            i = end + 1;
        } else {
            i += 1;
        }
    }
    assert!(
        found.len() == 1,
        "README.md: {} fenced blocks start with {opening:?}, expected one",
        found.len()
    );
    found.pop().unwrap()
}

/// How a documented line relates to the real output.
enum Pairing {
    /// A `...` line: omitted output.
    Elided,
    /// Equal to real line `n` once masked.
    Same(usize),
    /// Real line `n` has its shape (numbers or digests differ).
    Changed(usize),
    /// No real line has its shape; `n` is the most alike.
    Missing(Option<usize>),
}

/// Pair each documented line with a real line, in order: the first equal one (masked) after the
/// previous pairing, else the first of the same shape.
fn pair(doc: &[String], real: &[String]) -> Vec<Pairing> {
    let mut from = 0;
    doc.iter()
        .map(|d| {
            if d.trim() == "..." {
                return Pairing::Elided;
            }
            let (m, s) = (mask(d), shape(d));
            let same = (from..real.len()).find(|&j| mask(&real[j]) == m);
            let found = same.or_else(|| (from..real.len()).find(|&j| shape(&real[j]) == s));
            match found {
                Some(j) => {
                    from = j + 1;
                    if same.is_some() {
                        Pairing::Same(j)
                    } else {
                        Pairing::Changed(j)
                    }
                }
                None => {
                    let candidates = if from < real.len() {
                        from..real.len()
                    } else {
                        0..real.len()
                    };
                    Pairing::Missing(candidates.max_by_key(|&j| likeness(d, &real[j])))
                }
            }
        })
        .collect()
}

/// Compare README block `opening` (its lines from `skip` on) with `real`; with `update`, rewrite
/// it from `real`. A block with no `...` line must show the whole output. `run` names the run
/// for messages. Returns the failures left.
fn check_block(
    readme: &mut Vec<String>,
    update: bool,
    opening: &str,
    skip: usize,
    real: &[String],
    run: &str,
) -> Vec<String> {
    let block = find_block(readme, opening);
    let first = block.first + skip;
    let doc = &block.lines[skip..];
    let pairs = pair(doc, real);
    let whole = !doc.iter().any(|d| d.trim() == "...");
    let mut failures = Vec::new();
    let mut missing = false;
    for (i, (d, p)) in doc.iter().zip(&pairs).enumerate() {
        let nearest = match p {
            Pairing::Elided | Pairing::Same(_) => continue,
            Pairing::Changed(j) => Some(*j),
            Pairing::Missing(j) => {
                missing = true;
                *j
            }
        };
        let note = match p {
            Pairing::Missing(_) if !whole => {
                " (no real line has its shape: edit the block by hand if `make docs` cannot pair it)"
            }
            _ => "",
        };
        failures.push(format!(
            "README.md:{}: not in a real run of {run}; run `make docs`{note}\n  README: {d}\n  real:   {}",
            first + i + 1,
            nearest.map_or("(no output)", |j| real[j].as_str())
        ));
    }
    let shown: Vec<usize> = pairs
        .iter()
        .filter_map(|p| match p {
            Pairing::Same(j) | Pairing::Changed(j) => Some(*j),
            _ => None,
        })
        .collect();
    if whole && failures.is_empty() && shown.len() != real.len() {
        let extra: Vec<&str> = (0..real.len())
            .filter(|j| !shown.contains(j))
            .map(|j| real[j].as_str())
            .collect();
        failures.push(format!(
            "README.md:{}: the block shows {} lines, a real run of {run} prints {}; run `make docs`\n  not shown: {}",
            first + 1,
            doc.len(),
            real.len(),
            extra.join("\n             ")
        ));
    }
    if !update || failures.is_empty() {
        return failures;
    }
    if whole {
        readme.splice(first..first + doc.len(), real.iter().cloned());
        return Vec::new();
    }
    if missing {
        return failures;
    }
    // Every documented line from this one run, so ports, pids and directories agree.
    for (i, p) in pairs.iter().enumerate() {
        if let Pairing::Same(j) | Pairing::Changed(j) = p {
            readme[first + i] = real[*j].clone();
        }
    }
    Vec::new()
}

/// What the README shows of a real demo line beyond [`mask`]: the Envoy binary's path (a
/// machine's) as `.../envoy`.
fn abridge(line: &str) -> String {
    if let Some(rest) = line.strip_prefix("==> envoy (")
        && let Some(end) = rest.find(')')
        && let Some(name) = rest[..end].rsplit('/').next()
    {
        return format!("==> envoy (.../{name}{}", &rest[end..]);
    }
    line.to_string()
}

#[test]
fn demo_transcript_matches_a_real_run() {
    // The demo starts and stops its own registry, agent, upstream and Envoy, also when it fails.
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .current_dir(e2e::workspace_root())
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let real: Vec<String> = stdout.lines().map(abridge).collect();
    with_readme("the `make demo` transcript", |readme, update| {
        check_block(readme, update, "==> ", 0, &real, "`make demo`")
    });
}

/// The words of a shell command line: whitespace-separated, with '...' and "..." quoting.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut in_word, mut quote) = (Vec::new(), String::new(), false, None);
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '\'' || c == '"' => (quote, in_word) = (Some(c), true),
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[test]
fn wasmctl_run_block_matches_a_real_run() {
    const OPENING: &str = "$ wasmctl run ";
    let readme = std::fs::read_to_string(readme_path()).unwrap();
    let lines: Vec<String> = readme.lines().map(str::to_string).collect();
    let block = find_block(&lines, OPENING);
    // The command as documented, continuation lines joined.
    let mut command = block.lines[0].trim_start_matches("$ ").to_string();
    let mut n = 1;
    while let Some(head) = command.strip_suffix('\\') {
        command = format!("{head} {}", block.lines[n].trim());
        n += 1;
    }
    let words = shell_words(&command);
    assert_eq!(words[0], "wasmctl", "README.md: {command}");
    e2e::filter_wasm();
    let args = words[1..].iter().map(|w| match w.strip_prefix("target/") {
        Some(rest) => e2e::target_dir().join(rest).into_os_string(),
        None => w.into(),
    });
    let out = Command::new(e2e::wasmctl_bin())
        .args(args)
        .current_dir(e2e::workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "README.md: `{command}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let real: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    with_readme("the `wasmctl run` block", |readme, update| {
        check_block(readme, update, OPENING, n, &real, "`wasmctl run`")
    });
}

/// The opening of README.md's author-loop block, which [`author_loop_matches_a_real_run`] holds
/// to a real run (its module is the new project's, not the header filter: the digest scan skips
/// the block).
const AUTHOR_LOOP: &str = "$ wasmctl new ";

#[test]
fn author_loop_matches_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("my-filter");
    let mut real: Vec<String> = Vec::new();
    let run = |real: &mut Vec<String>, shown: &str, cmd: &mut Command| {
        real.push(format!("$ {shown}"));
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "`{shown}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        real.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string),
        );
    };
    let wasmctl = || {
        let mut c = Command::new(e2e::wasmctl_bin());
        c.env("ENVOY_BIN", e2e::envoy::envoy_bin());
        c
    };
    run(
        &mut real,
        "wasmctl new my-filter --lang rust",
        wasmctl()
            .args(["new", "my-filter", "--lang", "rust"])
            .current_dir(dir.path()),
    );
    real.push("$ cd my-filter".into());
    let build = "cargo build --target wasm32-wasip1 --release";
    run(
        &mut real,
        build,
        Command::new("sh")
            .args(["-c", build])
            .env_remove("CARGO_TARGET_DIR")
            .current_dir(&project),
    );
    run(
        &mut real,
        "wasmctl test",
        wasmctl().arg("test").current_dir(&project),
    );

    // dev, with a free port in place of 10000 (the masks make them equal), until it watches.
    real.push("$ wasmctl dev --build".into());
    let mut dev = wasmctl()
        .args(["dev", "--build", "--port", "0"])
        .current_dir(&project)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = dev.stdout.take().unwrap();
    let dev = Stop(dev);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut listener = String::new();
    loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("wasmctl dev did not start watching:\n{}", real.join("\n")));
        if let Some(rest) = line.split("serves http://").nth(1) {
            listener = rest.split_whitespace().next().unwrap().to_string();
        }
        let done = line.contains("watching for changes");
        real.push(line);
        if done {
            break;
        }
    }
    let url = format!("{listener}/hello");
    real.push(format!("$ curl -si {url}"));
    let out = Command::new("curl")
        .args(["-si", "--max-time", "10", &url])
        .output()
        .unwrap();
    real.extend(
        String::from_utf8_lossy(&out.stdout)
            .replace("\r\n", "\n")
            .lines()
            .map(str::to_string),
    );
    real.push("^C".into());
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(dev.0.id() as i32, libc::SIGINT);
    }
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(20)) {
        real.push(line);
    }
    drop(dev);
    with_readme("the author loop (new, test, dev)", |readme, update| {
        check_block(readme, update, AUTHOR_LOOP, 0, &real, "the author loop")
    });
}

// ---------------------------------------------------------------------------------------------
// Module sizes

/// Where a documented size comes from.
#[derive(Clone, Copy)]
enum Size {
    /// The size of the built `header_filter.wasm`.
    Built,
    /// A number in `docs/bench/results.json` (a JSON pointer).
    Bench(&'static str),
    /// The size of the built `header_filter.wasm`'s code section (what `wasm-objdump -x -j Code`
    /// reports).
    Code,
    /// The size of the built Go example filter, `go_filter.wasm` (`make go-example`).
    Go,
}

/// The built `header_filter.wasm`: its size, its code section's size and its sha256 (hex).
struct Module {
    bytes: u64,
    code: u64,
    sha256: String,
}

/// The header filter as the build makes it now (built once per test process).
fn built_module() -> &'static Module {
    static BUILT: OnceLock<Module> = OnceLock::new();
    BUILT.get_or_init(|| {
        let path = e2e::filter_wasm();
        let wasm = std::fs::read(&path).unwrap();
        Module {
            bytes: wasm.len() as u64,
            code: code_section_size(&wasm),
            sha256: e2e::agent::sha256_file(&path),
        }
    })
}

/// The payload size of a wasm module's code section (id 10).
fn code_section_size(wasm: &[u8]) -> u64 {
    assert!(wasm.starts_with(b"\0asm"), "not a wasm module");
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let (mut size, mut shift) = (0u64, 0);
        loop {
            let b = wasm[at];
            at += 1;
            size |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b < 0x80 {
                break;
            }
        }
        if id == 10 {
            return size;
        }
        at += usize::try_from(size).unwrap();
    }
    panic!("the module has no code section")
}

/// The number at `pointer` in `docs/bench/results.json`.
fn bench_size(pointer: &str) -> u64 {
    static RESULTS: OnceLock<serde_json::Value> = OnceLock::new();
    let results = RESULTS.get_or_init(|| {
        let path = e2e::workspace_root().join("docs/bench/results.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    });
    results
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("docs/bench/results.json has no number at {pointer}"))
}

/// The real value of `source`, and its origin for messages (`... {origin} {value}`).
fn real_size(source: Size) -> (u64, String) {
    match source {
        Size::Built => (
            built_module().bytes,
            "the built header_filter.wasm is".to_string(),
        ),
        Size::Bench(p) => (
            bench_size(p),
            format!("docs/bench/results.json ({p}) records"),
        ),
        Size::Code => (
            built_module().code,
            "the built header_filter.wasm's code section is".to_string(),
        ),
        Size::Go => (
            std::fs::metadata(e2e::go_wasm()).unwrap().len(),
            "the built go_filter.wasm is".to_string(),
        ),
    }
}

const BENCH_FILTER: &str = "/modules/header_filter.wasm";
const BENCH_MINIMAL: &str = "/modules/minimal_filter.wasm";
const BENCH_BEFORE: &str = "/modules/compare/bytes";

/// The size figures of README.md: a sentence pattern (`{}` a number, commas allowed) found once
/// on one line, and where each of its numbers comes from.
const FIGURES: &[(&str, &[Size])] = &[
    ("**{} bytes** today", &[Size::Built]),
    (
        "the minimal SDK filter's {}.",
        &[Size::Bench(BENCH_MINIMAL)],
    ),
    (
        "Module **{} bytes** (minimal: {};",
        &[Size::Bench(BENCH_FILTER), Size::Bench(BENCH_MINIMAL)],
    ),
    (
        "{} → {} bytes",
        &[Size::Bench(BENCH_BEFORE), Size::Bench(BENCH_FILTER)],
    ),
];

/// A number at the start of `s` (digits, with commas between them): its length and value.
fn number_at(s: &str) -> Option<(usize, u64)> {
    let b = s.as_bytes();
    let mut end = 0;
    while end < b.len()
        && (b[end].is_ascii_digit()
            || (b[end] == b',' && end > 0 && b.get(end + 1).is_some_and(u8::is_ascii_digit)))
    {
        end += 1;
    }
    let value = s[..end].replace(',', "").parse().ok()?;
    Some((end, value))
}

/// A number found in a line: its byte range and value.
type Figure = (usize, usize, u64);

/// Where `pattern` matches `line`: each `{}`'s number.
fn find_figure(line: &str, pattern: &str) -> Option<Vec<Figure>> {
    let parts: Vec<&str> = pattern.split("{}").collect();
    'start: for (start, _) in line.char_indices() {
        if start > 0 && parts[0].is_empty() && line.as_bytes()[start - 1].is_ascii_digit() {
            continue;
        }
        let mut at = start;
        let mut numbers = Vec::new();
        for (k, literal) in parts.iter().enumerate() {
            if !line[at..].starts_with(literal) {
                continue 'start;
            }
            at += literal.len();
            if k + 1 < parts.len() {
                let Some((len, value)) = number_at(&line[at..]) else {
                    continue 'start;
                };
                numbers.push((at, at + len, value));
                at += len;
            }
        }
        return Some(numbers);
    }
    None
}

/// `52447` as `52,447`.
fn with_commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn module_sizes_match_the_build_and_the_benchmark() {
    let built = built_module().bytes;
    let bench = bench_size;
    let mut stale = Vec::new();
    if bench(BENCH_FILTER) != built {
        stale.push(format!(
            "docs/bench/results.json: header_filter.wasm is {} bytes there, the build is {}: the \
             benchmark's figures are from another module; re-run `make bench-envoy`, then `make docs`",
            bench(BENCH_FILTER),
            built
        ));
    }
    with_readme("module sizes", |readme, update| {
        let mut failures = Vec::new();
        for &(pattern, sources) in FIGURES {
            let found: Vec<(usize, Vec<Figure>)> = readme
                .iter()
                .enumerate()
                .filter_map(|(i, l)| find_figure(l, pattern).map(|n| (i, n)))
                .collect();
            let [(i, numbers)] = &found[..] else {
                failures.push(format!(
                    "README.md: {} lines match {pattern:?}, expected one (if the sentence changed, \
                     change FIGURES in tests/tests/docs_figures.rs)",
                    found.len()
                ));
                continue;
            };
            // From the last number back, so that the earlier byte ranges stay valid.
            for (&(start, end, shown), &source) in numbers.iter().zip(sources).rev() {
                let (real, origin) = real_size(source);
                if shown == real {
                    continue;
                }
                if update {
                    readme[*i].replace_range(start..end, &with_commas(real));
                } else {
                    failures.push(format!(
                        "README.md:{}: {}, but {origin} {}; run `make docs`\n  README: {}",
                        i + 1,
                        with_commas(shown),
                        with_commas(real),
                        readme[*i]
                    ));
                }
            }
        }
        failures.extend(stale);
        failures
    });
}

// ---------------------------------------------------------------------------------------------
// Every doc: module sizes and digests

/// Directories (by name, or by path from the workspace root) whose Markdown is not the project's
/// docs: build output, installed packages, the benchmark's generated record of its own run (each
/// file there describes the module of that run, which `make bench-envoy` rewrites), fuzz
/// corpora. Hidden directories (`.git`, `.venv`) are skipped too.
const NOT_DOCS: &[&str] = &["target", "node_modules", "docs/bench", "fuzz/corpus"];

/// Every Markdown doc of the project, as paths relative to the workspace root, sorted.
fn docs() -> Vec<String> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                if !name.starts_with('.') && !NOT_DOCS.iter().any(|&n| n == name || n == path) {
                    walk(root, &path, out);
                }
            } else if kind.is_file() && name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(e2e::workspace_root(), "", &mut out);
    out
}

/// How a documented figure shows a size.
#[derive(Clone, Copy)]
enum Unit {
    /// The byte count (commas allowed: `52,978` or `52978`).
    Bytes,
    /// Kilobytes of 1,000 bytes, rounded to the decimals shown (`53 KB`).
    Kb,
    /// Megabytes of 1,000,000 bytes, rounded to the decimals shown (`3.5 MB`).
    Mb,
}

/// `bytes` as a doc showing `shown` in `unit` would write it now.
fn display(bytes: u64, unit: Unit, shown: &str) -> String {
    let decimals = shown.split_once('.').map_or(0, |(_, d)| d.len());
    #[allow(clippy::cast_precision_loss)] // module sizes are far below 2^52
    let scaled = |per: f64| format!("{:.decimals$}", bytes as f64 / per);
    match unit {
        Unit::Bytes if shown.contains(',') => with_commas(bytes),
        Unit::Bytes => bytes.to_string(),
        Unit::Kb => scaled(1e3),
        Unit::Mb => scaled(1e6),
    }
}

/// Figures recognised in every doc, wherever they occur, each match checked: the agent's
/// `bytes=` field (in the `updated` line, the module it installed) and `wasmctl push`'s
/// `pushed N bytes`. The module they show is the header filter; a doc that shows another
/// module's size here masks it (`bytes=...`).
const EVERY_DOC_FIGURES: &[(&str, Size, Unit)] = &[
    ("bytes={}", Size::Built, Unit::Bytes),
    ("pushed {} bytes", Size::Built, Unit::Bytes),
];

/// Where the numbers of a figure come from, and in which unit each is shown.
type Sources = &'static [(Size, Unit)];

/// The size figures of the other docs (README.md's are [`FIGURES`]): the doc, a sentence pattern
/// (`{}` a number, commas and decimals allowed) found once in it, and where each of its numbers
/// comes from and in which unit.
const DOC_FIGURES: &[(&str, &str, Sources)] = &[
    (
        "filter/README.md",
        "`header_filter.wasm`, {} bytes",
        &[(Size::Built, Unit::Bytes)],
    ),
    (
        "examples/go-filter/README.md",
        "go_filter.wasm {} bytes",
        &[(Size::Go, Unit::Bytes)],
    ),
    (
        "examples/go-filter/README.md",
        "The module is {} MB",
        &[(Size::Go, Unit::Mb)],
    ),
    (
        "examples/go-filter/README.md",
        "against the header filter's {} KB",
        &[(Size::Built, Unit::Kb)],
    ),
    (
        "BENCHMARKS.md",
        "before it spoke the ABI directly; {} bytes",
        &[(Size::Bench(BENCH_BEFORE), Unit::Bytes)],
    ),
    (
        "BENCHMARKS.md",
        "| header_filter.wasm bytes | {} |",
        &[(Size::Bench(BENCH_FILTER), Unit::Bytes)],
    ),
    (
        "BENCHMARKS.md",
        "| minimal_filter.wasm bytes | {} |",
        &[(Size::Bench(BENCH_MINIMAL), Unit::Bytes)],
    ),
    (
        "BENCHMARKS.md",
        "| {} bytes (minimal: {}) | **met** ({} before) |",
        &[
            (Size::Bench(BENCH_FILTER), Unit::Bytes),
            (Size::Bench(BENCH_MINIMAL), Unit::Bytes),
            (Size::Bench(BENCH_BEFORE), Unit::Bytes),
        ],
    ),
    ("BENCHMARKS.md", "{} KB of code", &[(Size::Code, Unit::Kb)]),
];

/// A number at the start of `s`: digits, with commas between them and an optional decimal part.
/// Its length.
fn decimal_at(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let mut end = 0;
    while digit(end) || (end > 0 && b.get(end) == Some(&b',') && digit(end + 1)) {
        end += 1;
    }
    if end > 0 && b.get(end) == Some(&b'.') && digit(end + 1) {
        end += 1;
        while digit(end) {
            end += 1;
        }
    }
    (end > 0).then_some(end)
}

/// Every place where `pattern` matches `line`, left to right, without overlap: the byte range of
/// each `{}`'s number. A pattern that starts with a letter or digit matches only at a word start.
fn find_figures(line: &str, pattern: &str) -> Vec<Vec<(usize, usize)>> {
    let parts: Vec<&str> = pattern.split("{}").collect();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let number_char = |c: char| c.is_ascii_digit() || c == ',' || c == '.';
    let mut found = Vec::new();
    let mut from = 0;
    'start: for (start, _) in line.char_indices() {
        if start < from {
            continue;
        }
        let before = line[..start].chars().next_back();
        let boundary: fn(char) -> bool = if parts[0].is_empty() {
            number_char
        } else {
            word
        };
        if (parts[0].is_empty() || parts[0].starts_with(word)) && before.is_some_and(boundary) {
            continue;
        }
        let mut at = start;
        let mut numbers = Vec::new();
        for (k, literal) in parts.iter().enumerate() {
            if !line[at..].starts_with(literal) {
                continue 'start;
            }
            at += literal.len();
            if k + 1 < parts.len() {
                let Some(len) = decimal_at(&line[at..]) else {
                    continue 'start;
                };
                numbers.push((at, at + len));
                at += len;
            }
        }
        found.push(numbers);
        from = at.max(start + 1);
    }
    found
}

/// Compare the numbers at `ranges` of `line` with `sources`; with `update`, rewrite them (from
/// the last back, so that the earlier ranges stay valid). `place` (`doc:line`) is for messages.
fn check_numbers(
    line: &mut String,
    ranges: &[(usize, usize)],
    sources: &[(Size, Unit)],
    update: bool,
    place: &str,
) -> Vec<String> {
    let mut failures = Vec::new();
    let original = line.clone();
    for (&(start, end), &(source, unit)) in ranges.iter().zip(sources).rev() {
        let shown = original[start..end].to_string();
        let (real, origin) = real_size(source);
        let expected = display(real, unit, &shown);
        if shown.replace(',', "") == expected.replace(',', "") {
            continue;
        }
        if update {
            line.replace_range(start..end, &expected);
        } else {
            let written = if expected.replace(',', "") == real.to_string() {
                String::new()
            } else {
                format!(" ({expected} as this doc writes it)")
            };
            failures.push(format!(
                "{place}: {shown}, but {origin} {}{written}; run `make docs`\n  doc: {original}",
                with_commas(real)
            ));
        }
    }
    failures
}

/// What a hex digest quoted in a doc names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Digest {
    /// The sha256 of `header_filter.wasm` as built: `sha256=HEX`, `sha256 HEX`, and the
    /// agent's content-addressed file `HEX.wasm`.
    Module,
    /// The manifest digest of `header_filter.wasm` pushed as the docs push it (`wasmctl push
    /// IMAGE header_filter.wasm --root-id my_root_id`, solo layout): `sha256:HEX`.
    Manifest,
    /// Another module's (`previous_sha256=HEX`): no build reproduces it, so it is masked.
    Other,
}

/// A digest quoted in a line: the byte range of its hex, whether it is marked abbreviated
/// (`...` right after it), and what it names.
#[derive(PartialEq, Eq, Debug)]
struct Quote {
    start: usize,
    end: usize,
    abbreviated: bool,
    names: Digest,
}

/// The digests quoted in `line`: every word of lower-case hex (four or more characters, a digit
/// among them) that follows `sha256:`, `sha256=` or `sha256 `, or is a file name `HEX.wasm` (or
/// `HEX....wasm`, abbreviated; a manifest digest when the name is `manifest-sha256-HEX.wasm`). Masked digests (`sha256:...`) have no hex and are not quotes.
fn digests(line: &str) -> Vec<Quote> {
    let word = |c: char| c.is_ascii_alphanumeric();
    let mut quotes = Vec::new();
    let mut at = 0;
    while at < line.len() {
        let Some(start) = line[at..].find(word).map(|i| at + i) else {
            break;
        };
        let end = line[start..]
            .find(|c: char| !word(c))
            .map_or(line.len(), |i| start + i);
        at = end;
        let hex = &line[start..end];
        if hex.len() < 4
            || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
            || !hex.chars().any(|c| c.is_ascii_digit())
        {
            continue;
        }
        let (before, after) = (&line[..start], &line[end..]);
        let key = ["sha256:", "sha256=", "sha256 "]
            .into_iter()
            .find(|k| before.ends_with(k));
        let names = match key {
            Some("sha256:") => Digest::Manifest,
            // The node agent's link for a manifest digest: `manifest-sha256-HEX.wasm`.
            None if before.ends_with("manifest-sha256-") => Digest::Manifest,
            Some(k) => {
                let prefix = &before[..before.len() - k.len()];
                if prefix.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    Digest::Other
                } else {
                    Digest::Module
                }
            }
            None => {
                let file = [".wasm", "....wasm"].into_iter().any(|ext| {
                    after
                        .strip_prefix(ext)
                        .is_some_and(|rest| !rest.starts_with(word))
                });
                if !file {
                    continue;
                }
                Digest::Module
            }
        };
        quotes.push(Quote {
            start,
            end,
            abbreviated: after.starts_with("..."),
            names,
        });
    }
    quotes
}

/// The manifest digest (hex, without `sha256:`) of the built `header_filter.wasm` pushed with
/// `wasmctl push IMAGE header_filter.wasm --root-id my_root_id` to a real registry, once per test
/// process. Pushes are reproducible: the digest depends on the module and the options, not on
/// the registry or the repository.
fn pushed_digest() -> &'static str {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST.get_or_init(|| {
        let registry = e2e::registry::Registry::start();
        let out = Command::new(e2e::wasmctl_bin())
            .arg("push")
            .arg(registry.reference("filters/header-filter:v1"))
            .arg(e2e::filter_wasm())
            .args(["--root-id", "my_root_id", "--plain-http"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wasmctl push failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("digest: sha256:"))
            .unwrap_or_else(|| panic!("wasmctl push printed no digest: {stdout}"))
            .to_string()
    })
}

/// Check the digests quoted in `line` against the build; with `update`, rewrite them (an
/// abbreviated one keeps its length). `place` (`doc:line`) is for messages.
fn check_digests(line: &mut String, update: bool, place: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let original = line.clone();
    for q in digests(&original).iter().rev() {
        let shown = &original[q.start..q.end];
        let (real, what) = match q.names {
            Digest::Module => (
                built_module().sha256.as_str(),
                "the built header_filter.wasm's sha256",
            ),
            Digest::Manifest => (
                pushed_digest(),
                "the manifest digest of the built header_filter.wasm pushed with --root-id \
                 my_root_id",
            ),
            Digest::Other => {
                failures.push(format!(
                    "{place}: {shown} is no digest of the current build and no test reproduces \
                     it; mask it as `...`\n  doc: {original}"
                ));
                continue;
            }
        };
        let expected = if q.abbreviated {
            &real[..shown.len().min(real.len())]
        } else {
            real
        };
        if shown == expected {
            continue;
        }
        if update {
            line.replace_range(q.start..q.end, expected);
        } else {
            let form = if q.abbreviated {
                "its abbreviation starts"
            } else if shown.len() < real.len() {
                "the digest is cut short without `...`; it is"
            } else {
                "it is"
            };
            failures.push(format!(
                "{place}: {shown} is not {what}: {form} {expected}; run `make docs`, or mask it \
                 as `...` if the doc means another module\n  doc: {original}"
            ));
        }
    }
    failures
}

/// Figures a doc must keep showing in a form the scan recognises (a count of zero means the
/// line was rewritten out of the test's reach): the doc, and the pattern of
/// [`EVERY_DOC_FIGURES`] or the [`Digest`] kind.
const MUST_SHOW: &[(&str, &str)] = &[
    ("README.md", "bytes={}"),
    ("README.md", "Module"),
    ("README.md", "Manifest"),
    ("wasmctl/README.md", "bytes={}"),
    ("wasmctl/README.md", "pushed {} bytes"),
    ("wasmctl/README.md", "Module"),
    ("wasmctl/README.md", "Manifest"),
];

/// Check one doc's build figures; `shown` counts what was found, by pattern or digest kind.
fn check_doc(
    doc: &str,
    lines: &mut [String],
    update: bool,
    shown: &mut BTreeMap<(String, String), usize>,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut count = |what: String| *shown.entry((doc.to_string(), what)).or_default() += 1;
    // Inside README.md's author-loop block the module is the new project's, and the block is
    // held to a real run as a whole (`author_loop_matches_a_real_run`).
    let (mut fenced, mut author_loop) = (false, false);
    for (i, line) in lines.iter_mut().enumerate() {
        let place = format!("{doc}:{}", i + 1);
        if line.starts_with("```") {
            fenced = !fenced;
            author_loop = false;
            continue;
        }
        if fenced && line.starts_with(AUTHOR_LOOP) {
            author_loop = true;
        }
        if author_loop {
            continue;
        }
        for &(pattern, source, unit) in EVERY_DOC_FIGURES {
            // From the last match back, so that the earlier byte ranges stay valid.
            for ranges in find_figures(line, pattern).iter().rev() {
                count(pattern.to_string());
                failures.extend(check_numbers(
                    line,
                    ranges,
                    &[(source, unit)],
                    update,
                    &place,
                ));
            }
        }
        for q in digests(line) {
            count(format!("{:?}", q.names));
        }
        failures.extend(check_digests(line, update, &place));
    }
    for &(_, pattern, sources) in DOC_FIGURES.iter().filter(|(d, _, _)| *d == doc) {
        let found: Vec<(usize, Vec<(usize, usize)>)> = lines
            .iter()
            .enumerate()
            .flat_map(|(i, l)| find_figures(l, pattern).into_iter().map(move |r| (i, r)))
            .collect();
        let [(i, ranges)] = &found[..] else {
            failures.push(format!(
                "{doc}: {} places match {pattern:?}, expected one (if the sentence changed, \
                 change DOC_FIGURES in tests/tests/docs_figures.rs)",
                found.len()
            ));
            continue;
        };
        let place = format!("{doc}:{}", i + 1);
        failures.extend(check_numbers(
            &mut lines[*i],
            ranges,
            sources,
            update,
            &place,
        ));
    }
    failures
}

#[test]
fn every_doc_quotes_the_build_s_sizes_and_digests() {
    let docs = docs();
    eprintln!("docs checked: {}", docs.join(", "));
    let mut failures = Vec::new();
    for doc in DOC_FIGURES
        .iter()
        .map(|(d, _, _)| *d)
        .chain(MUST_SHOW.iter().map(|(d, _)| *d))
    {
        if !docs.iter().any(|d| d == doc) {
            failures.push(format!(
                "{doc} is not among the docs found ({}); if it moved, change \
                 tests/tests/docs_figures.rs",
                docs.join(", ")
            ));
        }
    }
    let mut shown = BTreeMap::new();
    for doc in &docs {
        failures.extend(edit_doc(
            doc,
            "module sizes and digests",
            |lines, update| check_doc(doc, lines, update, &mut shown),
        ));
    }
    for &(doc, what) in MUST_SHOW {
        if !shown.contains_key(&(doc.to_string(), what.to_string())) {
            failures.push(format!(
                "{doc}: no figure {what:?} found any more; the test checks it there (if the doc \
                 changed on purpose, change MUST_SHOW in tests/tests/docs_figures.rs)"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn figures_and_digests_are_recognised() {
    let line = "ts=x event=updated digest=sha256:3db0... sha256=9216c6d7... bytes=52978 \
                previous_sha256=1234abcd... file=/tmp/.../9216c6d7....wasm kept=\"sha256 9216 from sha256:...\"";
    let kinds: Vec<(Digest, &str, bool)> = digests(line)
        .iter()
        .map(|q| (q.names, &line[q.start..q.end], q.abbreviated))
        .collect();
    assert_eq!(
        kinds,
        [
            (Digest::Manifest, "3db0", true),
            (Digest::Module, "9216c6d7", true),
            (Digest::Other, "1234abcd", true),
            (Digest::Module, "9216c6d7", true),
            (Digest::Module, "9216", false),
        ]
    );
    // The agent's link for a manifest digest names the manifest, its target the module.
    let link = "lrwxrwxrwx 69  manifest-sha256-3db0....wasm -> 9216c6d7....wasm";
    let kinds: Vec<(Digest, &str)> = digests(link)
        .iter()
        .map(|q| (q.names, &link[q.start..q.end]))
        .collect();
    assert_eq!(
        kinds,
        [(Digest::Manifest, "3db0"), (Digest::Module, "9216c6d7")]
    );
    // Prose, masked digests, commits and other file names are no quotes.
    for text in [
        "the sha256 of a module, `@sha256:...`, commit 12e4965, header_filter.wasm, <64 hex>.wasm",
        "DIR/<sha256-of-the-module>.wasm, a1b2c3d4.wasmx",
    ] {
        assert_eq!(digests(text), []);
    }
    let full = "module=/tmp/.tmpaRCGH7/wasm-filters/9216c6d77a562d5cfb6aeddfc510d1ea54d897136e75e65273d1e012e9c695fb.wasm";
    assert_eq!(digests(full).len(), 1);
    assert!(!digests(full)[0].abbreviated);

    assert_eq!(
        find_figures(
            "a bytes=52978 b bytes=... pull_bytes=7 bytes=1,2",
            "bytes={}"
        ),
        [vec![(8, 13)], vec![(45, 48)]]
    );
    assert_eq!(
        find_figures("The module is 3.5 MB (Go)", "The module is {} MB"),
        [vec![(14, 17)]]
    );
    assert_eq!(
        find_figures("x 46 KB of code", "{} KB of code"),
        [vec![(2, 4)]]
    );
    assert_eq!(display(52_978, Unit::Kb, "52"), "53");
    assert_eq!(display(3_522_241, Unit::Mb, "3.5"), "3.5");
    assert_eq!(display(46_404, Unit::Kb, "46"), "46");
    assert_eq!(display(52_978, Unit::Bytes, "52,447"), "52,978");
    assert_eq!(display(52_978, Unit::Bytes, "52447"), "52978");
}

#[test]
fn masking_keeps_sizes_and_digests() {
    let doc = "    ts=2026-11-29T20:17:32.882Z level=info event=updated image=127.0.0.1:43245/f:v1 sha256=9385d2 bytes=52447 file=/tmp/.tmpZA2ho0/a.wasm";
    let real = "    ts=2026-12-01T08:00:00.001Z level=info event=updated image=127.0.0.1:51000/f:v1 sha256=9385d2 bytes=52447 file=/tmp/.tmpQ1w2e3/a.wasm";
    assert_eq!(mask(doc), mask(real));
    assert_ne!(mask(doc), mask(&real.replace("52447", "52448")));
    assert_ne!(mask(doc), mask(&real.replace("9385d2", "9385d3")));
    assert_eq!(shape(doc), shape(&real.replace("52447", "52448")));
    assert_eq!(
        mask("==> agent log: the ECDS file rewritten (1.9s after the push)"),
        mask("==> agent log: the ECDS file rewritten (950.2ms after the push)")
    );
    assert_eq!(
        mask("    -rw-r--r-- 1 root root 52447  x.wasm"),
        "    -rw-r--r-- 1 <owner> <owner> 52447  x.wasm"
    );
    assert_eq!(
        mask("    same envoy process: pid 3136 (was 3136); layout=\"solo (two layers)\""),
        "    same envoy process: pid <pid> (was <pid>); layout=\"solo (two layers)\""
    );
    assert_eq!(
        find_figure("proxying, 144,777 → 52,447 bytes, VM", "{} → {} bytes"),
        Some(vec![(10, 17, 144_777), (22, 28, 52_447)])
    );
    assert_eq!(with_commas(52_447), "52,447");
    assert_eq!(with_commas(144_777), "144,777");
    assert_eq!(with_commas(999), "999");
}

/// The example at the top of host-harness/README.md, compiled and run here exactly as written
/// (the lines between the markers below must equal the README's first `rust` block).
#[test]
#[rustfmt::skip] // the example keeps the README's layout
fn harness_readme_example_runs_as_written() -> Result<(), Box<dyn std::error::Error>> {
    e2e::filter_wasm();
    // The example's path is relative to the workspace root, where `make build` writes it (the
    // other tests of this file name their directories explicitly).
    std::env::set_current_dir(e2e::workspace_root())?;
    // README-BEGIN
    use proxy_wasm_harness::{Host, Module, Runtime};
    use std::time::Duration;

    let module = Module::from_file(&Runtime::shared(), "target/wasm32-wasip1/wasm/header_filter.wasm")?;
    let host = Host::new();                                   // clock, logs, metrics, shared data, queues
    let plugin = host.start_plugin(&module, "my_root_id",
        r#"{"name":"resp-header-demo","value":"added by our filter"}"#)?;
    let mut s = plugin.http_stream()?;
    s.send_request_headers(&[(":method", "GET"), (":path", "/"), (":authority", "x")], true)?;
    s.send_response_headers(&[(":status", "200")], true)?;
    s.complete()?;                                           // on_log, on_done, on_delete
    assert_eq!(s.response_headers().get("resp-header-demo").as_deref(), Some("added by our filter"));
    host.advance(Duration::from_secs(1))?;                  // the filter flushes its counters on its 1 s tick
    assert_eq!(host.metric("header_filter.default.rule_0.applied").unwrap().value, 1);
    // README-END

    let source = include_str!("docs_figures.rs");
    let (begin, end) = ("// README-BEGIN\n", "    // README-END");
    let start = source.find(begin).unwrap() + begin.len();
    let here: Vec<&str> = source[start..start + source[start..].find(end).unwrap()]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    let readme = std::fs::read_to_string(e2e::workspace_root().join("host-harness/README.md"))?;
    let block: Vec<&str> = readme
        .split("```rust\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .ok_or("host-harness/README.md has no rust block")?
        .lines()
        .collect();
    assert_eq!(
        block, here,
        "host-harness/README.md's example differs from the one this test runs (tests/tests/docs_figures.rs)"
    );
    Ok(())
}
