//! Runs a task's pipeline: renders each step's `with` against the run context, calls the tool, stores the
//! result for later steps and classifies failures as retryable or permanent.
//!
//! The pure half (payload types, validation, templates) lives in `orrery::pipeline`. Each tool is one module
//! behind the small [`Tool`] trait ([`http`], [`publish`], [`sleep`], [`noop`]); a new tool is a new file and one
//! arm in [`Executor::tool`]. This module owns the run: conditions, rendering, results, timeouts.
//!
//! Decisions:
//! - A step's `timeout_seconds` bounds `http.request` (as its request timeout, code `timeout`) and every
//!   other tool (code `step_timeout`); the whole run is bounded by the task's timeout (`run_timeout`).
//! - A rendered `with` of the wrong shape (e.g. `url` rendered to a number) is a permanent `template` error.
//! - `now` in the template context is refreshed before each step (RFC 3339, UTC, whole seconds).

pub mod http;
pub mod noop;
pub mod publish;
pub mod shell;
pub mod sleep;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use orrery::clock::Clock;
use orrery::pipeline::{self, Payload, Step, TemplateError};
use serde_json::{json, Map, Value};
use uuid::Uuid;

pub use http::{HttpTool, DEFAULT_BODY_CAP_BYTES};
pub use publish::{EventSink, Published};
pub use shell::ShellTool;

/// A boxed, sendable future (the same type as `futures::future::BoxFuture`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One tool a step can use: its rendered `with` in, its result (or a classified failure) out.
pub trait Tool: Send + Sync {
    /// Whether the step's `timeout_seconds` bounds the call from outside (code `step_timeout`). A tool that
    /// applies it itself (as `http.request` does, as its request timeout) says no.
    fn bounded_by_step_timeout(&self) -> bool {
        true
    }

    fn run<'a>(
        &'a self,
        step: &'a Step,
        with: Value,
        ctx: &'a RunContext,
    ) -> BoxFuture<'a, Result<Value, RunFailure>>;
}

/// What a run knows about itself; becomes the template context.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub task_id: Uuid,
    pub task_title: String,
    /// The due_work id; also the idempotency key (stable across the attempts of one fire).
    pub run_id: i64,
    pub attempt: i32,
    pub scheduled_for: DateTime<Utc>,
    /// Task params merged with run_now params (run_now wins).
    pub params: Map<String, Value>,
    /// `{id, topic, payload, published_at}` for event-triggered runs.
    pub event: Option<Value>,
    /// The secrets the pipeline reads (`secrets.NAME`), decrypted; redacted from everything the run returns.
    pub secrets: Map<String, Value>,
    /// Where `now` comes from.
    pub clock: Clock,
}

impl RunContext {
    /// The template context `{params, steps, event, task, run, now}` with no step results yet.
    pub fn template_context(&self, now: DateTime<Utc>) -> Value {
        json!({
            "params": self.params,
            "steps": {},
            "event": self.event.clone().unwrap_or(Value::Null),
            "secrets": self.secrets,
            "task": {"id": self.task_id, "title": self.task_title},
            "run": {
                "id": self.run_id,
                "attempt": self.attempt,
                "scheduled_for": rfc3339(self.scheduled_for),
                "idempotency_key": self.run_id,
            },
            "now": rfc3339(now),
        })
    }
}

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Retryable,
    Permanent,
}

/// Why a run failed. `code` is the error kind recorded on the run: `network`, `timeout`, `http_5xx`,
/// `http_429`, `http_4xx`, `template`, `unknown_tool`, `publish`, `step_timeout`, `run_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFailure {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
    pub step_id: Option<String>,
    /// The HTTP response of a failed `http.request` (status, headers, body), kept in the output's `failed_step`.
    pub response: Option<Value>,
}

impl RunFailure {
    pub fn retryable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            code,
            message: message.into(),
            step_id: None,
            response: None,
        }
    }

    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            code,
            message: message.into(),
            step_id: None,
            response: None,
        }
    }

    pub fn with_response(mut self, response: Value) -> Self {
        self.response = Some(response);
        self
    }

    fn template(error: TemplateError) -> Self {
        Self::permanent("template", error.message)
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step_id {
            Some(step) => write!(f, "step {step}: {} ({})", self.message, self.code),
            None => write!(f, "{} ({})", self.message, self.code),
        }
    }
}

impl std::error::Error for RunFailure {}

