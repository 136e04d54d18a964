//! Domain enums shared by the API, the scheduler and the worker. Their string forms are the values stored in
//! PostgreSQL (see the CHECK constraints in migrations/) and exchanged over the API.

use serde::{Deserialize, Serialize};

/// A type stored as text: read with `FromStr` (a spelling it does not know is a row-mapping error naming the
/// value, never a silent default) and bound with `as_str`.
macro_rules! sql_text {
    ($name:ident) => {
        impl<'a> tokio_postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let text = <&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?;
                Ok(text
                    .parse::<$name>()
                    .map_err(|e| format!("{}: {e}", stringify!($name)))?)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::FromSql>::accepts(ty)
            }
        }

        impl tokio_postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &tokio_postgres::types::Type,
                out: &mut bytes::BytesMut,
            ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
            {
                self.as_str().to_sql(ty, out)
            }

            fn accepts(ty: &tokio_postgres::types::Type) -> bool {
                <&str as tokio_postgres::types::ToSql>::accepts(ty)
            }

            tokio_postgres::types::to_sql_checked!();
        }
    };
}
pub(crate) use sql_text;

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The stored spellings, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(&self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The accepted spellings, for error messages.
            pub fn expected() -> String {
                [$($text),+].join(", ")
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("{other:?} is not one of {}", Self::expected())),
                }
            }
        }

        sql_text!($name);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// Lifecycle of a task. `canceled` and `completed` are terminal.
    TaskStatus { Active => "active", Paused => "paused", Canceled => "canceled", Completed => "completed" }
);
string_enum!(BackoffStrategy { ExponentialJitter => "exponential_jitter", Linear => "linear", Fixed => "fixed" });
string_enum!(
    /// What to do with fires older than the misfire grace window.
    Catchup { Skip => "skip", Latest => "latest", All => "all" }
);
string_enum!(
    /// What to do with a fire while a run of the same task is leased.
    Overlap { Allow => "allow", Skip => "skip", Queue => "queue" }
);
string_enum!(
    /// When a dependent runs after its parent's final run: it succeeded, it is dead, or either.
    DependencyCondition { Success => "success", Failure => "failure", Any => "any" }
);
string_enum!(Trigger { Schedule => "schedule", Manual => "manual", Event => "event", Retry => "retry", Dependency => "dependency" });
string_enum!(
    /// A worker process's lifecycle, as its `worker_heartbeat.state` says.
    WorkerState { Starting => "starting", Running => "running", Draining => "draining", Stopped => "stopped" }
);
string_enum!(Scope {
    Admin => "admin",
    TasksRead => "tasks:read",
    TasksWrite => "tasks:write",
    RunsRead => "runs:read",
    EventsPublish => "events:publish",
    JobsWork => "jobs:work",
});

/// The system agent created by the first migration; its token is `ORRERY_ADMIN_TOKEN`.
pub const SYSTEM_AGENT_ID: uuid::Uuid = uuid::Uuid::from_u128(1);

/// At most this many overdue fires of one task run per catch-up with `catchup = all`.
pub const CATCHUP_ALL_LIMIT: usize = 100;

/// Backoff before retry number `attempt` (1-based: the delay after the first failed attempt is attempt 1).
///
/// exponential_jitter = uniform(0.5, 1) × min(base·2^(attempt−1), max); linear = min(base·attempt, max);
/// fixed = min(base, max). `jitter` is a sample from [0, 1).
pub fn backoff_delay(
    strategy: BackoffStrategy,
    attempt: u32,
    base: f64,
    max: f64,
    jitter: f64,
) -> f64 {
    let attempt = attempt.max(1);
    match strategy {
        BackoffStrategy::ExponentialJitter => {
            let exp = base * 2f64.powi((attempt - 1).min(62) as i32);
            (0.5 + 0.5 * jitter.clamp(0.0, 1.0)) * exp.min(max)
        }
        BackoffStrategy::Linear => (base * attempt as f64).min(max),
        BackoffStrategy::Fixed => base.min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_formulas_match_the_documentation() {
        assert_eq!(
            backoff_delay(BackoffStrategy::Linear, 3, 1.0, 60.0, 0.0),
            3.0
        );
        assert_eq!(
            backoff_delay(BackoffStrategy::Linear, 100, 1.0, 60.0, 0.0),
            60.0
        );
        assert_eq!(
            backoff_delay(BackoffStrategy::Fixed, 7, 2.0, 60.0, 0.9),
            2.0
        );
        assert_eq!(
            backoff_delay(BackoffStrategy::ExponentialJitter, 4, 1.0, 60.0, 1.0),
            8.0
        );
        assert_eq!(
            backoff_delay(BackoffStrategy::ExponentialJitter, 4, 1.0, 60.0, 0.0),
            4.0
        );
        assert_eq!(
            backoff_delay(BackoffStrategy::ExponentialJitter, 30, 1.0, 60.0, 1.0),
            60.0
        );
    }

    #[test]
    fn a_stored_spelling_the_enum_does_not_know_is_an_error_not_a_default() {
        use tokio_postgres::types::{FromSql, Type};
        assert_eq!(
            BackoffStrategy::from_sql(&Type::TEXT, b"linear").unwrap(),
            BackoffStrategy::Linear
        );
        let e = BackoffStrategy::from_sql(&Type::TEXT, b"sometimes").unwrap_err();
        assert!(e.to_string().contains("BackoffStrategy"), "{e}");
        assert!(Trigger::from_sql(&Type::TEXT, b"cron").is_err());
        assert!(WorkerState::from_sql(&Type::TEXT, b"sleeping").is_err());
        assert!(<Catchup as FromSql>::accepts(&Type::TEXT));
    }

    #[test]
    fn enums_round_trip_their_stored_spelling() {
        for s in TaskStatus::ALL {
            assert_eq!(s.as_str().parse::<TaskStatus>().unwrap(), *s);
        }
        assert!("high".parse::<Catchup>().is_err());
        assert_eq!("tasks:write".parse::<Scope>().unwrap(), Scope::TasksWrite);
    }
}
