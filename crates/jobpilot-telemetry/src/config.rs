//! Telemetry configuration: parsed once from the environment into typed values, validated,
//! with errors that name the variable.
//!
//! Precedence, most specific first: code (the `with_*` setters) > environment > defaults.
//! For the trace endpoint: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) >
//! `OTEL_EXPORTER_ENDPOINT` (jobpilot's own name) > `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL; the
//! HTTP exporter appends `/v1/traces`). `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none`
//! turn export off; otherwise an endpoint selects OTLP and no endpoint selects the console.
//! It is not the place for HTTP or queue settings of other crates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::propagation::Propagators;
use crate::span::DEFAULT_MAX_VALUE_LEN;

/// A configuration value that could not be used. The message names the variable and never
/// holds a secret: the value is shown only when it may be, and then clipped, with the user info
/// and query of a URL masked.
///
/// [`ConfigError::new`] already hides the value of any variable whose name says it holds a
/// secret (`*_SECRET`, `*_KEY`, `*_TOKEN`, `*_HEADERS`, `*_DSN`, …); [`ConfigError::secret`]
/// hides it whatever the name. The reason is written by the caller and must not quote the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}{}: {reason}", self.shown_suffix())]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// The value as it may be shown (masked and clipped), if at all.
    shown: Option<String>,
    /// What is wrong with it.
    pub reason: String,
}

/// Longest part of a value quoted in an error.
const MAX_SHOWN_CHARS: usize = 64;

/// What replaces hidden parts of a value.
const MASK: &str = "***";

/// Name fragments of variables whose values are secrets.
const SECRET_VAR_HINTS: &[&str] = &[
    "SECRET",
    "KEY",
    "TOKEN",
    "PASSWORD",
    "HEADERS",
    "DSN",
    "CREDENTIAL",
];

impl ConfigError {
    /// A new error for `var` holding `value`. The value is shown masked (URL user info and
    /// query) and clipped, unless the variable's name says it is a secret.
    pub fn new(var: &'static str, value: &str, reason: impl Into<String>) -> Self {
        let secret = SECRET_VAR_HINTS.iter().any(|hint| var.contains(hint));
        ConfigError {
            var,
            shown: (!secret && !value.trim().is_empty()).then(|| shown_value(value)),
            reason: reason.into(),
        }
    }

    /// A new error for a secret `var` (or one that is missing): its value is never shown.
    pub fn secret(var: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            var,
            shown: None,
            reason: reason.into(),
        }
    }

    /// The value as the message shows it (masked and clipped), if it is shown.
    pub fn shown_value(&self) -> Option<&str> {
        self.shown.as_deref()
    }

    fn shown_suffix(&self) -> String {
        match &self.shown {
            Some(v) => format!("={v:?}"),
            None => String::new(),
        }
    }
}

/// `value` with whatever may hold a credential masked: the user info of a URL (or anything
/// before an `@`), its query and fragment; then clipped to [`MAX_SHOWN_CHARS`].
fn shown_value(value: &str) -> String {
    let value = value.trim();
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, value),
    };
    let (rest, tail) = match rest.find(['?', '#']) {
        Some(i) => (&rest[..i], MASK),
        None => (rest, ""),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{MASK}@{host}"),
        None => authority.to_owned(),
    };
    // A path can hold a secret too when an `@` is misplaced in it.
    let path = match path.rsplit_once('@') {
        Some((_, after)) => format!("/{MASK}@{after}"),
        None => path.to_owned(),
    };
    let joined = match scheme {
        Some(scheme) => format!("{scheme}://{authority}{path}{}", sep(tail)),
        None => format!("{authority}{path}{}", sep(tail)),
    };
    if joined.chars().count() > MAX_SHOWN_CHARS {
        let clipped: String = joined.chars().take(MAX_SHOWN_CHARS).collect();
        format!("{clipped}…")
    } else {
        joined
    }
}

fn sep(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("?{tail}")
    }
}

/// Deployment environment (`JOBPILOT_ENV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    /// Local development (default).
    Development,
    /// Pre-production.
    Staging,
    /// Production.
    Production,
}

impl Environment {
    /// The value for `deployment.environment.name`.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }

    /// Parses `JOBPILOT_ENV`.
    ///
    /// # Errors
    /// When the value is not one of development, staging, production.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Environment::Development),
            "staging" => Ok(Environment::Staging),
            "production" | "prod" => Ok(Environment::Production),
            _ => Err(ConfigError::new(
                "JOBPILOT_ENV",
                value,
                "expected development, staging or production",
            )),
        }
    }
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (default, port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
    /// OTLP over HTTP with JSON bodies (port 4318).
    HttpJson,
}

impl Protocol {
    /// Whether the transport is HTTP (either encoding).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::HttpProtobuf | Protocol::HttpJson)
    }
}

/// Console output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleFormat {
    /// One readable line per span, indented by depth, a tree per local root.
    Pretty,
    /// One JSON object per span and line, for machines.
    Json,
}

/// One exporter named in an `OTEL_*_EXPORTER` list (`OTEL_TRACES_EXPORTER`, and the other
/// signals' variables, which share the grammar: a comma-separated list, or `none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExporterKind {
    /// OTLP to the configured endpoint.
    Otlp,
    /// Standard output.
    Console,
    /// A Prometheus text endpoint scraped from the process (metrics only).
    Prometheus,
}

impl ExporterKind {
    /// The name used in the environment.
    pub fn as_str(self) -> &'static str {
        match self {
            ExporterKind::Otlp => "otlp",
            ExporterKind::Console => "console",
            ExporterKind::Prometheus => "prometheus",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "otlp" => Some(ExporterKind::Otlp),
            "console" => Some(ExporterKind::Console),
            "prometheus" => Some(ExporterKind::Prometheus),
            _ => None,
        }
    }
}

