//! Task dependencies with real worker processes: a dependent's due_work row is inserted by the statement that
//! settles its parent (docs/flow-control.md#dependencies), so it exists exactly once per trace whatever dies when.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use orrery_testing::{redis_prefix, wait_for, TestDb};
use serde_json::{json, Value};
use uuid::Uuid;

fn noop(with: Value) -> TaskSpec {
    TaskSpec {
        pipeline: json!([{"id": "n", "uses": "noop", "with": with}]),
        ..TaskSpec::default()
    }
}

/// Declares `child` to run after `parents` ((task, condition, params)) as the API stores it.
async fn set_after(
    c: &tokio_postgres::Client,
    child: Uuid,
    parents: &[(Uuid, &str, Option<Value>)],
) {
    let after: Vec<Value> = parents
        .iter()
        .map(|(id, cond, params)| {
            let mut e = json!({"task": id.to_string(), "task_id": id, "condition": cond});
            if let Some(p) = params {
                e["params"] = p.clone();
            }
            e
        })
        .collect();
    c.execute(
        "UPDATE task SET after = $2 WHERE id = $1",
        &[&child, &Value::Array(after)],
    )
    .await
    .unwrap();
}

/// (task, started_at, finished_at) of a run.
type RunTimes = (
    Uuid,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
);

const FAST: [(&str, &str); 3] = [
    ("WORKER_POLL_INTERVAL", "0.1"),
    ("WORKER_BACKOFF_BASE_DELAY", "0.2"),
    ("WORKER_BACKOFF_MAX_DELAY", "0.2"),
];

#[tokio::test]
async fn a_dependent_runs_after_its_parent_with_params_from_its_output_in_the_same_trace() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let parent = insert_task(&c, noop(json!({"v": 7, "who": "${params.who}"}))).await;
    c.execute(
        "UPDATE task SET payload = jsonb_set(payload, '{params}', '{\"who\": \"ada\"}') WHERE id = $1",
        &[&parent],
    )
    .await
    .unwrap();
    let child = insert_task(
        &c,
        noop(json!({"got": "${params.got}", "from": "${params.from}", "mine": "${params.mine}"})),
    )
    .await;
    c.execute(
        "UPDATE task SET payload = jsonb_set(payload, '{params}', '{\"mine\": 1, \"got\": 0}') WHERE id = $1",
        &[&child],
    )
    .await
    .unwrap();
    set_after(
        &c,
        child,
        &[(
            parent,
            "success",
            Some(json!({"got": "${steps.n.v}", "from": "${params.who} via ${run.outcome}"})),
        )],
    )
    .await;
    let root = insert_work(&c, parent, WorkSpec::default()).await;
    let _w = start_worker(&db, &prefix, &FAST).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the dependent's run",
        "SELECT count(*) FROM task_run WHERE success",
        2,
    )
    .await;
    let runs = runs(&c).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].task_id, parent);
    assert_eq!(runs[0].due_work_id, Some(root));
    assert_eq!(runs[1].task_id, child);
    assert_eq!(runs[1].trigger, "dependency");
    assert_eq!(
        runs[1].output.as_ref().unwrap()["steps"]["n"],
        json!({"got": 7, "from": "ada via succeeded", "mine": 1}),
        "edge params render from the parent's run and win over the task's own"
    );
    let traces: Vec<Uuid> = c
        .query("SELECT trace_id FROM task_run ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(traces[0], traces[1], "the chain shares its trace");
    assert!(runs[1].started_at.unwrap() >= runs[0].finished_at);
    assert_eq!(count(&c, "SELECT count(*) FROM due_work").await, 0);
}

