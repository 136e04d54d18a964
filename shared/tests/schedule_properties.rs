//! Properties that hold for every schedule, checked on generated cron expressions and RRULEs, with cursors
//! concentrated around real DST transitions of zones with 60-, 30- and 45-minute offsets.

use std::sync::OnceLock;

use chrono::{DateTime, Datelike, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use orrery::schedule::{Schedule, ScheduleKind};
use proptest::prelude::*;

const ZONES: &[&str] = &[
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
    "America/Santiago",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Chisinau",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
];

fn offset_at(tz: Tz, t: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

fn local(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    t.with_timezone(&tz).naive_local()
}

/// Every DST transition (hour resolution) of the zones in 2024-2028: the interesting cursors.
fn transitions() -> &'static Vec<(usize, DateTime<Utc>)> {
    static CELL: OnceLock<Vec<(usize, DateTime<Utc>)>> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut out = Vec::new();
        for (i, name) in ZONES.iter().enumerate() {
            let tz: Tz = name.parse().unwrap();
            let mut t = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
            let end = Utc.with_ymd_and_hms(2029, 1, 1, 0, 0, 0).unwrap();
            let mut prev = offset_at(tz, t);
            while t < end {
                let next = t + TimeDelta::hours(1);
                let off = offset_at(tz, next);
                if off != prev {
                    out.push((i, next));
                    prev = off;
                }
                t = next;
            }
        }
        out
    })
}

/// A zone and a cursor: half the time within two days of one of that zone's transitions.
fn zone_and_cursor() -> impl Strategy<Value = (Tz, DateTime<Utc>)> {
    (
        0..ZONES.len(),
        any::<bool>(),
        0usize..10_000,
        -2 * 86_400i64..2 * 86_400,
        0i64..5 * 365 * 86_400,
    )
        .prop_map(|(zone, near, pick, jitter, anywhere)| {
            let all = transitions();
            let own: Vec<_> = all.iter().filter(|(z, _)| *z == zone).collect();
            let tz: Tz = ZONES[zone].parse().unwrap();
            let cursor = if near && !own.is_empty() {
                own[pick % own.len()].1 + TimeDelta::seconds(jitter)
            } else {
                Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap() + TimeDelta::seconds(anywhere)
            };
            (tz, cursor)
        })
}

/// A cron field: the text, the set of values it allows, and whether it is a single number. Values are drawn
/// from `min..=max`; open-ended steps (`a/s`, `*/s`) run to `end`, the field's real maximum.
fn field(min: u32, max: u32, end: u32) -> impl Strategy<Value = (String, Vec<u32>, bool)> {
    prop_oneof![
        Just(("*".to_string(), (min..=end).collect(), false)),
        (min..=max).prop_map(|v| (v.to_string(), vec![v], true)),
        (min..=max, 1..=max.max(2) / 2).prop_map(move |(a, s)| {
            (
                format!("{a}/{s}"),
                (a..=end).step_by(s as usize).collect(),
                false,
            )
        }),
        (1..=max.max(2) / 2).prop_map(move |s| {
            (
                format!("*/{s}"),
                (min..=end).step_by(s as usize).collect(),
                false,
            )
        }),
        (min..=max, min..=max).prop_map(|(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            (format!("{a}-{b}"), (a..=b).collect(), false)
        }),
        proptest::collection::btree_set(min..=max, 1..4).prop_map(|set| {
            let values: Vec<u32> = set.into_iter().collect();
            let text = values
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let single = values.len() == 1;
            (text, values, single)
        }),
    ]
}

#[derive(Debug, Clone)]
struct Cron {
    text: String,
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days: Vec<u32>,
    months: Vec<u32>,
    weekdays: Vec<u32>,
    dom_star: bool,
    dow_star: bool,
    fixed: bool,
}

impl Cron {
    fn day_matches(&self, t: NaiveDateTime) -> bool {
        let dom = self.days.contains(&t.day());
        let dow = self.weekdays.contains(&t.weekday().num_days_from_sunday());
        match (self.dom_star, self.dow_star) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    fn matches(&self, t: NaiveDateTime) -> bool {
        self.minutes.contains(&t.minute())
            && self.hours.contains(&t.hour())
            && self.months.contains(&t.month())
            && self.day_matches(t)
    }
}

fn cron() -> impl Strategy<Value = Cron> {
    (
        field(0, 59, 59),
        field(0, 23, 23),
        field(1, 28, 31),
        field(1, 12, 12),
        field(0, 6, 6),
    )
        .prop_map(|(mi, h, dom, mo, dow)| Cron {
            text: format!("{} {} {} {} {}", mi.0, h.0, dom.0, mo.0, dow.0),
            fixed: mi.2 && h.2,
            minutes: mi.1,
            hours: h.1,
            days: dom.1,
            dom_star: dom.0 == "*",
            months: mo.1,
            weekdays: dow.1,
            dow_star: dow.0 == "*",
        })
}

/// An RRULE with an explicit DTSTART in the task zone, the zone itself, or UTC.
fn rrule_with_dtstart() -> impl Strategy<Value = String> {
    let freq = prop_oneof![
        Just("YEARLY"),
        Just("MONTHLY"),
        Just("WEEKLY"),
        Just("DAILY"),
        Just("HOURLY"),
        Just("MINUTELY")
    ];
    let extra = prop_oneof![
        Just(String::new()),
        Just(";BYDAY=MO,WE,FR".to_string()),
        Just(";BYHOUR=1,2,3;BYMINUTE=0,30".to_string()),
        Just(";BYMONTHDAY=1,-1".to_string()),
        Just(";BYDAY=-1SU;BYMONTH=3,10".to_string()),
        Just(";BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1".to_string()),
        Just(";COUNT=40".to_string()),
        Just(";UNTIL=20270101T000000Z".to_string()),
        Just(";WKST=SU;BYDAY=TU,SU".to_string()),
    ];
    (
        freq,
        1u32..6,
        extra,
        2023i32..2027,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0usize..3,
    )
        .prop_map(|(freq, interval, extra, y, mo, d, h, mi, style)| {
            let extra = match (freq, extra.as_str()) {
                // Ordinal BYDAY needs MONTHLY/YEARLY; BYMONTHDAY is not allowed with WEEKLY.
                ("WEEKLY" | "DAILY" | "HOURLY" | "MINUTELY", ";BYDAY=-1SU;BYMONTH=3,10") => {
                    String::new()
                }
                ("WEEKLY", ";BYMONTHDAY=1,-1") => String::new(),
                _ => extra,
            };
            let stamp = format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}00");
            let dtstart = match style {
                0 => format!("DTSTART:{stamp}"),
                1 => format!("DTSTART:{stamp}Z"),
                _ => format!("DTSTART;TZID=Europe/Berlin:{stamp}"),
            };
            format!("{dtstart}\nRRULE:FREQ={freq};INTERVAL={interval}{extra}")
        })
}

