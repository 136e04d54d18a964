//! The worker's queue semantics against real PostgreSQL and Redis, with the real binary.

mod common;

use std::collections::HashMap;

use common::*;
use orrery_testing::{redis_prefix, wait_for, TestDb};
use serde_json::json;

#[tokio::test]
async fn every_row_runs_exactly_once_across_three_workers() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, TaskSpec::default()).await;
    insert_many(&c, task, 600).await;
    let env = [("WORKER_BATCH_SIZE", "50"), ("WORKER_CONCURRENCY", "8")];
    let _w1 = start_worker(&db, &prefix, &env).await;
    let _w2 = start_worker(&db, &prefix, &env).await;
    let _w3 = start_worker(&db, &prefix, &env).await;
    hint(&prefix).await;
    wait_count(&c, "600 runs", "SELECT count(*) FROM task_run", 600).await;
    wait_count(
        &c,
        "an empty queue",
        "SELECT 600 - count(*) FROM due_work",
        600,
    )
    .await;
    let runs = runs(&c).await;
    assert_eq!(runs.len(), 600, "no duplicate runs");
    let mut per_row: HashMap<i64, usize> = HashMap::new();
    for r in &runs {
        assert!(r.success, "{r:?}");
        assert_eq!(r.attempt, 1);
        assert_eq!(r.trigger, "manual");
        assert!(r.started_at.unwrap() <= r.finished_at);
        *per_row.entry(r.due_work_id.unwrap()).or_default() += 1;
    }
    assert_eq!(per_row.len(), 600);
    assert!(per_row.values().all(|n| *n == 1));
    let workers: std::collections::HashSet<_> =
        runs.iter().map(|r| r.worker_id.clone().unwrap()).collect();
    assert!(!workers.is_empty());
}

#[tokio::test]
async fn higher_priority_rows_run_first() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, TaskSpec::default()).await;
    let mut expected = Vec::new();
    for (i, p) in [5i16, 9, 1, 3, 7, 2].iter().enumerate() {
        let id = insert_work(
            &c,
            task,
            WorkSpec {
                priority: *p,
                run_at_offset: -(10.0 - i as f64),
                ..WorkSpec::default()
            },
        )
        .await;
        expected.push((*p, id));
    }
    expected.sort();
    let _w = start_worker(&db, &prefix, &[("WORKER_CONCURRENCY", "1")]).await;
    wait_count(&c, "6 runs", "SELECT count(*) FROM task_run", 6).await;
    let mut runs = runs(&c).await;
    runs.sort_by_key(|r| r.started_at);
    let order: Vec<i64> = runs.iter().map(|r| r.due_work_id.unwrap()).collect();
    let expected: Vec<i64> = expected.iter().map(|e| e.1).collect();
    assert_eq!(order, expected, "priority 1 first, then by ready_at");
}

#[tokio::test]
async fn tasks_sharing_a_concurrency_key_never_overlap() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let spec = || TaskSpec {
        pipeline: json!([{"id": "nap", "uses": "sleep", "with": {"seconds": 0.2}}]),
        ..TaskSpec::default()
    };
    let a = insert_task(&c, spec()).await;
    let b = insert_task(&c, spec()).await;
    for task in [a, b, a, b, a, b] {
        insert_work(
            &c,
            task,
            WorkSpec {
                concurrency_key: Some("shared-mailbox"),
                overlap: "queue",
                ..WorkSpec::default()
            },
        )
        .await;
    }
    // Unrelated work keeps flowing meanwhile.
    let free = insert_task(&c, TaskSpec::default()).await;
    insert_many(&c, free, 20).await;
    let env = [("WORKER_CONCURRENCY", "4")];
    let _w1 = start_worker(&db, &prefix, &env).await;
    let _w2 = start_worker(&db, &prefix, &env).await;
    hint(&prefix).await;
    wait_count(&c, "26 runs", "SELECT count(*) FROM task_run", 26).await;
    let mut keyed: Vec<_> = runs(&c)
        .await
        .into_iter()
        .filter(|r| r.task_id == a || r.task_id == b)
        .collect();
    assert_eq!(keyed.len(), 6);
    assert!(keyed.iter().all(|r| r.success));
    keyed.sort_by_key(|r| r.started_at);
    // Each run's times are on the database clock: its start is read by the claim that took it (which ran after
    // the previous run of the key committed its completion) and its finish is never later than the truth, so
    // recorded intervals of one key must not overlap at all.
    for pair in keyed.windows(2) {
        assert!(
            pair[0].finished_at <= pair[1].started_at.unwrap(),
            "runs overlap: {:?} .. {:?} and {:?} .. {:?}",
            pair[0].started_at,
            pair[0].finished_at,
            pair[1].started_at,
            pair[1].finished_at
        );
    }
    assert_eq!(
        count(&c, "SELECT count(*) FROM concurrency_slot").await,
        0,
        "slots are released on completion"
    );
}