/// Parses an exporter list such as `otlp`, `otlp,console` or `none` into the exporters it names,
/// without duplicates, in the order given; `none` is the empty list. `accepted` are the kinds
/// this signal supports.
///
/// # Errors
/// An unknown or unsupported name, `none` together with another exporter, or an empty list.
pub fn parse_exporter_list(
    var: &'static str,
    value: &str,
    accepted: &[ExporterKind],
) -> Result<Vec<ExporterKind>, ConfigError> {
    let expected = || {
        let names: Vec<&str> = accepted.iter().map(|k| k.as_str()).collect();
        format!("expected a list of {} or none", names.join(", "))
    };
    let mut kinds = Vec::new();
    let mut none = false;
    for name in value.split(',').map(str::trim) {
        let name = name.to_ascii_lowercase();
        if name == "none" {
            none = true;
            continue;
        }
        let kind = ExporterKind::from_name(&name)
            .filter(|k| accepted.contains(k))
            .ok_or_else(|| {
                ConfigError::new(
                    var,
                    value,
                    format!("unknown exporter {name:?}; {}", expected()),
                )
            })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    match (none, kinds.is_empty()) {
        (true, false) => Err(ConfigError::new(
            var,
            value,
            "none cannot be combined with other exporters",
        )),
        (false, true) => Err(ConfigError::new(var, value, expected())),
        _ => Ok(kinds),
    }
}

/// Where finished spans go: any of OTLP and the console, or neither.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceExporters {
    /// To an OTLP endpoint through the batch pipeline.
    pub otlp: Option<OtlpConfig>,
    /// To standard output.
    pub console: Option<ConsoleFormat>,
}

impl TraceExporters {
    /// No exporter: spans are not even recorded.
    pub const NONE: TraceExporters = TraceExporters {
        otlp: None,
        console: None,
    };

    /// Whether nothing is exported.
    pub fn is_none(&self) -> bool {
        self.otlp.is_none() && self.console.is_none()
    }
}

/// Where metrics go (`OTEL_METRICS_EXPORTER`): any of OTLP, a Prometheus text endpoint and the
/// console, or none of them.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// To an OTLP endpoint, every [`MetricsConfig::interval`].
    pub otlp: Option<OtlpConfig>,
    /// Served as Prometheus text on `/metrics`.
    pub prometheus: bool,
    /// Printed to standard output every interval.
    pub console: bool,
    /// Time between two pushes (`OTEL_METRIC_EXPORT_INTERVAL`, milliseconds; 60 s).
    pub interval: Duration,
}

impl MetricsConfig {
    /// No metrics at all: instruments cost next to nothing.
    pub const NONE: MetricsConfig = MetricsConfig {
        otlp: None,
        prometheus: false,
        console: false,
        interval: DEFAULT_METRIC_EXPORT_INTERVAL,
    };

    /// Whether no metric is exported nor served.
    pub fn is_none(&self) -> bool {
        self.otlp.is_none() && !self.prometheus && !self.console
    }
}

/// The default of `OTEL_METRIC_EXPORT_INTERVAL`, as in the OpenTelemetry specification.
pub const DEFAULT_METRIC_EXPORT_INTERVAL: Duration = Duration::from_secs(60);
/// A PEM file named by a variable, read and checked at startup. `Debug` shows the path only
/// (a key file's contents are a secret).
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    /// The variable that named the file.
    pub var: &'static str,
    /// Where it was read from.
    pub path: PathBuf,
    /// Its contents.
    pub pem: Vec<u8>,
}

impl std::fmt::Debug for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemFile")
            .field("var", &self.var)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PemFile {
    fn read(var: &'static str, path: &str) -> Result<Self, ConfigError> {
        let path = path.trim();
        let pem = std::fs::read(path)
            .map_err(|e| ConfigError::new(var, path, format!("cannot read the file: {e}")))?;
        Ok(PemFile {
            var,
            path: PathBuf::from(path),
            pem,
        })
    }

    /// The certificates in the file.
    ///
    /// # Errors
    /// When the file holds no PEM certificate or a malformed one.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let bad =
            |reason: String| ConfigError::new(self.var, &self.path.display().to_string(), reason);
        let certs = CertificateDer::pem_slice_iter(&self.pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(bad("the file holds no PEM certificate".into()));
        }
        Ok(certs)
    }

    /// The private key in the file.
    ///
    /// # Errors
    /// When the file holds no PEM private key.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, ConfigError> {
        PrivateKeyDer::from_pem_slice(&self.pem).map_err(|e| {
            ConfigError::new(
                self.var,
                &self.path.display().to_string(),
                format!("the file holds no PEM private key: {e}"),
            )
        })
    }
}

/// A client certificate and its key, for collectors that require mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`: the certificate chain.
    pub cert: PemFile,
    /// `OTEL_EXPORTER_OTLP_CLIENT_KEY`: its private key.
    pub key: PemFile,
}

/// TLS settings of the OTLP exporter. The system's and the bundled public roots are always
/// trusted; a custom CA is trusted in addition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: a CA to trust in addition to the public roots.
    pub ca: Option<PemFile>,
    /// The client certificate and key, for mutual TLS.
    pub identity: Option<ClientIdentity>,
}

/// OTLP exporter settings.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// Full URL the exporter sends to (for HTTP, including `/v1/traces` or `/v1/metrics`).
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// Extra headers (e.g. authentication for a hosted backend).
    pub headers: BTreeMap<String, String>,
    /// Timeout of one export request.
    pub timeout: Duration,
    /// Whether requests are gzip-compressed.
    pub gzip: bool,
    /// TLS settings, used for `https` endpoints.
    pub tls: TlsFiles,
}

/// Which spans are sampled (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerConfig {
    /// Every span.
    AlwaysOn,
    /// No span.
    AlwaysOff,
    /// A fraction of traces by trace id.
    TraceIdRatio(f64),
    /// Follow the parent's decision; roots always sampled (default).
    ParentBasedAlwaysOn,
    /// Follow the parent's decision; roots never sampled.
    ParentBasedAlwaysOff,
    /// Follow the parent's decision; roots by ratio.
    ParentBasedTraceIdRatio(f64),
}

/// Settings of the batch export pipeline (`OTEL_BSP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Spans held at most while waiting for export; beyond it spans are dropped and counted.
    pub max_queue_size: usize,
    /// Longest wait before a partial batch is sent.
    pub scheduled_delay: Duration,
    /// Spans per export request.
    pub max_export_batch_size: usize,
    /// Export requests in flight at once.
    pub max_concurrent_exports: usize,
    /// Time limit of one export request.
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        // A deeper queue and concurrent exports than the SDK's defaults (2048, one at a time):
        // a busy API produces tens of thousands of spans per second and none may be lost while
        // the collector keeps up. 8k spans are enough for that (none dropped at 50k requests
        // per second), and bound what a collector outage holds to about 10 MiB per process;
        // 32k held about 30 MiB. Four exports in flight: a batch in flight holds only its
        // encoded bytes, and with two a collector starved of CPU for a moment let a worker's
        // queue (50k spans/s) overflow.
        BatchConfig {
            max_queue_size: 8_192,
            scheduled_delay: Duration::from_millis(1000),
            max_export_batch_size: 1024,
            max_concurrent_exports: 4,
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// Limits applied to every span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`
    pub max_attributes_per_span: u32,
    /// `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` (bytes)
    pub max_attribute_value_len: usize,
    /// `OTEL_SPAN_EVENT_COUNT_LIMIT`
    pub max_events_per_span: u32,
    /// `OTEL_SPAN_LINK_COUNT_LIMIT`
    pub max_links_per_span: u32,
    /// `OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT` (else `OTEL_ATTRIBUTE_COUNT_LIMIT`)
    pub max_attributes_per_event: u32,
    /// `OTEL_LINK_ATTRIBUTE_COUNT_LIMIT` (else `OTEL_ATTRIBUTE_COUNT_LIMIT`)
    pub max_attributes_per_link: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_attributes_per_span: 128,
            max_attribute_value_len: DEFAULT_MAX_VALUE_LEN,
            max_events_per_span: 128,
            max_links_per_span: 128,
            max_attributes_per_event: 128,
            max_attributes_per_link: 128,
        }
    }
}

