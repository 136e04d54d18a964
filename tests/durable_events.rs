//! Durable events (issue #14): an accepted event is stored in PostgreSQL before Redis sees it, so it reaches its
//! tasks exactly once whatever Redis does: down when it is published, or losing it afterwards.

use std::time::Duration;

use orrery_testing::{base_env, free_port, redis_prefix, wait_for, PrivateRedis, Service, TestDb};
use serde_json::{json, Value};

const ADMIN: &str = "durable-events-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

fn env(db: &TestDb, redis: &PrivateRedis) -> Vec<(String, String)> {
    let mut env = base_env(db, &redis_prefix());
    env.retain(|(k, _)| k != "REDIS_URL");
    env.push(("REDIS_URL".into(), redis.url()));
    env.push(("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()));
    env.push(("SCHEDULER_EVENT_REDELIVER_SECONDS".into(), "1".into()));
    env
}

async fn start(binary: &str, env: &[(String, String)]) -> Service {
    let s = Service::start(binary, free_port(), env).await;
    s.wait_ready(WAIT).await;
    s
}

async fn event_task(api: &Api) -> uuid::Uuid {
    let (status, task) = api
        .post(
            "/tasks",
            json!({"title": "on signup", "schedule_kind": "event", "schedule_expr": "user.signup",
                   "payload": {"pipeline": [{"id": "n", "uses": "noop", "with": {"who": "${event.payload.who}"}}]}}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().unwrap().parse().unwrap()
}

async fn successful_runs_by_event(c: &tokio_postgres::Client) -> Vec<(String, i64)> {
    c.query(
        "SELECT event_id, count(*) FROM task_run WHERE success GROUP BY event_id ORDER BY event_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn wait_delivered(c: &tokio_postgres::Client, n: i64) {
    wait_for("the events to be delivered", WAIT, || async {
        let delivered: i64 = c
            .query_one(
                "SELECT count(*) FROM event_outbox WHERE delivered_at IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (delivered >= n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn events_accepted_while_redis_is_down_run_once_after_it_returns() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut redis = PrivateRedis::start();
    let env = env(&db, &redis);
    let api_service = start("orrery-api", &env).await;
    let _scheduler = start("orrery-scheduler", &env).await;
    let _worker = start("orrery-worker", &env).await;
    let api = Api {
        base: format!("http://127.0.0.1:{}", api_service.health_port),
        http: reqwest::Client::new(),
    };
    event_task(&api).await;

    redis.stop_server();
    let mut accepted = Vec::new();
    for who in ["ada", "grace", "alan"] {
        let (status, body) = api
            .post(
                "/events",
                json!({"topic": "user.signup", "payload": {"who": who}}),
            )
            .await;
        assert_eq!(status, 202, "accepted while Redis is down: {body}");
        assert!(body["stream_id"].is_null());
        accepted.push(body["event_id"].as_str().unwrap().to_string());
    }
    // Redis comes back empty (no persistence): only the outbox remembers the events.
    redis.start_server();
    wait_delivered(&c, 3).await;
    wait_for("three runs", WAIT, || async {
        let runs = successful_runs_by_event(&c).await;
        (runs.len() == 3).then_some(())
    })
    .await;
    accepted.sort();
    let runs = successful_runs_by_event(&c).await;
    assert_eq!(
        runs,
        accepted.iter().map(|e| (e.clone(), 1)).collect::<Vec<_>>(),
        "each event ran exactly once"
    );
    let outputs: Vec<Value> = c
        .query("SELECT output FROM task_run ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut who: Vec<&str> = outputs
        .iter()
        .map(|o| o["steps"]["n"]["who"].as_str().unwrap())
        .collect();
    who.sort();
    assert_eq!(who, ["ada", "alan", "grace"], "payloads intact");
}

#[tokio::test]
async fn an_event_redis_lost_is_published_again_and_a_duplicate_still_runs_once() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let mut redis = PrivateRedis::start();
    let env = env(&db, &redis);
    let api_service = start("orrery-api", &env).await;
    let _worker = start("orrery-worker", &env).await;
    let api = Api {
        base: format!("http://127.0.0.1:{}", api_service.health_port),
        http: reqwest::Client::new(),
    };
    event_task(&api).await;
    // Published onto the stream while no scheduler consumes it...
    let (status, body) = api
        .post(
            "/events",
            json!({"topic": "user.signup", "payload": {"who": "ada"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(body["stream_id"].is_string(), "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_string();
    // ...then Redis loses it (a crash without persistence).
    redis.stop_server();
    redis.start_server();
    let _scheduler = start("orrery-scheduler", &env).await;
    wait_delivered(&c, 1).await;
    wait_for("the run", WAIT, || async {
        (!successful_runs_by_event(&c).await.is_empty()).then_some(())
    })
    .await;
    let relays: i32 = c
        .query_one("SELECT relay_count FROM event_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(relays, 2, "published by the API, then again by the relay");

    // The same event on the stream again (a relay that died before recording its XADD): still one run.
    c.execute(
        "UPDATE event_outbox SET delivered_at = NULL, relayed_at = now() - interval '1 hour'",
        &[],
    )
    .await
    .unwrap();
    wait_delivered(&c, 1).await;
    let relays: i32 = c
        .query_one("SELECT relay_count FROM event_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(relays, 3);
    // Give a (wrong) second run every chance to be recorded before counting: the worker is idle and polls.
    let due: i64 = c
        .query_one("SELECT count(*) FROM due_work", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(due, 0, "no second due_work row for the duplicate");
    assert_eq!(successful_runs_by_event(&c).await, [(event_id, 1)]);
}
