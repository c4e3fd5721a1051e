//! One FilterDeployment, from the object to its status: kube-runtime's finalizer helper adds
//! [`plan::FINALIZER`] before anything is written and runs [`Ctx::cleanup`] on deletion; an
//! apply runs the shared [`crate::pipeline`] and then writes the objects the delivery mode
//! needs ([`deploy`]); [`Ctx::report`] writes the status. Failures retry with exponential
//! backoff ([`error_policy`]).

use super::Ctx;
use super::plan::{self, Applied, Failure, Reason};
use super::rollout::{self, Step};
use super::status::now;
use crate::ops::log;
use crate::pipeline::{self, Fetch, Request};
use crate::render::{self, spec::Delivery};
use kube::api::DynamicObject;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event};
use kube::{Resource, ResourceExt};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A failed reconcile, as the controller's loop sees it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReconcileError(#[from] finalizer::Error<Failure>);

/// Reconcile one FilterDeployment.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let api = ctx.api(&super::filter_deployments(), obj.namespace().as_deref());
    let adding = obj.meta().deletion_timestamp.is_none()
        && !obj.finalizers().iter().any(|f| f == plan::FINALIZER);
    let action = finalizer::finalizer(&api, plan::FINALIZER, obj, |event| async {
        match event {
            Event::Apply(obj) => apply(&ctx, &obj).await,
            Event::Cleanup(obj) => {
                let value = serde_json::to_value(obj.as_ref()).unwrap_or(Value::Null);
                ctx.cleanup(&value).await?;
                log::log(
                    "info",
                    "deleted",
                    &[("filterdeployment", &plan::key(&value))],
                );
                Ok(Action::await_change())
            }
        }
    })
    .await;
    if adding && action.is_ok() {
        // The finalizer was added; the change comes back as a watch event.
        ctx.count_write();
    }
    Ok(action?)
}

/// Retry a failed FilterDeployment after a delay that doubles per consecutive failure.
pub fn error_policy(obj: Arc<DynamicObject>, _e: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key).or_insert(0);
            *n += 1;
            *n
        })
        .unwrap_or(1);
    let delay = ctx
        .cfg
        .backoff_initial
        .saturating_mul(1u32 << n.min(16).saturating_sub(1));
    Action::requeue(delay.min(ctx.cfg.backoff_max))
}

/// Deploy, then report; the next look is at the resync (sooner while a rollout could stall).
async fn apply(ctx: &Ctx, obj: &DynamicObject) -> Result<Action, Failure> {
    let started = Instant::now();
    let value = serde_json::to_value(obj).unwrap_or(Value::Null);
    let key = plan::key(&value);
    let previous = plan::Status::of(&value);
    let result = deploy(ctx, &value, previous.as_ref()).await;
    ctx.report(obj, previous.as_ref(), &result).await?;
    ctx.count(started, result.as_ref().err());
    let applied = result?;
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&key);
    }
    let next = match &applied.rollout {
        Some(r) => ctx
            .cfg
            .resync
            .min(rollout::until_stalled(r, &now(), ctx.cfg.rollout_timeout)),
        None => ctx.cfg.resync,
    };
    Ok(Action::requeue(next))
}

