//! TLS for the OTLP exporters: which roots are trusted (the system's, the bundled public ones and
//! an optional custom CA), the client identity for mutual TLS, and handshake failures put in
//! words an operator can act on.
//!
//! The same settings feed both transports: tonic's `ClientTlsConfig` for gRPC and a rustls
//! `ClientConfig` handed to reqwest for HTTP. It does not read files: [`crate::config`] did that
//! at startup, so a bad file fails before anything is bound.

use std::sync::Arc;

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::{ConfigError, TlsFiles};

/// Makes ring the process's rustls crypto provider unless one is installed. tonic's TLS takes
/// the process default, and the build links two providers (ring, and aws-lc through reqwest),
/// so rustls cannot pick one by itself.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Whether the system trust store holds any certificate (a minimal container may have none;
/// the bundled public roots still apply then).
fn system_roots() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}

/// The gRPC (tonic) TLS settings.
pub fn grpc_tls(tls: &TlsFiles) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new().with_webpki_roots();
    if !system_roots().is_empty() {
        config = config.with_native_roots();
    }
    if let Some(ca) = &tls.ca {
        config = config.ca_certificate(Certificate::from_pem(&ca.pem));
    }
    if let Some(id) = &tls.identity {
        config = config.identity(Identity::from_pem(&id.cert.pem, &id.key.pem));
    }
    config
}

/// The HTTP (reqwest, rustls) TLS settings.
///
/// # Errors
/// When a certificate or key is refused by rustls (the error names its variable).
pub fn http_tls(tls: &TlsFiles) -> Result<rustls::ClientConfig, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots.add_parsable_certificates(system_roots());
    if let Some(ca) = &tls.ca {
        for cert in ca.certificates()? {
            roots.add(cert).map_err(|e| {
                ConfigError::new(ca.var, &ca.path.display().to_string(), e.to_string())
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("OTEL_EXPORTER_OTLP_CERTIFICATE", "", e.to_string()))?
        .with_root_certificates(roots);
    match &tls.identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => builder
            .with_client_auth_cert(id.cert.certificates()?, id.key.private_key()?)
            .map_err(|e| {
                ConfigError::new(
                    id.key.var,
                    &id.key.path.display().to_string(),
                    format!("the key does not fit the client certificate: {e}"),
                )
            }),
    }
}

/// What a TLS failure in an export error means for an operator, if the error is one.
/// `error` is the exporter's message with its whole source chain.
pub fn explain_failure(error: &str) -> Option<&'static str> {
    // rustls's messages: the Debug names of its certificate errors and alerts, or the
    // sentences of its `*Context` variants.
    const CASES: &[(&[&str], &str)] = &[
        (
            &["UnknownIssuer"],
            "TLS: the collector's certificate is signed by an unknown issuer \
             (set OTEL_EXPORTER_OTLP_CERTIFICATE to its CA)",
        ),
        (
            &["NotValidForName", "certificate not valid for name"],
            "TLS: name mismatch, the collector's certificate is not valid for the endpoint's host",
        ),
        (
            &["Expired", "certificate expired"],
            "TLS: the collector's certificate has expired",
        ),
        (
            &["NotValidYet", "certificate not valid yet"],
            "TLS: the collector's certificate is not valid yet (check the clocks)",
        ),
        (&["Revoked"], "TLS: the collector's certificate is revoked"),
        (
            &["CertificateRequired"],
            "TLS: the collector requires a client certificate \
             (set OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)",
        ),
        (
            &["UnknownCA", "BadCertificate"],
            "TLS: the collector refused the client certificate",
        ),
        (
            &["received corrupt message", "InvalidContentType"],
            "TLS: the endpoint does not speak TLS (use http:// for a plain-text collector)",
        ),
    ];
    CASES
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| error.contains(n)))
        .map(|(_, words)| *words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_put_in_operator_words() {
        let cases = [
            ("invalid peer certificate: UnknownIssuer", "unknown issuer"),
            ("invalid peer certificate: NotValidForName", "name mismatch"),
            (
                "invalid peer certificate: certificate expired: verification time 9",
                "expired",
            ),
            (
                "received fatal alert: CertificateRequired",
                "requires a client certificate",
            ),
        ];
        for (error, words) in cases {
            let explained = explain_failure(error).unwrap_or_default();
            assert!(explained.contains(words), "{error} -> {explained}");
        }
        assert_eq!(explain_failure("connection refused"), None);
    }
}
