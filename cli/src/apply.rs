//! `orrery apply` and `orrery diff`: make the server's tasks match the definitions.
//!
//! A definition is matched to the caller's task of the same `name`. New names are created; a task whose
//! fields differ from the fields the definition sets is PATCHed with exactly those fields (so re-applying
//! unchanged files sends no write and leaves no audit record); fields a definition does not set are left as
//! they are on the server. `--prune` deletes the caller's named tasks that no definition names; tasks
//! without a name are never touched. Every create and update is first checked by the server
//! (`?dry_run=true`), so one bad definition changes nothing at all.

use serde_json::{json, Map, Value};

use crate::client::Client;
use crate::error::{CliError, CliResult};
use crate::manifest::{self, Definition, Problem};
use crate::output::{paint, Color, Format, Progress};

/// One difference at a path inside a field (`payload.pipeline[0].with.url`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

#[derive(Debug)]
pub enum Step {
    Create {
        def: Definition,
    },
    Update {
        def: Definition,
        id: String,
        /// The top-level fields to PATCH, with the file's values.
        patch: Map<String, Value>,
        changes: Vec<FieldChange>,
    },
    Unchanged {
        def: Definition,
        id: String,
    },
    Delete {
        name: String,
        id: String,
    },
}

pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    fn count(&self, f: impl Fn(&Step) -> bool) -> usize {
        self.steps.iter().filter(|s| f(s)).count()
    }
    pub fn creates(&self) -> usize {
        self.count(|s| matches!(s, Step::Create { .. }))
    }
    pub fn updates(&self) -> usize {
        self.count(|s| matches!(s, Step::Update { .. }))
    }
    pub fn unchanged(&self) -> usize {
        self.count(|s| matches!(s, Step::Unchanged { .. }))
    }
    pub fn deletes(&self) -> usize {
        self.count(|s| matches!(s, Step::Delete { .. }))
    }
}

/// Payload `params` defaults to `{}` and `pipeline` to `[]`: a file that leaves them out matches a server
/// copy that spells them out.
fn normalized(field: &str, v: &Value) -> Value {
    let mut v = v.clone();
    if field == "payload" {
        if let Value::Object(m) = &mut v {
            m.entry("params").or_insert_with(|| json!({}));
            m.entry("pipeline").or_insert_with(|| json!([]));
        }
    }
    // `after`: the server adds the resolved `task_id` and the default condition; a file names the parent as it
    // wants it written (the server echoes `task` as written).
    if field == "after" {
        if v.is_null() {
            v = json!([]);
        }
        if let Value::Array(items) = &mut v {
            for item in items {
                if let Value::Object(m) = item {
                    m.remove("task_id");
                    m.entry("condition").or_insert_with(|| json!("success"));
                    if m.get("params").is_some_and(Value::is_null) {
                        m.remove("params");
                    }
                }
            }
        }
    }
    v
}

/// The names a definition's `after` refers to.
fn after_names(def: &Definition) -> Vec<String> {
    def.fields
        .get("after")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("task")?.as_str().map(str::to_string))
        .collect()
}

