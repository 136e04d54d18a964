//! Worker processes dying, stopping and outliving their leases.

mod common;

use std::time::Duration;

use common::*;
use orrery_testing::{redis_prefix, wait_for, PrivateRedis, TestDb};
use serde_json::json;

fn sleeper(seconds: f64) -> TaskSpec {
    TaskSpec {
        pipeline: json!([{"id": "nap", "uses": "sleep", "with": {"seconds": seconds}}]),
        ..TaskSpec::default()
    }
}

#[tokio::test]
async fn a_row_of_a_killed_worker_is_completed_by_another_after_its_lease_expires() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, sleeper(1.0)).await;
    let id = insert_work(&c, task, WorkSpec::default()).await;
    let env = [
        ("WORKER_LEASE_SECONDS", "2"),
        ("WORKER_POLL_INTERVAL", "0.1"),
    ];
    let mut doomed = start_worker(&db, &prefix, &env).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the row to be leased",
        "SELECT count(*) FROM due_work WHERE locked_by IS NOT NULL AND attempt = 1",
        1,
    )
    .await;
    doomed.kill().await;
    let _survivor = start_worker(&db, &prefix, &env).await;
    wait_count(
        &c,
        "the row to complete",
        "SELECT count(*) FROM task_run WHERE success",
        1,
    )
    .await;
    let runs = runs(&c).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].attempt, 1);
    assert_eq!(runs[0].error_kind.as_deref(), Some("lease_expired"));
    assert!(!runs[0].success);
    assert_eq!(runs[1].attempt, 2, "attempt numbering continues");
    assert_eq!(runs[1].trigger, "retry");
    assert!(runs[1].success);
    assert_ne!(runs[0].worker_id, runs[1].worker_id);
    assert_eq!(runs[1].due_work_id, Some(id));
    assert_eq!(count(&c, "SELECT count(*) FROM due_work").await, 0);
}

#[tokio::test]
async fn a_run_longer_than_its_lease_is_never_run_twice_concurrently() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, sleeper(4.0)).await;
    insert_work(&c, task, WorkSpec::default()).await;
    let env = [
        ("WORKER_LEASE_SECONDS", "1"),
        ("WORKER_POLL_INTERVAL", "0.05"),
    ];
    let mut a = start_worker(&db, &prefix, &env).await;
    let mut b = start_worker(&db, &prefix, &env).await;
    hint(&prefix).await;
    wait_count(&c, "the run", "SELECT count(*) FROM task_run", 1).await;
    // A duplicate, if any, started while the first ran: both workers finish their runs before they exit.
    for w in [&mut a, &mut b] {
        let (code, _) = w.terminate(Duration::from_secs(30)).await;
        assert_eq!(code, Some(0), "{}", w.log_text());
    }
    let runs = runs(&c).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].success);
    assert_eq!(runs[0].attempt, 1);
    let took = runs[0].finished_at - runs[0].started_at.unwrap();
    assert!(took >= chrono::Duration::milliseconds(3900), "{took:?}");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_runs_releases_the_rest_and_loses_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, sleeper(0.6)).await;
    insert_many(&c, task, 20).await;
    // A prefetch of 8 beyond the two runners, so that there are claimed rows that never started to release.
    let env = [
        ("WORKER_CONCURRENCY", "2"),
        ("WORKER_BATCH_SIZE", "10"),
        ("WORKER_PREFETCH", "8"),
    ];
    let mut first = start_worker(&db, &prefix, &env).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "runs in flight",
        "SELECT count(*) FROM due_work WHERE locked_by IS NOT NULL",
        3,
    )
    .await;
    let (code, took) = first.terminate(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "log:\n{}", first.log_text());
    assert!(took < Duration::from_secs(5), "{took:?}");
    let done = count(&c, "SELECT count(*) FROM task_run").await;
    assert!(done >= 2, "in-flight runs finished: {done}");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM due_work WHERE locked_by IS NOT NULL OR attempt <> 0"
        )
        .await,
        0,
        "unstarted rows are released with their attempt given back"
    );
    let state: String = c
        .query_one("SELECT state FROM worker_heartbeat", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "stopped");
    let _second = start_worker(&db, &prefix, &[("WORKER_CONCURRENCY", "8")]).await;
    hint(&prefix).await;
    wait_count(&c, "all 20 runs", "SELECT count(*) FROM task_run", 20).await;
    let runs = runs(&c).await;
    assert_eq!(runs.len(), 20);
    assert!(runs.iter().all(|r| r.success && r.attempt == 1), "{runs:?}");
}

