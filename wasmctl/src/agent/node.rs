//! The node report: which modules this node holds, published through the Kubernetes API so that
//! the controller switches an EnvoyFilter to a new module only when every node that runs a
//! matching workload has it.
//!
//! One ConfigMap per node, `wasm-node-<NODE>` in the agent's namespace, labelled
//! [`REPORT_LABEL`], with the node's name and the sha256 of every module its listed entries hold
//! in its directory (a module no entry names is waiting out its grace period and is not
//! promised).
//! A ConfigMap rather than a Node annotation: the agent needs no write access to Node objects
//! (which carry scheduling state), only to ConfigMaps of its own namespace, and the controller
//! reads every node's report with one labelled list. The report is owned by its Node, so it
//! goes when the node does.

use crate::ops::log::log;
pub use crate::render::node_report::{
    MODULES_KEY, NODE_KEY, REPORT_LABEL, modules_of, report_name,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Publish `held` (the modules the agent's listed entries hold) as `node`'s report in
/// `namespace`, whenever it changes (checked every `poll`) and at least every `refresh`; errors
/// are logged and retried. Runs until dropped.
pub async fn report(
    held: Arc<Mutex<BTreeSet<String>>>,
    node: &str,
    namespace: &str,
    poll: Duration,
    refresh: Duration,
) {
    let mut client = None;
    let mut last: Option<BTreeSet<String>> = None;
    let mut last_write = tokio::time::Instant::now();
    loop {
        let held: BTreeSet<String> = held.lock().map(|h| h.clone()).unwrap_or_default();
        if last.as_ref() != Some(&held) || last_write.elapsed() >= refresh {
            if client.is_none() {
                match Client::try_default().await {
                    Ok(c) => client = Some(c),
                    Err(e) => log(
                        "warn",
                        "node-report-failed",
                        &[("node", node), ("error", &e.to_string())],
                    ),
                }
            }
            if let Some(c) = &client {
                match publish(c, node, namespace, &held).await {
                    Ok(()) => {
                        if last.as_ref() != Some(&held) {
                            let n = held.len().to_string();
                            log("info", "node-reported", &[("node", node), ("modules", &n)]);
                        }
                        last = Some(held);
                        last_write = tokio::time::Instant::now();
                    }
                    Err(e) => log(
                        "warn",
                        "node-report-failed",
                        &[("node", node), ("error", &e)],
                    ),
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
}

async fn publish(
    client: &Client,
    node: &str,
    namespace: &str,
    held: &BTreeSet<String>,
) -> Result<(), String> {
    let mut metadata = json!({
        "name": report_name(node),
        "namespace": namespace,
        "labels": {REPORT_LABEL: node, "app.kubernetes.io/managed-by": "wasmctl"},
    });
    // Owned by the Node when there is one (a test's "node" may have no Node object).
    let nodes: Api<Node> = Api::all(client.clone());
    if let Ok(Some(n)) = nodes.get_opt(node).await
        && let Some(uid) = n.metadata.uid
    {
        metadata["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]);
    }
    let modules: Vec<&str> = held.iter().map(String::as_str).collect();
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {NODE_KEY: node, MODULES_KEY: modules.join("\n")},
    });
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &report_name(node),
        &PatchParams::apply("wasmctl-agent").force(),
        &Patch::Apply(&cm),
    )
    .await
    .map(drop)
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_lists_module_shas_only() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let text = format!("{a}\n{b}\nnot-a-sha\n\n");
        let m = modules_of(&text);
        assert_eq!(m.len(), 2);
        assert!(m.contains(&a) && m.contains(&b));
        assert_eq!(report_name("node-a"), "wasm-node-node-a");
    }
}
