//! The real API (and, for `runs tail`, a real worker) in this process on a random port against a fresh
//! database; the real `orrery` binary run as a child process against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use orrery::config::Settings;
use orrery_testing::{redis_prefix, redis_url, wait_for, TestDb};
use serde_json::Value;
use tokio::sync::watch;

pub const ADMIN: &str = "test-admin-token-0123456789";
pub const WAIT: Duration = Duration::from_secs(30);

pub struct TestEnv {
    pub base: String,
    pub db: TestDb,
    pub http: reqwest::Client,
    /// HOME and XDG_CONFIG_HOME of the CLI (an isolated profile file).
    pub home: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn settings(db: &TestDb, prefix: &str) -> Settings {
    let vars: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("REDIS_URL".into(), redis_url()),
        ("REDIS_KEY_PREFIX".into(), prefix.to_string()),
        ("API_PORT".into(), "0".into()),
        ("API_HOST".into(), "127.0.0.1".into()),
        ("ORRERY_ADMIN_TOKEN".into(), ADMIN.into()),
        ("API_WORKERS".into(), "1".into()),
        ("DATABASE_POOL_SIZE".into(), "4".into()),
        ("TZ".into(), "UTC".into()),
    ];
    Settings::from_sources(&vars).expect("settings")
}

pub async fn spawn() -> TestEnv {
    spawn_with(false).await
}

/// The API, plus a worker when `worker` (so that runs happen).
pub async fn spawn_with(worker: bool) -> TestEnv {
    let db = TestDb::new().await;
    let prefix = redis_prefix();
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = orrery::runtime::build_context("orrery-api", settings(&db, &prefix), stop_rx.clone())
        .expect("context");
    let app = orrery_api::startup::Application::build(ctx).expect("build app");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    if worker {
        let ctx = orrery::runtime::build_context("orrery-worker", settings(&db, &prefix), stop_rx)
            .expect("worker context");
        tokio::spawn(orrery_worker::run(ctx));
    }
    let http = reqwest::Client::new();
    let ready = format!("{base}/health/ready");
    let probe = http.clone();
    wait_for("the API to be ready", WAIT, || {
        let probe = probe.clone();
        let ready = ready.clone();
        async move {
            let r = probe.get(&ready).send().await.ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;
    TestEnv {
        base,
        db,
        http,
        home: tempfile::tempdir().expect("tempdir"),
        _stop: stop_tx,
    }
}

impl TestEnv {
    pub fn config_home(&self) -> PathBuf {
        self.home.path().join("config")
    }

    /// `orrery` with a clean environment: the API's URL and the admin token (override with `env`).
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_orrery"));
        cmd.env_clear();
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("ORRERY_URL", &self.base)
            .env("ORRERY_TOKEN", ADMIN);
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    pub async fn orrery_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let out = tokio::time::timeout(WAIT, self.command(args, env).output())
            .await
            .expect("orrery finished in time")
            .expect("orrery runs");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub async fn orrery(&self, args: &[&str]) -> Out {
        self.orrery_env(args, &[]).await
    }

    /// `orrery` that must succeed.
    pub async fn ok(&self, args: &[&str]) -> Out {
        let out = self.orrery(args).await;
        assert_eq!(out.code, 0, "orrery {args:?} failed: {out:?}");
        out
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.api(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Every task (up to 200), newest first.
    pub async fn tasks(&self) -> Vec<Value> {
        self.get("/tasks?limit=200").await["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn task_named(&self, name: &str) -> Option<Value> {
        self.get(&format!("/tasks?name={name}")).await["items"]
            .as_array()
            .and_then(|a| a.first().cloned())
    }

    pub async fn sql_count(&self, query: &str) -> i64 {
        self.db
            .client()
            .await
            .query_one(query, &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn audit_total(&self) -> i64 {
        self.sql_count("SELECT count(*) FROM audit_log").await
    }

    pub async fn audit(&self, action: &str) -> i64 {
        self.sql_count(&format!(
            "SELECT count(*) FROM audit_log WHERE action = '{action}'"
        ))
        .await
    }
}

/// A valid YAML definition.
pub fn yaml_def(name: &str, priority: i32) -> String {
    format!(
        "name: {name}\ntitle: Task {name}\nschedule_kind: cron\nschedule_expr: \"*/5 * * * *\"\ntimezone: UTC\n\
         priority: {priority}\npayload:\n  params:\n    who: {name}\n  pipeline:\n    - id: n\n      uses: noop\n"
    )
}

pub fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
}
