//! POST /schedules/preview against every case of shared/tests/data/schedule_cases.json.

use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn preview_returns_exactly_every_fixture_case() {
    let app = spawn_app().await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/tests/data/schedule_cases.json"
    );
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(cases.len(), 400);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let body = json!({
            "schedule_kind": case["schedule_kind"],
            "schedule_expr": case["schedule_expr"],
            "timezone": case["timezone"],
            "after": case["after"],
            "count": case["count"],
        });
        let r = app.post("/schedules/preview", ADMIN, body).await;
        let status = r.status().as_u16();
        let got: Value = r.json().await.unwrap();
        let at: Vec<Value> = got["fires"]
            .as_array()
            .map(|f| f.iter().map(|x| x["at"].clone()).collect())
            .unwrap_or_default();
        if status != 200 || Value::Array(at.clone()) != case["expected"] {
            failures.push(format!(
                "case {i} ({} {:?} {}): got {status} {at:?}, expected {}",
                case["schedule_kind"], case["schedule_expr"], case["timezone"], case["expected"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 400 cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn preview_validates_its_input_and_anchors_a_bare_rrule_at_local_midnight() {
    let app = spawn_app().await;
    let (_, reader) = app.agent("reader", &["tasks:read"]).await;
    let r = expect(
        app.post("/schedules/preview", &reader, json!({"schedule_kind": "rrule", "schedule_expr": "FREQ=DAILY;BYHOUR=9", "timezone": "Europe/Paris", "after": "2026-06-10T13:37:21Z", "count": 2})).await,
        200,
    )
    .await;
    assert_eq!(r["fires"][0]["at"], "2026-06-11T07:00:00Z");
    assert_eq!(r["fires"][0]["local"], "2026-06-11T09:00:00+02:00");
    for (body, field) in [
        (
            json!({"schedule_kind": "cron", "schedule_expr": "bad", "timezone": "UTC"}),
            "schedule_expr",
        ),
        (
            json!({"schedule_kind": "cron", "schedule_expr": "* * * * *", "timezone": "UTC", "count": 0}),
            "count",
        ),
        (
            json!({"schedule_kind": "cron", "schedule_expr": "* * * * *", "timezone": "UTC", "count": 1001}),
            "count",
        ),
        (
            json!({"schedule_kind": "cron", "schedule_expr": "* * * * *", "timezone": "Nope"}),
            "timezone",
        ),
        (
            json!({"schedule_kind": "cron", "schedule_expr": "* * * * *", "after": "soon"}),
            "after",
        ),
        (
            json!({"schedule_kind": "x", "schedule_expr": "* * * * *"}),
            "schedule_kind",
        ),
        (json!({"schedule_expr": "* * * * *"}), "schedule_kind"),
    ] {
        expect_field_error(app.post("/schedules/preview", ADMIN, body).await, field).await;
    }
    let exhausted = expect(
        app.post("/schedules/preview", ADMIN, json!({"schedule_kind": "rrule", "schedule_expr": "DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY;COUNT=3", "after": "2025-01-01T00:00:00Z", "count": 10})).await,
        200,
    )
    .await;
    assert_eq!(
        exhausted["fires"].as_array().unwrap().len(),
        3,
        "fewer fires: the rule is exhausted"
    );
}
