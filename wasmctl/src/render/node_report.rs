//! The node report's format: the one object the node agent writes and the controller reads (the
//! image list, [`super::IMAGES_CONFIGMAP`], goes the other way). One ConfigMap per node,
//! `wasm-node-<NODE>` in the agent's namespace, labelled [`REPORT_LABEL`], naming the node
//! ([`NODE_KEY`]) and the sha256 of every module it holds ([`MODULES_KEY`], one per line).

use std::collections::{BTreeMap, BTreeSet};

/// The label every node report carries (value: the node's name).
pub const REPORT_LABEL: &str = "filters.envoy-wasm-toolkit.io/node-report";
/// The key listing the module shas, one per line.
pub const MODULES_KEY: &str = "modules";
/// The key naming the node.
pub const NODE_KEY: &str = "node";

/// The name of `node`'s report.
pub fn report_name(node: &str) -> String {
    format!("wasm-node-{node}")
}

/// The modules a report lists (lines that are not a sha256 are ignored).
pub fn modules_of(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            l.len() == 64
                && l.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        })
        .map(str::to_string)
        .collect()
}

/// A report's data: (node, modules), `None` when it names no node.
pub fn read(data: &BTreeMap<String, String>) -> Option<(String, BTreeSet<String>)> {
    let node = data.get(NODE_KEY)?.clone();
    let modules = modules_of(data.get(MODULES_KEY).map(String::as_str).unwrap_or(""));
    Some((node, modules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_its_node_and_shas_only() {
        let sha = "a".repeat(64);
        let data = BTreeMap::from([
            (NODE_KEY.to_string(), "node-a".to_string()),
            (
                MODULES_KEY.to_string(),
                format!("{sha}\nnot-a-sha\n{}", "B".repeat(64)),
            ),
        ]);
        assert_eq!(
            read(&data),
            Some(("node-a".to_string(), BTreeSet::from([sha])))
        );
        assert_eq!(read(&BTreeMap::new()), None);
    }
}
