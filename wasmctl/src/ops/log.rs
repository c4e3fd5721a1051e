//! One `key=value` (logfmt) line per event on stderr: `ts=... level=... event=... k=v ...`.
//!
//! Events go through `tracing`: [`log`] emits one, and [`init`] installs the subscriber whose
//! logfmt layer writes it. The libraries underneath (kube-runtime, the Kubernetes client,
//! oci-client) log through `tracing` too; their events (warnings and worse, unless `RUST_LOG`
//! says otherwise) come out as lines of the same shape, with `event=` naming the library's
//! module and `message=` its text. Without a subscriber (a library user that installed none),
//! [`log`] writes its line directly.

use super::time::{rfc3339, unix_now};
use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

/// The target of this toolkit's own events.
const TARGET: &str = "wasmctl";

/// A log line's value: bare when it is a simple word, else double-quoted with escapes.
fn value(v: &str) -> String {
    let simple = !v.is_empty()
        && v.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'=' && c != b'\\');
    if simple {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

/// `k=v k=v`, each value quoted as [`value`] says.
fn pairs(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in fields {
        let _ = write!(out, " {k}={}", value(v));
    }
    out
}

/// The whole line.
fn line(level: &str, event: &str, rest: &str) -> String {
    format!(
        "ts={} level={level} event={}{rest}",
        rfc3339(unix_now()),
        value(event)
    )
}

/// Log one event: `level` is `error`, `warn`, `info` or `debug`.
pub fn log(level: &str, event: &str, fields: &[(&str, &str)]) {
    let rest = pairs(fields);
    let subscribed =
        tracing::dispatcher::get_default(|d| !d.is::<tracing::subscriber::NoSubscriber>());
    if !subscribed {
        eprintln!("{}", line(level, event, &rest));
        return;
    }
    match level {
        "error" => tracing::error!(target: TARGET, event, fields = rest.as_str()),
        "warn" => tracing::warn!(target: TARGET, event, fields = rest.as_str()),
        "debug" => tracing::debug!(target: TARGET, event, fields = rest.as_str()),
        _ => tracing::info!(target: TARGET, event, fields = rest.as_str()),
    }
}

/// Install the logfmt subscriber for the process: this toolkit's events at every level, the
/// libraries' at `warn` and above; `RUST_LOG` (e.g. `kube_runtime=debug`) adds to that.
/// Installing twice is harmless.
pub fn init() {
    let mut filter = tracing_subscriber::EnvFilter::new(format!("warn,{TARGET}=debug"));
    if let Ok(more) = std::env::var("RUST_LOG") {
        for directive in more.split(',').filter(|d| !d.trim().is_empty()) {
            match directive.trim().parse() {
                Ok(d) => filter = filter.add_directive(d),
                Err(e) => eprintln!("RUST_LOG: ignoring {directive:?}: {e}"),
            }
        }
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(Logfmt(|line: String| eprintln!("{line}")))
        .try_init();
}

/// The layer that writes each event as one logfmt line (to stderr, through its sink).
struct Logfmt<W>(W);

/// The fields of one event.
#[derive(Default)]
struct Fields {
    event: Option<String>,
    ours: Option<String>,
    message: Option<String>,
    other: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, v: &str) {
        match field.name() {
            "event" => self.event = Some(v.to_string()),
            "fields" => self.ours = Some(v.to_string()),
            "message" => self.message = Some(v.to_string()),
            name => self.other.push((name.to_string(), v.to_string())),
        }
    }

    fn record_debug(&mut self, field: &Field, v: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{v:?}"));
    }
}

impl<S, W> tracing_subscriber::Layer<S> for Logfmt<W>
where
    S: tracing::Subscriber,
    W: Fn(String) + Send + Sync + 'static,
{
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        let level = meta.level().as_str().to_ascii_lowercase();
        let text = match (meta.target() == TARGET, f.event, f.ours) {
            (true, Some(name), ours) => line(&level, &name, ours.as_deref().unwrap_or("")),
            (_, _, _) => {
                let mut rest: Vec<(&str, &str)> = Vec::new();
                if let Some(m) = &f.message {
                    rest.push(("message", m));
                }
                for (k, v) in &f.other {
                    rest.push((k, v));
                }
                line(&level, meta.target(), &pairs(&rest))
            }
        };
        (self.0)(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_values_only_when_needed() {
        assert_eq!(value("abc"), "abc");
        assert_eq!(value("a b"), "\"a b\"");
        assert_eq!(value(""), "\"\"");
        assert_eq!(
            pairs(&[("name", "demo"), ("error", "no such host")]),
            " name=demo error=\"no such host\""
        );
    }

    #[test]
    fn own_and_library_events_are_lines_of_the_same_shape() {
        use std::sync::{Arc, Mutex};
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new(format!(
                "warn,{TARGET}=debug"
            )))
            .with(Logfmt(move |l: String| sink.lock().unwrap().push(l)));
        tracing::subscriber::with_default(subscriber, || {
            log(
                "info",
                "updated",
                &[("name", "demo"), ("error", "no such host")],
            );
            tracing::warn!(target: "kube_runtime::watcher", error = "410 Gone", "watch stream failed");
            tracing::info!(target: "kube_client::client", "below the libraries' level");
        });
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("ts="), "{}", lines[0]);
        assert!(
            lines[0].ends_with(" level=info event=updated name=demo error=\"no such host\""),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(
                " level=warn event=kube_runtime::watcher message=\"watch stream failed\" error=\"410 Gone\""
            ),
            "{}",
            lines[1]
        );
    }
}
