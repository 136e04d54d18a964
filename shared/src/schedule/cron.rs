//! Five-field cron (POSIX day semantics) evaluated in a time zone.
//!
//! Fixed-time expressions (minute and hour each a single number) map every matching local time to one instant:
//! a time skipped by a DST gap runs at the end of the gap, a repeated time at its first instant. Every other
//! expression runs on real instants: it fires whenever the local clock shows a matching minute, so twice in a
//! repeated hour and never for local times that do not exist.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;

use super::local::{self, Mapping, MAX_SHIFT};
use super::ScheduleError;

/// How far ahead the field search looks before declaring that nothing matches.
const SEARCH_YEARS: i32 = 60;

#[derive(Clone, Copy)]
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTH_NAMES: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: MONTH_NAMES,
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: DAY_NAMES,
};

/// A parsed field: a bit per allowed value, whether it was exactly `*`, and its single value if it was one.
struct Field {
    bits: u64,
    star: bool,
    single: Option<u32>,
}

#[derive(Clone, Debug)]
pub(crate) struct CronSchedule {
    tz: Tz,
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    dom_star: bool,
    dow_star: bool,
    fixed: bool,
}

fn expand_macro(expr: &str) -> Result<&'static str, ScheduleError> {
    Ok(match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            return Err(ScheduleError::new(format!(
                "unknown cron macro {expr} (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
            )))
        }
    })
}

fn parse_value(text: &str, spec: FieldSpec) -> Result<u32, ScheduleError> {
    if text.is_empty() {
        return Err(ScheduleError::new(format!(
            "{} field has an empty value",
            spec.name
        )));
    }
    if let Some(i) = spec.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(i as u32 + spec.min);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        let upper = text.to_ascii_uppercase();
        for (c, what) in [
            ('L', "L (last)"),
            ('W', "W (nearest weekday)"),
            ('H', "H (hashed)"),
        ] {
            if upper.contains(c) {
                return Err(unsupported(what, text, spec));
            }
        }
        return Err(ScheduleError::new(format!(
            "{} value {text:?} is not a number{}",
            spec.name,
            if spec.names.is_empty() {
                ""
            } else {
                " or a name"
            }
        )));
    }
    let value: u32 = text.parse().map_err(|_| {
        ScheduleError::new(format!(
            "{} {text} is out of range {}-{}",
            spec.name, spec.min, spec.max
        ))
    })?;
    if value < spec.min || value > spec.max {
        return Err(ScheduleError::new(format!(
            "{} {value} is out of range {}-{}",
            spec.name, spec.min, spec.max
        )));
    }
    Ok(value)
}

fn unsupported(what: &str, text: &str, spec: FieldSpec) -> ScheduleError {
    ScheduleError::new(format!(
        "{what} is not supported in the {} field {text:?}: use numbers, names, lists, ranges and steps",
        spec.name
    ))
}

fn parse_field(text: &str, spec: FieldSpec) -> Result<Field, ScheduleError> {
    for (c, what) in [('#', "# (nth weekday)"), ('?', "?"), ('+', "+")] {
        if text.contains(c) {
            return Err(unsupported(what, text, spec));
        }
    }
    let mut bits = 0u64;
    let mut single = None;
    let items: Vec<&str> = text.split(',').collect();
    for item in &items {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| {
                    ScheduleError::new(format!("{} step {s:?} is not a number", spec.name))
                })?;
                if step == 0 {
                    return Err(ScheduleError::new(format!(
                        "{} step must be at least 1",
                        spec.name
                    )));
                }
                (r, Some(step))
            }
            None => (*item, None),
        };
        let (lo, hi) = if range == "*" {
            (spec.min, if spec.max == 7 { 6 } else { spec.max })
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a, spec)?, parse_value(b, spec)?);
            if a > b {
                return Err(ScheduleError::new(format!(
                    "{} range {range} runs backwards",
                    spec.name
                )));
            }
            (a, b)
        } else {
            let a = parse_value(range, spec)?;
            match step {
                // `5/10` means every 10th value from 5 to the end of the range.
                Some(_) => (a, if spec.max == 7 { 6 } else { spec.max }),
                None => (a, a),
            }
        };
        // Fixed-time needs a plain number: `5-5` and `5/60` allow one value but are not written as one.
        if items.len() == 1 && step.is_none() && !range.contains('-') && range != "*" {
            single = Some(lo);
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    if spec.max == 7 && bits & (1 << 7) != 0 {
        bits = (bits & !(1 << 7)) | 1;
    }
    Ok(Field {
        bits,
        star: text == "*",
        single,
    })
}

