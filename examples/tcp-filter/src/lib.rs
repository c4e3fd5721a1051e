//! `tcp-filter`: a proxy-wasm network (TCP) filter on the Rust SDK. Each connection counts the
//! bytes it carries each way, and when it closes the filter logs one line:
//! `tcp-filter PREFIX: downstream N bytes, upstream M bytes`, where `PREFIX` is the plugin
//! configuration's `prefix` (a JSON object, `{"prefix": "mongodb"}`; default `tcp`). The bytes pass
//! unchanged.

/// The `prefix` string of a flat JSON object such as `{"prefix": "mongodb"}` (no escapes);
/// `None` when absent, `Some(Err)` when malformed.
pub fn prefix_of(config: &str) -> Option<Result<String, ()>> {
    let t = config.trim();
    if t.is_empty() {
        return None;
    }
    if !(t.starts_with('{') && t.ends_with('}')) {
        return Some(Err(()));
    }
    let at = t.find("\"prefix\"")?;
    let rest = t[at + 8..].trim_start().strip_prefix(':')?.trim_start();
    let Some(rest) = rest.strip_prefix('"') else {
        return Some(Err(()));
    };
    let end = rest.find('"')?;
    Some(Ok(rest[..end].to_string()))
}

#[cfg(target_family = "wasm")]
mod glue {
    use proxy_wasm::traits::{Context, RootContext, StreamContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, PeerType};
    use std::rc::Rc;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(Root { prefix: Rc::from("tcp") })
        });
    }}

    struct Root {
        prefix: Rc<str>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let Some(bytes) = self.get_plugin_configuration() else {
                return true;
            };
            let Ok(text) = String::from_utf8(bytes) else {
                return false;
            };
            match super::prefix_of(&text) {
                None => true,
                Some(Ok(p)) => {
                    self.prefix = Rc::from(p.as_str());
                    true
                }
                Some(Err(())) => {
                    log::warn!(
                        "tcp-filter: the configuration is not {{\"prefix\": \"...\"}}: {text}"
                    );
                    false
                }
            }
        }

        fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
            Some(Box::new(Connection {
                prefix: self.prefix.clone(),
                downstream: 0,
                upstream: 0,
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::StreamContext)
        }
    }

    struct Connection {
        prefix: Rc<str>,
        downstream: usize,
        upstream: usize,
    }

    impl Context for Connection {}

    impl StreamContext for Connection {
        fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
            self.downstream += data_size;
            Action::Continue
        }

        fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
            self.upstream += data_size;
            Action::Continue
        }

        fn on_log(&mut self) {
            log::info!(
                "tcp-filter {}: downstream {} bytes, upstream {} bytes",
                self.prefix,
                self.downstream,
                self.upstream
            );
        }

        fn on_downstream_close(&mut self, _peer_type: PeerType) {}
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_of;

    #[test]
    fn reads_the_prefix() {
        assert_eq!(
            prefix_of(r#"{"prefix": "mongodb"}"#),
            Some(Ok("mongodb".into()))
        );
        assert_eq!(prefix_of(""), None);
        assert_eq!(prefix_of("{}"), None);
        assert_eq!(prefix_of("mongodb"), Some(Err(())));
        assert_eq!(prefix_of(r#"{"prefix": 1}"#), Some(Err(())));
    }
}
