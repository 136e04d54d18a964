//! Write-time validation of payloads. Every problem is reported, each with a field path rooted at
//! `payload` (`payload.pipeline[2].with.url`), so the API can answer one 422 that lists them all.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::template::{check_expression, check_string, condition_expression, whole_template};
use super::{
    Payload, Step, HTTP_METHODS, KNOWN_TOOLS, MAX_SLEEP_SECONDS, MAX_STEPS, MAX_TIMEOUT_SECONDS,
};

/// One validation problem, shaped like an entry of the API's 422 `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

const PAYLOAD_KEYS: &[&str] = &["params", "pipeline"];
const STEP_KEYS: &[&str] = &["id", "uses", "with", "save_as", "if", "timeout_seconds"];
const HTTP_KEYS: &[&str] = &[
    "url",
    "method",
    "headers",
    "json",
    "body",
    "timeout_seconds",
];
const PUBLISH_KEYS: &[&str] = &["topic", "payload"];
const SLEEP_KEYS: &[&str] = &["seconds"];
const EXTERNAL_KEYS: &[&str] = &["queue"];
const SHELL_KEYS: &[&str] = &[
    "program",
    "args",
    "shell",
    "command",
    "env",
    "cwd",
    "stdin",
    "retryable",
];
/// Most arguments of one `shell` step.
const MAX_SHELL_ARGS: usize = 1_000;
const MAX_TOPIC_LEN: usize = 200;

/// Validates a raw JSON payload at write time and returns the typed payload, or every problem found.
///
/// Optional step fields (`with`, `save_as`, `if`, `timeout_seconds`) given as `null` count as absent.
pub fn validate_payload(raw: &Value) -> Result<Payload, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(object) = raw.as_object() else {
        return Err(vec![FieldError::new("payload", "must be an object")]);
    };
    reject_unknown_keys(object, PAYLOAD_KEYS, "payload", "", &mut errors);

    let params = match object.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params.clone(),
        Some(_) => {
            errors.push(FieldError::new("payload.params", "must be an object"));
            Map::new()
        }
    };

    let mut pipeline = Vec::new();
    match object.get("pipeline") {
        // Absent means no steps (the documented default `{"params": {}, "pipeline": []}`).
        None | Some(Value::Null) => {}
        Some(Value::Array(steps)) => {
            if steps.len() > MAX_STEPS {
                errors.push(FieldError::new(
                    "payload.pipeline",
                    format!("must have at most {MAX_STEPS} steps (has {})", steps.len()),
                ));
            }
            let mut seen = Seen::default();
            for (index, raw_step) in steps.iter().enumerate() {
                if let Some(step) = validate_step(index, raw_step, &mut seen, &mut errors) {
                    pipeline.push(step);
                }
            }
            // An external step hands the whole run to a program outside Orrery: nothing can run around it.
            if steps.len() > 1 {
                for (index, raw_step) in steps.iter().enumerate() {
                    if raw_step.get("uses").and_then(Value::as_str) == Some("external") {
                        errors.push(FieldError::new(
                            format!("payload.pipeline[{index}].uses"),
                            "an external step must be the pipeline's only step",
                        ));
                    }
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            "payload.pipeline",
            "must be an array of steps",
        )),
    }

    if errors.is_empty() {
        Ok(Payload { params, pipeline })
    } else {
        Err(errors)
    }
}

/// A topic an event can be published to: dot-separated segments of `[A-Za-z0-9_-]`, at most 200
/// characters, no wildcard.
pub fn is_concrete_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// Ids and result names already used by earlier steps, with the path of the step that used them.
#[derive(Default)]
struct Seen {
    ids: HashMap<String, String>,
    result_names: HashMap<String, String>,
}

