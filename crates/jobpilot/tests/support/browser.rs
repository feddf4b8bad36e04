//! A real headless Chromium, driven over WebDriver, for tests of the pages jobpilot serves
//! (the API docs, the operator console).
//!
//! [`Browser::start`] starts `chromedriver` on a free loopback port, in a process group of its
//! own, and opens a session of a Chromium with a fresh profile, no GPU and no background
//! network traffic of its own (no updates, sync or QUIC), so every request it makes is one the
//! page asked for. [`Browser::close`] ends the session (Chromium quits) and stops the driver
//! by its PID; if a test panics first, dropping the handle kills the driver's process group.
//!
//! The executables default to the Debian packages' paths (`chromium`, `chromium-driver`, which
//! `./scripts/test.sh` installs when missing); `JOBPILOT_TEST_CHROMEDRIVER` and
//! `JOBPILOT_TEST_CHROMIUM` override them.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::{Value, json};

/// How long a page element may take to appear (generous: the test machine is shared).
pub const ELEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long Chromium may take to start and open a session; a fresh profile on a loaded
/// 2-core machine was measured at 52 s.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(180);

/// The Chromium flags of every session (plus a fresh `--user-data-dir`).
pub const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1024",
];

fn executable(var: &str, candidates: &[&str]) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        return PathBuf::from(path);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{} not found; install it (./scripts/test.sh does) or set {var}",
                candidates[0]
            )
        })
}

/// A WebDriver session of a headless Chromium, and the `chromedriver` that runs it.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` and opens a session (bounded by [`SESSION_TIMEOUT`]).
    pub async fn start() -> Browser {
        let chromedriver = executable("JOBPILOT_TEST_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
        // The Debian `/usr/bin/chromium` is a wrapper script; the browser itself is below it.
        let chromium = executable(
            "JOBPILOT_TEST_CHROMIUM",
            &["/usr/lib/chromium/chromium", "/usr/bin/chromium"],
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("chromedriver.log");
        let port = super::free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that a panicking test can stop Chromium with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        // From here on, a panic drops `browser` and with it the driver.
        let mut browser = Browser {
            client: None,
            driver,
            dir,
        };
        wait_listening(port, Duration::from_secs(15));

        let profile = browser.dir.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": args}),
        );
        let client = tokio::time::timeout(
            SESSION_TIMEOUT,
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no WebDriver session within {SESSION_TIMEOUT:?}\n{}",
                browser.driver_log()
            )
        })
        .unwrap_or_else(|e| panic!("no WebDriver session: {e}\n{}", browser.driver_log()));
        browser.client = Some(client);
        browser
    }

    /// The WebDriver client of the session.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// The element matching `css`, once it is displayed (bounded by [`ELEMENT_TIMEOUT`]).
    pub async fn visible(&self, css: &str) -> Element {
        let deadline = Instant::now() + ELEMENT_TIMEOUT;
        loop {
            if let Ok(element) = self.client().find(Locator::Css(css)).await {
                if element.is_displayed().await.unwrap_or(false) {
                    return element;
                }
            }
            if Instant::now() > deadline {
                let source = self.client().source().await.unwrap_or_default();
                panic!("no visible {css:?} within {ELEMENT_TIMEOUT:?}; the page:\n{source}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element matching `css` once it is displayed, retrying while something else
    /// (a closing dialog, an animation) still covers it (bounded by [`ELEMENT_TIMEOUT`]).
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + ELEMENT_TIMEOUT;
        loop {
            match self.visible(css).await.click().await {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("cannot click {css:?}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The URL of every resource the current page has loaded (from the Resource Timing API).
    pub async fn loaded_resources(&self) -> Vec<String> {
        let names = self
            .client()
            .execute(
                "return performance.getEntriesByType('resource').map(e => e.name);",
                vec![],
            )
            .await
            .unwrap();
        names
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The driver's log, for failure messages.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// Ends the session (Chromium quits) and stops the driver by its PID.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.driver.try_wait() {
            // The driver's process group holds Chromium too (see `start`). `--` so that the
            // negative group id is not read as an option.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
                .stderr(Stdio::null())
                .status();
            let _ = self.driver.kill();
            let _ = self.driver.wait();
        }
    }
}

/// Waits until something accepts connections on `127.0.0.1:port`.
fn wait_listening(port: u16, within: Duration) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("chromedriver did not listen on port {port} within {within:?}");
}
