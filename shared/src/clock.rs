//! Time source, injected into every service (runtime `Context::clock`, the API's `AppState::clock`, the
//! scheduler's materializer, the worker's `Db` and executor). Production asks PostgreSQL for now
//! (`Clock::Database` passes NULL and the SQL uses `coalesce($n, now())`); instants computed in Rust (validation
//! of a new schedule, response timestamps, a pipeline's `now`, lag metrics) come from [`Clock::now`], the process
//! clock in production. Tests substitute a controllable instant to simulate long horizons or to show that
//! nothing happens without waiting for it.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    Database,
    Manual(Arc<Mutex<DateTime<Utc>>>),
}

impl Clock {
    pub fn manual(at: DateTime<Utc>) -> Self {
        Clock::Manual(Arc::new(Mutex::new(at)))
    }

    /// The parameter to bind for `coalesce($n::timestamptz, now())`.
    pub fn param(&self) -> Option<DateTime<Utc>> {
        match self {
            Clock::Database => None,
            Clock::Manual(t) => Some(*t.lock().expect("clock lock")),
        }
    }

    /// Now, for instants computed in Rust: the process clock in production, the manual instant in tests.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::Database => Utc::now(),
            Clock::Manual(t) => *t.lock().expect("clock lock"),
        }
    }

    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(t) = self {
            let mut g = t.lock().expect("clock lock");
            *g += by;
        }
    }

    pub fn set(&self, at: DateTime<Utc>) {
        if let Clock::Manual(t) = self {
            *t.lock().expect("clock lock") = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_the_database_clock_binds_null() {
        let at: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = Clock::manual(at);
        assert_eq!(clock.now(), at);
        assert_eq!(clock.param(), Some(at));
        clock.advance(Duration::hours(25));
        assert_eq!(clock.now(), at + Duration::hours(25));
        let shared = clock.clone();
        shared.set(at);
        assert_eq!(clock.now(), at, "clones share one instant");
        assert_eq!(Clock::Database.param(), None);
        let before = Utc::now();
        assert!(Clock::Database.now() >= before);
    }
}
