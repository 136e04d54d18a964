//! Task definitions on disk: YAML (several documents per file, separated by `---`) or JSON (one task per
//! file). A definition holds the fields of the `POST /tasks` body plus a required `name`. Problems are
//! reported with the file, the document (1-based) and the field.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{CliError, CliResult};

/// Fields a definition may set (the writable fields of a task except `created_by`: apply manages the
/// caller's own tasks).
pub const FIELDS: &[&str] = &[
    "name",
    "title",
    "description",
    "schedule_kind",
    "schedule_expr",
    "timezone",
    "payload",
    "priority",
    "dedupe_key",
    "dedupe_window_seconds",
    "max_retries",
    "backoff_strategy",
    "concurrency_key",
    "timeout_seconds",
    "misfire_grace_seconds",
    "catchup",
    "overlap",
    "queue",
    "rate_key",
    "after",
];

/// Fields the server sets; `orrery tasks get --export` leaves them out.
pub const SERVER_FIELDS: &[&str] = &[
    "id",
    "status",
    "created_at",
    "updated_at",
    "next_run_at",
    "created_by",
];

/// The types of the fields (values are checked by the server, which names the field too).
#[derive(Deserialize)]
#[allow(dead_code)]
struct Typed {
    name: String,
    title: String,
    description: Option<String>,
    schedule_kind: String,
    schedule_expr: String,
    timezone: Option<String>,
    payload: Option<Map<String, Value>>,
    priority: Option<i64>,
    dedupe_key: Option<String>,
    dedupe_window_seconds: Option<i64>,
    max_retries: Option<i64>,
    backoff_strategy: Option<String>,
    concurrency_key: Option<String>,
    timeout_seconds: Option<i64>,
    misfire_grace_seconds: Option<i64>,
    catchup: Option<String>,
    overlap: Option<String>,
    queue: Option<String>,
    rate_key: Option<String>,
    /// `[{task: <name or id>, condition?: success|failure|any, params?: {...}}]`.
    after: Option<Vec<Map<String, Value>>>,
}

/// Where a definition came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: String,
    /// 1-based document index within the file.
    pub doc: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (document {})", self.file, self.doc)
    }
}

#[derive(Debug, Clone)]
pub struct Definition {
    pub origin: Origin,
    pub name: String,
    /// The fields the file sets, except `name`.
    pub fields: Map<String, Value>,
}

/// One problem with one definition.
#[derive(Debug, Clone)]
pub struct Problem {
    pub origin: Origin,
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field {field}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// The refusal for a list of problems (exit 1), one per line.
pub fn refuse(problems: &[Problem]) -> CliError {
    let mut text = format!(
        "{} problem{} in the task definitions; nothing was changed:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        text.push_str(&format!("\n  {p}"));
    }
    CliError::Refused(text)
}

/// A task name: 1..100 of `A-Za-z0-9._-` (the API's rule).
pub fn valid_name(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The files named by `-f` arguments: a file as is, a directory recursively (`*.yaml`, `*.yml`, `*.json`,
/// sorted), `-` for standard input (YAML).
pub fn collect_files(paths: &[PathBuf]) -> CliResult<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(p.clone());
            continue;
        }
        let meta = std::fs::metadata(p)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", p.display())))?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(CliError::Usage(
            "no task definitions found (looked for *.yaml, *.yml and *.json)".into(),
        ));
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> CliResult<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", dir.display())))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| CliError::Usage(format!("cannot read {}: {e}", dir.display())))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_json(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("json")
}

/// Reads every definition; all problems are reported together (none is sent to the server).
pub fn load(paths: &[PathBuf]) -> CliResult<Vec<Definition>> {
    let files = collect_files(paths)?;
    let mut defs = Vec::new();
    let mut problems = Vec::new();
    for path in &files {
        let shown = if path.as_os_str() == "-" {
            "<stdin>".to_string()
        } else {
            path.display().to_string()
        };
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| CliError::Usage(format!("cannot read standard input: {e}")))?;
            s
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("cannot read {shown}: {e}")))?
        };
        for (doc, parsed) in parse_documents(&text, is_json(path)) {
            let origin = Origin {
                file: shown.clone(),
                doc,
            };
            match parsed {
                Err(message) => problems.push(Problem {
                    origin,
                    field: None,
                    message,
                }),
                Ok(value) => match check(&value, &origin) {
                    Ok(def) => defs.push(def),
                    Err(mut p) => problems.append(&mut p),
                },
            }
        }
    }
    let mut seen: HashMap<&str, &Origin> = HashMap::new();
    for d in &defs {
        if let Some(first) = seen.insert(&d.name, &d.origin) {
            problems.push(Problem {
                origin: d.origin.clone(),
                field: Some("name".into()),
                message: format!("{:?} is already defined in {first}", d.name),
            });
        }
    }
    if !problems.is_empty() {
        return Err(refuse(&problems));
    }
    Ok(defs)
}