fn validate_step(
    index: usize,
    raw: &Value,
    seen: &mut Seen,
    errors: &mut Vec<FieldError>,
) -> Option<Step> {
    let path = format!("payload.pipeline[{index}]");
    let Some(object) = raw.as_object() else {
        errors.push(FieldError::new(path, "must be an object"));
        return None;
    };
    let errors_before = errors.len();
    reject_unknown_keys(object, STEP_KEYS, &path, "", errors);

    let id = required_string(object, "id", &path, errors);
    let mut id_ok = false;
    if let Some(id) = id {
        if !is_step_id(id) {
            errors.push(FieldError::new(
                format!("{path}.id"),
                "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -",
            ));
        } else if let Some(first) = seen.ids.get(id) {
            errors.push(FieldError::new(
                format!("{path}.id"),
                format!("duplicate step id `{id}` (already used by {first})"),
            ));
        } else {
            seen.ids.insert(id.to_string(), path.clone());
            id_ok = true;
        }
    }

    let uses = required_string(object, "uses", &path, errors);
    if let Some(uses) = uses {
        if !KNOWN_TOOLS.contains(&uses) {
            errors.push(FieldError::new(
                format!("{path}.uses"),
                format!(
                    "unknown tool `{uses}`; known tools: {}",
                    KNOWN_TOOLS.join(", ")
                ),
            ));
        }
    }

    let with_path = format!("{path}.with");
    let with = match object.get("with") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(with @ Value::Object(map)) => {
            check_templates(with, &with_path, errors);
            if let Some(tool) = uses {
                check_tool_arguments(tool, map, &with_path, errors);
            }
            with.clone()
        }
        Some(_) => {
            errors.push(FieldError::new(&with_path, "must be an object"));
            Value::Object(Map::new())
        }
    };

    let save_as = optional_string(object, "save_as", &path, errors);
    let mut save_as_ok = save_as.is_none();
    if let Some(name) = save_as {
        if is_result_identifier(name) {
            save_as_ok = true;
        } else {
            errors.push(FieldError::new(
                format!("{path}.save_as"),
                "must be an identifier: a letter or _, then letters, digits or _, at most 64 characters",
            ));
        }
    }
    // Both names must be valid before the result name can be compared with earlier ones.
    if let (Some(id), true, true) = (id, id_ok, save_as_ok) {
        let (name, field) = match save_as {
            Some(name) => (name, "save_as"),
            None => (id, "id"),
        };
        if let Some(first) = seen.result_names.get(name) {
            errors.push(FieldError::new(
                format!("{path}.{field}"),
                format!(
                    "result name `{name}` is already used by {first}; \
                     each step's result is stored at steps.<save_as or id>"
                ),
            ));
        } else {
            seen.result_names.insert(name.to_string(), path.clone());
        }
    }

    let condition = optional_string(object, "if", &path, errors);
    if condition.is_some() && uses == Some("external") {
        errors.push(FieldError::new(
            format!("{path}.if"),
            "an external step cannot be conditional (no template is evaluated before it runs)",
        ));
    }
    if let Some(condition) = condition {
        let expr = condition_expression(condition);
        if expr.is_empty() {
            errors.push(FieldError::new(format!("{path}.if"), "must not be empty"));
        } else if let Err(e) = check_expression(expr) {
            errors.push(FieldError::new(format!("{path}.if"), e.message));
        }
    }

    let timeout_seconds = match object.get("timeout_seconds") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let timeout = value
                .as_u64()
                .filter(|t| (1..=MAX_TIMEOUT_SECONDS).contains(t));
            if timeout.is_none() {
                errors.push(FieldError::new(
                    format!("{path}.timeout_seconds"),
                    format!("must be an integer from 1 to {MAX_TIMEOUT_SECONDS}"),
                ));
            }
            timeout
        }
    };

    if errors.len() > errors_before {
        return None;
    }
    Some(Step {
        id: id?.to_string(),
        uses: uses?.to_string(),
        with,
        save_as: save_as.map(str::to_string),
        r#if: condition.map(str::to_string),
        timeout_seconds,
    })
}

fn check_tool_arguments(
    tool: &str,
    with: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    match tool {
        "http.request" => check_http_request(with, path, errors),
        "events.publish" => check_events_publish(with, path, errors),
        "sleep" => check_sleep(with, path, errors),
        "shell" => check_shell(with, path, errors),
        "external" => check_external(with, path, errors),
        // noop takes anything; unknown tools were already reported on `uses`.
        _ => {}
    }
}

