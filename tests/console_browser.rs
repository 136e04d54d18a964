//! The operator console in a real browser (headless Chromium driven over WebDriver), against the real API,
//! scheduler and worker binaries as processes, each test with its own database and Redis prefix.
//!
//! Needs Debian's `chromium` and `chromium-driver` (ops/test.sh installs them) and the workspace binaries
//! (`cargo build --workspace --bins`). Every wait polls the DOM with a deadline; nothing sleeps a fixed time.
//!
//! `cargo test -p orrery-tests --test console_browser -- --ignored screenshots` refreshes docs/screenshots/.

#[path = "browser/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::Duration;

use orrery_testing::{base_env, free_port, redis_prefix, wait_for, Service, TestDb};
use serde_json::{json, Value};
use webdriver::{Browser, Driver};

const ADMIN: &str = "console-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

struct Stack {
    base: String,
    http: reqwest::Client,
    _services: Vec<Service>,
    _db: TestDb,
}

impl Stack {
    /// The API alone, or the API, the scheduler and a worker.
    async fn start(with_workers: bool) -> Stack {
        let db = TestDb::new().await;
        let prefix = redis_prefix();
        let mut env = base_env(&db, &prefix);
        env.push(("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()));
        env.push(("API_WORKERS".into(), "2".into()));
        let api_port = free_port();
        let api = Service::start("orrery-api", api_port, &env).await;
        api.wait_ready(WAIT).await;
        let mut services = vec![api];
        if with_workers {
            let scheduler = Service::start("orrery-scheduler", free_port(), &env).await;
            let worker = Service::start("orrery-worker", free_port(), &env).await;
            scheduler.wait_ready(WAIT).await;
            worker.wait_ready(WAIT).await;
            services.push(scheduler);
            services.push(worker);
        }
        Stack {
            base: format!("http://127.0.0.1:{api_port}"),
            http: reqwest::Client::new(),
            _services: services,
            _db: db,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, token, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let (status, res) = self
            .call(reqwest::Method::POST, path, token, Some(body))
            .await;
        assert!((200..300).contains(&status), "POST {path}: {status} {res}");
        res
    }

    async fn task(&self, token: &str, title: &str, extra: Value) -> String {
        let mut body = json!({
            "title": title, "schedule_kind": "cron", "schedule_expr": "0 9 * * MON-FRI",
            "timezone": "Europe/Berlin",
            "payload": {"params": {}, "pipeline": [{"id": "hello", "uses": "noop", "with": {"n": 1}}]},
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.post("/tasks", token, body).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A new agent with `scopes`; returns its token.
    async fn agent(&self, name: &str, scopes: &[&str]) -> String {
        self.post("/agents", ADMIN, json!({"name": name, "scopes": scopes}))
            .await["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn ui(&self, hash: &str) -> String {
        format!("{}/ui/{hash}", self.base)
    }
}

async fn browser(width: u32, height: u32) -> Browser {
    Driver::start().await.browser(width, height).await
}

/// Signs in through the form and waits for the shell.
async fn sign_in(b: &Browser, stack: &Stack, token: &str) {
    b.goto(&stack.ui("")).await;
    b.fill("#token", token).await;
    b.click("#signin-submit").await;
    b.wait_js(
        "the console shell",
        WAIT,
        "return document.querySelector('#agent-name')?.textContent",
    )
    .await;
}

#[tokio::test]
async fn a_bad_token_is_refused_and_an_agent_without_admin_sees_only_its_own_tasks() {
    let stack = Stack::start(false).await;
    let ops = stack
        .agent("ops-team", &["tasks:read", "tasks:write", "runs:read"])
        .await;
    stack.task(&ops, "ops nightly report", json!({})).await;
    stack.task(ADMIN, "admin secret rotation", json!({})).await;
    let b = browser(1280, 900).await;

    // A token that is not valid: refused, with the API's message, and nothing kept.
    b.goto(&stack.ui("")).await;
    b.fill("#token", &format!("orr_{}", "0".repeat(64))).await;
    b.click("#signin-submit").await;
    let refused = b
        .wait_js(
            "the sign-in error",
            WAIT,
            "const e = document.querySelector('#signin-error'); return e && !e.hidden && e.textContent",
        )
        .await;
    let refused = refused.as_str().unwrap();
    assert!(refused.contains("refused"), "{refused}");
    assert!(refused.contains("invalid or revoked token"), "{refused}");
    let kept = b
        .js(
            "return [sessionStorage.length, location.href, document.querySelector('#agent-name') === null]",
            vec![],
        )
        .await;
    assert_eq!(kept[0], 0, "nothing is stored for a refused token");
    assert!(!kept[1].as_str().unwrap().contains("orr_"));
    assert_eq!(kept[2], true, "still on the sign-in page");

    // The agent signs in and sees its own task only.
    sign_in(&b, &stack, &ops).await;
    assert_eq!(b.text("#agent-name").await, "ops-team");
    b.goto(&stack.ui("#/tasks")).await;
    let titles = b
        .wait_js(
            "the task list",
            WAIT,
            "const rows = [...document.querySelectorAll('#task-list tr[data-task-id] .task-link')];
             return rows.length ? rows.map(r => r.textContent) : null",
        )
        .await;
    assert_eq!(titles, json!(["ops nightly report"]));
    // Admin pages are not offered, and say why when opened directly.
    let nav = b
        .js(
            "return [...document.querySelectorAll('[data-nav]')].map(a => a.dataset.nav)",
            vec![],
        )
        .await;
    assert_eq!(nav, json!(["overview", "tasks"]));
    b.goto(&stack.ui("#/dead")).await;
    b.wait_js(
        "the admin-only notice",
        WAIT,
        "return document.querySelector('main')?.textContent.includes('needs the admin scope')",
    )
    .await;
    // The overview counts only its tasks too.
    b.goto(&stack.ui("#/")).await;
    let active = b
        .wait_js(
            "the overview counts",
            WAIT,
            "return document.querySelector('#count-active .value')?.textContent",
        )
        .await;
    assert_eq!(active, "1");
    // The token never appears in the address bar, and signing out forgets it.
    b.click("#sign-out").await;
    b.wait_js(
        "the sign-in page",
        WAIT,
        "return document.querySelector('#token') !== null",
    )
    .await;
    let after = b
        .js("return [sessionStorage.length, location.href]", vec![])
        .await;
    assert_eq!(after[0], 0);
    assert!(!after[1].as_str().unwrap().contains(&ops));
}

#[tokio::test]
async fn the_task_form_shows_the_field_error_for_a_bad_cron_and_creates_a_valid_task_whose_preview_matches_the_api(
) {
    let stack = Stack::start(false).await;
    let b = browser(1280, 1000).await;
    sign_in(&b, &stack, ADMIN).await;
    b.goto(&stack.ui("#/tasks/new")).await;
    b.fill("#title", "Monthly invoice run").await;
    b.fill("#timezone", "Europe/Berlin").await;
    b.fill("#schedule_expr", "61 * * * *").await;
    b.click("#save-task").await;
    let error = b
        .wait_js(
            "the schedule_expr field error",
            WAIT,
            "const e = document.querySelector('#err-schedule_expr'); return e && !e.hidden && e.textContent",
        )
        .await;
    let error = error.as_str().unwrap().to_string();
    assert!(
        error.contains("61"),
        "the API's message names the bad value: {error}"
    );
    assert_eq!(
        b.js(
            "return document.querySelector('#schedule_expr').getAttribute('aria-invalid')",
            vec![]
        )
        .await,
        "true"
    );
    let hash = b.js("return location.hash", vec![]).await;
    assert_eq!(hash, "#/tasks/new", "still on the form");
    let none = stack.get("/console/tasks", ADMIN).await;
    assert_eq!(none["items"], json!([]), "nothing was created");

    // Fix the schedule: the preview shows the engine's fires, exactly those of POST /schedules/preview.
    b.fill("#schedule_expr", "30 4 1 * *").await;
    b.fill("#name", "monthly-invoice").await;
    let shown = b
        .wait_js(
            "ten previewed fires",
            WAIT,
            "const li = [...document.querySelectorAll('#preview li')];
             return li.length === 10 ? li.map(l => l.dataset.at) : null",
        )
        .await;
    let api = stack
        .post(
            "/schedules/preview",
            ADMIN,
            json!({"schedule_kind": "cron", "schedule_expr": "30 4 1 * *", "timezone": "Europe/Berlin", "count": 10}),
        )
        .await;
    let expected: Vec<Value> = api["fires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["at"].clone())
        .collect();
    assert_eq!(shown, Value::Array(expected));
    let words = b.text("#schedule-words").await;
    assert!(words.contains("04:30"), "{words}");
    assert_eq!(
        b.js(
            "return document.querySelector('#err-schedule_expr').hidden",
            vec![]
        )
        .await,
        true,
        "the field error clears once the schedule is valid"
    );

    b.click("#save-task").await;
    let id = b
        .wait_js(
            "the new task's page",
            WAIT,
            "const m = location.hash.match(/^#\\/tasks\\/([0-9a-f-]{36})$/); return m && m[1]",
        )
        .await;
    let id = id.as_str().unwrap().to_string();
    let task = stack.get(&format!("/tasks/{id}"), ADMIN).await;
    assert_eq!(task["schedule_expr"], "30 4 1 * *");
    assert_eq!(task["timezone"], "Europe/Berlin");
    assert_eq!(
        task["name"], "monthly-invoice",
        "the form sets the task's name"
    );
    b.goto(&stack.ui("#/tasks")).await;
    let listed = b
        .wait_js(
            "the task in the list",
            WAIT,
            &format!("return document.querySelector('tr[data-task-id=\"{id}\"] .task-link')?.textContent"),
        )
        .await;
    assert_eq!(listed, "Monthly invoice run");
}

#[tokio::test]
async fn run_now_shows_the_run_live_and_a_dead_run_replayed_from_the_dead_work_page_succeeds() {
    let stack = Stack::start(true).await;
    let id = stack
        .task(
            ADMIN,
            "live run",
            json!({"schedule_expr": "0 0 1 1 *", "timezone": "UTC"}),
        )
        .await;
    let b = browser(1280, 1000).await;
    sign_in(&b, &stack, ADMIN).await;
    b.goto(&stack.ui(&format!("#/tasks/{id}"))).await;
    b.wait_js(
        "the live feed to connect",
        WAIT,
        "return document.querySelector('#live-state')?.textContent === 'live'",
    )
    .await;
    b.wait_js(
        "the empty run list",
        WAIT,
        "return document.querySelector('#runs td.empty') !== null",
    )
    .await;
    // A marker that a reload would wipe out.
    b.js("window.__sameDocument = 42; return true", vec![])
        .await;
    b.click("#run-now").await;
    b.fill("dialog textarea[name=params]", "{\"who\": \"console\"}")
        .await;
    b.click("dialog [data-action=confirm]").await;
    let run_id = b
        .wait_js(
            "the run to appear without a reload",
            Duration::from_secs(25),
            "const row = document.querySelector('#runs tr[data-run-id] .badge.ok');
             return row && row.closest('tr').dataset.runId",
        )
        .await;
    assert_eq!(
        b.js("return window.__sameDocument", vec![]).await,
        42,
        "the page was not reloaded"
    );
    let run_id = run_id.as_str().unwrap().to_string();
    let run = stack.get(&format!("/runs/{run_id}"), ADMIN).await;
    assert_eq!(run["success"], true);
    assert_eq!(run["trigger"], "manual");

    // The run detail shows its attempt with the step outputs.
    b.goto(&stack.ui(&format!("#/runs/{run_id}"))).await;
    let output = b
        .wait_js(
            "the step outputs",
            WAIT,
            "return document.querySelector('#attempts pre.json')?.textContent",
        )
        .await;
    assert!(output.as_str().unwrap().contains("hello"), "{output}");

    // A fire that fails with no retries goes dead; fixed, it is replayed from the dead-work page.
    let failing = stack
        .task(
            ADMIN,
            "fails then fixed",
            json!({"schedule_expr": "0 0 1 1 *", "timezone": "UTC", "max_retries": 0,
                   "payload": {"params": {}, "pipeline": [{"id": "call", "uses": "http.request",
                       "with": {"url": "http://127.0.0.1:9/unreachable", "method": "POST"}}]}}),
        )
        .await;
    let queued = stack
        .post(&format!("/tasks/{failing}/run_now"), ADMIN, json!({}))
        .await;
    let work_id = queued["due_work_id"].as_i64().unwrap();
    wait_for("the work to die", WAIT, || async {
        let dead = stack.get("/console/dead", ADMIN).await;
        dead["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == work_id)
            .then_some(())
    })
    .await;
    let (status, _) = stack
        .call(
            reqwest::Method::PATCH,
            &format!("/tasks/{failing}"),
            ADMIN,
            Some(json!({"payload": {"params": {}, "pipeline": [{"id": "ok", "uses": "noop"}]}})),
        )
        .await;
    assert_eq!(status, 200);
    b.goto(&stack.ui("#/dead")).await;
    b.click(&format!("button[data-replay=\"{work_id}\"]")).await;
    b.click("dialog [data-action=confirm]").await;
    let said = b
        .wait_js(
            "the replay confirmation",
            WAIT,
            "const s = document.querySelector('#dead-status'); return s && !s.hidden && s.textContent",
        )
        .await;
    assert!(
        said.as_str()
            .unwrap()
            .contains(&format!("Replayed work #{work_id}")),
        "{said}"
    );
    b.wait_js(
        "the replayed item to leave the dead list",
        WAIT,
        &format!("return document.querySelector('tr[data-dead-id=\"{work_id}\"]') === null"),
    )
    .await;
    // The task page shows the replayed fire succeeding (live).
    b.goto(&stack.ui(&format!("#/tasks/{failing}"))).await;
    b.wait_js(
        "the replayed run to succeed",
        WAIT,
        "return document.querySelector('#runs tr[data-run-id] .badge.ok') !== null",
    )
    .await;
    let runs = stack
        .get(&format!("/console/tasks/{failing}/runs"), ADMIN)
        .await;
    let items = runs["items"].as_array().unwrap();
    assert!(items
        .iter()
        .any(|r| r["due_work_id"] == work_id && r["success"] == true));
    assert!(items
        .iter()
        .any(|r| r["due_work_id"] == work_id && r["success"] == false));
}

#[tokio::test]
async fn the_queues_page_shows_a_queues_depth_and_pauses_and_resumes_it() {
    let stack = Stack::start(false).await;
    let id = stack
        .task(
            ADMIN,
            "report",
            json!({"schedule_expr": "0 0 1 1 *", "timezone": "UTC", "queue": "reports"}),
        )
        .await;
    for _ in 0..2 {
        stack
            .post(&format!("/tasks/{id}/run_now"), ADMIN, json!({}))
            .await;
    }
    let b = browser(1280, 900).await;
    sign_in(&b, &stack, ADMIN).await;
    b.goto(&stack.ui("#/queues")).await;
    let ready = b
        .wait_js(
            "the reports queue with its two ready runs",
            WAIT,
            "const row = document.querySelector('tr[data-queue=\"reports\"]');
             return row && row.children[2].textContent",
        )
        .await;
    assert_eq!(ready, "2");
    let paused = || async {
        let queues = stack.get("/queues", ADMIN).await;
        queues["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "reports")
            .map(|q| q["paused"].clone())
            .unwrap()
    };
    assert_eq!(paused().await, false);
    b.click("tr[data-queue=\"reports\"] button[data-action=pause]")
        .await;
    b.click("dialog [data-action=confirm]").await;
    b.wait_js(
        "the row to show the queue paused",
        WAIT,
        "return document.querySelector('tr[data-queue=\"reports\"] button[data-action=resume]') !== null",
    )
    .await;
    assert_eq!(paused().await, true, "the API says paused too");
    b.click("tr[data-queue=\"reports\"] button[data-action=resume]")
        .await;
    b.wait_js(
        "the row to show the queue running",
        WAIT,
        "return document.querySelector('tr[data-queue=\"reports\"] button[data-action=pause]') !== null",
    )
    .await;
    assert_eq!(paused().await, false);
}

fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
}

/// Fills a stack with a few tasks and runs, and saves a PNG of every page (light, and dark for some).
#[tokio::test]
#[ignore = "refreshes docs/screenshots; run explicitly"]
async fn screenshots() {
    let stack = Stack::start(true).await;
    let dir = screenshot_dir();
    let nightly = stack
        .task(
            ADMIN,
            "Nightly export",
            json!({"schedule_expr": "30 2 * * *", "timezone": "America/New_York"}),
        )
        .await;
    stack
        .task(
            ADMIN,
            "Weekday digest",
            json!({"schedule_expr": "0 9 * * MON-FRI", "timezone": "Europe/Berlin"}),
        )
        .await;
    stack
        .task(
            ADMIN,
            "Quarterly review",
            json!({"schedule_kind": "rrule", "schedule_expr": "FREQ=MONTHLY;INTERVAL=3;BYMONTHDAY=1;BYHOUR=10;BYMINUTE=0", "timezone": "Asia/Tokyo"}),
        )
        .await;
    stack
        .task(
            ADMIN,
            "Order webhook",
            json!({"schedule_kind": "event", "schedule_expr": "orders.*", "timezone": "UTC"}),
        )
        .await;
    let failing = stack
        .task(
            ADMIN,
            "Sync CRM",
            json!({"schedule_expr": "*/15 * * * *", "timezone": "UTC", "max_retries": 0,
                   "payload": {"params": {}, "pipeline": [{"id": "push", "uses": "http.request",
                       "with": {"url": "http://127.0.0.1:9/crm", "method": "POST"}}]}}),
        )
        .await;
    for _ in 0..6 {
        stack
            .post(&format!("/tasks/{nightly}/run_now"), ADMIN, json!({}))
            .await;
    }
    for _ in 0..2 {
        stack
            .post(&format!("/tasks/{failing}/run_now"), ADMIN, json!({}))
            .await;
    }
    stack
        .post(
            "/events",
            ADMIN,
            json!({"topic": "orders.created", "payload": {"order": 1042}}),
        )
        .await;
    wait_for("runs and dead work", WAIT, || async {
        let dead = stack.get("/console/dead", ADMIN).await;
        let runs = stack
            .get(&format!("/console/tasks/{nightly}/runs"), ADMIN)
            .await;
        (dead["items"].as_array().unwrap().len() >= 2
            && runs["items"].as_array().unwrap().len() >= 6)
            .then_some(())
    })
    .await;
    let run_id = stack
        .get(&format!("/console/tasks/{nightly}/runs"), ADMIN)
        .await["items"][0]["id"]
        .as_i64()
        .unwrap();

    let b = browser(1280, 900).await;
    sign_in(&b, &stack, ADMIN).await;
    b.wait_js(
        "the live feed",
        WAIT,
        "return document.querySelector('#live-state')?.textContent === 'live'",
    )
    .await;
    let pages: Vec<(&str, String, &str)> = vec![
        ("overview", "#/".into(), "#overview .stat"),
        ("tasks", "#/tasks".into(), "#task-list tr[data-task-id]"),
        ("task-form", "#/tasks/new".into(), "#preview li"),
        ("task-detail", format!("#/tasks/{nightly}"), "#timeline svg"),
        (
            "run-detail",
            format!("#/runs/{run_id}"),
            "#attempts .attempt",
        ),
        ("dead-work", "#/dead".into(), "tr[data-dead-id]"),
        (
            "queues",
            "#/queues".into(),
            "#queue-list tbody tr[data-queue]",
        ),
        ("workers", "#/workers".into(), "#worker-list tbody tr"),
        ("events", "#/events".into(), "#recent-events tbody tr"),
    ];
    for scheme in ["light", "dark"] {
        b.color_scheme(scheme).await;
        for (name, hash, ready) in &pages {
            if scheme == "dark" && !matches!(*name, "overview" | "task-detail" | "tasks") {
                continue;
            }
            let tall = matches!(*name, "task-detail" | "task-form");
            b.set_size(1280, if tall { 1700 } else { 900 }).await;
            b.goto(&stack.ui(hash)).await;
            if *name == "task-form" {
                b.fill("#title", "Hourly cache warm-up").await;
                b.fill("#timezone", "Europe/Berlin").await;
                b.fill("#schedule_expr", "15 * * * *").await;
            }
            b.wait_js(
                &format!("the {name} page"),
                WAIT,
                &format!("return document.querySelector('{ready}') !== null"),
            )
            .await;
            if *name == "task-detail" {
                b.wait_js(
                    "runs",
                    WAIT,
                    "return document.querySelector('#runs tr[data-run-id]') !== null",
                )
                .await;
                // 500 daily fires reach the next DST changes in New York whatever the date.
                b.js(
                    "const s = document.querySelector('#timeline-count'); s.value = '500';
                     s.dispatchEvent(new Event('change')); return true",
                    vec![],
                )
                .await;
                b.wait_js(
                    "the DST transitions",
                    WAIT,
                    "return document.querySelector('#transitions li') !== null",
                )
                .await;
            }
            b.js(
                "window.scrollTo(0, 0); document.activeElement?.blur(); return true",
                vec![],
            )
            .await;
            b.screenshot(&dir.join(format!("{name}-{scheme}.png")))
                .await;
        }
    }
    // Phone width.
    b.color_scheme("light").await;
    b.set_size(390, 844).await;
    b.goto(&stack.ui("#/")).await;
    b.wait_js(
        "overview",
        WAIT,
        "return document.querySelector('#overview .stat') !== null",
    )
    .await;
    b.screenshot(&dir.join("overview-phone.png")).await;
}