/// Runs pipelines with the built-in tools.
pub struct Executor {
    http: HttpTool,
    publish: publish::PublishTool,
    shell: ShellTool,
}

impl Executor {
    pub fn new(http: HttpTool, events: Arc<dyn EventSink>) -> Self {
        Self {
            http,
            publish: publish::PublishTool::new(events),
            shell: ShellTool::disabled(),
        }
    }

    /// The `shell` tool with this worker's policy (without it, `shell` steps fail with `policy`).
    pub fn with_shell(mut self, shell: ShellTool) -> Self {
        self.shell = shell;
        self
    }

    /// The tool a step names, if it exists.
    fn tool(&self, uses: &str) -> Option<&dyn Tool> {
        match uses {
            "http.request" => Some(&self.http),
            "events.publish" => Some(&self.publish),
            "sleep" => Some(&sleep::SleepTool),
            "noop" => Some(&noop::NoopTool),
            "shell" => Some(&self.shell),
            _ => None,
        }
    }

    /// Runs every step in order. Returns the output (`{"steps": {name: result}, "skipped": [ids]}`, plus
    /// `failed_step` when a step failed with an HTTP response worth keeping) and the outcome. The output
    /// holds the results of the steps that completed even when the run failed or timed out.
    pub async fn run(
        &self,
        payload: &Payload,
        ctx: &RunContext,
        run_timeout: Duration,
    ) -> (Value, Result<(), RunFailure>) {
        let mut state = RunState::new(ctx);
        let outcome = tokio::time::timeout(run_timeout, self.run_steps(payload, ctx, &mut state))
            .await
            .unwrap_or_else(|_| {
                Err(RunFailure {
                    step_id: state.current_step.clone(),
                    ..RunFailure::retryable(
                        "run_timeout",
                        format!("run exceeded its timeout of {}", seconds(run_timeout)),
                    )
                })
            });
        (state.into_output(), outcome)
    }

    async fn run_steps(
        &self,
        payload: &Payload,
        ctx: &RunContext,
        state: &mut RunState,
    ) -> Result<(), RunFailure> {
        for step in &payload.pipeline {
            state.current_step = Some(step.id.clone());
            state.refresh_now();
            let in_step = |failure: RunFailure| RunFailure {
                step_id: Some(step.id.clone()),
                ..failure
            };

            if let Some(condition) = &step.r#if {
                let run = pipeline::eval_condition(condition, &state.context).map_err(|e| {
                    in_step(RunFailure::permanent(
                        "template",
                        format!("if: {}", e.message),
                    ))
                })?;
                if !run {
                    tracing::debug!(step = %step.id, "step skipped by its condition");
                    state.skipped.push(step.id.clone());
                    continue;
                }
            }

            let with = pipeline::render(&step.with, &state.context)
                .map_err(|e| in_step(RunFailure::template(e)))?;
            let started = Instant::now();
            let result = self.run_step(step, with, ctx).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match result {
                Ok(value) => {
                    tracing::debug!(step = %step.id, tool = %step.uses, elapsed_ms, "step succeeded");
                    state.save(step.result_name(), value);
                }
                Err(mut failure) => {
                    if let Some(response) = failure.response.take() {
                        state.failed_step = Some(json!({"id": step.id, "result": response}));
                    }
                    tracing::info!(
                        step = %step.id,
                        tool = %step.uses,
                        elapsed_ms,
                        error_kind = failure.code,
                        "step failed"
                    );
                    return Err(in_step(failure));
                }
            }
        }
        state.current_step = None;
        Ok(())
    }

    async fn run_step(
        &self,
        step: &Step,
        with: Value,
        ctx: &RunContext,
    ) -> Result<Value, RunFailure> {
        let Some(tool) = self.tool(&step.uses) else {
            return Err(RunFailure::permanent(
                "unknown_tool",
                format!("unknown tool `{}`", step.uses),
            ));
        };
        if tool.bounded_by_step_timeout() {
            bounded(step, tool.run(step, with, ctx)).await
        } else {
            tool.run(step, with, ctx).await
        }
    }
}

/// Everything a run accumulates; kept outside the run's future so a run timeout keeps what completed.
struct RunState {
    context: Value,
    clock: Clock,
    skipped: Vec<String>,
    failed_step: Option<Value>,
    current_step: Option<String>,
}

