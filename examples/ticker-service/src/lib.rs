//! An example bootstrap service: a module Envoy runs as a `WasmService`
//! (`envoy.bootstrap.wasm`, `singleton: true`) with a root context only, no HTTP stream. It is
//! what `wasmctl run --service --advance` is for, and the harness and Envoy must agree on every
//! line it logs.
//!
//! Plugin configuration: space-separated `key=value` pairs, all optional:
//! `period=MS` (tick period, default 1000), `ticks=N` (stop ticking after N, default 0: never),
//! `cluster=NAME` (where every second tick reports, default `collector`).
//!
//! - `proxy_on_vm_start` logs the VM configuration;
//! - `proxy_on_configure` logs what it read, defines the counter `ticker.ticks` and the gauge
//!   `ticker.last_tick`, registers the queue `ticker.events` and sets the tick period;
//! - each tick counts, sets the gauge, stores the count in shared data `ticker.last` (with CAS),
//!   enqueues `tick N` on its own queue and logs `tick N`; every second tick POSTs `ticks=N` to
//!   `/report` on the cluster; the last tick sets the period to 0 (no more ticks);
//! - `proxy_on_queue_ready` logs what it dequeued; an HTTP call's answer logs its status and
//!   body, a failed call logs that it failed.

#[cfg(target_family = "wasm")]
mod glue {
    use log::{info, warn};
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, RootContext};
    use proxy_wasm::types::{LogLevel, MetricType};
    use std::time::Duration;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Trace);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Ticker::default()) });
    }}

    #[derive(Default)]
    struct Ticker {
        period_ms: u64,
        stop_after: u64,
        cluster: String,
        ticks: u64,
        counter: u32,
        gauge: u32,
        queue: u32,
    }

    impl Ticker {
        fn read(&mut self, config: &str) -> Result<(), String> {
            self.period_ms = 1000;
            self.stop_after = 0;
            self.cluster = "collector".into();
            for pair in config.split_whitespace() {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("{pair:?} is not key=value"))?;
                let number = || {
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("{key}: {value:?} is not a number"))
                };
                match key {
                    "period" => self.period_ms = number()?,
                    "ticks" => self.stop_after = number()?,
                    "cluster" => self.cluster = value.to_string(),
                    other => return Err(format!("unknown key {other:?}")),
                }
            }
            Ok(())
        }
    }

    impl Context for Ticker {
        fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
            match self.get_http_call_response_header(":status") {
                Some(status) => {
                    let body = self
                        .get_http_call_response_body(0, body_size)
                        .unwrap_or_default();
                    info!(
                        "report answered: {status} {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                None => warn!("report failed: no answer"),
            }
        }
    }

    impl RootContext for Ticker {
        fn on_vm_start(&mut self, _: usize) -> bool {
            let vm = self.get_vm_configuration().unwrap_or_default();
            info!("vm start: {:?}", String::from_utf8_lossy(&vm));
            true
        }

        fn on_configure(&mut self, _: usize) -> bool {
            let config = self.get_plugin_configuration().unwrap_or_default();
            if let Err(e) = self.read(&String::from_utf8_lossy(&config)) {
                warn!("configuration rejected: {e}");
                return false;
            }
            info!(
                "configured: every {} ms, {} ticks, reports to {}",
                self.period_ms, self.stop_after, self.cluster
            );
            self.counter =
                hostcalls::define_metric(MetricType::Counter, "ticker.ticks").unwrap_or(0);
            self.gauge =
                hostcalls::define_metric(MetricType::Gauge, "ticker.last_tick").unwrap_or(0);
            self.queue = hostcalls::register_shared_queue("ticker.events").unwrap_or(0);
            self.set_tick_period(Duration::from_millis(self.period_ms));
            true
        }

        fn on_tick(&mut self) {
            self.ticks += 1;
            let n = self.ticks;
            let _ = hostcalls::increment_metric(self.counter, 1);
            let _ = hostcalls::record_metric(self.gauge, n);
            let (_, cas) = self.get_shared_data("ticker.last");
            if let Err(e) = self.set_shared_data("ticker.last", Some(n.to_string().as_bytes()), cas)
            {
                warn!("shared data: {e:?}");
            }
            let _ =
                hostcalls::enqueue_shared_queue(self.queue, Some(format!("tick {n}").as_bytes()));
            info!("tick {n}");
            if n % 2 == 0 {
                let body = format!("ticks={n}");
                let sent = self.dispatch_http_call(
                    &self.cluster,
                    vec![
                        (":method", "POST"),
                        (":path", "/report"),
                        (":authority", "collector"),
                    ],
                    Some(body.as_bytes()),
                    vec![],
                    Duration::from_secs(5),
                );
                if let Err(e) = sent {
                    warn!("report not sent: {e:?}");
                }
            }
            if self.stop_after != 0 && n >= self.stop_after {
                self.set_tick_period(Duration::ZERO);
                info!("done after {n} ticks");
            }
        }

        fn on_queue_ready(&mut self, queue: u32) {
            while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue) {
                info!("queue: {}", String::from_utf8_lossy(&item));
            }
        }
    }
}
