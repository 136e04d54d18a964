//! Foundation behaviour of all three binaries: configuration errors, concurrent start-up on an empty
//! database, readiness following PostgreSQL, and clean shutdown.

use std::time::Duration;

use orrery_testing::{
    base_database_url, free_port, redis_prefix, redis_url, with_database, PrivatePostgres, Service,
    TestDb,
};

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

const BINARIES: [&str; 3] = ["orrery-api", "orrery-scheduler", "orrery-worker"];

#[tokio::test]
async fn an_invalid_variable_stops_each_binary_with_exit_code_2_and_one_line_naming_it() {
    for bin in BINARIES {
        let out = tokio::process::Command::new(orrery_testing::binary_path(bin))
            .env_clear()
            .env("WORKER_LEASE_SECONDS", "soon")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bin}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{bin} printed: {stderr}");
        assert!(lines[0].contains("WORKER_LEASE_SECONDS"), "{bin}: {stderr}");
    }
    let out = tokio::process::Command::new(orrery_testing::binary_path("orrery-api"))
        .env_clear()
        .env("DATABASE_URL", "mysql:/nope nope")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

#[tokio::test]
async fn the_schema_rejects_invalid_rows() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let system = orrery::model::SYSTEM_AGENT_ID;
    let insert = |prio: i16, kind: &'static str, expr: &'static str| {
        format!(
            "INSERT INTO task (title, created_by, schedule_kind, schedule_expr, priority)
             VALUES ('t', '{system}', '{kind}', '{expr}', {prio}) RETURNING id"
        )
    };
    let err = c
        .query_one(&insert(0, "cron", "* * * * *"), &[])
        .await
        .unwrap_err();
    assert!(db_message(&err).contains("check constraint"), "{err:?}");
    let err = c.query_one(&insert(5, "cron", ""), &[]).await.unwrap_err();
    assert!(db_message(&err).contains("check constraint"), "{err:?}");
    let err = c
        .query_one(&insert(5, "weekly", "x"), &[])
        .await
        .unwrap_err();
    assert!(db_message(&err).contains("check constraint"), "{err:?}");
    let id: uuid::Uuid = c
        .query_one(&insert(5, "cron", "* * * * *"), &[])
        .await
        .unwrap()
        .get(0);
    let due = "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
               VALUES ($1, '2030-01-01T00:00:00Z', '2030-01-01T00:00:00Z', 5, 'schedule')";
    c.execute(due, &[&id]).await.unwrap();
    let err = c.execute(due, &[&id]).await.unwrap_err();
    assert!(db_message(&err).contains("duplicate key"), "{err:?}");
    let system_agent = c
        .query_one("SELECT scopes FROM agent WHERE id = $1", &[&system])
        .await
        .unwrap();
    assert_eq!(
        system_agent.get::<_, Vec<String>>(0),
        vec!["admin".to_string()]
    );
}

#[tokio::test]
async fn three_binaries_started_at_once_on_an_empty_database_all_come_up() {
    // An empty database (not the migrated template): they race to migrate it.
    let name = format!("orrery_test_{}", uuid::Uuid::new_v4().simple());
    let (admin, conn) = tokio_postgres::connect(
        &with_database(&base_database_url(), "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .execute(&format!("CREATE DATABASE {name}"), &[])
        .await
        .unwrap();
    let url = with_database(&base_database_url(), &name);
    let prefix = redis_prefix();
    let env = vec![
        ("DATABASE_URL".to_string(), url.clone()),
        ("REDIS_URL".to_string(), redis_url()),
        ("REDIS_KEY_PREFIX".to_string(), prefix),
        ("DATABASE_POOL_SIZE".to_string(), "3".to_string()),
    ];
    let mut services = Vec::new();
    for bin in BINARIES {
        services.push(Service::start(bin, free_port(), &env).await);
    }
    for s in &services {
        s.wait_ready(Duration::from_secs(30)).await;
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let applied: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied as usize, orrery::db::embedded_migration_count());
    for mut s in services {
        let (code, elapsed) = s.terminate(Duration::from_secs(10)).await;
        assert_eq!(code, Some(0), "{} exit code", s.name);
        assert!(
            elapsed < Duration::from_secs(5),
            "{} took {elapsed:?}",
            s.name
        );
    }
    drop(client);
    admin
        .execute(&format!("DROP DATABASE {name} WITH (FORCE)"), &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn sigterm_and_sigint_stop_each_binary_with_exit_code_0_within_5_seconds() {
    let db = TestDb::new().await;
    let env = orrery_testing::base_env(&db, &redis_prefix());
    for (bin, signal) in [
        ("orrery-api", 15),
        ("orrery-scheduler", 2),
        ("orrery-worker", 15),
    ] {
        let mut s = Service::start(bin, free_port(), &env).await;
        s.wait_ready(Duration::from_secs(20)).await;
        let started = std::time::Instant::now();
        s.signal(signal);
        let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
            .await
            .expect("exits")
            .unwrap();
        assert_eq!(status.code(), Some(0), "{bin} after signal {signal}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{bin} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn readiness_follows_postgresql_going_away_and_coming_back() {
    let pg = PrivatePostgres::start();
    pg.create_database("orrery").await;
    let env = vec![
        ("DATABASE_URL".to_string(), pg.url("orrery")),
        ("REDIS_URL".to_string(), redis_url()),
        ("REDIS_KEY_PREFIX".to_string(), redis_prefix()),
    ];
    let mut s = Service::start("orrery-scheduler", free_port(), &env).await;
    s.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(s.get("/health/live").await.map(|r| r.0), Some(200));

    pg.stop_server();
    orrery_testing::wait_for(
        "readiness 503 with PostgreSQL stopped",
        Duration::from_secs(20),
        || async { matches!(s.get("/health/ready").await, Some((503, _))).then_some(()) },
    )
    .await;
    assert_eq!(
        s.get("/health/live").await.map(|r| r.0),
        Some(200),
        "liveness does not depend on the database"
    );
    let hc = std::process::Command::new(orrery_testing::binary_path("orrery-scheduler"))
        .arg("healthcheck")
        .env("SCHEDULER_HEALTH_PORT", s.health_port.to_string())
        .status()
        .unwrap();
    assert_eq!(hc.code(), Some(1), "healthcheck fails while not ready");

    pg.start_server();
    s.wait_ready(Duration::from_secs(30)).await;
    let hc = std::process::Command::new(orrery_testing::binary_path("orrery-scheduler"))
        .arg("healthcheck")
        .env("SCHEDULER_HEALTH_PORT", s.health_port.to_string())
        .status()
        .unwrap();
    assert_eq!(hc.code(), Some(0), "healthcheck passes once ready again");
    let (code, _) = s.terminate(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn a_binary_starts_while_postgresql_is_down_and_becomes_ready_when_it_appears() {
    let pg = PrivatePostgres::start();
    pg.create_database("orrery").await;
    pg.stop_server();
    let env = vec![
        ("DATABASE_URL".to_string(), pg.url("orrery")),
        ("REDIS_URL".to_string(), "redis://127.0.0.1:1".to_string()),
    ];
    let s = Service::start("orrery-worker", free_port(), &env).await;
    orrery_testing::wait_for(
        "live while PostgreSQL is down",
        Duration::from_secs(20),
        || async { matches!(s.get("/health/live").await, Some((200, _))).then_some(()) },
    )
    .await;
    assert_eq!(s.get("/health/ready").await.map(|r| r.0), Some(503));
    pg.start_server();
    s.wait_ready(Duration::from_secs(30)).await;
}