impl RunState {
    fn new(ctx: &RunContext) -> Self {
        Self {
            context: ctx.template_context(ctx.clock.now()),
            clock: ctx.clock.clone(),
            skipped: Vec::new(),
            failed_step: None,
            current_step: None,
        }
    }

    fn refresh_now(&mut self) {
        self.context["now"] = Value::String(rfc3339(self.clock.now()));
    }

    fn save(&mut self, name: &str, result: Value) {
        self.context["steps"][name] = result;
    }

    fn into_output(mut self) -> Value {
        let mut output = json!({
            "steps": self.context["steps"].take(),
            "skipped": self.skipped,
        });
        if let Some(failed) = self.failed_step {
            output["failed_step"] = failed;
        }
        output
    }
}

/// Bounds a non-HTTP tool by the step's `timeout_seconds`.
async fn bounded(
    step: &Step,
    work: impl Future<Output = Result<Value, RunFailure>>,
) -> Result<Value, RunFailure> {
    match step.timeout_seconds {
        None => work.await,
        Some(limit) => {
            let limit = Duration::from_secs(limit);
            tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                Err(RunFailure::retryable(
                    "step_timeout",
                    format!("step exceeded its timeout of {}", seconds(limit)),
                ))
            })
        }
    }
}

fn describe(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "null (missing)".to_string(),
        Some(Value::String(s)) => {
            format!("the string {:?}", s.chars().take(80).collect::<String>())
        }
        Some(Value::Bool(_)) => "a boolean".to_string(),
        Some(Value::Number(n)) => format!("the number {n}"),
        Some(Value::Array(_)) => "an array".to_string(),
        Some(Value::Object(_)) => "an object".to_string(),
    }
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

