//! One RFC 5545 RRULE: parsing its parts and expanding it in local wall-clock time.
//!
//! Expansion works period by period (a year, month, week, day, hour, minute or second, stepped by INTERVAL from
//! DTSTART, all in local time per decision 10). Each period's candidate days are filtered by the BYxxx day parts
//! (which both expands within the period and limits, exactly as RFC 5545's table), crossed with the times, cut by
//! BYSETPOS and by DTSTART. The period containing any local time can be computed directly, so evaluation never
//! replays history.

use chrono::{Datelike, Months, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike, Weekday};

use super::ScheduleError;

/// How far past its starting point an expansion looks for the next occurrence before calling the rule exhausted.
const SEARCH_YEARS: i32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Frequency {
    Yearly,
    Monthly,
    Weekly,
    Daily,
    Hourly,
    Minutely,
    Secondly,
}

impl Frequency {
    fn name(self) -> &'static str {
        match self {
            Frequency::Yearly => "YEARLY",
            Frequency::Monthly => "MONTHLY",
            Frequency::Weekly => "WEEKLY",
            Frequency::Daily => "DAILY",
            Frequency::Hourly => "HOURLY",
            Frequency::Minutely => "MINUTELY",
            Frequency::Secondly => "SECONDLY",
        }
    }

    /// Length of a sub-daily period in seconds.
    fn unit_seconds(self) -> i64 {
        match self {
            Frequency::Hourly => 3600,
            Frequency::Minutely => 60,
            _ => 1,
        }
    }
}

/// UNTIL as written: a UTC instant, a floating local date-time, or a date.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Until {
    Utc(NaiveDateTime),
    Floating(NaiveDateTime),
    Date(NaiveDate),
}

/// The parts of an RRULE, validated but not yet tied to a DTSTART.
#[derive(Clone, Debug)]
pub(crate) struct RuleParts {
    pub freq: Frequency,
    pub interval: u32,
    pub count: Option<u32>,
    pub until: Option<Until>,
    by_second: Vec<u32>,
    by_minute: Vec<u32>,
    by_hour: Vec<u32>,
    by_day: Vec<(i32, Weekday)>,
    by_month_day: Vec<i32>,
    by_year_day: Vec<i32>,
    by_week_no: Vec<i32>,
    by_month: Vec<u32>,
    by_set_pos: Vec<i32>,
    wkst: Weekday,
}

fn err(message: String) -> ScheduleError {
    ScheduleError::new(message)
}

fn parse_weekday(text: &str) -> Option<Weekday> {
    Some(match text {
        "MO" => Weekday::Mon,
        "TU" => Weekday::Tue,
        "WE" => Weekday::Wed,
        "TH" => Weekday::Thu,
        "FR" => Weekday::Fri,
        "SA" => Weekday::Sat,
        "SU" => Weekday::Sun,
        _ => return None,
    })
}

fn parse_int_list(
    part: &str,
    value: &str,
    min: i32,
    max: i32,
    allow_negative: bool,
) -> Result<Vec<i32>, ScheduleError> {
    let mut out = Vec::new();
    for item in value.split(',') {
        let n: i32 = item
            .parse()
            .map_err(|_| err(format!("{part} value {item:?} is not an integer")))?;
        let ok = (min..=max).contains(&n) || (allow_negative && (-max..=-min).contains(&n));
        if !ok || n == 0 && min > 0 {
            let range = if allow_negative {
                format!("{min}..{max} or -{max}..-{min}")
            } else {
                format!("{min}-{max}")
            };
            return Err(err(format!("{part} value {n} is out of range {range}")));
        }
        out.push(n);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn unsigned(values: Vec<i32>) -> Vec<u32> {
    values.into_iter().map(|v| v as u32).collect()
}

/// Parses `YYYYMMDDTHHMMSS[Z]` or `YYYYMMDD`; returns the naive value and whether it ended in `Z`.
pub(crate) fn parse_ical_datetime(text: &str) -> Option<(NaiveDateTime, bool, bool)> {
    let (body, utc) = match text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) {
        Some(b) => (b, true),
        None => (text, false),
    };
    if !body
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'T' || b == b't')
    {
        return None;
    }
    if body.len() == 8 && !utc {
        let date = NaiveDate::parse_from_str(body, "%Y%m%d").ok()?;
        return Some((date.and_time(NaiveTime::MIN), false, true));
    }
    if body.len() != 15 {
        return None;
    }
    let dt = NaiveDateTime::parse_from_str(&body.to_ascii_uppercase(), "%Y%m%dT%H%M%S").ok()?;
    Some((dt, utc, false))
}

