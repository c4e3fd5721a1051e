//! Metrics in the Prometheus (OpenMetrics) text format, through `prometheus-client`: each
//! process registers its families in a [`Registry`] and serves [`encode`] on `/metrics`.

pub use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's families as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Labels as `prometheus-client` takes them, in this order.
pub fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    #[test]
    fn counters_end_in_total_and_labels_are_escaped() {
        let mut r = Registry::default();
        let f: Family<Vec<(String, String)>, Counter> = Family::default();
        r.register("demo_pulls", "Pulls", f.clone());
        f.get_or_create(&labels(&[("name", "a\"b"), ("image", "r/f:v1")]))
            .inc_by(2);
        let text = encode(&r);
        assert!(
            text.contains("demo_pulls_total{name=\"a\\\"b\",image=\"r/f:v1\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE demo_pulls counter"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
