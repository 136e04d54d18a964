//! Named queues and their flow control, with real worker processes: WORKER_QUEUES, pause, max_concurrency
//! across workers, and the rate limit held in every window by four workers.

mod common;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use common::*;
use orrery_testing::{redis_prefix, TestDb};
use serde_json::json;
use uuid::Uuid;

fn sleeper(seconds: f64) -> TaskSpec {
    TaskSpec {
        pipeline: json!([{"id": "nap", "uses": "sleep", "with": {"seconds": seconds}}]),
        ..TaskSpec::default()
    }
}

async fn task_in(c: &tokio_postgres::Client, spec: TaskSpec, queue: &str) -> Uuid {
    let id = insert_task(c, spec).await;
    c.execute(
        "INSERT INTO queue (name) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&queue],
    )
    .await
    .unwrap();
    c.execute("UPDATE task SET queue = $2 WHERE id = $1", &[&id, &queue])
        .await
        .unwrap();
    id
}

async fn starts(c: &tokio_postgres::Client, task: Uuid) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    c.query(
        "SELECT started_at, finished_at FROM task_run WHERE task_id = $1 AND success ORDER BY started_at",
        &[&task],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test]
async fn rows_take_their_tasks_queue_and_a_worker_serves_only_its_worker_queues() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let heavy = task_in(&c, TaskSpec::default(), "heavy").await;
    let light = insert_task(&c, TaskSpec::default()).await;
    insert_many(&c, heavy, 5).await;
    insert_many(&c, light, 5).await;
    assert_eq!(
        count(&c, "SELECT count(*) FROM due_work WHERE queue = 'heavy'").await,
        5,
        "the trigger copies the task's queue onto its rows"
    );
    let w = start_worker(
        &db,
        &prefix,
        &[
            ("WORKER_QUEUES", "heavy, other"),
            ("WORKER_POLL_INTERVAL", "0.1"),
        ],
    )
    .await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the heavy rows",
        &format!("SELECT count(*) FROM task_run WHERE task_id = '{heavy}' AND success"),
        5,
    )
    .await;
    // A claim after the heavy rows still leaves the default queue alone.
    await_fresh_claim(&w, &prefix).await;
    assert_eq!(
        count(
            &c,
            &format!("SELECT count(*) FROM task_run WHERE task_id = '{light}'")
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM due_work WHERE queue = 'default' AND locked_by IS NULL"
        )
        .await,
        5
    );
    // A worker of every queue takes them.
    let _all = start_worker(&db, &prefix, &[("WORKER_POLL_INTERVAL", "0.1")]).await;
    wait_count(
        &c,
        "the default rows",
        &format!("SELECT count(*) FROM task_run WHERE task_id = '{light}' AND success"),
        5,
    )
    .await;
}

#[tokio::test]
async fn a_paused_queue_keeps_its_work_waiting_and_resuming_runs_all_of_it() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = task_in(&c, TaskSpec::default(), "mail").await;
    let other = insert_task(&c, TaskSpec::default()).await;
    c.execute("UPDATE queue SET paused = true WHERE name = 'mail'", &[])
        .await
        .unwrap();
    insert_many(&c, task, 20).await;
    insert_many(&c, other, 3).await;
    let w = start_worker(&db, &prefix, &[("WORKER_POLL_INTERVAL", "0.1")]).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the unpaused queue's rows",
        &format!("SELECT count(*) FROM task_run WHERE task_id = '{other}' AND success"),
        3,
    )
    .await;
    await_fresh_claim(&w, &prefix).await;
    assert_eq!(
        count(
            &c,
            &format!("SELECT count(*) FROM task_run WHERE task_id = '{task}'")
        )
        .await,
        0,
        "nothing of a paused queue starts"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM due_work WHERE queue = 'mail' AND state = 'pending' AND locked_by IS NULL").await,
        20,
        "and nothing of it is lost or leased"
    );
    c.execute("UPDATE queue SET paused = false WHERE name = 'mail'", &[])
        .await
        .unwrap();
    hint(&prefix).await;
    wait_count(
        &c,
        "the resumed queue's rows",
        &format!("SELECT count(*) FROM task_run WHERE task_id = '{task}' AND success"),
        20,
    )
    .await;
    assert_eq!(count(&c, "SELECT count(*) FROM due_work").await, 0);
}