/// A cycle among the definitions' `after` (by name), as `a → b → a` in execution order, if there is one.
pub fn definition_cycle(defs: &[Definition]) -> Option<(usize, String)> {
    let index: std::collections::HashMap<&str, usize> = defs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    fn visit(
        i: usize,
        defs: &[Definition],
        index: &std::collections::HashMap<&str, usize>,
        state: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[i] = 1;
        path.push(i);
        for parent in after_names(&defs[i]) {
            let Some(&p) = index.get(parent.as_str()) else {
                continue;
            };
            if state[p] == 1 {
                let start = path.iter().position(|&x| x == p).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(p);
                return Some(cycle);
            }
            if state[p] == 0 {
                if let Some(c) = visit(p, defs, index, state, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    let mut state = vec![0u8; defs.len()];
    for i in 0..defs.len() {
        if state[i] == 0 {
            if let Some(cycle) = visit(i, defs, &index, &mut state, &mut Vec::new()) {
                // Walked child → parent; execution order is the reverse.
                let names: Vec<&str> = cycle.iter().rev().map(|&k| defs[k].name.as_str()).collect();
                return Some((cycle[0], names.join(" → ")));
            }
        }
    }
    None
}

/// The differences between two values, by path (objects by key, arrays by index).
pub fn diff_values(path: &str, before: Option<&Value>, after: Option<&Value>) -> Vec<FieldChange> {
    match (before, after) {
        (Some(a), Some(b)) if a == b => vec![],
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| diff_values(&format!("{path}.{k}"), a.get(k), b.get(k)))
                .collect()
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => (0..a.len().max(b.len()))
            .flat_map(|i| diff_values(&format!("{path}[{i}]"), a.get(i), b.get(i)))
            .collect(),
        (a, b) => vec![FieldChange {
            path: path.to_string(),
            before: a.cloned(),
            after: b.cloned(),
        }],
    }
}

/// The caller's agent id (apply manages the caller's own tasks, admins included).
pub fn whoami(client: &Client) -> CliResult<String> {
    let me = client.get("/agents/me")?;
    me["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| CliError::Refused("GET /agents/me did not return an id".into()))
}

/// Compares the definitions with the caller's tasks.
pub fn plan(client: &Client, defs: Vec<Definition>, prune: bool) -> CliResult<Plan> {
    let me = whoami(client)?;
    let existing = client.get_all("/tasks", &[("created_by", me)])?;
    let mut by_name: std::collections::HashMap<String, Value> = existing
        .into_iter()
        .filter_map(|t| t["name"].as_str().map(|n| (n.to_string(), t.clone())))
        .collect();
    let mut steps = Vec::new();
    for def in defs {
        match by_name.remove(&def.name) {
            None => steps.push(Step::Create { def }),
            Some(task) => {
                let id = task["id"].as_str().unwrap_or_default().to_string();
                let mut patch = Map::new();
                let mut changes = Vec::new();
                for (field, want) in &def.fields {
                    let have = task.get(field).unwrap_or(&Value::Null);
                    let (have_n, want_n) = (normalized(field, have), normalized(field, want));
                    if have_n != want_n {
                        patch.insert(field.clone(), want.clone());
                        changes.extend(diff_values(field, Some(&have_n), Some(&want_n)));
                    }
                }
                if patch.is_empty() {
                    steps.push(Step::Unchanged { def, id });
                } else {
                    steps.push(Step::Update {
                        def,
                        id,
                        patch,
                        changes,
                    });
                }
            }
        }
    }
    if prune {
        let mut gone: Vec<(String, Value)> = by_name.into_iter().collect();
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, task) in gone {
            let id = task["id"].as_str().unwrap_or_default().to_string();
            steps.push(Step::Delete { name, id });
        }
    }
    Ok(Plan { steps })
}

fn create_body(def: &Definition) -> Value {
    let mut body = def.fields.clone();
    body.insert("name".into(), Value::String(def.name.clone()));
    Value::Object(body)
}

fn dry() -> [(&'static str, String); 1] {
    [("dry_run", "true".to_string())]
}

/// Asks the server to check every create and update (nothing is written); returns every problem found,
/// each naming the file, the document and the field.
pub fn server_check(client: &Client, plan: &Plan) -> CliResult<Vec<Problem>> {
    let mut problems = Vec::new();
    let defs: Vec<Definition> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Create { def } | Step::Update { def, .. } | Step::Unchanged { def, .. } => {
                Some(def.clone())
            }
            Step::Delete { .. } => None,
        })
        .collect();
    if let Some((i, cycle)) = definition_cycle(&defs) {
        problems.push(Problem {
            origin: defs[i].origin.clone(),
            field: Some("after".into()),
            message: format!(
                "the definitions form a cycle: {cycle} (each task runs after the one before it)"
            ),
        });
        return Ok(problems);
    }
    // Parents created by this apply do not exist yet: `after` naming one is written in a second pass.
    let created: std::collections::HashSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Create { def } => Some(def.name.as_str()),
            _ => None,
        })
        .collect();
    let deferred = |def: &Definition| {
        after_names(def)
            .iter()
            .any(|n| created.contains(n.as_str()))
    };
    let without_after = |mut body: Value| {
        if let Value::Object(m) = &mut body {
            m.remove("after");
        }
        body
    };
    let todo = plan.creates() + plan.updates();
    let mut progress = Progress::new(todo);
    for step in &plan.steps {
        let (def, result) = match step {
            Step::Create { def } => {
                progress.step(&format!("checking {}", def.name));
                let body = if deferred(def) {
                    without_after(create_body(def))
                } else {
                    create_body(def)
                };
                (def, client.post_query("/tasks", &dry(), Some(&body)))
            }
            Step::Update { def, id, patch, .. } => {
                progress.step(&format!("checking {}", def.name));
                let body = if deferred(def) {
                    without_after(Value::Object(patch.clone()))
                } else {
                    Value::Object(patch.clone())
                };
                (
                    def,
                    client.patch_query(&format!("/tasks/{id}"), &dry(), &body),
                )
            }
            _ => continue,
        };
        match result {
            Ok(_) => {}
            Err(e @ CliError::Api { .. }) => problems.extend(problems_of(def, &e)),
            Err(e) => return Err(e),
        }
    }
    progress.finish();
    Ok(problems)
}

