//! The SERVER span of every request: started before routing, named `{METHOD} {route}` once the
//! route is known, carrying the stable HTTP semantic-convention attributes, `user_id` when
//! authenticated, and the response status (5xx → ERROR with `error.type`; 4xx leaves it unset).
//!
//! It also writes `traceparent` into every response and the `trace_id` into every error body,
//! and records the request on the HTTP metrics (`http.server.request.duration`,
//! `http.server.active_requests`) with the route template, never the path: a path no route
//! matched counts as [`UNMATCHED_ROUTE`]. Excluded paths (health, readiness, docs, metrics) and
//! everything under them (`/docs/...`: the Swagger UI assets) get no span and no measurement at
//! all.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use futures_util::FutureExt as _;
use jobpilot_telemetry::config::InboundPolicy;
use jobpilot_telemetry::metrics::{HttpRequest, UNMATCHED_ROUTE, known_method};
use jobpilot_telemetry::{AttrValue, Metrics, SpanKind, TraceCx, Tracer, names, redact};

use crate::error::ApiError;

/// How the server span treats requests.
#[derive(Debug, Clone)]
pub struct HttpTracing {
    /// Tracer of the HTTP scope.
    pub tracer: Tracer,
    /// Paths that are never traced.
    pub excluded_paths: Vec<String>,
    /// What to do with an inbound trace context. Which headers carry it is the tracer's
    /// [`Tracer::propagators`].
    pub inbound: InboundPolicy,
    /// The HTTP server instruments.
    pub metrics: Metrics,
    /// Whether the caller's `baggage` is kept (and so stored in the tasks of its runs); when
    /// off, only jobpilot's own context travels.
    pub inbound_baggage: bool,
}

/// The trace of the current request, in the request extensions: handlers start their spans
/// under [`RequestTrace::cx`].
#[derive(Debug, Clone)]
pub struct RequestTrace {
    cx: TraceCx,
    /// One allocation per request for what handlers and the inner middleware fill in.
    shared: Arc<SharedTrace>,
}

#[derive(Debug, Default)]
struct SharedTrace {
    /// Formatted on first use: most requests never show their trace id.
    trace_id: OnceLock<Option<String>>,
    /// Shared by the span's `user_id` and its `user.id`.
    user_id: OnceLock<Arc<str>>,
    route: OnceLock<&'static str>,
}

impl RequestTrace {
    /// The server span's context.
    pub fn cx(&self) -> &TraceCx {
        &self.cx
    }

    /// The trace id, when the request is traced.
    pub fn trace_id(&self) -> Option<&str> {
        self.shared
            .trace_id
            .get_or_init(|| self.cx.trace_id())
            .as_deref()
    }

    /// Records the authenticated user on the server span.
    pub fn set_user(&self, user_id: &str) {
        let _ = self.shared.user_id.set(user_id.into());
    }

    /// A request that is not traced (excluded path).
    fn untraced() -> Self {
        RequestTrace {
            cx: TraceCx::root(),
            shared: Arc::new(SharedTrace {
                trace_id: OnceLock::from(None),
                ..SharedTrace::default()
            }),
        }
    }
}

/// Whether `path` is one of `excluded` or below one of them (`/docs` covers `/docs/index.css`,
/// not `/docsx`).
fn is_excluded(excluded: &[String], path: &str) -> bool {
    excluded.iter().any(|e| {
        path.strip_prefix(e.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || e.ends_with('/'))
    })
}

/// The message of a panic payload (a `&str` or a `String`), for the span.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned())
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The route template as a `&'static str`, so that metric attributes and span names borrow it
/// instead of copying it per request. The set only ever holds the templates of the router,
/// a few dozen strings fixed when it is built, so the leaked memory is bounded.
fn intern_route(template: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(RwLock::default);
    if let Some(known) = routes
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(template)
    {
        return known;
    }
    let mut routes = routes.write().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = routes.get(template) {
        return known;
    }
    let leaked: &'static str = Box::leak(template.to_owned().into_boxed_str());
    routes.insert(leaked);
    leaked
}

