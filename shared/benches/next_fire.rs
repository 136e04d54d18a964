//! next_fire_after throughput on one core: 100k mixed cron and RRULE schedules in 14 zones, RRULE DTSTARTs up to
//! five years back. Run: `cargo bench --bench next_fire` (release). Target: >= 200,000 computations/s.

use std::hint::black_box;
use std::time::Instant;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use orrery::schedule::{Schedule, ScheduleKind};

const SCHEDULES: usize = 100_000;
const ROUNDS: usize = 5;

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

const CRONS: &[&str] = &[
    "*/15 * * * *",
    "0 * * * *",
    "30 2 * * *",
    "0 9 * * 1-5",
    "10,40 2 * * *",
    "0 0 1 * *",
    "15 10 * JAN,JUL MON",
    "23 0-20/2 * * *",
    "0 0 */2 * 1",
    "@daily",
    "45 23 31 * *",
    "*/5 9-17 * * MON-FRI",
];

const RULES: &[&str] = &[
    "FREQ=DAILY",
    "FREQ=DAILY;BYHOUR=8;BYMINUTE=30",
    "FREQ=WEEKLY;BYDAY=MO,WE,FR",
    "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO",
    "FREQ=MONTHLY;BYDAY=-1FR",
    "FREQ=MONTHLY;BYMONTHDAY=-1",
    "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
    "FREQ=HOURLY;INTERVAL=5",
    "FREQ=MINUTELY;INTERVAL=45",
    "FREQ=DAILY;COUNT=5000",
    "FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU",
    "FREQ=DAILY;UNTIL=20300101T000000Z",
];

/// Deterministic xorshift so runs are comparable without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn main() {
    let now: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    let zones: Vec<Tz> = ZONES.iter().map(|z| z.parse().unwrap()).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    let parse_start = Instant::now();
    let mut schedules = Vec::with_capacity(SCHEDULES);
    for i in 0..SCHEDULES {
        let tz = zones[rng.below(zones.len())];
        let schedule = if i % 2 == 0 {
            Schedule::parse(ScheduleKind::Cron, CRONS[rng.below(CRONS.len())], tz, now)
        } else {
            let back = TimeDelta::seconds((rng.next() % (5 * 365 * 86_400)) as i64);
            let start = (now - back).with_timezone(&tz).format("%Y%m%dT%H%M00");
            let rule = RULES[rng.below(RULES.len())];
            let expr = match rng.below(3) {
                0 => format!("DTSTART;TZID={}:{start}\nRRULE:{rule}", tz.name()),
                1 => format!("DTSTART:{start}\nRRULE:{rule}"),
                _ => format!(
                    "DTSTART:{}Z\nRRULE:{rule}",
                    (now - back).format("%Y%m%dT%H%M00")
                ),
            };
            Schedule::parse(ScheduleKind::Rrule, &expr, tz, now)
        };
        schedules.push(schedule.expect("benchmark schedules are valid"));
    }
    let parse_elapsed = parse_start.elapsed();
    println!(
        "parsed {SCHEDULES} schedules in {:.3} s ({:.0} parses/s)",
        parse_elapsed.as_secs_f64(),
        SCHEDULES as f64 / parse_elapsed.as_secs_f64()
    );

    // Each schedule's cursor starts near "now" and advances to its own fire, as the scheduler does.
    let mut cursors: Vec<DateTime<Utc>> = (0..SCHEDULES)
        .map(|_| now + TimeDelta::seconds((rng.next() % 86_400) as i64))
        .collect();
    let mut computed = 0usize;
    let mut exhausted = 0usize;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        for (schedule, cursor) in schedules.iter().zip(cursors.iter_mut()) {
            computed += 1;
            match black_box(schedule.next_fire_after(*cursor)) {
                Some(t) => *cursor = t,
                None => exhausted += 1,
            }
        }
    }
    let elapsed = start.elapsed();
    let rate = computed as f64 / elapsed.as_secs_f64();
    println!(
        "next_fire_after: {computed} computations in {:.3} s = {:.0} computations/s ({:.2} us each, {exhausted} exhausted)",
        elapsed.as_secs_f64(),
        rate,
        1e6 / rate
    );
    println!(
        "target >= 200000/s: {}",
        if rate >= 200_000.0 { "met" } else { "NOT met" }
    );
}
