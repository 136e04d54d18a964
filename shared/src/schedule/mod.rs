//! Schedule math: cron, RFC 5545 recurrence rules, one-off instants and event topics.
//!
//! Everything here is pure computation on instants: no I/O, no clock. Every fire is a UTC instant with whole
//! seconds; the DST policy (see `docs/dst.md`) is applied when a local wall-clock time is turned into an instant.

mod cron;
mod local;
mod once;
mod recurrence;
mod rrule;
mod topic;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Months, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

pub use topic::{validate_topic, TopicPattern, MAX_TOPIC_LEN};

/// How far ahead a preview (and `next_fires`) looks before giving up on a sparse or exhausted schedule.
pub const PREVIEW_HORIZON_YEARS: u32 = 12;

/// The largest COUNT accepted in an RRULE; the COUNT-th occurrence is computed once at parse time.
pub const MAX_RRULE_COUNT: u32 = 100_000;

/// Which language `schedule_expr` is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cron,
    Rrule,
    Once,
    Event,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Cron => "cron",
            ScheduleKind::Rrule => "rrule",
            ScheduleKind::Once => "once",
            ScheduleKind::Event => "event",
        }
    }
}

// Read straight from `task.schedule_kind` and bound as its spelling.
crate::model::sql_text!(ScheduleKind);

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScheduleKind {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cron" => Ok(ScheduleKind::Cron),
            "rrule" => Ok(ScheduleKind::Rrule),
            "once" => Ok(ScheduleKind::Once),
            "event" => Ok(ScheduleKind::Event),
            other => Err(ScheduleError::new(format!(
                "unknown schedule kind {other:?} (expected cron, rrule, once or event)"
            ))),
        }
    }
}

/// A schedule expression that cannot be accepted; the message says what is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ScheduleError {
    pub message: String,
}

impl ScheduleError {
    pub fn new(message: impl Into<String>) -> Self {
        ScheduleError {
            message: message.into(),
        }
    }
}

/// Parses an IANA time zone name (`UTC`, `America/Argentina/Buenos_Aires`, `Etc/GMT+2`).
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    if name.is_empty() {
        return Err(ScheduleError::new("time zone is empty"));
    }
    if name.trim() != name || name.chars().any(char::is_whitespace) {
        return Err(ScheduleError::new(format!(
            "unknown time zone {name:?}: IANA names contain no spaces"
        )));
    }
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::new(format!("unknown time zone {name}")))
}

/// A parsed, valid schedule: a value that exists can compute its fires.
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: ScheduleKind,
    tz: Tz,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    Cron(cron::CronSchedule),
    Rrule(recurrence::RecurrenceSet),
    Once(DateTime<Utc>),
    Event(TopicPattern),
}

impl Schedule {
    /// Parses `expr` as `kind` in time zone `tz`.
    ///
    /// `anchor`: the instant a bare RRULE (no DTSTART) is anchored to: local midnight (in `tz`) of anchor's local
    /// day, or the first valid time after midnight if midnight is skipped. Unused by other kinds.
    pub fn parse(
        kind: ScheduleKind,
        expr: &str,
        tz: Tz,
        anchor: DateTime<Utc>,
    ) -> Result<Schedule, ScheduleError> {
        let body = match kind {
            ScheduleKind::Cron => Body::Cron(cron::CronSchedule::parse(expr, tz)?),
            ScheduleKind::Rrule => Body::Rrule(recurrence::RecurrenceSet::parse(expr, tz, anchor)?),
            ScheduleKind::Once => Body::Once(once::parse_once(expr, tz)?),
            ScheduleKind::Event => Body::Event(TopicPattern::parse(expr)?),
        };
        Ok(Schedule { kind, tz, body })
    }

    pub fn kind(&self) -> ScheduleKind {
        self.kind
    }

    /// The task's time zone (the one the schedule was parsed with).
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The zone the schedule's wall-clock times are written in: the task's zone, except for an RRULE whose
    /// DTSTART names its own (`DTSTART;TZID=America/New_York:...`, or UTC for a DTSTART ending in `Z`).
    pub fn rule_timezone(&self) -> Tz {
        match &self.body {
            Body::Rrule(r) => r.zone(),
            _ => self.tz,
        }
    }

    /// For an RRULE written without DTSTART: the local date-time it is anchored at (local midnight of the
    /// anchor day, or the first valid time after it). `None` for every other schedule.
    pub fn implicit_rrule_start(&self) -> Option<chrono::NaiveDateTime> {
        match &self.body {
            Body::Rrule(r) => r.implicit_start(),
            _ => None,
        }
    }

    /// The first `count` fires strictly after `after`, at most [`PREVIEW_HORIZON_YEARS`] ahead of `after`,
    /// strictly increasing. Fewer than `count` means the schedule is exhausted (or sparser than the horizon).
    pub fn next_fires(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let horizon = after
            .checked_add_months(Months::new(12 * PREVIEW_HORIZON_YEARS))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut fires = Vec::with_capacity(count.min(1024));
        let mut cursor = after;
        while fires.len() < count {
            match self.next_fire_after(cursor) {
                Some(t) if t <= horizon => {
                    fires.push(t);
                    cursor = t;
                }
                _ => break,
            }
        }
        fires
    }

    /// The next fire strictly after `cursor`, or `None` when the schedule is exhausted. Cheap per call: it jumps
    /// to the cursor instead of replaying the schedule's history.
    pub fn next_fire_after(&self, cursor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.body {
            Body::Cron(c) => c.next_after(cursor),
            Body::Rrule(r) => r.next_after(cursor),
            Body::Once(t) => (*t > cursor).then_some(*t),
            Body::Event(_) => None,
        }
    }

    /// The topic pattern of an event schedule.
    pub fn topic_pattern(&self) -> Option<&TopicPattern> {
        match &self.body {
            Body::Event(p) => Some(p),
            _ => None,
        }
    }

    /// True for a cron expression whose minute and hour are each a single number (`30 2 * * *`): such a fire
    /// skipped by a DST gap runs at the end of the gap instead of not at all.
    pub fn is_fixed_time_cron(&self) -> bool {
        matches!(&self.body, Body::Cron(c) if c.is_fixed_time())
    }
}

#[cfg(test)]
mod tests;