/// Records the matched route for the outer middleware (runs after routing, inside the router).
pub async fn record_route(req: Request, next: Next) -> Response<Body> {
    if let (Some(trace), Some(path)) = (
        req.extensions().get::<RequestTrace>(),
        req.extensions().get::<MatchedPath>(),
    ) {
        let _ = trace.shared.route.set(intern_route(path.as_str()));
    }
    next.run(req).await
}

/// The server span middleware (outermost layer).
pub async fn trace_requests(
    State(tracing): State<Arc<HttpTracing>>,
    mut req: Request,
    next: Next,
) -> Response<Body> {
    if is_excluded(&tracing.excluded_paths, req.uri().path()) {
        req.extensions_mut().insert(RequestTrace::untraced());
        return next.run(req).await;
    }

    let started = tracing.metrics.is_recording().then(Instant::now);
    let metric_method = known_method(req.method().as_str());
    let active = tracing.metrics.http_request_started(metric_method, "http");
    // The standard methods are static strings: no copy per request.
    let method: Cow<'static, str> = match req.method().as_str() {
        m if m == metric_method => Cow::Borrowed(metric_method),
        m => Cow::Owned(m.to_owned()),
    };
    // A caller's baggage that is not kept is not even read.
    let mut propagators = tracing.tracer.propagators();
    propagators.baggage &= tracing.inbound_baggage;
    let inbound = propagators.extract_headers(req.headers());
    let (parent, links) = match tracing.inbound {
        InboundPolicy::Continue => (inbound, Vec::new()),
        InboundPolicy::NewTraceWithLink => (TraceCx::root(), vec![inbound]),
    };

    // With telemetry off nothing would read the attributes: they are not even built.
    let attrs = if tracing.tracer.is_recording() {
        request_attributes(&req, method.clone())
    } else {
        Vec::new()
    };
    let span =
        tracing
            .tracer
            .start_linked(&parent, method.clone(), SpanKind::Server, attrs, &links);
    let trace = RequestTrace {
        cx: span.cx(),
        shared: Arc::default(),
    };
    req.extensions_mut().insert(trace.clone());

    // Log lines written while handling the request carry its trace id. A handler that panics
    // answers 500 like any internal error (the connection is not dropped), and Sentry's panic
    // hook, running inside the request's context, reports it with the trace id.
    let handled = std::panic::AssertUnwindSafe(trace.cx.instrument(next.run(req)))
        .catch_unwind()
        .await;
    let (mut response, panic_message) = match handled {
        Ok(response) => (response, None),
        Err(panic) => (
            ApiError::internal().into_response(),
            Some(panic_text(panic.as_ref())),
        ),
    };

    let status = response.status();
    let route = trace.shared.route.get().copied();
    if span.is_recording() {
        if let Some(route) = route {
            let mut name = String::with_capacity(method.len() + 1 + route.len());
            name.push_str(&method);
            name.push(' ');
            name.push_str(route);
            span.rename(name);
            span.set(names::HTTP_ROUTE, route);
        }
        if let Some(user) = trace.shared.user_id.get() {
            span.set(names::USER_ID, user.clone());
        }
        span.set(names::HTTP_RESPONSE_STATUS_CODE, status.as_u16());
    }
    if status.is_server_error() {
        let reason = match &panic_message {
            Some(message) => format!("handler panicked: {message}"),
            None => response
                .extensions()
                .get::<ApiError>()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| status.to_string()),
        };
        let error_type = if panic_message.is_some() {
            "panic"
        } else {
            status.as_str()
        };
        span.fail(error_type, &reason);
        // Sentry groups events by message: the route template makes one issue per route and
        // status, where the path would make one per run id. The path is on the trace that the
        // trace id tag leads to.
        let route = route.unwrap_or(UNMATCHED_ROUTE);
        jobpilot_telemetry::sentry::report_error(
            &format!("{method} {route} answered {status}"),
            trace.trace_id(),
            &[
                ("http.response.status_code", status.as_str()),
                (names::HTTP_ROUTE, route),
            ],
        );
    }

    // Error bodies carry the trace id.
    if let Some(err) = response.extensions().get::<ApiError>().cloned() {
        let trace_id = trace.trace_id().map(str::to_owned);
        let mut rebuilt = (status, axum::Json(err.body(trace_id))).into_response();
        for (name, value) in response.headers() {
            if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
                rebuilt.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response = rebuilt;
    }
    propagators.inject_outbound_headers(&trace.cx, response.headers_mut());
    span.end();
    if let Some(started) = started {
        tracing.metrics.record_http_request(
            &HttpRequest {
                method: metric_method,
                route: route.unwrap_or(UNMATCHED_ROUTE),
                scheme: "http",
                status: status.as_u16(),
                error_type: status.is_server_error().then(|| status.as_str()),
            },
            started.elapsed(),
        );
    }
    drop(active);
    response
}

