//! External workers: POST /jobs/claim, heartbeat, complete, fail (docs/external-workers.md).

use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

fn external_task(title: &str, queue: &str) -> Value {
    json!({
        "title": title,
        "schedule_kind": "event",
        "schedule_expr": format!("ext.{queue}"),
        "max_retries": 1,
        "backoff_strategy": "fixed",
        "payload": {"params": {"to": "ada@example.com", "n": 1},
                    "pipeline": [{"id": "send", "uses": "external", "with": {"queue": queue}}]}
    })
}

async fn run_now(app: &TestApp, token: &str, task: &Value, params: Value) -> i64 {
    let id = task["id"].as_str().unwrap();
    let r = expect(
        app.post(
            &format!("/tasks/{id}/run_now"),
            token,
            json!({"params": params}),
        )
        .await,
        202,
    )
    .await;
    r["due_work_id"].as_i64().unwrap()
}

async fn claim(app: &TestApp, token: &str, body: Value) -> Vec<Value> {
    let r = expect(app.post("/jobs/claim", token, body).await, 200).await;
    r["jobs"].as_array().unwrap().clone()
}

async fn expire_lease(app: &TestApp, job: i64) {
    app.sql()
        .await
        .execute(
            "UPDATE due_work SET locked_until = now() - interval '1 second' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_external_job_is_claimed_completed_and_recorded_like_any_run() {
    let app = spawn_app().await;
    let (_, worker) = app.agent("mailer", &["jobs:work", "tasks:write"]).await;
    let task = app.task(&worker, external_task("mail", "emails")).await;
    let task_id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    let stored: Option<String> = app
        .sql()
        .await
        .query_one("SELECT external_queue FROM task WHERE id = $1", &[&task_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.as_deref(), Some("emails"));

    let job_id = run_now(&app, &worker, &task, json!({"n": 2})).await;
    // Another queue's claim does not see it.
    assert!(claim(&app, &worker, json!({"queues": ["other"]}))
        .await
        .is_empty());
    let jobs = claim(
        &app,
        &worker,
        json!({"queues": ["emails", "other"], "max_jobs": 10, "client_id": "host-1", "lease_seconds": 30}),
    )
    .await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    assert_eq!(job["job_id"], job_id);
    assert_eq!(job["task_id"], task["id"]);
    assert_eq!(job["queue"], "emails");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["max_attempts"], 2);
    assert_eq!(job["trigger"], "manual");
    assert_eq!(job["params"], json!({"to": "ada@example.com", "n": 2}));
    assert_eq!(job["idempotency_key"], job_id.to_string());
    let token = job["fencing_token"].as_i64().unwrap();
    let locked_by: String = app
        .sql()
        .await
        .query_one("SELECT locked_by FROM due_work WHERE id = $1", &[&job_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(locked_by, "external:mailer:host-1");
    // Nothing else to claim while it is leased.
    assert!(claim(&app, &worker, json!({"queues": ["emails"]}))
        .await
        .is_empty());

    let lease = expect(
        app.post(
            &format!("/jobs/{job_id}/heartbeat"),
            &worker,
            json!({"fencing_token": token, "lease_seconds": 120}),
        )
        .await,
        200,
    )
    .await;
    let until =
        chrono::DateTime::parse_from_rfc3339(lease["lease_expires_at"].as_str().unwrap()).unwrap();
    assert!(
        until > chrono::Utc::now() + chrono::Duration::seconds(100),
        "{lease}"
    );

    let done = expect(
        app.post(
            &format!("/jobs/{job_id}/complete"),
            &worker,
            json!({"fencing_token": token, "output": {"message_id": "m-1"}}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(done["outcome"], "succeeded");
    let run = app
        .sql()
        .await
        .query_one(
            "SELECT success, attempt, worker_id, output, started_at IS NOT NULL AND started_at <= finished_at
               FROM task_run WHERE due_work_id = $1",
            &[&job_id],
        )
        .await
        .unwrap();
    assert!(run.get::<_, bool>(0));
    assert_eq!(run.get::<_, i32>(1), 1);
    assert_eq!(run.get::<_, String>(2), "external:mailer:host-1");
    assert_eq!(
        run.get::<_, Value>(3),
        json!({"steps": {"send": {"message_id": "m-1"}}, "skipped": []})
    );
    assert!(run.get::<_, bool>(4));
    let left: i64 = app
        .sql()
        .await
        .query_one("SELECT count(*) FROM due_work WHERE id = $1", &[&job_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // The same completion again: the job is gone.
    expect_error(
        app.post(
            &format!("/jobs/{job_id}/complete"),
            &worker,
            json!({"fencing_token": token}),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    // The run is visible like any other.
    let runs = expect(
        app.get(&format!("/runs?task_id={task_id}"), ADMIN).await,
        200,
    )
    .await;
    assert_eq!(runs["items"][0]["worker_id"], "external:mailer:host-1");
}

#[tokio::test]
async fn a_result_after_the_lease_was_taken_over_is_refused_with_409() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, external_task("mail", "q1")).await;
    let job_id = run_now(&app, ADMIN, &task, json!({})).await;
    let first = claim(&app, ADMIN, json!({"queues": ["q1"], "client_id": "a"})).await;
    let old = first[0]["fencing_token"].as_i64().unwrap();
    expire_lease(&app, job_id).await;
    let second = claim(&app, ADMIN, json!({"queues": ["q1"], "client_id": "b"})).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0]["attempt"], 2);
    assert_eq!(second[0]["trigger"], "retry");
    let new = second[0]["fencing_token"].as_i64().unwrap();
    assert_ne!(old, new);
    // The lost attempt is on record, as for the built-in worker.
    let lost: String = app
        .sql()
        .await
        .query_one(
            "SELECT error_kind FROM task_run WHERE due_work_id = $1 AND attempt = 1",
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(lost, "lease_expired");

    for (path, body) in [
        (
            "complete",
            json!({"fencing_token": old, "output": {"stale": true}}),
        ),
        ("fail", json!({"fencing_token": old, "error": "stale"})),
        ("heartbeat", json!({"fencing_token": old})),
    ] {
        let r = expect_error(
            app.post(&format!("/jobs/{job_id}/{path}"), ADMIN, body)
                .await,
            409,
            "conflict",
        )
        .await;
        assert_eq!(r["details"]["reason"], "fencing_token_mismatch", "{r}");
    }
    // Nothing changed: the new holder still holds it and completes it.
    let runs: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM task_run WHERE due_work_id = $1",
            &[&job_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1);
    let done = expect(
        app.post(
            &format!("/jobs/{job_id}/complete"),
            ADMIN,
            json!({"fencing_token": new}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(done["outcome"], "succeeded");
}

#[tokio::test]
async fn failures_retry_with_the_tasks_backoff_then_the_job_is_dead() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, external_task("mail", "q2")).await;
    let job_id = run_now(&app, ADMIN, &task, json!({})).await;
    let jobs = claim(&app, ADMIN, json!({"queues": ["q2"]})).await;
    let token = jobs[0]["fencing_token"].as_i64().unwrap();
    let r = expect(
        app.post(
            &format!("/jobs/{job_id}/fail"),
            ADMIN,
            json!({"fencing_token": token, "error": "SMTP 451", "retryable": true}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(r["outcome"], "retry", "{r}");
    assert!(r["retry_at"].is_string());
    // A second settlement with the same token: the job is no longer leased.
    let again = expect_error(
        app.post(
            &format!("/jobs/{job_id}/complete"),
            ADMIN,
            json!({"fencing_token": token}),
        )
        .await,
        409,
        "conflict",
    )
    .await;
    assert_eq!(again["details"]["reason"], "not_leased");
    let (kind, ready_later): (String, bool) = {
        let row = app
            .sql()
            .await
            .query_one(
                "SELECT last_error_kind, ready_at > now() FROM due_work WHERE id = $1",
                &[&job_id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(kind, "external");
    assert!(ready_later, "the retry waits for the backoff");
    app.sql()
        .await
        .execute(
            "UPDATE due_work SET ready_at = now() WHERE id = $1",
            &[&job_id],
        )
        .await
        .unwrap();
    let jobs = claim(&app, ADMIN, json!({"queues": ["q2"]})).await;
    assert_eq!(jobs[0]["attempt"], 2);
    let token = jobs[0]["fencing_token"].as_i64().unwrap();
    let r = expect(
        app.post(
            &format!("/jobs/{job_id}/fail"),
            ADMIN,
            json!({"fencing_token": token, "error": "still down", "output": {"tries": 2}}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(r["outcome"], "dead", "max_retries 1: two attempts");
    let dead = expect(app.get("/queue/dead", ADMIN).await, 200).await;
    assert_eq!(dead["items"][0]["id"], job_id, "{dead}");
    let runs = app
        .sql()
        .await
        .query(
            "SELECT success, error, error_kind, output FROM task_run WHERE due_work_id = $1 ORDER BY attempt",
            &[&job_id],
        )
        .await
        .unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1].get::<_, String>(1), "still down");
    assert_eq!(runs[1].get::<_, String>(2), "external");
    assert_eq!(
        runs[1].get::<_, Value>(3),
        json!({"steps": {"send": {"tries": 2}}, "skipped": []})
    );

    // Replayed, it is an external job again; a non-retryable failure is dead at once.
    expect(
        app.post_empty(&format!("/queue/dead/{job_id}/replay"), ADMIN)
            .await,
        202,
    )
    .await;
    let jobs = claim(&app, ADMIN, json!({"queues": ["q2"]})).await;
    assert_eq!(jobs[0]["attempt"], 1);
    let token = jobs[0]["fencing_token"].as_i64().unwrap();
    let r = expect(
        app.post(
            &format!("/jobs/{job_id}/fail"),
            ADMIN,
            json!({"fencing_token": token, "error": "bad address", "retryable": false}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(r["outcome"], "dead");
}

#[tokio::test]
async fn a_waiting_claim_gets_work_made_ready_while_it_waits() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, external_task("mail", "q3")).await;
    let waiting = {
        let http = app.http.clone();
        let url = app.url("/jobs/claim");
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(ADMIN)
                .json(&json!({"queues": ["q3"], "wait_seconds": 20}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    // The claim is waiting (its first look found nothing) before the work exists.
    tokio::task::yield_now().await;
    let job_id = run_now(&app, ADMIN, &task, json!({})).await;
    let answer = waiting.await.unwrap();
    assert_eq!(answer["jobs"][0]["job_id"], job_id, "{answer}");
    // An empty wait answers an empty list.
    assert!(
        claim(&app, ADMIN, json!({"queues": ["q3"], "wait_seconds": 1}))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn the_built_in_worker_never_claims_external_work() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, external_task("mail", "q4")).await;
    let builtin = app.task(ADMIN, cron_task("plain")).await;
    let external_job = run_now(&app, ADMIN, &task, json!({})).await;
    let plain_job = run_now(&app, ADMIN, &builtin, json!({})).await;
    let pool = app.db.pool();
    let client = pool.get().await.unwrap();
    let claimed = orrery::queue::claim_batch(&client, "w", 60.0, 100, None, None, false, true)
        .await
        .unwrap();
    let ids: Vec<i64> = claimed.claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![plain_job]);
    assert!(!ids.contains(&external_job));
    // Nor does it wake up for it: nothing else is pending for the built-in worker.
    let (wake, _) = orrery::queue::seconds_until_next_wake(&client, None, 0.0)
        .await
        .unwrap();
    assert!(wake.is_none() || wake.unwrap() > 60.0, "{wake:?}");
    // The external claim takes it.
    let jobs = claim(&app, ADMIN, json!({"queues": ["q4"]})).await;
    assert_eq!(jobs[0]["job_id"], external_job);
}

#[tokio::test]
async fn editing_the_pipeline_moves_pending_work_between_queues_and_the_built_in_worker() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, external_task("mail", "q5")).await;
    let id = task["id"].as_str().unwrap();
    let job_id = run_now(&app, ADMIN, &task, json!({})).await;
    let r = app
        .patch(
            &format!("/tasks/{id}"),
            ADMIN,
            json!({"payload": {"pipeline": [{"id": "send", "uses": "external", "with": {"queue": "q6"}}]}}),
        )
        .await;
    expect(r, 200).await;
    assert!(claim(&app, ADMIN, json!({"queues": ["q5"]}))
        .await
        .is_empty());
    let jobs = claim(&app, ADMIN, json!({"queues": ["q6"]})).await;
    assert_eq!(jobs[0]["job_id"], job_id);
}

#[tokio::test]
async fn jobs_need_the_jobs_work_scope_and_only_reach_the_callers_own_tasks() {
    let app = spawn_app().await;
    let (_, reader) = app.agent("reader", &["tasks:read", "tasks:write"]).await;
    expect_error(
        app.post("/jobs/claim", &reader, json!({"queues": ["q7"]}))
            .await,
        403,
        "forbidden",
    )
    .await;
    let (_, owner) = app.agent("owner", &["jobs:work", "tasks:write"]).await;
    let (_, other) = app.agent("other", &["jobs:work"]).await;
    let task = app.task(&owner, external_task("mail", "q7")).await;
    let job_id = run_now(&app, &owner, &task, json!({})).await;
    assert!(claim(&app, &other, json!({"queues": ["q7"]}))
        .await
        .is_empty());
    let jobs = claim(&app, &owner, json!({"queues": ["q7"]})).await;
    let token = jobs[0]["fencing_token"].as_i64().unwrap();
    for path in ["complete", "heartbeat"] {
        expect_error(
            app.post(
                &format!("/jobs/{job_id}/{path}"),
                &other,
                json!({"fencing_token": token}),
            )
            .await,
            404,
            "not_found",
        )
        .await;
    }
    // Admin implies jobs:work.
    expect(
        app.post(
            &format!("/jobs/{job_id}/complete"),
            ADMIN,
            json!({"fencing_token": token}),
        )
        .await,
        200,
    )
    .await;
}

#[tokio::test]
async fn bad_job_requests_are_422_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, external_task("mail", "q8")).await;
    let job_id = run_now(&app, ADMIN, &task, json!({})).await;
    for (body, field) in [
        (json!({}), "queues"),
        (json!({"queues": []}), "queues"),
        (json!({"queues": "q8"}), "queues"),
        (json!({"queues": ["q8", "no spaces"]}), "queues[1]"),
        (json!({"queues": ["q8"], "max_jobs": 0}), "max_jobs"),
        (json!({"queues": ["q8"], "max_jobs": 101}), "max_jobs"),
        (
            json!({"queues": ["q8"], "wait_seconds": 31}),
            "wait_seconds",
        ),
        (
            json!({"queues": ["q8"], "lease_seconds": 0}),
            "lease_seconds",
        ),
        (json!({"queues": ["q8"], "client_id": "a b"}), "client_id"),
        (json!({"queues": ["q8"], "surprise": 1}), "surprise"),
    ] {
        expect_field_error(app.post("/jobs/claim", ADMIN, body).await, field).await;
    }
    let path = format!("/jobs/{job_id}/fail");
    for (body, field) in [
        (json!({"error": "x"}), "fencing_token"),
        (json!({"fencing_token": "1", "error": "x"}), "fencing_token"),
        (json!({"fencing_token": 1}), "error"),
        (json!({"fencing_token": 1, "error": ""}), "error"),
        (
            json!({"fencing_token": 1, "error": "x", "retryable": "yes"}),
            "retryable",
        ),
        (
            json!({"fencing_token": 1, "error": "x", "output": {"a": "\u{0}"}}),
            "output.a",
        ),
    ] {
        expect_field_error(app.post(&path, ADMIN, body).await, field).await;
    }
    expect_field_error(
        app.post("/jobs/abc/complete", ADMIN, json!({"fencing_token": 1}))
            .await,
        "id",
    )
    .await;
    expect_error(
        app.post("/jobs/999999/complete", ADMIN, json!({"fencing_token": 1}))
            .await,
        404,
        "not_found",
    )
    .await;
    // None of that claimed or settled anything.
    let row = app
        .sql()
        .await
        .query_one(
            "SELECT locked_by IS NULL, attempt FROM due_work WHERE id = $1",
            &[&job_id],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(row.get::<_, i32>(1), 0);
}

#[tokio::test]
async fn external_and_shell_steps_are_validated_when_the_task_is_written() {
    let app = spawn_app().await;
    let with_pipeline = |pipeline: Value| {
        let mut t = cron_task("v");
        t["payload"] = json!({"pipeline": pipeline});
        t
    };
    for (pipeline, field) in [
        (
            json!([{"id": "a", "uses": "external", "with": {"queue": "q"}}, {"id": "b", "uses": "noop"}]),
            "payload.pipeline[0].uses",
        ),
        (
            json!([{"id": "a", "uses": "external", "with": {}}]),
            "payload.pipeline[0].with.queue",
        ),
        (
            json!([{"id": "a", "uses": "external", "with": {"queue": "${params.q}"}}]),
            "payload.pipeline[0].with.queue",
        ),
        (
            json!([{"id": "a", "uses": "external", "with": {"queue": "q"}, "if": "params.x"}]),
            "payload.pipeline[0].if",
        ),
        (
            json!([{"id": "a", "uses": "shell", "with": {"program": "/bin/echo", "args": ["ok", 2]}}]),
            "payload.pipeline[0].with.args[1]",
        ),
        (
            json!([{"id": "a", "uses": "shell", "with": {"args": ["x"]}}]),
            "payload.pipeline[0].with.program",
        ),
        (
            json!([{"id": "a", "uses": "shell", "with": {"program": "./run.sh"}}]),
            "payload.pipeline[0].with.program",
        ),
        (
            json!([{"id": "a", "uses": "shell", "with": {"shell": true, "program": "/bin/ls", "command": "ls"}}]),
            "payload.pipeline[0].with.program",
        ),
        (
            json!([{"id": "a", "uses": "shell", "with": {"shell": true}}]),
            "payload.pipeline[0].with.command",
        ),
        (
            json!([{"id": "a", "uses": "shell", "with": {"program": "env", "env": {"1BAD": "x"}}}]),
            "payload.pipeline[0].with.env.1BAD",
        ),
        (
            json!([{"id": "a", "uses": "shell", "with": {"program": "env", "cwd": "tmp"}}]),
            "payload.pipeline[0].with.cwd",
        ),
        (
            json!([{"id": "a", "uses": "shell", "with": {"program": "env", "retryable": "no"}}]),
            "payload.pipeline[0].with.retryable",
        ),
        (
            json!([{"id": "a", "uses": "shell", "with": {"program": "env", "timeout": 3}}]),
            "payload.pipeline[0].with.timeout",
        ),
    ] {
        expect_field_error(
            app.post("/tasks", ADMIN, with_pipeline(pipeline)).await,
            field,
        )
        .await;
    }
    let count: i64 = app
        .sql()
        .await
        .query_one("SELECT count(*) FROM task", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    app.task(
        ADMIN,
        with_pipeline(json!([{"id": "a", "uses": "shell", "timeout_seconds": 5, "with": {
            "program": "/bin/echo", "args": ["${params.x}", "b"], "env": {"MODE": "x"}, "cwd": "/tmp",
            "stdin": "${params}", "retryable": false}}])),
    )
    .await;
    app.task(
        ADMIN,
        with_pipeline(json!([{"id": "a", "uses": "shell", "with": {"shell": true, "command": "echo $MODE | wc -c"}}])),
    )
    .await;
}

#[tokio::test]
async fn a_claim_over_several_queues_takes_the_most_urgent_job_first() {
    let app = spawn_app().await;
    let mut low = external_task("low", "qa");
    low["priority"] = json!(9);
    let mut high = external_task("high", "qb");
    high["priority"] = json!(1);
    let low = app.task(ADMIN, low).await;
    let high = app.task(ADMIN, high).await;
    let mut lows = Vec::new();
    for _ in 0..3 {
        lows.push(run_now(&app, ADMIN, &low, json!({})).await);
    }
    let urgent = run_now(&app, ADMIN, &high, json!({})).await;
    let first = claim(&app, ADMIN, json!({"queues": ["qa", "qb"]})).await;
    assert_eq!(first[0]["job_id"], urgent);
    let rest = claim(&app, ADMIN, json!({"queues": ["qa", "qb"], "max_jobs": 10})).await;
    let ids: Vec<i64> = rest.iter().map(|j| j["job_id"].as_i64().unwrap()).collect();
    assert_eq!(ids, lows, "the rest in ready order");
}

#[tokio::test]
async fn concurrent_claims_of_one_queue_take_distinct_jobs_and_none_comes_back_empty() {
    let app = spawn_app().await;
    let task = app.task(ADMIN, external_task("many", "q9")).await;
    let mut all = Vec::new();
    for _ in 0..24 {
        all.push(run_now(&app, ADMIN, &task, json!({})).await);
    }
    let claims = (0..4).map(|i| {
        let http = app.http.clone();
        let url = app.url("/jobs/claim");
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(ADMIN)
                .json(&json!({"queues": ["q9"], "max_jobs": 6, "client_id": format!("c{i}")}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    });
    let mut got: Vec<i64> = Vec::new();
    for claim in claims {
        let answer = claim.await.unwrap();
        let jobs = answer["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 6, "each claim gets its share: {answer}");
        got.extend(jobs.iter().map(|j| j["job_id"].as_i64().unwrap()));
    }
    got.sort_unstable();
    all.sort_unstable();
    assert_eq!(got, all, "every job claimed exactly once");
}
