//! The first hour of a new user, end to end with the three binaries as separate processes (issue #17): every
//! example of docs/pipelines.md runs as documented, a run triggered by an event records which event, and dead
//! work of a completed `once` task is replayed to success.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orrery_testing::{base_env, free_port, redis_prefix, wait_for, Service, TestDb};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const ADMIN: &str = "first-hour-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

/// One request the test server received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// Path and query.
    target: String,
    headers: HashMap<String, String>,
    body: String,
}

/// A tiny HTTP/1.1 server standing in for `https://api.example.com`. Answers by path; `/flaky` answers 503 twice,
/// then 200; `/reject-once` answers 400 once, then 200.
struct DocServer {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl DocServer {
    async fn start() -> DocServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    let path = req.target.split('?').next().unwrap_or("").to_string();
                    let hits = {
                        let mut l = log.lock().unwrap();
                        l.push(req.clone());
                        l.iter().filter(|s| s.target.starts_with(&path)).count()
                    };
                    let (status, body) = match path.as_str() {
                        "/orders/pending" => (
                            "200 OK",
                            json!({"orders": [{"id": "A1"}, {"id": "B2"}]}).to_string(),
                        ),
                        "/flaky" | "/invoices" if hits <= 2 => {
                            ("503 Service Unavailable", "try later".into())
                        }
                        "/reject-once" if hits == 1 => ("400 Bad Request", "not yet".into()),
                        _ => ("200 OK", "{}".into()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        DocServer { base, seen }
    }

    fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.target.split('?').next() == Some(path))
            .cloned()
            .collect()
    }

    async fn wait_requests(&self, path: &str, n: usize) -> Vec<Seen> {
        wait_for(&format!("{n} request(s) to {path}"), WAIT, || async {
            let r = self.requests(path);
            (r.len() >= n).then_some(r)
        })
        .await
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    Some(Seen {
        method,
        target,
        headers,
        body,
    })
}

/// The three binaries on one fresh database and Redis prefix.
struct System {
    db: TestDb,
    base: String,
    http: reqwest::Client,
    _services: Vec<Service>,
}

impl System {
    async fn start() -> System {
        let db = TestDb::new().await;
        let mut env = base_env(&db, &redis_prefix());
        env.push(("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()));
        env.push(("WORKER_BACKOFF_BASE_DELAY".into(), "0.2".into()));
        env.push(("WORKER_BACKOFF_MAX_DELAY".into(), "1".into()));
        let mut services = Vec::new();
        for binary in ["orrery-api", "orrery-scheduler", "orrery-worker"] {
            services.push(Service::start(binary, free_port(), &env).await);
        }
        for s in &services {
            s.wait_ready(WAIT).await;
        }
        let base = format!("http://127.0.0.1:{}", services[0].health_port);
        System {
            db,
            base,
            http: reqwest::Client::new(),
            _services: services,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, body) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!((200..300).contains(&status), "POST {path}: {status} {body}");
        body
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Finished runs of a task (oldest first) once there are at least `n`.
    async fn runs(&self, task: &str, n: usize) -> Vec<Value> {
        let sql = self.db.client().await;
        let id: Uuid = task.parse().unwrap();
        wait_for(&format!("{n} run(s) of task {task}"), WAIT, || async {
            let count: i64 = sql
                .query_one("SELECT count(*) FROM task_run WHERE task_id = $1", &[&id])
                .await
                .unwrap()
                .get(0);
            (count as usize >= n).then_some(())
        })
        .await;
        let page = self.get(&format!("/runs?task_id={task}&limit=200")).await;
        let mut runs = page["items"].as_array().unwrap().clone();
        runs.reverse();
        runs
    }
}

/// The `<!-- example: NAME -->` JSON blocks of docs/pipelines.md, with the example host pointed at `base`.
fn doc_examples(base: &str) -> HashMap<String, Value> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/pipelines.md"))
            .expect("docs/pipelines.md");
    let mut examples = HashMap::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("<!-- example: ") {
        rest = &rest[i + "<!-- example: ".len()..];
        let name = rest[..rest.find(" -->").unwrap()].to_string();
        let start = rest.find("```json\n").unwrap() + "```json\n".len();
        let end = start + rest[start..].find("\n```").unwrap();
        let json = rest[start..end].replace("https://api.example.com", base);
        let value: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("example {name} is not valid JSON: {e}"));
        examples.insert(name, value);
    }
    examples
}

#[tokio::test]
async fn the_pipeline_reference_examples_run_as_documented() {
    let server = DocServer::start().await;
    let sys = System::start().await;
    let examples = doc_examples(&server.base);
    let mut names: Vec<&String> = examples.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "call-and-branch",
            "event-forward",
            "fan-out",
            "retry-5xx",
            "run-now-param"
        ],
        "the reference has five worked examples"
    );

    // 1. Call an API and branch on its status.
    let task = sys
        .post("/tasks", examples["call-and-branch"].clone())
        .await;
    let id = task["id"].as_str().unwrap();
    sys.post(&format!("/tasks/{id}/run_now"), json!({})).await;
    let notify = server.wait_requests("/notify", 1).await;
    assert_eq!(notify[0].method, "POST");
    assert_eq!(
        serde_json::from_str::<Value>(&notify[0].body).unwrap(),
        json!({"count": 2, "first": "A1"})
    );
    let run = &sys.runs(id, 1).await[0];
    assert_eq!(run["success"], true, "{run}");
    assert_eq!(run["output"]["skipped"], json!(["all_clear"]), "{run}");

