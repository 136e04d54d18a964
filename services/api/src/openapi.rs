//! GET /openapi.json: the OpenAPI 3.1 document generated from the handlers and response types.

use actix_web::HttpResponse;
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    agents, audit, events, health, jobs, queue, queues, runs, schedules, secrets, tasks,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Orrery API", description = "Self-hosted job scheduler. Every non-2xx body is an ErrorEnvelope."),
    modifiers(&BearerAuth),
    paths(
        agents::create, agents::list, agents::me, agents::get, agents::patch, agents::delete,
        agents::list_tokens, agents::create_token, agents::revoke_token,
        tasks::create, tasks::list, tasks::get, tasks::patch, tasks::put, tasks::delete,
        tasks::pause, tasks::resume, tasks::cancel, tasks::run_now, tasks::snooze, tasks::backfill, tasks::schedule,
        schedules::preview,
        runs::list, runs::get, runs::latest, runs::task_stats, runs::global_stats,
        queue::summary, queue::dead, queue::replay, queue::delete_dead, queue::workers,
        jobs::claim, jobs::heartbeat, jobs::complete, jobs::fail,
        queues::list, queues::get, queues::put, queues::patch,
        events::publish, events::recent, events::topics,
        audit::list,
        secrets::put, secrets::list, secrets::get, secrets::delete, secrets::reencrypt,
        health::live, health::ready, health::health, health::metrics,
        crate::ui::api::me, crate::ui::api::overview, crate::ui::api::tasks, crate::ui::api::facets, crate::ui::api::task_runs, crate::ui::api::attempts, crate::ui::api::task_timeline, crate::ui::api::dead, crate::ui::stream::stream,
    ),
    components(schemas(crate::error::FieldError, crate::models::Dependency, crate::models::RunParent, crate::models::RunChild)),
    tags((name = "tasks"), (name = "agents"), (name = "runs"), (name = "queue"), (name = "jobs"), (name = "events"), (name = "audit"), (name = "secrets"), (name = "health"))
)]
pub struct ApiDoc;

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|_| "{}".to_string())
});

pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}