/// The documents of a file as JSON values (1-based index); empty YAML documents are skipped.
pub fn parse_documents(text: &str, json: bool) -> Vec<(usize, Result<Value, String>)> {
    if json {
        return vec![(
            1,
            serde_json::from_str::<Value>(text).map_err(|e| format!("not valid JSON: {e}")),
        )];
    }
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(v) => out.push((i + 1, Ok(v))),
            Err(e) => {
                out.push((i + 1, Err(format!("not valid YAML: {e}"))));
                // A syntax error ends the stream: later documents cannot be read reliably.
                break;
            }
        }
    }
    out
}

/// Checks one document: a mapping, known fields only, `name` valid, the value types right.
pub fn check(value: &Value, origin: &Origin) -> Result<Definition, Vec<Problem>> {
    let problem = |field: Option<&str>, message: String| Problem {
        origin: origin.clone(),
        field: field.map(str::to_string),
        message,
    };
    let Value::Object(map) = value else {
        return Err(vec![problem(
            None,
            "must be a mapping of task fields (name, title, schedule_kind, schedule_expr, ...)"
                .into(),
        )]);
    };
    let mut problems = Vec::new();
    for key in map.keys() {
        if SERVER_FIELDS.contains(&key.as_str()) {
            let why = if key == "created_by" {
                "is not supported in definitions: apply manages the tasks of the calling agent"
            } else {
                "is set by the server; remove it from the definition"
            };
            problems.push(problem(Some(key), why.into()));
        } else if !FIELDS.contains(&key.as_str()) {
            problems.push(problem(
                Some(key),
                format!("unknown field (known: {})", FIELDS.join(", ")),
            ));
        }
    }
    for required in ["name", "title", "schedule_kind", "schedule_expr"] {
        if !map.contains_key(required) {
            problems.push(problem(Some(required), "is required".into()));
        }
    }
    if problems.is_empty() {
        if let Err(e) = serde_path_to_error::deserialize::<_, Typed>(value.clone()) {
            let path = e.path().to_string();
            let field = if path == "." { None } else { Some(path) };
            problems.push(problem(field.as_deref(), e.into_inner().to_string()));
        }
    }
    let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
    if problems.is_empty() && !valid_name(name) {
        problems.push(problem(
            Some("name"),
            "must be 1 to 100 characters, each a letter (A-Z, a-z), a digit, '.', '_' or '-'"
                .into(),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut fields = map.clone();
    fields.remove("name");
    Ok(Definition {
        origin: origin.clone(),
        name: name.to_string(),
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin() -> Origin {
        Origin {
            file: "t.yaml".into(),
            doc: 2,
        }
    }

    #[test]
    fn a_wrong_type_names_its_field() {
        let v = json!({"name": "a", "title": "t", "schedule_kind": "cron", "schedule_expr": "* * * * *",
                       "priority": "high"});
        let p = check(&v, &origin()).unwrap_err();
        assert_eq!(p[0].field.as_deref(), Some("priority"));
        assert!(p[0]
            .to_string()
            .starts_with("t.yaml (document 2): field priority:"));
    }

    #[test]
    fn unknown_and_server_fields_and_missing_ones_are_all_reported() {
        let v = json!({"name": "a", "status": "paused", "colour": "red", "schedule_kind": "cron"});
        let fields: Vec<_> = check(&v, &origin())
            .unwrap_err()
            .into_iter()
            .filter_map(|p| p.field)
            .collect();
        for f in ["status", "colour", "title", "schedule_expr"] {
            assert!(fields.contains(&f.to_string()), "{fields:?}");
        }
    }

    #[test]
    fn yaml_documents_are_numbered_and_empty_ones_skipped() {
        let docs = parse_documents("---\na: 1\n---\n---\nb: 2\n", false);
        let idx: Vec<usize> = docs.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 3]);
    }

    #[test]
    fn a_bad_name_is_refused() {
        let v = json!({"name": "has space", "title": "t", "schedule_kind": "cron", "schedule_expr": "x"});
        assert_eq!(
            check(&v, &origin()).unwrap_err()[0].field.as_deref(),
            Some("name")
        );
    }
}
