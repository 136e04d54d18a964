//! The everyday operations: one function per command group, each a thin layer over the REST API.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::cli::{
    AgentsCmd, ContextCmd, DeadCmd, EventsCmd, LoginArgs, PreviewArgs, RunsCmd, TasksCmd, TokensCmd,
};
use crate::client::Client;
use crate::config::{self, ConfigFile, Target};
use crate::error::{CliError, CliResult};
use crate::manifest::SERVER_FIELDS;
use crate::output::{self, cell, details, paint, print, table, when, Color, Format, Progress};

const TASK_KEYS: &[&str] = &[
    "id",
    "name",
    "title",
    "status",
    "schedule_kind",
    "schedule_expr",
    "timezone",
    "next_run_at",
    "priority",
    "max_retries",
    "backoff_strategy",
    "timeout_seconds",
    "misfire_grace_seconds",
    "catchup",
    "overlap",
    "queue",
    "rate_key",
    "concurrency_key",
    "dedupe_key",
    "dedupe_window_seconds",
    "description",
    "payload",
    "after",
    "created_by",
    "created_at",
    "updated_at",
];

fn status_cell(color: bool, status: &str) -> String {
    match status {
        "active" => paint(color, Color::Green, status),
        "paused" => paint(color, Color::Yellow, status),
        "canceled" => paint(color, Color::Red, status),
        _ => status.to_string(),
    }
}

/// A task by id or by name (among the caller's tasks; an admin with a name held by several owners is
/// asked to use the id, unless one of them is the admin's own).
pub fn resolve_task(client: &Client, reference: &str) -> CliResult<Value> {
    if let Ok(id) = Uuid::parse_str(reference) {
        return client.get(&format!("/tasks/{id}"));
    }
    let page = client.get_query(
        "/tasks",
        &[("name", reference.to_string()), ("limit", "200".into())],
    )?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    match items.len() {
        0 => Err(CliError::Api {
            status: 404,
            code: "not_found".into(),
            message: format!("no task is named {reference:?}"),
            details: Value::Null,
        }),
        1 => Ok(items[0].clone()),
        _ => {
            let me = crate::apply::whoami(client)?;
            items
                .into_iter()
                .find(|t| t["created_by"].as_str() == Some(me.as_str()))
                .ok_or_else(|| {
                    CliError::Refused(format!(
                        "several agents have a task named {reference:?}; use its id"
                    ))
                })
        }
    }
}

fn task_id(client: &Client, reference: &str) -> CliResult<String> {
    if Uuid::parse_str(reference).is_ok() {
        return Ok(reference.to_string());
    }
    Ok(resolve_task(client, reference)?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn task_rows(items: &[Value], color: bool) -> String {
    table(
        &[
            "name", "id", "status", "kind", "schedule", "tz", "next run", "title",
        ],
        items
            .iter()
            .map(|t| {
                vec![
                    cell(&t["name"]),
                    cell(&t["id"]),
                    status_cell(color, t["status"].as_str().unwrap_or("")),
                    cell(&t["schedule_kind"]),
                    cell(&t["schedule_expr"]),
                    cell(&t["timezone"]),
                    when(&t["next_run_at"]),
                    cell(&t["title"]),
                ]
            })
            .collect(),
    )
}

/// "90", "90s", "15m", "2h", "1d" → seconds.
pub fn parse_delay(s: &str) -> CliResult<i64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: i64 = num.parse().map_err(|_| {
        CliError::Usage(format!(
            "the delay {s:?} is not a number of seconds or a number with s, m, h or d"
        ))
    })?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(CliError::Usage(format!(
                "the delay unit {unit:?} is not s, m, h or d"
            )))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| CliError::Usage(format!("the delay {s:?} is too long")))
}

fn parse_json_arg(what: &str, text: &str) -> CliResult<Value> {
    serde_json::from_str(text)
        .map_err(|e| CliError::Usage(format!("{what} is not valid JSON: {e}")))
}

