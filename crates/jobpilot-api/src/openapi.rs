//! The OpenAPI 3.1 document of the API (`/openapi.json`) and Swagger UI (`/docs`).
//!
//! The document is derived from the code, never written by hand: each handler carries its
//! operation (`#[utoipa::path]` in [`crate::routes`]), its schemas are derived from the types it
//! sends and reads ([`crate::bodies`], [`crate::error::ErrorBody`], the queue's `RunRecord`),
//! and `app::endpoints` registers every handler together with its operation, so a route
//! cannot exist without its documentation. This module adds what belongs to the whole document:
//! its title, the bearer security scheme, and one create-run operation per agent type.
//!
//! Why one operation per agent type: the route is `/api/v1/agents/{agent_type}/runs`, but the
//! body each type accepts differs, and OpenAPI cannot tie a body schema to a path parameter's
//! value. Spelling the route out per type (`/api/v1/agents/job_match/runs`, ...) gives each
//! request body the exact input schema the agents crate validates against.
//!
//! Swagger UI is compiled into the binary (its assets are embedded at build time from a
//! vendored copy), so `/docs` needs no network at build or run time.

use jobpilot_agents::AgentType;
use serde_json::{Value, json};
use utoipa::Modify;
use utoipa::OpenApi as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, PathItem, RefOr, Required, Schema};
use utoipa_swagger_ui::{Config, SwaggerUi};

/// Where Swagger UI is served.
pub const DOCS_PATH: &str = "/docs";
/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
/// The name of the bearer security scheme in the document (also spelled out in `ApiDoc`).
pub const BEARER_SCHEME: &str = "bearer";
/// The create-run route, which the document spells out once per agent type.
pub const RUNS_ROUTE: &str = "/api/v1/agents/{agent_type}/runs";

/// What the document says about itself; the operations are added by
/// `app::endpoints`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "jobpilot",
        description = "Job-search copilot: agent runs traced end to end with OpenTelemetry.\n\n\
            Authenticate with `Authorization: Bearer <JWT>` (HS256 with `JOBPILOT_JWT_SECRET`, \
            `sub` = user id, `role: admin` for the admin endpoints); `jobpilot token --user you` \
            prints one. Every error is `{\"error\": {\"code\", \"message\", \"field\"?}, \
            \"trace_id\"}`.",
    ),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    tags(
        (name = "agents", description = "The agent types and their input."),
        (name = "runs", description = "Start runs and read their state and result."),
        (name = "admin", description = "Operator views; the token needs `role: admin`."),
        (name = "health", description = "Liveness and readiness; no token, never traced."),
    ),
)]
struct ApiDoc;

/// Adds the bearer scheme that every operation refers to unless it says otherwise.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "An HS256 JWT whose `sub` is the user id; `jobpilot token --user you` prints one.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER_SCHEME, SecurityScheme::Http(scheme));
    }
}

/// The document before any operation is added.
pub fn base() -> OpenApi {
    ApiDoc::openapi()
}

/// Completes the document that `app::endpoints` assembled: the create-run route
/// becomes one operation per agent type, each with that type's input schema and an example.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    let paths = std::mem::take(&mut doc.paths.paths);
    for (path, item) in paths {
        if path == RUNS_ROUTE {
            for agent in AgentType::ALL {
                doc.paths
                    .paths
                    .insert(runs_path(agent), run_operation(&item, agent));
            }
        } else {
            doc.paths.paths.insert(path, item);
        }
    }
    doc
}

/// The create-run path of one agent type.
pub fn runs_path(agent: AgentType) -> String {
    RUNS_ROUTE.replace("{agent_type}", agent.as_str())
}

fn run_operation(template: &PathItem, agent: AgentType) -> PathItem {
    let mut item = template.clone();
    if let Some(op) = item.post.as_mut() {
        op.operation_id = Some(format!("create_{}_run", agent.as_str()));
        op.summary = Some(format!("Start a {} run", agent.as_str()));
        op.description = Some(format!(
            "{}\n\n{}",
            agent.description(),
            op.description.as_deref().unwrap_or_default()
        ));
        if let Some(params) = op.parameters.as_mut() {
            params.retain(|p| p.name != "agent_type");
        }
        if op.parameters.as_ref().is_some_and(Vec::is_empty) {
            op.parameters = None;
        }
        if let Some(body) = op.request_body.as_mut() {
            body.required = Some(Required::True);
            body.content.insert(
                "application/json".to_owned(),
                Content::builder()
                    .schema(Some(run_request_schema(agent)))
                    .example(Some(json!({ "input": example_input(agent) })))
                    .build(),
            );
        }
    }
    item
}

