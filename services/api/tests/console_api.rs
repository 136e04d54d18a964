//! The console's read-only endpoints and asset serving, against the real API (in process), PostgreSQL and
//! Redis: scopes and ownership, keyset pages, bad input, the SSE run feed and its 503 without Redis.

mod common;

use std::time::{Duration, Instant};

use common::{
    cron_task, expect, expect_error, expect_field_error, spawn_app, spawn_app_with, ADMIN,
};
use serde_json::{json, Value};

#[tokio::test]
async fn the_root_redirects_to_the_console_and_assets_are_served_with_a_strict_policy() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 302);
    assert_eq!(r.headers()["location"], "/ui/");
    for path in ["/ui/", "/ui"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        let body = r.text().await.unwrap();
        assert!(body.contains("/ui/app.js"));
    }
    let r = app.http.get(app.url("/ui/app.js")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let again = app
        .http
        .get(app.url("/ui/app.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 304);
    expect_error(
        app.http.get(app.url("/ui/nope.js")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        app.http
            .get(app.url("/ui/..%2fCargo.toml"))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn console_endpoints_need_a_token_and_me_names_the_agent_and_its_scopes() {
    let app = spawn_app().await;
    for path in [
        "/console/me",
        "/console/overview",
        "/console/tasks",
        "/console/dead",
        "/console/runs/stream",
    ] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        expect_error(r, 401, "unauthorized").await;
    }
    let (id, token) = app.agent("reader", &["tasks:read"]).await;
    let me = expect(app.get("/console/me", &token).await, 200).await;
    assert_eq!(me["agent_id"], id);
    assert_eq!(me["name"], "reader");
    assert_eq!(me["scopes"], json!(["tasks:read"]));
    assert_eq!(me["admin"], false);
    let admin = expect(app.get("/console/me", ADMIN).await, 200).await;
    assert_eq!(admin["admin"], true);
    // Without the scope each endpoint names it.
    expect_error(app.get("/console/dead", &token).await, 403, "forbidden").await;
    expect_error(
        app.get("/console/runs/stream", &token).await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn the_overview_counts_only_the_callers_tasks_and_hides_what_its_scopes_do_not_cover() {
    let app = spawn_app().await;
    let (_, ops) = app
        .agent("ops", &["tasks:read", "tasks:write", "runs:read"])
        .await;
    let (_, reader) = app.agent("reader", &["tasks:read"]).await;
    let mine = app.task(&ops, cron_task("mine")).await;
    app.task(ADMIN, cron_task("admin's")).await;
    let paused = app.task(ADMIN, cron_task("paused")).await;
    expect(
        app.post_empty(
            &format!("/tasks/{}/pause", paused["id"].as_str().unwrap()),
            ADMIN,
        )
        .await,
        200,
    )
    .await;
    let sql = app.sql().await;
    let task_id: uuid::Uuid = mine["id"].as_str().unwrap().parse().unwrap();
    sql.execute(
        "INSERT INTO task_run (task_id, attempt, trigger, scheduled_for, started_at, finished_at, success)
         SELECT $1, 1, 'schedule', now() - make_interval(mins => g), now() - make_interval(mins => g),
                now() - make_interval(mins => g), g % 3 <> 0
           FROM generate_series(1, 120) g",
        &[&task_id],
    )
    .await
    .unwrap();

    let o = expect(app.get("/console/overview", &ops).await, 200).await;
    assert_eq!(o["tasks"]["active"], 1);
    assert_eq!(o["tasks"]["paused"], 0);
    // Minutes 1..59 are within the last hour: 59 runs, of which g % 3 == 0 failed (19).
    assert_eq!(o["runs"]["last_hour"]["failed"], 19);
    assert_eq!(o["runs"]["last_hour"]["succeeded"], 40);
    assert_eq!(o["runs"]["last_day"]["failed"], 40);
    assert_eq!(o["runs"]["last_day"]["succeeded"], 80);
    assert_eq!(o["runs"]["by_hour"].as_array().unwrap().len(), 24);
    assert_eq!(o["workers"], Value::Null, "workers are for admins");
    let next: Vec<&str> = o["next_fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["title"].as_str().unwrap())
        .collect();
    assert_eq!(next, vec!["mine"]);

    let r = expect(app.get("/console/overview", &reader).await, 200).await;
    assert_eq!(r["runs"], Value::Null, "runs need runs:read");
    assert_eq!(r["tasks"]["active"], 0);

    let a = expect(app.get("/console/overview", ADMIN).await, 200).await;
    assert_eq!(a["tasks"]["active"], 2);
    assert_eq!(a["tasks"]["paused"], 1);
    assert_eq!(a["runs"]["last_day"]["succeeded"], 80);
    assert!(a["workers"]["total"].is_i64());
    assert_eq!(a["next_fires"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_task_list_walks_every_task_once_by_keyset_and_filters_and_searches() {
    let app = spawn_app().await;
    let (_, ops) = app.agent("ops", &["tasks:read", "tasks:write"]).await;
    for i in 0..7 {
        let mut t = cron_task(&format!("report {i}"));
        if i % 2 == 0 {
            t["timezone"] = json!("Europe/Berlin");
        }
        app.task(ADMIN, t).await;
    }
    app.task(&ops, cron_task("ops 50%_off")).await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(c) => format!("/console/tasks?limit=3&after={c}"),
            None => "/console/tasks?limit=3".to_string(),
        };
        let page = expect(app.get(&path, ADMIN).await, 200).await;
        pages += 1;
        for t in page["items"].as_array().unwrap() {
            seen.push(t["title"].as_str().unwrap().to_string());
            assert!(t["owner_name"].is_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 8);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "no task twice: {seen:?}");
    assert_eq!(seen[0], "ops 50%_off", "newest first");

    let berlin = expect(
        app.get("/console/tasks?timezone=Europe/Berlin", ADMIN)
            .await,
        200,
    )
    .await;
    assert_eq!(berlin["items"].as_array().unwrap().len(), 4);
    // LIKE wildcards in a search are literal.
    let search = expect(app.get("/console/tasks?q=50%25_", ADMIN).await, 200).await;
    assert_eq!(search["items"].as_array().unwrap().len(), 1);
    let none = expect(app.get("/console/tasks?q=%25", ADMIN).await, 200).await;
    assert_eq!(
        none["items"].as_array().unwrap().len(),
        1,
        "only the title with a literal %"
    );
    // A non-admin sees only its own, whatever it asks for.
    let own = expect(app.get("/console/tasks", &ops).await, 200).await;
    assert_eq!(own["items"].as_array().unwrap().len(), 1);
    let facets = expect(app.get("/console/tasks/facets", &ops).await, 200).await;
    assert_eq!(facets["timezones"], json!(["UTC"]));
    assert_eq!(facets["owners"].as_array().unwrap().len(), 1);

    for (path, field) in [
        ("/console/tasks?after=nonsense", "after"),
        ("/console/tasks?after=99999999999999999999_x", "after"),
        (
            "/console/tasks?after=-99999999999999999_00000000-0000-0000-0000-000000000000",
            "after",
        ),
        ("/console/tasks?limit=0", "limit"),
        ("/console/tasks?status=sleeping", "status"),
        ("/console/tasks?schedule_kind=weekly", "schedule_kind"),
        ("/console/tasks?created_by=me", "created_by"),
        ("/console/dead?after=1_x", "after"),
        ("/console/dead?limit=1000", "limit"),
    ] {
        expect_field_error(app.get(path, ADMIN).await, field).await;
    }
}

#[tokio::test]
async fn task_runs_are_keyset_pages_and_attempts_group_the_runs_of_one_fire() {
    let app = spawn_app().await;
    let (_, other) = app.agent("other", &["tasks:read", "runs:read"]).await;
    let task = app.task(ADMIN, cron_task("runs")).await;
    let id: uuid::Uuid = task["id"].as_str().unwrap().parse().unwrap();
    let sql = app.sql().await;
    sql.execute(
        "INSERT INTO task_run (task_id, due_work_id, attempt, trigger, scheduled_for, started_at, finished_at, success, error, output)
         SELECT $1, 1000 + (g - 1) / 3, 1 + (g - 1) % 3, 'schedule', now(), now(), now(), (g - 1) % 3 = 2,
                CASE WHEN (g - 1) % 3 = 2 THEN NULL ELSE 'boom' END, '{\"steps\": {}}'
           FROM generate_series(1, 12) g",
        &[&id],
    )
    .await
    .unwrap();
    let first = expect(
        app.get(&format!("/console/tasks/{id}/runs?limit=5"), ADMIN)
            .await,
        200,
    )
    .await;
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = expect(
        app.get(
            &format!("/console/tasks/{id}/runs?limit=50&before={cursor}"),
            ADMIN,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 7);
    assert_eq!(second["next_cursor"], Value::Null);
    let newest = items[0]["id"].as_i64().unwrap();
    let attempts = expect(
        app.get(&format!("/console/runs/{newest}/attempts"), ADMIN)
            .await,
        200,
    )
    .await;
    let list = attempts["items"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(
        list.iter()
            .map(|r| r["attempt"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(attempts["task_title"], "runs");
    // Another agent's task and runs are not found.
    expect_error(
        app.get(&format!("/console/tasks/{id}/runs"), &other).await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        app.get(&format!("/console/runs/{newest}/attempts"), &other)
            .await,
        404,
        "not_found",
    )
    .await;
    expect_field_error(
        app.get(&format!("/console/tasks/{id}/runs?before=x"), ADMIN)
            .await,
        "before",
    )
    .await;
    expect_field_error(app.get("/console/runs/0/attempts", ADMIN).await, "id").await;
}

#[tokio::test]
async fn the_timeline_marks_the_dst_transition_and_the_fire_it_moved() {
    let app = spawn_app().await;
    let mut body = cron_task("nightly");
    body["schedule_expr"] = json!("30 2 * * *");
    body["timezone"] = json!("America/New_York");
    let task = app.task(ADMIN, body).await;
    let id = task["id"].as_str().unwrap();
    // 400 daily fires cover at least one spring-forward gap whatever today is.
    let tl = expect(
        app.get(&format!("/console/tasks/{id}/timeline?count=400"), ADMIN)
            .await,
        200,
    )
    .await;
    assert_eq!(tl["fires"].as_array().unwrap().len(), 400);
    let gaps: Vec<&Value> = tl["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "gap")
        .collect();
    assert!(!gaps.is_empty(), "{tl}");
    assert_eq!(gaps[0]["offset_before_seconds"], -5 * 3600);
    assert_eq!(gaps[0]["offset_after_seconds"], -4 * 3600);
    let moved: Vec<&Value> = tl["fires"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["dst"]["kind"] == "gap")
        .collect();
    assert!(!moved.is_empty());
    assert_eq!(
        moved[0]["at"], gaps[0]["at"],
        "the 02:30 fire runs at the transition"
    );
    assert!(moved[0]["dst"]["intended_local"]
        .as_str()
        .unwrap()
        .ends_with("02:30:00"));
    expect_field_error(
        app.get(&format!("/console/tasks/{id}/timeline?count=501"), ADMIN)
            .await,
        "count",
    )
    .await;
}

/// Reads the SSE body until `done` says so, or fails after `timeout`.
async fn read_events(
    res: &mut reqwest::Response,
    timeout: Duration,
    mut done: impl FnMut(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut text = String::new();
    while !done(&text) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no such event within {timeout:?}; got:\n{text}"
        );
        match tokio::time::timeout(left, res.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) => panic!("the stream ended; got:\n{text}"),
            Ok(Err(e)) => panic!("stream error {e}; got:\n{text}"),
            Err(_) => panic!("no such event within {timeout:?}; got:\n{text}"),
        }
    }
    text
}

#[tokio::test]
async fn the_run_stream_sends_run_events_of_the_callers_tasks_only() {
    let app = spawn_app().await;
    let (_, ops) = app
        .agent("ops", &["tasks:read", "tasks:write", "runs:read"])
        .await;
    let mine = app.task(&ops, cron_task("mine")).await;
    let theirs = app.task(ADMIN, cron_task("theirs")).await;
    let mut res = app
        .http
        .get(app.url("/console/runs/stream"))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    read_events(&mut res, Duration::from_secs(10), |t| {
        t.contains("event: hello")
    })
    .await;
    let client = redis::Client::open(app.redis_url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for (task, n) in [(&theirs, 7), (&mine, 8)] {
        let _: String = redis::cmd("XADD")
            .arg(format!("{}orrery:runs", app.prefix))
            .arg("*")
            .arg("run_id")
            .arg(n)
            .arg("due_work_id")
            .arg(n)
            .arg("task_id")
            .arg(task["id"].as_str().unwrap())
            .arg("event")
            .arg("succeeded")
            .arg("attempt")
            .arg(1)
            .arg("worker_id")
            .arg("w1")
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let mine_id = mine["id"].as_str().unwrap().to_string();
    let text = read_events(&mut res, Duration::from_secs(20), |t| t.contains(&mine_id)).await;
    assert!(text.contains("event: run"), "{text}");
    assert!(text.contains("\"due_work_id\":8"), "{text}");
    assert!(
        !text.contains(theirs["id"].as_str().unwrap()),
        "another agent's runs are filtered out: {text}"
    );
    // The admin sees both, resuming after a given entry with Last-Event-ID.
    let mut all = app
        .http
        .get(app.url("/console/runs/stream"))
        .bearer_auth(ADMIN)
        .header("last-event-id", "0-0")
        .send()
        .await
        .unwrap();
    let text = read_events(&mut all, Duration::from_secs(20), |t| {
        t.contains(&mine_id) && t.contains(theirs["id"].as_str().unwrap())
    })
    .await;
    assert!(text.contains("event: hello"));
}

#[tokio::test]
async fn without_redis_the_run_stream_is_a_503_and_the_overview_still_answers() {
    let app = spawn_app_with(&[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let body = expect_error(
        app.get("/console/runs/stream", ADMIN).await,
        503,
        "unavailable",
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("poll"));
    expect(app.get("/console/overview", ADMIN).await, 200).await;
}
