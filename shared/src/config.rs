//! Typed settings: built-in defaults ← optional file ← environment variables.
//!
//! Every field is named after its environment variable (lowercased), so `API_PORT=9000` overrides `api_port`
//! and a file (`ORRERY_CONFIG_FILE`, TOML) uses the same names. Invalid values stop the binary with exit code 2
//! and one line naming the variable.

use std::fmt;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A configuration error, phrased for one log line: it names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

impl ConfigError {
    fn new(variable: &str, message: impl Into<String>) -> Self {
        Self {
            variable: variable.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Deserialize, Clone)]
pub struct Settings {
    pub database_url: SecretString,
    pub database_pool_size: usize,
    pub redis_url: SecretString,
    pub redis_key_prefix: String,
    /// Default time zone of new tasks (an IANA name).
    pub tz: String,
    pub log_level: String,

    pub api_host: String,
    pub api_port: u16,
    pub api_workers: usize,
    pub api_body_limit_bytes: usize,
    /// Longest a `POST /jobs/claim` waits for work, whatever its `wait_seconds` asks (0..=30).
    pub api_jobs_max_wait_seconds: u32,
    pub orrery_admin_token: Option<SecretString>,
    /// 64 hex characters (32 bytes): encrypts the values of `PUT /secrets` (AES-256-GCM).
    pub orrery_secrets_key: Option<SecretString>,
    /// Earlier keys, comma-separated, still accepted for decryption during a rotation.
    pub orrery_secrets_old_keys: Option<SecretString>,

    pub scheduler_health_port: u16,
    pub scheduler_misfire_grace_time: u32,
    pub scheduler_lookahead_seconds: u32,
    pub scheduler_reconcile_interval: f64,
    pub scheduler_batch_size: u32,
    pub scheduler_event_reclaim_ms: u64,
    /// An event relayed from the outbox but not delivered after this many seconds is published again.
    pub scheduler_event_redeliver_seconds: u32,
    pub retention_runs_days: u32,
    pub retention_audit_days: u32,
    pub retention_stream_max_len: u32,

