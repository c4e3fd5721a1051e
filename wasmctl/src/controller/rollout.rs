//! When an EnvoyFilter may move to a new module. It names a module file on the node, so it
//! switches only when every node running a matching workload holds that file (the agents' node
//! reports say which modules each node holds); until then it keeps the old one, the image list
//! keeps both on every node, and the status says which nodes are pending. A rollout that waits
//! longer than `--rollout-timeout` is `Ready=False` with reason `RolloutStalled` (the old module
//! still serves).
//!
//! A rollout moves on when something it waits for changes: the controller watches node reports
//! and Pods (watch-backed caches it also reads them from), [`waiting`] names the
//! FilterDeployments a change concerns, and [`Wakes`] keeps a burst of node reports from
//! becoming a reconcile (and a status write) per report.

use super::plan::{self, Failure, Reason, Rollout};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::reflector::ObjectRef;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// What a rollout sees.
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    /// The target: pinned image, manifest digest, module sha256.
    pub pinned: &'a str,
    /// See [`Seen::pinned`].
    pub digest: &'a str,
    /// See [`Seen::pinned`].
    pub sha: &'a str,
    /// What the live EnvoyFilter serves: (pinned image, module sha256).
    pub serving: Option<(String, String)>,
    /// Nodes running a matching workload.
    pub nodes: &'a BTreeSet<String>,
    /// Each node's report: the module shas it holds.
    pub reports: &'a BTreeMap<String, BTreeSet<String>>,
    /// The rollout the status recorded before, if any.
    pub previous: Option<Rollout>,
    /// Now (RFC 3339), and how long a rollout may wait.
    pub now: &'a str,
    /// See [`Seen::now`].
    pub timeout: Duration,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Point the EnvoyFilter at the target (every node holds it, or it serves already).
    Switch,
    /// Keep serving `keep` (the pinned image serving, if any) while `rollout` waits.
    Wait {
        /// The pinned image still serving.
        keep: Option<String>,
        /// The target and the nodes it waits for.
        rollout: Rollout,
    },
    /// Waited too long: `keep` keeps serving, the status says which nodes lack the module.
    Stalled {
        /// The pinned image still serving.
        keep: Option<String>,
        /// Why.
        failure: Failure,
    },
}

impl Step {
    /// The image the list keeps beside the target.
    pub fn keep(&self) -> Option<&str> {
        match self {
            Step::Switch => None,
            Step::Wait { keep, .. } | Step::Stalled { keep, .. } => keep.as_deref(),
        }
    }
}

/// Seconds from `since` to `now` (both RFC 3339); 0 when either cannot be read.
fn seconds_between(since: &str, now: &str) -> f64 {
    match (
        since.parse::<k8s_openapi::jiff::Timestamp>(),
        now.parse::<k8s_openapi::jiff::Timestamp>(),
    ) {
        (Ok(s), Ok(n)) => n.duration_since(s).as_secs_f64(),
        _ => 0.0,
    }
}

/// The next step of a rollout.
pub fn step(seen: &Seen<'_>) -> Step {
    let pending = plan::pending_nodes(seen.sha, seen.nodes, seen.reports);
    let serves_target = seen.serving.as_ref().is_some_and(|(_, s)| s == seen.sha);
    if pending.is_empty() || serves_target {
        return Step::Switch;
    }
    let keep = seen.serving.as_ref().map(|(p, _)| p.clone());
    let since = seen
        .previous
        .as_ref()
        .filter(|r| r.digest == seen.digest)
        .map(|r| r.since.clone())
        .unwrap_or_else(|| seen.now.to_string());
    if seconds_between(&since, seen.now) > seen.timeout.as_secs_f64() {
        let serving_text = keep.clone().unwrap_or_else(|| "nothing".into());
        return Step::Stalled {
            keep,
            failure: Failure::new(
                Reason::RolloutStalled,
                format!(
                    "nodes {} do not hold {} (module sha256 {}) after {:?}; {serving_text} keeps serving",
                    pending.join(", "),
                    seen.pinned,
                    seen.sha,
                    seen.timeout
                ),
            ),
        };
    }
    Step::Wait {
        keep,
        rollout: Rollout {
            image: seen.pinned.to_string(),
            digest: seen.digest.to_string(),
            pending,
            since,
        },
    }
}

/// How long until `rollout` stalls (at least a second), to look again then if nothing else
/// moves it.
pub fn until_stalled(rollout: &Rollout, now: &str, timeout: Duration) -> Duration {
    let left = timeout.as_secs_f64() - seconds_between(&rollout.since, now);
    Duration::from_secs_f64(left.max(1.0))
}

/// The nodes running `pods` (those not finished or going).
pub fn nodes_running<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeSet<String> {
    pods.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect()
}

/// What changed, as a rollout sees it.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A node's report (the node's name).
    Report(&'a str),
    /// A Pod (its namespace and labels).
    Pod(&'a str, &'a BTreeMap<String, String>),
}