fn rfc3339(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    // --- a tiny HTTP/1.1 server with canned answers -------------------------------------------------

    async fn spawn_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        addr
    }

    struct Request {
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    async fn read_request(stream: &mut TcpStream) -> Option<Request> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next()?.split(' ');
        let method = request_line.next()?.to_string();
        let path = request_line.next()?.to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Some(Request {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    async fn serve(mut stream: TcpStream) {
        let Some(request) = read_request(&mut stream).await else {
            return;
        };
        let json = "application/json";
        let (status, content_type, body, extra): (&str, &str, String, &str) =
            match request.path.as_str() {
                "/json" => ("200 OK", json, r#"{"ok":true,"n":3}"#.into(), ""),
                "/echo" => {
                    let echo = json!({
                        "method": request.method,
                        "idempotency_key": request.header("idempotency-key"),
                        "content_type": request.header("content-type"),
                        "x_token": request.header("x-token"),
                        "body": request.body,
                    });
                    (
                        "200 OK",
                        "application/json; charset=utf-8",
                        echo.to_string(),
                        "",
                    )
                }
                "/text" => (
                    "200 OK",
                    "text/plain",
                    "hello".into(),
                    "X-Multi: a\r\nX-Multi: b\r\n",
                ),
                "/fail" => ("500 Internal Server Error", "text/plain", "boom".into(), ""),
                "/missing" => ("404 Not Found", json, r#"{"error":"nope"}"#.into(), ""),
                "/limited" => (
                    "429 Too Many Requests",
                    "text/plain",
                    "slow down".into(),
                    "",
                ),
                "/redirect" => (
                    "302 Found",
                    "text/plain",
                    String::new(),
                    "Location: /json\r\n",
                ),
                "/big" => ("200 OK", "text/plain", "a".repeat(100_000), ""),
                "/big-json" => ("200 OK", json, format!("[\"{}\"]", "a".repeat(5_000)), ""),
                "/slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    ("200 OK", json, "{}".into(), "")
                }
                _ => ("404 Not Found", "text/plain", "unknown path".into(), ""),
            };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    // --- an in-memory event sink ---------------------------------------------------------------------

    #[derive(Default)]
    struct MemorySink {
        published: Mutex<Vec<(String, Value)>>,
        fail: bool,
    }

    impl EventSink for MemorySink {
        fn publish(
            &self,
            topic: String,
            payload: Value,
        ) -> BoxFuture<'_, Result<Published, String>> {
            Box::pin(async move {
                if self.fail {
                    return Err("database unavailable".to_string());
                }
                let mut published = self.published.lock().unwrap();
                published.push((topic, payload));
                Ok(Published {
                    event_id: format!("e-{}", published.len() - 1),
                    stream_id: Some(format!("1700000000000-{}", published.len() - 1)),
                })
            })
        }
    }

    // --- helpers -------------------------------------------------------------------------------------

    fn executor_with(sink: Arc<MemorySink>) -> Executor {
        Executor::new(http_tool(1024 * 64), sink)
    }

    /// The tests' servers listen on loopback.
    fn http_tool(cap: usize) -> HttpTool {
        HttpTool::new(orrery::http_policy::HttpPolicy::parse("127.0.0.0/8").unwrap())
            .unwrap()
            .with_body_cap(cap)
    }

    fn executor() -> Executor {
        executor_with(Arc::new(MemorySink::default()))
    }

    fn context() -> RunContext {
        let mut params = Map::new();
        params.insert("user".into(), json!("ada"));
        params.insert("enabled".into(), json!(false));
        RunContext {
            task_id: Uuid::new_v4(),
            task_title: "nightly report".into(),
            run_id: 4242,
            attempt: 2,
            scheduled_for: "2024-03-10T09:00:00Z".parse().unwrap(),
            params,
            event: Some(json!({
                "id": "e-1",
                "topic": "user.signup",
                "payload": {"email": "ada@example.com"},
                "published_at": "2024-03-10T08:59:59Z"
            })),
            secrets: Map::new(),
            clock: Clock::Database,
        }
    }

    fn payload(steps: Value) -> Payload {
        orrery::pipeline::validate_payload(&json!({ "pipeline": steps }))
            .unwrap_or_else(|errors| panic!("invalid test payload: {errors:?}"))
    }

    async fn run(executor: &Executor, payload: &Payload) -> (Value, Result<(), RunFailure>) {
        executor
            .run(payload, &context(), Duration::from_secs(30))
            .await
    }

    // --- tests ---------------------------------------------------------------------------------------

    #[tokio::test]
    async fn json_responses_are_parsed_and_visible_to_later_steps() {
        let addr = spawn_server().await;
        let payload = payload(json!([
            {"id": "fetch", "uses": "http.request", "with": {"url": format!("http://{addr}/json")}},
            {"id": "use", "uses": "noop", "with": {
                "n": "${steps.fetch.body.n}",
                "line": "status ${steps.fetch.status}, ok=${steps.fetch.body.ok}"
            }}
        ]));
        let (output, outcome) = run(&executor(), &payload).await;
        outcome.unwrap();
        assert_eq!(output["steps"]["fetch"]["status"], 200);
        assert_eq!(
            output["steps"]["fetch"]["body"],
            json!({"ok": true, "n": 3})
        );
        assert_eq!(
            output["steps"]["fetch"]["headers"]["content-type"],
            "application/json"
        );
        assert_eq!(
            output["steps"]["use"],
            json!({"n": 3, "line": "status 200, ok=true"})
        );
        assert_eq!(output["skipped"], json!([]));
    }

    #[tokio::test]
    async fn requests_carry_the_run_id_as_idempotency_key_and_the_rendered_body() {
        let addr = spawn_server().await;
        let ctx = context();
        let payload = payload(json!([{
            "id": "post", "uses": "http.request", "save_as": "posted",
            "with": {
                "url": format!("http://{addr}/echo"),
                "method": "post",
                "headers": {"X-Token": "t-${params.user}"},
                "json": {"user": "${params.user}", "attempt": "${run.attempt}"}
            }
        }]));
        let (output, outcome) = executor()
            .run(&payload, &ctx, Duration::from_secs(30))
            .await;
        outcome.unwrap();
        let echo = &output["steps"]["posted"]["body"];
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["idempotency_key"], ctx.run_id.to_string());
        assert_eq!(echo["x_token"], "t-ada");
        assert_eq!(echo["content_type"], "application/json");
        let sent: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
        assert_eq!(sent, json!({"user": "ada", "attempt": 2}));
    }

    #[tokio::test]
    async fn a_step_may_set_its_own_idempotency_key() {
        let addr = spawn_server().await;
        let payload = payload(json!([{
            "id": "post", "uses": "http.request",
            "with": {"url": format!("http://{addr}/echo"), "headers": {"Idempotency-Key": "mine"}}
        }]));
        let (output, outcome) = run(&executor(), &payload).await;
        outcome.unwrap();
        assert_eq!(output["steps"]["post"]["body"]["idempotency_key"], "mine");
    }

    #[tokio::test]
    async fn text_bodies_stay_text_and_repeated_headers_are_joined() {
        let addr = spawn_server().await;
        let payload = payload(json!([
            {"id": "t", "uses": "http.request", "with": {"url": format!("http://{addr}/text")}}
        ]));
        let (output, outcome) = run(&executor(), &payload).await;
        outcome.unwrap();
        assert_eq!(output["steps"]["t"]["body"], "hello");
        assert_eq!(output["steps"]["t"]["headers"]["x-multi"], "a, b");
    }

    #[tokio::test]
    async fn server_errors_are_retryable_and_keep_earlier_results() {
        let addr = spawn_server().await;
        let payload = payload(json!([
            {"id": "first", "uses": "noop", "with": {"a": 1}},
            {"id": "call", "uses": "http.request", "with": {"url": format!("http://{addr}/fail")}},
            {"id": "never", "uses": "noop"}
        ]));
        let (output, outcome) = run(&executor(), &payload).await;
        let failure = outcome.unwrap_err();
        assert_eq!(failure.kind, ErrorKind::Retryable);
        assert_eq!(failure.code, "http_5xx");
        assert_eq!(failure.step_id.as_deref(), Some("call"));
        assert!(failure.message.contains("500"), "{}", failure.message);
        assert!(failure.message.contains("boom"), "{}", failure.message);
        assert_eq!(output["steps"], json!({"first": {"a": 1}}));
        assert_eq!(output["failed_step"]["id"], "call");
        assert_eq!(output["failed_step"]["result"]["status"], 500);
    }

    #[tokio::test]
    async fn rate_limits_are_retryable_and_client_errors_are_permanent() {
        let addr = spawn_server().await;
        let limited = payload(json!([
            {"id": "c", "uses": "http.request", "with": {"url": format!("http://{addr}/limited")}}
        ]));
        let failure = run(&executor(), &limited).await.1.unwrap_err();
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Retryable, "http_429")
        );

        let missing = payload(json!([
            {"id": "c", "uses": "http.request", "with": {"url": format!("http://{addr}/missing")}}
        ]));
        let failure = run(&executor(), &missing).await.1.unwrap_err();
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Permanent, "http_4xx")
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_count_as_success() {
        let addr = spawn_server().await;
        let payload = payload(json!([
            {"id": "r", "uses": "http.request", "with": {"url": format!("http://{addr}/redirect")}}
        ]));
        let (output, outcome) = run(&executor(), &payload).await;
        outcome.unwrap();
        assert_eq!(output["steps"]["r"]["status"], 302);
        assert_eq!(output["steps"]["r"]["headers"]["location"], "/json");
    }

    #[tokio::test]
    async fn slow_responses_time_out_as_retryable() {
        let addr = spawn_server().await;
        let payload = payload(json!([{
            "id": "slow", "uses": "http.request", "timeout_seconds": 1,
            "with": {"url": format!("http://{addr}/slow")}
        }]));
        let started = Instant::now();
        let failure = run(&executor(), &payload).await.1.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Retryable, "timeout")
        );
    }

    #[tokio::test]
    async fn the_request_timeout_can_come_from_with() {
        let addr = spawn_server().await;
        let payload = payload(json!([{
            "id": "slow", "uses": "http.request",
            "with": {"url": format!("http://{addr}/slow"), "timeout_seconds": 1}
        }]));
        let started = Instant::now();
        let failure = run(&executor(), &payload).await.1.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(failure.code, "timeout");
    }

    #[tokio::test]
    async fn refused_connections_are_retryable_network_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let payload = payload(json!([
            {"id": "c", "uses": "http.request", "with": {"url": format!("http://{addr}/json")}}
        ]));
        let failure = run(&executor(), &payload).await.1.unwrap_err();
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Retryable, "network")
        );
    }

    fn closed_executor() -> Executor {
        Executor::new(
            HttpTool::new(orrery::http_policy::HttpPolicy::default()).unwrap(),
            Arc::new(MemorySink::default()),
        )
    }

    #[tokio::test]
    async fn cloud_metadata_addresses_are_refused_permanently_before_any_connection() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let payload =
                payload(json!([{"id": "meta", "uses": "http.request", "with": {"url": url}}]));
            // Even a worker that allows every private range never calls them.
            let open = Executor::new(
                HttpTool::new(orrery::http_policy::HttpPolicy::parse("0.0.0.0/0,::/0").unwrap())
                    .unwrap(),
                Arc::new(MemorySink::default()),
            );
            let failure = run(&open, &payload).await.1.unwrap_err();
            assert_eq!(
                (failure.kind, failure.code),
                (ErrorKind::Permanent, "policy"),
                "{url}"
            );
            assert!(
                failure.message.contains("never calls"),
                "{}",
                failure.message
            );
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed_by_address_and_by_name() {
        let addr = spawn_server().await;
        for url in [
            format!("http://{addr}/json"),
            format!("http://localhost:{}/json", addr.port()),
        ] {
            let payload =
                payload(json!([{"id": "l", "uses": "http.request", "with": {"url": url}}]));
            let failure = run(&closed_executor(), &payload).await.1.unwrap_err();
            assert_eq!(
                (failure.kind, failure.code),
                (ErrorKind::Permanent, "policy"),
                "{url}"
            );
            assert!(
                failure.message.contains("WORKER_HTTP_ALLOW_CIDRS"),
                "{}",
                failure.message
            );
            // The same request with loopback allowed goes through.
            let (output, outcome) = run(&executor(), &payload).await;
            assert!(outcome.is_ok(), "{output}");
        }
    }

    #[tokio::test]
    async fn bodies_are_capped() {
        let addr = spawn_server().await;
        let payload = payload(json!([
            {"id": "big", "uses": "http.request", "with": {"url": format!("http://{addr}/big")}},
            {"id": "big_json", "uses": "http.request", "with": {"url": format!("http://{addr}/big-json")}}
        ]));
        let executor = Executor::new(http_tool(1024), Arc::new(MemorySink::default()));
        let (output, outcome) = run(&executor, &payload).await;
        outcome.unwrap();
        assert_eq!(output["steps"]["big"]["body"].as_str().unwrap().len(), 1024);
        assert_eq!(output["steps"]["big"]["truncated"], true);
        // Truncated JSON cannot be parsed; it is kept as text.
        assert!(output["steps"]["big_json"]["body"].is_string());
        assert_eq!(output["steps"]["big_json"]["truncated"], true);
    }

    #[tokio::test]
    async fn events_are_published_with_rendered_topic_and_payload() {
        let sink = Arc::new(MemorySink::default());
        let payload = payload(json!([{
            "id": "pub", "uses": "events.publish",
            "with": {"topic": "welcome.${params.user}", "payload": {"email": "${event.payload.email}"}}
        }]));
        let (output, outcome) = run(&executor_with(sink.clone()), &payload).await;
        outcome.unwrap();
        assert_eq!(
            output["steps"]["pub"],
            json!({"event_id": "e-0", "stream_id": "1700000000000-0", "topic": "welcome.ada"})
        );
        assert_eq!(
            *sink.published.lock().unwrap(),
            vec![(
                "welcome.ada".to_string(),
                json!({"email": "ada@example.com"})
            )]
        );
    }

    #[tokio::test]
    async fn publish_failures_are_retryable() {
        let sink = Arc::new(MemorySink {
            fail: true,
            ..MemorySink::default()
        });
        let payload = payload(json!([
            {"id": "pub", "uses": "events.publish", "with": {"topic": "a.b", "payload": null}}
        ]));
        let failure = run(&executor_with(sink), &payload).await.1.unwrap_err();
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Retryable, "publish")
        );
    }

    #[tokio::test]
    async fn a_rendered_topic_must_still_be_a_topic() {
        let payload = payload(json!([
            {"id": "pub", "uses": "events.publish", "with": {"topic": "${params.user}.*", "payload": 1}}
        ]));
        let failure = run(&executor(), &payload).await.1.unwrap_err();
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Permanent, "template")
        );
    }

    #[tokio::test]
    async fn falsy_conditions_skip_steps() {
        let payload = payload(json!([
            {"id": "off", "uses": "noop", "if": "params.enabled"},
            {"id": "on", "uses": "noop", "if": "${params.user == 'ada'}", "with": {"x": 1}},
            {"id": "after", "uses": "noop", "with": {"off": "${steps.off}"}}
        ]));
        let (output, outcome) = run(&executor(), &payload).await;
        outcome.unwrap();
        assert_eq!(output["skipped"], json!(["off"]));
        assert_eq!(
            output["steps"],
            json!({"on": {"x": 1}, "after": {"off": null}})
        );
    }

    #[tokio::test]
    async fn template_errors_are_permanent_and_stop_the_run() {
        let payload = payload(json!([
            {"id": "first", "uses": "noop"},
            {"id": "bad", "uses": "noop", "with": {"greeting": "hello ${params.nobody}"}},
            {"id": "never", "uses": "noop"}
        ]));
        let (output, outcome) = run(&executor(), &payload).await;
        let failure = outcome.unwrap_err();
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Permanent, "template")
        );
        assert_eq!(failure.step_id.as_deref(), Some("bad"));
        assert_eq!(output["steps"], json!({"first": {}}));
    }

    #[tokio::test]
    async fn a_url_rendered_to_a_non_string_is_a_template_error() {
        let payload = payload(json!([
            {"id": "c", "uses": "http.request", "with": {"url": "${run.attempt}"}}
        ]));
        let failure = run(&executor(), &payload).await.1.unwrap_err();
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Permanent, "template")
        );
    }

    #[tokio::test]
    async fn unknown_tools_are_permanent() {
        // Validation rejects unknown tools; this guards rows written before a tool was removed.
        let payload = Payload {
            params: Map::new(),
            pipeline: vec![Step {
                id: "x".into(),
                uses: "shell.exec".into(),
                with: json!({}),
                save_as: None,
                r#if: None,
                timeout_seconds: None,
            }],
        };
        let failure = run(&executor(), &payload).await.1.unwrap_err();
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Permanent, "unknown_tool")
        );
    }

    #[tokio::test]
    async fn the_whole_run_is_bounded_and_keeps_completed_results() {
        let payload = payload(json!([
            {"id": "first", "uses": "noop", "with": {"a": 1}},
            {"id": "nap", "uses": "sleep", "with": {"seconds": 5}}
        ]));
        let started = Instant::now();
        let (output, outcome) = executor()
            .run(&payload, &context(), Duration::from_millis(200))
            .await;
        assert!(started.elapsed() < Duration::from_secs(2));
        let failure = outcome.unwrap_err();
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Retryable, "run_timeout")
        );
        assert_eq!(failure.step_id.as_deref(), Some("nap"));
        assert_eq!(output["steps"], json!({"first": {"a": 1}}));
    }

    #[tokio::test]
    async fn step_timeouts_bound_other_tools() {
        let payload = payload(json!([
            {"id": "nap", "uses": "sleep", "timeout_seconds": 1, "with": {"seconds": 5}}
        ]));
        let started = Instant::now();
        let failure = run(&executor(), &payload).await.1.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            (failure.kind, failure.code),
            (ErrorKind::Retryable, "step_timeout")
        );
    }

    #[tokio::test]
    async fn sleep_reports_what_it_slept_and_templates_see_the_run() {
        let ctx = context();
        let payload = payload(json!([
            {"id": "nap", "uses": "sleep", "with": {"seconds": 0.01}},
            {"id": "who", "uses": "noop", "with": {
                "task": "${task.title}",
                "task_id": "${task.id}",
                "run": "${run.id}",
                "key": "${run.idempotency_key}",
                "scheduled_for": "${run.scheduled_for}",
                "topic": "${event.topic}",
                "has_now": "${length(now) > `0`}"
            }}
        ]));
        let (output, outcome) = executor()
            .run(&payload, &ctx, Duration::from_secs(30))
            .await;
        outcome.unwrap();
        assert_eq!(output["steps"]["nap"], json!({"slept_seconds": 0.01}));
        assert_eq!(
            output["steps"]["who"],
            json!({
                "task": "nightly report",
                "task_id": ctx.task_id.to_string(),
                "run": ctx.run_id,
                "key": ctx.run_id,
                "scheduled_for": "2024-03-10T09:00:00Z",
                "topic": "user.signup",
                "has_now": true
            })
        );
    }

    #[tokio::test]
    async fn an_empty_pipeline_succeeds_with_no_results() {
        let (output, outcome) = run(&executor(), &payload(json!([]))).await;
        outcome.unwrap();
        assert_eq!(output, json!({"steps": {}, "skipped": []}));
    }

    #[test]
    fn runs_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let executor = executor();
        let payload = payload(json!([]));
        let ctx = context();
        let future = executor.run(&payload, &ctx, Duration::from_secs(1));
        assert_send(&future);
    }
}