/// A task (max_retries 3, `backoff`) whose only step gets HTTP 500, one row of it run by a worker started with
/// `env` until the row goes dead. Returns the row's id and the HTTP server (for its hit counts).
async fn fail_until_dead(
    db: &TestDb,
    c: &tokio_postgres::Client,
    backoff: &'static str,
    env: &[(&str, &str)],
) -> (i64, TestHttp) {
    let prefix = redis_prefix();
    let http = TestHttp::start().await;
    let task = insert_task(
        c,
        TaskSpec {
            pipeline: json!([{"id": "call", "uses": "http.request", "with": {"url": http.url("/fail")}}]),
            max_retries: 3,
            backoff,
            ..TaskSpec::default()
        },
    )
    .await;
    let id = insert_work(c, task, WorkSpec::default()).await;
    let _w = start_worker(db, &prefix, env).await;
    hint(&prefix).await;
    wait_count(
        c,
        "the row to go dead",
        "SELECT count(*) FROM due_work WHERE state = 'dead'",
        1,
    )
    .await;
    (id, http)
}

#[tokio::test]
async fn retryable_failures_retry_with_the_task_backoff_then_go_dead() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (id, http) = fail_until_dead(
        &db,
        &c,
        "linear",
        &[
            ("WORKER_BACKOFF_BASE_DELAY", "0.3"),
            ("WORKER_POLL_INTERVAL", "0.05"),
        ],
    )
    .await;
    let runs = runs(&c).await;
    assert_eq!(runs.len(), 4, "1 attempt + max_retries (3) retries");
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r.attempt, i as i32 + 1);
        assert!(!r.success);
        assert_eq!(r.error_kind.as_deref(), Some("http_5xx"));
        assert_eq!(r.trigger, if i == 0 { "manual" } else { "retry" });
        assert_eq!(r.due_work_id, Some(id));
    }
    // linear: the delay before attempt n+1 is base × n (0.3 s, 0.6 s, 0.9 s).
    for n in 1..4 {
        let gap = runs[n].started_at.unwrap() - runs[n - 1].finished_at;
        let expected = chrono::Duration::milliseconds(300 * n as i64);
        assert!(
            gap >= expected - chrono::Duration::milliseconds(5),
            "gap before attempt {} is {gap:?}, expected ≥ {expected:?}",
            n + 1
        );
        assert!(gap < expected + chrono::Duration::milliseconds(1500));
    }
    let row = c
        .query_one(
            "SELECT attempt, last_error_kind, dead_at IS NOT NULL, locked_by FROM due_work WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 4);
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("http_5xx"));
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, Option<String>>(3), None);
    assert_eq!(http.hits("/fail"), 4);
}

#[tokio::test]
async fn exponential_jitter_backoff_doubles_within_its_jitter_and_is_capped() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let (_, http) = fail_until_dead(
        &db,
        &c,
        "exponential_jitter",
        &[
            ("WORKER_BACKOFF_BASE_DELAY", "0.5"),
            ("WORKER_BACKOFF_MAX_DELAY", "0.8"),
        ],
    )
    .await;
    let runs = runs(&c).await;
    assert_eq!(runs.len(), 4, "1 attempt + max_retries (3) retries");
    assert_eq!(
        runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    // exponential_jitter: the delay before attempt n+1 is uniform(0.5, 1) × min(base × 2^(n−1), max):
    // 0.5 s, then 1.0 s and 2.0 s capped at 0.8 s. Without the cap the last gap would be at least 1.0 s.
    for (n, nominal_ms) in [(1usize, 500i64), (2, 800), (3, 800)] {
        let gap = runs[n].started_at.unwrap() - runs[n - 1].finished_at;
        let low = chrono::Duration::milliseconds(nominal_ms / 2 - 5);
        let high = chrono::Duration::milliseconds(nominal_ms + 190);
        assert!(
            gap >= low && gap < high,
            "gap before attempt {} is {gap:?}, expected within [{low:?}, {high:?})",
            n + 1
        );
    }
    assert_eq!(http.hits("/fail"), 4);
}

