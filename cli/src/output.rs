//! Printing: human tables by default, JSON or YAML for scripts, colour only on a terminal (NO_COLOR
//! respected), a progress line on stderr only when stderr is a terminal.

use std::io::{IsTerminal, Write};

use clap::ValueEnum;
use comfy_table::{presets, ContentArrangement, Table};
use serde_json::Value;

use crate::error::{CliError, CliResult};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Whether stdout gets ANSI colours.
pub fn color_stdout() -> bool {
    !no_color() && std::io::stdout().is_terminal()
}

/// Whether stderr gets ANSI colours.
pub fn color_stderr() -> bool {
    !no_color() && std::io::stderr().is_terminal()
}

#[derive(Copy, Clone)]
pub enum Color {
    Red,
    Green,
    Yellow,
    Dim,
    Bold,
}

pub fn paint(on: bool, color: Color, text: &str) -> String {
    if !on {
        return text.to_string();
    }
    let code = match color {
        Color::Red => "31",
        Color::Green => "32",
        Color::Yellow => "33",
        Color::Dim => "2",
        Color::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// JSON (pretty) or YAML of any value.
pub fn render_data(format: Format, value: &Value) -> CliResult<String> {
    match format {
        Format::Yaml => serde_norway::to_string(value)
            .map_err(|e| CliError::Usage(format!("cannot encode YAML: {e}"))),
        _ => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Usage(format!("cannot encode JSON: {e}"))),
    }
}

/// Prints `value` as JSON/YAML, or the table `table` builds from it.
pub fn print(format: Format, value: &Value, table: impl FnOnce(&Value) -> String) -> CliResult<()> {
    let text = match format {
        Format::Table => table(value),
        _ => render_data(format, value)?,
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
    Ok(())
}

/// A borderless table with upper-case headers, like kubectl's.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        return "(none)".to_string();
    }
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        t.add_row(row);
    }
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A field as table text: strings bare, null as "-", anything else as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 instant shortened for a table (seconds, `Z`).
pub fn when(v: &Value) -> String {
    match v
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%SZ")
            .to_string(),
        None => cell(v),
    }
}

/// Key/value lines for one object (the table form of `get`).
pub fn details(value: &Value, keys: &[&str]) -> String {
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    keys.iter()
        .map(|k| {
            let v = &value[*k];
            let text = match v {
                Value::Object(_) | Value::Array(_) => serde_json::to_string(v).unwrap_or_default(),
                _ => cell(v),
            };
            format!("{:width$}  {}", format!("{k}:"), text, width = width + 1)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// "[3/20] creating nightly-report" on stderr, rewritten in place; silent unless stderr is a terminal.
pub struct Progress {
    on: bool,
    total: usize,
    done: usize,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        Progress {
            on: std::io::stderr().is_terminal() && total > 1,
            total,
            done: 0,
        }
    }

    pub fn step(&mut self, what: &str) {
        self.done += 1;
        if self.on {
            let mut err = std::io::stderr().lock();
            let line: String = what.chars().take(70).collect();
            let _ = write!(err, "\r\x1b[2K[{}/{}] {line}", self.done, self.total);
            let _ = err.flush();
        }
    }

    pub fn finish(&mut self) {
        if self.on {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.on = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
