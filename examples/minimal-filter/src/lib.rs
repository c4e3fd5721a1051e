//! `minimal-filter`: the proxy-wasm header filter every Rust SDK user starts from. A root context
//! reads the plugin configuration once, as plain text `NAME: VALUE` (default `hello: hello
//! details`), and every HTTP context appends that header to the response. No JSON, no logging, no
//! metrics: the benchmarks use it as the floor a Rust SDK header filter costs in Envoy.

#[cfg(target_family = "wasm")]
mod glue {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};
    use std::rc::Rc;

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
            Box::new(Root { header: Rc::new(("hello".into(), "hello details".into())) })
        });
    }}

    struct Root {
        header: Rc<(String, String)>,
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
            match text.split_once(':') {
                Some((name, value)) if !name.trim().is_empty() => {
                    self.header = Rc::new((name.trim().into(), value.trim().into()));
                    true
                }
                _ => text.trim().is_empty(),
            }
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream {
                header: self.header.clone(),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream {
        header: Rc<(String, String)>,
    }

    impl Context for Stream {}

    impl HttpContext for Stream {
        fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            self.add_http_response_header(&self.header.0, &self.header.1);
            Action::Continue
        }
    }
}
