//! What a test that changes the host must give back: kernel settings (`sysctl -a`), mounts
//! (`/proc/self/mountinfo`), cgroup directories, the host's iptables rules (`iptables-save`)
//! and network interfaces (`ip -o link`). [`HostState::capture`] reads them;
//! [`HostState::changes_since`] names every difference.
//!
//! Some kernel settings move by themselves (entropy, counts of open files, the last pid):
//! [`HostState::capture`] reads `sysctl -a` twice and leaves out whatever changed between the
//! two reads, and a short list of counters that are known to move.
//!
//! ```no_run
//! let before = e2e::host_state::HostState::capture();
//! // ... start and stop something that touches the host ...
//! let changes = e2e::host_state::HostState::capture().changes_since(&before);
//! assert!(changes.is_empty(), "{changes:#?}");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Kernel settings that are counters or change with load, never set by anyone.
const VOLATILE_SYSCTLS: [&str; 12] = [
    "kernel.random.",
    "fs.dentry-state",
    "fs.inode-nr",
    "fs.inode-state",
    "fs.file-nr",
    "fs.aio-nr",
    "kernel.ns_last_pid",
    "kernel.pty.nr",
    "net.netfilter.nf_conntrack_count",
    "fs.quota.",
    "kernel.tainted",
    "vm.stat_refresh",
];

/// A snapshot of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    sysctls: BTreeMap<String, String>,
    mounts: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    iptables: Vec<String>,
    links: BTreeSet<String>,
}

fn run(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn sysctls() -> BTreeMap<String, String> {
    run("sysctl", &["-a"])
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .filter(|(k, _)| !VOLATILE_SYSCTLS.iter().any(|v| k.starts_with(v)))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn cgroup_dirs(dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
    if depth == 0 {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.insert(e.path().display().to_string());
                cgroup_dirs(&e.path(), depth - 1, out);
            }
        }
    }
}

impl HostState {
    /// Read the host's state now.
    pub fn capture() -> HostState {
        let first = sysctls();
        let second = sysctls();
        let sysctls = first
            .into_iter()
            .filter(|(k, v)| second.get(k) == Some(v))
            .collect();
        // A mount by where it is, what it is and what it shows (ids and peer groups are
        // allocated anew and say nothing of the host's layout).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let sep = f.iter().position(|x| *x == "-")?;
                Some(format!(
                    "{} {} {}",
                    f.get(4)?,
                    f.get(sep + 1)?,
                    f.get(sep + 2)?
                ))
            })
            .collect();
        let mut cgroups = BTreeSet::new();
        cgroup_dirs(Path::new("/sys/fs/cgroup"), 4, &mut cgroups);
        let iptables = run("iptables-save", &[])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split_once(" [") {
                Some((chain, _)) if l.starts_with(':') => chain.to_string(),
                _ => l.to_string(),
            })
            .collect();
        let links = run("ip", &["-o", "link"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
            .collect();
        HostState {
            sysctls,
            mounts,
            cgroups,
            iptables,
            links,
        }
    }

    /// Every difference from `before`, one line each (empty when the host is as it was).
    /// Kernel settings are compared where both snapshots hold them (a setting that moved by
    /// itself during a capture is left out of that capture).
    pub fn changes_since(&self, before: &HostState) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &before.sysctls {
            if let Some(now) = self.sysctls.get(k)
                && now != v
            {
                out.push(format!("sysctl {k}: {v} -> {now}"));
            }
        }
        let set_diff =
            |what: &str, a: &BTreeSet<String>, b: &BTreeSet<String>, out: &mut Vec<String>| {
                for x in b.difference(a) {
                    out.push(format!("{what} added: {x}"));
                }
                for x in a.difference(b) {
                    out.push(format!("{what} removed: {x}"));
                }
            };
        set_diff("mount", &before.mounts, &self.mounts, &mut out);
        set_diff("cgroup", &before.cgroups, &self.cgroups, &mut out);
        set_diff("link", &before.links, &self.links, &mut out);
        if self.iptables != before.iptables {
            out.push(format!(
                "iptables-save differs:\n--- before\n{}\n--- after\n{}",
                before.iptables.join("\n"),
                self.iptables.join("\n")
            ));
        }
        out
    }
}
