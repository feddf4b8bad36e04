//! Export over TLS to real TLS receivers (gRPC and HTTP/protobuf, in this process), with a CA
//! and certificates made by each test: server TLS, mutual TLS, and receivers the exporter must
//! refuse (another CA, another name, expired), whose refusal is counted and put in words.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use jobpilot_telemetry::http_receiver::{OtlpHttpReceiver, ServerTls};
use jobpilot_telemetry::testing::OtlpReceiver;
use jobpilot_telemetry::{SpanKind, Telemetry, TraceCx, names};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use support::config;

const PATIENCE: Duration = Duration::from_secs(20);

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn server(&self) -> Leaf {
        self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )
    }

    fn client(&self) -> Leaf {
        self.issue(&["jobpilot"], ExtendedKeyUsagePurpose::ClientAuth, false)
    }
}

fn server_tls(leaf: &Leaf, client_ca: Option<&Ca>) -> ServerTls {
    ServerTls {
        cert_pem: leaf.cert_pem.clone(),
        key_pem: leaf.key_pem.clone(),
        client_ca_pem: client_ca.map(Ca::pem),
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Grpc,
    Http,
}

/// A TLS receiver of either transport.
enum Receiver {
    Grpc(OtlpReceiver),
    Http(OtlpHttpReceiver),
}

impl Receiver {
    async fn start(transport: Transport, tls: ServerTls) -> Receiver {
        match transport {
            Transport::Grpc => Receiver::Grpc(OtlpReceiver::start_tls(tls).await.unwrap()),
            Transport::Http => {
                Receiver::Http(OtlpHttpReceiver::start_with(Some(tls)).await.unwrap())
            }
        }
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        match self {
            Receiver::Grpc(r) => vec![
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", r.endpoint()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ],
            Receiver::Http(r) => vec![
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    format!("{}/v1/traces", r.base_url()),
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ],
        }
    }

    fn span_names(&self) -> Vec<String> {
        match self {
            Receiver::Grpc(r) => r.spans().into_iter().map(|s| s.name).collect(),
            Receiver::Http(r) => r
                .exports()
                .into_iter()
                .flat_map(|e| e.spans)
                .map(|s| s.name)
                .collect(),
        }
    }
}

/// Sends one span through telemetry configured with the receiver's endpoint and `extra`
/// variables; returns the export counters after a flush.
async fn export_one(
    receiver: &Receiver,
    extra: &[(&'static str, String)],
) -> jobpilot_telemetry::ExportStats {
    let mut vars = receiver.vars();
    vars.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "3000".into()));
    vars.extend(extra.iter().cloned());
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let telemetry = Telemetry::init(&config(&vars), names::SERVICE_API).expect("telemetry starts");
    telemetry
        .tracer(names::SCOPE_HTTP)
        .start(&TraceCx::root(), "over-tls", SpanKind::Internal, vec![])
        .end();
    telemetry
        .pipeline()
        .expect("an export pipeline")
        .flush(PATIENCE)
        .await
        .expect("flush finishes");
    let stats = telemetry.stats();
    telemetry.shutdown(Duration::from_secs(5)).await.ok();
    stats
}

async fn assert_delivered_with_tls(transport: Transport, mutual: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("jobpilot test CA");
    let receiver =
        Receiver::start(transport, server_tls(&ca.server(), mutual.then_some(&ca))).await;
    let mut extra = vec![(
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        write(dir.path(), "ca.pem", &ca.pem()),
    )];
    if mutual {
        let client = ca.client();
        extra.push((
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            write(dir.path(), "client.pem", &client.cert_pem),
        ));
        extra.push((
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            write(dir.path(), "client.key", &client.key_pem),
        ));
    }
    let stats = export_one(&receiver, &extra).await;
    assert_eq!(stats.exported, 1, "{transport:?}: {stats:?}");
    assert_eq!(receiver.span_names(), vec!["over-tls"], "{transport:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_over_tls_trusts_the_ca_named_by_the_certificate_variable() {
    assert_delivered_with_tls(Transport::Grpc, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_over_tls_trusts_the_ca_named_by_the_certificate_variable() {
    assert_delivered_with_tls(Transport::Http, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_with_mutual_tls_presents_the_client_certificate() {
    assert_delivered_with_tls(Transport::Grpc, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_with_mutual_tls_presents_the_client_certificate() {
    assert_delivered_with_tls(Transport::Http, true).await;
}

/// The receiver presents `leaf`; the exporter trusts `trusted` only; the export must fail, be
/// counted, and its error must contain `words`.
async fn assert_refused(transport: Transport, leaf: Leaf, trusted: &Ca, words: &str) {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(transport, server_tls(&leaf, None)).await;
    let extra = [(
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        write(dir.path(), "ca.pem", &trusted.pem()),
    )];
    let stats = export_one(&receiver, &extra).await;
    assert_eq!(stats.exported, 0, "{transport:?}: {stats:?}");
    assert_eq!(stats.dropped, 1, "{transport:?}: {stats:?}");
    assert!(stats.failed_exports >= 1, "{transport:?}: {stats:?}");
    let error = stats.last_error.unwrap_or_default();
    assert!(
        error.contains(words),
        "{transport:?}: expected {words:?} in {error:?}"
    );
    assert!(receiver.span_names().is_empty(), "{transport:?}");
    if let Receiver::Http(r) = &receiver {
        assert!(r.handshake_failures() >= 1, "the receiver saw the refusal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_a_certificate_from_another_ca_is_refused_counted_and_reported() {
    for transport in [Transport::Grpc, Transport::Http] {
        let other = Ca::new("someone else's CA");
        assert_refused(
            transport,
            other.server(),
            &Ca::new("ours"),
            "unknown issuer",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_certificate_names_another_host_is_reported_as_a_name_mismatch() {
    for transport in [Transport::Grpc, Transport::Http] {
        let ca = Ca::new("jobpilot test CA");
        let leaf = ca.issue(
            &["collector.example"],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        assert_refused(transport, leaf, &ca, "name mismatch").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_an_expired_certificate_is_reported_as_expired() {
    for transport in [Transport::Grpc, Transport::Http] {
        let ca = Ca::new("jobpilot test CA");
        let leaf = ca.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            true,
        );
        assert_refused(transport, leaf, &ca, "expired").await;
    }
}

#[test]
fn an_unreadable_certificate_file_stops_startup_naming_the_variable() {
    let lookup = |k: &str| match k {
        "OTEL_EXPORTER_ENDPOINT" => Some("https://collector.example:4317".to_owned()),
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE" => Some("/nonexistent/client.pem".into()),
        "OTEL_EXPORTER_OTLP_CLIENT_KEY" => Some("/nonexistent/client.key".into()),
        _ => None,
    };
    let err = jobpilot_telemetry::TelemetryConfig::from_lookup(lookup).unwrap_err();
    let line = err.to_string();
    assert!(
        line.starts_with("invalid OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"),
        "{line}"
    );
    assert!(!line.contains('\n'), "one line: {line}");
}
