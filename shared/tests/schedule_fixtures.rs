//! Conformance with the independent reference: every case in `tests/data/schedule_cases.json` must produce
//! exactly its expected fires.

use chrono::{DateTime, SecondsFormat, Utc};
use orrery::schedule::{parse_timezone, Schedule, ScheduleKind};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    schedule_kind: String,
    schedule_expr: String,
    timezone: String,
    after: String,
    count: usize,
    expected: Vec<String>,
}

fn load_cases() -> Vec<Case> {
    load("schedule_cases.json")
}

fn load(name: &str) -> Vec<Case> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).expect("fixture file is readable");
    serde_json::from_str(&text).expect("fixture file is valid JSON")
}

fn format_fires(fires: &[DateTime<Utc>]) -> Vec<String> {
    fires
        .iter()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .collect()
}

#[test]
fn every_reference_case_produces_exactly_the_expected_fires() {
    let cases = load_cases();
    assert_eq!(cases.len(), 400, "the fixture set has 400 cases");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let kind: ScheduleKind = case.schedule_kind.parse().expect("known kind");
        let tz = parse_timezone(&case.timezone).expect("known zone");
        let after: DateTime<Utc> = case.after.parse().expect("RFC 3339 after");
        let outcome = Schedule::parse(kind, &case.schedule_expr, tz, after)
            .map(|s| format_fires(&s.next_fires(after, case.count)));
        match outcome {
            Ok(actual) if actual == case.expected => {}
            other => failures.push(format!(
                "case {i}: kind={} expr={:?} tz={} after={} count={}\n  expected {:?}\n  actual   {:?}",
                case.schedule_kind,
                case.schedule_expr,
                case.timezone,
                case.after,
                case.count,
                case.expected,
                other
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn chaining_next_fire_after_reproduces_every_reference_case() {
    for (i, case) in load_cases().iter().enumerate() {
        let kind: ScheduleKind = case.schedule_kind.parse().unwrap();
        let tz = parse_timezone(&case.timezone).unwrap();
        let after: DateTime<Utc> = case.after.parse().unwrap();
        let schedule = Schedule::parse(kind, &case.schedule_expr, tz, after).unwrap();
        let mut cursor = after;
        let mut fires = Vec::new();
        while fires.len() < case.expected.len() {
            match schedule.next_fire_after(cursor) {
                Some(t) => {
                    fires.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        assert_eq!(
            format_fires(&fires),
            case.expected,
            "case {i}: {:?} in {}",
            case.schedule_expr,
            case.timezone
        );
        if case.expected.len() < case.count {
            assert_eq!(
                schedule.next_fire_after(cursor),
                None,
                "case {i} should be exhausted"
            );
        }
    }
}

/// Hand-derived DST edge cases (from DESIGN.md and RFC 5545) where popular crates were measured to fail:
/// croner 3.0.1 returns the two passes of a fold out of order, rrule 0.14.0 drops a fire whose midnight is
/// skipped, duplicates an instant produced by a gap shift, and rejects a DTSTART inside a gap or a fold.
#[test]
fn dst_edge_cases_where_popular_crates_fail_are_exact() {
    let cases = load("dst_edge_cases.json");
    assert_eq!(cases.len(), 19);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let kind: ScheduleKind = case.schedule_kind.parse().expect("known kind");
        let tz = parse_timezone(&case.timezone).expect("known zone");
        let after: DateTime<Utc> = case.after.parse().expect("RFC 3339 after");
        let outcome = Schedule::parse(kind, &case.schedule_expr, tz, after)
            .map(|s| format_fires(&s.next_fires(after, case.count)));
        if outcome.as_ref().ok() != Some(&case.expected) {
            failures.push(format!(
                "case {i}: {:?} in {} after {}: expected {:?}, got {:?}",
                case.schedule_expr, case.timezone, case.after, case.expected, outcome
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