#[tokio::test]
async fn max_concurrency_holds_across_workers() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = task_in(&c, sleeper(0.3), "narrow").await;
    c.execute(
        "UPDATE queue SET max_concurrency = 3 WHERE name = 'narrow'",
        &[],
    )
    .await
    .unwrap();
    insert_many(&c, task, 18).await;
    // Which rows are whose (task_run keeps the due_work id, not the params).
    let mut ids: std::collections::HashMap<&str, Vec<i64>> = Default::default();
    for key in ["a", "b"] {
        let rows = c
            .query(
                "SELECT id FROM due_work WHERE rate_key = 'customer-' || $1",
                &[&key],
            )
            .await
            .unwrap();
        ids.insert(key, rows.iter().map(|r| r.get(0)).collect());
    }
    let env = [("WORKER_CONCURRENCY", "8"), ("WORKER_POLL_INTERVAL", "0.1")];
    let _a = start_worker(&db, &prefix, &env).await;
    let _b = start_worker(&db, &prefix, &env).await;
    let _c = start_worker(&db, &prefix, &env).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "eighteen runs",
        &format!("SELECT count(*) FROM task_run WHERE task_id = '{task}' AND success"),
        18,
    )
    .await;
    let runs = starts(&c, task).await;
    // At every start, how many runs were in progress (started and not finished), itself included.
    let peak = runs
        .iter()
        .map(|(s, _)| runs.iter().filter(|(a, b)| a <= s && b > s).count())
        .max()
        .unwrap();
    assert!(
        peak <= 3,
        "{peak} runs at once in a queue of max_concurrency 3: {runs:?}"
    );
    assert!(
        peak >= 2,
        "the three workers should have shared the queue: {runs:?}"
    );
    let workers = count(
        &c,
        &format!("SELECT count(DISTINCT worker_id) FROM task_run WHERE task_id = '{task}'"),
    )
    .await;
    assert!(workers >= 2, "one worker took everything");
    // Every place is given back (right after each completion commits, not with it).
    orrery_testing::wait_for("every place given back", WAIT, || async {
        (count(
            &c,
            "SELECT coalesce(sum(cardinality(running)), 0) FROM queue_flow",
        )
        .await
            == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn four_workers_never_exceed_a_rate_limit_in_any_window() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = task_in(&c, TaskSpec::default(), "api").await;
    // At most 10 starts in any 0.5 s.
    c.execute(
        "UPDATE queue SET rate_limit = 10, rate_period_seconds = 0.5 WHERE name = 'api'",
        &[],
    )
    .await
    .unwrap();
    insert_many(&c, task, 60).await;
    let env = [("WORKER_CONCURRENCY", "8"), ("WORKER_POLL_INTERVAL", "0.1")];
    let _ws = [
        start_worker(&db, &prefix, &env).await,
        start_worker(&db, &prefix, &env).await,
        start_worker(&db, &prefix, &env).await,
        start_worker(&db, &prefix, &env).await,
    ];
    hint(&prefix).await;
    wait_count(
        &c,
        "sixty runs",
        &format!("SELECT count(*) FROM task_run WHERE task_id = '{task}' AND success"),
        60,
    )
    .await;
    let runs = starts(&c, task).await;
    assert_eq!(runs.len(), 60);
    let starts: Vec<DateTime<Utc>> = runs.iter().map(|r| r.0).collect();
    // The limit is enforced at the grant (the claim, on the database clock); a run's recorded start trails its
    // grant by the worker's hand-off, well under 50 ms. Every window of 0.45 s holds at most 10 starts.
    let window = ChronoDuration::milliseconds(450);
    for (i, s) in starts.iter().enumerate() {
        let within = starts[i..].iter().take_while(|t| **t - *s < window).count();
        assert!(
            within <= 10,
            "{within} starts within 450 ms from {s}: {starts:?}"
        );
    }
    // Sixty starts at ten per half second take at least 2.5 s (six windows, the first at once).
    let span = *starts.last().unwrap() - starts[0];
    assert!(span >= ChronoDuration::milliseconds(2400), "{span:?}");
    let workers = count(
        &c,
        &format!("SELECT count(DISTINCT worker_id) FROM task_run WHERE task_id = '{task}'"),
    )
    .await;
    assert!(workers >= 2, "the four workers should have shared the work");
}

/// A full window whose oldest grant leaves it within the horizon is granted ahead, at that instant, and the claim
/// answers the instant as the rows' `not_before`; a window that frees later is not granted at all. On a manual
/// clock, through the worker's own claim statement.
#[tokio::test]
async fn a_full_rate_window_is_granted_ahead_only_within_the_horizon_and_at_the_freeing_instant() {
    use orrery::queue::{claim_batch, GRANT_AHEAD_SECONDS, GRANT_LEAD_SECONDS};
    let db = TestDb::new().await;
    let c = db.client().await;
    let task = task_in(&c, TaskSpec::default(), "api").await;
    c.execute(
        "UPDATE queue SET rate_limit = 10, rate_period_seconds = 1 WHERE name = 'api'",
        &[],
    )
    .await
    .unwrap();
    insert_many(&c, task, 40).await;
    let pool = db.pool();
    let claimer = pool.get().await.unwrap();
    let t0: DateTime<Utc> = c
        .query_one("SELECT now() + interval '1 second'", &[])
        .await
        .unwrap()
        .get(0);
    let at = |ms: i64| t0 + ChronoDuration::milliseconds(ms);
    let claim = |ms: i64| {
        let claimer = &claimer;
        async move {
            claim_batch(claimer, "w", 30.0, 100, Some(at(ms)), None, true, false)
                .await
                .unwrap()
                .claimed
        }
    };
    let first = claim(0).await;
    assert_eq!(first.len(), 10, "an empty window grants the limit at once");
    assert!(first.iter().all(|w| w.not_before == Some(at(0))));
    // Full until t0 + 1 s; claimed the worker's lead before that, inside the horizon.
    let lead = (GRANT_LEAD_SECONDS * 1000.0) as i64;
    let horizon = (GRANT_AHEAD_SECONDS * 1000.0) as i64;
    let ahead = claim(1000 - lead).await;
    assert_eq!(ahead.len(), 10, "granted ahead");
    for w in &ahead {
        assert_eq!(w.claimed_at, at(1000 - lead));
        assert_eq!(
            w.not_before,
            Some(at(1000)),
            "starts when the first grant leaves the window"
        );
    }
    // Full until t0 + 2 s: 200 ms more than the horizon before that, nothing is granted.
    assert!(
        claim(2000 - horizon - 200).await.is_empty(),
        "no grant beyond the horizon"
    );
    let log: (Vec<DateTime<Utc>>, Vec<i32>) = {
        let r = c
            .query_one(
                "SELECT start_at, start_n FROM queue_flow WHERE queue = 'api' AND rate_key = ''",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        log,
        (vec![at(1000)], vec![10]),
        "the log records the grant at its instant"
    );
    assert_eq!(
        claim(2000 - lead).await.len(),
        10,
        "and the next one 50 ms before t0 + 2 s"
    );
}

/// Every window of `window` holds at most `limit` of `starts` (sorted).
fn assert_windows(starts: &[DateTime<Utc>], window: ChronoDuration, limit: usize, what: &str) {
    for (i, s) in starts.iter().enumerate() {
        let within = starts[i..].iter().take_while(|t| **t - *s < window).count();
        assert!(
            within <= limit,
            "{what}: {within} starts within {window:?} from {s}: {starts:?}"
        );
    }
}

#[tokio::test]
async fn a_rate_key_template_limits_each_key_on_its_own() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = task_in(&c, TaskSpec::default(), "per-customer").await;
    c.execute(
        "UPDATE task SET rate_key = 'customer-${params.customer_id}' WHERE id = $1",
        &[&task],
    )
    .await
    .unwrap();
    // At most 4 starts of one customer in any 0.6 s; the queue itself is not limited.
    c.execute(
        "UPDATE queue SET key_rate_limit = 4, key_rate_period_seconds = 0.6 WHERE name = 'per-customer'",
        &[],
    )
    .await
    .unwrap();
    // Twelve runs for each of two customers, rendered as the API renders run-now params.
    c.execute(
        "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, params, queue, rate_key)
         SELECT t.id, now(), now(), 5, 'manual', jsonb_build_object('customer_id', k), t.queue,
                orrery_rate_key(t.rate_key, t.payload->'params' || jsonb_build_object('customer_id', k), NULL)
           FROM task t, unnest(ARRAY['a', 'b']) AS k, generate_series(1, 12)
          WHERE t.id = $1",
        &[&task],
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM due_work WHERE rate_key IN ('customer-a', 'customer-b')"
        )
        .await,
        24,
        "the template is rendered per row"
    );
    // Which rows are whose (task_run keeps the due_work id, not the params).
    let mut ids: std::collections::HashMap<&str, Vec<i64>> = Default::default();
    for key in ["a", "b"] {
        let rows = c
            .query(
                "SELECT id FROM due_work WHERE rate_key = 'customer-' || $1",
                &[&key],
            )
            .await
            .unwrap();
        ids.insert(key, rows.iter().map(|r| r.get(0)).collect());
    }
    // Short leases: the renewal round, which also forgets rate keys whose window emptied, runs every 0.67 s.
    let env = [
        ("WORKER_CONCURRENCY", "8"),
        ("WORKER_POLL_INTERVAL", "0.1"),
        ("WORKER_LEASE_SECONDS", "2"),
    ];
    let _a = start_worker(&db, &prefix, &env).await;
    let _b = start_worker(&db, &prefix, &env).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "twenty-four runs",
        &format!("SELECT count(*) FROM task_run WHERE task_id = '{task}' AND success"),
        24,
    )
    .await;
    let mut all = Vec::new();
    for key in ["a", "b"] {
        let keyed: Vec<DateTime<Utc>> = c
            .query(
                "SELECT started_at FROM task_run
                  WHERE task_id = $1 AND success AND due_work_id = ANY ($2)
                  ORDER BY started_at",
                &[&task, &ids[key]],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(keyed.len(), 12, "customer {key}");
        // Recorded starts trail their grant by the hand-off to a runner: windows of 0.55 s of the 0.6 s.
        assert_windows(&keyed, ChronoDuration::milliseconds(550), 4, key);
        let span = *keyed.last().unwrap() - keyed[0];
        assert!(
            span >= ChronoDuration::milliseconds(1150),
            "customer {key}: twelve starts at four per 0.6 s took only {span:?}"
        );
        all.extend(keyed);
    }
    // The keys do not share a window: the first 0.55 s saw both customers' first four.
    all.sort();
    let first = all
        .iter()
        .take_while(|t| **t - all[0] < ChronoDuration::milliseconds(550))
        .count();
    assert!(first > 4, "the two keys were limited together: {all:?}");
    assert_eq!(
        count(&c, "SELECT count(*) FROM queue_flow WHERE rate_key <> ''").await,
        2,
        "one flow row per key"
    );
    orrery_testing::wait_for("the idle keys forgotten", WAIT, || async {
        (count(&c, "SELECT count(*) FROM queue_flow WHERE rate_key <> ''").await == 0).then_some(())
    })
    .await;
}

/// The plan of the fast claim when no queue is constrained must stay the plan of before queues: the
/// `due_work_claim` index read in order up to the LIMIT. (A bare `queue <> ALL (...)` filter made PostgreSQL
/// expect one candidate when every row is in `default`, and plan a bitmap scan of every ready row plus a sort:
/// a 500-row claim took ~300 ms instead of ~1 ms.)
#[tokio::test]
async fn the_fast_claim_reads_the_claim_index_in_order_whatever_the_queues() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let task = insert_task(&c, TaskSpec::default()).await;
    for spread in [1i64, 4] {
        c.batch_execute("TRUNCATE due_work").await.unwrap();
        c.execute(
            "INSERT INTO due_work (task_id, run_at, ready_at, priority, trigger, queue)
             SELECT $1, now(), now(), 5, 'manual', CASE WHEN $2::int8 = 1 THEN 'default' ELSE 'q' || (g % $2::int8) END
               FROM generate_series(1, 20000) AS g",
            &[&task, &spread],
        )
        .await
        .unwrap();
        c.batch_execute("ANALYZE due_work").await.unwrap();
        let plan: String = c
            .query(
                &format!("EXPLAIN {}", orrery::queue::CLAIM_FAST_SQL),
                &[&"w", &60.0f64, &500i64, &None::<DateTime<Utc>>],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0) + "\n")
            .collect();
        assert!(
            plan.contains("Index Scan using due_work_claim on due_work d")
                && !plan.contains("Bitmap Heap Scan on due_work d"),
            "{spread} queue(s):\n{plan}"
        );
    }
}
