//! `header-filter`: a proxy-wasm HTTP filter that appends, sets and removes request and response
//! headers from a JSON plugin configuration.
//!
//! The rules live in [`config`] (plain Rust, tested natively); this file is the thin glue to the
//! proxy-wasm host and is compiled only for wasm targets.
//!
//! Per stream the glue does no JSON work: the configuration is compiled once in `on_configure`, and a
//! configuration whose only rules append fixed response headers costs one host call per rule on the
//! response path and none on the request path.

pub mod config;
pub mod json;

#[cfg(target_family = "wasm")]
mod glue {
    use crate::config::{Config, Direction, Outcome, StreamState};
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};
    use std::rc::Rc;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::Duration;

    /// How often each worker re-reads Envoy's `wasm` log level, so that `/logging?wasm=debug`
    /// takes effect without a configuration change.
    const LOG_LEVEL_REFRESH: Duration = Duration::from_secs(5);

    proxy_wasm::main! {{
        // A panic (none is expected: clippy denies them) still reaches Envoy's log.
        std::panic::set_hook(Box::new(|info| {
            let _ = hostcalls::log(LogLevel::Critical, &info.to_string());
        }));
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}

    /// The least severe level Envoy's `wasm` logger keeps (a `LogLevel` as a number), so that a
    /// message below it costs neither formatting nor a host call. Starts at `Info`, Envoy's default.
    static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

    /// Whether Envoy keeps messages of `level`.
    fn enabled(level: LogLevel) -> bool {
        level as u8 >= LEVEL.load(Ordering::Relaxed)
    }

    /// Log `message` (built only when the level is enabled) through `proxy_log`. The filter logs
    /// with these two functions rather than the `log` crate and the SDK's logger: no logger
    /// object or macro dispatch in the module, and a disabled level costs one load.
    fn log(level: LogLevel, message: impl FnOnce() -> String) {
        if enabled(level) {
            let _ = hostcalls::log(level, &message());
        }
    }

    /// A compiled configuration and the counters defined for it.
    struct Active {
        config: Config,
        /// `(applied, skipped)` metric ids per rule.
        metrics: Vec<(u32, u32)>,
    }

    #[derive(Default)]
    struct Root {
        active: Option<Rc<Active>>,
    }

    /// Follow Envoy's level.
    fn refresh_log_level() {
        if let Ok(level) = hostcalls::get_log_level() {
            LEVEL.store(level as u8, Ordering::Relaxed);
        }
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            refresh_log_level();
            let json = self.get_plugin_configuration().unwrap_or_default();
            let constant = |path: &[&str]| {
                self.get_property(path.to_vec())
                    .and_then(|b| String::from_utf8(b).ok())
            };
            let config = match Config::compile(&json, &constant) {
                Ok(c) => c,
                Err(e) => {
                    log(LogLevel::Error, || {
                        format!("header-filter: invalid configuration: {e}")
                    });
                    return false;
                }
            };
            let plugin = constant(&["plugin_name"])
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_string());
            let mut metrics = Vec::with_capacity(config.rules().len());
            for (i, rule) in config.rules().iter().enumerate() {
                let define = |outcome: &str| {
                    hostcalls::define_metric(
                        MetricType::Counter,
                        &format!("header_filter.{plugin}.rule_{i}.{outcome}"),
                    )
                };
                match (define("applied"), define("skipped")) {
                    (Ok(a), Ok(s)) => metrics.push((a, s)),
                    (Err(e), _) | (_, Err(e)) => {
                        log(LogLevel::Error, || {
                            format!("header-filter: cannot define metrics for rule {i}: {e:?}")
                        });
                        return false;
                    }
                }
                log(LogLevel::Info, || {
                    format!(
                        "header-filter: rule {i}: {} {} {}{}",
                        rule.direction,
                        rule.op,
                        rule.name,
                        if rule.when.is_some() {
                            " (conditional)"
                        } else {
                            ""
                        }
                    )
                });
            }
            log(LogLevel::Info, || {
                format!(
                    "header-filter: configured {} rule(s) for plugin {plugin}",
                    config.rules().len()
                )
            });
            self.active = Some(Rc::new(Active { config, metrics }));
            self.set_tick_period(LOG_LEVEL_REFRESH);
            true
        }

        fn on_tick(&mut self) {
            refresh_log_level();
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            let state = self
                .active
                .as_ref()
                .map(|a| a.config.initial_state())
                .unwrap_or_default();
            Some(Box::new(Stream {
                active: self.active.clone(),
                state,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream {
        active: Option<Rc<Active>>,
        state: StreamState,
    }

    /// The host as [`crate::config::Stream`] sees it.
    struct Host<'a> {
        metrics: &'a [(u32, u32)],
        config: &'a Config,
        /// The request headers as they reached the filter, fetched in one host call the first
        /// time a condition or placeholder reads one.
        request: Option<Vec<(String, String)>>,
    }

    fn map_type(d: Direction) -> MapType {
        match d {
            Direction::Request => MapType::HttpRequestHeaders,
            Direction::Response => MapType::HttpResponseHeaders,
        }
    }

    impl crate::config::Stream for Host<'_> {
        fn property(&mut self, path: &[&str]) -> Option<String> {
            hostcalls::get_property(path.to_vec())
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
        }

        fn header(&mut self, map: Direction, name: &str) -> Option<String> {
            hostcalls::get_map_value(map_type(map), name).ok().flatten()
        }

        fn request_header(&mut self, name: &str) -> Option<String> {
            self.request
                .get_or_insert_with(|| {
                    hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
                })
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }

        fn append_header(&mut self, map: Direction, name: &str, value: &str) {
            if let Err(e) = hostcalls::add_map_value(map_type(map), name, value) {
                log(LogLevel::Warn, || {
                    format!("header-filter: cannot append {map} header {name}: {e:?}")
                });
            }
        }

        fn set_header(&mut self, map: Direction, name: &str, value: &str) {
            if let Err(e) = hostcalls::set_map_value(map_type(map), name, Some(value)) {
                log(LogLevel::Warn, || {
                    format!("header-filter: cannot set {map} header {name}: {e:?}")
                });
            }
        }

        fn remove_header(&mut self, map: Direction, name: &str) {
            if let Err(e) = hostcalls::remove_map_value(map_type(map), name) {
                log(LogLevel::Warn, || {
                    format!("header-filter: cannot remove {map} header {name}: {e:?}")
                });
            }
        }

        fn outcome(&mut self, rule: usize, outcome: Outcome) {
            let Some(&(applied, skipped)) = self.metrics.get(rule) else {
                return;
            };
            let id = match outcome {
                Outcome::Applied => applied,
                Outcome::Skipped => skipped,
            };
            let _ = hostcalls::increment_metric(id, 1);
            if enabled(LogLevel::Debug)
                && let Some(r) = self.config.rules().get(rule)
            {
                log(LogLevel::Debug, || {
                    format!(
                        "header-filter: rule {rule} ({} {} {}): {outcome}",
                        r.direction, r.op, r.name
                    )
                });
            }
        }
    }

    impl Context for Stream {}

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            if let Some(a) = &self.active
                && a.config.needs_request_phase()
            {
                let mut host = Host {
                    metrics: &a.metrics,
                    config: &a.config,
                    request: None,
                };
                self.state = a.config.on_request(&mut host);
            }
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            if let Some(a) = &self.active
                && a.config.has_response_rules()
            {
                let mut host = Host {
                    metrics: &a.metrics,
                    config: &a.config,
                    request: None,
                };
                a.config.on_response(&self.state, &mut host);
            }
            Action::Continue
        }
    }
}