    pub worker_health_port: u16,
    pub worker_lease_seconds: u32,
    pub worker_poll_interval: f64,
    pub worker_max_retries: u32,
    pub worker_backoff_base_delay: f64,
    pub worker_backoff_max_delay: f64,
    pub worker_concurrency: usize,
    pub worker_batch_size: usize,
    /// Rows a worker keeps claimed beyond its idle runners whatever the measured rate (0 = adaptive only).
    pub worker_prefetch: usize,
    pub worker_shutdown_grace_seconds: u32,
    pub worker_http_body_cap_bytes: usize,
    /// CIDRs of loopback/private networks the http.request tool may call (see `http_policy`).
    pub worker_http_allow_cidrs: String,
    /// The `shell` pipeline tool runs nothing unless this is true.
    pub worker_shell_enabled: bool,
    /// Comma-separated absolute paths or globs of the programs `shell` may run (see `shell_policy`).
    pub worker_shell_allow: String,
    /// Bytes of stdout and of stderr a `shell` step keeps (each; the rest is counted as truncated).
    pub worker_shell_output_cap_bytes: usize,
    /// `WORKER_QUEUES`: comma-separated queue names this worker serves; empty = every queue.
    pub worker_queues: String,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field(
                "database_url",
                &redact_url(self.database_url.expose_secret()),
            )
            .field("redis_url", &redact_url(self.redis_url.expose_secret()))
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("tz", &self.tz)
            .field("log_level", &self.log_level)
            .field("api_host", &self.api_host)
            .field("api_port", &self.api_port)
            .field("api_workers", &self.api_workers)
            .field(
                "orrery_admin_token",
                &self.orrery_admin_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field(
                "orrery_secrets_key",
                &self.orrery_secrets_key.as_ref().map(|_| "[REDACTED]"),
            )
            .field("scheduler_health_port", &self.scheduler_health_port)
            .field("worker_health_port", &self.worker_health_port)
            .finish_non_exhaustive()
    }
}

/// A queue name: 1-64 of `A-Z a-z 0-9 . _ -` (the `queue.name` check of migration V11).
pub fn valid_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `WORKER_QUEUES`: `None` (every queue) when empty, else the distinct names in order.
pub fn parse_queue_list(value: &str) -> Result<Option<Vec<String>>, String> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let mut names: Vec<String> = Vec::new();
    for part in value.split(',') {
        let name = part.trim();
        if !valid_queue_name(name) {
            return Err(format!(
                "{name:?} is not a queue name (1-64 of A-Z a-z 0-9 . _ -, names separated by commas)"
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(Some(names))
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            return match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://{userinfo}@{host}"),
            };
        }
    }
    url.to_string()
}

const DEFAULTS: &[(&str, &str)] = &[
    ("database_url", "postgres://postgres@127.0.0.1:5432/orrery"),
    ("database_pool_size", "16"),
    ("redis_url", "redis://127.0.0.1:6379"),
    ("redis_key_prefix", ""),
    ("tz", "UTC"),
    ("log_level", "info"),
    ("api_host", "0.0.0.0"),
    ("api_port", "8080"),
    ("api_workers", "0"),
    ("api_body_limit_bytes", "262144"),
    ("api_jobs_max_wait_seconds", "30"),
    ("scheduler_health_port", "8081"),
    ("scheduler_misfire_grace_time", "30"),
    ("scheduler_lookahead_seconds", "60"),
    ("scheduler_reconcile_interval", "10"),
    ("scheduler_batch_size", "500"),
    ("scheduler_event_reclaim_ms", "30000"),
    ("scheduler_event_redeliver_seconds", "60"),
    ("retention_runs_days", "30"),
    ("retention_audit_days", "90"),
    ("retention_stream_max_len", "100000"),
    ("worker_health_port", "8082"),
    ("worker_lease_seconds", "60"),
    ("worker_poll_interval", "0.5"),
    ("worker_max_retries", "3"),
    ("worker_backoff_base_delay", "1"),
    ("worker_backoff_max_delay", "60"),
    ("worker_concurrency", "32"),
    ("worker_batch_size", "500"),
    ("worker_prefetch", "0"),
    ("worker_shutdown_grace_seconds", "25"),
    ("worker_http_body_cap_bytes", "65536"),
    ("worker_http_allow_cidrs", ""),
    ("worker_shell_enabled", "false"),
    ("worker_shell_allow", ""),
    ("worker_shell_output_cap_bytes", "65536"),
    ("worker_queues", ""),
];

/// Variables without a default (secrets that are absent unless set).
const OPTIONAL: &[&str] = &[
    "orrery_admin_token",
    "orrery_secrets_key",
    "orrery_secrets_old_keys",
];

fn is_known(lower: &str) -> bool {
    DEFAULTS.iter().any(|(d, _)| *d == lower) || OPTIONAL.contains(&lower)
}

/// Resolves `<VARIABLE>_FILE` into `<VARIABLE>`.
fn with_file_variables(vars: &[(String, String)]) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = vars.to_vec();
    for (key, path) in vars {
        let Some(base) = key.strip_suffix("_FILE") else {
            continue;
        };
        if key == "ORRERY_CONFIG_FILE" || !is_known(&base.to_lowercase()) || path.is_empty() {
            continue;
        }
        if vars.iter().any(|(k, v)| k == base && !v.is_empty()) {
            return Err(ConfigError::new(
                key,
                format!("{base} and {key} are both set; set only one of them"),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(key, format!("cannot read {path}: {e}")))?;
        out.retain(|(k, _)| k != base);
        out.push((
            base.to_string(),
            text.trim_end_matches(['\n', '\r']).to_string(),
        ));
    }
    Ok(out)
}

impl Settings {
    /// Loads from the process environment (and `ORRERY_CONFIG_FILE` when set).
    pub fn load() -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::from_sources(&vars)
    }

    /// Loads from an explicit environment (tests), still honouring `ORRERY_CONFIG_FILE` inside it.
    ///
    /// Every variable can instead be read from a file named by `<VARIABLE>_FILE` (`DATABASE_URL_FILE`,
    /// `ORRERY_ADMIN_TOKEN_FILE`, ...: Docker and Compose secrets), its trailing line break removed. Setting
    /// both is an error, as is a file that cannot be read.
    pub fn from_sources(vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let vars = &with_file_variables(vars)?;
        let mut builder = Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder
                .set_default(*key, *value)
                .map_err(|e| ConfigError::new(&key.to_uppercase(), e.to_string()))?;
        }
        let file = vars
            .iter()
            .find(|(k, _)| k == "ORRERY_CONFIG_FILE")
            .map(|(_, v)| v.clone());
        if let Some(path) = file.filter(|p| !p.is_empty()) {
            if !std::path::Path::new(&path).exists() {
                return Err(ConfigError::new(
                    "ORRERY_CONFIG_FILE",
                    format!("file {path} does not exist"),
                ));
            }
            builder = builder.add_source(File::new(&path, FileFormat::Toml).required(true));
        }
        // Only our own variables: a stray environment entry must never break the build of the settings.
        let known: std::collections::HashMap<String, String> = vars
            .iter()
            .filter(|(k, _)| {
                let lower = k.to_lowercase();
                is_known(&lower)
            })
            .map(|(k, v)| (k.to_lowercase(), v.clone()))
            .collect();
        builder = builder.add_source(Environment::default().source(Some(known)));
        let cfg = builder
            .build()
            .map_err(|e| describe(e, "ORRERY_CONFIG_FILE"))?;
        let settings: Settings = cfg
            .try_deserialize()
            .map_err(|e| describe(e, "configuration"))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let db = self.database_url.expose_secret();
        if db.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "is not a valid PostgreSQL connection string (expected postgres://user@host:port/db)",
            ));
        }
        let redis = self.redis_url.expose_secret();
        if redis::Client::open(redis.to_string()).is_err() {
            return Err(ConfigError::new(
                "REDIS_URL",
                "is not a valid Redis URL (expected redis://host:port)",
            ));
        }
        let level_ok = matches!(
            self.log_level.to_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "error" | "off"
        ) || (self.log_level.contains('=')
            && tracing_subscriber::EnvFilter::try_new(&self.log_level).is_ok());
        if !level_ok {
            return Err(ConfigError::new(
                "LOG_LEVEL",
                format!(
                    "{:?} is not one of trace, debug, info, warn, error",
                    self.log_level
                ),
            ));
        }
        let positive = [
            ("WORKER_LEASE_SECONDS", self.worker_lease_seconds as f64),
            ("WORKER_POLL_INTERVAL", self.worker_poll_interval),
            ("WORKER_BACKOFF_BASE_DELAY", self.worker_backoff_base_delay),
            ("WORKER_BACKOFF_MAX_DELAY", self.worker_backoff_max_delay),
            ("WORKER_CONCURRENCY", self.worker_concurrency as f64),
            ("WORKER_BATCH_SIZE", self.worker_batch_size as f64),
            (
                "SCHEDULER_LOOKAHEAD_SECONDS",
                self.scheduler_lookahead_seconds as f64,
            ),
            (
                "SCHEDULER_RECONCILE_INTERVAL",
                self.scheduler_reconcile_interval,
            ),
            ("SCHEDULER_BATCH_SIZE", self.scheduler_batch_size as f64),
            ("DATABASE_POOL_SIZE", self.database_pool_size as f64),
            ("API_BODY_LIMIT_BYTES", self.api_body_limit_bytes as f64),
        ];
        for (name, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::new(
                    name,
                    format!("must be greater than 0, got {value}"),
                ));
            }
        }
        if let Err(e) = crate::http_policy::HttpPolicy::parse(&self.worker_http_allow_cidrs) {
            return Err(ConfigError::new("WORKER_HTTP_ALLOW_CIDRS", e));
        }
        if self.api_jobs_max_wait_seconds > 30 {
            return Err(ConfigError::new(
                "API_JOBS_MAX_WAIT_SECONDS",
                "must be between 0 and 30",
            ));
        }
        if let Err(e) = crate::shell_policy::ShellPolicy::parse(&self.worker_shell_allow) {
            return Err(ConfigError::new("WORKER_SHELL_ALLOW", e));
        }
        if self.worker_shell_output_cap_bytes == 0 || self.worker_shell_output_cap_bytes > 16 << 20
        {
            return Err(ConfigError::new(
                "WORKER_SHELL_OUTPUT_CAP_BYTES",
                "must be between 1 and 16777216",
            ));
        }
        if let Err(e) = parse_queue_list(&self.worker_queues) {
            return Err(ConfigError::new("WORKER_QUEUES", e));
        }
        if self.worker_max_retries > 10 {
            return Err(ConfigError::new(
                "WORKER_MAX_RETRIES",
                "must be between 0 and 10",
            ));
        }
        if self.worker_backoff_max_delay < self.worker_backoff_base_delay {
            return Err(ConfigError::new(
                "WORKER_BACKOFF_MAX_DELAY",
                "must not be smaller than WORKER_BACKOFF_BASE_DELAY",
            ));
        }
        if let Some(token) = &self.orrery_admin_token {
            let t = token.expose_secret();
            if !t.is_empty() && t.len() < 16 {
                return Err(ConfigError::new(
                    "ORRERY_ADMIN_TOKEN",
                    "must be at least 16 characters long",
                ));
            }
        }
        for (name, key) in [
            ("ORRERY_SECRETS_KEY", &self.orrery_secrets_key),
            ("ORRERY_SECRETS_OLD_KEYS", &self.orrery_secrets_old_keys),
        ] {
            if let Some(k) = key {
                if let Err(e) = crate::secrets::Keyring::parse_keys(k.expose_secret()) {
                    return Err(ConfigError::new(name, e));
                }
            }
        }
        if !self
            .redis_key_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.'))
        {
            return Err(ConfigError::new(
                "REDIS_KEY_PREFIX",
                "may contain only letters, digits and : _ - .",
            ));
        }
        Ok(())
    }

    /// The keys that encrypt and decrypt secrets; `None` when `ORRERY_SECRETS_KEY` is not set.
    pub fn secrets_keyring(&self) -> Option<crate::secrets::Keyring> {
        let current = self.orrery_secrets_key.as_ref()?.expose_secret();
        if current.trim().is_empty() {
            return None;
        }
        let old = self
            .orrery_secrets_old_keys
            .as_ref()
            .map(|k| k.expose_secret().to_string())
            .unwrap_or_default();
        crate::secrets::Keyring::new(current, &old).ok()
    }

    /// The admin token, if configured and non-empty.
    pub fn admin_token(&self) -> Option<&str> {
        self.orrery_admin_token
            .as_ref()
            .map(|t| t.expose_secret())
            .filter(|t| !t.is_empty())
    }

    /// The default time zone of new tasks; a non-IANA `TZ` (e.g. `:/etc/localtime`) falls back to UTC.
    pub fn default_timezone(&self) -> chrono_tz::Tz {
        match self.tz.parse::<chrono_tz::Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                tracing::warn!(tz = %self.tz, "TZ is not an IANA time zone name; new tasks default to UTC");
                chrono_tz::UTC
            }
        }
    }

    pub fn worker_lease(&self) -> Duration {
        Duration::from_secs(self.worker_lease_seconds as u64)
    }

    pub fn worker_poll(&self) -> Duration {
        Duration::from_secs_f64(self.worker_poll_interval)
    }
}

