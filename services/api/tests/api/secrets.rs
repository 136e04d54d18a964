//! /secrets: write-only, encrypted at rest, owned by agents, rotatable; a value never comes back.

use serde_json::{json, Value};

use crate::common::*;

const KEY1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY2: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
const VALUE: &str = "tok-3f9c-very-secret";

async fn with_key(key: &str, old: &str) -> TestApp {
    spawn_app_with(&[
        ("ORRERY_SECRETS_KEY", key),
        ("ORRERY_SECRETS_OLD_KEYS", old),
    ])
    .await
}

async fn put(app: &TestApp, token: &str, path: &str, value: &str) -> reqwest::Response {
    app.call(
        reqwest::Method::PUT,
        path,
        Some(token),
        Some(json!({ "value": value })),
    )
    .await
}

#[tokio::test]
async fn a_secret_is_stored_encrypted_and_its_value_never_comes_back() {
    let app = with_key(KEY1, "").await;
    let created = expect(put(&app, ADMIN, "/secrets/API_TOKEN", VALUE).await, 201).await;
    assert_eq!(created["name"], "API_TOKEN");
    let replaced = expect(put(&app, ADMIN, "/secrets/API_TOKEN", VALUE).await, 200).await;
    let listed = expect(app.get("/secrets", ADMIN).await, 200).await;
    let one = expect(app.get("/secrets/API_TOKEN", ADMIN).await, 200).await;
    for body in [&created, &replaced, &listed, &one] {
        assert!(!body.to_string().contains(VALUE), "{body}");
        assert!(body.to_string().contains("API_TOKEN"), "{body}");
    }
    let c = app.sql().await;
    let row = c
        .query_one("SELECT ciphertext, key_id FROM secret", &[])
        .await
        .unwrap();
    let ciphertext: Vec<u8> = row.get(0);
    assert!(
        !ciphertext.windows(8).any(|w| w == &VALUE.as_bytes()[..8]),
        "encrypted at rest"
    );
    let audit: Vec<Value> = c
        .query(
            "SELECT details FROM audit_log WHERE action LIKE 'secret.%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audit.len(), 2);
    assert!(!format!("{audit:?}").contains(VALUE));
    expect(app.delete("/secrets/API_TOKEN", ADMIN).await, 204).await;
    expect_error(app.get("/secrets/API_TOKEN", ADMIN).await, 404, "not_found").await;
    expect_error(
        app.delete("/secrets/API_TOKEN", ADMIN).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn secrets_belong_to_their_agent_and_admins_may_manage_anyones() {
    let app = with_key(KEY1, "").await;
    let (alice, alice_token) = app.agent("alice", &["tasks:read", "tasks:write"]).await;
    let (bob, bob_token) = app.agent("bob", &["tasks:read", "tasks:write"]).await;
    expect(
        put(&app, &alice_token, "/secrets/SHARED", "alice-value").await,
        201,
    )
    .await;
    expect(
        put(&app, &bob_token, "/secrets/SHARED", "bob-value-x").await,
        201,
    )
    .await;
    let mine = expect(app.get("/secrets", &alice_token).await, 200).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    assert_eq!(mine["items"][0]["owner"], alice);
    expect_field_error(
        app.get(&format!("/secrets?owner={bob}"), &alice_token)
            .await,
        "owner",
    )
    .await;
    expect_field_error(
        put(
            &app,
            &alice_token,
            &format!("/secrets/X1234?owner={bob}"),
            "value",
        )
        .await,
        "owner",
    )
    .await;
    let all = expect(app.get("/secrets", ADMIN).await, 200).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    expect(
        app.delete(&format!("/secrets/SHARED?owner={bob}"), ADMIN)
            .await,
        204,
    )
    .await;
    let (_, reader) = app.agent("reader", &["tasks:read"]).await;
    expect_error(
        put(&app, &reader, "/secrets/NOPE", "value").await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn bad_names_and_values_are_422_naming_the_field_and_no_key_is_503() {
    let app = with_key(KEY1, "").await;
    for (path, value, field) in [
        ("/secrets/1abc", "value", "name"),
        ("/secrets/has-dash", "value", "name"),
        ("/secrets/OK", "abc", "value"),
    ] {
        expect_field_error(put(&app, ADMIN, path, value).await, field).await;
    }
    let r = app
        .call(
            reqwest::Method::PUT,
            "/secrets/OK",
            Some(ADMIN),
            Some(json!({"value": 5})),
        )
        .await;
    expect_field_error(r, "value").await;
    let r = app
        .call(
            reqwest::Method::PUT,
            "/secrets/OK",
            Some(ADMIN),
            Some(json!({"value": "abcdef", "extra": 1})),
        )
        .await;
    expect_field_error(r, "extra").await;
    assert!(expect(app.get("/secrets", ADMIN).await, 200).await["items"]
        .as_array()
        .unwrap()
        .is_empty());

    let keyless = spawn_app().await;
    let body = expect_error(
        put(&keyless, ADMIN, "/secrets/OK", VALUE).await,
        503,
        "unavailable",
    )
    .await;
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("ORRERY_SECRETS_KEY"));
}

#[tokio::test]
async fn rotating_the_key_reseals_every_secret_with_the_new_one() {
    let app = with_key(KEY1, "").await;
    expect(put(&app, ADMIN, "/secrets/A_SECRET", VALUE).await, 201).await;
    expect(
        put(&app, ADMIN, "/secrets/B_SECRET", "another-value").await,
        201,
    )
    .await;
    let old_id = expect(app.get("/secrets/A_SECRET", ADMIN).await, 200).await["key_id"].clone();
    // Same database, restarted with the new key and the old one kept for decryption.
    let rotated = spawn_app_with(&[
        ("DATABASE_URL", app.db.url.as_str()),
        ("ORRERY_SECRETS_KEY", KEY2),
        ("ORRERY_SECRETS_OLD_KEYS", KEY1),
    ])
    .await;
    let r = expect(app_post(&rotated, "/secrets/reencrypt").await, 200).await;
    assert_eq!(r["reencrypted"], 2);
    let listed = expect(rotated.get("/secrets", ADMIN).await, 200).await;
    for s in listed["items"].as_array().unwrap() {
        assert_eq!(s["key_id"], r["key_id"]);
        assert_ne!(s["key_id"], old_id);
    }
    // The values survived: they open under the new key alone.
    let ring = orrery::secrets::Keyring::new(KEY2, "").unwrap();
    let c = rotated.sql().await;
    for row in c
        .query(
            "SELECT owner, name, ciphertext, nonce, key_id FROM secret ORDER BY name",
            &[],
        )
        .await
        .unwrap()
    {
        let sealed = orrery::secrets::Sealed {
            ciphertext: row.get(2),
            nonce: row.get(3),
            key_id: row.get(4),
        };
        let value = ring
            .open(row.get(0), row.get::<_, &str>(1), &sealed)
            .unwrap();
        assert!(value == VALUE || value == "another-value");
    }
    assert_eq!(
        expect(app_post(&rotated, "/secrets/reencrypt").await, 200).await["reencrypted"],
        0
    );
}

async fn app_post(app: &TestApp, path: &str) -> reqwest::Response {
    app.post_empty(path, ADMIN).await
}