fn problems_of(def: &Definition, e: &CliError) -> Vec<Problem> {
    let fields = e.field_errors();
    if !fields.is_empty() {
        return fields
            .into_iter()
            .map(|(field, message)| Problem {
                origin: def.origin.clone(),
                field: Some(field),
                message,
            })
            .collect();
    }
    let mut message = match e {
        CliError::Api {
            status,
            code,
            message,
            ..
        } => format!("the server said {status} {code}: {message}"),
        other => other.render(),
    };
    if message.contains("terminal tasks cannot be edited") {
        message.push_str(&format!(
            " (delete it with `orrery tasks rm {}` to create it again from the file)",
            def.name
        ));
    }
    vec![Problem {
        origin: def.origin.clone(),
        field: None,
        message,
    }]
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(unset)".into(),
        Some(v) => serde_json::to_string(v).unwrap_or_default(),
    }
}

/// The human diff: `+` create, `~` update (one line per changed path), `-` delete.
pub fn render_diff(plan: &Plan, color: bool, verbose: bool) -> String {
    let mut out = Vec::new();
    for step in &plan.steps {
        match step {
            Step::Create { def } => {
                out.push(paint(
                    color,
                    Color::Green,
                    &format!("+ {}  (create; {})", def.name, def.origin),
                ));
                for (k, v) in &def.fields {
                    out.push(paint(
                        color,
                        Color::Green,
                        &format!("+     {k}: {}", show(&Some(v.clone()))),
                    ));
                }
            }
            Step::Update {
                def, id, changes, ..
            } => {
                out.push(paint(
                    color,
                    Color::Yellow,
                    &format!("~ {}  (update {id}; {})", def.name, def.origin),
                ));
                for c in changes {
                    out.push(format!(
                        "{}     {}: {} → {}",
                        paint(color, Color::Yellow, "~"),
                        c.path,
                        paint(color, Color::Red, &show(&c.before)),
                        paint(color, Color::Green, &show(&c.after)),
                    ));
                }
            }
            Step::Unchanged { def, .. } => {
                if verbose {
                    out.push(paint(
                        color,
                        Color::Dim,
                        &format!("= {}  (unchanged; {})", def.name, def.origin),
                    ));
                }
            }
            Step::Delete { name, id } => out.push(paint(
                color,
                Color::Red,
                &format!("- {name}  (delete {id}; no definition names it any more)"),
            )),
        }
    }
    out.push(format!(
        "{} to create, {} to update, {} unchanged, {} to delete",
        plan.creates(),
        plan.updates(),
        plan.unchanged(),
        plan.deletes()
    ));
    out.join("\n")
}

