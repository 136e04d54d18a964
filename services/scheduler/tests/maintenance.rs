//! Retention pruning and stream trimming.

use orrery::config::Settings;
use orrery_scheduler::events::GROUP;
use orrery_scheduler::maintenance::Maintenance;
use orrery_testing::{redis_prefix, redis_url, TestDb};

fn settings(db: &TestDb, prefix: &str, max_len: &str) -> Settings {
    let vars: Vec<(String, String)> = [
        ("DATABASE_URL", db.url.as_str()),
        ("REDIS_URL", &redis_url()),
        ("REDIS_KEY_PREFIX", prefix),
        ("RETENTION_RUNS_DAYS", "7"),
        ("RETENTION_AUDIT_DAYS", "30"),
        ("RETENTION_STREAM_MAX_LEN", max_len),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Settings::from_sources(&vars).unwrap()
}

#[tokio::test]
async fn pruning_removes_only_rows_older_than_their_retention() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task: uuid::Uuid = c
        .query_one(
            "INSERT INTO task (title, created_by, schedule_kind, schedule_expr) VALUES ('t', $1, 'cron', '* * * * *') RETURNING id",
            &[&orrery::model::SYSTEM_AGENT_ID],
        )
        .await
        .unwrap()
        .get(0);
    for age_days in [1, 6, 8, 40] {
        c.execute(
            "INSERT INTO task_run (task_id, attempt, trigger, scheduled_for, finished_at, success)
             VALUES ($1, 1, 'schedule', now(), now() - make_interval(days => $2), true)",
            &[&task, &age_days],
        )
        .await
        .unwrap();
        c.execute(
            "INSERT INTO audit_log (action, subject_type, subject_id, created_at)
             VALUES ('x', 'task', 'y', now() - make_interval(days => $1))",
            &[&age_days],
        )
        .await
        .unwrap();
    }
    let m = Maintenance {
        pool: db.pool(),
        redis: orrery::streams::Redis::new(&redis_url(), &prefix).unwrap(),
        settings: settings(&db, &prefix, "1000"),
        instance_id: "test".into(),
    };
    let removed = m.prune().await.unwrap();
    assert_eq!(
        removed,
        2 + 1,
        "two runs older than 7 days, one audit row older than 30 days"
    );
    let runs: i64 = c
        .query_one("SELECT count(*) FROM task_run", &[])
        .await
        .unwrap()
        .get(0);
    let audit: i64 = c
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((runs, audit), (2, 3));
    assert_eq!(m.prune().await.unwrap(), 0, "idempotent");
}

#[tokio::test]
async fn trimming_the_events_stream_keeps_entries_still_pending_for_the_group() {
    let db = TestDb::new().await;
    let prefix = redis_prefix();
    let redis = orrery::streams::Redis::new(&redis_url(), &prefix).unwrap();
    let stream = redis.key(orrery::streams::EVENTS);
    let mut conn = redis.conn().await.unwrap();
    let _: String = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    for i in 0..20 {
        redis
            .xadd(
                orrery::streams::EVENTS,
                None,
                &[("topic", "a.b".into()), ("n", i.to_string())],
            )
            .await
            .unwrap();
    }
    // Deliver the first 5 to a consumer and acknowledge only 3 of them: entries 3 and 4 stay pending.
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("c1")
        .arg("COUNT")
        .arg(5)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<String> = reply.keys[0].ids.iter().map(|i| i.id.clone()).collect();
    let _: i64 = redis::cmd("XACK")
        .arg(&stream)
        .arg(GROUP)
        .arg(&ids[0])
        .arg(&ids[1])
        .arg(&ids[2])
        .query_async(&mut conn)
        .await
        .unwrap();
    let m = Maintenance {
        pool: db.pool(),
        redis: redis.clone(),
        settings: settings(&db, &prefix, "2"),
        instance_id: "test".into(),
    };
    let removed = m.trim_events().await.unwrap();
    assert_eq!(
        removed, 3,
        "only the acknowledged entries before the first pending one go"
    );
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(first[0].0, ids[3], "the oldest pending entry survives");
}