#[tokio::test]
async fn conditions_follow_the_parents_final_outcome_after_its_retries() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let http = TestHttp::start().await;
    let parent = insert_task(
        &c,
        TaskSpec {
            pipeline: json!([{"id": "call", "uses": "http.request", "with": {"url": http.url("/fail")}}]),
            max_retries: 2,
            ..TaskSpec::default()
        },
    )
    .await;
    let on_success = insert_task(&c, noop(json!({}))).await;
    let on_failure = insert_task(&c, noop(json!({"error": "${params.error}"}))).await;
    let on_any = insert_task(&c, noop(json!({}))).await;
    set_after(&c, on_success, &[(parent, "success", None)]).await;
    set_after(
        &c,
        on_failure,
        &[(
            parent,
            "failure",
            Some(json!({"error": "${run.error_kind}"})),
        )],
    )
    .await;
    set_after(&c, on_any, &[(parent, "any", None)]).await;
    insert_work(&c, parent, WorkSpec::default()).await;
    let _w = start_worker(&db, &prefix, &FAST).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "the failure and any dependents",
        "SELECT count(*) FROM task_run WHERE success",
        2,
    )
    .await;
    let runs = runs(&c).await;
    let parent_runs: Vec<_> = runs.iter().filter(|r| r.task_id == parent).collect();
    assert_eq!(
        parent_runs.len(),
        3,
        "every attempt ran before anything depended on it: {runs:?}"
    );
    let last_parent = parent_runs.iter().map(|r| r.finished_at).max().unwrap();
    for child in [on_failure, on_any] {
        let mine: Vec<_> = runs.iter().filter(|r| r.task_id == child).collect();
        assert_eq!(mine.len(), 1, "{runs:?}");
        assert!(mine[0].success);
        assert!(
            mine[0].started_at.unwrap() >= last_parent,
            "a dependent starts only after the parent's final outcome"
        );
    }
    let failure_run = runs.iter().find(|r| r.task_id == on_failure).unwrap();
    assert_eq!(
        failure_run.output.as_ref().unwrap()["steps"]["n"]["error"],
        "http_5xx"
    );
    assert!(runs.iter().all(|r| r.task_id != on_success));
    let state: String = c
        .query_one(
            "SELECT state FROM dependency_gate WHERE task_id = $1",
            &[&on_success],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "unmet");
    assert_eq!(
        count(&c, "SELECT count(*) FROM due_work WHERE state = 'dead'").await,
        1,
        "the parent stays in dead work"
    );
}

#[tokio::test]
async fn a_fan_in_runs_once_per_trace_after_all_its_parents_of_that_trace() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let root = insert_task(&c, noop(json!({}))).await;
    let mut middles = Vec::new();
    for i in 0..3 {
        let t = insert_task(
            &c,
            TaskSpec {
                pipeline: json!([{"id": "nap", "uses": "sleep", "with": {"seconds": 0.05 * i as f64}}]),
                ..TaskSpec::default()
            },
        )
        .await;
        set_after(&c, t, &[(root, "success", None)]).await;
        middles.push(t);
    }
    let join = insert_task(&c, noop(json!({}))).await;
    let edges: Vec<(Uuid, &str, Option<Value>)> =
        middles.iter().map(|m| (*m, "success", None)).collect();
    set_after(&c, join, &edges).await;
    for _ in 0..5 {
        insert_work(&c, root, WorkSpec::default()).await;
    }
    let _a = start_worker(&db, &prefix, &FAST).await;
    let _b = start_worker(&db, &prefix, &FAST).await;
    hint(&prefix).await;
    wait_count(
        &c,
        "five joins",
        "SELECT count(*) FROM task_run WHERE success",
        5 * 5,
    )
    .await;
    // No duplicate can show up once no work of these tasks is left.
    wait_for("no work left", Duration::from_secs(30), || async {
        (count(&c, "SELECT count(*) FROM due_work").await == 0).then_some(())
    })
    .await;
    let rows = c
        .query(
            "SELECT task_id, trace_id, started_at, finished_at FROM task_run WHERE success",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 25);
    let mut by_trace: HashMap<Uuid, Vec<RunTimes>> = HashMap::new();
    for r in &rows {
        by_trace.entry(r.get(1)).or_default().push((
            r.get(0),
            r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(2)
                .unwrap(),
            r.get(3),
        ));
    }
    assert_eq!(by_trace.len(), 5, "one trace per root fire");
    for runs in by_trace.values() {
        assert_eq!(runs.len(), 5);
        let joins: Vec<_> = runs.iter().filter(|r| r.0 == join).collect();
        assert_eq!(joins.len(), 1, "the join runs once per trace");
        let last_middle = runs
            .iter()
            .filter(|r| middles.contains(&r.0))
            .map(|r| r.2)
            .max()
            .unwrap();
        assert!(
            joins[0].1 >= last_middle,
            "the join waits for all its parents"
        );
    }
}

