//! Leader election on a `coordination.k8s.io/v1` `Lease`, with client-go's leaderelection
//! semantics:
//!
//! - **Expiry by the observer's clock.** A replica never compares the holder's `renewTime` with
//!   its own wall clock. It notes, on its own monotonic clock, when it last saw the record
//!   change, and takes the lease only once the holder's `leaseDurationSeconds` has passed since
//!   then with no change (or at once when the lease has no holder). A skewed wall clock
//!   therefore changes nothing.
//! - **A renew deadline shorter than the lease.** The holder renews every retry period. It
//!   stops leading when no renewal has succeeded within the renew deadline, counted from when
//!   the last successful renewal was *sent*. Any other replica waits at least the lease duration
//!   from a moment after that request reached the API server, and the renew deadline is
//!   shorter, so the holder has stepped down before anyone else can take over.
//! - **Per-call timeouts.** Every API call is bounded (by the renew deadline while leading), so a
//!   stalled API server cannot keep a replica leading on a call that never returns.
//!
//! Every write carries the `resourceVersion` it read, so two replicas never both win one round.
//! On shutdown the holder clears `holderIdentity`, so that a waiting replica takes over at once.

use crate::ops::log;
use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long a lease lasts, how long its holder may fail to renew, and how often replicas try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long others wait, after the record last changed, before they take the lease
    /// (client-go `LeaseDuration`, 15 s).
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a successful renewal (client-go
    /// `RenewDeadline`, 10 s); shorter than the lease.
    pub renew_deadline: Duration,
    /// How often the holder renews and the others try (client-go `RetryPeriod`, 2 s).
    pub retry_period: Duration,
}

impl Timing {
    /// client-go's proportions (15 s : 10 s : 2 s) for a lease of `lease_duration`.
    pub fn for_lease(lease_duration: Duration) -> Timing {
        Timing {
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
        }
    }

    /// Whether the three fit together as client-go requires: retry < renew deadline < lease.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err(format!(
                "--lease-duration {:?}: at least 1s (the Lease holds whole seconds)",
                self.lease_duration
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "--renew-deadline {:?} must be shorter than --lease-duration {:?}: a holder that \
                 cannot renew must stop leading before another replica may take the lease",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "--retry-period {:?} must be above zero and shorter than --renew-deadline {:?}",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// What a replica last saw of the record, and when by its own monotonic clock.
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// One replica's view of the lease.
#[derive(Clone)]
pub struct Lease {
    api: Api<LeaseObject>,
    name: Arc<str>,
    identity: Arc<str>,
    timing: Timing,
    observed: Arc<Mutex<Option<Observed>>>,
}

/// Why an attempt did not settle who holds the lease.
enum Attempt {
    /// This replica holds it now.
    Held,
    /// Another replica holds it.
    Other,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// `fut`, or an error once `deadline` passes.
async fn bounded<T>(
    deadline: Instant,
    what: &str,
    fut: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(r) => r.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer from the API server in time")),
    }
}

impl Lease {
    /// The lease `namespace/name`, held as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Lease {
        Lease {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
            observed: Arc::new(Mutex::new(None)),
        }
    }

