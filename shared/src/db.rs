//! PostgreSQL pool, embedded migrations applied under an advisory lock, and readiness.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Arbitrary constant shared by every Orrery binary: "orrery" in ASCII.
const MIGRATION_LOCK_KEY: i64 = 0x6f72_7265_7279;

pub fn build_pool(database_url: &str, size: usize) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config = database_url.parse()?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    pg.keepalives(true);
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()?;
    Ok(pool)
}

/// Applies pending migrations. Replicas starting at the same instant serialize on a session advisory lock,
/// so exactly one applies them and the others find them applied.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls).await?;
    let handle = tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = embedded::migrations::runner()
        .set_abort_divergent(true)
        // An older binary meeting a newer schema (rolling upgrade) keeps running.
        .set_abort_missing(false)
        .run_async(&mut client)
        .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    drop(client);
    handle.abort();
    result?;
    Ok(())
}

/// The number of migrations this binary embeds (readiness requires all of them applied).
pub fn embedded_migration_count() -> usize {
    embedded::migrations::runner().get_migrations().len()
}

/// True when PostgreSQL answers and every embedded migration is applied.
pub async fn is_ready(pool: &Pool) -> bool {
    let check = async {
        let client = pool.get().await.ok()?;
        let row = client
            .query_opt("SELECT count(*) FROM refinery_schema_history", &[])
            .await
            .ok()??;
        let applied: i64 = row.get(0);
        Some(applied as usize >= embedded_migration_count())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Some(true))
    )
}

/// Keeps trying to migrate with capped exponential backoff until it succeeds or `stop` fires.
pub async fn migrate_until_ready(
    database_url: &str,
    ready: &crate::health::Readiness,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match migrate(database_url).await {
            Ok(()) => {
                ready.set_migrated();
                tracing::info!("database migrations applied");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not ready; retrying migrations");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
