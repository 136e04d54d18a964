//! Bearer-token authentication and scopes.
//!
//! Tokens are `orr_` + 64 hex characters (32 random bytes), stored only as their SHA-256 digest (a password
//! hash would slow every request and buys nothing for 256 random bits). The system agent authenticates with
//! the configured `ORRERY_ADMIN_TOKEN`, which is rotated through configuration, never through the API.
//!
//! A small in-process cache keeps a verified token for at most [`CACHE_TTL`]. Revoking a token or deleting an
//! agent clears this replica's cache at once; another API replica may still accept the token for up to
//! [`CACHE_TTL`] (the cross-replica window).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures::future::LocalBoxFuture;
use orrery::model::{Scope, SYSTEM_AGENT_ID};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub const CACHE_TTL: Duration = Duration::from_secs(2);
const LAST_USED_INTERVAL_SECONDS: i64 = 60;
const TOKEN_PREFIX: &str = "orr_";

/// The authenticated agent behind a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub agent_id: Uuid,
    pub scopes: Vec<Scope>,
    /// None for the configured admin token.
    pub token_id: Option<Uuid>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// 403 naming the missing scope unless the caller holds it (admin holds every scope).
    pub fn require(&self, scope: Scope) -> ApiResult<()> {
        if self.is_admin() || self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token lacks the scope {scope}"
            )))
        }
    }

    /// The owner every query must be restricted to: None for admins (they see everything).
    pub fn owner_filter(&self) -> Option<Uuid> {
        (!self.is_admin()).then_some(self.agent_id)
    }

    /// Whether this caller may see a task created by `owner`.
    pub fn may_see(&self, owner: Uuid) -> bool {
        self.is_admin() || owner == self.agent_id
    }
}

/// A freshly generated token: the secret (shown once) and its digest (stored).
pub struct NewToken {
    pub secret: String,
    pub hash: Vec<u8>,
}

pub fn generate_token() -> NewToken {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hash = digest(&secret).to_vec();
    NewToken { secret, hash }
}

pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

struct Entry {
    caller: Caller,
    fetched: Instant,
}

/// Verified tokens for a short while, by digest.
pub struct AuthCache {
    admin_hash: Option<[u8; 32]>,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl AuthCache {
    pub fn new(admin_token: Option<&str>) -> Self {
        Self {
            admin_hash: admin_token.map(digest),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Caller> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(hash)
            .filter(|e| e.fetched.elapsed() < CACHE_TTL)
            .map(|e| e.caller.clone())
    }

    fn put(&self, hash: [u8; 32], caller: Caller) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() > 10_000 {
                entries.retain(|_, e| e.fetched.elapsed() < CACHE_TTL);
            }
            entries.insert(
                hash,
                Entry {
                    caller,
                    fetched: Instant::now(),
                },
            );
        }
    }

    /// Forgets every cached token of an agent (scopes changed, agent deleted).
    pub fn invalidate_agent(&self, agent_id: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, e| e.caller.agent_id != agent_id);
        }
    }

    /// Forgets one token (revoked).
    pub fn invalidate_token(&self, token_id: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, e| e.caller.token_id != Some(token_id));
        }
    }
}

fn bearer(req: &HttpRequest) -> ApiResult<String> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized("missing Authorization: Bearer <token> header".into())
        })?;
    let text = header
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not valid text".into()))?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("expected Authorization: Bearer <token>".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    Ok(token.trim().to_string())
}

async fn authenticate(state: &AppState, token: &str) -> ApiResult<Caller> {
    let hash = digest(token);
    if state.auth.admin_hash.is_some_and(|admin| admin == hash) {
        return Ok(Caller {
            agent_id: SYSTEM_AGENT_ID,
            scopes: vec![Scope::Admin],
            token_id: None,
        });
    }
    let invalid = || ApiError::Unauthorized("invalid or revoked token".into());
    let plausible = token.len() == TOKEN_PREFIX.len() + 64
        && token.starts_with(TOKEN_PREFIX)
        && token[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit());
    if !plausible {
        return Err(invalid());
    }
    if let Some(caller) = state.auth.get(&hash) {
        return Ok(caller);
    }
    let client = state.db().await?;
    let found = crate::db::agents::token_by_hash(&client, &hash).await?;
    let Some(found) = found else {
        return Err(invalid());
    };
    let caller = Caller {
        agent_id: found.agent_id,
        scopes: found
            .scopes
            .iter()
            .filter_map(|s| s.parse::<Scope>().ok())
            .collect(),
        token_id: Some(found.token_id),
    };
    let stale = found
        .last_used_at
        .is_none_or(|t| (state.clock.now() - t).num_seconds() >= LAST_USED_INTERVAL_SECONDS);
    if stale {
        // Bookkeeping only: never delay or fail the request for it.
        let pool = state.pool.clone();
        let token_id = found.token_id;
        tokio::spawn(async move {
            if let Ok(client) = pool.get().await {
                let _ = crate::db::agents::touch_token(&client, token_id).await;
            }
        });
    }
    state.auth.put(hash, caller.clone());
    Ok(caller)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer(req);
        Box::pin(async move {
            let token = token?;
            let state = state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no app state")))?;
            authenticate(&state, &token).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_hex_of_32_random_bytes_and_stored_as_their_digest() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 4 + 64);
        assert!(a.secret.starts_with("orr_"));
        assert!(a.secret[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.hash, digest(&a.secret).to_vec());
        assert_eq!(a.hash.len(), 32);
    }

    #[test]
    fn a_missing_scope_is_named_and_admin_passes_every_check() {
        let reader = Caller {
            agent_id: Uuid::new_v4(),
            scopes: vec![Scope::TasksRead],
            token_id: None,
        };
        assert!(reader.require(Scope::TasksRead).is_ok());
        let err = reader.require(Scope::TasksWrite).unwrap_err();
        assert!(err.to_string().contains("tasks:write"), "{err}");
        assert_eq!(reader.owner_filter(), Some(reader.agent_id));
        let admin = Caller {
            agent_id: SYSTEM_AGENT_ID,
            scopes: vec![Scope::Admin],
            token_id: None,
        };
        for s in [Scope::TasksWrite, Scope::RunsRead, Scope::EventsPublish] {
            assert!(admin.require(s).is_ok());
        }
        assert_eq!(admin.owner_filter(), None);
    }
}
