//! W3C Trace Context and W3C Baggage: reading the trace context from HTTP headers and task
//! messages, and writing it back out.
//!
//! (Placeholder body: delegates to the SDK propagator until the strict parser lands.)

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::span::TraceCx;

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Reads the trace context of an inbound request; an absent or invalid one gives the root.
pub fn extract_headers(headers: &http::HeaderMap) -> TraceCx {
    TraceCx(TraceContextPropagator::new().extract(&HeaderExtractor(headers)))
}

/// Writes `cx` into outbound request or response headers.
pub fn inject_headers(cx: &TraceCx, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&cx.0, &mut HeaderInjector(headers));
}

/// Reads the trace context stored in a task message.
pub fn extract_map(map: &BTreeMap<String, String>) -> TraceCx {
    let map: std::collections::HashMap<String, String> =
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    TraceCx(TraceContextPropagator::new().extract(&map))
}

/// The trace context of `cx` as the fields to store in a task message.
pub fn inject_map(cx: &TraceCx) -> BTreeMap<String, String> {
    let mut map = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx.0, &mut map);
    map.into_iter().collect()
}
