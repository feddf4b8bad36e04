//! The OTLP gRPC span exporter: each batch is written once into protobuf bytes by
//! [`crate::otlp_encode`] and sent as `TraceService/Export` over a tonic channel.
//!
//! It behaves as `opentelemetry-otlp`'s gRPC exporter does (the same channel settings, headers,
//! gzip, time limit, and retries: three, with exponential backoff and jitter, for the status
//! codes the OTLP specification calls retryable, honouring a collector's `RetryInfo`), but
//! skips that exporter's copy of the batch and its intermediate message structs, which were
//! most of the in-process cost of a traced request. It is not used for OTLP/HTTP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::otlp_encode::TraceRequestEncoder;
use crate::pipeline::BatchExporter;
use crate::record::SpanRecord;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(String);

/// Sends spans to an OTLP gRPC endpoint.
#[derive(Debug)]
pub struct GrpcSpanExporter {
    client: tonic::client::Grpc<Channel>,
    metadata: MetadataMap,
    timeout: Duration,
    encoder: TraceRequestEncoder,
    closed: AtomicBool,
}

/// What the gRPC exporter needs to know.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// Time limit of one export, retries included.
    pub timeout: Duration,
    /// Sent with every export.
    pub metadata: MetadataMap,
    /// Compress requests (and accept compressed answers) with gzip.
    pub gzip: bool,
    /// TLS settings; `https` endpoints without them use the default roots.
    pub tls: Option<ClientTlsConfig>,
}

