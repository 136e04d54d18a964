//! The API's own SQL (agents, tokens, secrets, the audit log, events): small named functions. Statements on
//! tasks, runs, due work and queues are the store's (`orrery::store`).

pub mod agents;
pub mod audit;
pub mod secrets;

pub use deadpool_postgres::GenericClient as Db;
use serde_json::Value;
use tokio_postgres::Error;
use uuid::Uuid;

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
