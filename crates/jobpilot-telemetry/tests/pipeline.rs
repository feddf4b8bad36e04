//! The export pipeline on its own, with exporters whose behaviour the test controls: what it
//! holds in memory and how it accounts for every span.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jobpilot_telemetry::config::BatchConfig;
use jobpilot_telemetry::pipeline::BatchExporter;
use jobpilot_telemetry::span::DEFAULT_MAX_VALUE_LEN;
use jobpilot_telemetry::{Recorder, SpanKind, SpanRecord, TraceCx, Tracer, pipeline};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::Sampler;

/// Takes every batch and never answers, like a collector that accepted the connection and hung.
#[derive(Debug, Default, Clone)]
struct StuckExporter {
    batches: Arc<AtomicUsize>,
}

impl BatchExporter for StuckExporter {
    async fn export(&self, _batch: Vec<SpanRecord>) -> OTelSdkResult {
        self.batches.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

fn end_spans(tracer: &Tracer, n: usize) {
    for _ in 0..n {
        tracer
            .start(&TraceCx::root(), "span", SpanKind::Internal, vec![])
            .end();
    }
}

/// Lets the export task run until it is parked again (the runtime has one thread, so nothing
/// else runs meanwhile).
async fn let_the_export_task_run() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

// A current-thread runtime: the export task runs only when the test awaits, so every step below
// happens in a known order.
#[tokio::test(flavor = "current_thread")]
async fn spans_held_never_exceed_the_queue_plus_the_batches_in_flight() {
    let config = BatchConfig {
        max_queue_size: 100,
        scheduled_delay: Duration::from_secs(60),
        max_export_batch_size: 10,
        max_concurrent_exports: 1,
        export_timeout: Duration::from_secs(60),
    };
    let exporter = StuckExporter::default();
    let (sink, handle) = pipeline::start(exporter.clone(), config);
    let recorder = Recorder::builder(Sampler::AlwaysOn).with_sink(sink).build();
    let tracer = Tracer::new(&recorder, "test", DEFAULT_MAX_VALUE_LEN);

    // Fill the queue; the first full batch wakes the export task, which sends one batch (that
    // never returns) and then has to wait for the only export slot.
    end_spans(&tracer, 100);
    let_the_export_task_run().await;
    assert_eq!(exporter.batches.load(Ordering::SeqCst), 1);

    // Keep ending spans while the collector hangs.
    end_spans(&tracer, 1_000);
    let_the_export_task_run().await;
    end_spans(&tracer, 1_000);

    let ended = 2_100_u64;
    let stats = handle.stats();
    let bound = (config.max_queue_size
        + config.max_concurrent_exports * config.max_export_batch_size) as u64;
    let held = ended - stats.dropped - stats.exported;
    assert!(
        held <= bound,
        "{held} spans are held (queue {}, in flight {}), more than the queue plus the batches \
         in flight ({bound}): {stats:?}",
        config.max_queue_size,
        config.max_export_batch_size
    );
    assert!(stats.queued <= config.max_queue_size, "{stats:?}");
    assert_eq!(
        held,
        stats.queued as u64 + config.max_export_batch_size as u64,
        "every span held is either queued or in the one batch in flight: {stats:?}"
    );
}

/// Answers each batch after a short pause and counts the spans it received.
#[derive(Debug, Default, Clone)]
struct SlowExporter {
    spans: Arc<AtomicUsize>,
}

impl BatchExporter for SlowExporter {
    async fn export(&self, batch: Vec<SpanRecord>) -> OTelSdkResult {
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.spans.fetch_add(batch.len(), Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_span_is_either_exported_or_counted_as_dropped() {
    let config = BatchConfig {
        max_queue_size: 500,
        scheduled_delay: Duration::from_millis(10),
        max_export_batch_size: 50,
        max_concurrent_exports: 2,
        export_timeout: Duration::from_secs(5),
    };
    let exporter = SlowExporter::default();
    let (sink, handle) = pipeline::start(exporter.clone(), config);
    let recorder = Recorder::builder(Sampler::AlwaysOn).with_sink(sink).build();
    let tracer = Tracer::new(&recorder, "test", DEFAULT_MAX_VALUE_LEN);

    // Faster than a slow exporter drains: some spans are dropped, none go missing.
    for _ in 0..20 {
        end_spans(&tracer, 500);
        tokio::task::yield_now().await;
    }
    handle
        .flush(Duration::from_secs(20))
        .await
        .expect("flush finishes");

    let stats = handle.stats();
    assert_eq!(stats.queued, 0, "{stats:?}");
    assert_eq!(
        stats.exported,
        exporter.spans.load(Ordering::SeqCst) as u64,
        "exported counts what the exporter acknowledged: {stats:?}"
    );
    assert_eq!(
        stats.exported + stats.dropped,
        10_000,
        "every span is accounted for: {stats:?}"
    );
    assert!(
        stats.dropped > 0,
        "the burst did overflow the queue: {stats:?}"
    );
    handle
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown finishes");
}
