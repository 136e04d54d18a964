//! The params of a dependent run (trigger `dependency`): each parent edge's `params` templates rendered against
//! that parent's final run, merged in the order of the dependent's `after` (a later edge wins key by key), as
//! run-now params are merged over the task's own (docs/flow-control.md#dependencies).

use deadpool_postgres::Pool;
use orrery::queue::{self, ClaimedWork, Upstream};
use serde_json::{json, Map, Value};

use crate::executor::RunFailure;

/// The template context of one edge: the parent's run, in the shape the parent's own pipeline saw.
pub fn edge_context(u: &Upstream) -> Value {
    let output = u.parent_output.clone().unwrap_or(Value::Null);
    json!({
        "params": u.parent_params.clone().unwrap_or_else(|| json!({})),
        "steps": output.get("steps").cloned().unwrap_or_else(|| json!({})),
        "task": {"id": u.parent_task_id, "title": u.parent_title, "name": u.parent_name},
        "run": {
            "id": u.parent_due_work_id,
            "run_id": u.parent_run_id,
            "outcome": u.outcome,
            "error": u.error,
            "error_kind": u.error_kind,
            "trace_id": u.trace_id,
        },
    })
}

/// The rendered params of every edge of `work` that has templates (empty when none has).
pub async fn params(pool: &Pool, work: &ClaimedWork) -> Result<Map<String, Value>, RunFailure> {
    let client = pool.get().await.map_err(|e| {
        RunFailure::retryable("database", format!("cannot read the run's parents: {e}"))
    })?;
    let parents = queue::upstream(&client, work.id).await.map_err(|e| {
        RunFailure::retryable("database", format!("cannot read the run's parents: {e}"))
    })?;
    render_all(&parents)
}

pub fn render_all(parents: &[Upstream]) -> Result<Map<String, Value>, RunFailure> {
    let mut merged = Map::new();
    for u in parents {
        let label = u
            .parent_name
            .clone()
            .unwrap_or_else(|| u.parent_task_id.to_string());
        let rendered = orrery::pipeline::render(&u.template, &edge_context(u)).map_err(|e| {
            RunFailure::permanent("template", format!("after {label}: params: {}", e.message))
        })?;
        if let Value::Object(map) = rendered {
            merged.extend(map);
        }
    }
    Ok(merged)
}