    // 2. Fan out through events: one run of each listener, sharing the event.
    let tasks = examples["fan-out"].as_array().unwrap();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(
            sys.post("/tasks", t.clone()).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    sys.post(&format!("/tasks/{}/run_now", ids[0]), json!({}))
        .await;
    let archived = server.wait_requests("/archive", 1).await;
    let archived_body: Value = serde_json::from_str(&archived[0].body).unwrap();
    assert_eq!(archived_body["report"], "sales", "{archived_body}");
    let archive_run = &sys.runs(&ids[1], 1).await[0];
    let log_run = &sys.runs(&ids[2], 1).await[0];
    assert_eq!(archive_run["trigger"], "event");
    assert_eq!(log_run["output"]["steps"]["log"]["seen"], "report.ready");
    assert!(archive_run["event_id"].is_string(), "{archive_run}");
    assert_eq!(archive_run["event_id"], log_run["event_id"]);
    assert_eq!(
        log_run["output"]["steps"]["log"]["event"],
        log_run["event_id"]
    );

    // 3. Retry only on 5xx: two 503s, then success at attempt 3, one idempotency key throughout.
    let task = sys.post("/tasks", examples["retry-5xx"].clone()).await;
    let id = task["id"].as_str().unwrap();
    sys.post(&format!("/tasks/{id}/run_now"), json!({})).await;
    let runs = sys.runs(id, 3).await;
    let summary: Vec<(i64, bool, Option<&str>)> = runs
        .iter()
        .map(|r| {
            (
                r["attempt"].as_i64().unwrap(),
                r["success"].as_bool().unwrap(),
                r["error_kind"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, false, Some("http_5xx")),
            (2, false, Some("http_5xx")),
            (3, true, None)
        ]
    );
    let keys: Vec<String> = server
        .requests("/invoices")
        .iter()
        .map(|s| s.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");

    // 4. A run-now parameter overrides the default for that run only.
    let task = sys.post("/tasks", examples["run-now-param"].clone()).await;
    let id = task["id"].as_str().unwrap();
    sys.post(
        &format!("/tasks/{id}/run_now"),
        json!({"params": {"region": "us"}}),
    )
    .await;
    server.wait_requests("/reports", 1).await;
    sys.post(&format!("/tasks/{id}/run_now"), json!({})).await;
    let reports: Vec<String> = server
        .wait_requests("/reports", 2)
        .await
        .iter()
        .map(|s| s.target.clone())
        .collect();
    assert_eq!(
        reports,
        [
            "/reports?region=us&format=pdf",
            "/reports?region=eu&format=pdf"
        ]
    );

    // 5. An event-triggered task forwards its payload, and its run records the event.
    let task = sys.post("/tasks", examples["event-forward"].clone()).await;
    let id = task["id"].as_str().unwrap();
    let published = sys
        .post(
            "/events",
            json!({"topic": "user.signup", "payload": {"email": "ada@example.com", "plan": "pro"}}),
        )
        .await;
    let welcome = server.wait_requests("/welcome", 1).await;
    assert_eq!(
        serde_json::from_str::<Value>(&welcome[0].body).unwrap(),
        json!({"email": "ada@example.com", "plan": "pro"})
    );
    assert_eq!(welcome[0].headers["x-event-id"], published["event_id"]);
    let run = &sys.runs(id, 1).await[0];
    let detail = sys.get(&format!("/runs/{}", run["id"])).await;
    assert_eq!(detail["event_id"], published["event_id"], "{detail}");
    assert_eq!(detail["event_topic"], "user.signup");
    assert_eq!(
        detail["event"]["payload"],
        json!({"email": "ada@example.com", "plan": "pro"})
    );
    assert_eq!(detail["event"]["id"], published["event_id"]);
}

#[tokio::test]
async fn dead_work_of_a_completed_once_task_is_replayed_to_success() {
    let server = DocServer::start().await;
    let sys = System::start().await;
    let sql = sys.db.client().await;
    let now: chrono::DateTime<chrono::Utc> =
        sql.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let at =
        (now + chrono::Duration::seconds(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let task = sys
        .post(
            "/tasks",
            json!({"title": "once", "schedule_kind": "once", "schedule_expr": at, "timezone": "UTC",
                   "payload": {"pipeline": [{"id": "call", "uses": "http.request",
                                             "with": {"url": format!("{}/reject-once", server.base)}}]}}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_string();
    // The fire gets a 400: permanent, dead at attempt 1; nothing else is pending, so the task completes.
    let dead = wait_for(
        "the fire to be dead and the task completed",
        WAIT,
        || async {
            let page = sys.get("/queue/dead").await;
            let item = page["items"].as_array().unwrap().first().cloned()?;
            let t = sys.get(&format!("/tasks/{id}")).await;
            (t["status"] == "completed").then_some(item)
        },
    )
    .await;
    let (status, body) = sys
        .call(
            reqwest::Method::POST,
            &format!("/queue/dead/{}/replay", dead["id"]),
            None,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let runs = sys.runs(&id, 2).await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["error_kind"], "http_4xx");
    assert_eq!(runs[1]["success"], true, "{}", runs[1]);
    assert_eq!(
        runs[1]["scheduled_for"], runs[0]["scheduled_for"],
        "the same fire"
    );
    assert_eq!(sys.get("/queue/dead").await["items"], json!([]));
    assert_eq!(
        sys.get(&format!("/tasks/{id}")).await["status"],
        "completed"
    );
}