/// Workers are SIGKILLed at random moments (before, during and after the statements that settle parents and
/// release their dependents) while 3-step chains run; every chain's dependents get exactly one due_work row.
#[tokio::test]
async fn dependents_are_started_exactly_once_when_workers_are_killed_around_their_parents_completion(
) {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let nap = |s: f64| TaskSpec {
        pipeline: json!([{"id": "nap", "uses": "sleep", "with": {"seconds": s}}]),
        max_retries: 10,
        ..TaskSpec::default()
    };
    let root = insert_task(&c, nap(0.02)).await;
    let middle = insert_task(&c, nap(0.03)).await;
    let leaf = insert_task(&c, nap(0.01)).await;
    set_after(&c, middle, &[(root, "success", None)]).await;
    set_after(&c, leaf, &[(middle, "any", None)]).await;
    const CHAINS: i64 = 150;
    insert_many(&c, root, CHAINS).await;
    let env = [
        ("WORKER_LEASE_SECONDS", "1"),
        ("WORKER_POLL_INTERVAL", "0.1"),
        ("WORKER_CONCURRENCY", "8"),
    ];
    let mut workers = [
        start_worker(&db, &prefix, &env).await,
        start_worker(&db, &prefix, &env).await,
        start_worker(&db, &prefix, &env).await,
    ];
    hint(&prefix).await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut kills = 0;
    let mut i = 0usize;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 97) % 250)).await;
        let k = i % workers.len();
        workers[k].kill().await;
        kills += 1;
        workers[k] = start_worker(&db, &prefix, &env).await;
        hint(&prefix).await;
        i += 1;
    }
    wait_for("every leaf to succeed", Duration::from_secs(90), || async {
        (count(
            &c,
            &format!("SELECT count(*) FROM task_run WHERE success AND task_id = '{leaf}'"),
        )
        .await
            >= CHAINS)
            .then_some(())
    })
    .await;
    // Nothing can run again once no work of the three tasks is left: a claim whose completion died with its
    // worker stays leased until its lease expires, is claimed again and settles; wait for that, not a fixed time.
    wait_for(
        "no work of the chain left",
        Duration::from_secs(30),
        || async {
            (count(
                &c,
                &format!(
                "SELECT count(*) FROM due_work WHERE task_id IN ('{root}', '{middle}', '{leaf}')"
            ),
            )
            .await
                == 0)
                .then_some(())
        },
    )
    .await;
    for (task, what) in [(root, "root"), (middle, "middle"), (leaf, "leaf")] {
        let rows = c
            .query(
                "SELECT trace_id, count(DISTINCT due_work_id), count(*) FILTER (WHERE success)
                   FROM task_run WHERE task_id = $1 GROUP BY trace_id",
                &[&task],
            )
            .await
            .unwrap();
        assert_eq!(rows.len() as i64, CHAINS, "{what}: one trace per chain");
        for r in &rows {
            assert_eq!(r.get::<_, i64>(1), 1, "{what}: one due_work row per trace");
            assert!(r.get::<_, i64>(2) >= 1, "{what}: succeeded in every trace");
        }
    }
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM dependency_gate WHERE state = 'fired'"
        )
        .await,
        2 * CHAINS
    );
    assert_eq!(count(&c, "SELECT count(*) FROM due_work").await, 0);
    let lost = count(
        &c,
        "SELECT count(*) FROM task_run WHERE error_kind = 'lease_expired'",
    )
    .await;
    eprintln!("{kills} kills, {lost} runs lost with their worker");
    assert!(lost > 0, "the kills hit runs in flight");
}