#[tokio::test]
async fn runs_still_going_at_the_end_of_the_grace_period_are_rescheduled() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, sleeper(30.0)).await;
    let id = insert_work(&c, task, WorkSpec::default()).await;
    let mut w = start_worker(&db, &prefix, &[("WORKER_SHUTDOWN_GRACE_SECONDS", "1")]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the run in flight",
        "SELECT count(*) FROM due_work WHERE locked_by IS NOT NULL",
        1,
    )
    .await;
    let (code, took) = w.terminate(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(4), "{took:?}");
    let r = runs(&c).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].error_kind.as_deref(), Some("shutdown"));
    let row = c
        .query_one(
            "SELECT state, attempt, locked_by FROM due_work WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(row.get::<_, Option<String>>(2), None);
}

#[tokio::test]
async fn an_idle_worker_stops_within_five_seconds_and_reports_its_heartbeat() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let mut w = start_worker(&db, &prefix, &[]).await;
    let row = wait_for("a heartbeat row", WAIT, || async {
        c.query_opt(
            "SELECT worker_id, pid, state, in_flight FROM worker_heartbeat",
            &[],
        )
        .await
        .unwrap()
    })
    .await;
    let worker_id: String = row.get(0);
    assert_eq!(row.get::<_, i32>(1), w.pid());
    assert!(worker_id.contains(&format!("-{}-", w.pid())), "{worker_id}");
    assert_eq!(row.get::<_, String>(2), "running");
    let (code, took) = w.terminate(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5), "{took:?}");
    let state: String = c
        .query_one("SELECT state FROM worker_heartbeat", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "stopped");
}

#[tokio::test]
async fn work_is_picked_up_by_polling_when_no_hint_arrives() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, TaskSpec::default()).await;
    let _w = start_worker(&db, &prefix, &[]).await;
    // Due in 1.5 s: the worker learns the instant from its next-wake query once it looks (at most 5 s).
    insert_work(
        &c,
        task,
        WorkSpec {
            run_at_offset: 1.5,
            ..WorkSpec::default()
        },
    )
    .await;
    wait_count(&c, "the run", "SELECT count(*) FROM task_run", 1).await;
    let r = runs(&c).await;
    assert!(r[0].success);
}

#[tokio::test]
async fn a_future_row_starts_at_its_ready_at_not_before() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, TaskSpec::default()).await;
    let _w = start_worker(&db, &prefix, &[]).await;
    let id = insert_work(
        &c,
        task,
        WorkSpec {
            run_at_offset: 1.0,
            ..WorkSpec::default()
        },
    )
    .await;
    hint(&prefix).await;
    wait_count(&c, "the run", "SELECT count(*) FROM task_run", 1).await;
    let r = runs(&c).await;
    let run_at: chrono::DateTime<chrono::Utc> = c
        .query_one(
            "SELECT scheduled_for FROM task_run WHERE due_work_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let late = r[0].started_at.unwrap() - run_at;
    assert!(late >= chrono::Duration::zero(), "started early: {late:?}");
    assert!(
        late < chrono::Duration::milliseconds(500),
        "started late: {late:?}"
    );
}

#[tokio::test]
async fn a_row_whose_last_allowed_attempt_lost_its_lease_goes_dead_instead_of_looping() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(
        &c,
        TaskSpec {
            max_retries: 0,
            ..TaskSpec::default()
        },
    )
    .await;
    let id = insert_work(&c, task, WorkSpec::default()).await;
    // As a worker that crashed during attempt 1 leaves it.
    c.execute(
        "UPDATE due_work SET attempt = 1, locked_by = 'ghost-1-abc', locked_until = now() - interval '1 second',
                             fencing_token = 7 WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let _w = start_worker(&db, &prefix, &[]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the row to go dead",
        "SELECT count(*) FROM due_work WHERE state = 'dead'",
        1,
    )
    .await;
    let r = runs(&c).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].error_kind.as_deref(), Some("lease_expired"));
    assert_eq!(r[0].worker_id.as_deref(), Some("ghost-1-abc"));
    assert_eq!(r[0].attempt, 1);
    let row = c
        .query_one(
            "SELECT last_error_kind, locked_by FROM due_work WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("lease_expired")
    );
    assert_eq!(row.get::<_, Option<String>>(1), None);
}

