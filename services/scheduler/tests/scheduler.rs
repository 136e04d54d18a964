//! The scheduler against real PostgreSQL and Redis, as real processes (and in-process with a controllable
//! clock for long horizons).

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use orrery::clock::Clock;
use orrery_scheduler::materializer::Materializer;
use orrery_testing::{
    base_env, free_port, redis_prefix, redis_url, wait_for, PrivateRedis, Service, TestDb,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

async fn insert_task(c: &tokio_postgres::Client, kind: &str, expr: &str, extra: &str) -> Uuid {
    let sql = format!(
        "INSERT INTO task (title, created_by, schedule_kind, schedule_expr, timezone, materialized_until{})
         VALUES ('t', $1, $2, $3, 'UTC', now(){}) RETURNING id",
        if extra.is_empty() { "" } else { ", catchup, misfire_grace_seconds" },
        if extra.is_empty() { String::new() } else { format!(", {extra}") },
    );
    c.query_one(&sql, &[&orrery::model::SYSTEM_AGENT_ID, &kind, &expr])
        .await
        .unwrap()
        .get(0)
}

async fn run_ats(c: &tokio_postgres::Client, task: Uuid) -> Vec<DateTime<Utc>> {
    c.query(
        "SELECT run_at FROM due_work WHERE task_id = $1 ORDER BY run_at",
        &[&task],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn status(c: &tokio_postgres::Client, task: Uuid) -> String {
    c.query_one("SELECT status FROM task WHERE id = $1", &[&task])
        .await
        .unwrap()
        .get(0)
}

async fn db_now(c: &tokio_postgres::Client) -> DateTime<Utc> {
    c.query_one("SELECT now()", &[]).await.unwrap().get(0)
}

async fn start_scheduler(db: &TestDb, prefix: &str, extra: &[(&str, &str)]) -> Service {
    let mut env = base_env(db, prefix);
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    let s = Service::start("orrery-scheduler", free_port(), &env).await;
    s.wait_ready(WAIT).await;
    s
}

#[tokio::test]
async fn a_once_task_gets_exactly_one_row_at_its_nominal_instant_before_it_is_due_then_completes() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let _s = start_scheduler(&db, &prefix, &[]).await;
    let fire = (db_now(&c).await + chrono::Duration::seconds(3)).trunc_subsecs(0);
    let task = insert_task(&c, "once", &fire.to_rfc3339(), "").await;
    let rows = wait_for("the once fire to be materialized", WAIT, || async {
        let r = run_ats(&c, task).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(rows, vec![fire], "run_at is the nominal instant");
    let created: DateTime<Utc> = c
        .query_one(
            "SELECT created_at FROM due_work WHERE task_id = $1",
            &[&task],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        created < fire,
        "materialized before it is due ({created} vs {fire})"
    );
    // The worker's part: run it (here: remove the row). The task then has nothing left and completes.
    c.execute("DELETE FROM due_work WHERE task_id = $1", &[&task])
        .await
        .unwrap();
    wait_for("the once task to complete", WAIT, || async {
        (status(&c, task).await == "completed").then_some(())
    })
    .await;
    assert!(
        run_ats(&c, task).await.is_empty(),
        "never materialized twice"
    );
}

#[tokio::test]
async fn count_exhaustion_completes_an_rrule_task_after_its_last_run() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let start = (db_now(&c).await - chrono::Duration::seconds(5)).trunc_subsecs(0);
    let expr = format!(
        "DTSTART:{}\nRRULE:FREQ=MINUTELY;COUNT=2",
        start.format("%Y%m%dT%H%M%SZ")
    );
    // The cursor sits before DTSTART, as for a task created a moment ago.
    let task = insert_task(&c, "rrule", &expr, "").await;
    c.execute(
        "UPDATE task SET materialized_until = $2 WHERE id = $1",
        &[&task, &(start - chrono::Duration::seconds(1))],
    )
    .await
    .unwrap();
    let _s = start_scheduler(
        &db,
        &redis_prefix(),
        &[("SCHEDULER_LOOKAHEAD_SECONDS", "120")],
    )
    .await;
    let rows = wait_for("both fires", WAIT, || async {
        let r = run_ats(&c, task).await;
        (r.len() == 2).then_some(r)
    })
    .await;
    assert_eq!(rows, vec![start, start + chrono::Duration::minutes(1)]);
    assert_eq!(
        status(&c, task).await,
        "active",
        "not completed while its work is pending"
    );
    c.execute("DELETE FROM due_work WHERE task_id = $1", &[&task])
        .await
        .unwrap();
    wait_for("completion", WAIT, || async {
        (status(&c, task).await == "completed").then_some(())
    })
    .await;
}

/// Every task must hold exactly the minute boundaries after its cursor, up to where it was materialized.
async fn assert_every_minute_exactly_once(
    c: &tokio_postgres::Client,
    tasks: &[(Uuid, DateTime<Utc>)],
) {
    for (task, cursor) in tasks {
        let rows = run_ats(c, *task).await;
        let until: DateTime<Utc> = c
            .query_one("SELECT materialized_until FROM task WHERE id = $1", &[task])
            .await
            .unwrap()
            .get(0);
        let schedule = orrery::schedule::Schedule::parse(
            orrery::schedule::ScheduleKind::Cron,
            "* * * * *",
            chrono_tz::UTC,
            *cursor,
        )
        .unwrap();
        let mut expected = Vec::new();
        let mut t = *cursor;
        while let Some(f) = schedule.next_fire_after(t) {
            if f > until {
                break;
            }
            expected.push(f);
            t = f;
        }
        assert_eq!(rows, expected, "task {task}: duplicates or gaps");
    }
}

#[tokio::test]
async fn three_schedulers_materialize_every_fire_exactly_once_even_when_one_is_killed() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let expr = if i % 2 == 0 {
            "* * * * *"
        } else {
            "*/1 * * * *"
        };
        let id = insert_task(&c, "cron", expr, "").await;
        let cursor: DateTime<Utc> = c
            .query_one("SELECT materialized_until FROM task WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        tasks.push((id, cursor));
    }
    let extra = [
        ("SCHEDULER_LOOKAHEAD_SECONDS", "600"),
        ("SCHEDULER_BATCH_SIZE", "7"),
    ];
    let mut a = start_scheduler(&db, &prefix, &extra).await;
    let _b = start_scheduler(&db, &prefix, &extra).await;
    let _c2 = start_scheduler(&db, &prefix, &extra).await;
    // Kill one while the work is under way, then bring a replacement.
    wait_for("some progress", WAIT, || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM due_work", &[])
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    a.kill().await;
    let _d = start_scheduler(&db, &prefix, &extra).await;
    wait_for("every task materialized", Duration::from_secs(60), || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM task WHERE next_fire_at IS NULL OR next_fire_at <= now() + interval '540 seconds'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
    assert_every_minute_exactly_once(&c, &tasks).await;
    let total: i64 = c
        .query_one("SELECT count(*) FROM due_work", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        total >= 300 * 9,
        "about ten fires per task in ten minutes, got {total}"
    );
}

#[tokio::test]
async fn edits_pauses_resumes_and_cancels_take_effect_within_a_second() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let redis = orrery::streams::Redis::new(&redis_url(), &prefix).unwrap();
    let _s = start_scheduler(&db, &prefix, &[("SCHEDULER_LOOKAHEAD_SECONDS", "300")]).await;
    let task = insert_task(&c, "cron", "0 0 1 1 *", "").await;
    let announce = |action: &'static str| {
        let redis = redis.clone();
        async move {
            redis
                .xadd(
                    orrery::streams::TASK_CHANGES,
                    None,
                    &[("task_id", task.to_string()), ("action", action.into())],
                )
                .await
                .unwrap();
        }
    };
    wait_for("the yearly task to be looked at", WAIT, || async {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM task WHERE id = $1 AND next_fire_at IS NOT NULL",
                &[&task],
            )
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    assert!(run_ats(&c, task).await.is_empty());

    // Edit, the way the API does it: new expression, cursor reset to now, announcement after commit.
    c.execute(
        "UPDATE task SET schedule_expr = '* * * * *', materialized_until = now(), schedule_anchor = now() WHERE id = $1",
        &[&task],
    )
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    announce("updated").await;
    wait_for(
        "the edit to materialize",
        Duration::from_secs(2),
        || async { (!run_ats(&c, task).await.is_empty()).then_some(()) },
    )
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "edit took {:?}",
        t0.elapsed()
    );

    // Pause: the API removes the unleased work in the same transaction; the scheduler must not re-add it.
    c.execute("UPDATE task SET status = 'paused' WHERE id = $1", &[&task])
        .await
        .unwrap();
    c.execute("DELETE FROM due_work WHERE task_id = $1", &[&task])
        .await
        .unwrap();
    announce("paused").await;
    _s.scheduler_full_pass(WAIT).await; // asserting that nothing happens
    assert!(
        run_ats(&c, task).await.is_empty(),
        "a paused task gets no work"
    );

    // Resume: from now, no burst of the paused period.
    let resumed_at = db_now(&c).await;
    c.execute(
        "UPDATE task SET status = 'active', materialized_until = now() WHERE id = $1",
        &[&task],
    )
    .await
    .unwrap();
    let t0 = std::time::Instant::now();
    announce("resumed").await;
    let rows = wait_for("resumed work", Duration::from_secs(2), || async {
        let r = run_ats(&c, task).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "resume took {:?}",
        t0.elapsed()
    );
    assert!(
        rows.iter().all(|r| *r > resumed_at),
        "no fire from the paused period"
    );

    c.execute(
        "UPDATE task SET status = 'canceled' WHERE id = $1",
        &[&task],
    )
    .await
    .unwrap();
    c.execute("DELETE FROM due_work WHERE task_id = $1", &[&task])
        .await
        .unwrap();
    announce("canceled").await;
    _s.scheduler_full_pass(WAIT).await; // asserting that nothing happens
    assert!(run_ats(&c, task).await.is_empty());
    assert_eq!(status(&c, task).await, "canceled");
}

async fn catchup_rows(policy: &str) -> (usize, i64, Vec<DateTime<Utc>>) {
    let db = TestDb::new().await;
    let c = db.client().await;
    let created: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let task = insert_task(&c, "cron", "*/10 * * * *", &format!("'{policy}', 60")).await;
    c.execute(
        "UPDATE task SET materialized_until = $2 WHERE id = $1",
        &[&task, &created],
    )
    .await
    .unwrap();
    // The scheduler was down for a day and comes back at 2026-01-02 00:00:30.
    let clock = Clock::manual("2026-01-02T00:00:30Z".parse().unwrap());
    let m = Materializer::new(db.pool(), clock, chrono::Duration::seconds(60), 100);
    let stats = m.catch_up().await.unwrap();
    let misfires: i64 = c
        .query_one(
            "SELECT count(*) FROM task_run WHERE task_id = $1 AND error_kind = 'misfired'",
            &[&task],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stats.misfires as i64 >= misfires);
    (stats.misfires, misfires, run_ats(&c, task).await)
}

#[tokio::test]
async fn after_an_outage_skip_runs_only_fires_inside_the_grace_window() {
    let (skipped, recorded, rows) = catchup_rows("skip").await;
    let midnight: DateTime<Utc> = "2026-01-02T00:00:00Z".parse().unwrap();
    assert_eq!(
        rows,
        vec![midnight],
        "only the fire 30 s ago is inside the 60 s window"
    );
    assert_eq!(skipped, 143);
    assert_eq!(
        recorded, 100,
        "at most 100 misfire records per task per catch-up"
    );
}

#[tokio::test]
async fn after_an_outage_latest_runs_the_newest_overdue_fire_once() {
    let (skipped, _, rows) = catchup_rows("latest").await;
    let newest_overdue: DateTime<Utc> = "2026-01-01T23:50:00Z".parse().unwrap();
    let midnight: DateTime<Utc> = "2026-01-02T00:00:00Z".parse().unwrap();
    assert_eq!(rows, vec![newest_overdue, midnight]);
    assert_eq!(skipped, 142);
}

#[tokio::test]
async fn after_an_outage_all_runs_at_most_one_hundred_overdue_fires() {
    let (skipped, _, rows) = catchup_rows("all").await;
    assert_eq!(rows.len(), 101, "100 overdue + the one inside the window");
    assert_eq!(skipped, 43);
    assert_eq!(
        *rows.last().unwrap(),
        "2026-01-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
}

async fn event_rows(c: &tokio_postgres::Client, task: Uuid) -> Vec<(String, serde_json::Value)> {
    c.query(
        "SELECT event_id, event FROM due_work WHERE task_id = $1 AND trigger = 'event' ORDER BY id",
        &[&task],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn publish(
    redis: &orrery::streams::Redis,
    topic: &str,
    payload: serde_json::Value,
) -> String {
    let event_id = Uuid::new_v4().to_string();
    redis
        .xadd(
            orrery::streams::EVENTS,
            None,
            &[
                ("event_id", event_id.clone()),
                ("topic", topic.into()),
                ("payload", payload.to_string()),
                ("published_by", orrery::model::SYSTEM_AGENT_ID.to_string()),
                ("published_at", Utc::now().to_rfc3339()),
            ],
        )
        .await
        .unwrap();
    event_id
}

#[tokio::test]
async fn a_published_event_reaches_every_matching_task_once_with_its_payload() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let redis = orrery::streams::Redis::new(&redis_url(), &prefix).unwrap();
    let wildcard = insert_task(&c, "event", "email.*", "").await;
    let exact = insert_task(&c, "event", "email.sent", "").await;
    let other = insert_task(&c, "event", "billing.*", "").await;
    let _s = start_scheduler(&db, &prefix, &[]).await;
    let event_id = publish(&redis, "email.sent", serde_json::json!({"user": "ada"})).await;
    for task in [wildcard, exact] {
        let rows = wait_for("event work", WAIT, || async {
            let r = event_rows(&c, task).await;
            (!r.is_empty()).then_some(r)
        })
        .await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, event_id);
        assert_eq!(rows[0].1["payload"]["user"], "ada");
        assert_eq!(rows[0].1["topic"], "email.sent");
    }
    assert!(event_rows(&c, other).await.is_empty());
    // At most once per (task, event), even when the entry is delivered again after its work already ran.
    c.execute("DELETE FROM due_work", &[]).await.unwrap();
    let ev = orrery_scheduler::events::Event {
        stream_id: "0-1".into(),
        event_id: event_id.clone(),
        topic: "email.sent".into(),
        payload: serde_json::json!({}),
        published_at: None,
    };
    let created = orrery_scheduler::events::deliver(&db.pool(), &[ev], &Clock::Database)
        .await
        .unwrap();
    assert_eq!(created, 0);
}

#[tokio::test]
async fn entries_left_pending_by_a_dead_scheduler_are_reclaimed_after_restart() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let redis = orrery::streams::Redis::new(&redis_url(), &prefix).unwrap();
    let task = insert_task(&c, "event", "orders.created", "").await;
    let mut conn = redis.conn().await.unwrap();
    let stream = redis.key(orrery::streams::EVENTS);
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(orrery_scheduler::events::GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let event_id = publish(&redis, "orders.created", serde_json::json!({"order": 7})).await;
    // A scheduler read it and died before acknowledging.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(orrery_scheduler::events::GROUP)
        .arg("dead-scheduler")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _s = start_scheduler(&db, &prefix, &[("SCHEDULER_EVENT_RECLAIM_MS", "300")]).await;
    let rows = wait_for("the reclaimed event's work", WAIT, || async {
        let r = event_rows(&c, task).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(rows[0].0, event_id);
    assert_eq!(rows[0].1["payload"]["order"], 7);
    let pending: redis::Value = wait_for("the entry to be acknowledged", WAIT, || {
        let mut conn = conn.clone();
        let stream = stream.clone();
        async move {
            let v: redis::Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(orrery_scheduler::events::GROUP)
                .query_async(&mut conn)
                .await
                .ok()?;
            match &v {
                redis::Value::Array(items) if items.first() == Some(&redis::Value::Int(0)) => {
                    Some(v)
                }
                _ => None,
            }
        }
    })
    .await;
    let _ = pending;
}

#[tokio::test]
async fn with_redis_down_time_based_scheduling_continues_and_events_resume_when_it_returns() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut private = PrivateRedis::start();
    let prefix = redis_prefix();
    let event_task = insert_task(&c, "event", "sensor.*", "").await;
    let mut env = base_env(&db, &prefix);
    env.retain(|(k, _)| k != "REDIS_URL");
    env.push(("REDIS_URL".into(), private.url()));
    let s = Service::start("orrery-scheduler", free_port(), &env).await;
    s.wait_ready(WAIT).await;
    private.stop_server();

    let fire = (db_now(&c).await + chrono::Duration::seconds(2)).trunc_subsecs(0);
    let task = insert_task(&c, "once", &fire.to_rfc3339(), "").await;
    let rows = wait_for("time-based work without Redis", WAIT, || async {
        let r = run_ats(&c, task).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(rows, vec![fire]);
    assert_eq!(
        s.get("/health/ready").await.map(|r| r.0),
        Some(200),
        "ready without Redis"
    );

    private.start_server();
    let redis = orrery::streams::Redis::new(&private.url(), &prefix).unwrap();
    publish(&redis, "sensor.temp", serde_json::json!({"c": 21})).await;
    let rows = wait_for(
        "events after Redis returned",
        Duration::from_secs(30),
        || async {
            let r = event_rows(&c, event_task).await;
            (!r.is_empty()).then_some(r)
        },
    )
    .await;
    assert_eq!(rows[0].1["payload"]["c"], 21);
}
