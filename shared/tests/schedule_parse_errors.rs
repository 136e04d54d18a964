//! Malformed schedules are rejected with a message that says what is wrong and where (a 422, not a surprise).

use chrono::{DateTime, TimeZone, Utc};
use orrery::schedule::{
    parse_timezone, validate_topic, Schedule, ScheduleError, ScheduleKind, TopicPattern,
};

fn anchor() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()
}

fn parse(kind: ScheduleKind, expr: &str) -> Result<Schedule, ScheduleError> {
    Schedule::parse(kind, expr, chrono_tz::Europe::Berlin, anchor())
}

fn rejection(kind: ScheduleKind, expr: &str) -> String {
    match parse(kind, expr) {
        Ok(_) => panic!("{kind} {expr:?} should be rejected"),
        Err(e) => e.to_string(),
    }
}

fn assert_rejected(kind: ScheduleKind, expr: &str, needle: &str) {
    let message = rejection(kind, expr);
    assert!(
        message.contains(needle),
        "{kind} {expr:?}: message {message:?} should mention {needle:?}"
    );
}

#[test]
fn cron_values_out_of_range_name_the_field_and_the_range() {
    assert_rejected(
        ScheduleKind::Cron,
        "60 * * * *",
        "minute 60 is out of range 0-59",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "0 24 * * *",
        "hour 24 is out of range 0-23",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "0 0 0 * *",
        "day-of-month 0 is out of range 1-31",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "0 0 32 * *",
        "day-of-month 32 is out of range 1-31",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "0 0 * 13 *",
        "month 13 is out of range 1-12",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "0 0 * * 8",
        "day-of-week 8 is out of range 0-7",
    );
}

#[test]
fn cron_ranges_must_run_forwards_and_steps_must_be_positive() {
    assert_rejected(
        ScheduleKind::Cron,
        "0 20-10 * * *",
        "hour range 20-10 runs backwards",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "*/0 * * * *",
        "minute step must be at least 1",
    );
    assert_rejected(ScheduleKind::Cron, "*/x * * * *", "minute step");
    assert_rejected(
        ScheduleKind::Cron,
        "1,,2 * * * *",
        "minute field has an empty value",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "0 0 * FOO *",
        "month value \"FOO\" is not a number or a name",
    );
}

#[test]
fn cron_accepts_exactly_five_fields() {
    assert_rejected(ScheduleKind::Cron, "0 0 * * * *", "has 6 fields; exactly 5");
    assert_rejected(ScheduleKind::Cron, "0 0 0 * * * 2025", "has 7 fields");
    assert_rejected(ScheduleKind::Cron, "0 0 * *", "has 4 fields");
    assert_rejected(ScheduleKind::Cron, "", "empty");
}

#[test]
fn cron_rejects_quartz_extensions_l_w_hash_question_mark_and_plus() {
    assert_rejected(
        ScheduleKind::Cron,
        "0 0 L * *",
        "L (last) is not supported in the day-of-month field",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "0 0 15W * *",
        "W (nearest weekday) is not supported",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "0 0 * * 5L",
        "L (last) is not supported in the day-of-week field",
    );
    assert_rejected(
        ScheduleKind::Cron,
        "0 0 * * 1#2",
        "# (nth weekday) is not supported",
    );
    assert_rejected(ScheduleKind::Cron, "0 0 ? * 1", "? is not supported");
    assert_rejected(ScheduleKind::Cron, "0 0 * * +1", "+ is not supported");
}

#[test]
fn cron_rejects_unknown_macros_and_impossible_dates() {
    assert_rejected(ScheduleKind::Cron, "@reboot", "unknown cron macro @reboot");
    assert_rejected(ScheduleKind::Cron, "0 0 30 2 *", "never fires");
}

#[test]
fn cron_accepts_names_macros_and_sunday_as_seven() {
    for expr in [
        "15 10 * JAN,jul MON",
        "0 9 * * 7",
        "5/10 * * * *",
        "@annually",
        "@MIDNIGHT",
        "0 0 31 2 1",
    ] {
        parse(ScheduleKind::Cron, expr).unwrap_or_else(|e| panic!("{expr:?} should parse: {e}"));
    }
}

#[test]
fn rrule_rejects_unknown_parts() {
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=DAILY;BADPROP=1",
        "unknown RRULE part BADPROP",
    );
}

#[test]
fn rrule_rejects_count_together_with_until() {
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=DAILY;COUNT=5;UNTIL=20260101T000000Z",
        "COUNT and UNTIL cannot both be given",
    );
}

