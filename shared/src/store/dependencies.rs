//! Task dependencies: resolving `after`, the cycle check, and what the lifecycle actions do to the edges and
//! gates (docs/flow-control.md#dependencies). The settlement side is in `crate::queue` (the worker's completion).

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::Value;
use tokio_postgres::Error;
use uuid::Uuid;

use super::rows::{RunChild, RunParent};
use crate::model::TaskStatus;
use deadpool_postgres::GenericClient as Db;

/// A task `after` may name.
pub struct ParentRef {
    pub id: Uuid,
    pub name: Option<String>,
    pub status: TaskStatus,
}

fn parent_ref(r: &tokio_postgres::Row) -> ParentRef {
    ParentRef {
        id: r.get("id"),
        name: r.get("name"),
        status: r.get("status"),
    }
}

/// The task with this id that `owner` (None = any, for admins) may see.
pub async fn parent_by_id(
    c: &impl Db,
    id: Uuid,
    owner: Option<Uuid>,
) -> Result<Option<ParentRef>, Error> {
    let st = c
        .prepare_cached(
            "SELECT id, name, status FROM task WHERE id = $1 AND ($2::uuid IS NULL OR created_by = $2)",
        )
        .await?;
    Ok(c.query_opt(&st, &[&id, &owner])
        .await?
        .as_ref()
        .map(parent_ref))
}

/// The task of `created_by` named `name`.
pub async fn parent_by_name(
    c: &impl Db,
    created_by: Uuid,
    name: &str,
) -> Result<Option<ParentRef>, Error> {
    let st = c
        .prepare_cached("SELECT id, name, status FROM task WHERE created_by = $1 AND name = $2")
        .await?;
    Ok(c.query_opt(&st, &[&created_by, &name])
        .await?
        .as_ref()
        .map(parent_ref))
}

/// Serializes every change of the dependency graph that could close a cycle (two concurrent edits each adding
/// one half of a cycle would both pass a check made on their own snapshots). Held until the transaction ends.
pub async fn lock_graph(c: &impl Db) -> Result<(), Error> {
    c.execute("SELECT pg_advisory_xact_lock(7243110913)", &[])
        .await?;
    Ok(())
}

/// If making `task` run after `parents` closes a cycle: the cycle in execution order, starting and ending with
/// `task` (`task → … → parent → task`), with the index in `parents` of the parent that closes it.
pub async fn find_cycle(
    c: &impl Db,
    task: Uuid,
    parents: &[Uuid],
) -> Result<Option<(usize, Vec<Uuid>)>, Error> {
    let st = c
        .prepare_cached(
            "WITH RECURSIVE up(id) AS (
                 SELECT unnest($1::uuid[])
                 UNION
                 SELECT e.parent_task_id FROM up JOIN task_dependency e ON e.task_id = up.id WHERE up.id <> $2
             )
             SELECT e.task_id, e.parent_task_id FROM task_dependency e
              WHERE e.task_id IN (SELECT id FROM up) AND e.task_id <> $2",
        )
        .await?;
    let parents_vec = parents.to_vec();
    let rows = c.query(&st, &[&parents_vec, &task]).await?;
    let mut up: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for r in &rows {
        up.entry(r.get("task_id"))
            .or_default()
            .push(r.get("parent_task_id"));
    }
    for (i, start) in parents.iter().enumerate() {
        // Breadth-first from the new parent up through its ancestors, looking for `task`.
        let mut prev: HashMap<Uuid, Uuid> = HashMap::new();
        let mut seen: HashSet<Uuid> = HashSet::from([*start]);
        let mut queue = VecDeque::from([*start]);
        let mut found = *start == task;
        while let Some(n) = queue.pop_front() {
            if n == task {
                found = true;
                break;
            }
            for p in up.get(&n).into_iter().flatten() {
                if seen.insert(*p) {
                    prev.insert(*p, n);
                    queue.push_back(*p);
                }
            }
        }
        if found {
            // Walked parent-wards: start, …, task. Execution order is the reverse, then `task` again.
            let mut path = vec![task];
            let mut n = task;
            while n != *start {
                n = prev[&n];
                path.push(n);
            }
            path.push(task);
            return Ok(Some((i, path)));
        }
    }
    Ok(None)
}

/// Display names (name, else id) of tasks.
pub async fn labels(c: &impl Db, ids: &[Uuid]) -> Result<HashMap<Uuid, String>, Error> {
    let st = c
        .prepare_cached("SELECT id, coalesce(name, id::text) AS label FROM task WHERE id = ANY($1)")
        .await?;
    let ids = ids.to_vec();
    Ok(c.query(&st, &[&ids])
        .await?
        .iter()
        .map(|r| (r.get("id"), r.get("label")))
        .collect())
}

