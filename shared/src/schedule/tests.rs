//! One example per DST rule of the policy (see docs/dst.md).

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::{Schedule, ScheduleKind};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn fires(
    kind: ScheduleKind,
    expr: &str,
    tz: Tz,
    after: DateTime<Utc>,
    count: usize,
) -> Vec<String> {
    Schedule::parse(kind, expr, tz, after)
        .unwrap()
        .next_fires(after, count)
        .iter()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .collect()
}

#[test]
fn fixed_time_cron_in_a_us_spring_forward_gap_fires_at_three_am() {
    // 2025-03-09: New York clocks jump 02:00 EST -> 03:00 EDT; 02:30 does not exist.
    let got = fires(
        ScheduleKind::Cron,
        "30 2 * * *",
        chrono_tz::America::New_York,
        utc(2025, 3, 8, 12, 0),
        3,
    );
    assert_eq!(
        got,
        [
            "2025-03-09T07:00:00Z", // 03:00 EDT, the first valid local time after the gap
            "2025-03-10T06:30:00Z", // 02:30 EDT
            "2025-03-11T06:30:00Z",
        ]
    );
}

#[test]
fn fixed_time_cron_in_a_fall_back_fold_fires_once_at_the_first_instant() {
    // 2025-11-02: New York repeats 01:00-02:00 (EDT, then EST).
    let got = fires(
        ScheduleKind::Cron,
        "30 1 * * *",
        chrono_tz::America::New_York,
        utc(2025, 11, 1, 12, 0),
        2,
    );
    assert_eq!(got, ["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"]);
}

#[test]
fn every_fifteen_minutes_fires_in_both_passes_of_a_repeated_hour() {
    let got = fires(
        ScheduleKind::Cron,
        "*/15 * * * *",
        chrono_tz::America::New_York,
        utc(2025, 11, 2, 4, 50),
        10,
    );
    assert_eq!(
        got,
        [
            "2025-11-02T05:00:00Z", // 01:00 EDT
            "2025-11-02T05:15:00Z",
            "2025-11-02T05:30:00Z",
            "2025-11-02T05:45:00Z",
            "2025-11-02T06:00:00Z", // 01:00 EST, second pass
            "2025-11-02T06:15:00Z",
            "2025-11-02T06:30:00Z",
            "2025-11-02T06:45:00Z",
            "2025-11-02T07:00:00Z", // 02:00 EST
            "2025-11-02T07:15:00Z",
        ]
    );
}

#[test]
fn non_fixed_cron_never_fires_for_local_times_inside_a_gap() {
    let got = fires(
        ScheduleKind::Cron,
        "10,40 2 * * *",
        chrono_tz::America::New_York,
        utc(2025, 3, 8, 12, 0),
        3,
    );
    assert_eq!(
        got,
        [
            "2025-03-10T06:10:00Z",
            "2025-03-10T06:40:00Z",
            "2025-03-11T06:10:00Z"
        ]
    );
}

#[test]
fn rrule_time_in_a_gap_is_shifted_forward_by_the_gap_length() {
    let expr = "DTSTART;TZID=America/New_York:20250307T023000\nRRULE:FREQ=DAILY";
    let got = fires(
        ScheduleKind::Rrule,
        expr,
        chrono_tz::America::New_York,
        utc(2025, 3, 8, 12, 0),
        2,
    );
    assert_eq!(got, ["2025-03-09T07:30:00Z", "2025-03-10T06:30:00Z"]); // 03:30 EDT, then 02:30 EDT
}

#[test]
fn rrule_time_in_a_fold_fires_at_its_first_instant() {
    let expr = "DTSTART;TZID=America/New_York:20251101T013000\nRRULE:FREQ=DAILY";
    let got = fires(
        ScheduleKind::Rrule,
        expr,
        chrono_tz::America::New_York,
        utc(2025, 11, 1, 12, 0),
        2,
    );
    assert_eq!(got, ["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"]);
}

#[test]
fn identical_instants_from_rule_and_rdate_fire_once() {
    let expr = "DTSTART;TZID=America/New_York:20250309T020000\nRRULE:FREQ=HOURLY;COUNT=3\nRDATE:20250309T070000Z";
    // 02:00 (shifted to 03:00 EDT = 07:00Z), 03:00 EDT (07:00Z again), 04:00 EDT; RDATE also 07:00Z.
    let got = fires(
        ScheduleKind::Rrule,
        expr,
        chrono_tz::America::New_York,
        utc(2025, 3, 9, 0, 0),
        10,
    );
    assert_eq!(got, ["2025-03-09T07:00:00Z", "2025-03-09T08:00:00Z"]);
}

