//! The series of `http.server.request.duration`, each resolved once: a fixed table of the SDK's
//! bound histograms, found by the request's method, route, status, scheme and error type.
//!
//! Why: `Histogram::record` hashes the whole attribute set (SipHash over four or five key-value
//! pairs) to find its series in the SDK's map, on every request; on a bare request that was
//! most of what metrics cost. The attributes of a request come from small closed sets (the
//! standard methods, the router's route templates, the status codes, two schemes), so a process
//! only ever sees a few dozen series. Each is bound once (`Histogram::bind`, the SDK's
//! `experimental_metrics_bound_instruments`) and kept in a slot of [`HttpSeries`]; a later
//! request with the same attributes writes straight into the series' buckets.
//!
//! What it is not: a cache that can change the data. A request whose series is not in the table
//! and finds no free slot within [`PROBES`] slots is recorded through the plain
//! `Histogram::record`, which lands in the same series as a bound record would: the exported
//! data (names, attributes, buckets, values) is the same either way, only the cost differs.
//! Slots are never freed: the SDK keeps every series of a cumulative histogram for the life of
//! the process anyway, and the table is bounded ([`SLOTS`]).

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundHistogram, Histogram};

use super::HttpRequest;
use crate::names;

/// Slots in the table of a process: room for several times the series one API process sees
/// (a few dozen routes and methods, each with a handful of status codes), at ~100 bytes each.
pub(super) const SLOTS: usize = 256;

/// Slots looked at for one request before it falls back to the plain path: bounds the cost of
/// a miss when the table is nearly full.
pub(super) const PROBES: usize = 8;

/// One series of the histogram: its attributes and its bound handle.
struct Series {
    method: &'static str,
    route: &'static str,
    status: u16,
    scheme: &'static str,
    error_type: Option<Box<str>>,
    bound: BoundHistogram<f64>,
}

impl Series {
    fn is_for(&self, req: &HttpRequest<'_>) -> bool {
        self.status == req.status
            && self.route == req.route
            && self.method == req.method
            && self.scheme == req.scheme
            && self.error_type.as_deref() == req.error_type
    }
}

/// `http.server.request.duration` with its series bound once each (see the module docs).
pub(super) struct HttpSeries {
    histogram: Histogram<f64>,
    slots: Box<[OnceLock<Series>]>,
    probes: usize,
}

impl HttpSeries {
    /// The histogram with a table of `slots` slots (a power of two), of which a request looks
    /// at `probes` at most.
    pub(super) fn new(histogram: Histogram<f64>, slots: usize, probes: usize) -> Self {
        debug_assert!(slots.is_power_of_two() && probes <= slots);
        HttpSeries {
            histogram,
            slots: (0..slots).map(|_| OnceLock::new()).collect(),
            probes,
        }
    }

    /// Records one request's duration in seconds on its series.
    pub(super) fn record(&self, req: &HttpRequest<'_>, seconds: f64) {
        let mask = self.slots.len() - 1;
        let start = slot_hash(req) as usize;
        for probe in 0..self.probes {
            let slot = &self.slots[start.wrapping_add(probe) & mask];
            match slot.get() {
                Some(series) if series.is_for(req) => {
                    series.bound.record(seconds);
                    return;
                }
                Some(_) => continue,
                None => {
                    // The first request of a series is recorded the plain way, which creates
                    // the series in the SDK; binding then finds it. Binding first would create
                    // an empty series that a collection in between could export.
                    self.record_unbound(req, seconds);
                    // Another request may have taken the slot meanwhile (for this series or
                    // another): then this binding is dropped and a later request finds a slot.
                    let _ = slot.set(Series {
                        method: req.method,
                        route: req.route,
                        status: req.status,
                        scheme: req.scheme,
                        error_type: req.error_type.map(Box::from),
                        bound: self.histogram.bind(&attributes(req)),
                    });
                    return;
                }
            }
        }
        self.record_unbound(req, seconds);
    }

    fn record_unbound(&self, req: &HttpRequest<'_>, seconds: f64) {
        self.histogram.record(seconds, &attributes(req));
    }
}

/// The attributes of a request's series, in the order the plain path has always used.
fn attributes(req: &HttpRequest<'_>) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(5);
    attrs.extend([
        KeyValue::new(names::HTTP_REQUEST_METHOD, req.method),
        KeyValue::new(names::HTTP_ROUTE, req.route),
        KeyValue::new(names::HTTP_RESPONSE_STATUS_CODE, i64::from(req.status)),
        KeyValue::new(names::URL_SCHEME, req.scheme),
    ]);
    if let Some(error) = req.error_type {
        attrs.push(KeyValue::new(names::ERROR_TYPE, error.to_owned()));
    }
    attrs
}

/// Where a request's series starts looking: a cheap multiplicative hash of the method, the
/// route, the status and the scheme. Not SipHash: the table is ours and bounded, and a
/// collision only costs a probe.
fn slot_hash(req: &HttpRequest<'_>) -> u64 {
    let h = fold(
        u64::from(req.status) << 8 | req.scheme.len() as u64,
        req.method,
    );
    // The high bits are the best mixed.
    fold(h, req.route) >> 32
}

