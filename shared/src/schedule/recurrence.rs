//! An RFC 5545 recurrence set: DTSTART, one or more RRULEs, RDATEs and EXDATEs, evaluated in one zone.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};
use chrono_tz::Tz;

use super::local::{self, MAX_SHIFT};
use super::rrule::{parse_ical_datetime, Expander, RuleParts, Until};
use super::{parse_timezone, ScheduleError};

#[derive(Clone, Debug)]
struct Rule {
    expander: Expander,
    until: Option<DateTime<Utc>>,
    /// The COUNT-th occurrence (local time), computed once at parse time so evaluation never replays history.
    last: Option<NaiveDateTime>,
    /// COUNT was given but the rule produces no occurrence at all.
    empty: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct RecurrenceSet {
    zone: Tz,
    /// Where a rule without DTSTART starts (local midnight of the anchor day), `None` with a DTSTART.
    implicit_start: Option<NaiveDateTime>,
    rules: Vec<Rule>,
    /// RDATE instants, sorted, unique, EXDATEs already removed.
    rdates: Vec<DateTime<Utc>>,
    /// EXDATE instants (Unix seconds), sorted.
    exdates: Vec<i64>,
    /// EXDATE dates (VALUE=DATE): every occurrence on that local date is excluded.
    exdate_days: Vec<NaiveDate>,
}

/// A date-time property value as written: its zone decides how it becomes an instant.
enum Written {
    Utc(NaiveDateTime),
    Zoned(NaiveDateTime, Tz),
    Floating(NaiveDateTime),
    Date(NaiveDate, Option<Tz>),
}

struct Property<'a> {
    name: String,
    tzid: Option<Tz>,
    date_value: bool,
    value: &'a str,
}

fn parse_property(line: &str) -> Result<Property<'_>, ScheduleError> {
    let (head, value) = line
        .split_once(':')
        .ok_or_else(|| ScheduleError::new(format!("iCalendar line {line:?} has no ':'")))?;
    let mut params = head.split(';');
    let name = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_uppercase();
    let mut property = Property {
        name,
        tzid: None,
        date_value: false,
        value: value.trim(),
    };
    for param in params {
        let (key, val) = param.split_once('=').ok_or_else(|| {
            ScheduleError::new(format!(
                "{} parameter {param:?} is not NAME=VALUE",
                property.name
            ))
        })?;
        let val = val.trim().trim_matches('"');
        match key.trim().to_ascii_uppercase().as_str() {
            "TZID" => {
                property.tzid = Some(parse_timezone(val).map_err(|e| {
                    ScheduleError::new(format!("{} TZID: {}", property.name, e.message))
                })?)
            }
            "VALUE" => match val.to_ascii_uppercase().as_str() {
                "DATE" => property.date_value = true,
                "DATE-TIME" => {}
                other => {
                    return Err(ScheduleError::new(format!(
                        "{} VALUE={other} is not supported (use DATE or DATE-TIME)",
                        property.name
                    )))
                }
            },
            other => {
                return Err(ScheduleError::new(format!(
                    "unknown {} parameter {other}",
                    property.name
                )))
            }
        }
    }
    Ok(property)
}

fn parse_written(property: &Property<'_>, item: &str) -> Result<Written, ScheduleError> {
    let name = &property.name;
    let (dt, utc, date_only) = parse_ical_datetime(item.trim()).ok_or_else(|| {
        ScheduleError::new(format!(
            "invalid {name} value {item:?}: expected YYYYMMDDTHHMMSS, optionally ending in Z, or YYYYMMDD"
        ))
    })?;
    if property.date_value && !date_only {
        return Err(ScheduleError::new(format!(
            "invalid {name} value {item:?}: VALUE=DATE expects YYYYMMDD"
        )));
    }
    Ok(if date_only {
        Written::Date(dt.date(), property.tzid)
    } else if utc {
        Written::Utc(dt)
    } else if let Some(tz) = property.tzid {
        Written::Zoned(dt, tz)
    } else {
        Written::Floating(dt)
    })
}

