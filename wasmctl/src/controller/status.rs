//! What a reconcile leaves behind besides objects: the FilterDeployment's `status` (written only
//! when more than its transition times changed), an Event, a log line, and the metrics.

use super::Ctx;
use super::plan::{self, Applied, Failure, Reason, Status};
use crate::ops::{log, metrics, time};
use crate::render;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::time::Instant;

/// Now, as the status records times.
pub fn now() -> String {
    time::rfc3339(time::unix_now())
}

impl Ctx {
    /// Write the status a reconcile of `obj` leads to (`result`), with an Event and a log line,
    /// when it differs from the one `obj` has.
    pub(super) async fn report(
        &self,
        obj: &DynamicObject,
        previous: Option<&Status>,
        result: &Result<Applied, Failure>,
    ) -> Result<(), Failure> {
        let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
        let (applied, failure) = match result {
            Ok(a) => (Some(a), None),
            Err(f) => (None, Some(f)),
        };
        let generation = obj.meta().generation.unwrap_or(0);
        let status = plan::status(generation, applied, failure, previous, &now());
        if previous.map(Status::without_times) == Some(status.without_times()) {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": render::spec::API_VERSION,
            "kind": render::spec::KIND,
            "status": status,
        });
        self.api(&super::filter_deployments(), obj.namespace().as_deref())
            .patch_status(
                &obj.name_any(),
                &PatchParams::apply(plan::FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|e| {
                Failure::new(
                    Reason::ApplyFailed,
                    format!("cannot write the status of {key}: {e}"),
                )
            })?;
        self.count_write();
        let (type_, reason, note) = match (applied, failure) {
            (Some(a), _) => (EventType::Normal, "Applied", format!("{} serving", a.image)),
            (_, Some(f)) => (EventType::Warning, f.reason.as_str(), f.message.clone()),
            _ => (EventType::Normal, "Applied", String::new()),
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &obj.object_ref(&super::filter_deployments()))
            .await
        {
            log::log(
                "warn",
                "event-failed",
                &[("filterdeployment", &key), ("error", &e.to_string())],
            );
        }
        match (applied, failure) {
            (Some(a), _) => log::log(
                "info",
                "applied",
                &[
                    ("filterdeployment", &key),
                    ("image", &a.image),
                    ("objects", &a.objects.join(",")),
                ],
            ),
            (_, Some(f)) => log::log(
                "warn",
                "failed",
                &[
                    ("filterdeployment", &key),
                    ("reason", f.reason.as_str()),
                    ("message", &f.message),
                ],
            ),
            _ => {}
        }
        Ok(())
    }

    /// Count a finished reconcile that began at `started`.
    pub(super) fn count(&self, started: Instant, failure: Option<&Failure>) {
        let result = if failure.is_some() {
            "error"
        } else {
            "success"
        };
        let labels = metrics::labels(&[("result", result)]);
        self.metrics.reconciles.get_or_create(&labels).inc();
        self.metrics
            .reconcile_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if let Some(f) = failure {
            self.metrics
                .errors
                .get_or_create(&metrics::labels(&[("reason", f.reason.as_str())]))
                .inc();
        }
        self.publish(true, "");
    }
}