fn fold(mut h: u64, text: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, x: u64| (h.rotate_left(5) ^ x).wrapping_mul(K);
    let mut chunks = text.as_bytes().chunks_exact(8);
    for chunk in &mut chunks {
        h = mix(h, u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    mix(h, u64::from_le_bytes(tail))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::reader::MetricReader as _;
    use opentelemetry_sdk::metrics::{ManualReader, SdkMeterProvider};

    use super::*;
    use crate::metrics::{DURATION_BUCKETS, SharedReader, UNMATCHED_ROUTE};

    /// The figures of a data point: count, sum, min, max, bucket counts.
    type Point = (u64, f64, Option<f64>, Option<f64>, Vec<u64>);

    struct Provider {
        provider: SdkMeterProvider,
        reader: Arc<ManualReader>,
    }

    impl Provider {
        fn new() -> Self {
            let reader = Arc::new(ManualReader::builder().build());
            let provider = SdkMeterProvider::builder()
                .with_reader(SharedReader(reader.clone()))
                .build();
            Provider { provider, reader }
        }

        fn histogram(&self) -> Histogram<f64> {
            self.provider
                .meter(names::SCOPE_HTTP)
                .f64_histogram(names::METRIC_HTTP_SERVER_DURATION)
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        }

        fn points(&self) -> BTreeMap<Vec<(String, String)>, Point> {
            let mut rm = ResourceMetrics::default();
            self.reader.collect(&mut rm).expect("a collection");
            let mut points = BTreeMap::new();
            for metric in rm.scope_metrics().flat_map(|s| s.metrics()) {
                let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() else {
                    panic!("{} is not an f64 histogram", metric.name());
                };
                for p in h.data_points() {
                    let mut attrs: Vec<_> = p
                        .attributes()
                        .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                        .collect();
                    attrs.sort();
                    let value = (
                        p.count(),
                        p.sum(),
                        p.min(),
                        p.max(),
                        p.bucket_counts().collect(),
                    );
                    assert!(points.insert(attrs, value).is_none(), "a series twice");
                }
            }
            points
        }
    }

    /// Sixteen series (eight, each over both schemes), several requests each, mixed.
    fn requests() -> Vec<(HttpRequest<'static>, f64)> {
        let runs = "/api/v1/agents/{agent_type}/runs";
        let series = [
            ("GET", "/api/v1/agents", 200, None),
            ("GET", "/api/v1/runs/{run_id}", 200, None),
            ("GET", "/api/v1/runs/{run_id}", 404, None),
            ("PUT", "/api/v1/runs/{run_id}", 200, None),
            ("POST", runs, 202, None),
            ("POST", runs, 503, Some("503")),
            ("POST", runs, 503, Some("panic")),
            ("GET", UNMATCHED_ROUTE, 404, None),
        ];
        (0..40)
            .map(|n| {
                let (method, route, status, error_type) = series[n * 3 % series.len()];
                let req = HttpRequest {
                    method,
                    route,
                    scheme: if n % 5 == 0 { "https" } else { "http" },
                    status,
                    error_type,
                };
                (req, 0.001 * (n * n % 97) as f64)
            })
            .collect()
    }

    /// The data of the plain `Histogram::record` for [`requests`].
    fn recorded_plainly() -> BTreeMap<Vec<(String, String)>, Point> {
        let plain = Provider::new();
        let histogram = plain.histogram();
        for (req, seconds) in requests() {
            histogram.record(seconds, &attributes(&req));
        }
        plain.points()
    }

    fn recorded_through_table(
        slots: usize,
        probes: usize,
    ) -> (usize, BTreeMap<Vec<(String, String)>, Point>) {
        let bound = Provider::new();
        let table = HttpSeries::new(bound.histogram(), slots, probes);
        for (req, seconds) in requests() {
            table.record(&req, seconds);
        }
        let filled = table.slots.iter().filter(|s| s.get().is_some()).count();
        (filled, bound.points())
    }

    #[test]
    fn bound_series_export_the_same_data_as_the_plain_histogram() {
        let expected = recorded_plainly();
        assert_eq!(expected.len(), 16, "{expected:#?}");
        let (filled, points) = recorded_through_table(SLOTS, PROBES);
        assert_eq!(filled, expected.len());
        assert_eq!(points, expected);
    }

    #[test]
    fn a_full_table_records_the_other_series_the_plain_way() {
        let expected = recorded_plainly();
        for (slots, probes) in [(1, 1), (2, 1), (4, 2), (8, 8)] {
            let (filled, points) = recorded_through_table(slots, probes);
            assert!(
                filled <= slots && filled < expected.len(),
                "{slots} slots: {filled} bound"
            );
            assert_eq!(points, expected, "{slots} slots, {probes} probes");
            for attrs in points.keys() {
                assert!(
                    !attrs.iter().any(|(k, _)| k == "otel.metric.overflow"),
                    "an overflow series: {attrs:?}"
                );
            }
        }
    }
}
