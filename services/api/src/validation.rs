//! The API's seam to the schedule engine and the pipeline validator: every call into them goes through here,
//! with their errors turned into field errors. A panic inside either (a bug, never the client's fault) is
//! contained and reported as a validation failure of the field rather than a dropped connection.

use std::panic::{catch_unwind, AssertUnwindSafe};

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use orrery::schedule::{self, Schedule, ScheduleKind};
use serde_json::Value;

use crate::error::FieldError;
use crate::models::{Fire, Fires};

pub use orrery::schedule::PREVIEW_HORIZON_YEARS;

/// Longest accepted schedule expression (the schema's CHECK counts characters after trimming spaces).
pub const MAX_EXPR_CHARS: usize = 4000;

pub fn parse_timezone(name: &str) -> Result<Tz, FieldError> {
    schedule::parse_timezone(name).map_err(|e| FieldError::new("timezone", e.message))
}

/// Parses a schedule, naming the field at fault (`schedule_kind`, `timezone` or `schedule_expr`).
pub fn parse_schedule(
    kind: ScheduleKind,
    expr: &str,
    timezone: &str,
    anchor: DateTime<Utc>,
) -> Result<Schedule, Vec<FieldError>> {
    let mut errors = Vec::new();
    let tz = parse_timezone(timezone).map_err(|e| errors.push(e)).ok();
    let trimmed = expr.trim_matches(' ');
    if trimmed.is_empty() {
        errors.push(FieldError::new("schedule_expr", "must not be empty"));
    } else if trimmed.chars().count() > MAX_EXPR_CHARS {
        errors.push(FieldError::new(
            "schedule_expr",
            format!("must be at most {MAX_EXPR_CHARS} characters long"),
        ));
    } else if expr.contains('\0') {
        errors.push(FieldError::new(
            "schedule_expr",
            "must not contain NUL characters",
        ));
    }
    let (Some(tz), true) = (tz, errors.is_empty()) else {
        return Err(errors);
    };
    match catch_unwind(AssertUnwindSafe(|| Schedule::parse(kind, expr, tz, anchor))) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(vec![FieldError::new("schedule_expr", e.message)]),
        Err(_) => {
            tracing::error!(kind = %kind, "the schedule engine panicked while parsing an expression");
            Err(vec![FieldError::new(
                "schedule_expr",
                "could not be evaluated",
            )])
        }
    }
}

/// The next `count` fires strictly after `after` (contained: a panic yields no fires and is logged).
pub fn next_fires(s: &Schedule, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
    catch_unwind(AssertUnwindSafe(|| s.next_fires(after, count))).unwrap_or_else(|_| {
        tracing::error!("the schedule engine panicked while computing fires");
        Vec::new()
    })
}

pub fn next_fire_after(s: &Schedule, cursor: DateTime<Utc>) -> Option<DateTime<Utc>> {
    catch_unwind(AssertUnwindSafe(|| s.next_fire_after(cursor))).unwrap_or(None)
}

/// The fires as the API shows them: UTC with `Z` and whole seconds, and local with its offset.
pub fn fires_json(s: &Schedule, fires: &[DateTime<Utc>]) -> Fires {
    let tz = s.rule_timezone();
    Fires {
        timezone: tz.name().to_string(),
        fires: fires
            .iter()
            .map(|t| Fire {
                at: t.to_rfc3339_opts(SecondsFormat::Secs, true),
                local: t
                    .with_timezone(&tz)
                    .to_rfc3339_opts(SecondsFormat::Secs, false),
            })
            .collect(),
    }
}

/// Validates a task payload (pipeline shape, tool names, template syntax); field paths start at `payload`.
pub fn validate_payload(payload: &Value) -> Result<(), Vec<FieldError>> {
    match catch_unwind(AssertUnwindSafe(|| {
        orrery::pipeline::validate_payload(payload)
    })) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(errors)) => Err(errors
            .into_iter()
            .map(|e| FieldError::new(e.field, e.message))
            .collect()),
        Err(_) => {
            tracing::error!("the pipeline validator panicked");
            Err(vec![FieldError::new("payload", "could not be validated")])
        }
    }
}

/// Fills in the documented defaults of a payload object: `params` → `{}` and `pipeline` → `[]` when absent or
/// null, so what is stored (and returned) is always the whole shape the worker runs.
pub fn normalize_payload(payload: &mut Value) {
    if let Value::Object(map) = payload {
        for (key, default) in [
            ("params", Value::Object(Default::default())),
            ("pipeline", Value::Array(Vec::new())),
        ] {
            let entry = map.entry(key).or_insert(Value::Null);
            if entry.is_null() {
                *entry = default;
            }
        }
    }
}

/// A concrete topic for publishing (no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), FieldError> {
    schedule::validate_topic(topic).map_err(|e| FieldError::new("topic", e.message))
}

/// Whether an event task's pattern matches a published topic.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    schedule::TopicPattern::parse(pattern)
        .map(|p| p.matches(topic))
        .unwrap_or(false)
}
