//! The command line grammar (clap derive). Every command's `--help` ends with examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

use crate::output::Format;

const TOP_EXAMPLES: &str = "\
Examples:
  orrery login --url https://orrery.example.com --token \"$TOKEN\" --name prod
  orrery apply -f tasks/                # make the server match the files
  orrery diff -f tasks/ --prune         # what apply --prune would do
  orrery tasks ls --status active
  orrery tasks run nightly-report && orrery runs tail --task nightly-report
  orrery preview '0 9 * * MON-FRI' --kind cron --tz Europe/Berlin -n 5

Exit codes: 0 ok, 1 the server (or the definitions) said no, 2 usage error, 3 cannot connect.
Configuration: --url/ORRERY_URL (default http://localhost:8080), --token/ORRERY_TOKEN, or a context of
the profile file (--config/ORRERY_CONFIG, else $XDG_CONFIG_HOME/orrery/config.toml, else
~/.config/orrery/config.toml). NO_COLOR disables colour; colour is used on terminals only.";

#[derive(Parser, Debug)]
#[command(
    name = "orrery",
    version,
    about = "The Orrery command line: tasks as code, and everyday operations from a terminal",
    after_help = TOP_EXAMPLES,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// API base URL [default: the context's, else http://localhost:8080]
    #[arg(long, env = "ORRERY_URL", global = true)]
    pub url: Option<String>,
    /// Bearer token [default: the context's]
    #[arg(long, env = "ORRERY_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Context of the profile file to use [default: its current_context]
    #[arg(long, env = "ORRERY_CONTEXT", global = true)]
    pub context: Option<String>,
    /// Profile file [default: $XDG_CONFIG_HOME/orrery/config.toml or ~/.config/orrery/config.toml]
    #[arg(long, env = "ORRERY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Format,
    /// Seconds to wait for each HTTP answer
    #[arg(long, default_value_t = 30, global = true, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make the server's tasks match YAML/JSON definitions (create, update, optionally prune)
    #[command(after_help = "\
Examples:
  orrery apply -f tasks/                    # every *.yaml, *.yml, *.json below tasks/
  orrery apply -f backup.yaml -f report.json
  orrery apply -f tasks/ --prune            # also delete my named tasks no file names any more
  orrery apply -f tasks/ --dry-run          # print the plan, change nothing
  cat task.yaml | orrery apply -f -

A definition is the POST /tasks body plus a required `name` (unique per owner); one task per JSON file
or YAML document. Fields a definition does not set keep their server value. --prune never deletes tasks
without a name. Re-applying unchanged files sends no write.")]
    Apply(ApplyArgs),
    /// Show what `apply` would change, field by field, without changing anything
    #[command(after_help = "\
Examples:
  orrery diff -f tasks/
  orrery diff -f tasks/ --prune -o json | jq '.update[].changes'")]
    Diff(DiffArgs),
    /// List, inspect and operate tasks
    #[command(
        subcommand,
        after_help = "Examples:\n  orrery tasks ls\n  orrery tasks get nightly-report\n  orrery tasks pause nightly-report\n  orrery tasks run nightly-report\n\nA task is named by its id or its name."
    )]
    Tasks(TasksCmd),
    /// Run history; follow runs live
    #[command(
        subcommand,
        after_help = "Examples:\n  orrery runs ls --task nightly-report\n  orrery runs get 1234\n  orrery runs tail"
    )]
    Runs(RunsCmd),
    /// Dead work: list, replay, remove (admin)
    #[command(
        subcommand,
        after_help = "Examples:\n  orrery dead ls\n  orrery dead replay 42\n  orrery dead replay --all\n  orrery dead rm 42"
    )]
    Dead(DeadCmd),
    /// Worker heartbeats (admin)
    #[command(
        after_help = "Examples:\n  orrery workers\n  orrery workers -o json | jq '.[] | select(.alive)'"
    )]
    Workers,
    /// Queue counts: ready, scheduled, leased, dead (admin)
    #[command(after_help = "Examples:\n  orrery queue\n  orrery queue -o yaml")]
    Queue,
    /// Publish events; follow the event stream
    #[command(
        subcommand,
        after_help = "Examples:\n  orrery events publish orders.created --payload '{\"order\": 42}'\n  orrery events tail"
    )]
    Events(EventsCmd),
    /// The next fires of a schedule, in UTC and in its time zone (DST changes marked)
    #[command(after_help = "\