/// `{"input": <the agent's input schema>}`, nothing else allowed.
///
/// The agents crate publishes its schema as JSON Schema; utoipa reads it into its own model.
/// A test checks the conversion keeps every keyword.
fn run_request_schema(agent: AgentType) -> RefOr<Schema> {
    serde_json::from_value(run_request_json_schema(agent)).unwrap_or_else(|e| {
        // Only a change to the agents crate's schema can get here, and the test of this
        // module catches it before a release.
        tracing::error!(error = %e, agent = agent.as_str(), "input schema not representable");
        RefOr::T(Schema::default())
    })
}

fn run_request_json_schema(agent: AgentType) -> Value {
    let mut input = agent.input_schema();
    // `$schema` names the dialect of a standalone schema; inside OpenAPI 3.1 the dialect is
    // already JSON Schema 2020-12.
    if let Some(obj) = input.as_object_mut() {
        obj.remove("$schema");
    }
    json!({
        "type": "object",
        "required": ["input"],
        "additionalProperties": false,
        "properties": {"input": input},
    })
}

/// A valid input for `agent`: one sample text per required field of its schema.
pub fn example_input(agent: AgentType) -> Value {
    let schema = agent.input_schema();
    let fields = schema["required"].as_array().cloned().unwrap_or_default();
    let mut input = serde_json::Map::new();
    for field in fields.iter().filter_map(Value::as_str) {
        let text = match field {
            "resume" => {
                "Jane Doe\nSenior software engineer, 6 years.\nExperience: Rust, Kubernetes, \
                 PostgreSQL; led the migration of a billing service.\nEducation: BSc Computer Science"
            }
            "job" => {
                "Senior Rust Developer\nWe build a payments platform. Requirements: Rust, \
                 Kubernetes, PostgreSQL, 5+ years of experience."
            }
            "company" => "Acme Payments",
            _ => "example",
        };
        input.insert(field.to_owned(), Value::String(text.to_owned()));
    }
    Value::Object(input)
}

/// Swagger UI at [`DOCS_PATH`] and `doc` at [`DOCUMENT_PATH`], with "Try it out" against this
/// server and no call to any other host (the online spec validator is off).
pub fn docs_router<S: Clone + Send + Sync + 'static>(doc: OpenApi) -> axum::Router<S> {
    let config = Config::new([DOCUMENT_PATH])
        .validator_url("none")
        .display_request_duration(true)
        .persist_authorization(false);
    SwaggerUi::new(DOCS_PATH)
        .url(DOCUMENT_PATH, doc)
        .config(config)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::document;

    #[test]
    fn every_agent_input_schema_survives_the_conversion_unchanged() {
        for agent in AgentType::ALL {
            let converted = serde_json::to_value(run_request_schema(agent)).unwrap();
            assert_eq!(converted, run_request_json_schema(agent), "{agent:?}");
        }
    }

    #[test]
    fn the_examples_are_valid_input() {
        for agent in AgentType::ALL {
            agent.validate_input(&example_input(agent)).unwrap();
        }
    }

    #[test]
    fn each_agent_type_has_its_own_create_run_operation() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["paths"].get(RUNS_ROUTE).is_none());
        for agent in AgentType::ALL {
            let op = &doc["paths"][runs_path(agent)]["post"];
            assert_eq!(op["operationId"], format!("create_{}_run", agent.as_str()));
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            let mut expected = agent.input_schema();
            expected.as_object_mut().unwrap().remove("$schema");
            assert_eq!(schema["properties"]["input"], expected);
            let params = op["parameters"].as_array().map(Vec::len).unwrap_or(0);
            assert_eq!(params, 0, "{op}");
        }
    }

    #[test]
    fn the_bearer_scheme_protects_every_operation_but_health_and_readiness() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let scheme = &doc["components"]["securitySchemes"][BEARER_SCHEME];
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
        assert_eq!(doc["security"], json!([{BEARER_SCHEME: []}]));
        for public in ["/health", "/ready"] {
            assert_eq!(
                doc["paths"][public]["get"]["security"],
                json!([{}]),
                "{public}"
            );
        }
    }
}
