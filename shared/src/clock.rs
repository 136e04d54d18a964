//! Time source. Production asks PostgreSQL for now (`Clock::Database` passes NULL and the SQL uses
//! `coalesce($n, now())`); tests substitute a controllable instant to simulate long horizons.

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
