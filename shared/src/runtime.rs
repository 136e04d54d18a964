//! The shared start-up of the three binaries: settings (exit 2 on error) → telemetry → pool → migrations in
//! the background (under an advisory lock, retried while PostgreSQL is down) → internal health listener →
//! the service body, until SIGTERM/SIGINT.

use std::future::Future;

use deadpool_postgres::Pool;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Settings;
use crate::health::Readiness;
use crate::streams::Redis;

pub struct Context {
    pub settings: Settings,
    pub pool: Pool,
    pub redis: Redis,
    pub readiness: Readiness,
    /// Flips to true on SIGTERM / SIGINT.
    pub stop: watch::Receiver<bool>,
    /// Where every component reads time (the database's now in production; tests may put a manual clock here).
    pub clock: Clock,
}

/// Which internal health port a component listens on (the API serves health on its own port).
pub enum HealthPort {
    None,
    Scheduler,
    Worker,
}

/// Runs a binary: handles `healthcheck`, configuration errors (exit 2), and returns the process exit code.
pub fn main<F, Fut>(component: &'static str, health: HealthPort, body: F) -> i32
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{component}: {e}");
            return 2;
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = match health {
        HealthPort::None => settings.api_port,
        HealthPort::Scheduler => settings.scheduler_health_port,
        HealthPort::Worker => settings.worker_health_port,
    };
    match args.first().map(String::as_str) {
        None | Some("serve") => {}
        Some("healthcheck") => return crate::health::healthcheck_exit_code(port),
        Some("--version") | Some("version") => {
            println!("{component} {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Some(other) => {
            eprintln!(
                "{component}: unknown command {other:?} (expected: serve, healthcheck, version)"
            );
            return 2;
        }
    }
    crate::telemetry::init(component, &settings.log_level);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{component}: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(async move {
        let (_tx, stop) = crate::shutdown::listen();
        let ctx = build_context(component, settings, stop)?;
        let internal = match health {
            HealthPort::None => None,
            HealthPort::Scheduler | HealthPort::Worker => {
                let (server, bound) =
                    crate::health::serve_internal(ctx.readiness.clone(), "0.0.0.0", port)
                        .map_err(|e| anyhow::anyhow!("cannot bind the health port {port}: {e}"))?;
                tracing::info!(port = bound, "health listener started");
                let handle = server.handle();
                tokio::spawn(server);
                Some(handle)
            }
        };
        let outcome = body(ctx).await;
        if let Some(h) = internal {
            h.stop(false).await;
        }
        outcome
    });
    // Do not wait for stray blocking tasks: shutdown must finish within seconds.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            0
        }
        Err(e) => {
            tracing::error!(error = ?e, "fatal error");
            eprintln!("{component}: {e:#}");
            1
        }
    }
}

/// Pool, Redis handle, readiness, and the background migration loop.
pub fn build_context(
    component: &'static str,
    settings: Settings,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Context> {
    use secrecy::ExposeSecret;
    let db_url = settings.database_url.expose_secret().to_string();
    let pool = crate::db::build_pool(&db_url, settings.database_pool_size)?;
    let redis = Redis::new(
        settings.redis_url.expose_secret(),
        &settings.redis_key_prefix,
    )?;
    let readiness = Readiness::new(pool.clone(), component);
    tracing::info!(
        database = %crate::config::redact_url(&db_url),
        redis = %crate::config::redact_url(settings.redis_url.expose_secret()),
        "starting"
    );
    {
        let readiness = readiness.clone();
        let stop = stop.clone();
        tokio::spawn(
            async move { crate::db::migrate_until_ready(&db_url, &readiness, stop).await },
        );
    }
    Ok(Context {
        settings,
        pool,
        redis,
        readiness,
        stop,
        clock: Clock::Database,
    })
}
