//! The audit log as admins read it: newest first, keyset-paginated on id.

use chrono::{DateTime, Utc};
use tokio_postgres::Error;
use uuid::Uuid;

use super::Db;
use crate::models::AuditEntry;

pub struct AuditFilter {
    pub actor: Option<Uuid>,
    /// Exact action (`task.pause`), or a prefix when it ends in `*` (`task.*`).
    pub action: Option<String>,
    pub subject_type: Option<String>,
    /// The subject's id as recorded (a task or agent UUID, a due_work id).
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Keyset cursor: entries with an id below this one.
    pub before: Option<i64>,
}

/// Up to `limit` entries, newest first.
pub async fn list(c: &impl Db, f: &AuditFilter, limit: i64) -> Result<Vec<AuditEntry>, Error> {
    let (action_exact, action_prefix) = match f.action.as_deref() {
        Some(a) if a.ends_with('*') => (None, Some(a.trim_end_matches('*').to_string())),
        Some(a) => (Some(a.to_string()), None),
        None => (None, None),
    };
    let st = c
        .prepare_cached(
            "SELECT l.id, l.actor, a.name, l.action, l.subject_type, l.subject_id, l.details, l.created_at
               FROM audit_log l LEFT JOIN agent a ON a.id = l.actor
              WHERE ($1::uuid IS NULL OR l.actor = $1)
                AND ($2::text IS NULL OR l.action = $2)
                AND ($3::text IS NULL OR starts_with(l.action, $3))
                AND ($4::text IS NULL OR l.subject_type = $4)
                AND ($5::text IS NULL OR l.subject_id = $5)
                AND ($6::timestamptz IS NULL OR l.created_at >= $6)
                AND ($7::timestamptz IS NULL OR l.created_at < $7)
                AND ($8::bigint IS NULL OR l.id < $8)
              ORDER BY l.id DESC
              LIMIT $9",
        )
        .await?;
    let rows = c
        .query(
            &st,
            &[
                &f.actor,
                &action_exact,
                &action_prefix,
                &f.subject_type,
                &f.target,
                &f.since,
                &f.until,
                &f.before,
                &limit,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get("id"),
            actor: r.get("actor"),
            actor_name: r.get("name"),
            action: r.get("action"),
            subject_type: r.get("subject_type"),
            subject_id: r.get("subject_id"),
            details: r.get("details"),
            created_at: r.get("created_at"),
        })
        .collect())
}