impl RuleParts {
    /// Parses `FREQ=...;...` (without the `RRULE:` prefix).
    pub(crate) fn parse(text: &str) -> Result<RuleParts, ScheduleError> {
        let text = text.trim().to_ascii_uppercase();
        if text.is_empty() {
            return Err(err("RRULE is empty".into()));
        }
        let mut seen: Vec<String> = Vec::new();
        let mut freq = None;
        let mut parts = RuleParts {
            freq: Frequency::Daily,
            interval: 1,
            count: None,
            until: None,
            by_second: vec![],
            by_minute: vec![],
            by_hour: vec![],
            by_day: vec![],
            by_month_day: vec![],
            by_year_day: vec![],
            by_week_no: vec![],
            by_month: vec![],
            by_set_pos: vec![],
            wkst: Weekday::Mon,
        };
        for item in text.split(';').filter(|s| !s.trim().is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| err(format!("RRULE part {item:?} is not NAME=VALUE")))?;
            let (name, value) = (name.trim(), value.trim());
            if seen.iter().any(|s| s == name) {
                return Err(err(format!("RRULE part {name} is given twice")));
            }
            seen.push(name.to_owned());
            if value.is_empty() {
                return Err(err(format!("RRULE part {name} has an empty value")));
            }
            match name {
                "FREQ" => {
                    freq = Some(match value {
                        "YEARLY" => Frequency::Yearly,
                        "MONTHLY" => Frequency::Monthly,
                        "WEEKLY" => Frequency::Weekly,
                        "DAILY" => Frequency::Daily,
                        "HOURLY" => Frequency::Hourly,
                        "MINUTELY" => Frequency::Minutely,
                        "SECONDLY" => Frequency::Secondly,
                        other => {
                            return Err(err(format!(
                                "unknown FREQ value {other} (expected YEARLY, MONTHLY, WEEKLY, DAILY, HOURLY, MINUTELY or SECONDLY)"
                            )))
                        }
                    })
                }
                "INTERVAL" => {
                    parts.interval = value
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| {
                            err(format!("INTERVAL must be a positive integer, got {value}"))
                        })?
                }
                "COUNT" => {
                    let count: u32 = value.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        err(format!("COUNT must be a positive integer, got {value}"))
                    })?;
                    if count > super::MAX_RRULE_COUNT {
                        return Err(err(format!(
                            "COUNT {count} exceeds the maximum {}; use UNTIL for longer rules",
                            super::MAX_RRULE_COUNT
                        )));
                    }
                    parts.count = Some(count);
                }
                "UNTIL" => {
                    let (dt, utc, date_only) = parse_ical_datetime(value).ok_or_else(|| {
                        err(format!(
                            "UNTIL value {value} is not YYYYMMDDTHHMMSSZ, YYYYMMDDTHHMMSS or YYYYMMDD"
                        ))
                    })?;
                    parts.until = Some(if date_only {
                        Until::Date(dt.date())
                    } else if utc {
                        Until::Utc(dt)
                    } else {
                        Until::Floating(dt)
                    });
                }
                "BYSECOND" => parts.by_second = unsigned(parse_int_list(name, value, 0, 59, false)?),
                "BYMINUTE" => parts.by_minute = unsigned(parse_int_list(name, value, 0, 59, false)?),
                "BYHOUR" => parts.by_hour = unsigned(parse_int_list(name, value, 0, 23, false)?),
                "BYMONTH" => parts.by_month = unsigned(parse_int_list(name, value, 1, 12, false)?),
                "BYMONTHDAY" => parts.by_month_day = parse_int_list(name, value, 1, 31, true)?,
                "BYYEARDAY" => parts.by_year_day = parse_int_list(name, value, 1, 366, true)?,
                "BYWEEKNO" => parts.by_week_no = parse_int_list(name, value, 1, 53, true)?,
                "BYSETPOS" => parts.by_set_pos = parse_int_list(name, value, 1, 366, true)?,
                "BYDAY" => {
                    for item in value.split(',') {
                        let split = item.len().saturating_sub(2);
                        let (ordinal, day) = item.split_at(split);
                        let weekday = parse_weekday(day);
                        let ordinal = if ordinal.is_empty() {
                            Some(0)
                        } else {
                            ordinal
                                .parse::<i32>()
                                .ok()
                                .filter(|n| *n != 0 && (-53..=53).contains(n))
                        };
                        match (ordinal, weekday) {
                            (Some(n), Some(w)) => parts.by_day.push((n, w)),
                            _ => {
                                return Err(err(format!(
                                    "BYDAY value {item:?} is not a weekday (MO, TU, WE, TH, FR, SA, SU, optionally with an ordinal such as 2TU or -1FR)"
                                )))
                            }
                        }
                    }
                }
                "WKST" => {
                    parts.wkst = parse_weekday(value).ok_or_else(|| {
                        err(format!("WKST value {value} is not a weekday (MO..SU)"))
                    })?
                }
                other => return Err(err(format!("unknown RRULE part {other}"))),
            }
        }
        parts.freq = freq.ok_or_else(|| err("RRULE has no FREQ".into()))?;
        if parts.count.is_some() && parts.until.is_some() {
            return Err(err("COUNT and UNTIL cannot both be given".into()));
        }
        let freq = parts.freq;
        if parts.by_day.iter().any(|(n, _)| *n != 0) {
            if !matches!(freq, Frequency::Monthly | Frequency::Yearly) {
                return Err(err(format!(
                    "BYDAY ordinals (like 2TU) need FREQ=MONTHLY or FREQ=YEARLY, not {}",
                    freq.name()
                )));
            }
            if freq == Frequency::Yearly && !parts.by_week_no.is_empty() {
                return Err(err(
                    "BYDAY ordinals (like 2TU) cannot be combined with BYWEEKNO".into(),
                ));
            }
        }
        if !parts.by_month_day.is_empty() && freq == Frequency::Weekly {
            return Err(err("BYMONTHDAY cannot be used with FREQ=WEEKLY".into()));
        }
        if !parts.by_year_day.is_empty()
            && matches!(
                freq,
                Frequency::Monthly | Frequency::Weekly | Frequency::Daily
            )
        {
            return Err(err(format!(
                "BYYEARDAY cannot be used with FREQ={}",
                freq.name()
            )));
        }
        if !parts.by_week_no.is_empty() && freq != Frequency::Yearly {
            return Err(err(format!(
                "BYWEEKNO needs FREQ=YEARLY, not {}",
                freq.name()
            )));
        }
        Ok(parts)
    }
}