/// The server span's attributes known before the handler runs.
fn request_attributes(req: &Request, method: Cow<'static, str>) -> Vec<(&'static str, AttrValue)> {
    let headers = req.headers();
    // The span keeps this vector: room for the nine attributes here at most and for the five
    // it may get later (route, `user_id` with its alias `user.id`, status code, and
    // `error.type` on a failure), so that it never grows.
    let mut attrs = Vec::with_capacity(9 + 5);
    attrs.extend([
        (names::HTTP_REQUEST_METHOD, method.into()),
        (names::URL_PATH, req.uri().path().to_owned().into()),
        (names::URL_SCHEME, "http".into()),
        (
            names::NETWORK_PROTOCOL_VERSION,
            match req.version() {
                axum::http::Version::HTTP_10 => "1.0",
                axum::http::Version::HTTP_2 => "2",
                _ => "1.1",
            }
            .into(),
        ),
    ]);
    if let Some(q) = req.uri().query() {
        attrs.push((names::URL_QUERY, redact::redact_query(q).into()));
    }
    if let Some(ua) = header_str(headers, header::USER_AGENT) {
        attrs.push((names::USER_AGENT_ORIGINAL, ua.to_owned().into()));
    }
    if let Some(host) = header_str(headers, header::HOST) {
        let (name, port) = match host.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(port) => (h, Some(port)),
                Err(_) => (host, None),
            },
            None => (host, None),
        };
        attrs.push((names::SERVER_ADDRESS, name.to_owned().into()));
        if let Some(port) = port {
            attrs.push((names::SERVER_PORT, port.into()));
        }
    }
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        attrs.push((names::CLIENT_ADDRESS, ip_text(peer.ip()).into()));
    }
    attrs
}

/// `ip` as `to_string` writes it. An IPv4 address (nearly every client) is written a digit at
/// a time: `Display` takes each of its four numbers through the formatting machinery, about
/// 1,300 instructions on every traced request.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    let mut push = |byte: u8| {
        text[len] = byte;
        len += 1;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            push(b'.');
        }
        if octet >= 100 {
            push(b'0' + octet / 100);
        }
        if octet >= 10 {
            push(b'0' + octet / 10 % 10);
        }
        push(b'0' + octet % 10);
    }
    // Allocated at its exact length: the span's string value then takes it as it is, where
    // a larger buffer was reallocated to fit.
    std::str::from_utf8(&text[..len]).map_or_else(|_| ip.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{ip_text, is_excluded};

    #[test]
    fn client_addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.0.100.9",
            "1.20.3.45",
            "192.168.10.200",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for octet in 0..=u8::MAX {
            let ip = IpAddr::from([octet, 9, 99, 100]);
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn an_excluded_path_covers_what_is_below_it_and_nothing_else() {
        let excluded = vec!["/docs".to_owned(), "/health".to_owned()];
        for path in ["/docs", "/docs/", "/docs/swagger-ui.css", "/health"] {
            assert!(is_excluded(&excluded, path), "{path}");
        }
        for path in ["/docsx", "/api/v1/docs", "/", "/healthz"] {
            assert!(!is_excluded(&excluded, path), "{path}");
        }
    }
}
