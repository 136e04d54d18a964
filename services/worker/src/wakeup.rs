//! Listens for `orrery:wakeup` hints with XREAD BLOCK on a dedicated connection and wakes the claimer.
//! While Redis is down the claimer falls back to `WORKER_POLL_INTERVAL`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use orrery::streams::{Redis, WAKEUP};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::{watch, Notify};

const BLOCK_MS: usize = 2000;

/// What the listener tells the claimer: work may be ready (`wake`), and whether hints arrive at all.
#[derive(Clone, Default)]
pub struct Hints {
    inner: Arc<HintsInner>,
}

#[derive(Default)]
struct HintsInner {
    wake: Notify,
    redis_up: AtomicBool,
}

impl Hints {
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Resolves at the next hint (or at once if one arrived since the last wait).
    pub async fn woken(&self) {
        self.inner.wake.notified().await
    }

    pub fn redis_up(&self) -> bool {
        self.inner.redis_up.load(Ordering::SeqCst)
    }

    fn set_redis_up(&self, up: bool) -> bool {
        self.inner.redis_up.swap(up, Ordering::SeqCst)
    }
}

pub async fn listen(hints: Hints, redis: Redis, mut stop: watch::Receiver<bool>) {
    let key = redis.key(WAKEUP);
    loop {
        if *stop.borrow() {
            return;
        }
        let session = async {
            let mut conn = redis.dedicated().await?;
            // Start after the newest entry: hints are about the present, not history.
            let last: StreamRangeReply = conn.xrevrange_count(&key, "+", "-", 1).await?;
            let mut last_id = last
                .ids
                .first()
                .map(|e| e.id.clone())
                .unwrap_or_else(|| "0-0".into());
            hints.set_redis_up(true);
            // A hint may have been missed while we were disconnected.
            hints.wake();
            let opts = StreamReadOptions::default().block(BLOCK_MS).count(100);
            loop {
                let reply: Option<StreamReadReply> =
                    conn.xread_options(&[&key], &[&last_id], &opts).await?;
                if let Some(reply) = reply {
                    let mut any = false;
                    for stream in reply.keys {
                        for entry in stream.ids {
                            last_id = entry.id;
                            any = true;
                        }
                    }
                    if any {
                        hints.wake();
                    }
                }
            }
            #[allow(unreachable_code)]
            redis::RedisResult::Ok(())
        };
        tokio::select! {
            r = session => {
                if let Err(e) = r {
                    if hints.set_redis_up(false) {
                        tracing::warn!(error = %e, "redis unavailable: polling every WORKER_POLL_INTERVAL");
                        // An idle claimer may be in a wait sized for Redis being up (hints would end it): wake it
                        // so that it waits by the polling interval from now on.
                        hints.wake();
                    }
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}