#[tokio::test]
async fn fixed_backoff_spaces_retries_evenly_and_a_later_success_ends_them() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let http = TestHttp::start().await;
    // First call 404 would be permanent; use the 500 route for two attempts via a condition on the attempt.
    let task = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([
                {"id": "fail", "uses": "http.request", "if": "run.attempt < `3`", "with": {"url": http.url("/fail")}},
                {"id": "ok", "uses": "http.request", "with": {"url": http.url("/ok")}}
            ]),
            max_retries: 5,
            backoff: "fixed",
            ..TaskSpec::default()
        },
    )
    .await;
    let id = insert_work(&c, task, WorkSpec::default()).await;
    let _w = start_worker(&db, &prefix, &[("WORKER_BACKOFF_BASE_DELAY", "0.4")]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "a successful run",
        "SELECT count(*) FROM task_run WHERE success",
        1,
    )
    .await;
    let runs = runs(&c).await;
    assert_eq!(
        runs.iter()
            .map(|r| (r.attempt, r.success))
            .collect::<Vec<_>>(),
        vec![(1, false), (2, false), (3, true)]
    );
    for n in 1..3 {
        let gap = runs[n].started_at.unwrap() - runs[n - 1].finished_at;
        assert!(gap >= chrono::Duration::milliseconds(395), "{gap:?}");
        assert!(gap < chrono::Duration::milliseconds(2000), "{gap:?}");
    }
    // The idempotency key is the due_work id, the same for every attempt.
    let keys: Vec<_> = http
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, k)| k.clone().unwrap())
        .collect();
    assert_eq!(keys, vec![id.to_string(); 3]);
    assert_eq!(
        runs[2].output.as_ref().unwrap()["steps"]["ok"]["body"]["key"],
        id.to_string()
    );
    assert_eq!(count(&c, "SELECT count(*) FROM due_work").await, 0);
}

#[tokio::test]
async fn a_permanent_error_goes_dead_at_once_and_a_replay_runs_it_again() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let http = TestHttp::start().await;
    let task = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "call", "uses": "http.request", "with": {"url": http.url("/flaky404")}}]),
            max_retries: 5,
            ..TaskSpec::default()
        },
    )
    .await;
    let id = insert_work(&c, task, WorkSpec::default()).await;
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
    assert_eq!(r.len(), 1, "no retry of a permanent error");
    assert_eq!(r[0].error_kind.as_deref(), Some("http_4xx"));
    // The replay the API performs.
    c.execute(
        "UPDATE due_work SET state = 'pending', attempt = 0, ready_at = now(), dead_at = NULL,
                             last_error = NULL, last_error_kind = NULL
          WHERE id = $1 AND state = 'dead'",
        &[&id],
    )
    .await
    .unwrap();
    hint(&prefix).await;
    wait_count(
        &c,
        "the replay to succeed",
        "SELECT count(*) FROM task_run WHERE success",
        1,
    )
    .await;
    let r = runs(&c).await;
    assert_eq!(r.len(), 2);
    assert_eq!(r[1].attempt, 1);
    assert_eq!(count(&c, "SELECT count(*) FROM due_work").await, 0);
}

