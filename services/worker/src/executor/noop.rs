//! `noop`: returns its rendered `with` (to compute values for later steps, or record them in the output).

use orrery::pipeline::Step;
use serde_json::Value;

use super::{BoxFuture, RunContext, RunFailure, Tool};

pub struct NoopTool;

impl Tool for NoopTool {
    fn run<'a>(
        &'a self,
        _step: &'a Step,
        with: Value,
        _ctx: &'a RunContext,
    ) -> BoxFuture<'a, Result<Value, RunFailure>> {
        Box::pin(std::future::ready(Ok(with)))
    }
}