#[test]
fn rrule_needs_a_valid_freq_and_well_formed_values() {
    assert_rejected(ScheduleKind::Rrule, "INTERVAL=2", "RRULE has no FREQ");
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=FORTNIGHTLY",
        "unknown FREQ value FORTNIGHTLY",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=DAILY;INTERVAL=0",
        "INTERVAL must be a positive integer",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=DAILY;COUNT=0",
        "COUNT must be a positive integer",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=DAILY;BYHOUR=24",
        "BYHOUR value 24 is out of range 0-23",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=MONTHLY;BYMONTHDAY=0",
        "BYMONTHDAY value 0 is out of range",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=WEEKLY;BYDAY=XX",
        "BYDAY value \"XX\" is not a weekday",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=WEEKLY;BYDAY=2TU",
        "BYDAY ordinals",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=DAILY;FREQ=WEEKLY",
        "RRULE part FREQ is given twice",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "FREQ=DAILY;UNTIL=tomorrow",
        "UNTIL value",
    );
    assert_rejected(ScheduleKind::Rrule, "", "empty");
}

#[test]
fn rrule_rejects_a_malformed_dtstart() {
    assert_rejected(
        ScheduleKind::Rrule,
        "DTSTART:2025-01-01T09:00:00\nRRULE:FREQ=DAILY",
        "invalid DTSTART value",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "DTSTART:20251301T090000\nRRULE:FREQ=DAILY",
        "invalid DTSTART value",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "DTSTART;TZID=Invalid/Zone:20250101T090000\nRRULE:FREQ=DAILY",
        "unknown time zone Invalid/Zone",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "DTSTART:20250101T090000\nDTSTART:20250102T090000\nRRULE:FREQ=DAILY",
        "DTSTART is given more than once",
    );
}

#[test]
fn rrule_rejects_unknown_properties_and_missing_rules() {
    assert_rejected(
        ScheduleKind::Rrule,
        "DTSTART:20250101T090000\nSUMMARY:x",
        "unknown iCalendar property SUMMARY",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "DTSTART:20250101T090000",
        "has no RRULE or RDATE",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "DTSTART:20250101T090000\nEXRULE:FREQ=DAILY",
        "EXRULE is not supported",
    );
    assert_rejected(
        ScheduleKind::Rrule,
        "DTSTART:20250101T090000\nRRULE:FREQ=DAILY\nEXDATE:2025-01-02",
        "invalid EXDATE value",
    );
}

#[test]
fn time_zones_must_be_iana_names() {
    for good in [
        "UTC",
        "America/Argentina/Buenos_Aires",
        "Etc/GMT+2",
        "Europe/Berlin",
    ] {
        assert!(parse_timezone(good).is_ok(), "{good} should be accepted");
    }
    assert_eq!(
        parse_timezone("Invalid/Zone").unwrap_err().message,
        "unknown time zone Invalid/Zone"
    );
    for bad in ["GMT+5", "Invalid/Timezone", "", " UTC", "Europe/Berlin "] {
        assert!(parse_timezone(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn once_rejects_anything_but_an_rfc3339_or_naive_local_time() {
    for bad in [
        "tomorrow",
        "2025-13-01T00:00:00Z",
        "2025-06-01",
        "2025-06-01T25:00:00",
        "1717236000",
        "",
    ] {
        assert!(
            parse(ScheduleKind::Once, bad).is_err(),
            "{bad:?} should be rejected"
        );
    }
    assert_rejected(
        ScheduleKind::Once,
        "next tuesday",
        "is not an RFC 3339 date-time",
    );
}

#[test]
fn topic_patterns_follow_decision_12() {
    for good in ["email", "email.*", "billing.invoice.paid", "a-b_c.*.D9"] {
        assert!(
            TopicPattern::parse(good).is_ok(),
            "{good:?} should be accepted"
        );
        assert!(parse(ScheduleKind::Event, good).is_ok());
    }
    for bad in [
        "",
        "email.",
        ".email",
        "email..sent",
        "email.**",
        "email.se*t",
        "em ail",
        "email/sent",
        "é",
    ] {
        assert!(
            TopicPattern::parse(bad).is_err(),
            "{bad:?} should be rejected"
        );
        assert!(parse(ScheduleKind::Event, bad).is_err());
    }
    let long = "a".repeat(201);
    assert!(TopicPattern::parse(&long)
        .unwrap_err()
        .message
        .contains("at most 200"));
    assert!(TopicPattern::parse(&"a".repeat(200)).is_ok());
}

#[test]
fn published_topics_must_be_concrete() {
    assert!(validate_topic("email.sent").is_ok());
    assert!(validate_topic("email.*")
        .unwrap_err()
        .message
        .contains("wildcard"));
    assert!(validate_topic("").is_err());
    assert!(validate_topic("email..sent").is_err());
}

#[test]
fn schedule_kinds_parse_from_their_lowercase_names_only() {
    for kind in [
        ScheduleKind::Cron,
        ScheduleKind::Rrule,
        ScheduleKind::Once,
        ScheduleKind::Event,
    ] {
        assert_eq!(kind.as_str().parse::<ScheduleKind>().unwrap(), kind);
        assert_eq!(
            serde_json::to_string(&kind).unwrap(),
            format!("\"{}\"", kind.as_str())
        );
    }
    assert!("weekly".parse::<ScheduleKind>().is_err());
}