/// What to do with a trace context that arrives on an inbound request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundPolicy {
    /// Continue the caller's trace (default).
    Continue,
    /// Start a new trace and link to the caller's span (for public endpoints).
    NewTraceWithLink,
}

/// Sentry settings (`SENTRY_DSN`, `JOBPILOT_SENTRY_SAMPLE_RATE`). Sentry receives errors only:
/// performance data (traces) goes to the OTLP backend.
#[derive(Clone, Debug, PartialEq)]
pub struct SentryConfig {
    /// The DSN events go to.
    pub dsn: String,
    /// Fraction of errors sent (1.0).
    pub sample_rate: f32,
}

/// Everything telemetry needs, parsed and validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// `service.name`; `None` lets the process choose (`jobpilot-api`, `jobpilot-worker`).
    pub service_name: Option<String>,
    /// Extra resource attributes (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: BTreeMap<String, String>,
    /// Deployment environment.
    pub environment: Environment,
    /// Where spans go.
    pub exporters: TraceExporters,
    /// Where metrics go.
    pub metrics: MetricsConfig,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Batch pipeline.
    pub batch: BatchConfig,
    /// Span limits.
    pub limits: LimitsConfig,
    /// Which headers carry the trace context and baggage in and out (`OTEL_PROPAGATORS`).
    pub propagators: Propagators,
    /// Inbound trace context policy (`JOBPILOT_INBOUND_TRACE`).
    pub inbound: InboundPolicy,
    /// Whether a caller's `baggage` is kept and travels with its runs
    /// (`JOBPILOT_PROPAGATE_INBOUND_BAGGAGE`, default off: at a public edge any caller could
    /// otherwise put up to 8 KiB into every task).
    pub inbound_baggage: bool,
    /// URL paths never traced (`JOBPILOT_TRACE_EXCLUDED_URLS`).
    pub excluded_paths: Vec<String>,
    /// Sentry, when `SENTRY_DSN` is set.
    pub sentry: Option<SentryConfig>,
}

fn parse_bool(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::new(var, value, "expected true or false")),
    }
}

fn parse_number<T: std::str::FromStr>(var: &'static str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(var, value, "expected a non-negative integer"))
}

fn parse_positive(var: &'static str, value: &str) -> Result<usize, ConfigError> {
    match parse_number::<usize>(var, value)? {
        0 => Err(ConfigError::new(var, value, "must be greater than 0")),
        n => Ok(n),
    }
}

fn parse_ratio(var: &'static str, value: &str) -> Result<f64, ConfigError> {
    match value.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(ConfigError::new(
            var,
            value,
            "expected a number from 0 to 1",
        )),
    }
}

fn percent_decode(var: &'static str, s: &str, position: usize) -> Result<String, ConfigError> {
    let bytes = crate::percent::decode(s).ok_or_else(|| {
        ConfigError::new(
            var,
            s,
            format!("member {position} has a bad percent-encoding"),
        )
    })?;
    String::from_utf8(bytes).map_err(|_| {
        ConfigError::new(
            var,
            s,
            format!("member {position} is not UTF-8 after decoding"),
        )
    })
}

/// Parses a `key=value,key2=value2` list (percent-decoded), as in `OTEL_RESOURCE_ATTRIBUTES`
/// and `OTEL_EXPORTER_OTLP_HEADERS`.
///
/// # Errors
/// When a member has no `=` or an empty key. The error names a member by its position (from
/// 1), never by its text: the members of `OTEL_EXPORTER_OTLP_HEADERS` are credentials.
pub fn parse_key_values(
    var: &'static str,
    value: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut map = BTreeMap::new();
    let members = value.split(',').map(str::trim).filter(|m| !m.is_empty());
    for (i, member) in members.enumerate() {
        let position = i + 1;
        let (k, v) = member
            .split_once('=')
            .ok_or_else(|| ConfigError::new(var, value, format!("member {position} has no '='")))?;
        let k = percent_decode(var, k.trim(), position)?;
        if k.is_empty() {
            return Err(ConfigError::new(
                var,
                value,
                format!("member {position} has an empty key"),
            ));
        }
        map.insert(k, percent_decode(var, v.trim(), position)?);
    }
    Ok(map)
}

/// An `http(s)://host…` URL that the HTTP stack will accept (checked here, so that a bad one is
/// reported by its variable rather than by an exporter quoting it whole).
fn check_url(var: &'static str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| ConfigError::new(var, value, "expected an http:// or https:// URL"))?;
    let uri: http::Uri = v
        .parse()
        .map_err(|_| ConfigError::new(var, value, "not a valid URL"))?;
    if rest.is_empty() || rest.starts_with('/') || uri.host().is_none_or(str::is_empty) {
        return Err(ConfigError::new(var, value, "the URL has no host"));
    }
    Ok(v.to_owned())
}

/// The default paths that are never traced nor measured: liveness, readiness, the API
/// documentation and the metrics scrape.
pub const DEFAULT_EXCLUDED_PATHS: &[&str] =
    &["/health", "/ready", "/docs", "/openapi.json", "/metrics"];

/// The OTLP variables of one signal: its own names win over the generic `OTEL_EXPORTER_OTLP_*`
/// ones, so traces and metrics share endpoint, protocol, headers, timeout, compression and TLS
/// unless told otherwise.
struct SignalVars {
    /// The signal's endpoint, used as is.
    endpoint: &'static str,
    protocol: &'static str,
    headers: &'static str,
    timeout: &'static str,
    compression: &'static str,
    insecure: &'static str,
    certificate: &'static str,
    client_certificate: &'static str,
    client_key: &'static str,
    /// What the HTTP exporter appends to a base URL.
    http_path: &'static str,
}

