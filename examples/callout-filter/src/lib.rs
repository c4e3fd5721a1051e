//! An example filter that exercises the host calls a header filter does not: an HTTP callout that
//! authorizes each request, a tick timer, shared data with CAS, a shared queue and the three
//! metric kinds. The harness and Envoy must agree on everything it does.
//!
//! Plugin configuration: the name of the cluster to call (default `auth`), or several names
//! separated by commas, called one after another.
//!
//! - request with `x-skip-auth`: continues at once, counted in `callout.skipped`;
//! - otherwise `GET /check` with the request's `x-user` goes to the cluster; a 200 answer sets
//!   request header `x-auth: <answer body>` (each further cluster's 200 adds another value) and
//!   calls the next cluster, or resumes after the last; anything else (or a failed call) answers
//!   403 `denied` with header `x-denied-by: callout` (counted in `callout.allowed` / `denied`,
//!   and the answer's size recorded in the histogram `callout.answer_bytes`);
//! - every response gets `x-ticks: <n>` from shared data `ticks` (written by the root on each
//!   60 s tick with CAS) and `x-requests: <n>` from the counter `callout.requests`;
//! - each request's path is enqueued on queue `paths`; the root dequeues it on
//!   `on_queue_ready` and sets the gauge `callout.last_path_len`.

#[cfg(target_family = "wasm")]
mod glue {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
    use std::time::Duration;

    /// Long enough that no tick fires while a test request is in flight.
    const TICK: Duration = Duration::from_secs(60);

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Trace);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}

    #[derive(Default, Clone, Copy)]
    struct Metrics {
        requests: u32,
        allowed: u32,
        denied: u32,
        skipped: u32,
        answer_bytes: u32,
        last_path_len: u32,
        ticks: u32,
    }

    #[derive(Default)]
    struct Root {
        clusters: Vec<String>,
        metrics: Metrics,
        queue: u32,
    }

    fn define(kind: MetricType, name: &str) -> u32 {
        hostcalls::define_metric(kind, name).unwrap_or(0)
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _: usize) -> bool {
            let cfg = self.get_plugin_configuration().unwrap_or_default();
            self.clusters = String::from_utf8(cfg)
                .unwrap_or_default()
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect();
            if self.clusters.is_empty() {
                self.clusters = vec!["auth".into()];
            }
            self.metrics = Metrics {
                requests: define(MetricType::Counter, "callout.requests"),
                allowed: define(MetricType::Counter, "callout.allowed"),
                denied: define(MetricType::Counter, "callout.denied"),
                skipped: define(MetricType::Counter, "callout.skipped"),
                answer_bytes: define(MetricType::Histogram, "callout.answer_bytes"),
                last_path_len: define(MetricType::Gauge, "callout.last_path_len"),
                ticks: define(MetricType::Counter, "callout.ticks"),
            };
            self.queue = hostcalls::register_shared_queue("paths").unwrap_or(0);
            self.set_tick_period(TICK);
            log::info!(
                "callout: calling cluster {} for every request",
                self.clusters.join(", ")
            );
            true
        }

        fn on_tick(&mut self) {
            let _ = hostcalls::increment_metric(self.metrics.ticks, 1);
            // Read-modify-write with CAS: a lost race is retried on the next tick.
            let (value, cas) = self.get_shared_data("ticks");
            let n = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            if let Err(e) = self.set_shared_data("ticks", Some((n + 1).to_string().as_bytes()), cas)
            {
                log::warn!("callout: tick lost a CAS race: {e:?}");
            }
        }

        fn on_queue_ready(&mut self, queue_id: u32) {
            while let Ok(Some(path)) = hostcalls::dequeue_shared_queue(queue_id) {
                let _ = hostcalls::record_metric(self.metrics.last_path_len, path.len() as u64);
                log::debug!("callout: dequeued {}", String::from_utf8_lossy(&path));
            }
        }

        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream {
                clusters: self.clusters.clone(),
                answered: 0,
                metrics: self.metrics,
                queue: self.queue,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream {
        clusters: Vec<String>,
        /// Clusters that allowed the request so far.
        answered: usize,
        metrics: Metrics,
        queue: u32,
    }

    impl Stream {
        /// Call the next cluster; false (after answering 503) when the call cannot be made.
        fn call_next(&mut self) -> bool {
            let cluster = self.clusters[self.answered].clone();
            let user = self.get_http_request_header("x-user").unwrap_or_default();
            let headers = vec![
                (":method", "GET"),
                (":path", "/check"),
                (":authority", cluster.as_str()),
                ("x-user", user.as_str()),
            ];
            match self.dispatch_http_call(&cluster, headers, None, vec![], Duration::from_secs(5)) {
                Ok(_) => true,
                Err(e) => {
                    log::error!("callout: cannot call {cluster}: {e:?}");
                    self.send_http_response(
                        503,
                        vec![("x-denied-by", "callout")],
                        Some(b"no auth cluster"),
                    );
                    false
                }
            }
        }
    }

    impl Context for Stream {
        fn on_http_call_response(
            &mut self,
            _token: u32,
            _headers: usize,
            body_size: usize,
            _trailers: usize,
        ) {
            let status = self.get_http_call_response_header(":status");
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            let _ = hostcalls::record_metric(self.metrics.answer_bytes, body.len() as u64);
            if status.as_deref() == Some("200") {
                let _ = hostcalls::increment_metric(self.metrics.allowed, 1);
                let who = String::from_utf8_lossy(&body).into_owned();
                if self.answered == 0 {
                    // Whatever the client claimed is replaced.
                    self.set_http_request_header("x-auth", Some(&who));
                } else {
                    self.add_http_request_header("x-auth", &who);
                }
                self.answered += 1;
                if self.answered == self.clusters.len() {
                    self.resume_http_request();
                } else {
                    self.call_next();
                }
            } else {
                let _ = hostcalls::increment_metric(self.metrics.denied, 1);
                log::info!("callout: denied (status {status:?})");
                self.send_http_response(403, vec![("x-denied-by", "callout")], Some(b"denied"));
            }
        }
    }

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            let _ = hostcalls::increment_metric(self.metrics.requests, 1);
            if let Some(path) = self.get_http_request_header(":path") {
                let _ = hostcalls::enqueue_shared_queue(self.queue, Some(path.as_bytes()));
            }
            if self.get_http_request_header("x-skip-auth").is_some() {
                let _ = hostcalls::increment_metric(self.metrics.skipped, 1);
                return Action::Continue;
            }
            // Pause in both cases: for the answer, or after the local 503.
            self.call_next();
            Action::Pause
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            let (ticks, _) = self.get_shared_data("ticks");
            let ticks = ticks
                .and_then(|v| String::from_utf8(v).ok())
                .unwrap_or_else(|| "0".into());
            self.add_http_response_header("x-ticks", &ticks);
            let requests = hostcalls::get_metric(self.metrics.requests).unwrap_or(0);
            self.add_http_response_header("x-requests", &requests.to_string());
            Action::Continue
        }
    }
}