fn assert_strictly_increasing_whole_seconds(fires: &[DateTime<Utc>], after: DateTime<Utc>) {
    let mut previous = after;
    for t in fires {
        assert!(
            *t > previous,
            "fires must strictly increase: {previous} then {t}"
        );
        assert_eq!(
            t.timestamp_subsec_nanos(),
            0,
            "fires are whole seconds: {t}"
        );
        previous = *t;
    }
}

fn assert_chain_agrees(schedule: &Schedule, after: DateTime<Utc>, fires: &[DateTime<Utc>]) {
    let mut cursor = after;
    for expected in fires {
        let next = schedule.next_fire_after(cursor);
        assert_eq!(
            next,
            Some(*expected),
            "next_fire_after({cursor}) disagrees with next_fires"
        );
        cursor = *expected;
    }
}

fn assert_suffix(schedule: &Schedule, after: DateTime<Utc>, fires: &[DateTime<Utc>], split: usize) {
    if fires.is_empty() {
        return;
    }
    let i = split % fires.len();
    let later = schedule.next_fires(fires[i], fires.len() - i - 1);
    assert_eq!(
        later,
        fires[i + 1..],
        "next_fires(after = fire {i}) is not a suffix"
    );
    // A cursor between two fires sees the same remainder.
    let between = fires[i] - TimeDelta::seconds(1);
    if between > after {
        assert_eq!(schedule.next_fires(between, fires.len() - i), fires[i..]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn cron_fires_increase_match_their_fields_and_chain_consistently(
        cron in cron(), (tz, after) in zone_and_cursor(), split in 0usize..64,
    ) {
        let schedule = Schedule::parse(ScheduleKind::Cron, &cron.text, tz, after).unwrap();
        prop_assert_eq!(schedule.is_fixed_time_cron(), cron.fixed);
        let fires = schedule.next_fires(after, 30);
        assert_strictly_increasing_whole_seconds(&fires, after);
        for t in &fires {
            let l = local(tz, *t);
            if cron.matches(l) {
                continue;
            }
            // The one exception: a fixed-time fire whose local time was skipped runs when the gap ends.
            let intended = l.date().and_hms_opt(cron.hours[0], cron.minutes[0], 0).unwrap();
            prop_assert!(cron.fixed, "{} fired at {} local ({}), which does not match", cron.text, l, t);
            prop_assert!(cron.day_matches(l) && cron.months.contains(&l.month()));
            prop_assert!(offset_at(tz, *t - TimeDelta::seconds(1)) != offset_at(tz, *t), "{t} is not a transition");
            prop_assert!(tz.from_local_datetime(&intended).single().is_none() && intended < l);
        }
        assert_chain_agrees(&schedule, after, &fires);
        assert_suffix(&schedule, after, &fires, split);
    }

    #[test]
    fn non_fixed_cron_fires_on_exactly_the_real_instants_whose_local_time_matches(
        cron in cron().prop_filter("non-fixed", |c| !c.fixed), (tz, after) in zone_and_cursor(),
    ) {
        let schedule = Schedule::parse(ScheduleKind::Cron, &cron.text, tz, after).unwrap();
        let start = DateTime::from_timestamp(after.timestamp() - after.timestamp().rem_euclid(60), 0).unwrap();
        let end = start + TimeDelta::hours(36);
        let brute: Vec<_> = (1..=36 * 60)
            .map(|m| start + TimeDelta::minutes(m))
            .filter(|t| cron.matches(local(tz, *t)) && *t > after)
            .collect();
        let computed: Vec<_> = schedule.next_fires(after, brute.len() + 1).into_iter().filter(|t| *t <= end).collect();
        prop_assert_eq!(computed, brute);
    }

    #[test]
    fn rrule_fires_increase_chain_consistently_and_later_cursors_see_a_suffix(
        expr in rrule_with_dtstart(), (tz, after) in zone_and_cursor(), split in 0usize..64,
    ) {
        let schedule = Schedule::parse(ScheduleKind::Rrule, &expr, tz, after).unwrap();
        let fires = schedule.next_fires(after, 30);
        assert_strictly_increasing_whole_seconds(&fires, after);
        assert_chain_agrees(&schedule, after, &fires);
        assert_suffix(&schedule, after, &fires, split);
        // Starting long before gives the same fires once past `after`.
        let early = after - TimeDelta::days(40);
        let from_early: Vec<_> = schedule.next_fires(early, 400).into_iter().filter(|t| *t > after).take(fires.len()).collect();
        if from_early.len() == fires.len() {
            prop_assert_eq!(from_early, fires);
        }
    }
}