const TRACES: SignalVars = SignalVars {
    endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    compression: "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    insecure: "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
    certificate: "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    client_certificate: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
    client_key: "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    http_path: "/v1/traces",
};

const METRICS: SignalVars = SignalVars {
    endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    headers: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    compression: "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    insecure: "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
    certificate: "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    client_certificate: "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    client_key: "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
    http_path: "/v1/metrics",
};

impl SignalVars {
    /// The signal's variable when set, else the generic one.
    fn pick(
        get: &impl Fn(&str) -> Option<String>,
        own: &'static str,
        generic: &'static str,
    ) -> &'static str {
        if get(own).is_some() { own } else { generic }
    }

    /// The signal's variable when set, else the generic one: `(variable, value)`.
    fn signal_var(
        get: &impl Fn(&str) -> Option<String>,
        own: &'static str,
        generic: &'static str,
    ) -> Option<(&'static str, String)> {
        get(own)
            .map(|v| (own, v))
            .or_else(|| get(generic).map(|v| (generic, v)))
    }

    /// The first endpoint variable set, its value, and whether it is a base URL that needs the
    /// signal path: the signal's own (used as is) > `OTEL_EXPORTER_ENDPOINT` (jobpilot's
    /// name) > `OTEL_EXPORTER_OTLP_ENDPOINT`.
    fn endpoint_from(
        &self,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Option<(&'static str, String, bool)> {
        [
            (self.endpoint, false),
            ("OTEL_EXPORTER_ENDPOINT", true),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", true),
        ]
        .into_iter()
        .find_map(|(var, base)| get(var).map(|v| (var, v, base)))
    }

    fn otlp_from(&self, get: &impl Fn(&str) -> Option<String>) -> Result<OtlpConfig, ConfigError> {
        let protocol_var = Self::pick(get, self.protocol, "OTEL_EXPORTER_OTLP_PROTOCOL");
        let protocol = match get(protocol_var).as_deref().map(str::trim) {
            None | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("http/json") => Protocol::HttpJson,
            Some(other) => {
                return Err(ConfigError::new(
                    protocol_var,
                    other,
                    "expected grpc, http/protobuf or http/json",
                ));
            }
        };

        let insecure = match Self::signal_var(get, self.insecure, "OTEL_EXPORTER_OTLP_INSECURE") {
            Some((var, v)) => parse_bool(var, &v)?,
            None => false,
        };
        let endpoint = match self.endpoint_from(get) {
            Some((var, value, base)) => {
                let value = value.trim();
                // A gRPC endpoint may be given as `host:port`; `insecure` then chooses plain
                // text over TLS (an explicit scheme always wins).
                let has_scheme = value.starts_with("http://") || value.starts_with("https://");
                let value = match protocol {
                    Protocol::Grpc
                        if !has_scheme && !value.contains("://") && value.contains(':') =>
                    {
                        let scheme = if insecure { "http" } else { "https" };
                        format!("{scheme}://{value}")
                    }
                    _ => value.to_owned(),
                };
                let url = check_url(var, &value)?;
                match (protocol.is_http(), base) {
                    (true, true) => {
                        format!("{}{}", url.trim_end_matches('/'), self.http_path)
                    }
                    _ => url,
                }
            }
            None => match protocol {
                Protocol::Grpc => "http://localhost:4317".to_owned(),
                Protocol::HttpProtobuf | Protocol::HttpJson => {
                    format!("http://localhost:4318{}", self.http_path)
                }
            },
        };

        let headers_var = Self::pick(get, self.headers, "OTEL_EXPORTER_OTLP_HEADERS");
        let headers = match get(headers_var) {
            Some(v) => parse_key_values(headers_var, &v)?,
            None => BTreeMap::new(),
        };
        // Neither names nor values are quoted: a mangled member can be half a credential.
        for (name, value) in &headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::secret(
                    headers_var,
                    "a header name is not a valid HTTP header name",
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::secret(
                    headers_var,
                    "a header value holds characters not allowed in HTTP",
                ));
            }
        }

        let timeout_var = Self::pick(get, self.timeout, "OTEL_EXPORTER_OTLP_TIMEOUT");
        let timeout = match get(timeout_var) {
            Some(v) => Duration::from_millis(parse_positive(timeout_var, &v)? as u64),
            None => Duration::from_secs(10),
        };

        let compression_var = Self::pick(get, self.compression, "OTEL_EXPORTER_OTLP_COMPRESSION");
        let gzip = match get(compression_var).as_deref().map(str::trim) {
            None | Some("none") => false,
            Some("gzip") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    compression_var,
                    other,
                    "expected gzip or none",
                ));
            }
        };

        let tls = self.tls_from(get)?;

        Ok(OtlpConfig {
            endpoint,
            protocol,
            headers,
            timeout,
            gzip,
            tls,
        })
    }

    fn tls_from(&self, get: &impl Fn(&str) -> Option<String>) -> Result<TlsFiles, ConfigError> {
        let file = |own, generic| {
            Self::signal_var(get, own, generic)
                .map(|(var, path)| PemFile::read(var, &path))
                .transpose()
        };
        let ca = file(self.certificate, "OTEL_EXPORTER_OTLP_CERTIFICATE")?;
        if let Some(ca) = &ca {
            ca.certificates()?;
        }
        let cert = file(
            self.client_certificate,
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        )?;
        let key = file(self.client_key, "OTEL_EXPORTER_OTLP_CLIENT_KEY")?;
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), None) => {
                return Err(ConfigError::new(
                    cert.var,
                    &cert.path.display().to_string(),
                    "a client certificate needs OTEL_EXPORTER_OTLP_CLIENT_KEY too",
                ));
            }
            (None, Some(key)) => {
                return Err(ConfigError::new(
                    key.var,
                    &key.path.display().to_string(),
                    "a client key needs OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE too",
                ));
            }
            (Some(cert), Some(key)) => {
                cert.certificates()?;
                key.private_key()?;
                Some(ClientIdentity { cert, key })
            }
        };
        Ok(TlsFiles { ca, identity })
    }
}

impl TelemetryConfig {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `lookup` (so tests never touch the process environment).
    /// Empty values count as unset.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());

        let environment = match get("JOBPILOT_ENV") {
            Some(v) => Environment::parse(&v)?,
            None => Environment::Development,
        };
        let disabled = match get("OTEL_SDK_DISABLED") {
            Some(v) => parse_bool("OTEL_SDK_DISABLED", &v)?,
            None => false,
        };