fn check_http_request(with: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    reject_unknown_keys(with, HTTP_KEYS, path, " for http.request", errors);

    match with.get("url") {
        None => errors.push(FieldError::new(format!("{path}.url"), "is required")),
        Some(Value::String(url)) => {
            if !super::contains_template(url) && !looks_like_http_url(url) {
                errors.push(FieldError::new(
                    format!("{path}.url"),
                    "must be an absolute http:// or https:// URL",
                ));
            }
        }
        Some(_) => errors.push(FieldError::new(
            format!("{path}.url"),
            "must be a string (a URL or a template)",
        )),
    }

    let method_ok = match with.get("method") {
        None => true,
        Some(Value::String(method)) => {
            super::contains_template(method)
                || HTTP_METHODS.contains(&method.to_ascii_uppercase().as_str())
        }
        Some(_) => false,
    };
    if !method_ok {
        errors.push(FieldError::new(
            format!("{path}.method"),
            format!("must be one of {}", HTTP_METHODS.join(", ")),
        ));
    }

    match with.get("headers") {
        None => {}
        Some(Value::Object(headers)) => {
            for (name, value) in headers {
                let field = child_path(&format!("{path}.headers"), name);
                if !is_header_name(name) {
                    errors.push(FieldError::new(&field, "is not a valid HTTP header name"));
                }
                match value {
                    Value::String(v) if v.contains(['\r', '\n']) => {
                        errors.push(FieldError::new(&field, "must not contain line breaks"))
                    }
                    Value::String(_) => {}
                    _ => errors.push(FieldError::new(&field, "must be a string")),
                }
            }
        }
        Some(v) if is_whole_template(v) => {}
        Some(_) => errors.push(FieldError::new(
            format!("{path}.headers"),
            "must be an object of strings",
        )),
    }

    if with.contains_key("json") && with.contains_key("body") {
        errors.push(FieldError::new(
            format!("{path}.body"),
            "set either json or body, not both",
        ));
    }
    if let Some(body) = with.get("body") {
        if !body.is_string() {
            errors.push(FieldError::new(
                format!("{path}.body"),
                "must be a string (use json for a JSON body)",
            ));
        }
    }

    if let Some(timeout) = with.get("timeout_seconds") {
        let ok = is_whole_template(timeout)
            || timeout
                .as_u64()
                .is_some_and(|t| (1..=MAX_TIMEOUT_SECONDS).contains(&t));
        if !ok {
            errors.push(FieldError::new(
                format!("{path}.timeout_seconds"),
                format!("must be an integer from 1 to {MAX_TIMEOUT_SECONDS} or a template"),
            ));
        }
    }
}

fn check_events_publish(with: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    reject_unknown_keys(with, PUBLISH_KEYS, path, " for events.publish", errors);
    match with.get("topic") {
        None => errors.push(FieldError::new(format!("{path}.topic"), "is required")),
        Some(Value::String(topic)) => {
            if !super::contains_template(topic) && !is_concrete_topic(topic) {
                errors.push(FieldError::new(
                    format!("{path}.topic"),
                    "must be a topic: dot-separated segments of A-Z, a-z, 0-9, _ and -, \
                     at most 200 characters, no wildcards",
                ));
            }
        }
        Some(_) => errors.push(FieldError::new(
            format!("{path}.topic"),
            "must be a string (a topic or a template)",
        )),
    }
    if !with.contains_key("payload") {
        errors.push(FieldError::new(
            format!("{path}.payload"),
            "is required (any JSON value)",
        ));
    }
}

fn check_sleep(with: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    reject_unknown_keys(with, SLEEP_KEYS, path, " for sleep", errors);
    match with.get("seconds") {
        None => errors.push(FieldError::new(format!("{path}.seconds"), "is required")),
        Some(v) if is_whole_template(v) => {}
        Some(v) => {
            let ok = v
                .as_f64()
                .is_some_and(|s| (0.0..=MAX_SLEEP_SECONDS).contains(&s));
            if !ok {
                errors.push(FieldError::new(
                    format!("{path}.seconds"),
                    format!("must be a number from 0 to {MAX_SLEEP_SECONDS} or a template"),
                ));
            }
        }
    }
}

fn check_external(with: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    reject_unknown_keys(with, EXTERNAL_KEYS, path, " for external", errors);
    match with.get("queue") {
        None => errors.push(FieldError::new(format!("{path}.queue"), "is required")),
        Some(Value::String(queue)) if super::is_queue_name(queue) => {}
        Some(_) => errors.push(FieldError::new(
            format!("{path}.queue"),
            "must be a queue name: 1 to 100 characters of A-Z, a-z, 0-9, ., _ and - (no template)",
        )),
    }
}

