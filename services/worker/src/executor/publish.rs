//! `events.publish`: publishes an event (through an [`EventSink`]: stored in the outbox, then put on the `events`
//! stream), so tasks trigger tasks.

use std::sync::Arc;

use orrery::pipeline::{is_concrete_topic, Step};
use serde_json::{json, Value};

use super::{describe, BoxFuture, RunContext, RunFailure, Tool};

/// An event the sink accepted: its id, and its `events` stream entry if it is on the stream already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub event_id: String,
    pub stream_id: Option<String>,
}

/// Where `events.publish` sends events (in production the event outbox, then the `events` stream).
pub trait EventSink: Send + Sync {
    /// Accepts one event; an error means it was not stored and the step may be retried.
    fn publish(&self, topic: String, payload: Value) -> BoxFuture<'_, Result<Published, String>>;
}

pub struct PublishTool {
    events: Arc<dyn EventSink>,
}

impl PublishTool {
    pub fn new(events: Arc<dyn EventSink>) -> Self {
        Self { events }
    }

    async fn call(&self, with: &Value) -> Result<Value, RunFailure> {
        let topic = match with.get("topic") {
            Some(Value::String(topic)) if is_concrete_topic(topic) => topic.clone(),
            other => {
                return Err(RunFailure::permanent(
                    "template",
                    format!(
                        "with.topic rendered to {}, which is not a topic (dot-separated segments \
                         of A-Z, a-z, 0-9, _ and -, no wildcards)",
                        describe(other)
                    ),
                ))
            }
        };
        let payload = with.get("payload").cloned().unwrap_or(Value::Null);
        match self.events.publish(topic.clone(), payload).await {
            Ok(p) => Ok(json!({"event_id": p.event_id, "stream_id": p.stream_id, "topic": topic})),
            Err(e) => Err(RunFailure::retryable(
                "publish",
                format!("publishing to `{topic}` failed: {e}"),
            )),
        }
    }
}

impl Tool for PublishTool {
    fn run<'a>(
        &'a self,
        _step: &'a Step,
        with: Value,
        _ctx: &'a RunContext,
    ) -> BoxFuture<'a, Result<Value, RunFailure>> {
        Box::pin(async move { self.call(&with).await })
    }
}
