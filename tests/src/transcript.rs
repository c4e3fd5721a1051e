//! The demos' transcript: steps, indented output, commands shown as a person would type them.

use std::process::Command;
use std::time::{Duration, Instant};

/// A new step: `==> what`.
pub fn step(s: &str) {
    println!("\n==> {s}");
}

/// `text`, indented by four spaces.
pub fn indent(text: &str) {
    for l in text.trim_end().lines() {
        println!("    {l}");
    }
}

/// `curl -si URL`, shown and printed; returns the transcript (CRLF as LF).
pub fn curl(url: &str) -> Result<String, String> {
    println!("$ curl -si {url}");
    let out = Command::new("curl")
        .args(["-si", "--max-time", "10", url])
        .output()
        .map_err(|e| format!("cannot run curl: {e} (run scripts/setup)"))?;
    let t = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    println!("{}", t.trim_end());
    Ok(t)
}

/// Whether `transcript` has `line` (ASCII case ignored: header names).
pub fn has(transcript: &str, line: &str) -> bool {
    transcript.lines().any(|l| l.eq_ignore_ascii_case(line))
}

/// Poll `cond` until it holds; how long it took, or an error naming `what`.
pub fn wait(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    crate::poll_until(start + deadline, || cond().then_some(()))
        .map(|()| start.elapsed())
        .ok_or_else(|| format!("{what}: not within {deadline:?}"))
}
