//! README.md quotes real output; these tests hold it to a real run. The `make demo` transcript
//! (abridged: `...` lines mark omitted output) and the `wasmctl run` example are run again and
//! compared line by line; the module sizes are compared with the built module and with the last
//! benchmark run (`docs/bench/results.json`).
//!
//! `make docs` runs them with `UPDATE_DOCS=1`: each documented line is then replaced by the real
//! line it corresponds to, and each size figure by the real size. Only README.md is rewritten.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Serialises reading and rewriting README.md between the tests of this file.
static README_LOCK: Mutex<()> = Mutex::new(());

fn readme_path() -> PathBuf {
    e2e::workspace_root().join("README.md")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1")
}

/// Run `check` on README.md's lines (`what` it checks, for messages); with `UPDATE_DOCS=1` it may
/// edit them and the result is written back. Fails with whatever `check` reports (in update mode:
/// what it could not fix).
fn with_readme(what: &str, check: impl FnOnce(&mut Vec<String>, bool) -> Vec<String>) {
    let failures = {
        let _guard = README_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let path = readme_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let update = updating();
        let failures = check(&mut lines, update);
        let mut new = lines.join("\n");
        if text.ends_with('\n') {
            new.push('\n');
        }
        if update && new != text {
            std::fs::write(&path, &new).unwrap();
            eprintln!("README.md: {what} rewritten from a real run");
        }
        failures
    };
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

// ---------------------------------------------------------------------------------------------
// Module sizes

/// Where a documented size comes from.
#[derive(Clone, Copy)]
enum Size {
    /// The size of the built `header_filter.wasm`.
    Built,
    /// A number in `docs/bench/results.json` (a JSON pointer).
    Bench(&'static str),
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
    let built = std::fs::metadata(e2e::filter_wasm()).unwrap().len();
    let results_path = e2e::workspace_root().join("docs/bench/results.json");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results_path).unwrap()).unwrap();
    let bench = |pointer: &str| {
        results
            .pointer(pointer)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("docs/bench/results.json has no number at {pointer}"))
    };
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
                let (real, origin) = match source {
                    Size::Built => (built, "the built header_filter.wasm is".to_string()),
                    Size::Bench(p) => (bench(p), format!("docs/bench/results.json ({p}) records")),
                };
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
