//! Declarative task payloads: `{"params": {...}, "pipeline": [step, ...]}`.
//!
//! This module is pure (no I/O): the payload types, write-time validation with field paths for 422
//! answers, and the `${...}` template language the worker renders each step's `with` through. The worker
//! runs the steps (`services/worker/src/executor.rs`).
//!
//! Decisions:
//! - A pipeline has 0 to [`MAX_STEPS`] steps. An empty pipeline is allowed (an event task may exist only
//!   to record that events arrived); its runs succeed with no step results.
//! - `params` values are data, not templates: they are never rendered.
//! - Each step's result is stored under `steps.<save_as or id>`; those names must be unique within a
//!   pipeline (a later step may not silently overwrite an earlier result).
//! - Step ids are `[A-Za-z0-9_-]{1,64}`; `save_as` is an identifier `[A-Za-z_][A-Za-z0-9_]{0,63}` so that
//!   `${steps.name.body}` works without quoting (an id with `-` needs `${steps."my-id".body}`).
//! - `if` accepts a bare JMESPath expression (`params.enabled`) or one whole template
//!   (`${params.enabled}`).
//! - Template escape: `$${` is a literal `${`.

mod template;
mod validate;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use template::{
    condition_expression, contains_template, eval_condition, render, whole_template, TemplateError,
    CONTEXT_ROOTS,
};
pub use validate::{is_concrete_topic, template_errors, validate_payload, FieldError};

/// Tools a step may use. Anything else is rejected when the task is written.
pub const KNOWN_TOOLS: &[&str] = &[
    "http.request",
    "events.publish",
    "sleep",
    "noop",
    "shell",
    "external",
];

/// The program `shell: true` runs (`/bin/sh -c <command>`); the worker's allow list must name it.
pub const SHELL_PATH: &str = "/bin/sh";

/// An external queue name: 1 to 100 of `A-Za-z0-9._-`.
pub fn is_queue_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Methods `http.request` accepts (case-insensitive in payloads; sent upper-case).
pub const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// Upper bound on steps per pipeline.
pub const MAX_STEPS: usize = 50;

/// Upper bound on any timeout in a payload (one day).
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;

/// Upper bound on the `sleep` tool.
pub const MAX_SLEEP_SECONDS: f64 = 3_600.0;

/// Per-request timeout of `http.request` when neither the step nor `with` sets one.
pub const DEFAULT_HTTP_TIMEOUT_SECONDS: u64 = 30;

/// A task's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub params: Map<String, Value>,
    #[serde(default)]
    pub pipeline: Vec<Step>,
}

/// One step of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub uses: String,
    #[serde(default = "empty_object")]
    pub with: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_as: Option<String>,
    #[serde(rename = "if", default, skip_serializing_if = "Option::is_none")]
    pub r#if: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

impl Step {
    /// Where this step's result lives in the template context: `steps.<result_name>`.
    pub fn result_name(&self) -> &str {
        self.save_as.as_deref().unwrap_or(&self.id)
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}
