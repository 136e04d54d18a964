//! Builds the HTTP server (bound at build time, so tests can use port 0) and runs it until stopped.

use std::time::Instant;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpResponse, HttpServer};

use orrery::runtime::Context;

use crate::auth::AuthCache;
use crate::error::ApiError;
use crate::input::BodyLimit;
use crate::routes::{
    agents, audit, events, health, jobs, queue, queues, runs, schedules, secrets, tasks,
};
use crate::state::AppState;

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Every route of the contract. Paths are registered without a trailing slash; the edge middleware serves
/// `/tasks/` as `/tasks` without a redirect.
pub fn routes(cfg: &mut web::ServiceConfig) {
    // Scopes keep routing cheap: a static prefix test first, then only that scope's patterns.
    cfg.service(
        web::scope("/health")
            .route("", web::get().to(health::health))
            .route("/live", web::get().to(health::live))
            .route("/ready", web::get().to(health::ready)),
    )
    .route("/metrics", web::get().to(health::metrics))
    .route("/openapi.json", web::get().to(crate::openapi::openapi_json))
    .service(
        web::scope("/tasks")
            .service(
                web::resource("")
                    .route(web::post().to(tasks::create))
                    .route(web::get().to(tasks::list)),
            )
            .service(
                web::resource("/{id}")
                    .route(web::get().to(tasks::get))
                    .route(web::patch().to(tasks::patch))
                    .route(web::put().to(tasks::put))
                    .route(web::delete().to(tasks::delete)),
            )
            .route("/{id}/pause", web::post().to(tasks::pause))
            .route("/{id}/resume", web::post().to(tasks::resume))
            .route("/{id}/cancel", web::post().to(tasks::cancel))
            .route("/{id}/run_now", web::post().to(tasks::run_now))
            .route("/{id}/snooze", web::post().to(tasks::snooze))
            .route("/{id}/backfill", web::post().to(tasks::backfill))
            .route("/{id}/schedule", web::get().to(tasks::schedule))
            .route("/{id}/runs/latest", web::get().to(runs::latest))
            .route("/{id}/runs/stats", web::get().to(runs::task_stats)),
    )
    .route("/schedules/preview", web::post().to(schedules::preview))
    .service(
        web::scope("/runs")
            .route("", web::get().to(runs::list))
            .route("/stats", web::get().to(runs::global_stats))
            .route("/{id}", web::get().to(runs::get)),
    )
    .service(
        web::scope("/agents")
            .service(
                web::resource("")
                    .route(web::post().to(agents::create))
                    .route(web::get().to(agents::list)),
            )
            .service(web::resource("/me").route(web::get().to(agents::me)))
            .service(
                web::resource("/{id}")
                    .route(web::get().to(agents::get))
                    .route(web::patch().to(agents::patch))
                    .route(web::delete().to(agents::delete)),
            )
            .service(
                web::resource("/{id}/tokens")
                    .route(web::get().to(agents::list_tokens))
                    .route(web::post().to(agents::create_token)),
            )
            .route(
                "/{id}/tokens/{token_id}",
                web::delete().to(agents::revoke_token),
            ),
    )
    .service(
        web::scope("/queue")
            .route("", web::get().to(queue::summary))
            .route("/dead", web::get().to(queue::dead))
            .route("/dead/{id}/replay", web::post().to(queue::replay))
            .route("/dead/{id}", web::delete().to(queue::delete_dead)),
    )
    .route("/queues", web::get().to(queues::list))
    .service(
        web::resource("/queues/{name}")
            .route(web::get().to(queues::get))
            .route(web::put().to(queues::put))
            .route(web::patch().to(queues::patch)),
    )
    .route("/workers", web::get().to(queue::workers))
    .service(
        web::scope("/jobs")
            .route("/claim", web::post().to(jobs::claim))
            .route("/{id}/heartbeat", web::post().to(jobs::heartbeat))
            .route("/{id}/complete", web::post().to(jobs::complete))
            .route("/{id}/fail", web::post().to(jobs::fail)),
    )
    .route("/audit", web::get().to(audit::list))
    .route("/secrets", web::get().to(secrets::list))
    .route("/secrets/reencrypt", web::post().to(secrets::reencrypt))
    .service(
        web::resource("/secrets/{name}")
            .route(web::put().to(secrets::put))
            .route(web::get().to(secrets::get))
            .route(web::delete().to(secrets::delete)),
    )
    .service(
        web::scope("/events")
            .route("", web::post().to(events::publish))
            .route("/recent", web::get().to(events::recent))
            .route("/topics", web::get().to(events::topics)),
    );
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().finish()
}

impl Application {
    pub fn build(ctx: Context) -> anyhow::Result<Self> {
        let workers = if ctx.settings.api_workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            ctx.settings.api_workers
        };
        let limit = ctx.settings.api_body_limit_bytes;
        let state = web::Data::new(AppState {
            pool: ctx.pool.clone(),
            redis: ctx.redis.clone(),
            auth: AuthCache::new(ctx.settings.admin_token()),
            settings: ctx.settings.clone(),
            readiness: ctx.readiness.clone(),
            started: Instant::now(),
            clock: ctx.clock.clone(),
            jobs_ready: tokio::sync::Notify::new(),
            stop: ctx.stop.clone(),
        });
        if state.settings.admin_token().is_none() {
            tracing::warn!("ORRERY_ADMIN_TOKEN is not set: the system agent cannot authenticate");
        }
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(limit))
                .app_data(BodyLimit(limit))
                .app_data(web::PathConfig::default().error_handler(|_, _| {
                    ApiError::field("id", "is not a valid identifier").into()
                }))
                .app_data(web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("the query string could not be parsed: {e}"))
                        .into()
                }))
                .configure(routes)
                .configure(crate::ui::routes)
                .default_service(web::to(not_found))
                .wrap(from_fn(crate::middleware::edge))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(3)
        .bind((ctx.settings.api_host.as_str(), ctx.settings.api_port))?;
        let port = server.addrs().first().map(|a| a.port()).unwrap_or(0);
        tracing::info!(port, workers, "api listening");
        Ok(Self {
            port,
            server: server.run(),
            stop: ctx.stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            orrery::shutdown::wait(stop).await;
            handle.stop(true).await;
        });
        self.server.await?;
        Ok(())
    }
}
