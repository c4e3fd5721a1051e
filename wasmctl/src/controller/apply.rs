//! What the controller writes: objects by server-side apply (only when the live one lacks a
//! field of them), a workload's two sidecar volume annotations, deletions of what a
//! FilterDeployment made, and the agent's image list aggregated over every FilterDeployment
//! (its writes batched, [`ListWriter`]).
//! Each write counts in `wasm_controller_writes_total`.

use super::Ctx;
use super::api::{envoy_filters, resource, traffic_extensions, wasm_plugins};
use super::plan::{self, Failure, Reason};
use crate::render::{self, spec::Delivery};
use kube::api::{ApiResource, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The agent's image list as this replica writes it. Each reconcile sets its
/// FilterDeployment's entry here (ahead of the status the watch will show), then waits for a
/// write of the list that began after that: one write serves every reconcile that asked while
/// the previous one ran (a group commit), so a hundred FilterDeployments reconciled at once
/// make a few writes of the list, not a hundred, and no write leaves out an entry another
/// reconcile has just decided.
#[derive(Default)]
pub struct ListWriter {
    /// FilterDeployment (`namespace/name`) -> its entry (`None`: it has none).
    fresh: Mutex<HashMap<String, Option<plan::ListEntry>>>,
    /// Requests made so far.
    requested: AtomicU64,
    /// Whether a request since the last write wants the list created if it is missing.
    create: AtomicBool,
    /// The last request a completed write covered; held while writing.
    done: tokio::sync::Mutex<u64>,
    /// The list last rendered, with a fingerprint of what it was rendered from: at rest every
    /// resync checks the list, and rendering it (every FilterDeployment parsed) would make
    /// that check cost the number of FilterDeployments each time.
    rendered: Mutex<Option<(u64, Value)>>,
}

impl Ctx {
    /// Server-side apply `object` (forced: the controller owns what it writes) unless the live
    /// object already has every field of it; true when it wrote.
    pub(super) async fn apply(&self, object: &Value) -> Result<bool, Failure> {
        self.apply_over(object, None).await
    }

    /// [`Ctx::apply`] over `live`, the object as this reconcile read it a moment ago
    /// (`Some(None)`: it does not exist), instead of reading it again.
    pub(super) async fn apply_over(
        &self,
        object: &Value,
        live: Option<Option<&Value>>,
    ) -> Result<bool, Failure> {
        let object = &plan::with_digest(object);
        let ar = resource(
            object["apiVersion"].as_str().unwrap_or(""),
            object["kind"].as_str().unwrap_or(""),
        );
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let api = self.api(&ar, ns);
        let what = format!("{} {}", ar.kind, plan::key(object));
        let live = match live {
            Some(l) => l.cloned(),
            None => api
                .get_opt(name)
                .await
                .map_err(|e| Failure::new(Reason::ApplyFailed, format!("cannot read {what}: {e}")))?
                .map(|l| serde_json::to_value(&l).unwrap_or(Value::Null)),
        };
        if live.is_some_and(|l| plan::contains(&l, object)) {
            return Ok(false);
        }
        let pp = PatchParams::apply(plan::FIELD_MANAGER).force();
        api.patch(name, &pp, &Patch::Apply(object))
            .await
            .map_err(|e| Failure::new(Reason::ApplyFailed, format!("cannot apply {what}: {e}")))?;
        self.count_write();
        Ok(true)
    }

    /// Apply the image list when the live one differs from `list` (a list that cannot be read
    /// is left alone: the next reconcile that needs it writes it).
    pub(super) async fn apply_list_if_changed(&self, list: &Value) -> Result<(), Failure> {
        let api = self.api(&resource("v1", "ConfigMap"), Some(render::AGENT_NAMESPACE));
        let needed = match api.get_opt(render::IMAGES_CONFIGMAP).await {
            Ok(Some(live)) => !plan::contains(
                &serde_json::to_value(&live).unwrap_or(Value::Null),
                &plan::with_digest(list),
            ),
            _ => false,
        };
        if needed {
            self.apply(list).await?;
        }
        Ok(())
    }

    /// Set (or, with `add == false`, take back) the two sidecar volume annotations of a
    /// workload.
    pub(super) async fn set_annotations(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        add: bool,
    ) -> Result<(), Failure> {
        let ar = resource("apps/v1", kind);
        let live = self.live(&ar, namespace, name).await?;
        let Some(apply) = plan::workload_annotations(live.as_ref(), kind, namespace, name, add)?
        else {
            return Ok(());
        };
        self.api(&ar, Some(namespace))
            .patch(
                name,
                &PatchParams::apply(plan::FIELD_MANAGER).force(),
                &Patch::Apply(&apply),
            )
            .await
            .map_err(|e| {
                Failure::new(
                    Reason::ApplyFailed,
                    format!("cannot set the annotations of {kind} {namespace}/{name}: {e}"),
                )
            })?;
        self.count_write();
        Ok(())
    }

    /// Delete the `ar` object `namespace/name` if this FilterDeployment made it: owned by it,
    /// or (in another namespace, where owner references cannot point) labelled with its name by
    /// us.
    pub(super) async fn delete_owned(
        &self,
        ar: &ApiResource,
        namespace: &str,
        name: &str,
        owner: &Value,
    ) -> Result<(), Failure> {
        let api = self.api(ar, Some(namespace));
        let Ok(Some(o)) = api.get_opt(name).await else {
            return Ok(());
        };
        let uid = owner.pointer("/metadata/uid").and_then(Value::as_str);
        let labels = o.labels();
        let ours = if o.owner_references().is_empty() {
            labels.get(render::FROM_LABEL).map(String::as_str) == Some(name)
                && labels.get(render::MANAGED_BY).map(String::as_str) == Some("wasmctl")
        } else {
            o.owner_references()
                .iter()
                .any(|r| Some(r.uid.as_str()) == uid)
        };
        if ours {
            api.delete(name, &DeleteParams::default())
                .await
                .map_err(|e| {
                    Failure::new(
                        Reason::ApplyFailed,
                        format!("cannot delete {} {namespace}/{name}: {e}", ar.kind),
                    )
                })?;
            self.count_write();
        }
        Ok(())
    }

    /// Set the image-list entry of the FilterDeployment `key` (`None`: it has none), then make
    /// sure the live list carries every entry (creating it when `create`, else only updating
    /// one that exists). Writes are batched (see [`ListWriter`]): this returns once a write (or
    /// a check) that began after the entry was set has completed.
    pub(super) async fn sync_list(
        &self,
        key: &str,
        entry: Option<plan::ListEntry>,
        create: bool,
    ) -> Result<(), Failure> {
        let w = &self.list;
        if let Ok(mut f) = w.fresh.lock() {
            f.insert(key.to_string(), entry);
        }
        if create {
            w.create.store(true, Ordering::SeqCst);
        }
        let ticket = w.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = w.done.lock().await;
        if *done >= ticket {
            return Ok(());
        }
        // Every request made so far has its entry in place: this write covers them all.
        let covered = w.requested.load(Ordering::SeqCst);
        let create = w.create.swap(false, Ordering::SeqCst);
        let list = self.image_list()?;
        let written = if create {
            self.apply(&list)
                .await
                .map_err(plan::agent_namespace)
                .map(drop)
        } else {
            self.apply_list_if_changed(&list).await
        };
        if written.is_err() && create {
            // Whoever retries next creates it.
            w.create.store(true, Ordering::SeqCst);
        }
        written?;
        *done = covered;
        Ok(())
    }

    /// The image list over every FilterDeployment the controller knows: for each, the entry
    /// this replica's last reconcile of it decided, else what its status records (a
    /// FilterDeployment being deleted has none).
    pub(super) fn image_list(&self) -> Result<Value, Failure> {
        use std::hash::{Hash, Hasher};
        let fresh = self
            .list
            .fresh
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        let fds = self.filter_deployments();
        // What the list is rendered from: each FilterDeployment's version and the entries
        // decided here.
        let mut seen: Vec<(String, String, bool)> = fds
            .iter()
            .map(|o| {
                (
                    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
                    o.resource_version().unwrap_or_default(),
                    o.meta().deletion_timestamp.is_some(),
                )
            })
            .collect();
        seen.sort();
        let mut decided: Vec<(&String, String)> =
            fresh.iter().map(|(k, e)| (k, format!("{e:?}"))).collect();
        decided.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (seen, decided).hash(&mut h);
        let fingerprint = h.finish();
        if let Ok(r) = self.list.rendered.lock()
            && let Some((f, list)) = r.as_ref()
            && *f == fingerprint
        {
            return Ok(list.clone());
        }
        let mut all = Vec::new();
        for other in fds {
            let v = serde_json::to_value(other.as_ref()).unwrap_or(Value::Null);
            if let Some(entry) = fresh.get(&plan::key(&v)) {
                all.extend(entry.clone());
                continue;
            }
            if other.meta().deletion_timestamp.is_some() {
                continue;
            }
            let status = plan::Status::of(&v);
            let (Ok(inputs), Some(applied)) =
                (plan::parse(&v), plan::last_applied(status.as_ref()))
            else {
                continue;
            };
            // Mid-rollout: the target and the version still served.
            let (target, serving) = match applied.rollout {
                Some(r) => (r.image, Some(applied.image).filter(|i| !i.is_empty())),
                None => (applied.image, None),
            };
            all.push(plan::ListEntry {
                inputs,
                target,
                serving,
            });
        }
        all.sort_by(|a, b| {
            a.inputs.deployments[0]
                .origin
                .cmp(&b.inputs.deployments[0].origin)
        });
        let list = plan::image_list(&all)?;
        if let Ok(mut r) = self.list.rendered.lock() {
            *r = Some((fingerprint, list.clone()));
        }
        Ok(list)
    }

    /// A FilterDeployment is going: its image-list entry and (unless another envoyFilter
    /// FilterDeployment still needs them) the workload's annotations are taken back; its Istio
    /// object is deleted (the garbage collector would too).
    pub(super) async fn cleanup(&self, obj: &Value) -> Result<(), Failure> {
        self.sync_list(&plan::key(obj), None, false).await?;
        let Ok(inputs) = plan::parse(obj) else {
            return Ok(());
        };
        let d = &inputs.deployments[0].deployment;
        let name = d.metadata.name.clone();
        let wns = render::workload_namespace(d).to_string();
        for ar in [envoy_filters(), wasm_plugins(), traffic_extensions()] {
            self.delete_owned(&ar, &wns, &name, obj).await?;
        }
        if d.spec.delivery != Delivery::EnvoyFilter {
            return Ok(());
        }
        let Some(w) = &d.spec.workload.name else {
            return Ok(());
        };
        let kind = d.spec.workload.kind.as_str();
        let me = plan::key(obj);
        let still_needed = self.filter_deployments().iter().any(|o| {
            let v = serde_json::to_value(o.as_ref()).unwrap_or(Value::Null);
            plan::key(&v) != me
                && o.meta().deletion_timestamp.is_none()
                && plan::parse(&v).is_ok_and(|i| {
                    let od = &i.deployments[0].deployment;
                    od.spec.delivery == Delivery::EnvoyFilter
                        && od.spec.workload.kind.as_str() == kind
                        && od.spec.workload.name.as_deref() == Some(w.as_str())
                        && render::workload_namespace(od) == wns
                })
        });
        if !still_needed {
            self.set_annotations(kind, &wns, w, false).await?;
        }
        Ok(())
    }
}