/// The module of the FilterDeployment `obj` through the shared pipeline (credentials of its
/// pull secret, the signature its verification asks for, its parameters), then the objects
/// its delivery mode needs.
async fn deploy(
    ctx: &Ctx,
    obj: &Value,
    previous: Option<&plan::Status>,
) -> Result<Applied, Failure> {
    let inputs = plan::parse(obj)?;
    let source = inputs.deployments[0].clone();
    let d = &source.deployment;
    let ns = d
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut opts = ctx.cfg.registry.clone();
    if let Some(secret) = &d.spec.filter.pull_secret {
        opts.registry_config = Some(ctx.pull_secret(&ns, secret).await?);
    }
    let image = d.spec.filter.image.clone();
    let key = match &d.spec.filter.verification {
        Some(v) => {
            let pem = ctx.verification_key(&ns, &v.key_ref).await?;
            let origin = PathBuf::from(format!(
                "{:?} {ns}/{} key {}",
                v.key_ref.kind, v.key_ref.name, v.key_ref.key
            ));
            Some(
                crate::oci::sign::parse_public_key(&pem, &origin)
                    .map_err(|e| plan::key_failure(e.to_string()))?,
            )
        }
        None => None,
    };
    // One manifest request when the digest is known and its module is at hand; the parameters
    // are run once per (digest, root id, parameters).
    let known =
        plan::last_applied(previous).map(|a| a.rollout.map(|r| r.digest).unwrap_or(a.digest));
    let params = render::parameters_text(d);
    let checked_before = |digest: &str| {
        let c = (
            digest.to_string(),
            d.spec.filter.root_id.clone(),
            params.clone(),
        );
        ctx.checked.lock().map(|s| s.contains(&c)).unwrap_or(false)
    };
    let prepared = pipeline::prepare(&Request {
        image: &image,
        opts: &opts,
        key: key.as_ref(),
        fetch: Some(Fetch {
            known: known.as_deref(),
            runtime_config: false,
            save: Some(ctx.modules.path()),
        }),
        parameters: &[&source],
        module: None,
        checked_before: &checked_before,
    })
    .await
    .map_err(|f| plan::pipeline_failure(&f))?;
    if let Ok(mut c) = ctx.checked.lock() {
        c.insert((
            prepared.digest.clone(),
            d.spec.filter.root_id.clone(),
            params.clone(),
        ));
    }
    let (digest, pinned) = (prepared.digest, prepared.pinned);

    let mut objects = Vec::new();
    // A switch of delivery mode leaves the other kind's object behind: remove it (when the
    // status names one, or names nothing yet).
    let (this_kind, others) = super::api::kinds(d.spec.delivery);
    let wns = render::workload_namespace(d).to_string();
    let written = previous.and_then(|p| p.objects.as_ref());
    for other in &others {
        let named = written.is_none_or(|o| {
            o.iter().any(|w| {
                w.strip_prefix(other.kind.as_str())
                    .is_some_and(|r| r.starts_with(' '))
            })
        });
        if named {
            ctx.delete_owned(other, &wns, &d.metadata.name, obj).await?;
        }
    }
    let me = plan::key(obj);

    if d.spec.delivery != Delivery::EnvoyFilter {
        // Each sidecar's istio-agent pulls the image itself: nothing to wait for.
        let filter = plan::filter_object(&inputs, &image, &pinned, None, obj)?;
        ctx.apply(&filter).await?;
        objects.push(format!("{} {}", this_kind.kind, plan::key(&filter)));
        ctx.sync_list(&me, None, false).await?;
        return Ok(Applied {
            digest,
            image: pinned,
            objects,
            rollout: None,
        });
    }

    if let Some(w) = &d.spec.workload.name {
        let kind = d.spec.workload.kind.as_str();
        ctx.set_annotations(kind, &wns, w, true).await?;
        objects.push(format!("{kind} {wns}/{w} (annotations)"));
    }
    let file = pipeline::module_file(ctx.modules.path(), &digest);
    let bytes =
        std::fs::read(&file).map_err(|e| Failure::new(Reason::RegistryError, e.to_string()))?;
    let sha = crate::oci::layout::sha256_hex(&bytes);
    if let Ok(mut shas) = ctx.shas.lock() {
        shas.insert(digest.clone(), sha.clone());
    }
    let live = ctx.live(&this_kind, &wns, &d.metadata.name).await?;
    let nodes = ctx.matching_nodes(&wns, d).await?;
    let reports = ctx.node_reports(&nodes).await?;
    let now = now();
    let step = rollout::step(&rollout::Seen {
        pinned: &pinned,
        digest: &digest,
        sha: &sha,
        serving: live.as_ref().and_then(plan::serving),
        nodes: &nodes,
        reports: &reports,
        previous: plan::last_applied(previous).and_then(|a| a.rollout),
        now: &now,
        timeout: ctx.cfg.rollout_timeout,
    });
    let pending = plan::pending_nodes(&sha, &nodes, &reports);
    if !pending.is_empty() {
        let all: Vec<&str> = nodes.iter().map(String::as_str).collect();
        log::log(
            "info",
            "rollout-waiting",
            &[
                ("filterdeployment", &plan::key(obj)),
                ("module", &sha),
                ("nodes", &all.join(",")),
                ("pending", &pending.join(",")),
            ],
        );
    }
    let entry = plan::ListEntry {
        inputs: inputs.clone(),
        target: pinned.clone(),
        serving: step.keep().map(str::to_string),
    };
    ctx.sync_list(&me, Some(entry), true).await?;
    objects.push(format!(
        "ConfigMap {}/{}",
        render::AGENT_NAMESPACE,
        render::IMAGES_CONFIGMAP
    ));
    match step {
        Step::Switch => {
            let filter = plan::filter_object(&inputs, &image, &pinned, Some(&sha), obj)?;
            ctx.apply_over(&filter, Some(live.as_ref())).await?;
            objects.insert(0, format!("EnvoyFilter {}", plan::key(&filter)));
            Ok(Applied {
                digest,
                image: pinned,
                objects,
                rollout: None,
            })
        }
        Step::Stalled { failure, .. } => Err(failure),
        Step::Wait { keep, rollout } => {
            let (image, digest) = match &keep {
                Some(p) => (p.clone(), p.rsplit('@').next().unwrap_or("").to_string()),
                None => (String::new(), String::new()),
            };
            if keep.is_some() {
                objects.insert(
                    0,
                    format!("EnvoyFilter {wns}/{} (unchanged)", d.metadata.name),
                );
            }
            Ok(Applied {
                digest,
                image,
                objects,
                rollout: Some(rollout),
            })
        }
    }
}