/// A task is being deleted: its dependents stop waiting for it (their `after` loses the entry; the trigger
/// rewrites their edges). Returns the dependents changed.
pub async fn forget_parent(c: &impl Db, parent: Uuid) -> Result<Vec<Uuid>, Error> {
    let st = c
        .prepare_cached(
            "UPDATE task t
                SET after = (SELECT coalesce(jsonb_agg(x.e ORDER BY x.i), '[]'::jsonb)
                               FROM jsonb_array_elements(t.after) WITH ORDINALITY AS x(e, i)
                              WHERE x.e->>'task_id' <> $1::text),
                    updated_at = now()
              WHERE t.id IN (SELECT task_id FROM task_dependency WHERE parent_task_id = $1)
             RETURNING t.id",
        )
        .await?;
    Ok(c.query(&st, &[&parent])
        .await?
        .iter()
        .map(|r| r.get("id"))
        .collect())
}

/// Cancel: the task's edges are dropped (nothing arrives any more) and its waiting or held gates are closed as
/// `dropped`. Returns (edges dropped, gates dropped); the caller records both in the audit log.
pub async fn drop_for_cancel(c: &impl Db, task: Uuid) -> Result<(i64, i64), Error> {
    let st = c
        .prepare_cached(
            "WITH edges AS (
                 DELETE FROM task_dependency WHERE task_id = $1 RETURNING 1
             ), gates AS (
                 UPDATE dependency_gate SET state = 'dropped', decided_at = now()
                  WHERE task_id = $1 AND state IN ('waiting', 'unmet', 'held')
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM edges) AS edges, (SELECT count(*) FROM gates) AS gates",
        )
        .await?;
    let r = c.query_one(&st, &[&task]).await?;
    Ok((r.get("edges"), r.get("gates")))
}

/// The parents of a run: every parent's final outcome in the run's trace, as its task saw them.
pub async fn run_parents(c: &impl Db, task: Uuid, trace: Uuid) -> Result<Vec<RunParent>, Error> {
    let st = c
        .prepare_cached(
            "SELECT a.parent_task_id, t.name, t.title, a.outcome, a.met, a.parent_run_id, a.parent_due_work_id,
                    e.condition
               FROM dependency_arrival a
               LEFT JOIN task t ON t.id = a.parent_task_id
               LEFT JOIN task_dependency e ON e.task_id = a.task_id AND e.parent_task_id = a.parent_task_id
              WHERE a.task_id = $1 AND a.trace_id = $2
              ORDER BY e.position NULLS LAST, a.arrived_at",
        )
        .await?;
    Ok(c.query(&st, &[&task, &trace])
        .await?
        .iter()
        .map(|r| RunParent {
            task_id: r.get("parent_task_id"),
            task_name: r.get("name"),
            task_title: r.get("title"),
            outcome: r.get("outcome"),
            condition_met: r.get("met"),
            run_id: r.get("parent_run_id"),
            due_work_id: r.get("parent_due_work_id"),
            condition: r.get("condition"),
        })
        .collect())
}

/// The children of a run: the dependents its final outcome arrived at, each with its gate's state and its runs
/// in the trace so far.
pub async fn run_children(c: &impl Db, run_id: i64) -> Result<Vec<RunChild>, Error> {
    let st = c
        .prepare_cached(
            "SELECT a.task_id, t.name, t.title, a.met, g.state, e.condition,
                    ARRAY(SELECT r.id FROM task_run r
                           WHERE r.task_id = a.task_id AND r.trace_id = a.trace_id AND r.id > $1
                           ORDER BY r.id LIMIT 100) AS run_ids
               FROM dependency_arrival a
               LEFT JOIN task t ON t.id = a.task_id
               LEFT JOIN dependency_gate g ON g.task_id = a.task_id AND g.trace_id = a.trace_id
               LEFT JOIN task_dependency e ON e.task_id = a.task_id AND e.parent_task_id = a.parent_task_id
              WHERE a.parent_run_id = $1
              ORDER BY t.name NULLS LAST, a.task_id",
        )
        .await?;
    Ok(c.query(&st, &[&run_id])
        .await?
        .iter()
        .map(|r| RunChild {
            task_id: r.get("task_id"),
            task_name: r.get("name"),
            task_title: r.get("title"),
            condition_met: r.get("met"),
            gate: r.get("state"),
            condition: r.get("condition"),
            run_ids: r.get("run_ids"),
        })
        .collect())
}

/// The stored form of one `after` entry.
pub fn stored_entry(written: &str, id: Uuid, condition: &str, params: Option<&Value>) -> Value {
    let mut e = serde_json::json!({"task": written, "task_id": id, "condition": condition});
    if let Some(p) = params {
        e["params"] = p.clone();
    }
    e
}
