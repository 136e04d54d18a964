//! What can go wrong, and the exit code each outcome maps to (see the crate docs).

use serde_json::Value;

/// Exit codes: 0 ok, 1 the server (or the definitions) said no, 2 usage, 3 cannot connect.
pub const EXIT_OK: i32 = 0;
pub const EXIT_REFUSED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_CONNECT: i32 = 3;

#[derive(Debug)]
pub enum CliError {
    /// Bad arguments, an unreadable file or directory, a broken config file (exit 2).
    Usage(String),
    /// The server could not be reached or did not answer in time (exit 3).
    Connect { url: String, cause: String },
    /// The server answered with an error status (exit 1).
    Api {
        status: u16,
        code: String,
        message: String,
        details: Value,
    },
    /// Refused before or without asking the server, e.g. invalid task definitions (exit 1). The text is
    /// already formatted for the terminal.
    Refused(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Connect { .. } => EXIT_CONNECT,
            CliError::Api { .. } | CliError::Refused(_) => EXIT_REFUSED,
        }
    }

    /// Field errors of a 422 (`details: [{field, message}]`).
    pub fn field_errors(&self) -> Vec<(String, String)> {
        match self {
            CliError::Api { details, .. } => details
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| {
                            (
                                d["field"].as_str().unwrap_or("").to_string(),
                                d["message"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// One line (or a few) for stderr.
    pub fn render(&self) -> String {
        match self {
            CliError::Usage(m) => m.clone(),
            CliError::Connect { url, cause } => {
                format!("cannot connect to {url}: {cause}\n(set --url or ORRERY_URL, or `orrery login`)")
            }
            CliError::Api {
                status,
                code,
                message,
                ..
            } => {
                let mut out = format!("{status} {code}: {message}");
                for (field, msg) in self.field_errors() {
                    out.push_str(&format!("\n  {field}: {msg}"));
                }
                if *status == 401 {
                    out.push_str(
                        "\n(pass --token, set ORRERY_TOKEN, or store one with `orrery login`)",
                    );
                }
                out
            }
            CliError::Refused(m) => m.clone(),
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

pub type CliResult<T> = Result<T, CliError>;
