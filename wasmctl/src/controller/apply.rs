//! What the controller writes: objects by server-side apply (only when the live one lacks a
//! field of them), a workload's two sidecar volume annotations, deletions of what a
//! FilterDeployment made, and the agent's image list aggregated over every FilterDeployment.
//! Each write counts in `wasm_controller_writes_total`.

use super::Ctx;
use super::api::{envoy_filters, resource, traffic_extensions, wasm_plugins};
use super::plan::{self, Failure, Reason};
use crate::render::{self, spec::Delivery};
use kube::api::{ApiResource, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::Value;

impl Ctx {
    /// Server-side apply `object` (forced: the controller owns what it writes) unless the live
    /// object already has every field of it; true when it wrote.
    pub(super) async fn apply(&self, object: &Value) -> Result<bool, Failure> {
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
        if let Some(live) = api
            .get_opt(name)
            .await
            .map_err(|e| Failure::new(Reason::ApplyFailed, format!("cannot read {what}: {e}")))?
        {
            let live = serde_json::to_value(&live).unwrap_or(Value::Null);
            if plan::contains(&live, object) {
                return Ok(false);
            }
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

    /// The image list over every FilterDeployment the controller knows, with `this` (being
    /// reconciled: its target image and the image still serving during a rollout) in place of
    /// its status, or without the one being deleted (`this == None`).
    pub(super) fn image_list(
        &self,
        obj: &Value,
        this: Option<(&render::Inputs, &str, Option<&str>)>,
    ) -> Result<Value, Failure> {
        let me = plan::key(obj);
        let mut all = Vec::new();
        if let Some((inputs, target, serving)) = this {
            all.push(plan::ListEntry {
                inputs: inputs.clone(),
                target: target.to_string(),
                serving: serving.map(str::to_string),
            });
        }
        for other in self.filter_deployments() {
            let v = serde_json::to_value(other.as_ref()).unwrap_or(Value::Null);
            if plan::key(&v) == me || other.meta().deletion_timestamp.is_some() {
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
        plan::image_list(&all)
    }

    /// A FilterDeployment is going: its image-list entry and (unless another envoyFilter
    /// FilterDeployment still needs them) the workload's annotations are taken back; its Istio
    /// object is deleted (the garbage collector would too).
    pub(super) async fn cleanup(&self, obj: &Value) -> Result<(), Failure> {
        let list = self.image_list(obj, None)?;
        self.apply_list_if_changed(&list).await?;
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