#[tokio::test]
async fn slow_work_is_spread_over_idle_workers_instead_of_queued_behind_one() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, sleeper(1.5)).await;
    // Two idle workers with four runners each, default batch size: eight slow rows fit both at once.
    let env = [("WORKER_CONCURRENCY", "4"), ("WORKER_POLL_INTERVAL", "0.1")];
    let _a = start_worker(&db, &prefix, &env).await;
    let _b = start_worker(&db, &prefix, &env).await;
    insert_many(&c, task, 8).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "eight runs",
        "SELECT count(*) FROM task_run WHERE success",
        8,
    )
    .await;
    let runs = runs(&c).await;
    assert_eq!(runs.len(), 8, "{runs:?}");
    let workers: std::collections::HashSet<_> =
        runs.iter().map(|r| r.worker_id.clone().unwrap()).collect();
    assert_eq!(
        workers.len(),
        2,
        "one worker took rows it could not start while the other stayed idle: {runs:?}"
    );
    let starts: Vec<_> = runs.iter().map(|r| r.started_at.unwrap()).collect();
    let spread = *starts.iter().max().unwrap() - *starts.iter().min().unwrap();
    assert!(
        spread < chrono::Duration::milliseconds(1000),
        "all eight 1.5 s runs should start together on the two workers, started over {spread:?}"
    );
}

/// A client of the private cluster's `orrery` database (a new one after each restart).
async fn connect_to(pg: &orrery_testing::PrivatePostgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url("orrery"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn a_postgresql_crash_under_running_work_loses_nothing_and_runs_nothing_twice() {
    let pg = orrery_testing::PrivatePostgres::start();
    pg.create_database("orrery").await;
    let prefix = redis_prefix();
    let env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), pg.url("orrery")),
        ("REDIS_URL".into(), orrery_testing::redis_url()),
        ("REDIS_KEY_PREFIX".into(), prefix.clone()),
        ("WORKER_POLL_INTERVAL".into(), "0.1".into()),
        ("DATABASE_POOL_SIZE".into(), "4".into()),
    ];
    let worker =
        orrery_testing::Service::start("orrery-worker", orrery_testing::free_port(), &env).await;
    worker.wait_ready(WAIT).await;
    let connect = || connect_to(&pg);
    let c = connect().await;
    let task = insert_task(&c, sleeper(1.0)).await;
    insert_many(&c, task, 4).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "four runs in flight",
        "SELECT count(*) FROM due_work WHERE locked_by IS NOT NULL",
        4,
    )
    .await;
    // A crash (immediate stop: no shutdown checkpoint, asynchronous commits may be lost) while the four runs
    // sleep, then PostgreSQL comes back.
    pg.stop_server();
    pg.start_server();
    let c = connect().await;
    insert_many(&c, task, 4).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "eight successful runs",
        "SELECT count(*) FROM task_run WHERE success",
        8,
    )
    .await;
    wait_count(&c, "an empty queue", "SELECT 8 - count(*) FROM due_work", 8).await;
    let per_row: Vec<(i64, i64)> = c
        .query(
            "SELECT due_work_id, count(*) FROM task_run WHERE success GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(per_row.len(), 8, "{per_row:?}");
    assert!(
        per_row.iter().all(|(_, n)| *n == 1),
        "a row succeeded twice: {per_row:?}"
    );
    assert_eq!(
        worker.get("/health/ready").await.map(|r| r.0),
        Some(200),
        "ready again"
    );
}

