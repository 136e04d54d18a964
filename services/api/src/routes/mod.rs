//! HTTP handlers: parse, call the database functions, map errors. One module per resource.

pub mod agents;
pub mod audit;
pub mod events;
pub mod health;
pub mod jobs;
pub mod queue;
pub mod queues;
pub mod runs;
pub mod schedules;
pub mod secrets;
pub mod tasks;

use orrery::streams::{TASK_CHANGES, TASK_CHANGES_MAXLEN, WAKEUP, WAKEUP_MAXLEN};
use uuid::Uuid;

use crate::state::AppState;

/// Tells the scheduler a task changed (after commit; best-effort, never delays the response).
pub fn announce_task_change(state: &AppState, task_id: Uuid, action: &'static str) {
    let redis = state.redis.clone();
    tokio::spawn(async move {
        redis
            .hint(
                TASK_CHANGES,
                TASK_CHANGES_MAXLEN,
                &[
                    ("task_id", task_id.to_string()),
                    ("action", action.to_string()),
                ],
            )
            .await;
    });
}

/// Wakes idle workers: there is work due now (after commit; best-effort). External workers waiting in
/// `POST /jobs/claim` on this process are woken too.
pub fn wake_workers(state: &AppState, task_id: Uuid) {
    state.jobs_ready.notify_waiters();
    let redis = state.redis.clone();
    tokio::spawn(async move {
        redis
            .hint(WAKEUP, WAKEUP_MAXLEN, &[("task_id", task_id.to_string())])
            .await;
    });
}
