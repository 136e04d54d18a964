//! POST /schedules/preview: a schedule's next fires, nothing stored.

use actix_web::{web, HttpResponse};
use orrery::model::Scope;
use orrery::schedule::ScheduleKind;
use serde_json::json;

use crate::auth::Caller;
use crate::body::{read_body, request_body, Choice, Field, Instant, Int, Nullable, ReadOnly, Text};
use crate::error::{ApiError, ApiResult, ErrorEnvelope};
use crate::input::JsonBody;
use crate::models::Fires;
use crate::state::AppState;
use crate::validation;

request_body!(
    /// Body of POST /schedules/preview.
    pub struct PreviewRequest required ["schedule_kind", "schedule_expr"] {
        /// cron, rrule, once or event.
        schedule_kind: Field<Choice<ScheduleKind>> = example json!("cron"),
        /// The expression, as a task's `schedule_expr`.
        schedule_expr: Field<Text<1, { validation::MAX_EXPR_CHARS }>> = example json!("0 9 * * MON-FRI"),
        /// IANA time zone (default: TZ).
        timezone: Field<Text<1, 64>> = example json!("Europe/Berlin"),
        /// How many fires (default 10).
        count: Field<Int<1, 1000>>,
        /// Fires strictly after this instant (default now). A bare RRULE is anchored at local midnight of this
        /// day.
        after: Nullable<Instant>,
    }
);

#[utoipa::path(post, path = "/schedules/preview", tag = "tasks", request_body = PreviewRequest,
    description = "The next `count` fires strictly after `after`, looking at most 12 years ahead: fewer fires than asked means the rule is exhausted or sparser than that.",
    responses((status = 200, body = Fires), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn preview(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::TasksRead)?;
    let body = read_body::<PreviewRequest>(&body.0, &[], &ReadOnly::NONE)?;
    let (Field::Set(Choice(kind)), Field::Set(Text(expr))) =
        (body.schedule_kind, body.schedule_expr)
    else {
        return Err(ApiError::field("schedule_kind", "is required"));
    };
    let after = match body.after {
        Nullable::Set(Instant(t)) => t,
        _ => state.clock.now(),
    };
    let timezone = body.timezone.set().map_or_else(
        || state.settings.default_timezone().name().to_string(),
        |Text(tz)| tz,
    );
    let schedule =
        validation::parse_schedule(kind, &expr, &timezone, after).map_err(ApiError::Validation)?;
    let count = body.count.set().map_or(10, |Int(n)| n as usize);
    let fires = validation::next_fires(&schedule, after, count);
    Ok(HttpResponse::Ok().json(validation::fires_json(&schedule, &fires)))
}
