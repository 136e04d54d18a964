//! `orrery`, the command line of Orrery: tasks as code (`apply`, `diff`) and everyday operations (tasks,
//! runs, dead work, workers, events, schedule previews, agents and tokens) over the REST API. It never
//! talks to the database.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the server said no (any non-2xx answer: 401, 403, 404, 409, 422, …) or the task definitions are invalid |
//! | 2 | usage: bad arguments, an unreadable file or directory, a broken profile file |
//! | 3 | cannot connect: the server is unreachable or did not answer within `--timeout` |
//!
//! # Configuration
//!
//! `--url` / `ORRERY_URL` (default `http://localhost:8080`), `--token` / `ORRERY_TOKEN`, or a context of the
//! profile file (see [`config`]); flags and environment win over the context. `orrery login` stores one.
//!
//! See `docs/cli.md` for every command with examples.

pub mod apply;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod manifest;
pub mod output;

use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{CliError, EXIT_OK};

/// Parses the arguments, runs the command, prints any error; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version exit 0; usage errors exit 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let prefix = output::paint(output::color_stderr(), output::Color::Red, "error:");
            eprintln!("{prefix} {}", e.render());
            e.exit_code()
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    let config_path = config::config_path(g.config.as_deref());
    if let Command::Completions { shell } = cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut cmd, "orrery", &mut std::io::stdout());
        return Ok(());
    }
    let file = config::load(config_path.as_deref())?;
    if let Command::Context(c) = &cli.command {
        return commands::context(c, &file, config_path.as_deref(), g.output);
    }
    let mut target = config::resolve(
        &file,
        g.url.as_deref(),
        g.token.as_deref(),
        g.context.as_deref(),
    )?;
    if let Command::Login(args) = &cli.command {
        if args.token_stdin {
            let mut token = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut token)
                .map_err(|e| CliError::Usage(format!("cannot read the token: {e}")))?;
            target.token = Some(token.trim().to_string());
        }
        let client = client::Client::new(&target, Duration::from_secs(g.timeout))?;
        return commands::login(&client, &target, args, file, config_path.as_deref());
    }
    let client = client::Client::new(&target, Duration::from_secs(g.timeout))?;
    let fmt = g.output;
    match cli.command {
        Command::Apply(a) => apply::run(&client, &a.files, a.prune, a.dry_run, fmt, a.verbose),
        Command::Diff(d) => apply::diff(&client, &d.files, d.prune, fmt, d.verbose),
        Command::Tasks(t) => commands::tasks(&client, t, fmt),
        Command::Runs(r) => commands::runs(&client, r, fmt),
        Command::Dead(d) => commands::dead(&client, d, fmt),
        Command::Workers => commands::workers(&client, fmt),
        Command::Queue => commands::queue(&client, fmt),
        Command::Events(e) => commands::events(&client, e, fmt),
        Command::Preview(p) => commands::preview(&client, &p, fmt),
        Command::Agents(a) => commands::agents(&client, a, fmt),
        Command::Tokens(t) => commands::tokens(&client, t, fmt),
        Command::Whoami => commands::whoami(&client, fmt),
        Command::Login(_) | Command::Context(_) | Command::Completions { .. } => Ok(()),
    }
}