#[tokio::test]
async fn http_timeouts_are_retryable_and_exhausted_retries_go_dead() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let http = TestHttp::start().await;
    let slow = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "call", "uses": "http.request", "timeout_seconds": 1,
                              "with": {"url": http.url("/slow")}}]),
            max_retries: 1,
            ..TaskSpec::default()
        },
    )
    .await;
    let missing = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "call", "uses": "http.request", "with": {"url": http.url("/missing")}}]),
            ..TaskSpec::default()
        },
    )
    .await;
    let unknown = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "x", "uses": "shell.exec"}]),
            ..TaskSpec::default()
        },
    )
    .await;
    let broken = insert_task(
        &c,
        TaskSpec {
            pipeline: json!("not a pipeline"),
            ..TaskSpec::default()
        },
    )
    .await;
    for t in [slow, missing, unknown, broken] {
        insert_work(&c, t, WorkSpec::default()).await;
    }
    let _w = start_worker(&db, &prefix, &[("WORKER_BACKOFF_BASE_DELAY", "0.1")]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "four dead rows",
        "SELECT count(*) FROM due_work WHERE state = 'dead'",
        4,
    )
    .await;
    let kinds = |task| {
        let c = &c;
        async move {
            c.query(
                "SELECT error_kind FROM task_run WHERE task_id = $1 ORDER BY attempt",
                &[&task],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(kinds(slow).await, vec!["timeout", "timeout"]);
    assert_eq!(kinds(missing).await, vec!["http_4xx"]);
    assert_eq!(kinds(unknown).await, vec!["unknown_tool"]);
    assert_eq!(kinds(broken).await, vec!["invalid_payload"]);
}

#[tokio::test]
async fn an_event_triggered_run_sees_its_event_and_merged_params() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "greet", "uses": "noop", "with": {
                "to": "${event.payload.email}", "topic": "${event.topic}",
                "lang": "${params.lang}", "tone": "${params.tone}", "key": "${run.idempotency_key}",
                "attempt": "${run.attempt}", "title": "${task.title}"
            }}]),
            params: json!({"lang": "en", "tone": "warm"}),
            ..TaskSpec::default()
        },
    )
    .await;
    let event = json!({"id": "ev-1", "topic": "user.signup", "payload": {"email": "ada@example.com"},
                       "published_at": "2026-01-01T00:00:00Z"});
    let id = insert_work(
        &c,
        task,
        WorkSpec {
            trigger: "event",
            event_id: Some("ev-1"),
            event: Some(event),
            params: Some(json!({"tone": "formal"})),
            ..WorkSpec::default()
        },
    )
    .await;
    let _w = start_worker(&db, &prefix, &[]).await;
    hint(&prefix).await;
    wait_count(&c, "the run", "SELECT count(*) FROM task_run", 1).await;
    let r = runs(&c).await;
    assert!(r[0].success, "{:?}", r[0]);
    assert_eq!(r[0].trigger, "event");
    assert_eq!(
        r[0].output.as_ref().unwrap()["steps"]["greet"],
        json!({"to": "ada@example.com", "topic": "user.signup", "lang": "en", "tone": "formal",
               "key": id, "attempt": 1, "title": "worker test"})
    );
}

#[tokio::test]
async fn events_publish_writes_to_the_events_stream_and_run_events_reach_orrery_runs() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "pub", "uses": "events.publish",
                              "with": {"topic": "report.ready", "payload": {"n": 1}}}]),
            ..TaskSpec::default()
        },
    )
    .await;
    let id = insert_work(&c, task, WorkSpec::default()).await;
    let _w = start_worker(&db, &prefix, &[]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the run",
        "SELECT count(*) FROM task_run WHERE success",
        1,
    )
    .await;
    let client = redis::Client::open(orrery_testing::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let events: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}events"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(events.ids.len(), 1);
    let e = &events.ids[0];
    assert_eq!(e.get::<String>("topic").unwrap(), "report.ready");
    assert_eq!(e.get::<String>("payload").unwrap(), r#"{"n":1}"#);
    assert_eq!(
        e.get::<String>("published_by").unwrap(),
        format!("task:{task}")
    );
    assert!(e.get::<String>("event_id").is_some());
    let runs_key = format!("{prefix}orrery:runs");
    let seen = wait_for("started and succeeded run events", WAIT, || {
        let mut conn = conn.clone();
        let runs_key = runs_key.clone();
        async move {
            let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&runs_key)
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .ok()?;
            let kinds: Vec<String> = r.ids.iter().filter_map(|e| e.get("event")).collect();
            (kinds.len() >= 2).then_some((kinds, r))
        }
    })
    .await;
    assert_eq!(seen.0, vec!["started", "succeeded"]);
    let first = &seen.1.ids[0];
    assert_eq!(first.get::<i64>("due_work_id"), Some(id));
    assert_eq!(first.get::<String>("task_id"), Some(task.to_string()));
    assert_eq!(first.get::<i32>("attempt"), Some(1));
}

