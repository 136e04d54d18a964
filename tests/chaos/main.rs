//! The fault suite (issue 14): the real binaries against a private PostgreSQL cluster and Redis per scenario,
//! faults injected while they work, and exact accounting from the database afterwards.
//!
//!   bash ops/chaos.sh            # full: the table in docs/chaos.md
//!   bash ops/chaos.sh --short    # the CI form (ops/test.sh): smaller counts, shorter faults
//!
//! Directly (binaries built first; ORRERY_BIN_DIR picks release ones):
//!   cargo test -p orrery-tests --test chaos -- --short [--only workers,schedulers,postgres,redis] [--self-test]
//!
//! `--self-test` proves the accounting can fail: after counting, each scenario erases one accepted run's success,
//! records another twice, does the same to a fire, erases one event delivery, and checks that the counts move
//! by exactly that (the table keeps the counts from before the damage).
//!
//! Without `--short` or `--full` (as in a plain `cargo test --workspace`) it runs nothing: the suite is its own
//! step of the test command. Exits 1 on any run lost, run succeeded twice, fire missed or duplicated, event
//! lost, or a scenario that did not settle.

mod kit;
mod scenarios;

use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
pub struct Mode {
    pub short: bool,
    /// `--self-test`: after counting, damage each scenario's results (a success erased, one recorded twice, ...)
    /// and check that the accounting reports exactly that damage on top.
    pub sabotage: bool,
}

impl Mode {
    /// `full` in the full suite, `short` in the CI form.
    pub fn pick<T>(self, full: T, short: T) -> T {
        if self.short {
            short
        } else {
            full
        }
    }
}

/// One line of the table. `None` = not measured by this scenario.
#[derive(Default)]
pub struct Row {
    pub scenario: String,
    pub runs_lost: Option<u64>,
    pub runs_twice: Option<u64>,
    pub fires_missed: Option<u64>,
    pub fires_duplicated: Option<u64>,
    pub events_lost: Option<u64>,
    pub recover: Option<f64>,
    pub took: Duration,
    pub notes: Vec<String>,
    /// Set when the scenario could not finish its accounting honestly (did not settle, panicked).
    pub broken: Option<String>,
}

impl Row {
    pub fn set(&mut self, c: kit::Counts) {
        self.runs_lost = c.runs_lost;
        self.runs_twice = c.runs_twice;
        self.fires_missed = c.fires_missed;
        self.fires_duplicated = c.fires_duplicated;
        self.events_lost = c.events_lost;
    }

    /// Anything lost or duplicated, a scenario unsettled, or (self-test) damage the accounting did not see.
    fn failed(&self) -> bool {
        self.broken.is_some()
            || [
                self.runs_lost,
                self.runs_twice,
                self.fires_missed,
                self.fires_duplicated,
                self.events_lost,
            ]
            .iter()
            .any(|v| v.unwrap_or(0) > 0)
    }
}

fn cell(v: Option<u64>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| scenario | runs lost | runs succeeded twice | fires missed | fires duplicated | events lost | time to recover | took |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} s |\n",
            r.scenario,
            cell(r.runs_lost),
            cell(r.runs_twice),
            cell(r.fires_missed),
            cell(r.fires_duplicated),
            cell(r.events_lost),
            r.recover.map_or("–".into(), |s| format!("{s:.1} s")),
            r.took.as_secs_f64(),
        ));
    }
    out
}

const SCENARIOS: [&str; 4] = ["workers", "schedulers", "postgres", "redis"];

async fn run(name: &str, mode: Mode) -> Row {
    let started = Instant::now();
    let name_owned = name.to_string();
    // Each scenario in its own task: a panic (setup failure, timeout) becomes a failed row, not an abort.
    let result = tokio::spawn(async move {
        match name_owned.as_str() {
            "workers" => scenarios::workers(mode).await,
            "schedulers" => scenarios::schedulers(mode).await,
            "postgres" => scenarios::postgres(mode).await,
            _ => scenarios::redis(mode).await,
        }
    })
    .await;
    let mut row = result.unwrap_or_else(|e| Row {
        scenario: name.to_string(),
        broken: Some(format!("the scenario panicked: {e}")),
        ..Row::default()
    });
    row.took = started.elapsed();
    row
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let short = args.iter().any(|a| a == "--short");
    let full = args.iter().any(|a| a == "--full");
    if !short && !full {
        println!("chaos: the fault suite runs only when asked: `bash ops/chaos.sh [--short]` (0 scenarios run)");
        return ExitCode::SUCCESS;
    }
    let mode = Mode {
        short,
        sabotage: args.iter().any(|a| a == "--self-test"),
    };
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
        .unwrap_or_else(|| SCENARIOS.iter().map(|s| s.to_string()).collect());
    if let Some(bad) = only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        eprintln!(
            "chaos: unknown scenario {bad:?} (expected some of {})",
            SCENARIOS.join(",")
        );
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut rows = Vec::new();
    for name in SCENARIOS.iter().filter(|s| only.iter().any(|o| o == *s)) {
        println!(
            "chaos: {name} ({}) ...",
            if short { "short" } else { "full" }
        );
        let row = rt.block_on(run(name, mode));
        println!(
            "chaos: {name} done in {:.0} s{}",
            row.took.as_secs_f64(),
            if row.failed() { " — FAILED" } else { "" }
        );
        rows.push(row);
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    println!();
    print!("{}", table(&rows));
    println!();
    for r in &rows {
        for n in &r.notes {
            println!("- {}: {n}", r.scenario);
        }
        if let Some(b) = &r.broken {
            println!("- {}: NOT SETTLED: {b}", r.scenario);
        }
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.scenario.as_str())
        .collect();
    println!(
        "\nchaos: {} mode, {} scenario(s) in {:.0} s: {}",
        if short { "short" } else { "full" },
        rows.len(),
        started.elapsed().as_secs_f64(),
        if failed.is_empty() && mode.sabotage {
            "nothing lost, nothing duplicated; self-test: the accounting counted exactly the damage injected"
                .to_string()
        } else if failed.is_empty() {
            "nothing lost, nothing duplicated".to_string()
        } else {
            format!("FAILED: {}", failed.join("; "))
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
