//! What the worker reports about itself (heartbeat row, shutdown log, the claimer's pace): counters of
//! finished attempts, runs in flight, and the lifecycle state.

use orrery::model::WorkerState;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct Stats {
    inner: Arc<Inner>,
}

struct Inner {
    processed: AtomicI64,
    failed: AtomicI64,
    running: AtomicI32,
    stopping: AtomicBool,
    state: Mutex<WorkerState>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                processed: AtomicI64::new(0),
                failed: AtomicI64::new(0),
                running: AtomicI32::new(0),
                stopping: AtomicBool::new(false),
                state: Mutex::new(WorkerState::Starting),
            }),
        }
    }
}

impl Stats {
    pub fn processed(&self) -> i64 {
        self.inner.processed.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> i64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// One accepted completion (a failure if it retries or is dead).
    pub fn finished(&self, failed: bool) {
        self.inner.processed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.inner.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn running(&self) -> i32 {
        self.inner.running.load(Ordering::SeqCst)
    }

    pub fn run_started(&self) {
        self.inner.running.fetch_add(1, Ordering::SeqCst);
    }

    pub fn run_ended(&self) {
        self.inner.running.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// No more runs start: runners release what they take from the buffer.
    pub fn stop_starting(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    pub fn set_state(&self, state: WorkerState) {
        *self.inner.state.lock().expect("state lock") = state;
    }

    pub fn state(&self) -> WorkerState {
        *self.inner.state.lock().expect("state lock")
    }
}