/// Resolves a written date-time to an instant; floating values are read in `zone` (the DTSTART's zone).
fn to_instant(written: &Written, zone: Tz) -> DateTime<Utc> {
    match *written {
        Written::Utc(dt) => dt.and_utc(),
        Written::Zoned(dt, tz) => local::resolve_shifting(tz, dt),
        Written::Floating(dt) => local::resolve_shifting(zone, dt),
        Written::Date(d, tz) => {
            local::resolve_shifting(tz.unwrap_or(zone), d.and_time(NaiveTime::MIN))
        }
    }
}

/// Splits an expression into logical lines (`\n` or `\r\n`, with RFC 5545 folding of lines that start with a space).
fn logical_lines(expr: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in expr.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if (raw.starts_with(' ') || raw.starts_with('\t')) && !lines.is_empty() {
            if let Some(last) = lines.last_mut() {
                last.push_str(&raw[1..]);
            }
            continue;
        }
        lines.push(raw.to_owned());
    }
    lines
        .into_iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

impl RecurrenceSet {
    pub(crate) fn parse(
        expr: &str,
        task_zone: Tz,
        anchor: DateTime<Utc>,
    ) -> Result<RecurrenceSet, ScheduleError> {
        let lines = logical_lines(expr);
        if lines.is_empty() {
            return Err(ScheduleError::new("RRULE expression is empty"));
        }
        let mut dtstart: Option<Written> = None;
        let mut rule_texts: Vec<String> = Vec::new();
        let mut exdates: Vec<Written> = Vec::new();
        let mut rdates: Vec<Written> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("FREQ=") || !line.contains(':') && line.contains('=') {
                rule_texts.push(line.clone());
                continue;
            }
            let property = parse_property(line)?;
            match property.name.as_str() {
                "RRULE" => {
                    if property.tzid.is_some() || property.date_value {
                        return Err(ScheduleError::new("RRULE takes no parameters"));
                    }
                    rule_texts.push(property.value.to_owned());
                }
                "DTSTART" => {
                    if dtstart.is_some() {
                        return Err(ScheduleError::new("DTSTART is given more than once"));
                    }
                    if property.value.contains(',') {
                        return Err(ScheduleError::new(format!(
                            "invalid DTSTART value {:?}: a single date-time is expected",
                            property.value
                        )));
                    }
                    dtstart = Some(parse_written(&property, property.value)?);
                }
                "EXDATE" | "RDATE" => {
                    let target = if property.name == "EXDATE" {
                        &mut exdates
                    } else {
                        &mut rdates
                    };
                    for item in property.value.split(',') {
                        target.push(parse_written(&property, item)?);
                    }
                }
                "EXRULE" => {
                    return Err(ScheduleError::new(
                        "EXRULE is not supported (deprecated by RFC 5545); use EXDATE",
                    ))
                }
                other => {
                    return Err(ScheduleError::new(format!(
                        "unknown iCalendar property {other} on line {} (expected DTSTART, RRULE, EXDATE or RDATE)",
                        i + 1
                    )))
                }
            }
        }
        if rule_texts.is_empty() && rdates.is_empty() {
            return Err(ScheduleError::new("RRULE expression has no RRULE or RDATE"));
        }
        if rule_texts.is_empty() && dtstart.is_none() {
            return Err(ScheduleError::new("RDATE-only recurrence needs a DTSTART"));
        }

        // The zone the rule steps in: DTSTART's TZID, UTC for `Z`, else the task's zone.
        let (zone, start_local) = match dtstart {
            Some(Written::Utc(dt)) => (chrono_tz::UTC, dt),
            Some(Written::Zoned(dt, tz)) => (tz, dt),
            Some(Written::Floating(dt)) => (task_zone, dt),
            Some(Written::Date(d, tz)) => (tz.unwrap_or(task_zone), d.and_time(NaiveTime::MIN)),
            None => (task_zone, anchor_midnight(task_zone, anchor)),
        };

