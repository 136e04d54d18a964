//! The test kit (dev crate `orrery-testing`): a fresh database per test cloned from a migrated template, an
//! isolated Redis key prefix per test, free ports, real binaries as child processes, and awaited conditions.
//!
//! Tests read `DATABASE_URL` / `REDIS_URL` (defaulting to the local services) and only ever create, use and
//! drop databases named `orrery_test_*` / `orrery_tpl_*` that they created.

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn base_database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_string())
}

/// Replaces the database name of a `postgres://` URL, keeping credentials, host and query.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    match query {
        Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
        None => format!("{scheme}://{authority}/{db}"),
    }
}

fn migrations_fingerprint() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        h.update(std::fs::read(&f).unwrap_or_default());
    }
    hex::encode(&h.finalize()[..6])
}

async fn admin_client() -> tokio_postgres::Client {
    let url = with_database(&base_database_url(), "postgres");
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of our own for one test, dropped (forcefully) when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A fresh migrated database, cloned from a template built once per migration set.
    pub async fn new() -> Self {
        let template = format!("orrery_tpl_{}", migrations_fingerprint());
        let admin = admin_client().await;
        // Build the template once, serialized across test processes.
        admin
            .execute("SELECT pg_advisory_lock(7243110001)", &[])
            .await
            .expect("advisory lock");
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
            .await
            .expect("query pg_database")
            .is_some();
        if !exists {
            let building = format!("{template}_building");
            let _ = admin
                .execute(
                    &format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
                    &[],
                )
                .await;
            admin
                .execute(&format!("CREATE DATABASE {building}"), &[])
                .await
                .expect("create template database");
            orrery::db::migrate(&with_database(&base_database_url(), &building))
                .await
                .expect("migrate template");
            admin
                .execute(
                    &format!("ALTER DATABASE {building} RENAME TO {template}"),
                    &[],
                )
                .await
                .expect("rename template");
        }
        admin
            .execute("SELECT pg_advisory_unlock(7243110001)", &[])
            .await
            .expect("advisory unlock");
        let name = format!("orrery_test_{}", uuid::Uuid::new_v4().simple());
        let mut tries = 0;
        loop {
            match admin
                .execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"), &[])
                .await
            {
                Ok(_) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50 + tries * 10)).await;
                }
                Err(e) => panic!("cannot clone the template database: {e}"),
            }
        }
        let url = with_database(&base_database_url(), &name);
        TestDb { name, url }
    }

    pub fn pool(&self) -> deadpool_postgres::Pool {
        orrery::db::build_pool(&self.url, 16).expect("pool")
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connect test db");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var("ORRERY_KEEP_TEST_DB").is_ok() {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let name = self.name.clone();
        // A separate thread with its own runtime: Drop may run inside or outside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    let url = with_database(&base_database_url(), "postgres");
                    if let Ok((client, conn)) = tokio_postgres::connect(&url, NoTls).await {
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        let _ = client
                            .execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), &[])
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// A unique Redis key prefix for one test (streams and keys of different tests never meet).
pub fn redis_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `check` every 10 ms until it yields `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Path of a workspace binary, next to the test executable's directory (`target/<profile>/`).
pub fn binary_path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("ORRERY_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} not found: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A real Orrery binary running as a child process; killed on drop. Its output goes to a log file that is
/// printed when the test panics.
pub struct Service {
    pub name: String,
    pub child: tokio::process::Child,
    pub log: PathBuf,
    pub health_port: u16,
}

/// The environment a test service needs: database, Redis prefix, quiet defaults.
pub fn base_env(db: &TestDb, prefix: &str) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("REDIS_URL".into(), redis_url()),
        ("REDIS_KEY_PREFIX".into(), prefix.to_string()),
        (
            "LOG_LEVEL".into(),
            std::env::var("TEST_SERVICE_LOG").unwrap_or_else(|_| "info".into()),
        ),
        ("DATABASE_POOL_SIZE".into(), "4".into()),
        // Test servers listen on loopback, which the http.request tool refuses unless allowed.
        (
            "WORKER_HTTP_ALLOW_CIDRS".into(),
            "127.0.0.0/8,::1/128".into(),
        ),
    ]
}

impl Service {
    /// Starts `binary` (e.g. "orrery-worker") with `env` on top of a cleared environment (PATH/HOME kept).
    pub async fn start(binary: &str, health_port: u16, env: &[(String, String)]) -> Service {
        let log_dir = std::env::temp_dir().join("orrery-test-logs");
        let _ = std::fs::create_dir_all(&log_dir);
        let log = log_dir.join(format!("{binary}-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file clone");
        let mut cmd = tokio::process::Command::new(binary_path(binary));
        cmd.env_clear();
        for key in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(key) {
                cmd.env(key, v);
            }
        }
        let port_var = match binary {
            "orrery-api" => "API_PORT",
            "orrery-scheduler" => "SCHEDULER_HEALTH_PORT",
            _ => "WORKER_HEALTH_PORT",
        };
        cmd.env(port_var, health_port.to_string());
        if binary == "orrery-api" {
            cmd.env("API_HOST", "127.0.0.1");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        cmd.kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Service {
            name: binary.to_string(),
            child,
            log,
            health_port,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().map(|p| p as i32).unwrap_or(-1)
    }

    /// GET a path on the service's port; returns (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.health_port, path).await
    }

    /// The value of one sample of the service's `/metrics` (`name` with its labels exactly as exposed, e.g.
    /// `orrery_scheduler_reconcile_duration_seconds_count{outcome="ok"}`); None while it is not exposed.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (status, body) = self.get("/metrics").await?;
        if status != 200 {
            return None;
        }
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
    }

    /// Waits until the scheduler has started and finished a whole materialization pass after this call: the
    /// awaited form of "a full tick later, nothing happened" (a pass already under way when called may have
    /// read the database before the caller's change, so two passes must end).
    pub async fn scheduler_full_pass(&self, timeout: Duration) {
        const PASSES: &str = "orrery_scheduler_reconcile_duration_seconds_count{outcome=\"ok\"}";
        let before = self.metric(PASSES).await.unwrap_or(0.0);
        wait_for("two scheduler passes", timeout, || async {
            (self.metric(PASSES).await.unwrap_or(0.0) >= before + 2.0).then_some(())
        })
        .await;
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let name = self.name.clone();
        let port = self.health_port;
        let log = self.log.clone();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = http_get(port, "/health/ready").await {
                return;
            }
            if Instant::now() > deadline {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("{name} not ready after {timeout:?}; log:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY-free: use the kill command to avoid a libc dependency.
            let _ = std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Sends SIGTERM and waits for the exit; returns (exit code, elapsed).
    pub async fn terminate(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        self.signal(15);
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => (status.code(), started.elapsed()),
            _ => (None, started.elapsed()),
        }
    }

    /// SIGKILL, no goodbye.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ({}):", self.name, self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.start_kill();
    }
}

/// A minimal HTTP/1.0 GET to 127.0.0.1:port (no client dependency needed for health probes).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()
        .flatten()
}

/// A private PostgreSQL cluster (initdb into a temporary directory, run as the `postgres` user, on a free port)
/// for fault tests that stop and restart the database underneath a running binary. Never the shared server.
pub struct PrivatePostgres {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
}

fn postgres_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .join("bin")
}

fn as_postgres_user(program: &std::path::Path, args: &[&str]) -> std::process::Command {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if is_root {
        let mut c = std::process::Command::new("runuser");
        c.arg("-u")
            .arg("postgres")
            .arg("--")
            .arg(program)
            .args(args);
        c
    } else {
        let mut c = std::process::Command::new(program);
        c.args(args);
        c
    }
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!("orrery-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("pg dir");
        let _ = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status();
        let data = dir.join("data");
        let data_s = data.to_string_lossy().into_owned();
        let out = as_postgres_user(
            &bin.join("initdb"),
            &["-D", &data_s, "-A", "trust", "-U", "postgres", "--no-sync"],
        )
        .output()
        .expect("initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
            bin,
        };
        pg.start_server();
        pg
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn start_server(&self) {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let out = as_postgres_user(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        )
        .output()
        .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop_server(&self) {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        let _ = as_postgres_user(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        )
        .output();
    }

    pub async fn create_database(&self, name: &str) {
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), NoTls)
            .await
            .expect("connect private pg");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
            .execute(&format!("CREATE DATABASE {name}"), &[])
            .await
            .expect("create database");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private redis-server on a free port, for tests that stop Redis underneath the services.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            child: None,
        };
        r.start_server();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn start_server(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop_server(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop_server();
    }
}