Examples:
  orrery preview '0 9 * * MON-FRI' --kind cron --tz Europe/Berlin -n 5
  orrery preview 'FREQ=WEEKLY;BYDAY=SU;BYHOUR=2;BYMINUTE=30' --kind rrule --tz America/New_York -n 10
  orrery preview 2030-01-01T00:00:00Z --kind once
  orrery preview '30 2 * * *' --tz Europe/Berlin --after 2026-03-27T00:00:00Z -n 4 -o json")]
    Preview(PreviewArgs),
    /// Agents (admin)
    #[command(
        subcommand,
        after_help = "Examples:\n  orrery agents ls\n  orrery agents create ci-bot --scope tasks:read --scope tasks:write\n  orrery agents rm ci-bot"
    )]
    Agents(AgentsCmd),
    /// Tokens of an agent (admin)
    #[command(
        subcommand,
        after_help = "Examples:\n  orrery tokens ls ci-bot\n  orrery tokens create ci-bot\n  orrery tokens revoke ci-bot TOKEN_ID"
    )]
    Tokens(TokensCmd),
    /// Who the token belongs to
    #[command(after_help = "Examples:\n  orrery whoami\n  orrery whoami --context prod -o json")]
    Whoami,
    /// Check a URL and token and store them as a context of the profile file
    #[command(after_help = "\
Examples:
  orrery login --url https://orrery.example.com --token \"$TOKEN\" --name prod
  printf '%s' \"$TOKEN\" | orrery login --url http://localhost:8080 --token-stdin
The context becomes the current one. The file is written with mode 0600.")]
    Login(LoginArgs),
    /// The contexts of the profile file
    #[command(
        subcommand,
        after_help = "Examples:\n  orrery context ls\n  orrery context use prod\n  orrery context rm staging"
    )]
    Context(ContextCmd),
    /// Print a shell completion script
    #[command(after_help = "\
Examples:
  orrery completions bash > /etc/bash_completion.d/orrery
  orrery completions zsh > \"${fpath[1]}/_orrery\"
  orrery completions fish > ~/.config/fish/completions/orrery.fish")]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: Shell,
    },
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// File or directory of definitions (repeatable; `-` reads YAML from standard input)
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Delete my named tasks that no definition names
    #[arg(long)]
    pub prune: bool,
    /// Check everything and print the plan; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also list unchanged tasks
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// File or directory of definitions (repeatable; `-` reads YAML from standard input)
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Include the deletions `apply --prune` would make
    #[arg(long)]
    pub prune: bool,
    /// Also list unchanged tasks
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Subcommand, Debug)]
pub enum TasksCmd {
    /// List tasks (newest first)
    #[command(
        alias = "list",
        after_help = "\
Examples:
  orrery tasks ls
  orrery tasks ls --status paused --kind cron
  orrery tasks ls --all -o json | jq -r '.[].name'"
    )]
    Ls {
        /// active, paused, canceled or completed
        #[arg(long)]
        status: Option<String>,
        /// cron, rrule, once or event
        #[arg(long)]
        kind: Option<String>,
        /// Exact task name
        #[arg(long)]
        name: Option<String>,
        /// At most this many (1..200)
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
        /// Every page
        #[arg(long)]
        all: bool,
    },
    /// Show one task (by id or name)
    #[command(after_help = "\
Examples:
  orrery tasks get nightly-report
  orrery tasks get 3f1c...-uuid -o json
  orrery tasks get nightly-report --export -o yaml > tasks/nightly-report.yaml")]
    Get {
        task: String,
        /// Only the fields of a definition (for `apply`): no id, status, timestamps, owner
        #[arg(long)]
        export: bool,
    },
    /// Pause tasks (their future fires are removed until resumed)
    #[command(
        after_help = "Examples:\n  orrery tasks pause nightly-report\n  orrery tasks pause a b c"
    )]
    Pause {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Resume paused tasks (fires from now on, no backlog burst)
    #[command(after_help = "Examples:\n  orrery tasks resume nightly-report")]
    Resume {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Cancel tasks (terminal)
    #[command(after_help = "Examples:\n  orrery tasks cancel old-report")]
    Cancel {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Run a task now
    #[command(after_help = "\
Examples:
  orrery tasks run nightly-report
  orrery tasks run nightly-report --params '{\"day\": \"2026-01-31\"}'")]
    Run {
        task: String,
        /// JSON object merged over the task's params for this run
        #[arg(long)]
        params: Option<String>,
    },
    /// Move the task's next fire later
    #[command(after_help = "\
Examples:
  orrery tasks snooze nightly-report 30m
  orrery tasks snooze nightly-report 3600     # seconds; s, m, h and d suffixes work too")]
    Snooze {
        task: String,
        /// Delay: seconds, or a number with s, m, h or d (at most 7d)
        delay: String,
    },
    /// Delete tasks (their pending work and run history go too)
    #[command(
        alias = "delete",
        after_help = "Examples:\n  orrery tasks rm old-report\n  orrery tasks rm a b c"
    )]
    Rm {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// List runs (newest first)
    #[command(
        alias = "list",
        after_help = "\
Examples:
  orrery runs ls
  orrery runs ls --task nightly-report --failed
  orrery runs ls --since 2026-01-31T00:00:00Z -o json"
    )]
    Ls {
        /// Task id or name
        #[arg(long)]
        task: Option<String>,
        /// Only failed runs
        #[arg(long, conflicts_with = "succeeded")]
        failed: bool,
        /// Only successful runs
        #[arg(long)]
        succeeded: bool,
        /// RFC 3339: runs finished at or after
        #[arg(long)]
        since: Option<String>,
        /// At most this many (1..200)
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one run, with its output and error
    #[command(
        after_help = "Examples:\n  orrery runs get 1234\n  orrery runs get 1234 -o json | jq .output"
    )]
    Get { id: i64 },
    /// Follow runs as they finish, like tail -f (Ctrl-C to stop)
    #[command(after_help = "\
