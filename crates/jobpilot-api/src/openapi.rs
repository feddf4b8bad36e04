//! The OpenAPI 3.1 document of the API (served at `/openapi.json`) and the docs page (`/docs`).
//!
//! Written as data rather than derived from the handlers: the API is small, and the agents'
//! input schemas come from the agents crate, so the document stays true to what is validated.

use jobpilot_agents::AgentType;
use serde_json::{Value, json};

/// The OpenAPI document.
pub fn document() -> Value {
    let error = json!({"$ref": "#/components/schemas/Error"});
    let err = |description: &str| json!({"description": description, "content": {"application/json": {"schema": error}}});
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "jobpilot",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Job-search copilot: agent runs traced end to end with OpenTelemetry."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "trace_id"],
                    "properties": {
                        "error": {"type": "object", "required": ["code", "message"], "properties": {
                            "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}},
                        "trace_id": {"type": ["string", "null"]}
                    }
                },
                "RunAccepted": {
                    "type": "object",
                    "required": ["run_id", "status", "trace_id"],
                    "properties": {
                        "run_id": {"type": "string"},
                        "status": {"type": "string", "enum": ["queued"]},
                        "trace_id": {"type": ["string", "null"]}
                    }
                },
                "Run": {
                    "type": "object",
                    "required": ["run_id", "agent_type", "status", "attempts", "trace_id", "created_at_ms"],
                    "properties": {
                        "run_id": {"type": "string"},
                        "agent_type": {"type": "string"},
                        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed"]},
                        "user_id": {"type": "string"},
                        "result": {},
                        "error": {"type": ["string", "null"]},
                        "attempts": {"type": "integer"},
                        "trace_id": {"type": "string"},
                        "dead_lettered": {"type": "boolean"},
                        "created_at_ms": {"type": "integer", "description": "Unix time in milliseconds"},
                        "started_at_ms": {"type": ["integer", "null"]},
                        "finished_at_ms": {"type": ["integer", "null"]}
                    }
                }
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "alive"}}}},
            "/ready": {"get": {"summary": "Readiness: broker and store reachable", "security": [],
                "responses": {"200": {"description": "ready"}, "503": {"description": "a dependency is down"}}}},
            "/api/v1/agents": {"get": {"summary": "Agent types and their input schemas",
                "responses": {"200": {"description": "the agent types"}, "401": err("missing or invalid token")}}},
            "/api/v1/runs/{run_id}": {"get": {
                "summary": "A run of the caller",
                "parameters": [{"name": "run_id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "the run", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Run"}}}},
                    "401": err("missing or invalid token"),
                    "404": err("no such run for this user"),
                    "503": err("the store is unavailable")
                }}},
            "/api/v1/admin/queue": {"get": {"summary": "Queue depth, in-flight and dead-lettered runs (admin)",
                "responses": {"200": {"description": "queue status"}, "401": err("missing or invalid token"), "403": err("not an admin"), "503": err("the queue is unavailable")}}},
            "/api/v1/admin/telemetry": {"get": {"summary": "Span export health (admin)",
                "responses": {"200": {"description": "exported, dropped, last error"}, "401": err("missing or invalid token"), "403": err("not an admin")}}}
        }
    });
    // One operation per agent type, so each request body has its exact schema (the route
    // itself is `/api/v1/agents/{agent_type}/runs`).
    if let Some(paths) = doc["paths"].as_object_mut() {
        for agent in AgentType::ALL {
            paths.insert(
                format!("/api/v1/agents/{}/runs", agent.as_str()),
                run_operation(agent, &err),
            );
        }
    }
    doc
}

fn run_operation(agent: AgentType, err: &dyn Fn(&str) -> Value) -> Value {
    json!({"post": {
        "summary": format!("Start a {} run: {}", agent.as_str(), agent.description()),
        "operationId": format!("create_{}_run", agent.as_str()),
        "requestBody": {"required": true, "content": {"application/json": {"schema": {
            "type": "object", "required": ["input"], "additionalProperties": false,
            "properties": {"input": agent.input_schema()}}}}},
        "responses": {
            "202": {"description": "queued", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RunAccepted"}}}},
            "400": err("unreadable JSON"),
            "401": err("missing or invalid token"),
            "413": err("body too large"),
            "415": err("not JSON"),
            "422": err("invalid input, naming the field"),
            "503": err("the queue is unavailable")
        }
    }})
}

/// A self-contained docs page that lists the endpoints from `/openapi.json` (no external assets).
pub const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>jobpilot API</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
code,pre{background:#f4f4f4;padding:.1rem .3rem}h2{margin-top:2rem}</style></head>
<body><h1>jobpilot API</h1>
<p>Machine-readable document: <a href="/openapi.json">/openapi.json</a>. Authenticate with
<code>Authorization: Bearer &lt;JWT&gt;</code> (<code>jobpilot token --user you</code> prints one).</p>
<div id="paths">Loading…</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  const root = document.getElementById('paths'); root.textContent = '';
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const h = document.createElement('h2'); h.textContent = method.toUpperCase() + ' ' + path; root.appendChild(h);
      const p = document.createElement('p'); p.textContent = op.summary || ''; root.appendChild(p);
      const pre = document.createElement('pre'); pre.textContent = 'responses: ' + Object.keys(op.responses).join(', '); root.appendChild(pre);
    }
  }
});
</script></body></html>"#;