pub fn tasks(client: &Client, cmd: TasksCmd, fmt: Format) -> CliResult<()> {
    let color = output::color_stdout();
    match cmd {
        TasksCmd::Ls {
            status,
            kind,
            name,
            limit,
            all,
        } => {
            let mut q: Vec<(&str, String)> = Vec::new();
            if let Some(s) = status {
                q.push(("status", s));
            }
            if let Some(k) = kind {
                q.push(("schedule_kind", k));
            }
            if let Some(n) = name {
                q.push(("name", n));
            }
            let items = if all {
                client.get_all("/tasks", &q)?
            } else {
                q.push(("limit", limit.to_string()));
                client.get_query("/tasks", &q)?["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            };
            print(fmt, &Value::Array(items), |v| {
                task_rows(v.as_array().map(Vec::as_slice).unwrap_or(&[]), color)
            })
        }
        TasksCmd::Get { task, export } => {
            let mut t = resolve_task(client, &task)?;
            if export {
                if let Value::Object(m) = &mut t {
                    for k in SERVER_FIELDS {
                        m.remove(*k);
                    }
                    // `after` entries name their parent as written; the resolved id is the server's.
                    if let Some(Value::Array(after)) = m.get_mut("after") {
                        for entry in after {
                            if let Value::Object(e) = entry {
                                e.remove("task_id");
                            }
                        }
                    }
                }
                let keys: Vec<&str> = TASK_KEYS
                    .iter()
                    .copied()
                    .filter(|k| !SERVER_FIELDS.contains(k))
                    .collect();
                return print(fmt, &t, |v| details(v, &keys));
            }
            print(fmt, &t, |v| details(v, TASK_KEYS))
        }
        TasksCmd::Pause { tasks } => transition(client, &tasks, "pause", fmt),
        TasksCmd::Resume { tasks } => transition(client, &tasks, "resume", fmt),
        TasksCmd::Cancel { tasks } => transition(client, &tasks, "cancel", fmt),
        TasksCmd::Run { task, params } => {
            let id = task_id(client, &task)?;
            let body = match params {
                Some(p) => Some(json!({"params": parse_json_arg("--params", &p)?})),
                None => None,
            };
            let r = client.post(&format!("/tasks/{id}/run_now"), body.as_ref())?;
            print(fmt, &r, |v| {
                format!(
                    "queued run of {task} (due_work {}, at {})",
                    cell(&v["due_work_id"]),
                    when(&v["run_at"])
                )
            })
        }
        TasksCmd::Snooze { task, delay } => {
            let seconds = parse_delay(&delay)?;
            let id = task_id(client, &task)?;
            let r = client.post(
                &format!("/tasks/{id}/snooze"),
                Some(&json!({"delay_seconds": seconds})),
            )?;
            print(fmt, &r, |v| {
                format!(
                    "snoozed {task}: the fire of {} now runs at {}",
                    when(&v["run_at"]),
                    when(&v["ready_at"])
                )
            })
        }
        TasksCmd::Rm { tasks } => {
            let mut done = Vec::new();
            for t in &tasks {
                let id = task_id(client, t)?;
                client.delete(&format!("/tasks/{id}"))?;
                done.push(json!({"task": t, "id": id, "deleted": true}));
            }
            print(fmt, &Value::Array(done), |v| {
                v.as_array()
                    .unwrap_or(&vec![])
                    .iter()
                    .map(|d| format!("deleted {} ({})", cell(&d["task"]), cell(&d["id"])))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}

fn transition(client: &Client, tasks: &[String], verb: &str, fmt: Format) -> CliResult<()> {
    let mut results = Vec::new();
    for t in tasks {
        let id = task_id(client, t)?;
        let r = client.post(&format!("/tasks/{id}/{verb}"), None)?;
        results.push(r);
    }
    print(fmt, &Value::Array(results), |v| {
        v.as_array()
            .unwrap_or(&vec![])
            .iter()
            .map(|r| {
                let name = r["task"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| cell(&r["task"]["id"]));
                format!(
                    "{name}: {} → {}",
                    cell(&r["previous_status"]),
                    cell(&r["task"]["status"])
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

fn duration_ms(run: &Value) -> String {
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    };
    match (parse(&run["started_at"]), parse(&run["finished_at"])) {
        (Some(a), Some(b)) => format!("{}ms", (b - a).num_milliseconds()),
        _ => "-".into(),
    }
}

fn outcome(color: bool, run: &Value) -> String {
    if run["success"].as_bool() == Some(true) {
        paint(color, Color::Green, "ok")
    } else {
        paint(color, Color::Red, "failed")
    }
}

fn run_rows(items: &[Value], color: bool) -> String {
    table(
        &[
            "id", "task", "attempt", "trigger", "result", "duration", "finished", "error",
        ],
        items
            .iter()
            .map(|r| {
                let err: String = r["error"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(60)
                    .collect();
                vec![
                    cell(&r["id"]),
                    cell(&r["task_id"]),
                    cell(&r["attempt"]),
                    cell(&r["trigger"]),
                    outcome(color, r),
                    duration_ms(r),
                    when(&r["finished_at"]),
                    err,
                ]
            })
            .collect(),
    )
}

pub fn runs(client: &Client, cmd: RunsCmd, fmt: Format) -> CliResult<()> {
    let color = output::color_stdout();
    match cmd {
        RunsCmd::Ls {
            task,
            failed,
            succeeded,
            since,
            limit,
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if let Some(t) = task {
                q.push(("task_id", task_id(client, &t)?));
            }
            if failed {
                q.push(("success", "false".into()));
            }
            if succeeded {
                q.push(("success", "true".into()));
            }
            if let Some(s) = since {
                q.push(("since", s));
            }
            let items = client.get_query("/runs", &q)?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            print(fmt, &Value::Array(items), |v| {
                run_rows(v.as_array().map(Vec::as_slice).unwrap_or(&[]), color)
            })
        }
        RunsCmd::Get { id } => {
            let r = client.get(&format!("/runs/{id}"))?;
            print(fmt, &r, |v| {
                details(
                    v,
                    &[
                        "id",
                        "task_id",
                        "due_work_id",
                        "attempt",
                        "worker_id",
                        "trigger",
                        "scheduled_for",
                        "started_at",
                        "finished_at",
                        "success",
                        "error_kind",
                        "error",
                        "output",
                    ],
                )
            })
        }
        RunsCmd::Tail {
            task,
            lines,
            interval_ms,
        } => tail_runs(client, task, lines, Duration::from_millis(interval_ms), fmt),
    }
}

fn finished(run: &Value) -> Option<DateTime<FixedOffset>> {
    run["finished_at"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
}

/// Polls GET /runs: every run finished since a moving window that was not printed yet is printed, oldest
/// first. The window (30 s before the newest run seen) catches runs committed a little out of order.
fn tail_runs(
    client: &Client,
    task: Option<String>,
    lines: u32,
    interval: Duration,
    fmt: Format,
) -> CliResult<()> {
    let color = output::color_stdout();
    let task_filter = match task {
        Some(t) => Some(task_id(client, &t)?),
        None => None,
    };
    let mut names: HashMap<String, String> = HashMap::new();
    let mut seen: HashSet<i64> = HashSet::new();
    let mut newest: Option<DateTime<FixedOffset>> = None;
    let base: Vec<(&str, String)> = task_filter
        .iter()
        .map(|id| ("task_id", id.clone()))
        .collect();
    // The recent history first.
    let mut q = base.clone();
    q.push(("limit", lines.clamp(1, 200).to_string()));
    let first = client.get_query("/runs", &q)?;
    let mut initial = first["items"].as_array().cloned().unwrap_or_default();
    initial.reverse();
    for r in &initial {
        seen.insert(r["id"].as_i64().unwrap_or(0));
        newest = newest.max(finished(r));
    }
    let skip = initial.len().saturating_sub(lines as usize);
    for r in &initial[skip..] {
        print_run_line(client, &mut names, r, fmt, color);
    }
    loop {
        std::thread::sleep(interval);
        let mut q = base.clone();
        q.push(("limit", "200".into()));
        if let Some(t) = newest {
            let since = (t - chrono::Duration::seconds(30)).with_timezone(&Utc);
            q.push((
                "since",
                since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ));
        }
        let page = client.get_query("/runs", &q)?;
        let mut fresh: Vec<Value> = page["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !seen.contains(&r["id"].as_i64().unwrap_or(0)))
            .collect();
        fresh.sort_by_key(|r| (finished(r), r["id"].as_i64()));
        for r in &fresh {
            seen.insert(r["id"].as_i64().unwrap_or(0));
            newest = newest.max(finished(r));
            print_run_line(client, &mut names, r, fmt, color);
        }
        if seen.len() > 100_000 {
            seen.clear();
        }
    }
}

fn print_run_line(
    client: &Client,
    names: &mut HashMap<String, String>,
    r: &Value,
    fmt: Format,
    color: bool,
) {
    let mut out = std::io::stdout().lock();
    let line = match fmt {
        Format::Json => serde_json::to_string(r).unwrap_or_default(),
        Format::Yaml => format!(
            "---\n{}",
            serde_norway::to_string(r).unwrap_or_default().trim_end()
        ),
        Format::Table => {
            let id = r["task_id"].as_str().unwrap_or("").to_string();
            let name = names
                .entry(id.clone())
                .or_insert_with(|| {
                    client
                        .get(&format!("/tasks/{id}"))
                        .ok()
                        .and_then(|t| t["name"].as_str().map(str::to_string))
                        .unwrap_or_else(|| id.clone())
                })
                .clone();
            let err = r["error"]
                .as_str()
                .map(|e| format!("  {}", e.lines().next().unwrap_or("")))
                .unwrap_or_default();
            format!(
                "{}  run {}  {}  attempt {}  {}  {}  {}{}",
                when(&r["finished_at"]),
                cell(&r["id"]),
                name,
                cell(&r["attempt"]),
                cell(&r["trigger"]),
                outcome(color, r),
                duration_ms(r),
                err
            )
        }
    };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn dead(client: &Client, cmd: DeadCmd, fmt: Format) -> CliResult<()> {
    match cmd {
        DeadCmd::Ls { limit } => {
            let items = client.get_query("/queue/dead", &[("limit", limit.to_string())])?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            print(fmt, &Value::Array(items), |v| {
                table(
                    &["id", "task", "attempt", "trigger", "dead at", "error"],
                    v.as_array()
                        .unwrap_or(&vec![])
                        .iter()
                        .map(|d| {
                            vec![
                                cell(&d["id"]),
                                cell(&d["task_id"]),
                                cell(&d["attempt"]),
                                cell(&d["trigger"]),
                                when(&d["dead_at"]),
                                d["last_error"]
                                    .as_str()
                                    .unwrap_or("")
                                    .chars()
                                    .take(60)
                                    .collect(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        DeadCmd::Replay { ids, all } => {
            let ids: Vec<i64> = if all {
                client
                    .get_all("/queue/dead", &[])?
                    .iter()
                    .filter_map(|d| d["id"].as_i64())
                    .collect()
            } else {
                ids
            };
            let mut progress = Progress::new(ids.len());
            let mut results = Vec::new();
            let mut failures = 0;
            for id in ids {
                progress.step(&format!("replaying {id}"));
                match client.post(&format!("/queue/dead/{id}/replay"), None) {
                    Ok(r) => results
                        .push(json!({"id": id, "replayed": true, "due_work_id": r["due_work_id"]})),
                    Err(e @ CliError::Connect { .. }) => return Err(e),
                    Err(e) => {
                        failures += 1;
                        results.push(json!({"id": id, "replayed": false, "error": e.render()}));
                    }
                }
            }
            progress.finish();
            print(fmt, &Value::Array(results.clone()), |v| {
                let mut lines: Vec<String> = v
                    .as_array()
                    .unwrap_or(&vec![])
                    .iter()
                    .map(|r| {
                        if r["replayed"] == true {
                            format!("replayed {}", cell(&r["id"]))
                        } else {
                            format!("not replayed {}: {}", cell(&r["id"]), cell(&r["error"]))
                        }
                    })
                    .collect();
                if lines.is_empty() {
                    lines.push("nothing to replay".into());
                }
                lines.join("\n")
            })?;
            if failures > 0 {
                return Err(CliError::Refused(format!(
                    "{failures} of {} could not be replayed",
                    results.len()
                )));
            }
            Ok(())
        }
        DeadCmd::Rm { ids } => {
            for id in &ids {
                client.delete(&format!("/queue/dead/{id}"))?;
            }
            let v = Value::Array(
                ids.iter()
                    .map(|id| json!({"id": id, "deleted": true}))
                    .collect(),
            );
            print(fmt, &v, |_| {
                ids.iter()
                    .map(|id| format!("deleted dead work {id}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}

pub fn workers(client: &Client, fmt: Format) -> CliResult<()> {
    let color = output::color_stdout();
    let items = client.get("/workers")?["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    print(fmt, &Value::Array(items), |v| {
        table(
            &[
                "worker",
                "host",
                "pid",
                "state",
                "alive",
                "in flight",
                "processed",
                "failed",
                "last seen",
            ],
            v.as_array()
                .unwrap_or(&vec![])
                .iter()
                .map(|w| {
                    let alive = if w["alive"] == true {
                        paint(color, Color::Green, "yes")
                    } else {
                        paint(color, Color::Red, "no")
                    };
                    vec![
                        cell(&w["worker_id"]),
                        cell(&w["hostname"]),
                        cell(&w["pid"]),
                        cell(&w["state"]),
                        alive,
                        cell(&w["in_flight"]),
                        cell(&w["processed"]),
                        cell(&w["failed"]),
                        when(&w["last_seen"]),
                    ]
                })
                .collect(),
        )
    })
}

pub fn queue(client: &Client, fmt: Format) -> CliResult<()> {
    let q = client.get("/queue")?;
    print(fmt, &q, |v| {
        details(
            v,
            &[
                "ready",
                "scheduled",
                "leased",
                "dead",
                "oldest_ready_age_seconds",
                "by_priority",
            ],
        )
    })
}

fn stream_key(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap_or((id, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

pub fn events(client: &Client, cmd: EventsCmd, fmt: Format) -> CliResult<()> {
    match cmd {
        EventsCmd::Publish {
            topic,
            payload,
            payload_file,
        } => {
            let payload = match (payload, payload_file) {
                (Some(p), _) => parse_json_arg("--payload", &p)?,
                (None, Some(path)) => {
                    let text = if path.as_os_str() == "-" {
                        let mut s = String::new();
                        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(
                            |e| CliError::Usage(format!("cannot read standard input: {e}")),
                        )?;
                        s
                    } else {
                        std::fs::read_to_string(&path).map_err(|e| {
                            CliError::Usage(format!("cannot read {}: {e}", path.display()))
                        })?
                    };
                    parse_json_arg(&path.display().to_string(), &text)?
                }
                (None, None) => json!({}),
            };
            let r = client.post(
                "/events",
                Some(&json!({"topic": topic, "payload": payload})),
            )?;
            print(fmt, &r, |v| {
                let matching: Vec<String> = v["matching_tasks"]
                    .as_array()
                    .unwrap_or(&vec![])
                    .iter()
                    .map(|t| cell(&t["title"]))
                    .collect();
                format!(
                    "published {} ({}); matching tasks: {}",
                    cell(&v["event_id"]),
                    cell(&v["stream_id"]),
                    if matching.is_empty() {
                        "none".into()
                    } else {
                        matching.join(", ")
                    }
                )
            })
        }
        EventsCmd::Tail { lines, interval_ms } => {
            let mut last: Option<(u64, u64)> = None;
            let mut first = true;
            loop {
                let page = client.get_query("/events/recent", &[("count", "1000".into())])?;
                let mut items = page["items"].as_array().cloned().unwrap_or_default();
                items.sort_by_key(|e| stream_key(e["stream_id"].as_str().unwrap_or("0-0")));
                let fresh: Vec<&Value> = if first {
                    let skip = items.len().saturating_sub(lines as usize);
                    if let Some(e) = items.last() {
                        last = Some(stream_key(e["stream_id"].as_str().unwrap_or("0-0")));
                    }
                    items[skip..].iter().collect()
                } else {
                    items
                        .iter()
                        .filter(|e| {
                            Some(stream_key(e["stream_id"].as_str().unwrap_or("0-0"))) > last
                        })
                        .collect()
                };
                first = false;
                let mut out = std::io::stdout().lock();
                for e in fresh {
                    last = last.max(Some(stream_key(e["stream_id"].as_str().unwrap_or("0-0"))));
                    let line = match fmt {
                        Format::Json => serde_json::to_string(e).unwrap_or_default(),
                        Format::Yaml => format!(
                            "---\n{}",
                            serde_norway::to_string(e).unwrap_or_default().trim_end()
                        ),
                        Format::Table => format!(
                            "{}  {}  {}  {}",
                            cell(&e["published_at"]),
                            cell(&e["topic"]),
                            cell(&e["event_id"]),
                            serde_json::to_string(&e["payload"]).unwrap_or_default()
                        ),
                    };
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
                drop(out);
                std::thread::sleep(Duration::from_millis(interval_ms));
            }
        }
    }
}

/// The offset of a fire's local time; a change from the previous fire is a DST (or zone rule) change.
pub fn offset_of(local: &str) -> Option<FixedOffset> {
    DateTime::parse_from_rfc3339(local)
        .ok()
        .map(|t| *t.offset())
}

pub fn preview(client: &Client, p: &PreviewArgs, fmt: Format) -> CliResult<()> {
    let mut body = json!({"schedule_kind": p.kind, "schedule_expr": p.expr, "count": p.count});
    if let Some(tz) = &p.tz {
        body["timezone"] = json!(tz);
    }
    if let Some(after) = &p.after {
        body["after"] = json!(after);
    }
    let r = client.post("/schedules/preview", Some(&body))?;
    let color = output::color_stdout();
    print(fmt, &r, |v| {
        let fires = v["fires"].as_array().cloned().unwrap_or_default();
        if fires.is_empty() {
            return "no fires (an event schedule, or the rule is exhausted)".into();
        }
        let mut prev: Option<FixedOffset> = None;
        let rows = fires
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let local = f["local"].as_str().unwrap_or("");
                let off = offset_of(local);
                let note = match (prev, off) {
                    (Some(a), Some(b)) if a != b => {
                        paint(color, Color::Yellow, &format!("DST: offset {a} → {b}"))
                    }
                    _ => String::new(),
                };
                prev = off;
                vec![(i + 1).to_string(), cell(&f["at"]), local.to_string(), note]
            })
            .collect();
        table(&["#", "utc", "local", "note"], rows)
    })
}

/// An agent by id or by name.
fn agent_id(client: &Client, reference: &str) -> CliResult<String> {
    if Uuid::parse_str(reference).is_ok() {
        return Ok(reference.to_string());
    }
    client
        .get_all("/agents", &[])?
        .into_iter()
        .find(|a| a["name"].as_str() == Some(reference))
        .and_then(|a| a["id"].as_str().map(str::to_string))
        .ok_or_else(|| CliError::Api {
            status: 404,
            code: "not_found".into(),
            message: format!("no agent is named {reference:?}"),
            details: Value::Null,
        })
}

fn agent_rows(items: &[Value]) -> String {
    table(
        &["name", "id", "scopes", "webhook", "created"],
        items
            .iter()
            .map(|a| {
                let scopes: Vec<String> = a["scopes"]
                    .as_array()
                    .unwrap_or(&vec![])
                    .iter()
                    .map(cell)
                    .collect();
                vec![
                    cell(&a["name"]),
                    cell(&a["id"]),
                    scopes.join(","),
                    cell(&a["webhook_url"]),
                    when(&a["created_at"]),
                ]
            })
            .collect(),
    )
}

pub fn agents(client: &Client, cmd: AgentsCmd, fmt: Format) -> CliResult<()> {
    match cmd {
        AgentsCmd::Ls => {
            let items = client.get_all("/agents", &[])?;
            print(fmt, &Value::Array(items), |v| {
                agent_rows(v.as_array().map(Vec::as_slice).unwrap_or(&[]))
            })
        }
        AgentsCmd::Get { agent } => {
            let id = agent_id(client, &agent)?;
            let a = client.get(&format!("/agents/{id}"))?;
            print(fmt, &a, |v| {
                details(
                    v,
                    &[
                        "id",
                        "name",
                        "scopes",
                        "webhook_url",
                        "created_at",
                        "updated_at",
                    ],
                )
            })
        }
        AgentsCmd::Create {
            name,
            scopes,
            webhook_url,
        } => {
            let mut body = json!({"name": name, "scopes": scopes});
            if let Some(w) = webhook_url {
                body["webhook_url"] = json!(w);
            }
            let r = client.post("/agents", Some(&body))?;
            print(fmt, &r, |v| {
                format!(
                    "created agent {} ({})\ntoken (shown once, store it now): {}",
                    cell(&v["agent"]["name"]),
                    cell(&v["agent"]["id"]),
                    cell(&v["token"])
                )
            })
        }
        AgentsCmd::Rm { agent } => {
            let id = agent_id(client, &agent)?;
            client.delete(&format!("/agents/{id}"))?;
            print(fmt, &json!({"id": id, "deleted": true}), |_| {
                format!("deleted agent {agent} ({id})")
            })
        }
    }
}

pub fn tokens(client: &Client, cmd: TokensCmd, fmt: Format) -> CliResult<()> {
    match cmd {
        TokensCmd::Ls { agent } => {
            let id = agent_id(client, &agent)?;
            let items = client.get(&format!("/agents/{id}/tokens"))?["items"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            print(fmt, &Value::Array(items), |v| {
                table(
                    &["id", "created", "last used"],
                    v.as_array()
                        .unwrap_or(&vec![])
                        .iter()
                        .map(|t| {
                            vec![
                                cell(&t["id"]),
                                when(&t["created_at"]),
                                when(&t["last_used_at"]),
                            ]
                        })
                        .collect(),
                )
            })
        }
        TokensCmd::Create { agent } => {
            let id = agent_id(client, &agent)?;
            let r = client.post(&format!("/agents/{id}/tokens"), None)?;
            print(fmt, &r, |v| {
                format!(
                    "created token {} for {agent}\ntoken (shown once, store it now): {}",
                    cell(&v["id"]),
                    cell(&v["token"])
                )
            })
        }
        TokensCmd::Revoke { agent, token_id } => {
            let id = agent_id(client, &agent)?;
            client.delete(&format!("/agents/{id}/tokens/{token_id}"))?;
            print(fmt, &json!({"id": token_id, "revoked": true}), |_| {
                format!("revoked token {token_id} of {agent}")
            })
        }
    }
}

pub fn whoami(client: &Client, fmt: Format) -> CliResult<()> {
    let me = client.get("/agents/me")?;
    print(fmt, &me, |v| {
        let scopes: Vec<String> = v["scopes"]
            .as_array()
            .unwrap_or(&vec![])
            .iter()
            .map(cell)
            .collect();
        format!(
            "{} ({}) at {}; scopes: {}",
            cell(&v["name"]),
            cell(&v["id"]),
            client.base(),
            scopes.join(", ")
        )
    })
}

pub fn login(
    client: &Client,
    target: &Target,
    args: &LoginArgs,
    mut file: ConfigFile,
    path: Option<&Path>,
) -> CliResult<()> {
    let path = path.ok_or_else(|| {
        CliError::Usage(
            "no place for the profile file: set --config, XDG_CONFIG_HOME or HOME".into(),
        )
    })?;
    if target.token.is_none() {
        return Err(CliError::Usage(
            "login needs a token: --token, ORRERY_TOKEN or --token-stdin".into(),
        ));
    }
    let who = if args.no_verify {
        None
    } else {
        Some(client.get("/agents/me")?)
    };
    file.contexts.insert(
        args.name.clone(),
        config::Context {
            url: target.url.clone(),
            token: target.token.clone(),
        },
    );
    file.current_context = Some(args.name.clone());
    config::save(path, &file)?;
    match who {
        Some(me) => eprintln!(
            "logged in to {} as {} ; context {:?} stored in {} and made current",
            target.url,
            cell(&me["name"]),
            args.name,
            path.display()
        ),
        None => eprintln!(
            "context {:?} stored in {} (not verified) and made current",
            args.name,
            path.display()
        ),
    }
    Ok(())
}

pub fn context(
    cmd: &ContextCmd,
    file: &ConfigFile,
    path: Option<&Path>,
    fmt: Format,
) -> CliResult<()> {
    let path_or_err = || {
        path.ok_or_else(|| {
            CliError::Usage("no profile file: set --config, XDG_CONFIG_HOME or HOME".into())
        })
    };
    match cmd {
        ContextCmd::Ls => {
            let items: Vec<Value> = file
                .contexts
                .iter()
                .map(|(name, c)| {
                    json!({"name": name, "url": c.url, "current": file.current_context.as_deref() == Some(name.as_str()),
                           "has_token": c.token.is_some()})
                })
                .collect();
            print(fmt, &Value::Array(items), |v| {
                table(
                    &["current", "name", "url", "token"],
                    v.as_array()
                        .unwrap_or(&vec![])
                        .iter()
                        .map(|c| {
                            vec![
                                if c["current"] == true {
                                    "*".into()
                                } else {
                                    String::new()
                                },
                                cell(&c["name"]),
                                cell(&c["url"]),
                                if c["has_token"] == true {
                                    "yes".into()
                                } else {
                                    "no".into()
                                },
                            ]
                        })
                        .collect(),
                )
            })
        }
        ContextCmd::Use { name } => {
            if !file.contexts.contains_key(name) {
                return Err(CliError::Usage(format!("no context named {name:?}")));
            }
            let mut file = config::load(Some(path_or_err()?))?;
            file.current_context = Some(name.clone());
            config::save(path_or_err()?, &file)?;
            eprintln!("current context: {name}");
            Ok(())
        }
        ContextCmd::Rm { name } => {
            let mut file = config::load(Some(path_or_err()?))?;
            if file.contexts.remove(name).is_none() {
                return Err(CliError::Usage(format!("no context named {name:?}")));
            }
            if file.current_context.as_deref() == Some(name.as_str()) {
                file.current_context = None;
            }
            config::save(path_or_err()?, &file)?;
            eprintln!("removed context {name}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_take_units() {
        assert_eq!(parse_delay("90").unwrap(), 90);
        assert_eq!(parse_delay("15m").unwrap(), 900);
        assert_eq!(parse_delay("2h").unwrap(), 7200);
        assert_eq!(parse_delay("1d").unwrap(), 86_400);
        assert!(parse_delay("1w").is_err());
        assert!(parse_delay("soon").is_err());
    }

    #[test]
    fn stream_ids_order_numerically() {
        assert!(stream_key("1700000000000-10") > stream_key("1700000000000-9"));
        assert!(stream_key("1700000000001-0") > stream_key("1700000000000-99"));
    }
}
