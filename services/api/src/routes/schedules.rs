//! POST /schedules/preview: a schedule's next fires, nothing stored.

use actix_web::{web, HttpResponse};
use chrono::Utc;
use orrery::model::Scope;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorEnvelope, FieldError};
use crate::input::{parse_instant, Fields, JsonBody, Opt};
use crate::models::Fires;
use crate::state::AppState;
use crate::validation;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PreviewRequest {
    /// cron, rrule, once or event.
    #[schema(example = "cron", pattern = "^(cron|rrule|once|event)$")]
    schedule_kind: String,
    #[schema(example = "0 9 * * MON-FRI")]
    schedule_expr: String,
    /// IANA time zone (default: TZ).
    #[schema(example = "Europe/Berlin")]
    timezone: Option<String>,
    /// 1..1000 (default 10).
    #[schema(minimum = 1, maximum = 1000)]
    count: Option<i32>,
    /// RFC 3339; fires strictly after it (default now). A bare RRULE is anchored at local midnight of this day.
    after: Option<String>,
}

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
    let mut f = Fields::object(
        &body.0,
        &[
            "schedule_kind",
            "schedule_expr",
            "timezone",
            "count",
            "after",
        ],
    )?;
    let kind = f.string("schedule_kind", 1, 20, false);
    f.require("schedule_kind", &kind);
    let expr = f.string("schedule_expr", 1, 100_000, false);
    f.require("schedule_expr", &expr);
    let timezone = f.string("timezone", 1, 64, false);
    let count = f.int("count", 1, 1000);
    let after = match f.string("after", 1, 64, true) {
        Opt::Set(s) => match parse_instant(&s) {
            Some(t) => Some(t),
            None => {
                f.errors.push(FieldError::new(
                    "after",
                    "must be an RFC 3339 instant between the years 1 and 9999",
                ));
                None
            }
        },
        _ => None,
    };
    f.finish()?;
    let after = after.unwrap_or_else(Utc::now);
    let timezone = timezone
        .set()
        .unwrap_or_else(|| state.settings.default_timezone().name().to_string());
    let schedule = validation::parse_schedule(
        &kind.set().unwrap_or_default(),
        &expr.set().unwrap_or_default(),
        &timezone,
        after,
    )
    .map_err(ApiError::Validation)?;
    let fires = validation::next_fires(&schedule, after, count.set().unwrap_or(10) as usize);
    Ok(HttpResponse::Ok().json(validation::fires_json(&schedule, &fires)))
}