    fn seconds(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// Note the record as seen now when it differs from what was seen before; returns when it
    /// was first seen as it is.
    fn observe(&self, spec: &LeaseSpec) -> Instant {
        let Ok(mut o) = self.observed.lock() else {
            return Instant::now();
        };
        match o.as_ref() {
            Some(seen) if seen.spec == *spec => seen.at,
            _ => {
                let at = Instant::now();
                *o = Some(Observed {
                    spec: spec.clone(),
                    at,
                });
                at
            }
        }
    }

    /// One round, each call bounded by `deadline`.
    async fn try_acquire_or_renew(
        &self,
        deadline: Instant,
    ) -> std::result::Result<Attempt, String> {
        let current = bounded(
            deadline,
            "cannot read the lease",
            self.api.get_opt(&self.name),
        )
        .await?;
        let Some(mut lease) = current else {
            let spec = LeaseSpec {
                holder_identity: Some(self.identity.to_string()),
                lease_duration_seconds: Some(self.seconds()),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            };
            let lease = LeaseObject {
                metadata: ObjectMeta {
                    name: Some(self.name.to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec.clone()),
            };
            return match tokio::time::timeout_at(
                deadline,
                self.api.create(&PostParams::default(), &lease),
            )
            .await
            {
                Ok(Ok(_)) => {
                    self.observe(&spec);
                    Ok(Attempt::Held)
                }
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => Ok(Attempt::Other),
                Ok(Err(e)) => Err(format!("cannot create the lease: {e}")),
                Err(_) => {
                    Err("cannot create the lease: no answer from the API server in time".into())
                }
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen_at = self.observe(&spec);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == *self.identity;
        if !mine && !holder.is_empty() {
            let lasts = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            );
            if seen_at + lasts > Instant::now() {
                return Ok(Attempt::Other);
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
        lease.spec = Some(next.clone());
        match tokio::time::timeout_at(
            deadline,
            self.api.replace(&self.name, &PostParams::default(), &lease),
        )
        .await
        {
            Ok(Ok(_)) => {
                self.observe(&next);
                Ok(Attempt::Held)
            }
            Ok(Err(kube::Error::Api(e))) if e.code == 409 => Ok(Attempt::Other),
            Ok(Err(e)) => Err(format!("cannot write the lease: {e}")),
            Err(_) => Err("cannot write the lease: no answer from the API server in time".into()),
        }
    }

    /// Wait until this replica holds the lease; returns when the winning request was sent (what
    /// [`Lease::keep`] counts its renew deadline from).
    pub async fn acquire(&self) -> Instant {
        let mut logged = false;
        loop {
            let sent = Instant::now();
            match self
                .try_acquire_or_renew(sent + self.timing.renew_deadline)
                .await
            {
                Ok(Attempt::Held) => return sent,
                Ok(Attempt::Other) => {
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
                    &[("lease", &self.name), ("error", &e)],
                ),
            }
            tokio::time::sleep_until(sent + self.timing.retry_period).await;
        }
    }

    /// Renew every retry period; returns (why) as soon as no renewal has succeeded within the
    /// renew deadline of the last one sent (`held_since`: what [`Lease::acquire`] returned), or
    /// another replica holds the lease.
    pub async fn keep(&self, held_since: Instant) -> String {
        let mut last = held_since;
        loop {
            let deadline = last + self.timing.renew_deadline;
            tokio::time::sleep_until(last + self.timing.retry_period).await;
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    return format!(
                        "no renewal succeeded within the renew deadline ({:?})",
                        self.timing.renew_deadline
                    );
                }
                match self.try_acquire_or_renew(deadline).await {
                    Ok(Attempt::Held) => {
                        last = sent;
                        break;
                    }
                    Ok(Attempt::Other) => return "another replica holds the lease".into(),
                    Err(e) => {
                        log::log(
                            "warn",
                            "lease-error",
                            &[("lease", &self.name), ("error", &e)],
                        );
                        let retry = (sent + self.timing.retry_period).min(deadline);
                        tokio::time::sleep_until(retry).await;
                    }
                }
            }
        }
    }

    /// Give the lease up (holder cleared), so that a waiting replica takes it at once; bounded
    /// by the renew deadline.
    pub async fn release(&self) {
        let deadline = Instant::now() + self.timing.renew_deadline;
        let Ok(Some(mut lease)) = bounded(deadline, "", self.api.get_opt(&self.name)).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(&*self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        let pp = PostParams::default();
        let put = self.api.replace(&self.name, &pp, &lease);
        if bounded(deadline, "", put).await.is_ok() {
            log::log("info", "lease-released", &[("lease", &self.name)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_follows_client_go() {
        let t = Timing::for_lease(Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry_period, Duration::from_secs(2));
        assert!(t.check().is_ok());
        let bad = Timing {
            renew_deadline: Duration::from_secs(15),
            ..t
        };
        assert!(bad.check().unwrap_err().contains("--renew-deadline"));
        let bad = Timing {
            retry_period: Duration::from_secs(10),
            ..t
        };
        assert!(bad.check().unwrap_err().contains("--retry-period"));
        assert!(
            Timing::for_lease(Duration::from_millis(500))
                .check()
                .is_err()
        );
    }
}
