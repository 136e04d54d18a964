//! The `shell` tool through the real worker binary: the host's policy, secrets redaction, process-group kills.

mod common;

use std::time::Duration;

use common::*;
use orrery_testing::{redis_prefix, wait_for, TestDb};
use serde_json::{json, Value};

const SECRETS_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

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

async fn run_of(c: &tokio_postgres::Client, task: uuid::Uuid) -> (bool, String, String, Value) {
    let r = c
        .query_one(
            "SELECT success, coalesce(error, ''), coalesce(error_kind, ''), coalesce(output, 'null')
               FROM task_run WHERE task_id = $1 ORDER BY id DESC LIMIT 1",
            &[&task],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn shell_task(pipeline: Value) -> TaskSpec {
    TaskSpec {
        pipeline,
        params: json!({"name": "ada; rm -rf /"}),
        max_retries: 0,
        ..TaskSpec::default()
    }
}

/// Whether a process is gone (or a zombie waiting for a reaper, which runs nothing).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[tokio::test]
async fn shell_steps_run_only_allowed_programs_and_capture_their_output() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    // Arguments are passed as they are: no shell sees the params.
    let echo = insert_task(
        &c,
        shell_task(json!([{"id": "say", "uses": "shell", "with": {
            "program": "echo", "args": ["hello", "${params.name}", "$HOME"]}}])),
    )
    .await;
    let piped = insert_task(
        &c,
        shell_task(json!([{"id": "count", "uses": "shell", "with": {
            "shell": true, "command": "cat; echo; echo \"mode=$MODE run=$ORRERY_RUN_ID home=$HOME\"; pwd; echo warn >&2; exit 3",
            "stdin": "${params}", "env": {"MODE": "nightly"}, "cwd": "/tmp", "retryable": false}}])),
    )
    .await;
    let forbidden = insert_task(
        &c,
        shell_task(json!([{"id": "no", "uses": "shell", "with": {"program": "/usr/bin/id"}}])),
    )
    .await;
    let leaked = insert_task(
        &c,
        shell_task(json!([{"id": "env", "uses": "shell", "with": {"program": "/usr/bin/env"}}])),
    )
    .await;
    let mut rows = Vec::new();
    for task in [echo, piped, forbidden, leaked] {
        rows.push(insert_work(&c, task, WorkSpec::default()).await);
    }
    let _worker = start_worker(
        &db,
        &prefix,
        &[
            ("WORKER_SHELL_ENABLED", "true"),
            (
                "WORKER_SHELL_ALLOW",
                "/bin/sh,/usr/bin/echo,/bin/echo,/usr/bin/env",
            ),
        ],
    )
    .await;
    hint(&prefix).await;
    wait_count(&c, "four runs", "SELECT count(*) FROM task_run", 4).await;

    let (ok, error, _, output) = run_of(&c, echo).await;
    assert!(ok, "{error}");
    let say = &output["steps"]["say"];
    assert_eq!(say["stdout"], "hello ada; rm -rf / $HOME\n", "{say}");
    assert_eq!(say["exit_code"], 0);
    assert_eq!(say["stdout_truncated"], false);
    assert!(say["duration_ms"].is_u64());

    let (ok, error, kind, output) = run_of(&c, piped).await;
    assert!(!ok);
    assert_eq!(kind, "exit_code");
    assert!(error.contains("exited with code 3"), "{error}");
    let result = &output["failed_step"]["result"];
    let stdout = result["stdout"].as_str().unwrap();
    assert!(
        stdout.starts_with(r#"{"name":"ada; rm -rf /"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("mode=nightly run={} home=/tmp", rows[1])),
        "{stdout}"
    );
    assert!(stdout.ends_with("/tmp\n"), "{stdout}");
    assert_eq!(result["stderr"], "warn\n");
    assert_eq!(result["exit_code"], 3);
    // retryable: false → dead at once.
    let state: String = c
        .query_one("SELECT state FROM due_work WHERE id = $1", &[&rows[1]])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "dead");

    let (ok, error, kind, _) = run_of(&c, forbidden).await;
    assert!(!ok);
    assert_eq!(kind, "policy");
    assert!(
        error.contains("/usr/bin/id") && error.contains("WORKER_SHELL_ALLOW"),
        "{error}"
    );

    // The worker's own environment (DATABASE_URL, keys) never reaches the program.
    let (ok, _, _, output) = run_of(&c, leaked).await;
    assert!(ok);
    let env = output["steps"]["env"]["stdout"].as_str().unwrap();
    assert!(
        !env.contains("DATABASE_URL") && !env.contains("REDIS"),
        "{env}"
    );
    assert!(env.contains("PATH=/usr/local/bin:/usr/bin:/bin"), "{env}");
}

#[tokio::test]
async fn a_worker_without_shell_enabled_refuses_every_shell_step() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let task = insert_task(
        &c,
        shell_task(json!([{"id": "say", "uses": "shell", "with": {"program": "/bin/echo"}}])),
    )
    .await;
    insert_work(&c, task, WorkSpec::default()).await;
    // The allow list alone does not enable the tool.
    let _worker = start_worker(&db, &prefix, &[("WORKER_SHELL_ALLOW", "/bin/echo")]).await;
    hint(&prefix).await;
    wait_count(&c, "one run", "SELECT count(*) FROM task_run", 1).await;
    let (ok, error, kind, _) = run_of(&c, task).await;
    assert!(!ok);
    assert_eq!(kind, "policy");
    assert!(error.contains("WORKER_SHELL_ENABLED"), "{error}");
}

#[tokio::test]
async fn a_timed_out_step_kills_its_whole_process_group_and_secrets_never_leave_the_run() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let prefix = redis_prefix();
    let secret = "sk-shell-5e4d3c2b1a";
    put_secret(&c, "TOKEN", secret).await;
    // The grandchild `sleep` would outlive a kill of the shell alone.
    let task = insert_task(
        &c,
        shell_task(
            json!([{"id": "hang", "uses": "shell", "timeout_seconds": 1, "with": {
            "shell": true, "env": {"TOKEN": "${secrets.TOKEN}"},
            "command": "sleep 300 & echo \"pid=$! token=$TOKEN\"; echo \"$TOKEN\" >&2; wait"}}]),
        ),
    )
    .await;
    insert_work(&c, task, WorkSpec::default()).await;
    let worker = start_worker(
        &db,
        &prefix,
        &[
            ("WORKER_SHELL_ENABLED", "true"),
            ("WORKER_SHELL_ALLOW", "/bin/sh"),
            ("ORRERY_SECRETS_KEY", SECRETS_KEY),
        ],
    )
    .await;
    hint(&prefix).await;
    wait_count(&c, "one run", "SELECT count(*) FROM task_run", 1).await;
    let (ok, error, kind, output) = run_of(&c, task).await;
    assert!(!ok);
    assert_eq!(kind, "step_timeout", "{error}");
    let result = &output["failed_step"]["result"];
    let stdout = result["stdout"].as_str().unwrap();
    assert!(stdout.contains("token=[redacted:TOKEN]"), "{stdout}");
    assert!(!output.to_string().contains(secret), "{output}");
    assert!(!worker.log_text().contains(secret));
    let pid: i32 = stdout
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout}"));
    wait_for(
        "the grandchild sleep to be killed",
        Duration::from_secs(10),
        || async move { gone(pid).then_some(()) },
    )
    .await;
}
