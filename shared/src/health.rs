//! Liveness, readiness and metrics endpoints shared by all binaries, and the `healthcheck` subcommand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use deadpool_postgres::Pool;
use serde_json::json;

/// What `/health/ready` needs: the pool and whether this process has seen the migrations applied.
#[derive(Clone)]
pub struct Readiness {
    migrated: Arc<AtomicBool>,
    pub pool: Pool,
    pub started: Instant,
    pub component: &'static str,
}

impl Readiness {
    pub fn new(pool: Pool, component: &'static str) -> Self {
        Self {
            migrated: Arc::new(AtomicBool::new(false)),
            pool,
            started: Instant::now(),
            component,
        }
    }

    pub fn set_migrated(&self) {
        self.migrated.store(true, Ordering::SeqCst);
    }

    pub fn migrated(&self) -> bool {
        self.migrated.load(Ordering::SeqCst)
    }

    pub async fn is_ready(&self) -> bool {
        self.migrated() && crate::db::is_ready(&self.pool).await
    }
}

pub async fn live(r: web::Data<Readiness>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "alive",
        "component": r.component,
        "uptime_seconds": r.started.elapsed().as_secs_f64(),
    }))
}

pub async fn ready(r: web::Data<Readiness>) -> HttpResponse {
    if r.is_ready().await {
        HttpResponse::Ok().json(json!({"status": "ready", "component": r.component}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({
            "error": "unavailable",
            "message": "PostgreSQL is unreachable or migrations are not applied",
            "details": null,
            "status": "not_ready",
            "component": r.component,
        }))
    }
}

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

/// Routes for the internal listener of the scheduler and the worker.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health/live", web::get().to(live))
        .route("/health/live/", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/health/ready/", web::get().to(ready))
        .route("/metrics", web::get().to(metrics))
        .route("/metrics/", web::get().to(metrics));
}

/// Binds the internal health listener; returns the server and the bound port.
pub fn serve_internal(
    readiness: Readiness,
    host: &str,
    port: u16,
) -> std::io::Result<(actix_web::dev::Server, u16)> {
    let data = web::Data::new(readiness);
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .configure(configure)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind((host, port))?;
    let bound = server.addrs().first().map(|a| a.port()).unwrap_or(port);
    Ok((server.run(), bound))
}

/// The `healthcheck` subcommand: exit 0 only when `GET /health/ready` on our own port answers 200.
pub fn healthcheck_exit_code(port: u16) -> i32 {
    use std::io::{Read, Write};
    let attempt = || -> std::io::Result<bool> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(
            b"GET /health/ready HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf)?;
        let head = String::from_utf8_lossy(&buf);
        Ok(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"))
    };
    match attempt() {
        Ok(true) => 0,
        _ => 1,
    }
}
