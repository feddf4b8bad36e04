//! The OpenAPI document against the router it describes, on a real socket: every route is in
//! the document and every documented operation is routed to a handler; the served document is
//! the generated one; Swagger UI and the document can be turned off.
//!
//! axum has no API that lists a router's routes, but its `Debug` output prints the route table
//! (`paths: {RouteId(0): "/health", ...}`). The test reads the paths from there (failing loudly
//! if it finds none, should that format change) and finds each path's methods by asking the
//! server: a method without a route gets the 405 of the method fallback.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jobpilot_agents::AgentType;
use jobpilot_api::{AppState, Auth};
use jobpilot_queue::{Broker, EmbeddedBackend, QueueSettings, RunStore};
use serde_json::Value;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

/// Routes that serve the documentation itself rather than the API; they are not operations of
/// the document.
const DOCS_ROUTES: [&str; 4] = ["/docs", "/docs/", "/docs/{*rest}", "/openapi.json"];

/// The methods probed on every route (HEAD follows GET, OPTIONS and TRACE are never routed).
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

struct Served {
    base: String,
    router_debug: String,
    admin_token: String,
    _dir: tempfile::TempDir,
}

async fn serve(api_docs: bool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedBackend::create(dir.path(), QueueSettings::default()).unwrap());
    let auth = Auth::new(SECRET);
    let state = AppState::builder(
        auth.clone(),
        embedded.clone() as Arc<dyn Broker>,
        embedded as Arc<dyn RunStore>,
    )
    .with_api_docs(api_docs)
    .build();
    let router = jobpilot_api::app(state);
    let router_debug = format!("{router:?}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(jobpilot_api::serve(
        listener,
        router,
        std::future::pending(),
    ));
    Served {
        base: format!("http://{addr}"),
        router_debug,
        admin_token: auth
            .issue("docs-admin", Some("admin"), Duration::from_secs(300))
            .unwrap(),
        _dir: dir,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The paths of the router's own route table (not those of its fallback router).
fn route_table(router_debug: &str) -> Vec<String> {
    let own = router_debug
        .split("fallback_router")
        .next()
        .unwrap_or_default();
    let table = own
        .split_once("node: Node { paths: {")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split_once("} }").map(|(table, _)| table))
        .unwrap_or_default();
    let mut paths = Vec::new();
    // Entries read `RouteId(3): "/api/v1/runs/{run_id}"`.
    for entry in table.split("RouteId(").skip(1) {
        if let Some((_, quoted)) = entry.split_once(": \"") {
            if let Some((path, _)) = quoted.split_once('"') {
                paths.push(path.to_owned());
            }
        }
    }
    assert!(
        paths.len() >= 5,
        "could not read the route table from the router's Debug output: {router_debug}"
    );
    paths
}