#[tokio::test]
async fn overdue_schedule_fires_follow_their_catchup_policy_at_claim_time() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let skip = insert_task(&c, TaskSpec::default()).await;
    let latest = insert_task(&c, TaskSpec::default()).await;
    let all = insert_task(&c, TaskSpec::default()).await;
    for (task, catchup) in [(skip, "skip"), (latest, "latest"), (all, "all")] {
        for minutes in [30.0, 20.0, 10.0] {
            insert_work(
                &c,
                task,
                WorkSpec {
                    trigger: "schedule",
                    catchup,
                    run_at_offset: -60.0 * minutes,
                    ..WorkSpec::default()
                },
            )
            .await;
        }
    }
    // A fire within its grace window runs whatever the policy.
    insert_work(
        &c,
        skip,
        WorkSpec {
            trigger: "schedule",
            run_at_offset: -1.0,
            ..WorkSpec::default()
        },
    )
    .await;
    let _w = start_worker(&db, &prefix, &[]).await;
    hint(&prefix).await;
    wait_count(&c, "10 records", "SELECT count(*) FROM task_run", 10).await;
    wait_count(
        &c,
        "an empty queue",
        "SELECT 10 - count(*) FROM due_work",
        10,
    )
    .await;
    let runs = runs(&c).await;
    let of = |task| {
        let mut v: Vec<(bool, Option<String>)> = runs
            .iter()
            .filter(|r| r.task_id == task)
            .map(|r| (r.success, r.error_kind.clone()))
            .collect();
        v.sort();
        v
    };
    let misfired = (false, Some("misfired".to_string()));
    let ran = (true, None);
    assert_eq!(
        of(skip),
        vec![
            misfired.clone(),
            misfired.clone(),
            misfired.clone(),
            ran.clone()
        ]
    );
    assert_eq!(
        of(latest),
        vec![misfired.clone(), misfired.clone(), ran.clone()]
    );
    assert_eq!(of(all), vec![ran.clone(), ran.clone(), ran.clone()]);
    assert!(runs
        .iter()
        .filter(|r| !r.success)
        .all(|r| r.attempt == 0 && r.trigger == "schedule"));
}

#[tokio::test]
async fn a_fire_with_overlap_skip_is_dropped_while_a_run_of_its_task_is_leased() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "nap", "uses": "sleep", "with": {"seconds": 1.5}}]),
            ..TaskSpec::default()
        },
    )
    .await;
    let key = format!("task:{task}");
    let first = insert_work(
        &c,
        task,
        WorkSpec {
            concurrency_key: Some(&key),
            overlap: "skip",
            ..WorkSpec::default()
        },
    )
    .await;
    let _w = start_worker(&db, &prefix, &[]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the first run to be leased",
        "SELECT count(*) FROM due_work WHERE locked_by IS NOT NULL",
        1,
    )
    .await;
    let second = insert_work(
        &c,
        task,
        WorkSpec {
            concurrency_key: Some(&key),
            overlap: "skip",
            ..WorkSpec::default()
        },
    )
    .await;
    hint(&prefix).await;
    wait_count(&c, "two records", "SELECT count(*) FROM task_run", 2).await;
    let runs = runs(&c).await;
    let by_id = |id| runs.iter().find(|r| r.due_work_id == Some(id)).unwrap();
    assert_eq!(by_id(second).error_kind.as_deref(), Some("overlap_skipped"));
    assert_eq!(by_id(second).attempt, 0);
    assert!(by_id(first).success);
}

