//! /health/live, /health/ready, /health and /metrics (unauthenticated).

use orrery::store;
use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, ErrorEnvelope};
use crate::state::AppState;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Live {
    /// Always "alive".
    pub status: String,
    pub component: String,
    /// Seconds since the process started.
    pub uptime_seconds: f64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Always "ready" (503 otherwise).
    pub status: String,
    pub component: String,
}

#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct Check {
    /// up, down, or degraded.
    pub status: String,
    pub message: String,
    pub latency_ms: Option<f64>,
}

#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct Checks {
    pub database: Check,
    pub redis: Check,
    pub scheduler: Check,
    pub workers: Check,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct HealthReport {
    /// healthy, degraded or unhealthy (503).
    pub status: String,
    pub checks: Checks,
    pub uptime_seconds: f64,
    pub version: String,
}

#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Live)))]
pub async fn live(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Live {
        status: "alive".into(),
        component: "orrery-api".into(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
    })
}

#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = Ready), (status = 503, body = ErrorEnvelope)))]
pub async fn ready(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    if state.readiness.is_ready().await {
        Ok(HttpResponse::Ok().json(Ready {
            status: "ready".into(),
            component: "orrery-api".into(),
        }))
    } else {
        Err(ApiError::Unavailable(
            "PostgreSQL is unreachable or migrations are not applied".into(),
        ))
    }
}

fn check(up: bool, message: impl Into<String>, latency: Option<f64>) -> Check {
    Check {
        status: if up { "up" } else { "down" }.into(),
        message: message.into(),
        latency_ms: latency,
    }
}

#[utoipa::path(get, path = "/health", tag = "health",
    description = "healthy; degraded (200) when Redis is down or no scheduler/worker is alive; unhealthy (503) when PostgreSQL is down.",
    responses((status = 200, body = HealthReport), (status = 503, body = ErrorEnvelope)))]
pub async fn health(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let started = Instant::now();
    let db_result = async {
        let client = state.db().await?;
        store::backlog::ping(&client).await?;
        let db_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (schedulers, workers) = store::backlog::liveness(&client).await?;
        Ok::<_, ApiError>((db_ms, schedulers, workers))
    };
    let redis_started = Instant::now();
    let (db_result, redis_up) = futures::join!(
        tokio::time::timeout(std::time::Duration::from_secs(3), db_result),
        state.redis.ping()
    );
    let redis_ms = redis_started.elapsed().as_secs_f64() * 1000.0;
    let redis = check(
        redis_up,
        if redis_up {
            "PING answered"
        } else {
            "Redis does not answer"
        },
        redis_up.then_some(redis_ms),
    );
    let report = match db_result {
        Ok(Ok((db_ms, schedulers, workers))) => {
            let checks = Checks {
                database: check(true, "SELECT 1 answered", Some(db_ms)),
                redis,
                scheduler: check(
                    schedulers > 0,
                    format!("{schedulers} scheduler(s) seen in the last 30 s"),
                    None,
                ),
                workers: check(workers > 0, format!("{workers} worker(s) alive"), None),
            };
            let degraded = !redis_up || schedulers == 0 || workers == 0;
            HealthReport {
                status: if degraded { "degraded" } else { "healthy" }.into(),
                checks,
                uptime_seconds: state.started.elapsed().as_secs_f64(),
                version: env!("CARGO_PKG_VERSION").into(),
            }
        }
        _ => {
            let unknown = |what: &str| {
                check(
                    false,
                    format!("unknown: {what} is recorded in the database"),
                    None,
                )
            };
            let report = HealthReport {
                status: "unhealthy".into(),
                checks: Checks {
                    database: check(false, "PostgreSQL does not answer", None),
                    redis,
                    scheduler: unknown("the scheduler heartbeat"),
                    workers: unknown("the worker heartbeat"),
                },
                uptime_seconds: state.started.elapsed().as_secs_f64(),
                version: env!("CARGO_PKG_VERSION").into(),
            };
            return Err(ApiError::Unhealthy(Box::new(json!(report))));
        }
    };
    Ok(HttpResponse::Ok().json(report))
}

/// Seconds between two refreshes of the queue-depth gauges, whatever the scrape rate.
pub const QUEUE_DEPTH_REFRESH_SECONDS: u64 = 10;

static LAST_DEPTH_REFRESH: std::sync::Mutex<Option<std::time::Instant>> =
    std::sync::Mutex::new(None);

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // A scrape never waits for a query: the queue-depth gauges (a count over due_work) are refreshed in the
    // background at most every QUEUE_DEPTH_REFRESH_SECONDS per replica, and the scrape shows the last values.
    let due = {
        let mut last = LAST_DEPTH_REFRESH.lock().expect("refresh lock");
        let due = last.is_none_or(|t| t.elapsed().as_secs() >= QUEUE_DEPTH_REFRESH_SECONDS);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    };
    if due {
        let state = state.clone();
        tokio::spawn(async move {
            let refresh = async {
                let client = state.db().await.ok()?;
                let summary = store::backlog::summary(&client).await.ok()?;
                Some((summary, store::queues::list(&client).await.ok()))
            };
            if let Ok(Some((s, named))) =
                tokio::time::timeout(std::time::Duration::from_secs(5), refresh).await
            {
                for q in named.unwrap_or_default() {
                    let name = q.name.as_str();
                    let g = &orrery::metrics::NAMED_QUEUE;
                    g.with_label_values(&[name, "ready"]).set(q.ready);
                    g.with_label_values(&[name, "scheduled"]).set(q.scheduled);
                    g.with_label_values(&[name, "running"]).set(q.running);
                    g.with_label_values(&[name, "paused"]).set(q.paused as i64);
                    g.with_label_values(&[name, "finished_last_minute"])
                        .set(q.finished_last_minute);
                    orrery::metrics::NAMED_QUEUE_LAG
                        .with_label_values(&[name])
                        .set(q.lag_seconds.unwrap_or(0.0));
                }
                let g = &orrery::metrics::QUEUE_DEPTH;
                g.with_label_values(&["ready"]).set(s.ready);
                g.with_label_values(&["scheduled"]).set(s.scheduled);
                g.with_label_values(&["leased"]).set(s.leased);
                g.with_label_values(&["dead"]).set(s.dead);
            }
        });
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(orrery::metrics::render())
}
