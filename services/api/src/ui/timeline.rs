//! A task's next fires on a timeline, with the DST transitions in the window and the fires they moved.
//!
//! Transitions are found by stepping through the window a day at a time and bisecting where the offset
//! changes. To tell which fires a transition moved, the same schedule is evaluated in a fixed-offset zone
//! (the offset in effect before the transition), which yields the wall-clock times the schedule asks for:
//! a real fire whose wall-clock time is not among them was moved by a gap; an asked-for time inside a gap
//! with no moved fire was skipped; an asked-for time inside a fold runs once or twice (the engine's policy).

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use orrery::schedule::{Schedule, ScheduleKind};

use super::models::{FireDst, TimelineFire, Transition};

const WALL: &str = "%Y-%m-%d %H:%M:%S";

fn offset_at(tz: Tz, t: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

fn wall(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc() + Duration::seconds(offset_at(tz, t) as i64)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn local_text(tz: Tz, t: DateTime<Utc>) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// Instants in (start, end] where the zone's offset changes.
pub fn transitions_between(tz: Tz, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let step = Duration::hours(12);
    let mut lo = start;
    let mut lo_off = offset_at(tz, lo);
    while lo < end {
        let hi = (lo + step).min(end);
        let hi_off = offset_at(tz, hi);
        if hi_off != lo_off {
            // Bisect to the second: offset(a) == lo_off, offset(b) == hi_off.
            let (mut a, mut b) = (lo.timestamp(), hi.timestamp());
            while b - a > 1 {
                let mid = a + (b - a) / 2;
                let t = DateTime::from_timestamp(mid, 0).unwrap_or(hi);
                if offset_at(tz, t) == lo_off {
                    a = mid;
                } else {
                    b = mid;
                }
            }
            out.push(DateTime::from_timestamp(b, 0).unwrap_or(hi));
        }
        lo = hi;
        lo_off = hi_off;
    }
    out
}

/// A zone with a fixed offset (whole hours only: the `Etc/GMT±h` zones), else UTC.
fn fixed_zone(offset_seconds: i32) -> Tz {
    if offset_seconds % 3600 != 0 {
        return Tz::UTC;
    }
    let hours = offset_seconds / 3600;
    // Etc/GMT signs are inverted: Etc/GMT-2 is UTC+2.
    let name = match hours {
        0 => "Etc/GMT".to_string(),
        h if h > 0 => format!("Etc/GMT-{h}"),
        h => format!("Etc/GMT+{}", -h),
    };
    name.parse().unwrap_or(Tz::UTC)
}

pub struct Built {
    pub fires: Vec<TimelineFire>,
    pub transitions: Vec<Transition>,
    pub window_end: DateTime<Utc>,
}

/// Fires of `schedule` after `start` (at most `count`), the transitions up to the last one (or 30 days when
/// there are no fires) and the DST marks.
pub fn build(
    schedule: &Schedule,
    kind: ScheduleKind,
    expr: &str,
    anchor: DateTime<Utc>,
    start: DateTime<Utc>,
    count: usize,
) -> Built {
    let tz = schedule.timezone();
    let instants = schedule.next_fires(start, count);
    let window_end = instants
        .last()
        .copied()
        .filter(|t| *t > start)
        .unwrap_or(start + Duration::days(30));
    let mut fires: Vec<TimelineFire> = instants
        .iter()
        .map(|t| TimelineFire {
            at: rfc3339(*t),
            local: local_text(tz, *t),
            offset_seconds: offset_at(tz, *t),
            dst: None,
        })
        .collect();
    let mut transitions = Vec::new();
    for at in transitions_between(tz, start, window_end) {
        let before = offset_at(tz, at - Duration::seconds(1));
        let after = offset_at(tz, at);
        let gap = after > before;
        let mut tr = Transition {
            at: rfc3339(at),
            kind: if gap { "gap" } else { "fold" }.into(),
            offset_before_seconds: before,
            offset_after_seconds: after,
            local_before: (at.naive_utc() + Duration::seconds(before as i64))
                .format(WALL)
                .to_string(),
            local_after: (at.naive_utc() + Duration::seconds(after as i64))
                .format(WALL)
                .to_string(),
            skipped_local: Vec::new(),
        };
        if matches!(kind, ScheduleKind::Cron | ScheduleKind::Rrule) {
            mark(
                &mut fires,
                &instants,
                &mut tr,
                Mark {
                    tz,
                    kind,
                    expr,
                    anchor,
                    at,
                    before,
                    after,
                },
            );
        } else if kind == ScheduleKind::Once {
            mark_once(&mut fires, &instants, tz, at, before, after);
        }
        transitions.push(tr);
    }
    Built {
        fires,
        transitions,
        window_end,
    }
}

struct Mark<'a> {
    tz: Tz,
    kind: ScheduleKind,
    expr: &'a str,
    anchor: DateTime<Utc>,
    at: DateTime<Utc>,
    before: i32,
    after: i32,
}

fn mark(fires: &mut [TimelineFire], instants: &[DateTime<Utc>], tr: &mut Transition, m: Mark) {
    let shift = (m.after - m.before).abs() as i64;
    let from = m.at - Duration::hours(26);
    let to = m.at + Duration::hours(26);
    // The wall-clock times the schedule asks for around the transition, read in a zone without DST.
    let shadow_tz = fixed_zone(m.before);
    let Ok(shadow) = Schedule::parse(m.kind, m.expr, shadow_tz, m.anchor) else {
        return;
    };
    let asked: BTreeSet<NaiveDateTime> = shadow
        .next_fires(from - Duration::hours(14), 2000)
        .into_iter()
        .take_while(|t| *t <= to + Duration::hours(14))
        .map(|t| wall(shadow_tz, t))
        .collect();
    let changed_local = m.at.naive_utc() + Duration::seconds(m.before.min(m.after) as i64);
    let changed_local_end = changed_local + Duration::seconds(shift);
    let in_range = |w: &NaiveDateTime| *w >= changed_local && *w < changed_local_end;
    let near: Vec<usize> = instants
        .iter()
        .enumerate()
        .filter(|(_, t)| **t >= from && **t <= to)
        .map(|(i, _)| i)
        .collect();
    if m.after > m.before {
        // Gap: the wall-clock times in [changed_local, changed_local_end) do not exist.
        let wanted: Vec<NaiveDateTime> = asked.iter().filter(|w| in_range(w)).copied().collect();
        let mut moved: Vec<usize> = near
            .iter()
            .copied()
            .filter(|&i| !asked.contains(&wall(m.tz, instants[i])))
            .collect();
        moved.sort();
        for (n, w) in wanted.iter().enumerate() {
            match moved.get(n) {
                Some(&i) => {
                    let runs_at = wall(m.tz, instants[i]);
                    fires[i].dst = Some(FireDst {
                        kind: "gap".into(),
                        intended_local: Some(w.format(WALL).to_string()),
                        note: format!(
                            "{} does not exist (clocks jump forward {} min); runs at {}",
                            w.format("%H:%M"),
                            shift / 60,
                            runs_at.format("%H:%M")
                        ),
                    });
                }
                None => tr.skipped_local.push(w.format(WALL).to_string()),
            }
        }
    } else {
        // Fold: the wall-clock times in [changed_local, changed_local_end) happen twice.
        for &i in &near {
            let w = wall(m.tz, instants[i]);
            if in_range(&w) && asked.contains(&w) {
                let twice = near
                    .iter()
                    .filter(|&&j| j != i && wall(m.tz, instants[j]) == w)
                    .count()
                    > 0;
                let which = if instants[i] < m.at {
                    "first"
                } else {
                    "second"
                };
                fires[i].dst = Some(FireDst {
                    kind: "fold".into(),
                    intended_local: None,
                    note: if twice {
                        format!(
                            "{} happens twice (clocks go back {} min); this is the {which} occurrence",
                            w.format("%H:%M"),
                            shift / 60
                        )
                    } else {
                        format!(
                            "{} happens twice (clocks go back {} min); runs once, at the {which} occurrence",
                            w.format("%H:%M"),
                            shift / 60
                        )
                    },
                });
            }
        }
    }
}

fn mark_once(
    fires: &mut [TimelineFire],
    instants: &[DateTime<Utc>],
    tz: Tz,
    at: DateTime<Utc>,
    before: i32,
    after: i32,
) {
    let shift = (after - before).abs() as i64;
    for (i, t) in instants.iter().enumerate() {
        let w = wall(tz, *t);
        let start = at.naive_utc() + Duration::seconds(before.min(after) as i64);
        if w >= start && w < start + Duration::seconds(shift) {
            fires[i].dst = Some(FireDst {
                kind: if after > before { "gap" } else { "fold" }.into(),
                intended_local: None,
                note: "the instant lies in the hour around a DST change".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn spring_forward_moves_a_fixed_time_cron_to_the_gap_end_and_marks_the_transition() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let start = utc("2026-03-06T00:00:00Z");
        let s = Schedule::parse(ScheduleKind::Cron, "30 2 * * *", tz, start).unwrap();
        let b = build(&s, ScheduleKind::Cron, "30 2 * * *", start, start, 5);
        assert_eq!(b.transitions.len(), 1);
        let tr = &b.transitions[0];
        assert_eq!(tr.kind, "gap");
        assert_eq!(tr.at, "2026-03-08T07:00:00Z");
        assert_eq!(
            (tr.offset_before_seconds, tr.offset_after_seconds),
            (-5 * 3600, -4 * 3600)
        );
        let moved: Vec<_> = b.fires.iter().filter(|f| f.dst.is_some()).collect();
        assert_eq!(moved.len(), 1, "{:?}", b.fires);
        assert_eq!(moved[0].at, "2026-03-08T07:00:00Z");
        assert_eq!(
            moved[0].dst.as_ref().unwrap().intended_local.as_deref(),
            Some("2026-03-08 02:30:00")
        );
    }

    #[test]
    fn an_hourly_cron_skips_the_missing_hour_and_marks_nothing_as_moved() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let start = utc("2026-03-28T20:00:00Z");
        let s = Schedule::parse(ScheduleKind::Cron, "15 * * * *", tz, start).unwrap();
        let b = build(&s, ScheduleKind::Cron, "15 * * * *", start, start, 24);
        assert_eq!(b.transitions.len(), 1);
        assert!(b.fires.iter().all(|f| f.dst.is_none()), "{:?}", b.fires);
        assert_eq!(b.transitions[0].skipped_local, vec!["2026-03-29 02:15:00"]);
    }

    #[test]
    fn fall_back_marks_the_repeated_time() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let start = utc("2026-10-24T00:00:00Z");
        let s = Schedule::parse(ScheduleKind::Cron, "30 2 * * *", tz, start).unwrap();
        let b = build(&s, ScheduleKind::Cron, "30 2 * * *", start, start, 4);
        assert_eq!(b.transitions.len(), 1);
        assert_eq!(b.transitions[0].kind, "fold");
        let marked: Vec<_> = b.fires.iter().filter(|f| f.dst.is_some()).collect();
        assert_eq!(marked.len(), 1, "{:?}", b.fires);
        assert_eq!(marked[0].dst.as_ref().unwrap().kind, "fold");
    }

    #[test]
    fn utc_has_no_transitions() {
        assert!(transitions_between(
            Tz::UTC,
            utc("2026-01-01T00:00:00Z"),
            utc("2027-01-01T00:00:00Z")
        )
        .is_empty());
    }
}
