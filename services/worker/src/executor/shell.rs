//! `shell`: runs a program on the worker host (docs/pipelines.md, "shell").
//!
//! Decisions:
//! - Off unless `WORKER_SHELL_ENABLED=true`, and then only programs matching `WORKER_SHELL_ALLOW`
//!   (`orrery::shell_policy`); anything else fails the run permanently with error kind `policy`, like the
//!   address policy of `http.request`. The API only checks the step's shape: what may run is the host's call.
//! - `program` + `args` are passed to execve as they are (no shell, no word splitting, no globbing).
//!   `shell: true` runs `/bin/sh -c <command>` instead, so `/bin/sh` must be allowed explicitly.
//!   A bare program name is looked up on the worker's own `PATH`; the allow list is checked against the path
//!   found (and, for a symlink, its target).
//! - The environment is not the worker's (which holds `DATABASE_URL` and keys): it is `PATH`
//!   (`/usr/local/bin:/usr/bin:/bin`), `HOME=/tmp`, `LANG=C.UTF-8`, `ORRERY_TASK_ID`, `ORRERY_RUN_ID`,
//!   `ORRERY_ATTEMPT`, `ORRERY_IDEMPOTENCY_KEY`, then the step's `env`.
//! - The program runs in its own process group. When the step's `timeout_seconds` passes, when the run is cut
//!   (run timeout, worker shutdown) and when the program itself exits, the whole group is killed with SIGKILL:
//!   nothing it started outlives the step.
//! - stdout and stderr are kept up to `WORKER_SHELL_OUTPUT_CAP_BYTES` (64 KiB) each, as UTF-8 (invalid bytes
//!   replaced); the rest is read and dropped and `stdout_truncated`/`stderr_truncated` say so.
//! - Exit code 0 succeeds. Any other exit (or death by a signal) fails the run with error kind `exit_code`,
//!   retryable unless the step says `retryable: false`; the output is kept in the run's `failed_step`. A
//!   timeout is `step_timeout` (retryable), also with the output so far. A program that cannot be started is
//!   `spawn` (permanent).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orrery::pipeline::{Step, SHELL_PATH};
use orrery::shell_policy::ShellPolicy;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{describe, BoxFuture, RunContext, RunFailure, Tool};

/// Default cap of each captured stream.
pub const DEFAULT_OUTPUT_CAP_BYTES: usize = 65_536;
/// The `PATH` a program sees.
pub const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long the pipes may stay open after the process group was killed (a process that left the group).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// The tool with the host's policy.
#[derive(Clone, Debug)]
pub struct ShellTool {
    enabled: bool,
    policy: Arc<ShellPolicy>,
    cap: usize,
}

impl Default for ShellTool {
    fn default() -> Self {
        Self::disabled()
    }
}

impl ShellTool {
    pub fn new(enabled: bool, policy: ShellPolicy, cap: usize) -> Self {
        Self {
            enabled,
            policy: Arc::new(policy),
            cap: cap.max(1),
        }
    }

    pub fn disabled() -> Self {
        Self::new(false, ShellPolicy::default(), DEFAULT_OUTPUT_CAP_BYTES)
    }
}

impl Tool for ShellTool {
    /// The tool applies the step's timeout itself, so that the output so far is kept and the group killed.
    fn bounded_by_step_timeout(&self) -> bool {
        false
    }

    fn run<'a>(
        &'a self,
        step: &'a Step,
        with: Value,
        ctx: &'a RunContext,
    ) -> BoxFuture<'a, Result<Value, RunFailure>> {
        Box::pin(self.exec(step, with, ctx))
    }
}

fn template_error(field: &str, value: Option<&Value>, expected: &str) -> RunFailure {
    RunFailure::permanent(
        "template",
        format!(
            "with.{field} rendered to {}; expected {expected}",
            describe(value)
        ),
    )
}

fn string_field(with: &Value, field: &str) -> Result<Option<String>, RunFailure> {
    match with.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.contains('\0') => Ok(Some(s.clone())),
        other => Err(template_error(
            field,
            other,
            "a string without NUL characters",
        )),
    }
}

/// The program and its arguments, as execve will get them.
fn command_line(with: &Value) -> Result<(String, Vec<String>), RunFailure> {
    if with.get("shell").and_then(Value::as_bool).unwrap_or(false) {
        let command = string_field(with, "command")?
            .ok_or_else(|| template_error("command", None, "a command line"))?;
        return Ok((SHELL_PATH.to_string(), vec!["-c".into(), command]));
    }
    let program = string_field(with, "program")?
        .filter(|p| !p.is_empty())
        .ok_or_else(|| template_error("program", with.get("program"), "a program"))?;
    let args = match with.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, a)| match a {
                Value::String(s) if !s.contains('\0') => Ok(s.clone()),
                other => Err(template_error(
                    &format!("args[{i}]"),
                    Some(other),
                    "a string without NUL characters",
                )),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(template_error("args", other, "an array of strings")),
    };
    Ok((program, args))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// An absolute program as is; a bare name on the worker's PATH.
