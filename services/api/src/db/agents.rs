//! Agents and their tokens.

use chrono::{DateTime, Utc};
use tokio_postgres::Error;
use uuid::Uuid;

use super::Db;
use crate::input::Page;
use crate::models::{Agent, Token, AGENT_COLUMNS};

pub struct TokenLookup {
    pub token_id: Uuid,
    pub agent_id: Uuid,
    pub scopes: Vec<String>,
    pub last_used_at: Option<DateTime<Utc>>,
}

pub async fn token_by_hash(c: &impl Db, hash: &[u8]) -> Result<Option<TokenLookup>, Error> {
    let st = c
        .prepare_cached(
            "SELECT t.id, t.agent_id, a.scopes, t.last_used_at
               FROM agent_token t JOIN agent a ON a.id = t.agent_id
              WHERE t.token_hash = $1 AND t.revoked_at IS NULL
                AND (t.expires_at IS NULL OR t.expires_at > now())",
        )
        .await?;
    Ok(c.query_opt(&st, &[&hash]).await?.map(|r| TokenLookup {
        token_id: r.get("id"),
        agent_id: r.get("agent_id"),
        scopes: r.get("scopes"),
        last_used_at: r.get("last_used_at"),
    }))
}

/// Records a use of the token, at most once a minute whatever the number of replicas.
pub async fn touch_token(c: &impl Db, token_id: Uuid) -> Result<(), Error> {
    let st = c
        .prepare_cached(
            "UPDATE agent_token SET last_used_at = now()
              WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .await?;
    c.execute(&st, &[&token_id]).await?;
    Ok(())
}

pub async fn insert_agent(
    c: &impl Db,
    name: &str,
    scopes: &[String],
    webhook_url: Option<&str>,
) -> Result<Agent, Error> {
    let st = c
        .prepare_cached(&format!(
            "INSERT INTO agent (name, scopes, webhook_url) VALUES ($1, $2, $3) RETURNING {AGENT_COLUMNS}"
        ))
        .await?;
    let row = c.query_one(&st, &[&name, &scopes, &webhook_url]).await?;
    Ok(Agent::from_row(&row))
}

pub async fn insert_token(
    c: &impl Db,
    agent_id: Uuid,
    hash: &[u8],
    expires_at: Option<DateTime<Utc>>,
) -> Result<Token, Error> {
    let st = c
        .prepare_cached(
            "INSERT INTO agent_token (agent_id, token_hash, expires_at) VALUES ($1, $2, $3)
             RETURNING id, agent_id, created_at, last_used_at, expires_at",
        )
        .await?;
    let r = c.query_one(&st, &[&agent_id, &hash, &expires_at]).await?;
    Ok(token_from_row(&r))
}

fn token_from_row(r: &tokio_postgres::Row) -> Token {
    Token {
        id: r.get("id"),
        agent_id: r.get("agent_id"),
        created_at: r.get("created_at"),
        last_used_at: r.get("last_used_at"),
        expires_at: r.get("expires_at"),
    }
}

pub async fn list_agents(c: &impl Db, page: Page) -> Result<(Vec<Agent>, i64), Error> {
    let st = c
        .prepare_cached(&format!(
            "SELECT {AGENT_COLUMNS} FROM agent ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
        ))
        .await?;
    let rows = c.query(&st, &[&page.limit, &page.offset]).await?;
    let count = c.prepare_cached("SELECT count(*) FROM agent").await?;
    let total: i64 = c.query_one(&count, &[]).await?.get(0);
    Ok((rows.iter().map(Agent::from_row).collect(), total))
}

pub async fn get_agent(c: &impl Db, id: Uuid, for_update: bool) -> Result<Option<Agent>, Error> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let st = c
        .prepare_cached(&format!(
            "SELECT {AGENT_COLUMNS} FROM agent WHERE id = $1{lock}"
        ))
        .await?;
    Ok(c.query_opt(&st, &[&id])
        .await?
        .as_ref()
        .map(Agent::from_row))
}

pub async fn update_agent(
    c: &impl Db,
    id: Uuid,
    name: &str,
    scopes: &[String],
    webhook_url: Option<&str>,
) -> Result<Agent, Error> {
    let st = c
        .prepare_cached(&format!(
            "UPDATE agent SET name = $2, scopes = $3, webhook_url = $4, updated_at = now()
              WHERE id = $1 RETURNING {AGENT_COLUMNS}"
        ))
        .await?;
    let row = c
        .query_one(&st, &[&id, &name, &scopes, &webhook_url])
        .await?;
    Ok(Agent::from_row(&row))
}

pub async fn owned_task_count(c: &impl Db, id: Uuid) -> Result<i64, Error> {
    let st = c
        .prepare_cached("SELECT count(*) FROM task WHERE created_by = $1")
        .await?;
    Ok(c.query_one(&st, &[&id]).await?.get(0))
}

/// Deletes the agent; its tokens go with it (ON DELETE CASCADE).
pub async fn delete_agent(c: &impl Db, id: Uuid) -> Result<u64, Error> {
    let st = c.prepare_cached("DELETE FROM agent WHERE id = $1").await?;
    c.execute(&st, &[&id]).await
}

/// The agent's tokens that are not revoked, newest first.
pub async fn list_tokens(c: &impl Db, agent_id: Uuid) -> Result<Vec<Token>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id, agent_id, created_at, last_used_at, expires_at FROM agent_token
              WHERE agent_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, id DESC",
        )
        .await?;
    Ok(c.query(&st, &[&agent_id])
        .await?
        .iter()
        .map(token_from_row)
        .collect())
}

/// Revokes a token of the agent; false when the agent has no such token. Revoking twice is harmless.
pub async fn revoke_token(c: &impl Db, agent_id: Uuid, token_id: Uuid) -> Result<bool, Error> {
    let st = c
        .prepare_cached(
            "UPDATE agent_token SET revoked_at = coalesce(revoked_at, now())
              WHERE id = $1 AND agent_id = $2",
        )
        .await?;
    Ok(c.execute(&st, &[&token_id, &agent_id]).await? > 0)
}

pub async fn agent_exists(c: &impl Db, id: Uuid) -> Result<bool, Error> {
    let st = c
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM agent WHERE id = $1)")
        .await?;
    Ok(c.query_one(&st, &[&id]).await?.get(0))
}
