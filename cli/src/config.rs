//! Where the server is and who we are: flags and environment first, then the profile file's contexts.
//!
//! The profile file is TOML at `--config` / `ORRERY_CONFIG`, else `$XDG_CONFIG_HOME/orrery/config.toml`, else
//! `~/.config/orrery/config.toml`:
//!
//! ```toml
//! current_context = "prod"
//!
//! [contexts.prod]
//! url = "https://orrery.example.com"
//! token = "orr_..."
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CliError, CliResult};

pub const DEFAULT_URL: &str = "http://localhost:8080";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The profile file's path (it may not exist).
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(xdg).join("orrery").join("config.toml"));
    }
    non_empty("HOME").map(|h| {
        PathBuf::from(h)
            .join(".config")
            .join("orrery")
            .join("config.toml")
    })
}

pub fn load(path: Option<&Path>) -> CliResult<ConfigFile> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "the config file {} is not valid: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(CliError::Usage(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the file readable by its owner only (it holds tokens).
pub fn save(path: &Path, config: &ConfigFile) -> CliResult<()> {
    let fail = |e: std::io::Error| {
        CliError::Usage(format!(
            "cannot write the config file {}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let text = toml::to_string_pretty(config)
        .map_err(|e| CliError::Usage(format!("cannot encode the config file: {e}")))?;
    let tmp = path.with_extension("toml.tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The server and credentials a command uses.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub token: Option<String>,
}

/// Flags and environment (already merged by clap) win over the selected context, which wins over defaults.
pub fn resolve(
    config: &ConfigFile,
    url: Option<&str>,
    token: Option<&str>,
    context: Option<&str>,
) -> CliResult<Target> {
    let selected = match context {
        Some(name) => Some(config.contexts.get(name).ok_or_else(|| {
            CliError::Usage(format!(
                "no context named {name:?} in the config file (known: {})",
                known(config)
            ))
        })?),
        None => config
            .current_context
            .as_deref()
            .and_then(|n| config.contexts.get(n)),
    };
    let url = url
        .map(str::to_string)
        .or_else(|| selected.map(|c| c.url.clone()))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let token = token
        .map(str::to_string)
        .or_else(|| selected.and_then(|c| c.token.clone()));
    Ok(Target {
        url: url.trim_end_matches('/').to_string(),
        token,
    })
}

fn known(config: &ConfigFile) -> String {
    if config.contexts.is_empty() {
        "none".into()
    } else {
        config
            .contexts
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }
}