#[tokio::test]
async fn a_completion_for_a_deleted_task_is_discarded_without_failing_its_batch() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let doomed = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "nap", "uses": "sleep", "with": {"seconds": 1}}]),
            ..TaskSpec::default()
        },
    )
    .await;
    let other = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "nap", "uses": "sleep", "with": {"seconds": 1}}]),
            ..TaskSpec::default()
        },
    )
    .await;
    insert_work(&c, doomed, WorkSpec::default()).await;
    insert_work(&c, other, WorkSpec::default()).await;
    let w = start_worker(&db, &prefix, &[]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "both rows leased",
        "SELECT count(*) FROM due_work WHERE locked_by IS NOT NULL",
        2,
    )
    .await;
    c.execute("DELETE FROM task WHERE id = $1", &[&doomed])
        .await
        .unwrap();
    wait_count(&c, "the other run", "SELECT count(*) FROM task_run", 1).await;
    let runs = runs(&c).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].task_id, other);
    assert!(runs[0].success);
    wait_for("the discarded completion in the log", WAIT, || async {
        w.log_text().contains("completion discarded").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_backlog_of_misfires_after_an_outage_does_not_delay_the_fires_that_are_due_now() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(&c, TaskSpec::default()).await;
    // Ten minutes of a per-second schedule missed during an outage (misfire grace 30 s, catch-up skip), ahead of
    // one fire that is due now, in the claim's order.
    c.execute(
        "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger)
         SELECT $1, now() - make_interval(secs => g), now() - make_interval(secs => g), 5, 'schedule'
           FROM generate_series(31, 630) g",
        &[&task],
    )
    .await
    .unwrap();
    let current = insert_work(
        &c,
        task,
        WorkSpec {
            trigger: "schedule",
            run_at_offset: -1.0,
            ..WorkSpec::default()
        },
    )
    .await;
    let _w = start_worker(&db, &prefix, &[("WORKER_CONCURRENCY", "4")]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the current fire's run",
        &format!("SELECT count(*) FROM task_run WHERE due_work_id = {current} AND success"),
        1,
    )
    .await;
    let lateness: f64 = c
        .query_one(
            "SELECT extract(epoch FROM started_at - scheduled_for)::float8 FROM task_run WHERE due_work_id = $1",
            &[&current],
        )
        .await
        .unwrap()
        .get(0);
    // Claims of a few rows each that drop misfires must follow one another at once, not one per idle wait
    // (5 s with Redis up): 600 misfires ahead of it at 4 to 8 rows per claim would otherwise take minutes.
    assert!(
        lateness < 3.0,
        "the fire due now started {lateness:.3} s after its instant"
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM task_run WHERE error_kind = 'misfired'"
        )
        .await,
        600
    );
}

#[tokio::test]
async fn a_pipeline_calling_the_cloud_metadata_address_dies_at_once_with_a_policy_error() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "steal", "uses": "http.request",
                              "with": {"url": "http://169.254.169.254/latest/meta-data/iam/security-credentials/"}}]),
            max_retries: 5,
            ..TaskSpec::default()
        },
    )
    .await;
    insert_work(&c, task, WorkSpec::default()).await;
    // Even with every address range allowed, link-local metadata stays out of reach.
    let _w = start_worker(
        &db,
        &prefix,
        &[("WORKER_HTTP_ALLOW_CIDRS", "0.0.0.0/0,::/0")],
    )
    .await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the row to go dead",
        "SELECT count(*) FROM due_work WHERE state = 'dead'",
        1,
    )
    .await;
    let r = runs(&c).await;
    assert_eq!(r.len(), 1, "a policy denial is not retried");
    assert_eq!(r[0].error_kind.as_deref(), Some("policy"));
    let error: String = c
        .query_one("SELECT error FROM task_run", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        error.contains("169.254.169.254") && error.contains("never calls"),
        "{error}"
    );
}