#[test]
fn bare_rrule_is_anchored_at_local_midnight_of_the_anchor_day() {
    let tz = chrono_tz::Europe::Berlin;
    let anchor = utc(2025, 6, 10, 13, 47); // 15:47 in Berlin
    let schedule = Schedule::parse(ScheduleKind::Rrule, "FREQ=DAILY;BYHOUR=9", tz, anchor).unwrap();
    let got: Vec<_> = schedule.next_fires(anchor, 2);
    assert_eq!(got, [utc(2025, 6, 11, 7, 0), utc(2025, 6, 12, 7, 0)]);
    let every_six_hours = Schedule::parse(
        ScheduleKind::Rrule,
        "RRULE:FREQ=HOURLY;INTERVAL=6",
        tz,
        anchor,
    )
    .unwrap();
    assert_eq!(
        every_six_hours.next_fires(anchor, 1),
        [utc(2025, 6, 10, 16, 0)]
    ); // 18:00 local
}

#[test]
fn bare_rrule_anchor_skips_to_the_first_valid_time_when_midnight_does_not_exist() {
    // Santiago springs forward at 00:00 -> 01:00 on 2025-09-07.
    let tz = chrono_tz::America::Santiago;
    let anchor = utc(2025, 9, 7, 15, 0);
    let schedule = Schedule::parse(ScheduleKind::Rrule, "FREQ=DAILY", tz, anchor).unwrap();
    // Anchored at 01:00 local (first valid time after midnight), so the rule fires at 01:00 local daily.
    assert_eq!(schedule.next_fires(anchor, 1), [utc(2025, 9, 8, 4, 0)]);
}

#[test]
fn once_naive_time_in_a_gap_shifts_by_the_gap_and_rfc3339_is_exact() {
    let tz = chrono_tz::America::New_York;
    let gap = Schedule::parse(
        ScheduleKind::Once,
        "2025-03-09T02:30:00",
        tz,
        utc(2025, 1, 1, 0, 0),
    )
    .unwrap();
    assert_eq!(
        gap.next_fires(utc(2025, 1, 1, 0, 0), 5),
        [utc(2025, 3, 9, 7, 30)]
    );
    let exact = Schedule::parse(
        ScheduleKind::Once,
        "2025-03-09T02:30:00+01:00",
        tz,
        utc(2025, 1, 1, 0, 0),
    )
    .unwrap();
    assert_eq!(
        exact.next_fire_after(utc(2025, 1, 1, 0, 0)),
        Some(utc(2025, 3, 9, 1, 30))
    );
    assert_eq!(exact.next_fire_after(utc(2025, 3, 9, 1, 30)), None);
}

#[test]
fn rrule_hourly_steps_in_wall_clock_time_across_a_london_change() {
    // Decision 10: 00:00, 05:00 local on 2025-03-30 are 4 real hours apart (01:00 -> 02:00 jump).
    let expr = "DTSTART;TZID=Europe/London:20250330T000000\nRRULE:FREQ=HOURLY;INTERVAL=5;COUNT=3";
    let got = fires(
        ScheduleKind::Rrule,
        expr,
        chrono_tz::Europe::London,
        utc(2025, 3, 29, 0, 0),
        5,
    );
    assert_eq!(
        got,
        [
            "2025-03-30T00:00:00Z",
            "2025-03-30T04:00:00Z",
            "2025-03-30T09:00:00Z"
        ]
    );
}

#[test]
fn count_is_honoured_without_replaying_history() {
    let expr = "DTSTART;TZID=UTC:20200101T090000\nRRULE:FREQ=DAILY;COUNT=2000";
    let schedule = Schedule::parse(
        ScheduleKind::Rrule,
        expr,
        chrono_tz::UTC,
        utc(2025, 1, 1, 0, 0),
    )
    .unwrap();
    // Occurrence 2000 is 1999 days after 2020-01-01.
    let last = utc(2020, 1, 1, 9, 0) + chrono::TimeDelta::days(1999);
    assert_eq!(
        schedule.next_fire_after(last - chrono::TimeDelta::days(1)),
        Some(last)
    );
    assert_eq!(schedule.next_fire_after(last), None);
}

#[test]
fn event_schedules_have_no_fires_and_expose_their_pattern() {
    let s = Schedule::parse(
        ScheduleKind::Event,
        "email.*",
        chrono_tz::UTC,
        utc(2025, 1, 1, 0, 0),
    )
    .unwrap();
    assert!(s.next_fires(utc(2025, 1, 1, 0, 0), 5).is_empty());
    let pattern = s.topic_pattern().unwrap();
    assert!(pattern.matches("email.sent"));
    assert!(!pattern.matches("email"));
    assert!(!pattern.matches("email.sent.twice"));
    assert!(!pattern.matches("sms.sent"));
}
