//! A scripted OpenAI-compatible chat-completions server on `127.0.0.1:0`, for the tests that
//! talk to an LLM over real HTTP. It records every request it receives and answers from a
//! script; it is a socket, not a mock of the client.

#![allow(dead_code)] // Each test binary uses a different part of this helper.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How the server answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this JSON body.
    Ok(Value),
    /// This status with this JSON body.
    Status(u16, Value),
    /// Never answer.
    Hang,
}

/// A request as the server received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Received {
    /// The header `name` as a string, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
}

/// A running scripted server; stops when dropped.
pub struct LlmServer {
    /// `http://127.0.0.1:{port}/v1`, the base URL to configure the client with.
    pub base_url: String,
    /// The bound port.
    pub port: u16,
    script: Arc<Script>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        // Aborting (not a graceful stop) so a hanging handler cannot keep the test waiting.
        self.task.abort();
    }
}

impl LlmServer {
    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.script.received.lock().unwrap().clone()
    }
}

/// A chat completion answering `content`, with usage 42 in / 7 out.
pub fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-test-1",
        "object": "chat.completion",
        "model": "test-model-2024",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
    })
}

async fn handle(
    State(script): State<Arc<Script>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script.received.lock().unwrap().push(Received {
        method,
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let reply = script.replies.lock().unwrap().pop_front();
    match reply.unwrap_or_else(|| Reply::Ok(completion("default answer"))) {
        Reply::Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Reply::Status(status, body) => {
            (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
        }
        Reply::Hang => std::future::pending::<Response>().await,
    }
}

/// Starts a server that answers with `replies` in order, then with a default completion.
pub async fn spawn_llm_server(replies: Vec<Reply>) -> LlmServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = Arc::new(Script {
        replies: Mutex::new(replies.into()),
        received: Mutex::default(),
    });
    let app = Router::new().fallback(handle).with_state(script.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    LlmServer {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        port,
        script,
        task,
    }
}