/// The plan as data (`-o json|yaml` of diff and apply).
pub fn plan_json(
    plan: &Plan,
    dry_run: bool,
    applied: bool,
    created_ids: &std::collections::HashMap<String, String>,
) -> Value {
    let mut created = Vec::new();
    let mut updated = Vec::new();
    let mut unchanged = Vec::new();
    let mut deleted = Vec::new();
    for step in &plan.steps {
        match step {
            Step::Create { def } => created.push(json!({
                "name": def.name, "id": created_ids.get(&def.name), "file": def.origin.file,
                "document": def.origin.doc})),
            Step::Update {
                def, id, changes, ..
            } => updated.push(json!({
                "name": def.name, "id": id, "file": def.origin.file, "document": def.origin.doc,
                "changes": changes.iter().map(|c| json!({"path": c.path, "before": c.before, "after": c.after}))
                    .collect::<Vec<_>>()})),
            Step::Unchanged { def, id } => unchanged.push(json!({"name": def.name, "id": id})),
            Step::Delete { name, id } => deleted.push(json!({"name": name, "id": id})),
        }
    }
    json!({"dry_run": dry_run, "applied": applied, "create": created, "update": updated,
           "unchanged": unchanged, "delete": deleted})
}

/// Loads, plans, checks and (unless `dry_run`) carries out the plan.
pub fn run(
    client: &Client,
    files: &[std::path::PathBuf],
    prune: bool,
    dry_run: bool,
    format: Format,
    verbose: bool,
) -> CliResult<()> {
    let defs = manifest::load(files)?;
    let mut plan = plan(client, defs, prune)?;
    let problems = server_check(client, &plan)?;
    if !problems.is_empty() {
        return Err(manifest::refuse(&problems));
    }
    let color = crate::output::color_stdout();
    if dry_run {
        return emit(
            format,
            &plan,
            true,
            false,
            render_diff(&plan, color, verbose),
        );
    }
    let todo = plan.creates() + plan.updates() + plan.deletes();
    let mut progress = Progress::new(todo);
    let mut lines = Vec::new();
    let mut done = 0usize;
    let mut created_ids = std::collections::HashMap::new();
    // Second pass: `after` of created tasks (by name) and of updated ones (by id).
    let mut pending_after: Vec<String> = Vec::new();
    let mut pending_patch: Vec<(String, Value)> = Vec::new();
    for step in &mut plan.steps {
        let result = match step {
            Step::Create { def } => {
                progress.step(&format!("creating {}", def.name));
                // `after` is written in a second pass, once every parent the files define exists.
                let mut body = create_body(def);
                if let Value::Object(m) = &mut body {
                    if m.remove("after").is_some_and(|a| a != json!([])) {
                        pending_after.push(def.name.clone());
                    }
                }
                client.post("/tasks", Some(&body)).map(|t| {
                    let id = t["id"].as_str().unwrap_or("").to_string();
                    created_ids.insert(def.name.clone(), id);
                    lines.push(format!(
                        "{}  {}  {}",
                        paint(color, Color::Green, "created"),
                        def.name,
                        t["id"].as_str().unwrap_or("")
                    ))
                })
            }
            Step::Update { def, id, patch, .. } => {
                progress.step(&format!("updating {}", def.name));
                let fields: Vec<String> = patch.keys().cloned().collect();
                let mut patch = patch.clone();
                if let Some(after) = patch.remove("after") {
                    pending_patch.push((id.clone(), json!({"after": after})));
                }
                let line = format!(
                    "{}  {}  {id}  ({})",
                    paint(color, Color::Yellow, "updated"),
                    def.name,
                    fields.join(", ")
                );
                if patch.is_empty() {
                    lines.push(line);
                    Ok(())
                } else {
                    client
                        .patch_query(&format!("/tasks/{id}"), &[], &Value::Object(patch))
                        .map(|_| lines.push(line))
                }
            }
            Step::Delete { name, id } => {
                progress.step(&format!("deleting {name}"));
                let line = format!("{}  {name}  {id}", paint(color, Color::Red, "deleted"));
                client
                    .delete(&format!("/tasks/{id}"))
                    .map(|_| lines.push(line))
            }
            Step::Unchanged { def, id } => {
                if verbose {
                    lines.push(format!(
                        "{}  {}  {id}",
                        paint(color, Color::Dim, "unchanged"),
                        def.name
                    ));
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            progress.finish();
            if format == Format::Table {
                println!("{}", lines.join("\n"));
            }
            return Err(CliError::Refused(format!(
                "apply stopped after {done} change(s): {}",
                e.render()
            )));
        }
        if !matches!(step, Step::Unchanged { .. }) {
            done += 1;
        }
    }
    for name in &pending_after {
        let Some(def) = plan.steps.iter().find_map(|s| match s {
            Step::Create { def } if &def.name == name => Some(def),
            _ => None,
        }) else {
            continue;
        };
        if let (Some(id), Some(after)) = (created_ids.get(name), def.fields.get("after")) {
            pending_patch.push((id.clone(), json!({"after": after})));
        }
    }
    for (id, body) in &pending_patch {
        if let Err(e) = client.patch_query(&format!("/tasks/{id}"), &[], body) {
            progress.finish();
            if format == Format::Table {
                println!("{}", lines.join("\n"));
            }
            return Err(CliError::Refused(format!(
                "apply stopped while writing `after` of task {id}: {}",
                e.render()
            )));
        }
    }
    progress.finish();
    lines.push(format!(
        "{} created, {} updated, {} unchanged, {} deleted",
        plan.creates(),
        plan.updates(),
        plan.unchanged(),
        plan.deletes()
    ));
    let data = plan_json(&plan, false, true, &created_ids);
    crate::output::print(format, &data, |_| lines.join("\n"))
}

fn emit(format: Format, plan: &Plan, dry_run: bool, applied: bool, text: String) -> CliResult<()> {
    let data = plan_json(plan, dry_run, applied, &Default::default());
    crate::output::print(format, &data, |_| text)
}

/// `orrery diff`: the plan, nothing written.
pub fn diff(
    client: &Client,
    files: &[std::path::PathBuf],
    prune: bool,
    format: Format,
    verbose: bool,
) -> CliResult<()> {
    let defs = manifest::load(files)?;
    let plan = plan(client, defs, prune)?;
    let problems = server_check(client, &plan)?;
    if !problems.is_empty() {
        return Err(manifest::refuse(&problems));
    }
    let text = render_diff(&plan, crate::output::color_stdout(), verbose);
    emit(format, &plan, true, false, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_differences_are_named_by_path() {
        let a = json!({"pipeline": [{"id": "a", "with": {"url": "x"}}], "params": {}});
        let b = json!({"pipeline": [{"id": "a", "with": {"url": "y"}}, {"id": "b"}], "params": {}});
        let paths: Vec<String> = diff_values("payload", Some(&a), Some(&b))
            .into_iter()
            .map(|c| c.path)
            .collect();
        assert_eq!(
            paths,
            vec!["payload.pipeline[0].with.url", "payload.pipeline[1]"]
        );
    }

    #[test]
    fn payload_defaults_do_not_count_as_a_change() {
        let file = json!({"pipeline": [{"id": "n", "uses": "noop"}]});
        let server = json!({"params": {}, "pipeline": [{"id": "n", "uses": "noop"}]});
        assert_eq!(normalized("payload", &file), normalized("payload", &server));
    }
}
