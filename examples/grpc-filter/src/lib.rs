//! An example filter that authorizes each request with a gRPC call (or a gRPC stream), for the
//! harness-vs-Envoy gRPC scenarios (`tests/scenarios/grpc/`).
//!
//! Plugin configuration: `MODE[,CLUSTER[,TIMEOUT_MS]]`, default `unary,grpc_auth,1000`.
//!
//! - `unary`: on request headers, calls `auth.Authorizer/Check` on CLUSTER with metadata
//!   `x-request-path: <:path>` and the `:path` as the message, and pauses. An OK answer whose
//!   message is `allow` resumes the request with request header `x-grpc-answer: allow`; any
//!   other message, or a status other than OK, answers 403 (`x-denied-by: grpc`) with the reason
//!   in the body. A call that cannot be made answers 503.
//! - `stream`: opens `auth.Authorizer/Watch` with the same metadata, sends `one:<:path>` and
//!   `two` (ending its side), logs each callback (every initial and trailing metadata entry,
//!   each message) and on the close resumes with
//!   `x-grpc-messages: <n>` (status OK) or answers 403.

#[cfg(target_family = "wasm")]
mod glue {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, Bytes, ContextType, LogLevel};
    use std::time::Duration;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Trace);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}

    const SERVICE: &str = "auth.Authorizer";

    #[derive(Clone)]
    struct Config {
        stream: bool,
        cluster: String,
        timeout: Duration,
    }

    impl Default for Config {
        fn default() -> Config {
            Config {
                stream: false,
                cluster: "grpc_auth".into(),
                timeout: Duration::from_millis(1000),
            }
        }
    }

    #[derive(Default)]
    struct Root {
        config: Config,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _: usize) -> bool {
            let raw = self.get_plugin_configuration().unwrap_or_default();
            let text = String::from_utf8_lossy(&raw);
            let mut parts = text.trim().split(',').map(str::trim);
            let mut config = Config::default();
            match parts.next() {
                Some("") | None | Some("unary") => {}
                Some("stream") => config.stream = true,
                Some(other) => {
                    log::error!("unknown mode {other:?} (unary or stream)");
                    return false;
                }
            }
            if let Some(c) = parts.next().filter(|c| !c.is_empty()) {
                config.cluster = c.to_string();
            }
            if let Some(t) = parts.next() {
                match t.parse() {
                    Ok(ms) => config.timeout = Duration::from_millis(ms),
                    Err(_) => {
                        log::error!("timeout {t:?} is not a number of milliseconds");
                        return false;
                    }
                }
            }
            log::info!(
                "grpc-filter: {} calls to {}",
                if config.stream { "stream" } else { "unary" },
                config.cluster
            );
            self.config = config;
            true
        }

        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Request {
                config: self.config.clone(),
                messages: 0,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Request {
        config: Config,
        messages: u32,
    }

    fn shown(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Every entry as `name=value`, but the value of `x-envoy-upstream-service-time` (a
    /// duration, different on every run) as `*`.
    fn own(metadata: Vec<(String, Bytes)>) -> String {
        let own: Vec<String> = metadata
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                "x-envoy-upstream-service-time" => format!("{k}=*"),
                _ => format!("{k}={}", shown(&v)),
            })
            .collect();
        own.join(",")
    }

    impl Request {
        fn deny(&mut self, reason: &str) {
            self.send_http_response(
                403,
                vec![("x-denied-by", "grpc")],
                Some(format!("denied: {reason}\n").as_bytes()),
            );
        }

        fn failed(&mut self, what: &str, status: proxy_wasm::types::Status) {
            log::warn!("grpc {what} to {} failed: {status:?}", self.config.cluster);
            self.send_http_response(503, vec![], Some(b"grpc call failed\n"));
        }
    }

    impl Context for Request {
        fn on_grpc_call_response(&mut self, _: u32, status: u32, size: usize) {
            let body = self
                .get_grpc_call_response_body(0, size)
                .unwrap_or_default();
            let (_, message) = self.get_grpc_status();
            let message = message.unwrap_or_default();
            log::info!(
                "grpc answer: status {status}, message {message:?}, body {:?}",
                shown(&body)
            );
            if status != 0 {
                self.deny(&format!("status {status} {message}"));
            } else if body == b"allow" {
                self.add_http_request_header("x-grpc-answer", "allow");
                self.resume_http_request();
            } else {
                self.deny(&shown(&body));
            }
        }

        fn on_grpc_stream_initial_metadata(&mut self, _: u32, n: u32) {
            let own = own(self.get_grpc_stream_initial_metadata());
            log::info!("grpc stream initial metadata ({n} entries): {own}");
        }

        fn on_grpc_stream_message(&mut self, _: u32, size: usize) {
            let body = self.get_grpc_stream_message(0, size).unwrap_or_default();
            self.messages += 1;
            log::info!("grpc stream message {}: {:?}", self.messages, shown(&body));
        }

        fn on_grpc_stream_trailing_metadata(&mut self, _: u32, n: u32) {
            let own = own(self.get_grpc_stream_trailing_metadata());
            log::info!("grpc stream trailing metadata ({n} entries): {own}");
        }

        fn on_grpc_stream_close(&mut self, _: u32, status: u32) {
            let (_, message) = self.get_grpc_status();
            let message = message.unwrap_or_default();
            log::info!("grpc stream closed: status {status}, message {message:?}");
            if status == 0 {
                let n = self.messages.to_string();
                self.add_http_request_header("x-grpc-messages", &n);
                self.resume_http_request();
            } else {
                self.deny(&format!("status {status} {message}"));
            }
        }
    }

    impl HttpContext for Request {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            let path = self.get_http_request_header(":path").unwrap_or_default();
            let metadata = vec![("x-request-path", path.as_bytes())];
            let cluster = self.config.cluster.clone();
            if self.config.stream {
                let token = match self.open_grpc_stream(&cluster, SERVICE, "Watch", metadata) {
                    Ok(t) => t,
                    Err(e) => {
                        self.failed("stream", e);
                        return Action::Pause;
                    }
                };
                let first = format!("one:{path}");
                self.send_grpc_stream_message(token, Some(first.as_bytes()), false);
                self.send_grpc_stream_message(token, Some(b"two"), true);
                log::info!("grpc stream opened to {cluster}");
            } else {
                let r = self.dispatch_grpc_call(
                    &cluster,
                    SERVICE,
                    "Check",
                    metadata,
                    Some(path.as_bytes()),
                    self.config.timeout,
                );
                if let Err(e) = r {
                    self.failed("call", e);
                    return Action::Pause;
                }
                log::info!("grpc call made to {cluster}");
            }
            Action::Pause
        }
    }
}
