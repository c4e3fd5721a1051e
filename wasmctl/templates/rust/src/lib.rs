//! {{name}}: a proxy-wasm HTTP filter (Rust SDK) that adds one header to every response.
//!
//! Plugin configuration (JSON): `{"name": "x-added-by", "value": "{{name}}"}`. A configuration
//! that is not JSON, or has no `name`, makes `on_configure` fail with a log line saying why:
//! Envoy then refuses the plugin, and `wasmctl dev` shows the line.

use proxy_wasm::hostcalls::log;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// The header every response gets.
struct Header {
    name: String,
    value: String,
}

/// Reads `{"name": "...", "value": "..."}`; the error says what is wrong.
fn parse_config(bytes: &[u8]) -> Result<Header, String> {
    const EXPECTED: &str = r#"expected {"name": "...", "value": "..."}"#;
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e}); {EXPECTED}"))?;
    let Some(fields) = json.as_object() else {
        return Err(format!("not a JSON object; {EXPECTED}"));
    };
    let text = |field: &str| match fields.get(field) {
        None => Err(format!("\"{field}\" is missing; {EXPECTED}")),
        Some(v) => v
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("\"{field}\" must be a string, not {v}")),
    };
    let name = text("name")?.to_ascii_lowercase();
    if name.is_empty() {
        return Err("\"name\" is empty".to_string());
    }
    let value = text("value")?;
    Ok(Header { name, value })
}

#[derive(Default)]
struct Root {
    header: Option<Rc<Header>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match parse_config(&bytes) {
            Ok(header) => {
                let _ = log(
                    LogLevel::Info,
                    &format!("configured: adds {}: {}", header.name, header.value),
                );
                self.header = Some(Rc::new(header));
                true
            }
            Err(e) => {
                let _ = log(LogLevel::Error, &format!("invalid configuration: {e}"));
                false
            }
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

/// One request and its response.
struct Stream {
    header: Option<Rc<Header>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(h) = &self.header {
            self.add_http_response_header(&h.name, &h.value);
        }
        Action::Continue
    }
}
