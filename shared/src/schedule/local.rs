//! Turning local wall-clock times into instants and back, with the DST policies spelled out.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// No DST shift in tzdata moves the clock by more than this; it bounds how far local time can run backwards.
pub(crate) const MAX_SHIFT: TimeDelta = TimeDelta::hours(3);

/// Offset from UTC (seconds) in effect at instant `t`.
pub(crate) fn offset_at(tz: Tz, t: NaiveDateTime) -> i64 {
    i64::from(tz.offset_from_utc_datetime(&t).fix().local_minus_utc())
}

/// Local wall-clock time of an instant.
pub(crate) fn to_local(tz: Tz, t: DateTime<Utc>) -> NaiveDateTime {
    let utc = t.naive_utc();
    utc + TimeDelta::seconds(offset_at(tz, utc))
}

/// How a local time maps onto the timeline.
pub(crate) enum Mapping {
    /// The local time occurs once.
    Single(DateTime<Utc>),
    /// The local time occurs twice (fold): first and second instant.
    Fold(DateTime<Utc>, DateTime<Utc>),
    /// The local time does not exist (gap); offsets in effect before and after the gap.
    Gap { before: i64, after: i64 },
}

pub(crate) fn map_local(tz: Tz, local: NaiveDateTime) -> Mapping {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Mapping::Single(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
            Mapping::Fold(a.min(b), a.max(b))
        }
        LocalResult::None => {
            // The transition lies within a day of `local` read as UTC (offsets are within ±14 h).
            let o1 = offset_at(tz, local - TimeDelta::hours(36));
            let o2 = offset_at(tz, local + TimeDelta::hours(36));
            Mapping::Gap {
                before: o1.min(o2),
                after: o1.max(o2),
            }
        }
    }
}

fn instant(naive_utc: NaiveDateTime) -> DateTime<Utc> {
    Utc.from_utc_datetime(&naive_utc)
}

/// RFC 5545 policy (RRULE, naive `once`): a time in a gap is shifted forward by the gap's length (read with the
/// offset in effect before the gap); a repeated time resolves to its first instant.
pub(crate) fn resolve_shifting(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match map_local(tz, local) {
        Mapping::Single(t) | Mapping::Fold(t, _) => t,
        Mapping::Gap { before, .. } => instant(local - TimeDelta::seconds(before)),
    }
}

/// Classic cron policy for fixed-time expressions: a time in a gap runs at the first valid local time after the
/// gap (the transition instant); a repeated time resolves to its first instant.
pub(crate) fn resolve_to_gap_end(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match map_local(tz, local) {
        Mapping::Single(t) | Mapping::Fold(t, _) => t,
        Mapping::Gap { before, after } => {
            // The transition T satisfies local - after < T <= local - before; find it by bisection.
            let mut lo = (local - TimeDelta::seconds(after)).and_utc().timestamp();
            let mut hi = (local - TimeDelta::seconds(before)).and_utc().timestamp();
            // Invariant: offset(lo) == before, offset(hi) == after.
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                let mid_naive = DateTime::from_timestamp(mid, 0)
                    .expect("in range")
                    .naive_utc();
                if offset_at(tz, mid_naive) == before {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            DateTime::from_timestamp(hi, 0).expect("in range")
        }
    }
}