/// A rule tied to its DTSTART (local wall-clock time in the rule's zone), ready to expand.
#[derive(Clone, Debug)]
pub(crate) struct Expander {
    freq: Frequency,
    interval: i64,
    dtstart: NaiveDateTime,
    months: u16,
    weekdays: u8,
    nth: Vec<(i32, Weekday)>,
    has_by_day: bool,
    nth_in_month: bool,
    month_days: Vec<i32>,
    year_days: Vec<i32>,
    week_nos: Vec<i32>,
    set_pos: Vec<i32>,
    wkst: Weekday,
    /// Times of day generated in each day of a DAILY-or-longer period.
    times: Vec<NaiveTime>,
    /// (minute, second) pairs in each hour of an HOURLY period.
    minute_seconds: Vec<(u32, u32)>,
    /// Seconds in each minute of a MINUTELY period.
    seconds: Vec<u32>,
    hour_mask: u32,
    minute_mask: u64,
    second_mask: u64,
    /// Start of period 0 for WEEKLY (the WKST-aligned week of DTSTART) and sub-daily frequencies.
    week0: NaiveDate,
    base0: NaiveDateTime,
}

fn mask64(values: &[u32]) -> u64 {
    values.iter().fold(0, |m, v| m | 1 << v)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn is_leap(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_year(year: i32) -> u32 {
    if is_leap(year) {
        366
    } else {
        365
    }
}

fn week_start(date: NaiveDate, wkst: Weekday) -> NaiveDate {
    let back = (7 + date.weekday().num_days_from_monday() - wkst.num_days_from_monday()) % 7;
    date - TimeDelta::days(i64::from(back))
}

fn week1_start(year: i32, wkst: Weekday) -> NaiveDate {
    let jan1 = NaiveDate::from_ymd_opt(year, 1, 1).expect("valid year");
    let offset = (7 + jan1.weekday().num_days_from_monday() - wkst.num_days_from_monday()) % 7;
    if offset <= 3 {
        jan1 - TimeDelta::days(i64::from(offset))
    } else {
        jan1 + TimeDelta::days(i64::from(7 - offset))
    }
}

/// RFC 5545 week number of `date` (week 1 has at least four days of its year) and the weeks in that week-year.
fn week_number(date: NaiveDate, wkst: Weekday) -> (i32, i32) {
    let year = date.year();
    let this = week1_start(year, wkst);
    let (start, next) = if date < this {
        (week1_start(year - 1, wkst), this)
    } else {
        let next = week1_start(year + 1, wkst);
        if date >= next {
            (next, week1_start(year + 2, wkst))
        } else {
            (this, next)
        }
    };
    let n = ((date - start).num_days() / 7 + 1) as i32;
    let weeks = ((next - start).num_days() / 7) as i32;
    (n, weeks)
}

fn ceil_div(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// What a period produced, and which period to look at next.
enum Step {
    Next,
    Jump(i64),
    End,
}

impl Expander {
    pub(crate) fn new(parts: &RuleParts, dtstart: NaiveDateTime) -> Expander {
        let freq = parts.freq;
        let mut by_month = parts.by_month.clone();
        let mut by_month_day = parts.by_month_day.clone();
        let mut by_day = parts.by_day.clone();
        // RFC 5545: parts not given default to DTSTART's.
        if parts.by_week_no.is_empty()
            && parts.by_year_day.is_empty()
            && by_month_day.is_empty()
            && by_day.is_empty()
        {
            match freq {
                Frequency::Yearly => {
                    if by_month.is_empty() {
                        by_month = vec![dtstart.month()];
                    }
                    by_month_day = vec![dtstart.day() as i32];
                }
                Frequency::Monthly => by_month_day = vec![dtstart.day() as i32],
                Frequency::Weekly => by_day = vec![(0, dtstart.weekday())],
                _ => {}
            }
        }
        let or_default = |given: &Vec<u32>, default: u32, expands: bool| -> Vec<u32> {
            if given.is_empty() && expands {
                vec![default]
            } else {
                given.clone()
            }
        };
        let hours = or_default(&parts.by_hour, dtstart.hour(), freq < Frequency::Hourly);
        let minutes = or_default(
            &parts.by_minute,
            dtstart.minute(),
            freq < Frequency::Minutely,
        );
        let seconds = or_default(
            &parts.by_second,
            dtstart.second(),
            freq < Frequency::Secondly,
        );
        let mut times = Vec::new();
        for &h in &hours {
            for &m in &minutes {
                for &s in &seconds {
                    times.push(NaiveTime::from_hms_opt(h, m, s).expect("validated"));
                }
            }
        }
        times.sort_unstable();
        let mut minute_seconds = Vec::new();
        for &m in &minutes {
            for &s in &seconds {
                minute_seconds.push((m, s));
            }
        }
        minute_seconds.sort_unstable();
        let base0 = match freq {
            Frequency::Hourly => dtstart
                .with_minute(0)
                .and_then(|t| t.with_second(0))
                .expect("valid"),
            Frequency::Minutely => dtstart.with_second(0).expect("valid"),
            _ => dtstart,
        };
        Expander {
            freq,
            interval: i64::from(parts.interval),
            dtstart,
            months: by_month.iter().fold(0, |m, v| m | 1 << v),
            weekdays: by_day
                .iter()
                .filter(|(n, _)| *n == 0)
                .fold(0, |m, (_, w)| m | 1 << w.num_days_from_monday()),
            nth: by_day.iter().copied().filter(|(n, _)| *n != 0).collect(),
            has_by_day: !by_day.is_empty(),
            nth_in_month: freq == Frequency::Monthly || !by_month.is_empty(),
            month_days: by_month_day,
            year_days: parts.by_year_day.clone(),
            week_nos: parts.by_week_no.clone(),
            set_pos: parts.by_set_pos.clone(),
            wkst: parts.wkst,
            times,
            minute_seconds,
            seconds: {
                let mut s = seconds.clone();
                s.sort_unstable();
                s
            },
            hour_mask: mask64(&parts.by_hour) as u32,
            minute_mask: mask64(&parts.by_minute),
            second_mask: mask64(&parts.by_second),
            week0: week_start(dtstart.date(), parts.wkst),
            base0,
        }
    }

    pub(crate) fn dtstart(&self) -> NaiveDateTime {
        self.dtstart
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months != 0 && self.months & (1 << date.month()) == 0 {
            return false;
        }
        if !self.week_nos.is_empty() {
            let (n, weeks) = week_number(date, self.wkst);
            if !self.week_nos.contains(&n) && !self.week_nos.contains(&(n - weeks - 1)) {
                return false;
            }
        }
        if !self.year_days.is_empty() {
            let ordinal = date.ordinal() as i32;
            let negative = ordinal - days_in_year(date.year()) as i32 - 1;
            if !self.year_days.contains(&ordinal) && !self.year_days.contains(&negative) {
                return false;
            }
        }
        if !self.month_days.is_empty() {
            let day = date.day() as i32;
            let negative = day - days_in_month(date.year(), date.month()) as i32 - 1;
            if !self.month_days.contains(&day) && !self.month_days.contains(&negative) {
                return false;
            }
        }
        if self.has_by_day {
            let weekday = date.weekday();
            if self.weekdays & (1 << weekday.num_days_from_monday()) != 0 {
                return true;
            }
            let (index, len) = if self.nth_in_month {
                (date.day(), days_in_month(date.year(), date.month()))
            } else {
                (date.ordinal(), days_in_year(date.year()))
            };
            let first = ((index - 1) / 7 + 1) as i32;
            let last = -(((len - index) / 7 + 1) as i32);
            return self
                .nth
                .iter()
                .any(|&(n, w)| w == weekday && (n == first || n == last));
        }
        true
    }

    /// Index of the period containing local time `t` (0 if `t` is before DTSTART's period).
    fn period_index(&self, t: NaiveDateTime) -> i64 {
        let start = self.dtstart;
        let raw = match self.freq {
            Frequency::Yearly => i64::from(t.year() - start.year()),
            Frequency::Monthly => {
                i64::from(t.year() - start.year()) * 12 + i64::from(t.month())
                    - i64::from(start.month())
            }
            Frequency::Weekly => (week_start(t.date(), self.wkst) - self.week0).num_days() / 7,
            Frequency::Daily => (t.date() - start.date()).num_days(),
            sub => (t - self.base0)
                .num_seconds()
                .div_euclid(sub.unit_seconds()),
        };
        raw.div_euclid(self.interval).max(0)
    }

    /// Fills `out` with period `k`'s occurrences (sorted, BYSETPOS applied, not yet cut by DTSTART).
    fn fill(&self, k: i64, limit: NaiveDate, out: &mut Vec<NaiveDateTime>) -> Step {
        out.clear();
        let step = k * self.interval;
        match self.freq {
            Frequency::Yearly => {
                let Ok(year) = i32::try_from(i64::from(self.dtstart.year()) + step) else {
                    return Step::End;
                };
                if year > limit.year() {
                    return Step::End;
                }
                for month in 1..=12 {
                    if self.months != 0 && self.months & (1 << month) == 0 {
                        continue;
                    }
                    self.push_month_days(year, month, out);
                }
            }
            Frequency::Monthly => {
                let index =
                    i64::from(self.dtstart.year()) * 12 + i64::from(self.dtstart.month0()) + step;
                let Ok(year) = i32::try_from(index.div_euclid(12)) else {
                    return Step::End;
                };
                if year > limit.year() {
                    return Step::End;
                }
                let month = index.rem_euclid(12) as u32 + 1;
                if self.months == 0 || self.months & (1 << month) != 0 {
                    self.push_month_days(year, month, out);
                }
            }
            Frequency::Weekly => {
                let Some(start) = self.week0.checked_add_signed(TimeDelta::days(7 * step)) else {
                    return Step::End;
                };
                if start > limit {
                    return Step::End;
                }
                for i in 0..7 {
                    let date = start + TimeDelta::days(i);
                    if self.day_matches(date) {
                        self.push_times(date, out);
                    }
                }
            }
            Frequency::Daily => {
                let Some(date) = self
                    .dtstart
                    .date()
                    .checked_add_signed(TimeDelta::days(step))
                else {
                    return Step::End;
                };
                if date > limit {
                    return Step::End;
                }
                if self.day_matches(date) {
                    self.push_times(date, out);
                }
            }
            sub => {
                let unit = sub.unit_seconds() * self.interval;
                let Some(p) = self.base0.checked_add_signed(TimeDelta::seconds(k * unit)) else {
                    return Step::End;
                };
                if p.date() > limit {
                    return Step::End;
                }
                // Jump over whole days, hours or minutes the filters exclude instead of visiting each period.
                let jump_to = |boundary: NaiveDateTime| {
                    Step::Jump(ceil_div((boundary - self.base0).num_seconds(), unit).max(k + 1))
                };
                if !self.day_matches(p.date()) {
                    return jump_to(
                        p.date()
                            .succ_opt()
                            .expect("in range")
                            .and_time(NaiveTime::MIN),
                    );
                }
                let hour_start = p
                    .with_minute(0)
                    .and_then(|t| t.with_second(0))
                    .expect("valid");
                if self.hour_mask != 0 && self.hour_mask & (1 << p.hour()) == 0 {
                    return jump_to(hour_start + TimeDelta::hours(1));
                }
                let minute_start = p.with_second(0).expect("valid");
                match sub {
                    Frequency::Hourly => {
                        for &(m, s) in &self.minute_seconds {
                            out.push(hour_start + TimeDelta::seconds(i64::from(m * 60 + s)));
                        }
                    }
                    Frequency::Minutely => {
                        if self.minute_mask != 0 && self.minute_mask & (1 << p.minute()) == 0 {
                            return jump_to(minute_start + TimeDelta::minutes(1));
                        }
                        for &s in &self.seconds {
                            out.push(minute_start + TimeDelta::seconds(i64::from(s)));
                        }
                    }
                    _ => {
                        if self.minute_mask != 0 && self.minute_mask & (1 << p.minute()) == 0 {
                            return jump_to(minute_start + TimeDelta::minutes(1));
                        }
                        if self.second_mask == 0 || self.second_mask & (1 << p.second()) != 0 {
                            out.push(p);
                        }
                    }
                }
            }
        }
        if !self.set_pos.is_empty() && !out.is_empty() {
            let len = out.len() as i32;
            let mut picked: Vec<NaiveDateTime> = self
                .set_pos
                .iter()
                .filter_map(|&pos| {
                    let i = if pos > 0 { pos - 1 } else { len + pos };
                    (0..len).contains(&i).then(|| out[i as usize])
                })
                .collect();
            picked.sort_unstable();
            picked.dedup();
            *out = picked;
        }
        Step::Next
    }

    fn push_month_days(&self, year: i32, month: u32, out: &mut Vec<NaiveDateTime>) {
        for day in 1..=days_in_month(year, month) {
            let date = NaiveDate::from_ymd_opt(year, month, day).expect("valid");
            if self.day_matches(date) {
                self.push_times(date, out);
            }
        }
    }

    fn push_times(&self, date: NaiveDate, out: &mut Vec<NaiveDateTime>) {
        out.extend(self.times.iter().map(|t| date.and_time(*t)));
    }

    /// Occurrences (local wall-clock times, increasing, none before DTSTART) from the period containing `from`.
    pub(crate) fn occurrences_from(&self, from: NaiveDateTime) -> Occurrences<'_> {
        let anchor = from.max(self.dtstart);
        let limit = anchor
            .date()
            .checked_add_months(Months::new(12 * SEARCH_YEARS as u32))
            .unwrap_or(NaiveDate::MAX);
        Occurrences {
            expander: self,
            k: self.period_index(from),
            buf: Vec::new(),
            idx: 0,
            limit,
            done: false,
        }
    }
}

pub(crate) struct Occurrences<'a> {
    expander: &'a Expander,
    k: i64,
    buf: Vec<NaiveDateTime>,
    idx: usize,
    limit: NaiveDate,
    done: bool,
}

impl Iterator for Occurrences<'_> {
    type Item = NaiveDateTime;

    fn next(&mut self) -> Option<NaiveDateTime> {
        loop {
            while self.idx < self.buf.len() {
                let t = self.buf[self.idx];
                self.idx += 1;
                if t >= self.expander.dtstart {
                    return Some(t);
                }
            }
            if self.done {
                return None;
            }
            self.idx = 0;
            match self.expander.fill(self.k, self.limit, &mut self.buf) {
                Step::Next => self.k += 1,
                Step::Jump(k) => {
                    self.buf.clear();
                    self.k = k;
                }
                Step::End => {
                    self.buf.clear();
                    self.done = true;
                }
            }
        }
    }
}
