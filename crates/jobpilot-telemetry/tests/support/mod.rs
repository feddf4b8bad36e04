//! Helpers shared by the integration tests: configurations built from a list of variables, and a
//! real OpenTelemetry collector (rotel) run as a child process.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobpilot_telemetry::TelemetryConfig;

/// A configuration read from `vars` only, never from the process environment.
pub fn config(vars: &[(&str, &str)]) -> TelemetryConfig {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    TelemetryConfig::from_lookup(|k| map.get(k).cloned())
        .unwrap_or_else(|e| panic!("test configuration {vars:?} is invalid: {e}"))
}

/// A loopback port that nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Where `scripts/test.sh` puts the rotel collector binary.
pub const ROTEL_VAR: &str = "JOBPILOT_TEST_ROTEL";

/// A rotel collector receiving OTLP on loopback (gRPC and HTTP) and forwarding traces over gRPC
/// to another endpoint. Killed when dropped.
pub struct Rotel {
    child: Child,
    /// Its OTLP/gRPC receiver.
    pub grpc: SocketAddr,
    /// Its OTLP/HTTP receiver.
    pub http: SocketAddr,
    log: PathBuf,
}

impl Rotel {
    /// Starts rotel forwarding to `forward_to` (an `http://host:port` gRPC endpoint) and waits,
    /// up to 15 s, until both of its receivers accept connections.
    ///
    /// # Panics
    /// When `JOBPILOT_TEST_ROTEL` is not set, or rotel does not start.
    pub fn start(forward_to: &str) -> Rotel {
        let binary = std::env::var_os(ROTEL_VAR).unwrap_or_else(|| {
            panic!(
                "{ROTEL_VAR} is not set: these tests need the rotel collector binary. \
                 Run them through ./scripts/test.sh, which installs rotel and sets {ROTEL_VAR}."
            )
        });
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir = std::env::temp_dir().join(format!(
            "jobpilot-rotel-{}-{}",
            std::process::id(),
            grpc.port()
        ));
        std::fs::create_dir_all(&dir).expect("create a directory for rotel's files");
        let log = dir.join("output.log");
        let out = std::fs::File::create(&log).expect("create rotel's output file");
        let err = out.try_clone().expect("clone rotel's output file");
        let child = Command::new(&binary)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &grpc.to_string()])
            .args(["--otlp-http-endpoint", &http.to_string()])
            .args(["--exporter", "otlp"])
            .args(["--otlp-exporter-endpoint", forward_to])
            .args(["--otlp-exporter-protocol", "grpc"])
            // Forward promptly: the default batch timeout is 200 ms; a test wants less.
            .args(["--traces-batch-timeout", "50ms"])
            .args(["--metrics-batch-timeout", "50ms"])
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", PathBuf::from(&binary).display()));
        let mut rotel = Rotel {
            child,
            grpc,
            http,
            log,
        };
        rotel.wait_until_listening(Duration::from_secs(15));
        rotel
    }

    fn wait_until_listening(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("rotel exited with {status}:\n{}", self.output());
            }
            let up = |addr: &SocketAddr| {
                TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok()
            };
            if up(&self.grpc) && up(&self.http) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "rotel did not listen on {} and {} within {within:?}:\n{}",
                    self.grpc,
                    self.http,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What rotel printed so far, for failure messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