        let (exporters, metrics) = if disabled {
            (TraceExporters::NONE, MetricsConfig::NONE)
        } else {
            (Self::exporters_from(&get)?, Self::metrics_from(&get)?)
        };

        let sampler = Self::sampler_from(&get)?;

        let mut batch = BatchConfig::default();
        if let Some(v) = get("OTEL_BSP_MAX_QUEUE_SIZE") {
            batch.max_queue_size = parse_positive("OTEL_BSP_MAX_QUEUE_SIZE", &v)?;
        }
        if let Some(v) = get("OTEL_BSP_SCHEDULE_DELAY") {
            batch.scheduled_delay =
                Duration::from_millis(parse_number("OTEL_BSP_SCHEDULE_DELAY", &v)?);
        }
        if let Some(v) = get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
            batch.max_export_batch_size = parse_positive("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", &v)?;
        }
        if let Some(v) = get("OTEL_BSP_EXPORT_TIMEOUT") {
            batch.export_timeout =
                Duration::from_millis(parse_number("OTEL_BSP_EXPORT_TIMEOUT", &v)?);
        }
        if let Some(v) = get("OTEL_BSP_MAX_CONCURRENT_EXPORTS") {
            batch.max_concurrent_exports = parse_positive("OTEL_BSP_MAX_CONCURRENT_EXPORTS", &v)?;
        }
        if batch.max_export_batch_size > batch.max_queue_size {
            batch.max_export_batch_size = batch.max_queue_size;
        }

        let mut limits = LimitsConfig::default();
        if let Some(v) = get("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT") {
            limits.max_attributes_per_span = parse_number("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", &v)?;
        } else if let Some(v) = get("OTEL_ATTRIBUTE_COUNT_LIMIT") {
            limits.max_attributes_per_span = parse_number("OTEL_ATTRIBUTE_COUNT_LIMIT", &v)?;
        }
        if let Some(v) = get("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT") {
            limits.max_attribute_value_len =
                parse_positive("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", &v)?;
        } else if let Some(v) = get("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT") {
            limits.max_attribute_value_len =
                parse_positive("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", &v)?;
        }
        if let Some(v) = get("OTEL_SPAN_EVENT_COUNT_LIMIT") {
            limits.max_events_per_span = parse_number("OTEL_SPAN_EVENT_COUNT_LIMIT", &v)?;
        }
        if let Some(v) = get("OTEL_SPAN_LINK_COUNT_LIMIT") {
            limits.max_links_per_span = parse_number("OTEL_SPAN_LINK_COUNT_LIMIT", &v)?;
        }
        // The per-kind limit wins over the general one, which wins over the default.
        let general = get("OTEL_ATTRIBUTE_COUNT_LIMIT")
            .map(|v| parse_number::<u32>("OTEL_ATTRIBUTE_COUNT_LIMIT", &v))
            .transpose()?;
        limits.max_attributes_per_event = match get("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT") {
            Some(v) => parse_number("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", &v)?,
            None => general.unwrap_or(limits.max_attributes_per_event),
        };
        limits.max_attributes_per_link = match get("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT") {
            Some(v) => parse_number("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", &v)?,
            None => general.unwrap_or(limits.max_attributes_per_link),
        };

        let propagators = match get("OTEL_PROPAGATORS") {
            None => Propagators::W3C,
            Some(v) => Propagators::parse("OTEL_PROPAGATORS", &v)?,
        };

        let inbound = match get("JOBPILOT_INBOUND_TRACE").as_deref().map(str::trim) {
            None | Some("continue") => InboundPolicy::Continue,
            Some("new_trace") | Some("link") | Some("new_trace_with_link") => {
                InboundPolicy::NewTraceWithLink
            }
            Some(other) => {
                return Err(ConfigError::new(
                    "JOBPILOT_INBOUND_TRACE",
                    other,
                    "expected continue or new_trace",
                ));
            }
        };

        let inbound_baggage = match get("JOBPILOT_PROPAGATE_INBOUND_BAGGAGE") {
            Some(v) => parse_bool("JOBPILOT_PROPAGATE_INBOUND_BAGGAGE", &v)?,
            None => false,
        };

        let excluded_paths = match get("JOBPILOT_TRACE_EXCLUDED_URLS") {
            None => DEFAULT_EXCLUDED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Some(v) => {
                let paths: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
                    return Err(ConfigError::new(
                        "JOBPILOT_TRACE_EXCLUDED_URLS",
                        &v,
                        format!("path {bad:?} does not start with '/'"),
                    ));
                }
                paths
            }
        };

        let resource_attributes = match get("OTEL_RESOURCE_ATTRIBUTES") {
            Some(v) => parse_key_values("OTEL_RESOURCE_ATTRIBUTES", &v)?,
            None => BTreeMap::new(),
        };

        let sentry = match get("SENTRY_DSN") {
            None => None,
            Some(dsn) => {
                let dsn = dsn.trim().to_owned();
                if dsn.parse::<sentry::types::Dsn>().is_err() {
                    return Err(ConfigError::secret(
                        "SENTRY_DSN",
                        "not a valid DSN; expected https://PUBLIC_KEY@HOST/PROJECT_ID",
                    ));
                }
                let sample_rate = match get("JOBPILOT_SENTRY_SAMPLE_RATE") {
                    Some(v) => parse_ratio("JOBPILOT_SENTRY_SAMPLE_RATE", &v)? as f32,
                    None => 1.0,
                };
                Some(SentryConfig { dsn, sample_rate })
            }
        };

        Ok(TelemetryConfig {
            service_name: get("OTEL_SERVICE_NAME").map(|s| s.trim().to_owned()),
            resource_attributes,
            environment,
            exporters,
            metrics,
            sampler,
            batch,
            limits,
            propagators,
            inbound,
            inbound_baggage,
            excluded_paths,
            sentry,
        })
    }

    fn exporters_from(
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<TraceExporters, ConfigError> {
        let console_format = match get("JOBPILOT_CONSOLE_FORMAT").as_deref().map(str::trim) {
            None | Some("pretty") | Some("text") => ConsoleFormat::Pretty,
            Some("json") => ConsoleFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    "JOBPILOT_CONSOLE_FORMAT",
                    other,
                    "expected pretty or json",
                ));
            }
        };

        let kinds = match get("OTEL_TRACES_EXPORTER") {
            Some(v) => parse_exporter_list(
                "OTEL_TRACES_EXPORTER",
                &v,
                &[ExporterKind::Otlp, ExporterKind::Console],
            )?,
            None if TRACES.endpoint_from(get).is_some() => vec![ExporterKind::Otlp],
            None => vec![ExporterKind::Console],
        };
        let console = kinds
            .contains(&ExporterKind::Console)
            .then_some(console_format);
        let otlp = match kinds.contains(&ExporterKind::Otlp) {
            true => Some(TRACES.otlp_from(get)?),
            false => None,
        };
        Ok(TraceExporters { otlp, console })
    }

    /// `OTEL_METRICS_EXPORTER` (default: `prometheus`, plus `otlp` when an OTLP endpoint is
    /// configured) and `OTEL_METRIC_EXPORT_INTERVAL`.
    fn metrics_from(get: &impl Fn(&str) -> Option<String>) -> Result<MetricsConfig, ConfigError> {
        let kinds = match get("OTEL_METRICS_EXPORTER") {
            Some(v) => parse_exporter_list(
                "OTEL_METRICS_EXPORTER",
                &v,
                &[
                    ExporterKind::Otlp,
                    ExporterKind::Prometheus,
                    ExporterKind::Console,
                ],
            )?,
            None if METRICS.endpoint_from(get).is_some() => {
                vec![ExporterKind::Prometheus, ExporterKind::Otlp]
            }
            None => vec![ExporterKind::Prometheus],
        };
        let interval = match get("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(v) => {
                Duration::from_millis(parse_positive("OTEL_METRIC_EXPORT_INTERVAL", &v)? as u64)
            }
            None => DEFAULT_METRIC_EXPORT_INTERVAL,
        };
        let otlp = match kinds.contains(&ExporterKind::Otlp) {
            true => Some(METRICS.otlp_from(get)?),
            false => None,
        };
        Ok(MetricsConfig {
            otlp,
            prometheus: kinds.contains(&ExporterKind::Prometheus),
            console: kinds.contains(&ExporterKind::Console),
            interval,
        })
    }

    fn sampler_from(get: &impl Fn(&str) -> Option<String>) -> Result<SamplerConfig, ConfigError> {
        let arg = |default: f64| -> Result<f64, ConfigError> {
            match get("OTEL_TRACES_SAMPLER_ARG") {
                Some(v) => parse_ratio("OTEL_TRACES_SAMPLER_ARG", &v),
                None => Ok(default),
            }
        };
        Ok(match get("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
            None | Some("parentbased_always_on") => SamplerConfig::ParentBasedAlwaysOn,
            Some("always_on") => SamplerConfig::AlwaysOn,
            Some("always_off") => SamplerConfig::AlwaysOff,
            Some("traceidratio") => SamplerConfig::TraceIdRatio(arg(1.0)?),
            Some("parentbased_always_off") => SamplerConfig::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => SamplerConfig::ParentBasedTraceIdRatio(arg(1.0)?),
            Some(other) => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER",
                    other,
                    "expected always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                ));
            }
        })
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self::from_lookup(|_| None).unwrap_or_else(|_| unreachable!("defaults are valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<TelemetryConfig, ConfigError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetryConfig::from_lookup(|k| map.get(k).cloned())
    }

    fn otlp(vars: &[(&str, &str)]) -> OtlpConfig {
        match config(vars).unwrap().exporters {
            TraceExporters {
                otlp: Some(o),
                console: None,
            } => o,
            other => panic!("expected OTLP alone, got {other:?}"),
        }
    }

    fn console_only(format: ConsoleFormat) -> TraceExporters {
        TraceExporters {
            otlp: None,
            console: Some(format),
        }
    }

    #[test]
    fn no_endpoint_selects_the_pretty_console() {
        assert_eq!(
            config(&[]).unwrap().exporters,
            console_only(ConsoleFormat::Pretty)
        );
    }

    #[test]
    fn console_format_json_is_selectable() {
        assert_eq!(
            config(&[("JOBPILOT_CONSOLE_FORMAT", "json")])
                .unwrap()
                .exporters,
            console_only(ConsoleFormat::Json)
        );
    }

    #[test]
    fn the_original_endpoint_variable_selects_grpc_otlp() {
        let o = otlp(&[("OTEL_EXPORTER_ENDPOINT", "http://127.0.0.1:4317")]);
        assert_eq!(o.endpoint, "http://127.0.0.1:4317");
        assert_eq!(o.protocol, Protocol::Grpc);
    }

    #[test]
    fn http_protobuf_appends_the_signal_path_to_a_base_endpoint() {
        let o = otlp(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(o.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(o.protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn signal_endpoint_wins_and_is_used_as_is() {
        let o = otlp(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://a:4318/custom"),
            ("OTEL_EXPORTER_ENDPOINT", "http://b:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(o.endpoint, "http://a:4318/custom");
    }

    #[test]
    fn original_endpoint_variable_wins_over_the_generic_one() {
        let o = otlp(&[
            ("OTEL_EXPORTER_ENDPOINT", "http://b:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ]);
        assert_eq!(o.endpoint, "http://b:4317");
    }

    #[test]
    fn empty_endpoint_counts_as_unset() {
        assert_eq!(
            config(&[("OTEL_EXPORTER_ENDPOINT", "")]).unwrap().exporters,
            console_only(ConsoleFormat::Pretty)
        );
    }

    #[test]
    fn sdk_disabled_and_exporter_none_turn_export_off() {
        let with_endpoint = ("OTEL_EXPORTER_ENDPOINT", "http://127.0.0.1:4317");
        assert_eq!(
            config(&[with_endpoint, ("OTEL_SDK_DISABLED", "true")])
                .unwrap()
                .exporters,
            TraceExporters::NONE
        );
        assert_eq!(
            config(&[with_endpoint, ("OTEL_TRACES_EXPORTER", "none")])
                .unwrap()
                .exporters,
            TraceExporters::NONE
        );
    }

    #[test]
    fn exporter_console_overrides_an_endpoint() {
        assert_eq!(
            config(&[
                ("OTEL_EXPORTER_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_TRACES_EXPORTER", "console")
            ])
            .unwrap()
            .exporters,
            console_only(ConsoleFormat::Pretty)
        );
    }

    #[test]
    fn the_exporter_variable_takes_a_list() {
        let with_endpoint = ("OTEL_EXPORTER_ENDPOINT", "http://127.0.0.1:4317");
        let both = config(&[with_endpoint, ("OTEL_TRACES_EXPORTER", "otlp, console")])
            .unwrap()
            .exporters;
        assert!(both.otlp.is_some());
        assert_eq!(both.console, Some(ConsoleFormat::Pretty));
        let repeated = config(&[("OTEL_TRACES_EXPORTER", "console,console")])
            .unwrap()
            .exporters;
        assert_eq!(repeated, console_only(ConsoleFormat::Pretty));
        // No endpoint but OTLP asked for: the OTLP default endpoint.
        let default = config(&[("OTEL_TRACES_EXPORTER", "otlp")])
            .unwrap()
            .exporters;
        assert_eq!(default.otlp.unwrap().endpoint, "http://localhost:4317");
    }

    #[test]
    fn exporter_lists_are_parsed_into_kinds() {
        let all = [ExporterKind::Otlp, ExporterKind::Console];
        let parse = |v: &str| parse_exporter_list("OTEL_TRACES_EXPORTER", v, &all);
        assert_eq!(parse("otlp").unwrap(), vec![ExporterKind::Otlp]);
        assert_eq!(
            parse("Console,otlp").unwrap(),
            vec![ExporterKind::Console, ExporterKind::Otlp]
        );
        assert_eq!(parse("none").unwrap(), vec![]);
        for bad in ["zipkin", "otlp,none", ",", "otlp,jaeger"] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err.var, "OTEL_TRACES_EXPORTER");
        }
        let only_otlp = parse_exporter_list("OTEL_METRICS_EXPORTER", "console", &all[..1]);
        assert!(only_otlp.unwrap_err().reason.contains("otlp"));
    }

    #[test]
    fn metrics_default_to_prometheus_and_add_otlp_with_an_endpoint() {
        let m = config(&[]).unwrap().metrics;
        assert!(m.prometheus && m.otlp.is_none() && !m.console);
        assert_eq!(m.interval, DEFAULT_METRIC_EXPORT_INTERVAL);
        let m = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=t1"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ])
        .unwrap()
        .metrics;
        let otlp = m.otlp.unwrap();
        assert_eq!(otlp.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(otlp.headers["x-tenant"], "t1");
        assert!(otlp.gzip && m.prometheus);
    }

    #[test]
    fn the_metrics_endpoint_and_interval_are_their_own() {
        let c = config(&[
            ("OTEL_EXPORTER_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://metrics:4317"),
            ("OTEL_METRICS_EXPORTER", "otlp,console"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
        ])
        .unwrap();
        assert_eq!(c.exporters.otlp.unwrap().endpoint, "http://traces:4317");
        let m = c.metrics;
        assert_eq!(m.otlp.unwrap().endpoint, "http://metrics:4317");
        assert!(m.console && !m.prometheus);
        assert_eq!(m.interval, Duration::from_millis(1500));
        assert!(
            config(&[("OTEL_METRICS_EXPORTER", "none")])
                .unwrap()
                .metrics
                .is_none()
        );
        assert!(
            config(&[("OTEL_SDK_DISABLED", "true")])
                .unwrap()
                .metrics
                .is_none()
        );
    }

    #[test]
    fn metrics_share_the_trace_protocol_and_tls_settings_unless_told_otherwise() {
        let m = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .unwrap()
        .metrics;
        let otlp = m.otlp.unwrap();
        assert_eq!(otlp.protocol, Protocol::HttpJson);
        assert_eq!(otlp.endpoint, "http://collector:4318/v1/metrics");
        let m = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "true"),
        ])
        .unwrap();
        assert_eq!(m.exporters.otlp.unwrap().endpoint, "https://collector:4317");
        assert_eq!(m.metrics.otlp.unwrap().endpoint, "http://collector:4317");

        let dir = std::env::temp_dir().join(format!("jobpilot-metrics-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = junk.to_str().unwrap();
        let endpoint = ("OTEL_EXPORTER_ENDPOINT", "https://collector:4317");
        let err =
            config(&[endpoint, ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", junk)]).unwrap_err();
        assert_eq!(err.var, "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "{err}");
        let err = config(&[endpoint, ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", junk)]).unwrap_err();
        assert_eq!(err.var, "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prometheus_is_a_metrics_exporter_only() {
        let err = config(&[("OTEL_TRACES_EXPORTER", "prometheus")]).unwrap_err();
        assert_eq!(err.var, "OTEL_TRACES_EXPORTER");
        for (var, value) in [
            ("OTEL_METRICS_EXPORTER", "statsd"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ] {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{err}");
        }
    }

    #[test]
    fn headers_timeout_and_compression_are_read() {
        let o = otlp(&[
            ("OTEL_EXPORTER_ENDPOINT", "https://cloud.example:443"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Basic%20abc,x-tenant=t1",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]);
        assert_eq!(o.headers["Authorization"], "Basic abc");
        assert_eq!(o.headers["x-tenant"], "t1");
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert!(o.gzip);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let cases: &[(&str, &str)] = &[
            ("OTEL_EXPORTER_ENDPOINT", "ftp://localhost:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
                "/nonexistent/key.pem",
            ),
            ("OTEL_EXPORTER_OTLP_INSECURE", "perhaps"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
            ("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "many"),
            ("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", "-1"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_SDK_DISABLED", "maybe"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
            ("OTEL_PROPAGATORS", "jaeger"),
            ("JOBPILOT_ENV", "qa"),
            ("JOBPILOT_INBOUND_TRACE", "ignore"),
            ("JOBPILOT_CONSOLE_FORMAT", "xml"),
            ("SENTRY_DSN", "not a url"),
        ];
        for (var, value) in cases {
            let mut vars = vec![(*var, *value)];
            if var.starts_with("OTEL_EXPORTER_OTLP") {
                vars.push(("OTEL_EXPORTER_ENDPOINT", "http://127.0.0.1:4317"));
            }
            if *var == "OTEL_TRACES_SAMPLER_ARG" {
                vars.push(("OTEL_TRACES_SAMPLER", "traceidratio"));
            }
            let err = config(&vars).expect_err(var);
            assert_eq!(err.var, *var, "{err}");
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn errors_never_show_a_secret_value() {
        let cases: &[(&str, &str)] = &[
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Bearer SEKRET,broken",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=SEKRET%ZZ"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "bad name SEKRET=v"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=SEKRET%0A"),
            ("SENTRY_DSN", "SEKRET"),
            ("SENTRY_DSN", "http://SEKRET@/1"),
            (
                "OTEL_EXPORTER_ENDPOINT",
                "collector:4317?token=SEKRET&x=a b",
            ),
            ("OTEL_EXPORTER_ENDPOINT", "http://u:SEKRET@/v1"),
            ("OTEL_EXPORTER_ENDPOINT", "http://u:SEKRET@[::1:4317"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "ftp://u:SEKRET@host/?k=SEKRET",
            ),
        ];
        for (var, value) in cases {
            let mut vars = vec![(*var, *value)];
            if var.ends_with("HEADERS") {
                vars.push(("OTEL_EXPORTER_ENDPOINT", "http://127.0.0.1:4317"));
            }
            let err = config(&vars).expect_err(value);
            assert_eq!(err.var, *var, "{err}");
            assert!(!err.to_string().contains("SEKRET"), "{err}");
        }
    }

    #[test]
    fn shown_values_are_masked_and_clipped() {
        let err = ConfigError::new("REDIS_URL", "redis://user:pw@host:6379/0?password=x", "bad");
        assert_eq!(err.shown_value(), Some("redis://***@host:6379/0?***"));
        let err = ConfigError::new("X", "pw@host", "bad");
        assert_eq!(err.shown_value(), Some("***@host"));
        let err = ConfigError::new("X", &"a".repeat(1000), "bad");
        assert!(err.to_string().len() < 100, "{err}");
        let err = ConfigError::new("JOBPILOT_LLM_API_KEY", "sk-1", "bad");
        assert_eq!(err.shown_value(), None);
        assert_eq!(err.to_string(), "invalid JOBPILOT_LLM_API_KEY: bad");
        let err = ConfigError::new("OTEL_TRACES_SAMPLER", "sometimes", "bad");
        assert_eq!(
            err.to_string(),
            "invalid OTEL_TRACES_SAMPLER=\"sometimes\": bad"
        );
    }

    #[test]
    fn a_grpc_endpoint_without_scheme_uses_tls_unless_insecure() {
        let o = otlp(&[("OTEL_EXPORTER_ENDPOINT", "collector:4317")]);
        assert_eq!(o.endpoint, "https://collector:4317");
        let o = otlp(&[
            ("OTEL_EXPORTER_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ]);
        assert_eq!(o.endpoint, "http://collector:4317");
        let o = otlp(&[
            ("OTEL_EXPORTER_ENDPOINT", "https://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "true"),
        ]);
        assert_eq!(
            o.endpoint, "https://collector:4317",
            "an explicit scheme wins"
        );
    }

    #[test]
    fn certificate_files_that_are_not_pem_name_their_variable() {
        let dir = std::env::temp_dir().join(format!("jobpilot-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = junk.to_str().unwrap();
        let endpoint = ("OTEL_EXPORTER_ENDPOINT", "https://collector:4317");
        for var in [
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        ] {
            let err = config(&[endpoint, (var, junk)]).unwrap_err();
            assert_eq!(err.var, var, "{err}");
        }
        let err = config(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", junk),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", junk),
        ])
        .unwrap_err();
        assert_eq!(err.var, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "{err}");
        let err = config(&[endpoint, ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", junk)]).unwrap_err();
        assert!(
            err.reason.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn event_and_link_attribute_limits_have_their_own_variables() {
        let limits = |vars: &[(&str, &str)]| config(vars).unwrap().limits;
        let l = limits(&[]);
        assert_eq!(
            (l.max_attributes_per_event, l.max_attributes_per_link),
            (128, 128)
        );
        let l = limits(&[
            ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "50"),
            ("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "3"),
            ("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", "4"),
        ]);
        assert_eq!(
            (
                l.max_attributes_per_span,
                l.max_attributes_per_event,
                l.max_attributes_per_link
            ),
            (50, 3, 4)
        );
        let l = limits(&[("OTEL_ATTRIBUTE_COUNT_LIMIT", "7")]);
        assert_eq!(
            (l.max_attributes_per_event, l.max_attributes_per_link),
            (7, 7)
        );
    }

    #[test]
    fn http_json_is_a_protocol() {
        let o = otlp(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]);
        assert_eq!(o.protocol, Protocol::HttpJson);
        assert_eq!(o.endpoint, "http://collector:4318/v1/traces");
    }

    #[test]
    fn sampler_defaults_to_parent_based_always_on() {
        assert_eq!(
            config(&[]).unwrap().sampler,
            SamplerConfig::ParentBasedAlwaysOn
        );
        assert_eq!(
            config(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25")
            ])
            .unwrap()
            .sampler,
            SamplerConfig::ParentBasedTraceIdRatio(0.25)
        );
    }

    #[test]
    fn sentry_takes_a_dsn_and_an_error_sample_rate() {
        let dsn = ("SENTRY_DSN", "http://key@127.0.0.1:9/1");
        let sentry = |vars: &[(&str, &str)]| config(vars).unwrap().sentry.unwrap();
        assert_eq!(sentry(&[dsn]).sample_rate, 1.0);
        assert_eq!(
            sentry(&[dsn, ("JOBPILOT_SENTRY_SAMPLE_RATE", "0.5")]).sample_rate,
            0.5
        );
        assert!(config(&[]).unwrap().sentry.is_none());
    }

    #[test]
    fn excluded_urls_default_to_health_ready_and_docs() {
        let c = config(&[]).unwrap();
        assert!(c.excluded_paths.contains(&"/health".to_owned()));
        assert!(c.excluded_paths.contains(&"/openapi.json".to_owned()));
        let c = config(&[("JOBPILOT_TRACE_EXCLUDED_URLS", "/metrics, /health")]).unwrap();
        assert_eq!(c.excluded_paths, vec!["/metrics", "/health"]);
    }

    #[test]
    fn propagators_are_a_list() {
        let p = |v: &str| config(&[("OTEL_PROPAGATORS", v)]).map(|c| c.propagators);
        assert_eq!(config(&[]).unwrap().propagators, Propagators::W3C);
        assert_eq!(p("none").unwrap(), Propagators::NONE);
        assert_eq!(
            p("tracecontext").unwrap(),
            Propagators {
                tracecontext: true,
                ..Propagators::NONE
            }
        );
        assert_eq!(
            p("b3, B3multi,baggage").unwrap(),
            Propagators {
                baggage: true,
                b3: true,
                b3multi: true,
                ..Propagators::NONE
            }
        );
        for bad in ["jaeger", "none,b3", ",", "xray"] {
            assert_eq!(p(bad).unwrap_err().var, "OTEL_PROPAGATORS", "{bad}");
        }
    }

    #[test]
    fn inbound_baggage_is_dropped_unless_turned_on() {
        assert!(!config(&[]).unwrap().inbound_baggage);
        let on = config(&[("JOBPILOT_PROPAGATE_INBOUND_BAGGAGE", "true")]).unwrap();
        assert!(on.inbound_baggage);
        let err = config(&[("JOBPILOT_PROPAGATE_INBOUND_BAGGAGE", "maybe")]).unwrap_err();
        assert_eq!(err.var, "JOBPILOT_PROPAGATE_INBOUND_BAGGAGE");
    }
}