fn days_in_month(month: u32, leap: bool) -> u32 {
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl CronSchedule {
    pub(crate) fn parse(expr: &str, tz: Tz) -> Result<CronSchedule, ScheduleError> {
        let trimmed = expr.trim();
        if trimmed.is_empty() {
            return Err(ScheduleError::new("cron expression is empty"));
        }
        let text = if trimmed.starts_with('@') {
            expand_macro(trimmed)?
        } else {
            trimmed
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError::new(format!(
                "cron expression {trimmed:?} has {} fields; exactly 5 are accepted (minute hour day-of-month month day-of-week)",
                fields.len()
            )));
        }
        let minute = parse_field(fields[0], MINUTE)?;
        let hour = parse_field(fields[1], HOUR)?;
        let dom = parse_field(fields[2], DAY_OF_MONTH)?;
        let month = parse_field(fields[3], MONTH)?;
        let dow = parse_field(fields[4], DAY_OF_WEEK)?;
        let cron = CronSchedule {
            tz,
            minutes: minute.bits,
            hours: hour.bits as u32,
            days_of_month: dom.bits as u32,
            months: month.bits as u16,
            days_of_week: dow.bits as u8,
            dom_star: dom.star,
            dow_star: dow.star,
            fixed: minute.single.is_some() && hour.single.is_some(),
        };
        if !cron.dom_star && cron.dow_star {
            // Only day-of-month restricts the day: it must exist in at least one allowed month.
            let possible = (1..=12).any(|m| {
                cron.months & (1 << m) != 0
                    && (1..=days_in_month(m, true)).any(|d| cron.days_of_month & (1 << d) != 0)
            });
            if !possible {
                return Err(ScheduleError::new(format!(
                    "cron expression {trimmed:?} never fires: day-of-month {} does not occur in month {}",
                    fields[2], fields[3]
                )));
            }
        }
        Ok(cron)
    }

    pub(crate) fn is_fixed_time(&self) -> bool {
        self.fixed
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.dom_star, self.dow_star) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first local time at or after `start` (minute-aligned) whose fields all match.
    fn next_match(&self, start: NaiveDateTime) -> Option<NaiveDateTime> {
        let limit_year = start.year() + SEARCH_YEARS;
        let mut date = start.date();
        let mut hour = start.hour();
        let mut minute = start.minute();
        loop {
            if date.year() > limit_year {
                return None;
            }
            if self.months & (1 << date.month()) == 0 {
                let (y, m) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                date = NaiveDate::from_ymd_opt(y, m, 1)?;
                hour = 0;
                minute = 0;
                continue;
            }
            if !self.day_matches(date) {
                date = date.succ_opt()?;
                hour = 0;
                minute = 0;
                continue;
            }
            let hours_left = self.hours & (u32::MAX << hour);
            if hours_left == 0 {
                date = date.succ_opt()?;
                hour = 0;
                minute = 0;
                continue;
            }
            let h = hours_left.trailing_zeros();
            if h != hour {
                hour = h;
                minute = 0;
            }
            let minutes_left = self.minutes & (u64::MAX << minute);
            if minutes_left == 0 {
                if hour == 23 {
                    date = date.succ_opt()?;
                    hour = 0;
                } else {
                    hour += 1;
                }
                minute = 0;
                continue;
            }
            return date.and_hms_opt(hour, minutes_left.trailing_zeros(), 0);
        }
    }

    /// The next fire strictly after `cursor`.
    pub(crate) fn next_after(&self, cursor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tz = self.tz;
        let cursor_utc = cursor.naive_utc();
        let offset = local::offset_at(tz, cursor_utc);
        let cursor_local = cursor_utc + TimeDelta::seconds(offset);
        let start = floor_minute(cursor_local) + Duration::minutes(1);
        let candidate = self.next_match(start)?;
        let t = candidate - TimeDelta::seconds(offset);
        // Fast path: the offset is the same at the cursor, at the candidate and within MAX_SHIFT of both, so no
        // DST transition can hide an earlier fire or move this one.
        if local::offset_at(tz, t) == offset
            && local::offset_at(tz, t - MAX_SHIFT) == offset
            && local::offset_at(tz, cursor_utc + MAX_SHIFT) == offset
        {
            return Some(t.and_utc());
        }
        self.next_after_near_transition(cursor, cursor_local)
    }

    /// Slow path near a DST transition: walk matching local times from MAX_SHIFT before the cursor's local time.
    fn next_after_near_transition(
        &self,
        cursor: DateTime<Utc>,
        cursor_local: NaiveDateTime,
    ) -> Option<DateTime<Utc>> {
        let mut local_time = self.next_match(floor_minute(cursor_local) - MAX_SHIFT)?;
        let mut best: Option<(DateTime<Utc>, NaiveDateTime)> = None;
        loop {
            if let Some((_, best_local)) = best {
                if local_time > best_local + MAX_SHIFT {
                    break;
                }
            }
            if self.fixed {
                let t = local::resolve_to_gap_end(self.tz, local_time);
                if t > cursor {
                    // Fixed-time mapping is monotone: the first one after the cursor is the answer.
                    return Some(t);
                }
            } else {
                let candidates = match local::map_local(self.tz, local_time) {
                    Mapping::Single(t) => [Some(t), None],
                    Mapping::Fold(a, b) => [Some(a), Some(b)],
                    Mapping::Gap { .. } => [None, None],
                };
                for t in candidates.into_iter().flatten() {
                    if t > cursor && best.is_none_or(|(b, _)| t < b) {
                        best = Some((t, local_time));
                    }
                }
            }
            local_time = match self.next_match(local_time + Duration::minutes(1)) {
                Some(l) => l,
                None => break,
            };
        }
        best.map(|(t, _)| t)
    }
}

fn floor_minute(t: NaiveDateTime) -> NaiveDateTime {
    t.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .expect("valid time")
}
