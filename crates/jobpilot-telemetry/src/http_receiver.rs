//! An in-process OTLP/HTTP receiver for tests, plain or over TLS (optionally demanding a client
//! certificate): it records each request's path, headers and body as they came off the wire, so
//! tests can assert compression, authentication and encoding, not only the spans.
//! Enabled by the `testing` feature; never part of a release binary.
//!
//! TLS is served through a small `axum::serve::Listener` over tokio-rustls: axum serves plain
//! TCP only, and a failed handshake must be counted, not end the server.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Notify, oneshot};

use crate::testing::{CapturedSpan, spans_from_request};

/// The TLS side of a test receiver: its certificate and key, and the CA its clients'
/// certificates must come from when mutual TLS is wanted. All PEM.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server's certificate chain.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// When set, a client certificate signed by this CA is required.
    pub client_ca_pem: Option<String>,
}

impl ServerTls {
    /// The rustls server settings.
    ///
    /// # Panics
    /// On malformed PEM (a test's own certificates).
    pub fn rustls_config(&self) -> rustls::ServerConfig {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("server key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(cert.expect("client CA PEM")).expect("client CA");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::new(rustls::crypto::ring::default_provider()),
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct HttpExport {
    /// The request path, e.g. `/v1/traces`.
    pub path: String,
    /// Headers, names lowercase.
    pub headers: BTreeMap<String, String>,
    /// The spans, when the body was OTLP protobuf.
    pub spans: Vec<CapturedSpan>,
    /// The body, when it was JSON.
    pub json: Option<serde_json::Value>,
}

impl HttpExport {
    /// The header `name` (lowercase), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct State {
    exports: Mutex<Vec<HttpExport>>,
    handshake_failures: AtomicU64,
    changed: Notify,
}

/// An OTLP/HTTP receiver on `127.0.0.1` with an ephemeral port. Stops when dropped.
#[derive(Debug)]
pub struct OtlpHttpReceiver {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => return (tls, peer),
                Err(_) => {
                    self.state
                        .handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.state.changed.notify_waiters();
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn record(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut raw = body.to_vec();
    if headers.get("content-encoding").map(String::as_str) == Some("gzip") {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return (
                StatusCode::BAD_REQUEST,
                [("content-type", "text/plain")],
                b"bad gzip".to_vec(),
            );
        }
        raw = out;
    }
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    let (spans, json, reply_type, reply) = if content_type.starts_with("application/json") {
        match serde_json::from_slice::<serde_json::Value>(&raw) {
            Ok(v) => (vec![], Some(v), "application/json", b"{}".to_vec()),
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "text/plain")],
                    b"bad json".to_vec(),
                );
            }
        }
    } else {
        match ExportTraceServiceRequest::decode(&raw[..]) {
            Ok(req) => (
                spans_from_request(&req),
                None,
                "application/x-protobuf",
                Vec::new(),
            ),
            Err(_) => {
                return (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "text/plain")],
                    b"bad protobuf".to_vec(),
                );
            }
        }
    };
    state
        .exports
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(HttpExport {
            path: uri.path().to_owned(),
            headers,
            spans,
            json,
        });
    state.changed.notify_waiters();
    (StatusCode::OK, [("content-type", reply_type)], reply)
}

impl OtlpHttpReceiver {
    /// Starts a plain-text receiver.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None).await
    }

    /// Starts a receiver, over TLS when `tls` is given.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start_with(tls: Option<ServerTls>) -> std::io::Result<Self> {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let state = Arc::new(State::default());
        let router = axum::Router::new()
            .fallback(axum::routing::post(record))
            .with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let is_tls = tls.is_some();
        match tls {
            None => {
                tokio::spawn(async move {
                    let _ = axum::serve(tcp, router)
                        .with_graceful_shutdown(shutdown)
                        .await;
                });
            }
            Some(tls) => {
                let listener = TlsListener {
                    tcp,
                    acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls.rustls_config())),
                    state: state.clone(),
                };
                tokio::spawn(async move {
                    let _ = axum::serve(listener, router)
                        .with_graceful_shutdown(shutdown)
                        .await;
                });
            }
        }
        Ok(OtlpHttpReceiver {
            addr,
            tls: is_tls,
            state,
            _stop: stop,
        })
    }

    /// The base URL, `http://127.0.0.1:port` or `https://…`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every request received so far.
    pub fn exports(&self) -> Vec<HttpExport> {
        self.state
            .exports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// TLS handshakes that failed (a client that did not trust us, or that we did not trust).
    pub fn handshake_failures(&self) -> u64 {
        self.state.handshake_failures.load(Ordering::Relaxed)
    }

    /// Waits until `done` holds for the requests received, or `timeout` passes; returns them
    /// either way.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[HttpExport]) -> bool,
    ) -> Vec<HttpExport> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state.changed.notified();
            let exports = self.exports();
            if done(&exports) {
                return exports;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.exports();
            }
        }
    }
}