fn resolve(program: &str) -> Result<PathBuf, RunFailure> {
    if program.starts_with('/') {
        return Ok(PathBuf::from(program));
    }
    if program.contains('/') {
        return Err(RunFailure::permanent(
            "policy",
            format!("program {program:?} must be an absolute path or a bare name"),
        ));
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| CHILD_PATH.to_string());
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            RunFailure::permanent(
                "spawn",
                format!("program {program:?} was not found on the worker's PATH"),
            )
        })
}

/// Kills the process group when dropped unless disarmed: a step cut by a timeout, the run's timeout or a
/// shutdown leaves nothing running.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: kill(2) with a negative pid signals the process group we created; no memory is involved.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Captured bytes as text: invalid UTF-8 and NUL (which PostgreSQL cannot store in JSON) become U+FFFD.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}")
}

/// Reads a stream to its end, keeping at most `cap` bytes; returns (kept, truncated).
async fn capture<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

impl ShellTool {
    async fn exec(&self, step: &Step, with: Value, ctx: &RunContext) -> Result<Value, RunFailure> {
        if !self.enabled {
            return Err(RunFailure::permanent(
                "policy",
                "the shell tool is disabled on this worker (WORKER_SHELL_ENABLED is not true)",
            ));
        }
        let (program, args) = command_line(&with)?;
        let resolved = resolve(&program)?;
        let shown = resolved.to_string_lossy().into_owned();
        let canonical = std::fs::canonicalize(&resolved)
            .map(|p| p.to_string_lossy().into_owned())
            .ok();
        let allowed = self.policy.allows(&shown)
            || canonical.as_deref().is_some_and(|c| self.policy.allows(c));
        if !allowed {
            return Err(RunFailure::permanent(
                "policy",
                format!("program {shown} is not allowed on this worker (WORKER_SHELL_ALLOW)"),
            ));
        }

        let mut command = Command::new(&resolved);
        command
            .args(&args)
            .env_clear()
            .env("PATH", CHILD_PATH)
            .env("HOME", "/tmp")
            .env("LANG", "C.UTF-8")
            .env("ORRERY_TASK_ID", ctx.task_id.to_string())
            .env("ORRERY_RUN_ID", ctx.run_id.to_string())
            .env("ORRERY_ATTEMPT", ctx.attempt.to_string())
            .env("ORRERY_IDEMPOTENCY_KEY", ctx.run_id.to_string())
            .process_group(0)
            .kill_on_drop(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match with.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(env)) => {
                for (name, value) in env {
                    match value {
                        Value::String(v) if !v.contains('\0') => {
                            command.env(name, v);
                        }
                        other => {
                            return Err(template_error(
                                &format!("env.{name}"),
                                Some(other),
                                "a string without NUL characters",
                            ))
                        }
                    }
                }
            }
            other => return Err(template_error("env", other, "an object of strings")),
        }
        if let Some(cwd) = string_field(&with, "cwd")? {
            if !cwd.starts_with('/') {
                return Err(template_error("cwd", with.get("cwd"), "an absolute path"));
            }
            command.current_dir(cwd);
        }
        let stdin = match with.get("stdin") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone().into_bytes()),
            Some(other) => Some(other.to_string().into_bytes()),
        };
        command.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let retryable = with
            .get("retryable")
            .and_then(Value::as_bool)
            .unwrap_or(true);

        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|e| RunFailure::permanent("spawn", format!("cannot start {shown}: {e}")))?;
        let mut guard = GroupGuard {
            pgid: child.id().map(|id| id as i32),
        };
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A program that does not read its input must not block the step: write in the background.
            tokio::spawn(async move {
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            });
        }
        let cap = self.cap;
        let stdout = tokio::spawn(capture(child.stdout.take(), cap));
        let stderr = tokio::spawn(capture(child.stderr.take(), cap));

        let limit = step.timeout_seconds.map(Duration::from_secs);
        let status = match limit {
            Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        // Whatever the program left behind in its group goes with it (this also closes the pipes).
        guard.kill();
        let status = match status {
            Some(s) => Some(s.map_err(|e| {
                RunFailure::retryable("spawn", format!("waiting for {shown} failed: {e}"))
            })?),
            None => {
                let _ = child.wait().await;
                None
            }
        };
        let drain = |h: tokio::task::JoinHandle<(Vec<u8>, bool)>| async move {
            tokio::time::timeout(DRAIN_AFTER_EXIT, h)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or((Vec::new(), true))
        };
        let (out, out_truncated) = drain(stdout).await;
        let (err, err_truncated) = drain(stderr).await;
        let output = json!({
            "exit_code": status.and_then(|s| s.code()),
            "signal": status.and_then(|s| s.signal()),
            "stdout": text(&out),
            "stderr": text(&err),
            "stdout_truncated": out_truncated,
            "stderr_truncated": err_truncated,
            "duration_ms": started.elapsed().as_millis() as u64,
        });
        let Some(status) = status else {
            let limit = limit.unwrap_or_default();
            return Err(RunFailure::retryable(
                "step_timeout",
                format!(
                    "{shown} exceeded the step's timeout of {}s and was killed with its process group",
                    limit.as_secs()
                ),
            )
            .with_response(output));
        };
        if status.success() {
            return Ok(output);
        }
        let why = match (status.code(), status.signal()) {
            (Some(code), _) => format!("{shown} exited with code {code}"),
            (None, Some(signal)) => format!("{shown} was killed by signal {signal}"),
            _ => format!("{shown} failed"),
        };
        let failure = if retryable {
            RunFailure::retryable("exit_code", why)
        } else {
            RunFailure::permanent("exit_code", why)
        };
        Err(failure.with_response(output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::Map;

    fn ctx() -> RunContext {
        RunContext {
            task_id: uuid::Uuid::nil(),
            task_title: "t".into(),
            run_id: 7,
            attempt: 1,
            scheduled_for: Utc::now(),
            params: Map::new(),
            event: None,
            secrets: Map::new(),
            clock: orrery::clock::Clock::Database,
        }
    }

    fn step(timeout: Option<u64>) -> Step {
        Step {
            id: "s".into(),
            uses: "shell".into(),
            with: json!({}),
            save_as: None,
            r#if: None,
            timeout_seconds: timeout,
        }
    }

    fn tool(cap: usize) -> ShellTool {
        ShellTool::new(
            true,
            ShellPolicy::parse("/bin/sh,/usr/bin/*,/bin/*").unwrap(),
            cap,
        )
    }

    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    async fn wait_gone(pid: i32) {
        for _ in 0..200 {
            if gone(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("process {pid} is still running");
    }

    #[tokio::test]
    async fn output_beyond_the_cap_is_dropped_and_flagged() {
        let out = tool(1000)
            .run(
                &step(None),
                json!({"shell": true, "command": "head -c 100000 /dev/zero | tr '\\000' a; echo e >&2"}),
                &ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out["stdout"].as_str().unwrap(), "a".repeat(1000));
        assert_eq!(out["stdout_truncated"], true);
        assert_eq!(out["stderr"], "e\n");
        assert_eq!(out["stderr_truncated"], false);
    }

    #[tokio::test]
    async fn nul_bytes_and_invalid_utf8_are_replaced() {
        let out = tool(100)
            .run(
                &step(None),
                json!({"shell": true, "command": "printf 'a\\000b\\377c'"}),
                &ctx(),
            )
            .await
            .unwrap();
        assert_eq!(out["stdout"], "a\u{FFFD}b\u{FFFD}c");
    }

    #[tokio::test]
    async fn what_the_program_leaves_running_is_killed_when_it_exits() {
        let started = Instant::now();
        let out = tool(1000)
            .run(
                &step(None),
                json!({"shell": true, "command": "sleep 300 & echo $!"}),
                &ctx(),
            )
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
        let pid: i32 = out["stdout"].as_str().unwrap().trim().parse().unwrap();
        wait_gone(pid).await;
    }

    #[tokio::test]
    async fn a_step_cut_from_outside_kills_its_group() {
        let dir = std::env::temp_dir().join(format!("orrery-shell-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let t = tool(1000);
        let s = step(None);
        let c = ctx();
        let with = json!({"shell": true,
            "command": format!("sleep 300 & echo $! > {}; wait", pidfile.display())});
        // The run's timeout (or a shutdown) drops the step's future.
        let cut = tokio::time::timeout(Duration::from_millis(500), t.run(&s, with, &c)).await;
        assert!(cut.is_err());
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_gone(pid).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn unknown_and_relative_programs_fail_permanently() {
        let e = tool(10)
            .run(
                &step(None),
                json!({"program": "no-such-program-xyz"}),
                &ctx(),
            )
            .await
            .unwrap_err();
        assert_eq!((e.code, e.is_retryable()), ("spawn", false));
        let e = tool(10)
            .run(&step(None), json!({"program": "bin/sh"}), &ctx())
            .await
            .unwrap_err();
        assert_eq!(e.code, "policy");
        let e = tool(10)
            .run(
                &step(None),
                json!({"program": "/bin/echo", "args": ["a", 1]}),
                &ctx(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, "template");
        assert!(e.message.contains("args[1]"), "{}", e.message);
    }
}
