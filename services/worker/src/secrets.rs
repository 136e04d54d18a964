//! The secrets a run reads: the task owner's, by the names its pipeline mentions, decrypted just before the run.

use deadpool_postgres::Pool;
use orrery::secrets::{Keyring, Sealed};
use uuid::Uuid;

use crate::executor::RunFailure;

/// What a runner needs to read secrets: the pool and the keys (`None` without ORRERY_SECRETS_KEY).
#[derive(Clone)]
pub struct SecretReader {
    pub pool: Pool,
    pub keyring: Option<Keyring>,
}

/// (name, value) of every secret in `names` for the owner of `task_id`. A missing secret, a missing key or one
/// that does not decrypt fails the run permanently (error kind `secret`), naming the secret, never its value.
pub async fn load(
    reader: &SecretReader,
    task_id: Uuid,
    names: &[String],
) -> Result<Vec<(String, String)>, RunFailure> {
    let Some(ring) = reader.keyring.as_ref() else {
        return Err(RunFailure::permanent(
            "secret",
            format!(
                "the pipeline reads secrets ({}) but this worker has no ORRERY_SECRETS_KEY",
                names.join(", ")
            ),
        ));
    };
    let client = reader.pool.get().await.map_err(|e| {
        RunFailure::retryable("database", format!("cannot read the run's secrets: {e}"))
    })?;
    let rows = client
        .query(
            "SELECT s.owner, s.name, s.ciphertext, s.nonce, s.key_id
               FROM secret s JOIN task t ON t.created_by = s.owner
              WHERE t.id = $1 AND s.name = ANY($2)",
            &[&task_id, &names],
        )
        .await
        .map_err(|e| {
            RunFailure::retryable("database", format!("cannot read the run's secrets: {e}"))
        })?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let owner: Uuid = r.get("owner");
        let name: String = r.get("name");
        let sealed = Sealed {
            ciphertext: r.get("ciphertext"),
            nonce: r.get("nonce"),
            key_id: r.get("key_id"),
        };
        let value = ring
            .open(owner, &name, &sealed)
            .map_err(|message| RunFailure::permanent("secret", message))?;
        out.push((name, value));
    }
    if let Some(missing) = names.iter().find(|n| !out.iter().any(|(m, _)| m == *n)) {
        return Err(RunFailure::permanent(
            "secret",
            format!("secret {missing} is not set for the agent that owns this task (PUT /secrets/{missing})"),
        ));
    }
    // Longest first, so a value containing another is redacted whole.
    out.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    Ok(out)
}