const SECRETS_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// Seals `value` as the system agent's secret `name`, as `PUT /secrets/{name}` does.
async fn put_secret(c: &tokio_postgres::Client, name: &str, value: &str) {
    let ring = orrery::secrets::Keyring::new(SECRETS_KEY, "").unwrap();
    let owner = orrery::model::SYSTEM_AGENT_ID;
    let sealed = ring.seal(owner, name, value);
    c.execute(
        "INSERT INTO secret (owner, name, ciphertext, nonce, key_id) VALUES ($1, $2, $3, $4, $5)",
        &[
            &owner,
            &name,
            &sealed.ciphertext,
            &sealed.nonce,
            &sealed.key_id,
        ],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_secret_reaches_the_request_but_never_the_output_the_error_or_the_log() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let http = TestHttp::start().await;
    let secret = "sk-live-8d1f2a9b7c";
    put_secret(&c, "API_TOKEN", secret).await;
    // /ok echoes the Idempotency-Key header back in its JSON body, as a careless server reflects a credential.
    let echoed = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([
                {"id": "call", "uses": "http.request",
                 "with": {"url": http.url("/ok"), "headers": {"Idempotency-Key": "${secrets.API_TOKEN}"}}},
                {"id": "keep", "uses": "noop", "with": {"copy": "Bearer ${secrets.API_TOKEN}"}}
            ]),
            ..TaskSpec::default()
        },
    )
    .await;
    // A 404 whose error message carries the URL, with the secret in its path.
    let failing = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "bad", "uses": "http.request",
                              "with": {"url": format!("{}/${{secrets.API_TOKEN}}", http.url("/missing"))}}]),
            max_retries: 0,
            ..TaskSpec::default()
        },
    )
    .await;
    // A pipeline reading a secret that does not exist fails permanently, naming it.
    let unset = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "n", "uses": "noop", "with": {"x": "${secrets.NOT_SET}"}}]),
            ..TaskSpec::default()
        },
    )
    .await;
    for task in [echoed, failing, unset] {
        insert_work(&c, task, WorkSpec::default()).await;
    }
    let worker = start_worker(&db, &prefix, &[("ORRERY_SECRETS_KEY", SECRETS_KEY)]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "three finished runs",
        "SELECT count(*) FROM task_run",
        3,
    )
    .await;

    // The server did receive the secret.
    assert!(http
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|(_, key)| key.as_deref() == Some(secret)));
    let row = |task: uuid::Uuid| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT success, coalesce(error, ''), coalesce(error_kind, ''), output::text FROM task_run WHERE task_id = $1",
                &[&task],
            )
            .await
            .unwrap()
        }
    };
    let ok = row(echoed).await;
    assert!(ok.get::<_, bool>(0));
    let output: String = ok.get(3);
    assert!(!output.contains(secret), "{output}");
    assert!(output.contains("[redacted:API_TOKEN]"), "{output}");
    let bad = row(failing).await;
    let error: String = bad.get(1);
    assert_eq!(bad.get::<_, String>(2), "http_4xx");
    assert!(
        !error.contains(secret) && error.contains("[redacted:API_TOKEN]"),
        "{error}"
    );
    assert!(!bad.get::<_, String>(3).contains(secret));
    let missing = row(unset).await;
    assert_eq!(missing.get::<_, String>(2), "secret");
    assert!(missing.get::<_, String>(1).contains("NOT_SET"));
    let dead_errors: String = c
        .query_one(
            "SELECT coalesce(string_agg(last_error, ' '), '') FROM due_work",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!dead_errors.contains(secret));
    assert!(
        !worker.log_text().contains(secret),
        "the worker's log holds the secret"
    );
}

#[tokio::test]
async fn an_event_published_by_a_step_while_redis_is_down_is_kept_in_the_outbox() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "pub", "uses": "events.publish",
                              "with": {"topic": "orders.created", "payload": {"n": "${params.n}"}}}]),
            params: json!({"n": 7}),
            ..TaskSpec::default()
        },
    )
    .await;
    insert_work(&c, task, WorkSpec::default()).await;
    // No Redis at all: the worker polls, and the step still succeeds because the event is stored first.
    let dead_redis = format!("redis://127.0.0.1:{}", orrery_testing::free_port());
    let _w = start_worker(&db, &prefix, &[("REDIS_URL", dead_redis.as_str())]).await;
    wait_count(&c, "the run", "SELECT count(*) FROM task_run", 1).await;
    let r = runs(&c).await;
    assert!(r[0].success, "{:?}", r[0]);
    let output: serde_json::Value = c
        .query_one("SELECT output FROM task_run", &[])
        .await
        .unwrap()
        .get(0);
    let step = &output["steps"]["pub"];
    assert!(step["stream_id"].is_null(), "{step}");
    let event_id = step["event_id"].as_str().unwrap().to_string();
    let row = c
        .query_one(
            "SELECT topic, payload, relayed_at IS NULL, claimed_until IS NULL FROM event_outbox WHERE event_id = $1",
            &[&event_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "orders.created");
    assert_eq!(row.get::<_, serde_json::Value>(1), json!({"n": 7}));
    assert!(
        row.get::<_, bool>(2) && row.get::<_, bool>(3),
        "waiting for the relay"
    );
}
