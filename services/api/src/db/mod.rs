//! The API's own SQL (agents, tokens, secrets, the audit log, events): small named functions. Statements on
//! tasks, runs, due work and queues are the store's (`orrery::store`).

pub mod agents;
pub mod audit;
pub mod secrets;

use chrono::{DateTime, Utc};
pub use deadpool_postgres::GenericClient as Db;
use serde_json::Value;
use tokio_postgres::Error;
use uuid::Uuid;

/// Now on the injected clock: the database's (inside a transaction: the transaction's start), or a test's manual instant.
pub async fn now(c: &impl Db, clock: &orrery::clock::Clock) -> Result<DateTime<Utc>, Error> {
    let st = c
        .prepare_cached("SELECT coalesce($1::timestamptz, now())")
        .await?;
    Ok(c.query_one(&st, &[&clock.param()]).await?.get(0))
}

/// One audit record; call it inside the mutation's transaction.
pub async fn audit(
    c: &impl Db,
    actor: Uuid,
    action: &str,
    subject_type: &str,
    subject_id: &str,
    details: &Value,
) -> Result<(), Error> {
    let st = c
        .prepare_cached(
            "INSERT INTO audit_log (actor, action, subject_type, subject_id, details) VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    c.execute(&st, &[&actor, &action, &subject_type, &subject_id, details])
        .await?;
    Ok(())
}