impl GrpcSpanExporter {
    /// A lazily connecting exporter (the connection is made by the first export).
    ///
    /// # Errors
    /// When the endpoint is not a valid URI or the TLS settings cannot be applied.
    pub fn new(settings: GrpcSettings) -> Result<Self, BuildError> {
        let endpoint = Endpoint::from_shared(settings.endpoint.clone()).map_err(|e| {
            BuildError(format!(
                "invalid endpoint '{}': {}",
                settings.endpoint,
                crate::export_errors::chain(&e)
            ))
        })?;
        let is_https = endpoint.uri().scheme_str() == Some("https");
        let endpoint = match (settings.tls, is_https) {
            (Some(tls), _) => endpoint.tls_config(tls),
            (None, true) => endpoint.tls_config(ClientTlsConfig::new()),
            (None, false) => Ok(endpoint),
        }
        .map_err(|e| BuildError(crate::export_errors::chain(&e)))?;
        let channel = endpoint.timeout(settings.timeout).connect_lazy();
        let mut client = tonic::client::Grpc::new(channel);
        if settings.gzip {
            client = client
                .send_compressed(tonic::codec::CompressionEncoding::Gzip)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        Ok(GrpcSpanExporter {
            client,
            metadata: settings.metadata,
            timeout: settings.timeout,
            encoder: TraceRequestEncoder::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// The resource written into every request.
    pub fn set_resource(&mut self, resource: &Resource) {
        self.encoder = TraceRequestEncoder::new(resource);
    }

    async fn send_once(&self, body: Bytes) -> Result<(), Status> {
        let mut client = self.client.clone();
        client
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        request.extensions_mut().insert(tonic::GrpcMethod::new(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            "Export",
        ));
        let response = client
            .unary(
                request,
                http::uri::PathAndQuery::from_static(EXPORT_PATH),
                PreEncoded,
            )
            .await?;
        if let Some(partial) = response.into_inner().partial_success
            && (partial.rejected_spans > 0 || !partial.error_message.is_empty())
        {
            tracing::warn!(
                target: "jobpilot::telemetry",
                rejected_spans = partial.rejected_spans,
                message = %partial.error_message,
                "the collector rejected part of an export"
            );
        }
        Ok(())
    }
}

impl BatchExporter for GrpcSpanExporter {
    async fn export(&self, batch: Vec<SpanRecord>) -> OTelSdkResult {
        if self.closed.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let body = Bytes::from(self.encoder.encode_to_vec(&batch));
        drop(batch);
        match retry_with_backoff(self.timeout, || self.send_once(body.clone())).await {
            Ok(()) => Ok(()),
            Err(status) => {
                let mut message = format!(
                    "OTLP gRPC export failed with gRPC code: {:?}",
                    status.code()
                );
                if let Some(source) = std::error::Error::source(&status) {
                    message.push_str(": ");
                    message.push_str(&crate::export_errors::chain(source));
                }
                Err(OTelSdkError::InternalFailure(message))
            }
        }
    }

    fn shutdown(&self) -> OTelSdkResult {
        if self.closed.swap(true, Ordering::AcqRel) {
            Err(OTelSdkError::AlreadyShutdown)
        } else {
            Ok(())
        }
    }
}

/// A codec whose requests are bytes already encoded, and whose answers are
/// `ExportTraceServiceResponse`.
#[derive(Debug, Clone, Copy)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

// --- Retries, as the OTLP specification and opentelemetry-otlp do them -------------------------

const MAX_RETRIES: usize = 3;
const INITIAL_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
const MAX_JITTER: Duration = Duration::from_millis(100);
const MAX_THROTTLE: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq)]
enum Retry {
    No,
    Yes,
    After(Duration),
}

fn classify(status: &Status) -> Retry {
    use tonic_types::StatusExt as _;
    let delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    classify_code(status.code(), delay)
}

fn classify_code(code: Code, delay: Option<Duration>) -> Retry {
    let cap = |d: Duration| d.min(Duration::from_secs(600));
    match code {
        Code::ResourceExhausted => delay.map_or(Retry::No, |d| Retry::After(cap(d))),
        Code::Unavailable => match delay.filter(|d| !d.is_zero()) {
            Some(d) => Retry::After(cap(d)),
            None => Retry::Yes,
        },
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::DataLoss => Retry::Yes,
        _ => Retry::No,
    }
}

fn jitter() -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(nanos);
    Duration::from_millis(hasher.finish() % (MAX_JITTER.as_millis() as u64 + 1))
}

async fn retry_with_backoff<F, Fut>(deadline: Duration, mut attempt: F) -> Result<(), Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    let start = Instant::now();
    let mut retries = 0;
    let mut delay = INITIAL_DELAY;
    let mut delay_cap = MAX_DELAY;
    loop {
        let Err(status) = attempt().await else {
            return Ok(());
        };
        if start.elapsed() >= deadline || retries >= MAX_RETRIES {
            return Err(status);
        }
        match classify(&status) {
            Retry::No => return Err(status),
            Retry::Yes => {}
            Retry::After(server_delay) => {
                let server_delay = server_delay.min(MAX_THROTTLE);
                if server_delay > delay_cap {
                    delay_cap = MAX_THROTTLE;
                }
                if !server_delay.is_zero() {
                    delay = delay.max(server_delay);
                }
            }
        }
        retries += 1;
        let sleep = delay.saturating_add(jitter()).min(delay_cap);
        if sleep >= deadline.saturating_sub(start.elapsed()) {
            return Err(status);
        }
        tokio::time::sleep(sleep).await;
        delay = delay.saturating_mul(2).min(delay_cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes_follow_the_otlp_specification() {
        assert_eq!(classify_code(Code::Unavailable, None), Retry::Yes);
        assert_eq!(classify_code(Code::DeadlineExceeded, None), Retry::Yes);
        assert_eq!(classify_code(Code::ResourceExhausted, None), Retry::No);
        assert_eq!(
            classify_code(Code::ResourceExhausted, Some(Duration::from_secs(2))),
            Retry::After(Duration::from_secs(2))
        );
        assert_eq!(classify_code(Code::InvalidArgument, None), Retry::No);
        assert_eq!(classify_code(Code::Unauthenticated, None), Retry::No);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_collector_is_tried_four_times_then_given_up() {
        let mut calls = 0;
        let result = retry_with_backoff(Duration::from_secs(10), || {
            calls += 1;
            async { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
        assert_eq!(calls, 1 + MAX_RETRIES);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_export_is_not_retried() {
        let mut calls = 0;
        let result = retry_with_backoff(Duration::from_secs(10), || {
            calls += 1;
            async { Err(Status::invalid_argument("bad")) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
