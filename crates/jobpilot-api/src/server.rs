//! Serving the router on an already-bound listener, with the limits that keep a public edge
//! alive: a cap on open connections, a header read timeout (which is also the longest a
//! kept-alive connection may sit idle: hyper starts it whenever it waits for a request head), a
//! timeout between request body frames, and a graceful shutdown.
//!
//! hyper's HTTP/1 connection builder (with tokio's timer) enforces the header timeout and
//! tower-http's `RequestBodyTimeoutLayer` the body timeout; the connection cap is a semaphore
//! permit held by each connection task, since the accept loop is the one place that sees
//! connections. The request timeout is a router layer (see [`crate::app`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::util::Either;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutBody};

/// Connection-level limits. `None` turns a limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Longest wait for a complete request head, counted from when the server starts waiting
    /// for one: closes slow-header (slowloris) and idle kept-alive connections.
    pub header_read_timeout: Option<Duration>,
    /// Longest wait for the next frame of a request body.
    pub body_read_timeout: Option<Duration>,
    /// Most connections open at once; further clients wait in the listen backlog.
    pub max_connections: Option<usize>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Some(Duration::from_secs(10)),
            body_read_timeout: Some(Duration::from_secs(10)),
            max_connections: Some(512),
        }
    }
}

/// Serves `router` on `listener` with the default [`ServerLimits`] until `shutdown` completes.
///
/// # Errors
/// Never in practice: accept errors are logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, router, ServerLimits::default(), shutdown).await
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then stops
/// accepting and lets the open connections finish their requests.
///
/// # Errors
/// Never in practice: accept errors (e.g. out of file descriptors) are logged and retried
/// after a short pause, so a burst of connections cannot stop the server.
pub async fn serve_with_limits(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = match &permits {
            None => None,
            Some(permits) => tokio::select! {
                permit = permits.clone().acquire_owned() => permit.ok(),
                () = &mut shutdown => break,
            },
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = connection_service(&router, peer, limits.body_read_timeout);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The router for one connection: the peer address in the request extensions (as
/// `ConnectInfo`) and the body read timeout.
fn connection_service(
    router: &Router,
    peer: SocketAddr,
    body_read_timeout: Option<Duration>,
) -> TowerToHyperService<
    impl tower::Service<
        http::Request<Incoming>,
        Response = axum::response::Response,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
> {
    let router = router
        .clone()
        .map_request(move |mut req: http::Request<axum::body::Body>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
    let service = match body_read_timeout {
        Some(timeout) => Either::Left(
            ServiceBuilder::new()
                .layer(RequestBodyTimeoutLayer::new(timeout))
                .map_request(|req: http::Request<TimeoutBody<Incoming>>| {
                    req.map(axum::body::Body::new)
                })
                .service(router),
        ),
        None => Either::Right(
            ServiceBuilder::new()
                .map_request(|req: http::Request<Incoming>| req.map(axum::body::Body::new))
                .service(router),
        ),
    };
    TowerToHyperService::new(service)
}
