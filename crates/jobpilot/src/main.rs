//! `jobpilot`: the API, the worker, or both in one process, with telemetry.
//!
//! `main` is wiring in fixed phases: parse the command line and configuration (no port bound
//! yet) → start logs and telemetry → open the backend → serve until SIGTERM/SIGINT → drain
//! within the grace period → flush telemetry last.

mod config;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jobpilot_agents::{AgentRunner, LlmClient};
use jobpilot_api::{AppState, HttpTracing, TelemetryStatus};
use jobpilot_queue::{Broker, EmbeddedBackend, QueueError, QueueSettings, RedisBackend, RunStore};
use jobpilot_telemetry::{Telemetry, TraceCx, names};
use jobpilot_worker::admin::AdminState;
use jobpilot_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

// The system allocator serialises the many small allocations of request handling and span
// export on a lock; mimalloc's per-thread heaps removed that contention (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process, before the heap grows.
///
/// mimalloc advises the kernel to back its arenas with 2 MiB pages, so any touched byte made
/// 2 MiB resident and freed memory stayed so: `jobpilot api` under load held 57–60 MiB with
/// OTLP export and 29 MiB without, against 28–30 and 17 MiB with huge pages off, at the same
/// throughput (docs/benchmarks.md). The `no_thp` build of mimalloc drops its advice (enough
/// where the kernel gives huge pages only on advice); this also covers kernels that give them
/// to every process, but for the few the allocator touched before `main`. A kernel that
/// refuses leaves the process as it was: more memory, no error.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// How long telemetry may take to flush at exit.
const TELEMETRY_FLUSH_BUDGET: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "jobpilot",
    version,
    about = "A job-search copilot backend, traced end to end"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// API and worker in one process on the embedded, durable local store (JOBPILOT_DATA_DIR).
    Serve {
        /// Address to listen on (default: JOBPILOT_LISTEN or 127.0.0.1:8000).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Create the store if there is none (an existing store is used as it is). Without
        /// it `serve` refuses to start on a missing or empty store file.
        #[arg(long)]
        init: bool,
    },
    /// Creates the embedded store in JOBPILOT_DATA_DIR if there is none, then exits.
    Init,
    /// The API alone, with Redis (REDIS_URL) as broker and run store.
    Api {
        /// Address to listen on (default: JOBPILOT_LISTEN or 127.0.0.1:8000).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// A worker alone, taking runs from Redis (REDIS_URL).
    Worker {
        /// Address of the admin listener: /health, /ready, /metrics, /telemetry (default:
        /// JOBPILOT_ADMIN_LISTEN, else none).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Prints a development bearer token for a user.
    Token {
        /// The user id (the token's subject).
        #[arg(long)]
        user: String,
        /// Grant the admin role.
        #[arg(long)]
        admin: bool,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
    },
    /// Sends one test span to the configured exporter and reports whether it was accepted.
    CheckTelemetry,
}

fn main() -> ExitCode {
    without_huge_pages();
    let cli = Cli::parse();
    let listen = match &cli.command {
        Command::Serve { listen, .. } | Command::Api { listen } => *listen,
        _ => None,
    };
    let config = match Config::from_env(listen) {
        Ok(mut c) => {
            if let Command::Worker {
                admin_listen: Some(flag),
            } = &cli.command
            {
                c.admin_listen = Some(*flag);
            }
            c
        }
        Err(e) => {
            eprintln!("jobpilot: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Token {
        user,
        admin,
        ttl_hours,
    } = &cli.command
    {
        return print_token(&config, user, *admin, *ttl_hours);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jobpilot: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = jobpilot_telemetry::logging::init_logging(&config.log) {
        eprintln!("jobpilot: cannot start logging: {e}");
        return ExitCode::FAILURE;
    }
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobpilot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_token(config: &Config, user: &str, admin: bool, ttl_hours: u64) -> ExitCode {
    use jobpilot_api::auth::IssueError;
    if user.trim().is_empty() {
        eprintln!("jobpilot: --user must not be empty");
        return ExitCode::from(2);
    }
    let Some(ttl) = ttl_hours.checked_mul(3600).map(Duration::from_secs) else {
        eprintln!("jobpilot: --ttl-hours {ttl_hours} is too large");
        return ExitCode::from(2);
    };
    let role = admin.then_some("admin");
    match config.auth.issue(user, role, ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(IssueError::LifetimeOverflow) => {
            eprintln!("jobpilot: --ttl-hours {ttl_hours} is too large");
            ExitCode::from(2)
        }
        Err(IssueError::LifetimeAboveMaximum { max_secs }) => {
            eprintln!(
                "jobpilot: --ttl-hours {ttl_hours} exceeds JOBPILOT_JWT_MAX_TTL_SECS ({max_secs} s)"
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("jobpilot: cannot issue the token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

struct Backend {
    broker: Arc<dyn Broker>,
    store: Arc<dyn RunStore>,
    /// The embedded store, whose expired runs this process deletes itself (Redis expires
    /// its keys on its own).
    embedded: Option<EmbeddedBackend>,
}

fn queue_settings(config: &Config) -> QueueSettings {
    QueueSettings {
        visibility_timeout: config.visibility_timeout,
        run_retention: config.run_retention,
        ..QueueSettings::default()
    }
}

/// Opens the embedded store. A new store is created only on purpose (`init`), or on the very
/// first start with the default data directory, which does not exist yet: a missing file
/// anywhere else may be a wrong `JOBPILOT_DATA_DIR` or a lost mount, and starting empty there
/// would hide every known run.
fn open_embedded(config: &Config, init: bool) -> anyhow::Result<EmbeddedBackend> {
    let dir = &config.data_dir;
    let first_start = config.data_dir_is_default() && !dir.exists();
    let opened = if init || first_start {
        EmbeddedBackend::create(dir, queue_settings(config))
    } else {
        EmbeddedBackend::open(dir, queue_settings(config))
    };
    opened.map_err(|e| match e {
        QueueError::StoreMissing { .. } | QueueError::StoreEmpty { .. } => anyhow::anyhow!(
            "{e}; if this is the right JOBPILOT_DATA_DIR and you want a new, empty store there, \
             create it on purpose with `jobpilot init` (or `jobpilot serve --init`)"
        ),
        QueueError::Corrupt { .. } => anyhow::anyhow!(
            "{e}; the store is damaged and will not be opened: restore it from a backup"
        ),
        other => {
            anyhow::Error::new(other).context(format!("cannot open the store in {}", dir.display()))
        }
    })
}

/// `jobpilot init`: creates the store (or finds it there) and says which.
fn init_store(config: &Config) -> anyhow::Result<()> {
    let path = config.data_dir.join("jobpilot.redb");
    let existed = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
    let backend = open_embedded(config, true)?;
    if existed {
        println!(
            "a store already exists at {}; it was left as it is",
            backend.path().display()
        );
    } else {
        println!("created a new store at {}", backend.path().display());
    }
    Ok(())
}

async fn open_backend(config: &Config, embedded: bool, init: bool) -> anyhow::Result<Backend> {
    let settings = queue_settings(config);
    if embedded {
        let backend = Arc::new(open_embedded(config, init)?);
        Ok(Backend {
            broker: backend.clone(),
            embedded: Some(backend.as_ref().clone()),
            store: backend,
        })
    } else {
        let url = config
            .redis_url
            .as_deref()
            .context("REDIS_URL is required for `jobpilot api` and `jobpilot worker`")?;
        let backend = Arc::new(
            RedisBackend::connect(url, &config.redis_prefix, settings)
                .await
                .context("cannot connect to REDIS_URL")?,
        );
        Ok(Backend {
            broker: backend.clone(),
            store: backend,
            embedded: None,
        })
    }
}

fn build_worker(
    config: &Config,
    telemetry: &Telemetry,
    backend: &Backend,
) -> anyhow::Result<Worker> {
    let metrics = telemetry.metrics();
    let llm = LlmClient::new(config.llm.clone(), telemetry.tracer(names::SCOPE_LLM))
        .map_err(|e| anyhow::anyhow!("invalid {}: {e}", config::llm_variable(&e)))?
        .with_metrics(&metrics);
    let runner =
        AgentRunner::new(telemetry.tracer(names::SCOPE_AGENTS), llm).with_metrics(metrics.clone());
    Ok(Worker::new(
        backend.broker.clone(),
        backend.store.clone(),
        Arc::new(runner),
        telemetry.tracer(names::SCOPE_QUEUE),
        WorkerConfig {
            concurrency: config.worker_concurrency,
            max_attempts: config.max_attempts,
            run_timeout: config.run_timeout,
            shutdown_grace: config.shutdown_grace,
            ..WorkerConfig::default()
        },
    )
    .with_metrics(metrics))
}

fn build_app(config: &Config, telemetry: &Telemetry, backend: &Backend) -> axum::Router {
    let state = AppState::builder(
        config.auth.clone(),
        backend.broker.clone(),
        backend.store.clone(),
    )
    .with_http_tracing(HttpTracing {
        tracer: telemetry.tracer(names::SCOPE_HTTP),
        excluded_paths: config.telemetry.excluded_paths.clone(),
        inbound: config.telemetry.inbound,
        inbound_baggage: config.telemetry.inbound_baggage,
        metrics: telemetry.metrics(),
    })
    .with_metrics(telemetry.metrics())
    // With an admin listener, /metrics lives there only.
    .with_prometheus(match config.admin_listen {
        Some(_) => None,
        None => telemetry.prometheus(),
    })
    .with_queue_tracer(telemetry.tracer(names::SCOPE_QUEUE))
    .with_telemetry(TelemetryStatus {
        exporter: telemetry.exporter_kind(),
        pipeline: telemetry.pipeline(),
    })
    .with_max_body_bytes(config.max_body_bytes)
    .with_api_docs(config.api_docs)
    .with_trace_url_template(config.trace_url_template.clone())
    .with_request_timeout(config.request_timeout)
    .with_run_limits(config.run_limits)
    .build();
    jobpilot_api::app(state)
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let mut init = false;
    let (service, serve_api, run_worker, embedded) = match command {
        Command::Serve { init: create, .. } => {
            init = create;
            (names::SERVICE_API, true, true, true)
        }
        Command::Api { .. } => (names::SERVICE_API, true, false, false),
        Command::Worker { .. } => (names::SERVICE_WORKER, false, true, false),
        Command::CheckTelemetry => return check_telemetry(&config).await,
        Command::Init => return init_store(&config),
        Command::Token { .. } => unreachable!("handled before the runtime starts"),
    };
    let telemetry = Telemetry::init(&config.telemetry, service)?;
    if config.jwt_secret_is_dev && serve_api {
        tracing::warn!("JOBPILOT_JWT_SECRET is not set; using the development secret");
    }
    let result = run_services(&config, &telemetry, serve_api, run_worker, embedded, init).await;
    if let Err(e) = &result {
        tracing::error!(error = %format!("{e:#}"), "jobpilot stopped with an error");
    }
    match telemetry.shutdown(TELEMETRY_FLUSH_BUDGET).await {
        Ok(stats) => tracing::info!(
            exported = stats.exported,
            dropped = stats.dropped,
            "telemetry flushed"
        ),
        Err(e) => tracing::warn!(error = %e, "telemetry flush incomplete"),
    }
    result
}

async fn run_services(
    config: &Config,
    telemetry: &Telemetry,
    serve_api: bool,
    run_worker: bool,
    embedded: bool,
    init: bool,
) -> anyhow::Result<()> {
    let backend = open_backend(config, embedded, init).await?;
    let shutdown = CancellationToken::new();
    spawn_queue_gauges(telemetry, &backend, shutdown.clone());

    let admin_task = match config.admin_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (JOBPILOT_ADMIN_LISTEN)"))?;
            let bound = listener.local_addr()?;
            tracing::info!(address = %bound, "admin listener on http://{bound}");
            let state = AdminState {
                broker: backend.broker.clone(),
                prometheus: telemetry.prometheus(),
                exporter: telemetry.exporter_kind(),
                pipeline: telemetry.pipeline(),
            };
            let token = shutdown.clone();
            Some(tokio::spawn(jobpilot_worker::admin::serve(
                listener,
                state,
                async move { token.cancelled().await },
            )))
        }
        None => None,
    };

    let retention_task = backend.embedded.clone().map(|store| {
        let token = shutdown.clone();
        tokio::spawn(async move { store.run_retention_until(token.cancelled_owned()).await })
    });

    let worker_task = if run_worker {
        let worker = build_worker(config, telemetry, &backend)?;
        let token = shutdown.clone();
        Some(tokio::spawn(async move { worker.run_until(token).await }))
    } else {
        None
    };

    let api_task = if serve_api {
        let addr = config.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        tracing::info!(
            address = %bound,
            service = telemetry.service_name(),
            exporter = telemetry.exporter_kind(),
            "jobpilot listening on http://{bound}"
        );
        let router = build_app(config, telemetry, &backend);
        let token = shutdown.clone();
        Some(tokio::spawn(jobpilot_api::serve_with_limits(
            listener,
            router,
            config.server,
            async move { token.cancelled().await },
        )))
    } else {
        None
    };

    shutdown_signal().await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
    // Requests in flight finish within the grace period; the worker drains its own runs.
    if let Some(api) = api_task {
        match tokio::time::timeout(config.shutdown_grace, api).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the API stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the API task failed"),
            Err(_) => tracing::warn!("requests still open after the grace period were dropped"),
        }
    }
    if let Some(worker) = worker_task {
        let _ = worker.await;
    }
    // The admin listener answers until the runs have drained, so /metrics shows the end.
    if let Some(admin) = admin_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    }
    if let Some(retention) = retention_task {
        let _ = retention.await;
    }
    // The worker wrote what it held back; the API may hold the statistics of runs it
    // cancelled.
    if let Err(e) = backend.store.flush().await {
        tracing::warn!(error = %e, "cannot write the last run statistics");
    }
    Ok(())
}

/// How often the queue gauges read the broker: a collection reads the cached figures, so a
/// scrape never waits for the broker.
const QUEUE_GAUGE_REFRESH: Duration = Duration::from_secs(5);

/// Keeps the queue gauges (depth, in flight, dead-lettered) up to date from the broker.
fn spawn_queue_gauges(telemetry: &Telemetry, backend: &Backend, shutdown: CancellationToken) {
    let metrics = telemetry.metrics();
    if !metrics.is_recording() {
        return;
    }
    let broker = backend.broker.clone();
    let gauges = metrics.queue_gauges(broker.system(), broker.queue_name());
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(QUEUE_GAUGE_REFRESH, broker.stats()).await {
                Ok(Ok(s)) => gauges.set(s.depth, s.in_flight, s.dead_lettered),
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the queue figures"),
                Err(_) => tracing::debug!("the broker did not report its figures in time"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(QUEUE_GAUGE_REFRESH) => {}
            }
        }
    });
}

/// Sends one span and waits for the exporter's verdict.
async fn check_telemetry(config: &Config) -> anyhow::Result<()> {
    let telemetry = Telemetry::init(&config.telemetry, names::SERVICE_API)?;
    let tracer = telemetry.tracer(names::SCOPE_HTTP);
    let span = tracer.start(
        &TraceCx::root(),
        "jobpilot.check_telemetry",
        jobpilot_telemetry::SpanKind::Internal,
        vec![],
    );
    let trace_id = span.trace_id();
    span.finish(true);
    let targets = telemetry.targets();
    let kind = targets.label();
    let stats = telemetry
        .shutdown(TELEMETRY_FLUSH_BUDGET)
        .await
        .map_err(anyhow::Error::msg)?;
    match targets.otlp {
        Some(_) if stats.exported == 1 => {
            println!("ok: the {kind} endpoint accepted a test span (trace_id={trace_id})");
            Ok(())
        }
        Some(_) => anyhow::bail!(
            "the {kind} endpoint did not accept the test span: {}",
            stats.last_error.unwrap_or_else(|| "no answer".into())
        ),
        None => {
            println!(
                "ok: exporter is {kind}; nothing is sent over the network (trace_id={trace_id})"
            );
            Ok(())
        }
    }
}