/// The chaos suite once found a row with two successful runs after a PostgreSQL crash: a claim committed
/// asynchronously was lost together with the WAL record that advanced `due_work_fencing`, the sequence handed the
/// same tokens to the same rows again, and the worker that still held the lost claim ran the row a second time
/// and sent both completions in one batch, each of which recorded a run. Here the crash is made to lose the claim
/// for certain (no WAL writer, no background writer, nothing else committing), and then: the next claim must
/// hand out new tokens, a completion with a lost token must be refused even when it shares a batch with the
/// current one, and a batch holding the same completion twice must record one run.
/// (id, fencing token) of up to 8 rows claimed on `client`, by id.
async fn claim_all(client: &deadpool_postgres::Object) -> Vec<(i64, i64)> {
    let mut rows: Vec<(i64, i64)> =
        orrery::queue::claim_batch(client, "w", 30.0, 8, None, None, false, true)
            .await
            .unwrap()
            .claimed
            .iter()
            .map(|w| (w.id, w.fencing_token))
            .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn a_claim_lost_in_a_crash_never_lends_its_fencing_tokens_to_the_next_claim() {
    use orrery::queue::{self, Completion, Settlement};
    let pg = orrery_testing::PrivatePostgres::start();
    pg.create_database("orrery").await;
    orrery::db::migrate(&pg.url("orrery")).await.unwrap();
    let connect = || connect_to(&pg);
    let c = connect().await;
    for sql in [
        "ALTER SYSTEM SET wal_writer_delay = '10s'",
        "ALTER SYSTEM SET bgwriter_lru_maxpages = 0",
        "ALTER SYSTEM SET autovacuum = off",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    let task = insert_task(&c, sleeper(0.0)).await;
    insert_many(&c, task, 8).await;
    let pooled = || async {
        let pool = orrery::db::build_pool(&pg.url("orrery"), 1).unwrap();
        pool.get().await.unwrap()
    };
    let claimer = pooled().await;
    queue::start_claim_session(&claimer).await.unwrap();
    // After a checkpoint the first nextval writes a new WAL record for the sequence: the one the crash loses.
    c.batch_execute("CHECKPOINT").await.unwrap();
    let lost = claim_all(&claimer).await;
    assert_eq!(lost.len(), 8);
    drop(claimer);
    pg.stop_server();
    pg.start_server();
    let c = connect().await;
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM due_work WHERE locked_by IS NULL AND attempt = 0"
        )
        .await,
        8,
        "the crash was to lose the asynchronous claim (the test's WAL settings did not hold)"
    );
    let claimer = pooled().await;
    queue::start_claim_session(&claimer).await.unwrap();
    let again = claim_all(&claimer).await;
    assert_eq!(again.len(), 8);
    for ((id, old), (id2, new)) in lost.iter().zip(again.iter()) {
        assert_eq!(id, id2);
        assert_ne!(
            old, new,
            "row {id} was claimed again with the token of its lost claim"
        );
    }
    let done = |id: i64, fencing_token: i64| Completion {
        id,
        fencing_token,
        settlement: Settlement::Succeeded,
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
        error: None,
        error_kind: None,
        output: None,
    };
    let mut batch = Vec::new();
    for ((id, old), (_, new)) in lost.iter().zip(again.iter()) {
        batch.push(done(*id, *old));
        batch.push(done(*id, *new));
        batch.push(done(*id, *new));
    }
    let outcome = queue::complete_batch(&pooled().await, "w", &batch, None)
        .await
        .unwrap();
    let mut accepted = outcome.accepted.clone();
    accepted.sort();
    assert_eq!(
        accepted, again,
        "only the current tokens are accepted, once each"
    );
    let per_row: Vec<(i64, i64)> = c
        .query(
            "SELECT due_work_id, count(*) FROM task_run WHERE success GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        per_row,
        again.iter().map(|(id, _)| (*id, 1)).collect::<Vec<_>>(),
        "one successful run per row"
    );
}

#[tokio::test]
async fn with_redis_restarted_underneath_work_runs_by_polling_and_run_events_resume() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let mut redis = PrivateRedis::start();
    let task = insert_task(&c, TaskSpec::default()).await;
    let _w = start_worker(
        &db,
        &prefix,
        &[
            ("REDIS_URL", redis.url().as_str()),
            ("WORKER_POLL_INTERVAL", "0.2"),
        ],
    )
    .await;
    insert_work(&c, task, WorkSpec::default()).await;
    hint_at(&redis.url(), &prefix).await;
    wait_count(&c, "the first run", "SELECT count(*) FROM task_run", 1).await;
    wait_run_events(&redis, &prefix, 2).await;

    // Redis gone: no hint can be sent, the worker polls every WORKER_POLL_INTERVAL (0.2 s). With Redis taken
    // for up it would sleep up to its 5 s idle cap, past this 3 s bound.
    redis.stop_server();
    for _ in 0..3 {
        insert_work(&c, task, WorkSpec::default()).await;
    }
    wait_for(
        "runs by polling while Redis is down",
        Duration::from_secs(3),
        || async { (count(&c, "SELECT count(*) FROM task_run").await == 4).then_some(()) },
    )
    .await;

    // Redis back (empty: it keeps nothing on disk): the worker reconnects and its run events reach it again.
    redis.start_server();
    insert_work(&c, task, WorkSpec::default()).await;
    wait_count(
        &c,
        "the run after Redis returned",
        "SELECT count(*) FROM task_run",
        5,
    )
    .await;
    wait_run_events(&redis, &prefix, 1).await;
    let r = runs(&c).await;
    assert_eq!(r.len(), 5);
    assert!(r.iter().all(|r| r.success && r.attempt == 1), "{r:?}");
    assert_eq!(
        count(&c, "SELECT count(*) FROM due_work").await,
        0,
        "every row completed"
    );
}

/// Waits until `orrery:runs` on `redis` holds at least `n` entries.
async fn wait_run_events(redis: &PrivateRedis, prefix: &str, n: i64) {
    let key = format!("{prefix}orrery:runs");
    wait_for("run events on orrery:runs", WAIT, || async {
        let client = redis::Client::open(redis.url()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let len: i64 = redis::cmd("XLEN")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .ok()?;
        (len >= n).then_some(())
    })
    .await;
}
