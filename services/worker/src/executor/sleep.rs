//! `sleep`: waits `with.seconds` (0 to 3600), bounded by the step's timeout.

use std::time::Duration;

use orrery::pipeline::{Step, MAX_SLEEP_SECONDS};
use serde_json::{json, Value};

use super::{describe, BoxFuture, RunContext, RunFailure, Tool};

pub struct SleepTool;

impl Tool for SleepTool {
    fn run<'a>(
        &'a self,
        _step: &'a Step,
        with: Value,
        _ctx: &'a RunContext,
    ) -> BoxFuture<'a, Result<Value, RunFailure>> {
        Box::pin(async move { sleep(&with).await })
    }
}

async fn sleep(with: &Value) -> Result<Value, RunFailure> {
    let requested = with.get("seconds");
    let secs = requested
        .and_then(Value::as_f64)
        .filter(|s| (0.0..=MAX_SLEEP_SECONDS).contains(s))
        .ok_or_else(|| {
            RunFailure::permanent(
                "template",
                format!(
                    "with.seconds rendered to {}; expected a number from 0 to {MAX_SLEEP_SECONDS}",
                    describe(requested)
                ),
            )
        })?;
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    Ok(json!({"slept_seconds": requested.cloned().unwrap_or(Value::Null)}))
}