        let mut rules = Vec::with_capacity(rule_texts.len());
        for text in &rule_texts {
            let stripped = match text.get(..6) {
                Some(p) if p.eq_ignore_ascii_case("RRULE:") => &text[6..],
                _ => text.as_str(),
            };
            let parts = RuleParts::parse(stripped)?;
            let expander = Expander::new(&parts, start_local);
            let until = parts.until.map(|u| match u {
                Until::Utc(dt) => dt.and_utc(),
                Until::Floating(dt) => local::resolve_shifting(zone, dt),
                Until::Date(d) => {
                    local::resolve_shifting(zone, d.and_hms_opt(23, 59, 59).expect("valid time"))
                }
            });
            let (last, empty) = match parts.count {
                Some(count) => {
                    let last = expander
                        .occurrences_from(expander.dtstart())
                        .take(count as usize)
                        .last();
                    (last, last.is_none())
                }
                None => (None, false),
            };
            rules.push(Rule {
                expander,
                until,
                last,
                empty,
            });
        }

        let mut exdate_instants = Vec::new();
        let mut exdate_days = Vec::new();
        for written in &exdates {
            match written {
                Written::Date(d, _) => exdate_days.push(*d),
                other => exdate_instants.push(to_instant(other, zone).timestamp()),
            }
        }
        exdate_instants.sort_unstable();
        exdate_instants.dedup();
        let mut set = RecurrenceSet {
            zone,
            implicit_start: dtstart.is_none().then_some(start_local),
            rules,
            rdates: Vec::new(),
            exdates: exdate_instants,
            exdate_days,
        };
        let mut rdate_instants: Vec<DateTime<Utc>> = rdates
            .iter()
            .map(|w| to_instant(w, zone))
            .filter(|t| !set.is_excluded(*t))
            .collect();
        rdate_instants.sort_unstable();
        rdate_instants.dedup();
        set.rdates = rdate_instants;
        Ok(set)
    }

    /// The zone the rule steps in: DTSTART's TZID, UTC for a DTSTART in `Z`, else the task's zone.
    pub(crate) fn zone(&self) -> Tz {
        self.zone
    }

    /// For a rule written without DTSTART: the local start it was anchored at.
    pub(crate) fn implicit_start(&self) -> Option<NaiveDateTime> {
        self.implicit_start
    }

    fn is_excluded(&self, t: DateTime<Utc>) -> bool {
        if self.exdates.binary_search(&t.timestamp()).is_ok() {
            return true;
        }
        !self.exdate_days.is_empty()
            && self
                .exdate_days
                .contains(&local::to_local(self.zone, t).date())
    }

    /// The next fire strictly after `cursor`.
    pub(crate) fn next_after(&self, cursor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut best = self
            .rdates
            .get(self.rdates.partition_point(|t| *t <= cursor))
            .copied();
        if self.rules.is_empty() {
            return best;
        }
        let cursor_utc = cursor.naive_utc();
        let offset = local::offset_at(self.zone, cursor_utc);
        let cursor_local = cursor_utc + TimeDelta::seconds(offset);
        // Local time can run backwards by at most MAX_SHIFT (a fold); far from a transition it cannot.
        let stable = local::offset_at(self.zone, cursor_utc - MAX_SHIFT) == offset
            && local::offset_at(self.zone, cursor_utc + MAX_SHIFT) == offset;
        let from = if stable {
            cursor_local
        } else {
            cursor_local - MAX_SHIFT
        };
        for rule in &self.rules {
            if rule.empty {
                continue;
            }
            for occurrence in rule.expander.occurrences_from(from) {
                if rule.last.is_some_and(|last| occurrence > last) {
                    break;
                }
                if occurrence <= from && stable {
                    continue;
                }
                let t = local::resolve_shifting(self.zone, occurrence);
                if rule.until.is_some_and(|u| t > u) || best.is_some_and(|b| t >= b) {
                    break;
                }
                if t <= cursor || self.is_excluded(t) {
                    continue;
                }
                best = Some(t);
                break;
            }
        }
        best
    }
}

/// Local midnight of the anchor's local day, or the first valid local time after it if midnight is skipped.
fn anchor_midnight(zone: Tz, anchor: DateTime<Utc>) -> NaiveDateTime {
    let midnight = local::to_local(zone, anchor)
        .date()
        .and_time(NaiveTime::MIN);
    match local::map_local(zone, midnight) {
        local::Mapping::Gap { .. } => {
            local::to_local(zone, local::resolve_to_gap_end(zone, midnight))
        }
        _ => midnight,
    }
}
