//! Export errors that keep their cause: the OTLP/HTTP exporter reduces every transport failure
//! to "network error", which hides a TLS refusal from the operator. The reqwest client is
//! wrapped to remember the last failure with its whole source chain, and the exporter is
//! wrapped to add it to the error it returns. It does not change successful exports.

use std::sync::{Arc, Mutex};

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

type Slot = Arc<Mutex<Option<String>>>;

/// An error with its causes, `outer: cause: cause`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A reqwest client that remembers its last transport failure.
#[derive(Debug, Clone)]
pub struct RememberingClient {
    inner: reqwest::Client,
    last_failure: Slot,
}

#[async_trait::async_trait]
impl HttpClient for RememberingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let result = self.inner.send_bytes(request).await;
        if let Err(e) = &result {
            *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(chain(&**e));
        }
        result
    }
}

/// A span exporter whose errors carry the cause its HTTP client remembered.
#[derive(Debug)]
pub struct ExplainingExporter<E> {
    inner: E,
    last_failure: Option<Slot>,
}

impl<E> ExplainingExporter<E> {
    /// Wraps `inner`; with `client`, its errors get the cause that client remembered
    /// (gRPC errors keep their causes by themselves: pass `None`).
    pub fn new(inner: E, client: Option<&RememberingClient>) -> Self {
        ExplainingExporter {
            inner,
            last_failure: client.map(|c| c.last_failure.clone()),
        }
    }
}

impl RememberingClient {
    /// Wraps `inner`.
    pub fn new(inner: reqwest::Client) -> Self {
        RememberingClient {
            inner,
            last_failure: Slot::default(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for ExplainingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        match (result, &self.last_failure) {
            (Err(e), Some(slot)) => {
                let cause = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                Err(match cause {
                    Some(cause) => OTelSdkError::InternalFailure(format!("{e}: {cause}")),
                    None => e,
                })
            }
            (result, _) => result,
        }
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
