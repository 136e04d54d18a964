//! `once` schedules: an RFC 3339 instant, or a naive local time in the task's zone.

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;

use super::{local, ScheduleError};

const NAIVE_FORMATS: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
];

/// Parses the single fire instant. Sub-second digits are dropped: fires are whole seconds.
pub(crate) fn parse_once(expr: &str, tz: Tz) -> Result<DateTime<Utc>, ScheduleError> {
    let text = expr.trim();
    if text.is_empty() {
        return Err(ScheduleError::new("once instant is empty"));
    }
    let whole_seconds =
        |t: DateTime<Utc>| DateTime::from_timestamp(t.timestamp(), 0).expect("in range");
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(whole_seconds(t.with_timezone(&Utc)));
    }
    let naive_text = text.split('.').next().unwrap_or(text);
    for format in NAIVE_FORMATS {
        if let Ok(local_time) = NaiveDateTime::parse_from_str(naive_text, format) {
            if naive_text.len() != text.len()
                && !text[naive_text.len() + 1..]
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            {
                break;
            }
            // A naive time in a DST gap is shifted forward by the gap, a repeated one takes its first instant.
            return Ok(whole_seconds(local::resolve_shifting(tz, local_time)));
        }
    }
    Err(ScheduleError::new(format!(
        "once instant {text:?} is not an RFC 3339 date-time (e.g. 2025-06-01T09:00:00Z) or a local YYYY-MM-DDTHH:MM:SS"
    )))
}