/// A concrete path that `route` matches (parameters filled with a sample value).
fn instantiate(route: &str) -> String {
    route
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "probe"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether the concrete or templated `path` of the document is matched by `route`.
fn route_matches(route: &str, path: &str) -> bool {
    let (r, p): (Vec<&str>, Vec<&str>) = (route.split('/').collect(), path.split('/').collect());
    r.len() == p.len()
        && r.iter()
            .zip(&p)
            .all(|(r, p)| r == p || (r.starts_with('{') && !r.starts_with("{*")))
}

/// (method, route) for every route the server answers with a handler.
async fn routed(served: &Served) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for route in route_table(&served.router_debug) {
        let url = format!("{}{}", served.base, instantiate(&route));
        for method in METHODS {
            let res = client()
                .request(method.parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            if res.status() != 405 {
                found.insert((method.to_owned(), route.clone()));
            }
        }
    }
    found
}

/// (METHOD, path) of every operation of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

async fn served_document(served: &Served) -> Value {
    let res = client()
        .get(format!("{}/openapi.json", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_operation_is_routed() {
    let served = serve(true).await;
    let doc = served_document(&served).await;
    let routes = route_table(&served.router_debug);
    let documented = operations(&doc);

    // Each documented path is matched by exactly one route of the table.
    let mut documented_routes = BTreeSet::new();
    for (method, path) in &documented {
        let matching: Vec<&String> = routes.iter().filter(|r| route_matches(r, path)).collect();
        assert_eq!(
            matching.len(),
            1,
            "{method} {path} is documented; routes that match it: {matching:?}"
        );
        documented_routes.insert((method.clone(), matching[0].clone()));
    }

    // What the server routes, minus the documentation's own routes, is what is documented.
    let routed: BTreeSet<(String, String)> = routed(&served)
        .await
        .into_iter()
        .filter(|(_, route)| !DOCS_ROUTES.contains(&route.as_str()))
        // The console's HTML pages are not part of the JSON API.
        .filter(|(_, route)| !route.starts_with("/console"))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented_routes).collect();
    let unrouted: Vec<_> = documented_routes.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from the document: {undocumented:?}; \
         documented operations with no route: {unrouted:?}"
    );
    assert!(routed.len() >= 7, "{routed:?}");
}

#[tokio::test]
async fn every_documented_operation_reaches_its_handler() {
    let served = serve(true).await;
    let doc = served_document(&served).await;
    for (method, path) in operations(&doc) {
        let url = format!("{}{}", served.base, instantiate(&path));
        let res = client()
            .request(method.parse().unwrap(), &url)
            .bearer_auth(&served.admin_token)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let streams = res
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        // An event stream never ends: its answer is the status and the content type.
        let body: Value = if streams {
            Value::Null
        } else {
            res.json().await.unwrap_or(Value::Null)
        };
        // The fallbacks answer 404 "no such endpoint" and 405; a handler answers anything else
        // (a run that does not exist is a 404 of the handler, with its own message).
        assert_ne!(status, 405, "{method} {path}");
        assert_ne!(
            body["error"]["message"], "no such endpoint",
            "{method} {path}"
        );
        // The status is one the document lists for the operation.
        let responses = &doc["paths"][&path][method.to_lowercase()]["responses"];
        assert!(
            responses.get(status.to_string()).is_some(),
            "{method} {path} answered {status}, which the document does not list: {body}"
        );
    }
}

#[tokio::test]
async fn the_document_has_a_create_run_operation_per_agent_type_with_its_input_schema() {
    let served = serve(true).await;
    let doc = served_document(&served).await;
    assert_eq!(
        doc,
        serde_json::to_value(jobpilot_api::app::document()).unwrap(),
        "the served document is the generated one"
    );
    for agent in AgentType::ALL {
        let path = format!("/api/v1/agents/{}/runs", agent.as_str());
        let body = &doc["paths"][&path]["post"]["requestBody"]["content"]["application/json"];
        let mut expected = agent.input_schema();
        expected.as_object_mut().unwrap().remove("$schema");
        assert_eq!(body["schema"]["properties"]["input"], expected, "{path}");
        // The example is accepted as it is.
        let res = client()
            .post(format!("{}{path}", served.base))
            .bearer_auth(&served.admin_token)
            .json(&body["example"])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{path}: {}", res.text().await.unwrap());
    }
}

#[tokio::test]
async fn docs_and_the_document_can_be_turned_off() {
    let served = serve(false).await;
    for path in ["/docs", "/docs/", "/docs/swagger-ui.css", "/openapi.json"] {
        let res = client()
            .get(format!("{}{path}", served.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let routes = route_table(&served.router_debug);
    assert!(
        routes.iter().all(|r| !DOCS_ROUTES.contains(&r.as_str())),
        "{routes:?}"
    );
    // The API itself is unchanged.
    let res = client()
        .get(format!("{}/api/v1/agents", served.base))
        .bearer_auth(&served.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let served = serve(true).await;
    let res = client()
        .get(format!("{}/docs", served.base))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_redirection());
    assert_eq!(res.headers()["location"], "/docs/");
    let page = client()
        .get(format!("{}/docs/", served.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("swagger-ui-bundle.js"), "{page}");
    // Every asset the page loads is relative, i.e. served here.
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
    ] {
        assert!(page.contains(&format!("./{asset}")), "{asset}");
        let res = client()
            .get(format!("{}/docs/{asset}", served.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{asset}");
        assert!(res.bytes().await.unwrap().len() > 1000, "{asset}");
    }
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    let init = client()
        .get(format!("{}/docs/swagger-initializer.js", served.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains(r#""url": "/openapi.json""#), "{init}");
    assert!(init.contains(r#""validatorUrl": "none""#), "{init}");
}
