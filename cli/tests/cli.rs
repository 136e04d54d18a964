//! The `orrery` binary against the real API and a real database (and a real worker for `runs tail`).

mod common;

use std::time::{Duration, Instant};

use common::{spawn, spawn_with, write, yaml_def, ADMIN};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

fn names(tasks: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = tasks
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    n.sort();
    n
}

fn updated_at(tasks: &[Value], name: &str) -> Value {
    tasks
        .iter()
        .find(|t| t["name"] == name)
        .map(|t| t["updated_at"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_twenty_then_changes_nothing_then_updates_one_then_prunes_one() {
    let env = spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 1..=18 {
        write(
            d,
            &format!("task-{i:02}.yaml"),
            &yaml_def(&format!("task-{i:02}"), 5),
        );
    }
    write(
        d,
        "task-19.json",
        &json!({"name": "task-19", "title": "Task 19", "schedule_kind": "rrule",
                "schedule_expr": "FREQ=DAILY;BYHOUR=3;BYMINUTE=0", "timezone": "Europe/Berlin",
                "payload": {"pipeline": [{"id": "n", "uses": "noop"}]}})
        .to_string(),
    );
    write(d, "nested/task-20.yml", &yaml_def("task-20", 3));
    write(d, "README.md", "not a definition");
    // A task without a name, made outside the files: apply never touches it, not even with --prune.
    let (status, unnamed) = env
        .api(
            Method::POST,
            "/tasks",
            Some(json!({"title": "hand made", "schedule_kind": "cron", "schedule_expr": "0 * * * *"})),
        )
        .await;
    assert_eq!(status, 201);
    let path = d.to_str().unwrap();

    // 1. Twenty new definitions: twenty creates.
    let out = env.ok(&["apply", "-f", path]).await;
    assert!(
        out.stdout
            .contains("20 created, 0 updated, 0 unchanged, 0 deleted"),
        "{out:?}"
    );
    let tasks = env.tasks().await;
    let expected: Vec<String> = (1..=20).map(|i| format!("task-{i:02}")).collect();
    assert_eq!(names(&tasks), expected);
    assert_eq!(env.audit("task.create").await, 21);
    let t19 = env.task_named("task-19").await.unwrap();
    assert_eq!(t19["timezone"], "Europe/Berlin");
    assert_eq!(t19["payload"]["pipeline"][0]["uses"], "noop");

    // 2. The same files again: nothing is written, no audit record.
    let audit_before = env.audit_total().await;
    let out = env.ok(&["apply", "-f", path]).await;
    assert!(
        out.stdout
            .contains("0 created, 0 updated, 20 unchanged, 0 deleted"),
        "{out:?}"
    );
    assert_eq!(env.audit_total().await, audit_before);
    let again = env.tasks().await;
    for name in &expected {
        assert_eq!(
            updated_at(&again, name),
            updated_at(&tasks, name),
            "{name} was written"
        );
    }

    // 3. One edited file: exactly that task is updated, with only the changed field.
    write(d, "task-07.yaml", &yaml_def("task-07", 9));
    let out = env.ok(&["apply", "-f", path]).await;
    assert!(
        out.stdout
            .contains("0 created, 1 updated, 19 unchanged, 0 deleted"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("updated  task-07") && out.stdout.contains("(priority)"),
        "{out:?}"
    );
    assert_eq!(env.audit("task.update").await, 1);
    let after = env.tasks().await;
    for name in &expected {
        let changed = updated_at(&after, name) != updated_at(&tasks, name);
        assert_eq!(changed, name == "task-07", "{name}");
    }
    assert_eq!(env.task_named("task-07").await.unwrap()["priority"], 9);

    // 4. A removed file: kept without --prune, deleted with it; the unnamed task survives.
    std::fs::remove_file(d.join("task-12.yaml")).unwrap();
    let out = env.ok(&["apply", "-f", path]).await;
    assert!(out.stdout.contains("0 deleted"), "{out:?}");
    assert!(env.task_named("task-12").await.is_some());
    let out = env.ok(&["apply", "-f", path, "--prune"]).await;
    assert!(
        out.stdout
            .contains("0 created, 0 updated, 19 unchanged, 1 deleted"),
        "{out:?}"
    );
    assert!(out.stdout.contains("deleted  task-12"), "{out:?}");
    assert!(env.task_named("task-12").await.is_none());
    let left = env.tasks().await;
    assert_eq!(left.len(), 20, "19 named + the unnamed one");
    assert!(left.iter().any(|t| t["id"] == unnamed["id"]));
    assert_eq!(env.audit("task.delete").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_and_dry_run_show_the_changes_field_by_field_and_change_nothing() {
    let env = spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.yaml", &yaml_def("alpha", 5));
    write(d, "b.yaml", &yaml_def("beta", 5));
    write(d, "c.yaml", &yaml_def("gamma", 5));
    let path = d.to_str().unwrap();
    env.ok(&["apply", "-f", path]).await;

    write(
        d,
        "a.yaml",
        &yaml_def("alpha", 5)
            .replace("*/5 * * * *", "0 3 * * *")
            .replace("who: alpha", "who: someone"),
    );
    std::fs::remove_file(d.join("c.yaml")).unwrap();
    write(d, "d.yaml", &yaml_def("delta", 2));
    let tasks_before = env.tasks().await;
    let audit_before = env.audit_total().await;

    let out = env.ok(&["diff", "-f", path, "--prune"]).await;
    let text = &out.stdout;
    assert!(text.contains("~ alpha  (update "), "{out:?}");
    assert!(
        text.contains("schedule_expr: \"*/5 * * * *\" → \"0 3 * * *\""),
        "{out:?}"
    );
    assert!(
        text.contains("payload.params.who: \"alpha\" → \"someone\""),
        "{out:?}"
    );
    assert!(text.contains("+ delta  (create; "), "{out:?}");
    assert!(text.contains("+     priority: 2"), "{out:?}");
    assert!(text.contains("- gamma  (delete "), "{out:?}");
    assert!(!text.contains("beta"), "unchanged tasks are quiet: {out:?}");
    assert!(
        text.contains("1 to create, 1 to update, 1 unchanged, 1 to delete"),
        "{out:?}"
    );
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    let json = env.ok(&["diff", "-f", path, "-o", "json"]).await.json();
    assert_eq!(json["update"][0]["name"], "alpha");
    assert_eq!(json["update"][0]["changes"].as_array().unwrap().len(), 2);
    assert_eq!(json["create"][0]["name"], "delta");
    assert_eq!(json["delete"], json!([]), "no deletions without --prune");

    let out = env.ok(&["apply", "-f", path, "--prune", "--dry-run"]).await;
    assert!(
        out.stdout
            .contains("1 to create, 1 to update, 1 unchanged, 1 to delete"),
        "{out:?}"
    );

    assert_eq!(env.audit_total().await, audit_before);
    assert_eq!(env.tasks().await, tasks_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_definition_changes_nothing_and_names_the_file_the_document_and_the_field() {
    let env = spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "good.yaml", &yaml_def("good", 5));
    // The second document's cron is wrong: only the server knows; it says so on the dry-run check.
    write(
        d,
        "multi.yaml",
        &format!(
            "{}---\n{}",
            yaml_def("first", 5),
            yaml_def("second", 5).replace("*/5 * * * *", "61 * * * *")
        ),
    );
    let path = d.to_str().unwrap();
    let out = env.orrery(&["apply", "-f", path]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("multi.yaml (document 2): field schedule_expr:"),
        "{out:?}"
    );
    assert!(out.stderr.contains("nothing was changed"), "{out:?}");
    assert!(env.tasks().await.is_empty());
    assert_eq!(env.audit_total().await, 0);

    // Problems found locally: wrong type, unknown field, a field the server sets, a bad name, bad YAML.
    let cases: &[(&str, &str, &str)] = &[
        (
            "typed.yaml",
            "priority: 5",
            "typed.yaml (document 1): field priority: invalid type",
        ),
        (
            "unknown.yaml",
            "priority: 5",
            "unknown.yaml (document 1): field colour: unknown field",
        ),
        (
            "server.yaml",
            "priority: 5",
            "server.yaml (document 1): field status: is set by the server",
        ),
        (
            "name.yaml",
            "priority: 5",
            "name.yaml (document 1): field name: must be 1 to 100 characters",
        ),
    ];
    let replacements = [
        "priority: high",
        "priority: 5\ncolour: red",
        "priority: 5\nstatus: paused",
        "",
    ];
    for ((file, from, expected), to) in cases.iter().zip(replacements) {
        let dir = tempfile::tempdir().unwrap();
        let mut text = yaml_def("local", 5).replace(from, to);
        if *file == "name.yaml" {
            text = text.replace("name: local", "name: has space");
        }
        write(dir.path(), file, &text);
        let out = env
            .orrery(&["apply", "-f", dir.path().to_str().unwrap()])
            .await;
        assert_eq!(out.code, 1, "{file}: {out:?}");
        assert!(out.stderr.contains(expected), "{file}: {out:?}");
    }
    let dir2 = tempfile::tempdir().unwrap();
    write(dir2.path(), "broken.yaml", "name: x\ntitle: [unclosed\n");
    let out = env
        .orrery(&["apply", "-f", dir2.path().to_str().unwrap()])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("broken.yaml (document 1): not valid YAML"),
        "{out:?}"
    );
    // Two definitions of one name.
    let dir3 = tempfile::tempdir().unwrap();
    write(dir3.path(), "one.yaml", &yaml_def("same", 5));
    write(dir3.path(), "two.yaml", &yaml_def("same", 6));
    let out = env
        .orrery(&["diff", "-f", dir3.path().to_str().unwrap()])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("two.yaml (document 1): field name: \"same\" is already defined in"),
        "{out:?}"
    );
    assert!(env.tasks().await.is_empty());
    assert_eq!(env.audit_total().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_prints_what_the_api_answers_and_marks_dst_changes() {
    let env = spawn().await;
    let args = [
        "preview",
        "30 2 * * *",
        "--kind",
        "cron",
        "--tz",
        "Europe/Berlin",
        "-n",
        "4",
        "--after",
        "2026-03-27T12:00:00Z",
    ];
    let mut json_args = args.to_vec();
    json_args.extend(["-o", "json"]);
    let cli = env.ok(&json_args).await.json();
    let (status, api) = env
        .api(
            Method::POST,
            "/schedules/preview",
            Some(json!({"schedule_kind": "cron", "schedule_expr": "30 2 * * *", "timezone": "Europe/Berlin",
                        "count": 4, "after": "2026-03-27T12:00:00Z"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(cli, api);
    assert_eq!(cli["fires"].as_array().unwrap().len(), 4);

    let table = env.ok(&args).await.stdout;
    assert!(table.contains("UTC") && table.contains("LOCAL"), "{table}");
    assert!(table.contains("2026-03-28T01:30:00Z"), "{table}");
    assert!(table.contains("DST: offset +01:00 → +02:00"), "{table}");
    assert_eq!(table.matches("DST").count(), 1, "{table}");

    let yaml: Value =
        serde_norway::from_str(&env.ok(&[&args[..], &["-o", "yaml"]].concat()).await.stdout)
            .unwrap();
    assert_eq!(yaml, api);

    let bad = env.orrery(&["preview", "not cron"]).await;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("schedule_expr"), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_tail_prints_a_run_started_by_tasks_run_within_a_second() {
    let env = spawn_with(true).await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "t.yaml",
        &yaml_def("tailed", 5).replace("*/5 * * * *", "0 0 1 1 *"),
    );
    env.ok(&["apply", "-f", dir.path().to_str().unwrap()]).await;
    let task = env.task_named("tailed").await.unwrap();

    let mut tail = env
        .command(&["runs", "tail", "-n", "5", "--interval-ms", "100"], &[])
        .spawn()
        .expect("tail starts");
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    // tail has printed its (empty) history and is polling once it made its first request.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    env.ok(&["tasks", "run", "tailed"]).await;
    let line = tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .expect("tail printed a line")
        .unwrap()
        .expect("a line");
    let printed = chrono::Utc::now();
    let since_request = started.elapsed();
    assert!(
        line.contains("tailed") && line.contains("manual") && line.contains(" ok "),
        "{line}"
    );
    // The run as recorded: tail printed it within a second of its finish.
    let runs = env
        .get(&format!("/runs?task_id={}", task["id"].as_str().unwrap()))
        .await;
    let finished: chrono::DateTime<chrono::Utc> = runs["items"][0]["finished_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let lag = printed - finished;
    eprintln!("runs tail: printed {lag} after the run finished, {since_request:?} after `tasks run` started");
    assert!(lag < chrono::Duration::seconds(1), "lag {lag}");
    assert!(since_request < Duration::from_secs(5), "{since_request:?}");
    tail.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_as_documented() {
    let env = spawn().await;
    assert_eq!(env.orrery(&["tasks", "ls"]).await.code, 0);
    // 1: the server said no.
    let out = env
        .orrery(&["tasks", "get", "00000000-0000-0000-0000-00000000abcd"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("404 not_found"), "{out:?}");
    let out = env.orrery(&["tasks", "get", "no-such-name"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let out = env
        .orrery_env(&["tasks", "ls"], &[("ORRERY_TOKEN", "orr_wrong")])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("401 unauthorized"), "{out:?}");
    // 2: usage.
    for args in [
        &["tasks", "frobnicate"][..],
        &["--output", "xml", "tasks", "ls"],
        &["apply"],
        &["apply", "-f", "/nonexistent/dir"],
        &["tasks", "snooze", "x", "3 weeks"],
    ] {
        let out = env.orrery(args).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
    }
    // 3: nothing listens there.
    let port = orrery_testing::free_port();
    let out = env
        .orrery_env(
            &["tasks", "ls"],
            &[("ORRERY_URL", &format!("http://127.0.0.1:{port}"))],
        )
        .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("cannot connect"), "{out:?}");
    // --help and --version are not errors.
    assert_eq!(env.orrery(&["--help"]).await.code, 0);
    assert_eq!(env.orrery(&["--version"]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_help_with_an_example() {
    let env = spawn().await;
    let commands: &[&[&str]] = &[
        &[],
        &["apply"],
        &["diff"],
        &["tasks"],
        &["tasks", "ls"],
        &["tasks", "get"],
        &["tasks", "pause"],
        &["tasks", "resume"],
        &["tasks", "cancel"],
        &["tasks", "run"],
        &["tasks", "snooze"],
        &["tasks", "rm"],
        &["runs"],
        &["runs", "ls"],
        &["runs", "get"],
        &["runs", "tail"],
        &["dead"],
        &["dead", "ls"],
        &["dead", "replay"],
        &["dead", "rm"],
        &["workers"],
        &["queue"],
        &["events"],
        &["events", "publish"],
        &["events", "tail"],
        &["preview"],
        &["agents"],
        &["agents", "ls"],
        &["agents", "get"],
        &["agents", "create"],
        &["agents", "rm"],
        &["tokens"],
        &["tokens", "ls"],
        &["tokens", "create"],
        &["tokens", "revoke"],
        &["whoami"],
        &["login"],
        &["context"],
        &["context", "ls"],
        &["context", "use"],
        &["context", "rm"],
        &["completions"],
    ];
    for c in commands {
        let mut args = c.to_vec();
        args.push("--help");
        let out = env.ok(&args).await;
        assert!(out.stdout.contains("Examples:"), "{c:?}: {out:?}");
        assert!(out.stdout.contains("orrery "), "{c:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_formats_parse_colour_follows_the_terminal_and_completions_generate() {
    let env = spawn().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &yaml_def("alpha", 5));
    let applied = env
        .ok(&["apply", "-f", dir.path().to_str().unwrap(), "-o", "json"])
        .await
        .json();
    assert_eq!(applied["applied"], true);
    assert_eq!(applied["create"][0]["name"], "alpha");
    let id = applied["create"][0]["id"].as_str().unwrap().to_string();

    let json = env.ok(&["tasks", "ls", "-o", "json"]).await.json();
    assert_eq!(json[0]["id"], id.as_str());
    assert_eq!(json[0]["name"], "alpha");
    let yaml: Value = serde_norway::from_str(
        &env.ok(&["tasks", "get", "alpha", "-o", "yaml"])
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(yaml["name"], "alpha");
    let table = env.ok(&["tasks", "ls"]).await.stdout;
    assert!(
        table.starts_with("NAME") && table.contains("alpha") && table.contains("active"),
        "{table}"
    );
    assert!(
        !table.contains('\x1b'),
        "piped output has no colour: {table:?}"
    );

    // On a terminal (a pseudo-terminal from script(1)) colour is on, unless NO_COLOR is set.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok()
    {
        let run_on_tty = |no_color: bool| {
            let mut cmd = std::process::Command::new("script");
            cmd.args([
                "-qec",
                &format!("{} tasks ls", env!("CARGO_BIN_EXE_orrery")),
                "/dev/null",
            ])
            .env("ORRERY_URL", &env.base)
            .env("ORRERY_TOKEN", ADMIN)
            .env("XDG_CONFIG_HOME", env.config_home())
            .env_remove("NO_COLOR");
            if no_color {
                cmd.env("NO_COLOR", "1");
            }
            String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
        };
        let coloured = run_on_tty(false);
        assert!(coloured.contains("\x1b[32mactive"), "{coloured:?}");
        let plain = run_on_tty(true);
        assert!(
            plain.contains("active") && !plain.contains("\x1b["),
            "{plain:?}"
        );
    }

    // The export of a task is a definition that applies cleanly: nothing to change.
    let export = env
        .ok(&["tasks", "get", "alpha", "--export", "-o", "yaml"])
        .await
        .stdout;
    let dir2 = tempfile::tempdir().unwrap();
    write(dir2.path(), "alpha.yaml", &export);
    let out = env.ok(&["diff", "-f", dir2.path().to_str().unwrap()]).await;
    assert!(
        out.stdout.contains("0 to create, 0 to update, 1 unchanged"),
        "{out:?}"
    );

    for shell in ["bash", "zsh", "fish"] {
        let out = env.ok(&["completions", shell]).await;
        assert!(
            out.stdout.contains("orrery") && out.stdout.contains("apply"),
            "{shell}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_a_context_that_later_commands_use() {
    let env = spawn().await;
    let no_env = [("ORRERY_URL", ""), ("ORRERY_TOKEN", "")];
    // Without configuration the default URL is used (nothing listens on :8080 in tests... or something
    // does): either way it is not our API, so use a context.
    let bad = env
        .orrery_env(
            &[
                "login",
                "--url",
                &env.base,
                "--token",
                "orr_wrong",
                "--name",
                "local",
            ],
            &no_env,
        )
        .await;
    assert_eq!(bad.code, 1, "{bad:?}");
    let file = env.config_home().join("orrery").join("config.toml");
    assert!(!file.exists(), "a refused login stores nothing");

    let out = env
        .orrery_env(
            &[
                "login", "--url", &env.base, "--token", ADMIN, "--name", "local",
            ],
            &no_env,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("current_context = \"local\"") && text.contains(&env.base),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let out = env.orrery_env(&["whoami", "-o", "json"], &no_env).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["id"], "00000000-0000-0000-0000-000000000001");
    let out = env.orrery_env(&["context", "ls"], &no_env).await;
    assert!(
        out.stdout.contains("*") && out.stdout.contains("local"),
        "{out:?}"
    );

    // The environment wins over the context.
    let port = orrery_testing::free_port();
    let out = env
        .orrery_env(
            &["tasks", "ls"],
            &[
                ("ORRERY_URL", &format!("http://127.0.0.1:{port}")),
                ("ORRERY_TOKEN", ""),
            ],
        )
        .await;
    assert_eq!(out.code, 3, "{out:?}");
    // An explicit --config path isolates everything.
    let other = env.home.path().join("elsewhere.toml");
    let out = env
        .orrery_env(
            &["--config", other.to_str().unwrap(), "tasks", "ls"],
            &[("ORRERY_TOKEN", "")],
        )
        .await;
    assert_eq!(out.code, 1, "no token there: {out:?}");
    let out = env
        .orrery_env(&["--context", "nope", "tasks", "ls"], &no_env)
        .await;
    assert_eq!(out.code, 2, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_operations_work_by_name() {
    let env = spawn().await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ops.yaml", &yaml_def("ops", 5));
    env.ok(&["apply", "-f", dir.path().to_str().unwrap()]).await;
    let id = env.task_named("ops").await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let out = env.ok(&["tasks", "pause", "ops"]).await;
    assert!(out.stdout.contains("ops: active → paused"), "{out:?}");
    assert_eq!(env.task_named("ops").await.unwrap()["status"], "paused");
    env.ok(&["tasks", "resume", &id]).await;
    let out = env
        .ok(&["tasks", "snooze", "ops", "10m", "-o", "json"])
        .await;
    let snoozed = out.json();
    let run_at: chrono::DateTime<chrono::Utc> =
        snoozed["run_at"].as_str().unwrap().parse().unwrap();
    let ready_at: chrono::DateTime<chrono::Utc> =
        snoozed["ready_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((ready_at - run_at).num_seconds(), 600);
    let out = env
        .ok(&[
            "tasks",
            "run",
            "ops",
            "--params",
            "{\"x\": 1}",
            "-o",
            "json",
        ])
        .await;
    assert!(out.json()["due_work_id"].is_i64(), "{out:?}");
    let detail = env.ok(&["tasks", "get", "ops"]).await.stdout;
    assert!(
        detail.contains(&id) && detail.contains("schedule_expr:"),
        "{detail}"
    );
    env.ok(&["tasks", "cancel", "ops"]).await;
    // A canceled task cannot be re-applied from its file; the error says what to do.
    write(dir.path(), "ops.yaml", &yaml_def("ops", 7));
    let out = env
        .orrery(&["apply", "-f", dir.path().to_str().unwrap()])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("ops.yaml (document 1)") && out.stderr.contains("orrery tasks rm ops"),
        "{out:?}"
    );
    env.ok(&["tasks", "rm", "ops"]).await;
    assert!(env.task_named("ops").await.is_none());
    env.ok(&["apply", "-f", dir.path().to_str().unwrap()]).await;
    assert_eq!(env.task_named("ops").await.unwrap()["priority"], 7);

    for args in [
        &["runs", "ls"][..],
        &["dead", "ls"],
        &["workers"],
        &["queue"],
        &["tasks", "ls", "--all"],
    ] {
        env.ok(args).await;
    }
    let out = env.ok(&["dead", "replay", "--all"]).await;
    assert!(out.stdout.contains("nothing to replay"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_publish_and_tail_and_agents_and_tokens_for_admins() {
    let env = spawn().await;
    let out = env
        .ok(&[
            "events",
            "publish",
            "orders.created",
            "--payload",
            "{\"order\": 42}",
            "-o",
            "json",
        ])
        .await;
    let event_id = out.json()["event_id"].as_str().unwrap().to_string();
    let mut tail = env
        .command(&["events", "tail", "-n", "5"], &[])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .expect("tail printed")
        .unwrap()
        .unwrap();
    assert!(
        line.contains("orders.created") && line.contains(&event_id) && line.contains("42"),
        "{line}"
    );
    env.ok(&["events", "publish", "orders.shipped"]).await;
    let line = tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .expect("tail follows")
        .unwrap()
        .unwrap();
    assert!(line.contains("orders.shipped"), "{line}");
    tail.kill().await.unwrap();

    let created = env
        .ok(&[
            "agents",
            "create",
            "ci-bot",
            "--scope",
            "tasks:read",
            "--scope",
            "tasks:write",
            "-o",
            "json",
        ])
        .await
        .json();
    let token = created["token"].as_str().unwrap().to_string();
    let ls = env.ok(&["agents", "ls"]).await.stdout;
    assert!(
        ls.contains("ci-bot") && ls.contains("tasks:read,tasks:write"),
        "{ls}"
    );
    let tokens = env
        .ok(&["tokens", "ls", "ci-bot", "-o", "json"])
        .await
        .json();
    assert_eq!(tokens.as_array().unwrap().len(), 1);
    let second = env
        .ok(&["tokens", "create", "ci-bot", "-o", "json"])
        .await
        .json();
    let second_id = second["id"].as_str().unwrap().to_string();
    env.ok(&["tokens", "revoke", "ci-bot", &second_id]).await;

    // The new agent manages its own tasks with apply; it cannot list agents (403 → exit 1).
    let as_bot = [("ORRERY_TOKEN", token.as_str())];
    let out = env.orrery_env(&["whoami"], &as_bot).await;
    assert!(out.stdout.contains("ci-bot"), "{out:?}");
    let out = env.orrery_env(&["agents", "ls"], &as_bot).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("403 forbidden"), "{out:?}");
    // Same names for different owners do not meet: the admin's prune leaves the bot's task alone.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "x.yaml", &yaml_def("shared-name", 5));
    let out = env
        .orrery_env(&["apply", "-f", dir.path().to_str().unwrap()], &as_bot)
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let empty = tempfile::tempdir().unwrap();
    write(empty.path(), "other.yaml", &yaml_def("admin-task", 5));
    env.ok(&["apply", "-f", empty.path().to_str().unwrap(), "--prune"])
        .await;
    assert_eq!(env.tasks().await.len(), 2);
    let out = env.orrery(&["agents", "rm", "ci-bot"]).await;
    assert_eq!(out.code, 1, "it owns a task: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_writes_after_between_tasks_of_the_same_files_and_refuses_a_cycle() {
    let env = spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The dependent comes first in the files: apply creates both, then writes `after`.
    write(
        d,
        "a-load.yaml",
        "name: load\ntitle: Load\nschedule_kind: event\nschedule_expr: never.published\n\
         after:\n  - task: extract\n    params:\n      file: ${steps.n.x}\n",
    );
    write(d, "b-extract.yaml", &yaml_def("extract", 5));
    let path = d.to_str().unwrap();
    let out = env.ok(&["apply", "-f", path]).await;
    assert!(
        out.stdout
            .contains("2 created, 0 updated, 0 unchanged, 0 deleted"),
        "{out:?}"
    );
    let extract = env.task_named("extract").await.unwrap();
    let load = env.task_named("load").await.unwrap();
    assert_eq!(load["after"][0]["task"], "extract");
    assert_eq!(load["after"][0]["task_id"], extract["id"]);
    assert_eq!(load["after"][0]["condition"], "success");
    // Applied again: the server's resolved form matches the file.
    let out = env.ok(&["apply", "-f", path]).await;
    assert!(
        out.stdout
            .contains("0 created, 0 updated, 2 unchanged, 0 deleted"),
        "{out:?}"
    );
    // A cycle among the files is refused before anything is written.
    write(
        d,
        "b-extract.yaml",
        "name: extract\ntitle: Extract\nschedule_kind: cron\nschedule_expr: 0 3 * * *\nafter:\n  - task: load\n",
    );
    let out = env.orrery(&["apply", "-f", path]).await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("cycle: extract → load → extract")
            || out.stderr.contains("cycle: load → extract → load"),
        "{out:?}"
    );
    assert_eq!(env.task_named("extract").await.unwrap()["after"], json!([]));
}
