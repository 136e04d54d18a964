//! Listens for `orrery:wakeup` hints with XREAD BLOCK on a dedicated connection and wakes the claimer.
//! While Redis is down the claimer falls back to `WORKER_POLL_INTERVAL`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use orrery::streams::WAKEUP;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::watch;

use crate::worker::Shared;

const BLOCK_MS: usize = 2000;

pub async fn listen(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let key = shared.redis.key(WAKEUP);
    loop {
        if *stop.borrow() {
            return;
        }
        let session = async {
            let mut conn = shared.redis.dedicated().await?;
            // Start after the newest entry: hints are about the present, not history.
            let last: StreamRangeReply = conn.xrevrange_count(&key, "+", "-", 1).await?;
            let mut last_id = last
                .ids
                .first()
                .map(|e| e.id.clone())
                .unwrap_or_else(|| "0-0".into());
            shared.redis_up.store(true, Ordering::SeqCst);
            // A hint may have been missed while we were disconnected.
            shared.wake.notify_one();
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
                        shared.wake.notify_one();
                    }
                }
            }
            #[allow(unreachable_code)]
            redis::RedisResult::Ok(())
        };
        tokio::select! {
            r = session => {
                if let Err(e) = r {
                    if shared.redis_up.swap(false, Ordering::SeqCst) {
                        tracing::warn!(error = %e, "redis unavailable: polling every WORKER_POLL_INTERVAL");
                        // An idle claimer may be in a wait sized for Redis being up (hints would end it): wake it
                        // so that it waits by the polling interval from now on.
                        shared.wake.notify_one();
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
