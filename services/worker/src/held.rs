//! The rows this worker holds a lease on, from claim until their completion is written (or they are
//! released): the claimer adds them, runners mark them started, the completer removes them, the lease
//! renewer keeps them alive. Removing rows signals `capacity` (the claimer may have room again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use orrery::queue::ClaimedWork;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub fencing_token: i64,
    pub started: bool,
}

#[derive(Clone, Default)]
pub struct HeldRows {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    rows: Mutex<HashMap<i64, Held>>,
    capacity: Notify,
}

impl HeldRows {
    fn rows(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Held>> {
        self.inner.rows.lock().expect("held lock")
    }

    /// Rows just claimed (not started yet).
    pub fn claimed(&self, work: &[ClaimedWork]) {
        let mut rows = self.rows();
        for w in work {
            rows.insert(
                w.id,
                Held {
                    fencing_token: w.fencing_token,
                    started: false,
                },
            );
        }
    }

    pub fn started(&self, id: i64, fencing_token: i64) {
        self.rows().insert(
            id,
            Held {
                fencing_token,
                started: true,
            },
        );
    }

    /// Rows settled or released: no longer held; wakes the claimer.
    pub fn remove(&self, ids: impl IntoIterator<Item = i64>) {
        {
            let mut rows = self.rows();
            for id in ids {
                rows.remove(&id);
            }
        }
        self.inner.capacity.notify_one();
    }

    pub fn contains(&self, id: i64) -> bool {
        self.rows().contains_key(&id)
    }

    /// (id, fencing token) of every held row.
    pub fn snapshot(&self) -> Vec<(i64, i64)> {
        self.rows()
            .iter()
            .map(|(id, h)| (*id, h.fencing_token))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.rows().len()
    }

    /// Rows held, and of those the ones claimed but not started yet.
    pub fn held_and_buffered(&self) -> (usize, usize) {
        let rows = self.rows();
        (rows.len(), rows.values().filter(|h| !h.started).count())
    }

    /// Resolves after the next `remove` (or at once if one happened since the last wait).
    pub async fn capacity(&self) {
        self.inner.capacity.notified().await
    }
}