/// The rollout a FilterDeployment's status records: (target digest, pending nodes); `None` when
/// none is under way. Read from the object as the watch delivered it (no parse, no copy): a
/// change is matched against every FilterDeployment, so this runs once per FilterDeployment
/// per node report and per Pod event.
pub fn recorded(o: &DynamicObject) -> Option<(&str, Vec<&str>)> {
    let r = o.data.get("status")?.get("rollout")?;
    let digest = r.get("digest")?.as_str()?;
    let pending = r
        .get("pendingNodes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Some((digest, pending))
}

/// The FilterDeployments of `all` that a change concerns: of those mid-rollout, for a node
/// report the ones waiting for that node, for a Pod those whose workload selects it.
pub fn waiting(all: &[Arc<DynamicObject>], change: Change<'_>) -> Vec<ObjectRef<DynamicObject>> {
    all.iter()
        .filter(|o| {
            let Some((_, pending)) = recorded(o) else {
                return false;
            };
            match change {
                Change::Report(node) => pending.contains(&node),
                Change::Pod(namespace, labels) => {
                    let v = serde_json::to_value(o.as_ref()).unwrap_or(Value::Null);
                    plan::parse(&v).is_ok_and(|i| {
                        let d = &i.deployments[0].deployment;
                        crate::render::workload_namespace(d) == namespace
                            && d.spec
                                .workload
                                .labels
                                .iter()
                                .all(|(k, v)| labels.get(k) == Some(v))
                    })
                }
            }
        })
        .map(|o| {
            ObjectRef::new_with(&o.name_any(), super::filter_deployments())
                .within(&o.namespace().unwrap_or_default())
        })
        .collect()
}

/// Which node reports wake a FilterDeployment mid-rollout. Every agent reports within moments
/// of the others when a new module is listed, so a rollout over a thousand nodes would be a
/// thousand reconciles (each a status write): instead a report wakes it at once when it
/// completes the rollout (every node the status names as pending now reports the target), and
/// otherwise at most once per `interval`, so the status's pending nodes follow the progress
/// without a write per report.
pub struct Wakes {
    interval: std::time::Duration,
    last: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Wakes {
    /// Progress wakes at most once per `interval` per FilterDeployment.
    pub fn new(interval: std::time::Duration) -> Wakes {
        Wakes {
            interval,
            last: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Whether to wake `key` now: always when `complete`, else when its last progress wake is
    /// `interval` old (or there was none).
    pub fn wake(&self, key: &str, complete: bool, now: std::time::Instant) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return true;
        };
        if complete {
            last.remove(key);
            return true;
        }
        match last.get(key) {
            Some(t) if now.duration_since(*t) < self.interval => false,
            _ => {
                last.insert(key.to_string(), now);
                true
            }
        }
    }
}

/// The FilterDeployments a node report wakes (see [`Wakes`]): `holds(node, digest)` says
/// whether a node's report holds the module of a manifest digest (`None`: not known here).
pub fn woken_by_report(
    all: &[Arc<DynamicObject>],
    node: &str,
    holds: impl Fn(&str, &str) -> Option<bool>,
    wakes: &Wakes,
    now: std::time::Instant,
) -> Vec<ObjectRef<DynamicObject>> {
    let mut out = Vec::new();
    for o in all {
        let Some((digest, pending)) = recorded(o) else {
            continue;
        };
        if !pending.contains(&node) {
            continue;
        }
        let complete = pending.iter().all(|n| holds(n, digest).unwrap_or(false));
        let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
        if wakes.wake(&key, complete, now) {
            out.push(
                ObjectRef::new_with(&o.name_any(), super::filter_deployments())
                    .within(&o.namespace().unwrap_or_default()),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn seen<'a>(
        nodes: &'a BTreeSet<String>,
        reports: &'a BTreeMap<String, BTreeSet<String>>,
        now: &'a str,
    ) -> Seen<'a> {
        Seen {
            pinned: "r/f@sha256:bb",
            digest: "sha256:bb",
            sha: "b0",
            serving: Some(("r/f@sha256:aa".into(), "a0".into())),
            nodes,
            reports,
            previous: None,
            now,
            timeout: Duration::from_secs(300),
        }
    }

    fn fd(name: &str, app: &str, rolling: bool) -> Arc<DynamicObject> {
        let mut v = serde_json::json!({
            "apiVersion": "filters.envoy-wasm-toolkit.io/v1alpha1",
            "kind": "FilterDeployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "workload": {"kind": "Deployment", "name": app, "labels": {"app": app}},
                "filter": {"image": "r.example/f:v1", "rootId": "my_root_id"},
                "delivery": "envoyFilter",
            },
            "status": {"observedGeneration": 1, "conditions": []},
        });
        if rolling {
            v["status"]["rollout"] = serde_json::json!({
                "image": "r.example/f@sha256:bb", "digest": "sha256:bb",
                "pendingNodes": ["n2"], "since": "2026-01-01T00:00:00Z",
            });
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn a_node_report_wakes_the_rollouts_waiting_for_its_node_and_a_pod_only_its_workloads() {
        let all = [
            fd("details", "details", true),
            fd("ratings", "ratings", true),
            fd("reviews", "reviews", false),
        ];
        let names = |refs: Vec<ObjectRef<DynamicObject>>| -> Vec<String> {
            refs.into_iter().map(|r| r.name).collect()
        };
        assert_eq!(
            names(waiting(&all, Change::Report("n2"))),
            ["details", "ratings"]
        );
        assert!(
            waiting(&all, Change::Report("n1")).is_empty(),
            "no rollout waits for n1"
        );
        let labels = BTreeMap::from([("app".to_string(), "details".to_string())]);
        assert_eq!(
            names(waiting(&all, Change::Pod("default", &labels))),
            ["details"]
        );
        assert!(waiting(&all, Change::Pod("other", &labels)).is_empty());
        let reviews = BTreeMap::from([("app".to_string(), "reviews".to_string())]);
        assert!(
            waiting(&all, Change::Pod("default", &reviews)).is_empty(),
            "no rollout under way: nothing to wake"
        );
    }

    #[test]
    fn reports_wake_a_rollout_when_it_completes_and_otherwise_at_most_once_per_interval() {
        let all = [fd("details", "details", true)];
        let wakes = Wakes::new(Duration::from_secs(2));
        let t0 = std::time::Instant::now();
        let n2_lacks = |_: &str, _: &str| Some(false);
        let n2_holds = |n: &str, d: &str| Some(n == "n2" && d == "sha256:bb");
        // Progress: the first report wakes it, the next ones within the interval do not.
        assert_eq!(woken_by_report(&all, "n2", n2_lacks, &wakes, t0).len(), 1);
        let soon = t0 + Duration::from_millis(500);
        assert!(woken_by_report(&all, "n2", n2_lacks, &wakes, soon).is_empty());
        assert!(
            woken_by_report(&all, "n1", n2_holds, &wakes, soon).is_empty(),
            "not waiting for n1"
        );
        // The report that completes it wakes it at once.
        assert_eq!(woken_by_report(&all, "n2", n2_holds, &wakes, soon).len(), 1);
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            woken_by_report(&all, "n2", n2_lacks, &wakes, later).len(),
            1
        );
        // An unknown module (not pulled by this replica yet) cannot complete it.
        let unknown = |_: &str, _: &str| None;
        assert!(woken_by_report(&all, "n2", unknown, &wakes, later).is_empty());
    }

    #[test]
    fn switches_once_every_node_holds_the_module() {
        let nodes = set(&["n1", "n2"]);
        let both = BTreeMap::from([
            ("n1".to_string(), set(&["a0", "b0"])),
            ("n2".to_string(), set(&["b0"])),
        ]);
        assert_eq!(
            step(&seen(&nodes, &both, "2026-01-01T00:00:00Z")),
            Step::Switch
        );
        let no_nodes = BTreeSet::new();
        assert_eq!(
            step(&seen(&no_nodes, &BTreeMap::new(), "2026-01-01T00:00:00Z")),
            Step::Switch,
            "no node runs the workload: nothing to wait for"
        );
    }

    #[test]
    fn waits_keeping_the_served_version_then_stalls() {
        let nodes = set(&["n1", "n2"]);
        let one = BTreeMap::from([("n1".to_string(), set(&["b0"]))]);
        let t0 = "2026-01-01T00:00:00Z";
        let Step::Wait { keep, rollout } = step(&seen(&nodes, &one, t0)) else {
            panic!("not waiting")
        };
        assert_eq!(keep.as_deref(), Some("r/f@sha256:aa"));
        assert_eq!(rollout.pending, ["n2"]);
        assert_eq!(rollout.since, t0);
        assert_eq!(
            until_stalled(&rollout, "2026-01-01T00:04:00Z", Duration::from_secs(300)),
            Duration::from_secs(60)
        );

        let mut later = seen(&nodes, &one, "2026-01-01T00:05:01Z");
        later.previous = Some(rollout.clone());
        let s = step(&later);
        let Step::Stalled { keep, failure } = &s else {
            panic!("not stalled: {s:?}")
        };
        assert_eq!(keep.as_deref(), Some("r/f@sha256:aa"));
        assert_eq!(failure.reason, Reason::RolloutStalled);
        assert!(
            failure
                .message
                .contains("nodes n2 do not hold r/f@sha256:bb"),
            "{failure}"
        );
        assert!(
            failure.message.contains("r/f@sha256:aa keeps serving"),
            "{failure}"
        );

        // A new target starts its own clock.
        let mut other = later.clone();
        other.digest = "sha256:cc";
        assert!(matches!(step(&other), Step::Wait { .. }));
    }
}