/// Turns the config crate's error into one line naming the variable.
fn describe(err: config::ConfigError, fallback: &str) -> ConfigError {
    let text = err.to_string();
    // config says e.g. `invalid digit found in string for key `api_port``.
    if let Some(start) = text.find("for key `") {
        let rest = &text[start + 9..];
        if let Some(end) = rest.find('`') {
            let key = rest[..end].trim_start_matches('.').to_uppercase();
            let message = text[..start].trim().trim_end_matches(',');
            return ConfigError::new(&key, format!("invalid value ({message})"));
        }
    }
    if let Some(start) = text.find("missing field `") {
        let rest = &text[start + 15..];
        if let Some(end) = rest.find('`') {
            return ConfigError::new(&rest[..end].to_uppercase(), "is required");
        }
    }
    ConfigError::new(fallback, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::from_sources(&[]).unwrap();
        assert_eq!(s.api_port, 8080);
        assert_eq!(s.api_host, "0.0.0.0");
        assert_eq!(s.worker_lease_seconds, 60);
        assert_eq!(s.worker_poll_interval, 0.5);
        assert_eq!(s.scheduler_misfire_grace_time, 30);
        assert_eq!(s.scheduler_health_port, 8081);
        assert_eq!(s.worker_health_port, 8082);
        assert!(s.admin_token().is_none());
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let dir =
            std::env::temp_dir().join(format!("orrery-cfg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("orrery.toml");
        std::fs::write(
            &file,
            "api_port = 9000\nworker_lease_seconds = 90\nlog_level = \"debug\"\n",
        )
        .unwrap();
        let path = file.to_string_lossy().into_owned();
        let s = Settings::from_sources(&vars(&[
            ("ORRERY_CONFIG_FILE", &path),
            ("API_PORT", "9100"),
        ]))
        .unwrap();
        assert_eq!(s.api_port, 9100, "environment wins over the file");
        assert_eq!(
            s.worker_lease_seconds, 90,
            "the file wins over the defaults"
        );
        assert_eq!(s.log_level, "debug");
        assert_eq!(s.worker_max_retries, 3, "defaults fill the rest");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_invalid_value_names_its_variable() {
        let e = Settings::from_sources(&vars(&[("API_PORT", "abc")])).unwrap_err();
        assert_eq!(e.variable, "API_PORT");
        assert!(
            e.to_string()
                .starts_with("invalid configuration: API_PORT:"),
            "{e}"
        );
        let e = Settings::from_sources(&vars(&[("WORKER_POLL_INTERVAL", "0")])).unwrap_err();
        assert_eq!(e.variable, "WORKER_POLL_INTERVAL");
        let e =
            Settings::from_sources(&vars(&[("DATABASE_URL", "not a url at all ::")])).unwrap_err();
        assert_eq!(e.variable, "DATABASE_URL");
        let e = Settings::from_sources(&vars(&[("LOG_LEVEL", "loud")])).unwrap_err();
        assert_eq!(e.variable, "LOG_LEVEL");
        let e =
            Settings::from_sources(&vars(&[("ORRERY_CONFIG_FILE", "/nonexistent/orrery.toml")]))
                .unwrap_err();
        assert_eq!(e.variable, "ORRERY_CONFIG_FILE");
        let e =
            Settings::from_sources(&vars(&[("WORKER_HTTP_ALLOW_CIDRS", "10.0.0.0/8,intranet")]))
                .unwrap_err();
        assert_eq!(e.variable, "WORKER_HTTP_ALLOW_CIDRS");
        assert!(e.to_string().contains("intranet"), "{e}");
        let e = Settings::from_sources(&vars(&[("WORKER_SHELL_ALLOW", "/bin/sh,usr/bin/env")]))
            .unwrap_err();
        assert_eq!(e.variable, "WORKER_SHELL_ALLOW");
        assert!(e.to_string().contains("usr/bin/env"), "{e}");
        let e = Settings::from_sources(&vars(&[("WORKER_SHELL_ENABLED", "maybe")])).unwrap_err();
        assert_eq!(e.variable, "WORKER_SHELL_ENABLED");
        let ok = Settings::from_sources(&vars(&[
            ("WORKER_SHELL_ENABLED", "true"),
            ("WORKER_SHELL_ALLOW", "/bin/sh, /usr/bin/*"),
        ]))
        .unwrap();
        assert!(ok.worker_shell_enabled);
        assert_eq!(ok.worker_shell_output_cap_bytes, 65536);
    }

    #[test]
    fn every_variable_can_come_from_a_file_named_by_its_file_variable() {
        let dir = std::env::temp_dir().join(format!("orrery-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "file-token-0123456789abcdef\n").unwrap();
        let url = dir.join("url");
        std::fs::write(&url, "postgres://orrery:pw@db:5432/orrery\r\n").unwrap();
        let s = Settings::from_sources(&vars(&[
            ("ORRERY_ADMIN_TOKEN_FILE", token.to_str().unwrap()),
            ("DATABASE_URL_FILE", url.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(s.admin_token(), Some("file-token-0123456789abcdef"));
        assert_eq!(
            s.database_url.expose_secret(),
            "postgres://orrery:pw@db:5432/orrery"
        );
        let both = Settings::from_sources(&vars(&[
            ("ORRERY_ADMIN_TOKEN", "env-token-0123456789abcdef"),
            ("ORRERY_ADMIN_TOKEN_FILE", token.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert_eq!(both.variable, "ORRERY_ADMIN_TOKEN_FILE");
        let missing =
            Settings::from_sources(&vars(&[("REDIS_URL_FILE", "/nonexistent/redis-url")]))
                .unwrap_err();
        assert_eq!(missing.variable, "REDIS_URL_FILE");
        assert!(missing.to_string().contains("/nonexistent/redis-url"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let s = Settings::from_sources(&vars(&[
            (
                "DATABASE_URL",
                "postgres://orrery:hunter2secret@db:5432/orrery",
            ),
            ("REDIS_URL", "redis://:redispass99@cache:6379"),
            ("ORRERY_ADMIN_TOKEN", "super-secret-admin-token"),
        ]))
        .unwrap();
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2secret"), "{text}");
        assert!(!text.contains("redispass99"), "{text}");
        assert!(!text.contains("super-secret-admin-token"), "{text}");
        assert_eq!(s.admin_token(), Some("super-secret-admin-token"));
    }

    #[test]
    fn a_non_iana_tz_falls_back_to_utc() {
        let s = Settings::from_sources(&vars(&[("TZ", ":/etc/localtime")])).unwrap();
        assert_eq!(s.default_timezone(), chrono_tz::UTC);
        let s = Settings::from_sources(&vars(&[("TZ", "Europe/Berlin")])).unwrap();
        assert_eq!(s.default_timezone(), chrono_tz::Europe::Berlin);
    }
}
