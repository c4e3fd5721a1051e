//! Leader election on a `coordination.k8s.io/v1` `Lease`, as client-go's leaderelection does it:
//! a replica takes the lease when it is free or its holder stopped renewing for
//! `leaseDurationSeconds`, renews it every third of that, and gives it up on shutdown so that
//! another replica takes over at once. Every write carries the `resourceVersion` it read, so two
//! replicas never both believe they won.

use crate::ops::log;
use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use std::sync::Arc;
use std::time::Duration;

/// One replica's view of the lease.
#[derive(Clone)]
pub struct Lease {
    api: Api<LeaseObject>,
    name: Arc<str>,
    identity: Arc<str>,
    duration: Duration,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Lease {
    /// The lease `namespace/name`, held as `identity` for `duration` per renewal.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Lease {
        Lease {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// One attempt: true when this replica holds the lease afterwards.
    async fn try_acquire_or_renew(&self) -> std::result::Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let lease = LeaseObject {
                metadata: ObjectMeta {
                    name: Some(self.name.to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.to_string()),
                    lease_duration_seconds: Some(self.seconds()),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == *self.identity;
        if !mine && !holder.is_empty() {
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            );
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            let expired = match renewed {
                Some(t) => {
                    let age = k8s_openapi::jiff::Timestamp::now().duration_since(t);
                    age.as_secs_f64() > held_for.as_secs_f64()
                }
                None => true,
            };
            if !expired {
                return Ok(false);
            }
        }
        let mut next = spec.clone();
        next.holder_identity = Some(self.identity.to_string());
        next.lease_duration_seconds = Some(self.seconds());
        next.renew_time = Some(now());
        if !mine {
            next.acquire_time = Some(now());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(next);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Wait until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {
                    if !logged {
                        log::log(
                            "info",
                            "waiting-for-lease",
                            &[("lease", &self.name), ("identity", &self.identity)],
                        );
                        logged = true;
                    }
                }
                Err(e) => log::log(
                    "warn",
                    "lease-error",
                    &[("lease", &self.name), ("error", &e.to_string())],
                ),
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// Renew every third of the lease duration; returns (why) once a renewal has failed for as
    /// long as the lease lasts, or another replica took it.
    pub async fn keep(&self) -> String {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => return "another replica holds the lease".into(),
                Err(e) => {
                    if last_ok.elapsed() >= self.duration {
                        return format!("cannot renew the lease: {e}");
                    }
                }
            }
        }
    }

    /// Give the lease up (holder cleared), so that a waiting replica takes it at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(&*self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        if self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .is_ok()
        {
            log::log("info", "lease-released", &[("lease", &self.name)]);
        }
    }
}
