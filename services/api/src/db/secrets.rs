//! Secrets at rest: sealed values, never selected by anything that answers a request.

use orrery::secrets::Sealed;
use tokio_postgres::{Error, Row};
use uuid::Uuid;

use super::Db;
use crate::models::SecretInfo;

const INFO: &str = "owner, name, key_id, created_at, updated_at";

fn info(r: &Row) -> SecretInfo {
    SecretInfo {
        owner: r.get("owner"),
        name: r.get("name"),
        key_id: r.get("key_id"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

/// Creates or replaces; returns the secret's metadata and whether it was created.
pub async fn put(
    c: &impl Db,
    owner: Uuid,
    name: &str,
    sealed: &Sealed,
) -> Result<(SecretInfo, bool), Error> {
    let st = c
        .prepare_cached(&format!(
            "INSERT INTO secret (owner, name, ciphertext, nonce, key_id) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (owner, name) DO UPDATE
                SET ciphertext = excluded.ciphertext, nonce = excluded.nonce, key_id = excluded.key_id,
                    updated_at = now()
             RETURNING {INFO}, (xmax = 0) AS created"
        ))
        .await?;
    let r = c
        .query_one(
            &st,
            &[
                &owner,
                &name,
                &sealed.ciphertext,
                &sealed.nonce,
                &sealed.key_id,
            ],
        )
        .await?;
    Ok((info(&r), r.get("created")))
}

pub async fn list(c: &impl Db, owner: Option<Uuid>) -> Result<Vec<SecretInfo>, Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {INFO} FROM secret WHERE ($1::uuid IS NULL OR owner = $1) ORDER BY owner, name LIMIT 10000"
        ))
        .await?;
    Ok(c.query(&st, &[&owner]).await?.iter().map(info).collect())
}

pub async fn get(c: &impl Db, owner: Uuid, name: &str) -> Result<Option<SecretInfo>, Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {INFO} FROM secret WHERE owner = $1 AND name = $2"
        ))
        .await?;
    Ok(c.query_opt(&st, &[&owner, &name]).await?.as_ref().map(info))
}

pub async fn delete(c: &impl Db, owner: Uuid, name: &str) -> Result<bool, Error> {
    let st = c
        .prepare_cached("DELETE FROM secret WHERE owner = $1 AND name = $2")
        .await?;
    Ok(c.execute(&st, &[&owner, &name]).await? == 1)
}

/// Rows sealed with another key than `current_id`, locked, for re-encryption.
pub async fn lock_stale(
    c: &impl Db,
    current_id: &str,
) -> Result<Vec<(Uuid, String, Sealed)>, Error> {
    let st = c
        .prepare_cached(
            "SELECT owner, name, ciphertext, nonce, key_id FROM secret WHERE key_id <> $1 FOR UPDATE",
        )
        .await?;
    Ok(c.query(&st, &[&current_id])
        .await?
        .iter()
        .map(|r| {
            (
                r.get("owner"),
                r.get("name"),
                Sealed {
                    ciphertext: r.get("ciphertext"),
                    nonce: r.get("nonce"),
                    key_id: r.get("key_id"),
                },
            )
        })
        .collect())
}

pub async fn replace_sealed(
    c: &impl Db,
    owner: Uuid,
    name: &str,
    sealed: &Sealed,
) -> Result<(), Error> {
    let st = c
        .prepare_cached(
            "UPDATE secret SET ciphertext = $3, nonce = $4, key_id = $5 WHERE owner = $1 AND name = $2",
        )
        .await?;
    c.execute(
        &st,
        &[
            &owner,
            &name,
            &sealed.ciphertext,
            &sealed.nonce,
            &sealed.key_id,
        ],
    )
    .await?;
    Ok(())
}