Examples:
  orrery runs tail
  orrery runs tail --task nightly-report -n 0
  orrery runs tail -o json | jq -c 'select(.success | not)'     # one JSON object per line")]
    Tail {
        /// Task id or name
        #[arg(long)]
        task: Option<String>,
        /// Recent runs to print first
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u32,
        /// Poll interval in milliseconds
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(50..=60000))]
        interval_ms: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeadCmd {
    /// List dead work (exhausted retries)
    #[command(
        alias = "list",
        after_help = "Examples:\n  orrery dead ls\n  orrery dead ls -o json"
    )]
    Ls {
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
    },
    /// Replay dead work (its task must be active)
    #[command(after_help = "Examples:\n  orrery dead replay 42 43\n  orrery dead replay --all")]
    Replay {
        /// due_work ids
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every dead row
        #[arg(long)]
        all: bool,
    },
    /// Remove dead work for good
    #[command(alias = "delete", after_help = "Examples:\n  orrery dead rm 42")]
    Rm {
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// Publish an event
    #[command(after_help = "\
Examples:
  orrery events publish orders.created --payload '{\"order\": 42}'
  orrery events publish orders.created --payload-file order.json")]
    Publish {
        topic: String,
        /// JSON payload (default {})
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// File with the JSON payload (`-` for standard input)
        #[arg(long)]
        payload_file: Option<PathBuf>,
    },
    /// Follow the event stream (admin), like tail -f (Ctrl-C to stop)
    #[command(after_help = "Examples:\n  orrery events tail\n  orrery events tail -n 0 -o json")]
    Tail {
        /// Recent events to print first
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u32,
        /// Poll interval in milliseconds
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60000))]
        interval_ms: u64,
    },
}

#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// The schedule expression (quote it)
    pub expr: String,
    /// Kind of schedule
    #[arg(long, default_value = "cron", value_parser = ["cron", "rrule", "once", "event"])]
    pub kind: String,
    /// IANA time zone [default: the server's]
    #[arg(long)]
    pub tz: Option<String>,
    /// Number of fires (1..1000)
    #[arg(short = 'n', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// RFC 3339 instant: fires strictly after it [default: now]
    #[arg(long)]
    pub after: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AgentsCmd {
    /// List agents
    #[command(alias = "list", after_help = "Examples:\n  orrery agents ls")]
    Ls,
    /// Show an agent (by id or name)
    #[command(after_help = "Examples:\n  orrery agents get ci-bot")]
    Get { agent: String },
    /// Create an agent; prints its first token once
    #[command(after_help = "\
Examples:
  orrery agents create ci-bot --scope tasks:read --scope tasks:write
  orrery agents create hooks --scope events:publish --webhook-url https://example.com/hook -o json")]
    Create {
        name: String,
        /// admin, tasks:read, tasks:write, runs:read, events:publish or jobs:work (repeatable)
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        webhook_url: Option<String>,
    },
    /// Delete an agent (it must own no tasks)
    #[command(alias = "delete", after_help = "Examples:\n  orrery agents rm ci-bot")]
    Rm { agent: String },
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// List an agent's tokens
    #[command(alias = "list", after_help = "Examples:\n  orrery tokens ls ci-bot")]
    Ls { agent: String },
    /// Create a token for an agent; prints it once
    #[command(
        after_help = "Examples:\n  orrery tokens create ci-bot\n  orrery tokens create ci-bot -o json | jq -r .token"
    )]
    Create { agent: String },
    /// Revoke a token
    #[command(after_help = "Examples:\n  orrery tokens revoke ci-bot 6c1e...-token-id")]
    Revoke { agent: String, token_id: String },
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Name of the context to store
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Read the token from standard input instead of --token
    #[arg(long)]
    pub token_stdin: bool,
    /// Store without checking the token against the server
    #[arg(long)]
    pub no_verify: bool,
}

#[derive(Subcommand, Debug)]
pub enum ContextCmd {
    /// List contexts (* marks the current one)
    #[command(alias = "list", after_help = "Examples:\n  orrery context ls")]
    Ls,
    /// Make a context the current one
    #[command(after_help = "Examples:\n  orrery context use prod")]
    Use { name: String },
    /// Remove a context
    #[command(
        alias = "delete",
        after_help = "Examples:\n  orrery context rm staging"
    )]
    Rm { name: String },
}
