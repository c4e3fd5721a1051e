//! What a long-running process (the node agent, the controller) needs to be operated, shared by
//! both so that neither reaches into the other:
//!
//! - [`log`]: one logfmt line per event on stderr.
//! - [`metrics`]: Prometheus text exposition.
//! - [`server`]: `/healthz`, `/readyz`, `/metrics` and `/status` on the status address.
//! - [`time`]: Unix time, RFC 3339, durations as flags take them.

pub mod log;
pub mod metrics;
pub mod server;
pub mod time;