fn check_shell(with: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    reject_unknown_keys(with, SHELL_KEYS, path, " for shell", errors);
    let shell = match with.get("shell") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::new(
                format!("{path}.shell"),
                "must be a boolean",
            ));
            false
        }
    };
    if shell {
        for key in ["program", "args"] {
            if with.contains_key(key) {
                errors.push(FieldError::new(
                    format!("{path}.{key}"),
                    format!(
                        "is not allowed with shell: true (the program is {}; put the whole command line in command)",
                        super::SHELL_PATH
                    ),
                ));
            }
        }
        match with.get("command") {
            None => errors.push(FieldError::new(
                format!("{path}.command"),
                "is required with shell: true",
            )),
            Some(Value::String(c)) if !c.trim().is_empty() => {}
            Some(_) => errors.push(FieldError::new(
                format!("{path}.command"),
                "must be a non-empty string (a command line for /bin/sh -c, templates allowed)",
            )),
        }
    } else {
        if with.contains_key("command") {
            errors.push(FieldError::new(
                format!("{path}.command"),
                "is only allowed with shell: true; give program and args instead",
            ));
        }
        match with.get("program") {
            None => errors.push(FieldError::new(format!("{path}.program"), "is required")),
            Some(Value::String(p)) => {
                let ok = !p.is_empty()
                    && p.len() <= 4096
                    && !super::contains_template(p)
                    && !p.contains('\0')
                    && (p.starts_with('/') || !p.contains('/'));
                if !ok {
                    errors.push(FieldError::new(
                        format!("{path}.program"),
                        "must be an absolute path or a bare program name looked up on the worker's PATH \
                         (no template; the worker's WORKER_SHELL_ALLOW must allow it)",
                    ));
                }
            }
            Some(_) => errors.push(FieldError::new(
                format!("{path}.program"),
                "must be a string",
            )),
        }
        match with.get("args") {
            None => {}
            Some(Value::Array(args)) => {
                if args.len() > MAX_SHELL_ARGS {
                    errors.push(FieldError::new(
                        format!("{path}.args"),
                        format!("must have at most {MAX_SHELL_ARGS} arguments"),
                    ));
                }
                for (i, arg) in args.iter().enumerate() {
                    if !arg.is_string() {
                        errors.push(FieldError::new(
                            format!("{path}.args[{i}]"),
                            "must be a string (templates allowed)",
                        ));
                    }
                }
            }
            Some(v) if is_whole_template(v) => {}
            Some(_) => errors.push(FieldError::new(
                format!("{path}.args"),
                "must be an array of strings",
            )),
        }
    }
    match with.get("env") {
        None => {}
        Some(Value::Object(env)) => {
            for (name, value) in env {
                let field = child_path(&format!("{path}.env"), name);
                if !is_env_name(name) {
                    errors.push(FieldError::new(
                        &field,
                        "is not a valid environment variable name (a letter or _, then letters, digits or _)",
                    ));
                } else if !value.is_string() {
                    errors.push(FieldError::new(
                        &field,
                        "must be a string (templates allowed)",
                    ));
                }
            }
        }
        Some(_) => errors.push(FieldError::new(
            format!("{path}.env"),
            "must be an object of strings",
        )),
    }
    match with.get("cwd") {
        None => {}
        Some(Value::String(cwd)) if cwd.starts_with('/') || super::contains_template(cwd) => {}
        Some(_) => errors.push(FieldError::new(
            format!("{path}.cwd"),
            "must be an absolute path (or a template)",
        )),
    }
    // stdin: any value; a string is written as is, anything else as JSON.
    match with.get("retryable") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => errors.push(FieldError::new(
            format!("{path}.retryable"),
            "must be a boolean",
        )),
    }
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 256
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Every syntax or name problem of every template in `value` (e.g. a dependency edge's `params`), each at the
/// path of its string under `path`.
pub fn template_errors(value: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_templates(value, path, &mut errors);
    errors
}

/// Reports every syntax or name problem of every template in `value`, at the path of its string.
fn check_templates(value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    match value {
        Value::String(s) => {
            if let Err(e) = check_string(s) {
                errors.push(FieldError::new(path, e.message));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_templates(item, &format!("{path}[{i}]"), errors);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                check_templates(item, &child_path(path, key), errors);
            }
        }
        _ => {}
    }
}

fn reject_unknown_keys(
    object: &Map<String, Value>,
    known: &[&str],
    path: &str,
    context: &str,
    errors: &mut Vec<FieldError>,
) {
    for key in object.keys() {
        if !known.contains(&key.as_str()) {
            errors.push(FieldError::new(
                child_path(path, key),
                format!(
                    "unknown field{context}; expected one of {}",
                    known.join(", ")
                ),
            ));
        }
    }
}

fn required_string<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match object.get(key) {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(format!("{path}.{key}"), "is required"));
            None
        }
        Some(value) => string_or_error(value, key, path, errors),
    }
}

fn optional_string<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match object.get(key) {
        None | Some(Value::Null) => None,
        Some(value) => string_or_error(value, key, path, errors),
    }
}

fn string_or_error<'a>(
    value: &'a Value,
    key: &str,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    let s = value.as_str();
    if s.is_none() {
        errors.push(FieldError::new(format!("{path}.{key}"), "must be a string"));
    }
    s
}

/// `path.key`, or `path["key"]` when the key would make the path ambiguous.
fn child_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_string()))
    }
}

fn is_whole_template(value: &Value) -> bool {
    value.as_str().and_then(whole_template).is_some()
}

fn is_step_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_result_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 64
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// RFC 9110 token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn looks_like_http_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(rest) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !url.chars().any(char::is_whitespace)
        }
        None => false,
    }
}
