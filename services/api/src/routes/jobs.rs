//! /jobs: the protocol of external workers (docs/external-workers.md).
//!
//! A task whose pipeline is one `external` step (`{"uses": "external", "with": {"queue": "emails"}}`) is not run
//! by `orrery-worker`: its due work waits in its queue until a program outside Orrery claims it here. The
//! claim, the lease renewal and the settlement are the queue's own statements (`orrery::queue`): a claim is
//! the built-in worker's claim restricted to the named queues (misfire, overlap, concurrency keys and expired
//! leases all apply), a completion or failure is one `complete_batch` row whose fencing token must still
//! match, so retries with backoff, dead work and `task_run` history are the same as for any run.
//!
//! Decisions:
//! - `POST /jobs/claim` long-polls: it claims at once when work is ready, else re-tries every
//!   [`POLL_INTERVAL`] (one claim statement per waiting request per interval; no connection is held in
//!   between) until `wait_seconds` pass. Work this API process makes ready (run now, replay) wakes waiting
//!   claims at once.
//! - A non-admin agent claims, renews and settles only jobs of tasks it created (as everywhere in the API);
//!   a job of another agent is a 404.
//! - 409 means "this result is not wanted": the fencing token no longer matches (the lease expired and another
//!   claim took the job), the job is not leased (it was already failed into a retry), or it is dead. 404 means
//!   no such job: never existed, not external, not yours, or already finished (its row is gone).
//! - `lease_seconds` of the claim applies to every job it returns; without it a job's lease is its step's
//!   `timeout_seconds`, else `WORKER_LEASE_SECONDS`.

use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use orrery::model::Scope;
use orrery::queue::{self, ClaimedWork, Completion, ExternalJob, Settlement};
use orrery::streams::{RUNS, RUNS_MAXLEN};
use serde_json::{json, Map, Value};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use uuid::Uuid;

use crate::auth::Caller;
use crate::body::{
    read_body, request_body, AnyJson, Bool, Field, FieldValue, Int, List, Name, NameRule, Nullable,
    ReadOnly, Text,
};
use crate::db;
use crate::error::{ApiError, ApiResult, ErrorEnvelope, FieldError};
use crate::input::{path_i64, JsonBody};
use crate::models::{Job, JobLease, JobSettled, JobsClaimed};
use crate::state::AppState;

/// How often a waiting claim looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Most queues one claim may name.
pub const MAX_QUEUES: usize = 20;
/// Longest lease a claim or heartbeat may ask for (one hour).
pub const MAX_LEASE_SECONDS: i64 = 3600;
/// Longest error message kept from a failure.
pub const MAX_ERROR_CHARS: usize = 10_000;

request_body!(
    /// Body of POST /jobs/claim.
    pub struct JobClaim required ["queues"] {
        /// The external queues to take jobs from (each named once is enough).
        queues: Field<List<Name<ExternalQueueRule>, MAX_QUEUES, 1>> = example json!(["emails"]),
        /// Most jobs returned (default 1).
        max_jobs: Field<Int<1, 100>>,
        /// How long to wait for a job when none is ready (default 0).
        wait_seconds: Field<Int<0, 30>>,
        /// The lease of every job returned (default: the step's `timeout_seconds`, else `WORKER_LEASE_SECONDS`).
        lease_seconds: Field<Int<1, MAX_LEASE_SECONDS>>,
        /// Names this client in `locked_by` (default `default`).
        client_id: Field<ClientId>,
    }
);

request_body!(
    /// Body of POST /jobs/{id}/heartbeat.
    pub struct JobHeartbeat required ["fencing_token"] {
        fencing_token: Field<Int<1, { i64::MAX }>>,
        /// The renewed lease (default as the claim's).
        lease_seconds: Field<Int<1, MAX_LEASE_SECONDS>>,
    }
);

request_body!(
    /// Body of POST /jobs/{id}/complete.
    pub struct JobComplete required ["fencing_token"] {
        fencing_token: Field<Int<1, { i64::MAX }>>,
        /// The run's output, recorded under `steps.<step id>`.
        output: Nullable<AnyJson>,
    }
);

request_body!(
    /// Body of POST /jobs/{id}/fail.
    pub struct JobFail required ["fencing_token", "error"] {
        fencing_token: Field<Int<1, { i64::MAX }>>,
        error: Field<Text<1, MAX_ERROR_CHARS>>,
        /// false: dead at once, whatever retries are left (default true).
        retryable: Nullable<Bool>,
        output: Nullable<AnyJson>,
    }
);

/// External queue names: 1 to 100 of `A-Za-z0-9._-` (`orrery::pipeline::is_queue_name`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalQueueRule;

impl NameRule for ExternalQueueRule {
    const MAX: usize = 100;
    const RULE: &'static str =
        "must be a queue name: 1 to 100 characters of A-Z, a-z, 0-9, ., _ and -";
}

/// A client id: 1 to 100 of `A-Za-z0-9._:-`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientId(pub String);

impl FieldValue for ClientId {
    fn read(v: &Value, path: &str, errors: &mut Vec<FieldError>) -> Option<Self> {
        match v.as_str() {
            Some(c) if is_client_id(c) => Some(ClientId(c.to_string())),
            _ => {
                errors.push(FieldError::new(
                    path,
                    "must be 1 to 100 characters of A-Z, a-z, 0-9, ., _, : and -",
                ));
                None
            }
        }
    }

    fn schema() -> Schema {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z0-9._:-]{1,100}$"))
                .build(),
        )
    }
}

fn is_client_id(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A fencing token of a body whose reader requires it.
fn token_of(t: Field<Int<1, { i64::MAX }>>) -> i64 {
    t.set().map_or(0, |Int(n)| n)
}

/// An output as recorded: null and absent are no output.
fn output_of(o: Nullable<AnyJson>) -> Option<Value> {
    match o {
        Nullable::Set(AnyJson(v)) if !v.is_null() => Some(v),
        _ => None,
    }
}

fn lease_or_default(state: &AppState, asked: Option<i64>) -> f64 {
    asked
        .map(|s| s as f64)
        .unwrap_or(state.settings.worker_lease_seconds as f64)
}

/// The external step of a claimed row's payload: (queue, step timeout).
fn external_step(payload: &Value) -> (String, Option<u64>) {
    let step = payload.pointer("/pipeline/0");
    let queue = step
        .and_then(|s| s.pointer("/with/queue"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let timeout = step
        .and_then(|s| s.get("timeout_seconds"))
        .and_then(Value::as_u64);
    (queue, timeout)
}

fn job_from(work: &ClaimedWork) -> Job {
    let mut params: Map<String, Value> = work
        .task_payload
        .get("params")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Object(extra)) = &work.params {
        for (k, v) in extra {
            params.insert(k.clone(), v.clone());
        }
    }
    let (queue, _) = external_step(&work.task_payload);
    Job {
        job_id: work.id,
        fencing_token: work.fencing_token,
        task_id: work.task_id,
        task_title: work.task_title.clone(),
        queue,
        attempt: work.attempt,
        max_attempts: work.max_retries as i32 + 1,
        trigger: if work.attempt > 1 {
            "retry".to_string()
        } else {
            work.trigger.to_string()
        },
        scheduled_for: work.run_at,
        params: Value::Object(params),
        event: work.event.clone(),
        idempotency_key: work.id.to_string(),
        lease_expires_at: work.lease_expires_at,
    }
}

/// A lifecycle entry on `orrery:runs`, as the built-in worker writes them (best-effort, after commit).
fn run_event(
    state: &AppState,
    job_id: i64,
    task_id: Uuid,
    event: &'static str,
    attempt: i32,
    by: &str,
) {
    let redis = state.redis.clone();
    let by = by.to_string();
    tokio::spawn(async move {
        redis
            .hint(
                RUNS,
                RUNS_MAXLEN,
                &[
                    ("run_id", job_id.to_string()),
                    ("due_work_id", job_id.to_string()),
                    ("task_id", task_id.to_string()),
                    ("event", event.to_string()),
                    ("attempt", attempt.to_string()),
                    ("worker_id", by),
                ],
            )
            .await;
    });
}

#[utoipa::path(post, path = "/jobs/claim", tag = "jobs", request_body = JobClaim,
    description = "Claims up to `max_jobs` ready jobs of the named external queues (tasks whose pipeline is one `external` step), waiting up to `wait_seconds` for one. Each job is leased to the caller until `lease_expires_at`; renew it with a heartbeat, then complete or fail it with its `fencing_token`. A lease that expires without a completion is recorded as a `lease_expired` run and the job is claimed again (the next attempt). Scope `jobs:work`; a non-admin agent gets only jobs of its own tasks.",
    responses((status = 200, body = JobsClaimed), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn claim(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::JobsWork)?;
    let body = read_body::<JobClaim>(&body.0, &[], &ReadOnly::NONE)?;
    let mut queues: Vec<String> = Vec::new();
    for q in body.queues.set().map(|List(q)| q).unwrap_or_default() {
        let q = q.into_string();
        if !queues.contains(&q) {
            queues.push(q);
        }
    }
    let max_jobs = body.max_jobs.set().map_or(1, |Int(n)| n);
    let wait_seconds = body.wait_seconds.set().map_or(0, |Int(n)| n);
    let asked_lease = body.lease_seconds.set().map(|Int(n)| n);
    let client_id = body
        .client_id
        .set()
        .map_or_else(|| "default".to_string(), |ClientId(c)| c);

    let owner = caller.owner_filter();
    let lease = lease_or_default(&state, asked_lease);
    let agent_name = {
        let client = state.db().await?;
        db::agents::get_agent(&client, caller.agent_id, false)
            .await?
            .map(|a| a.name)
            .unwrap_or_else(|| caller.agent_id.to_string())
    };
    let locked_by = format!("external:{agent_name}:{client_id}");
    let wait_seconds = wait_seconds.min(state.settings.api_jobs_max_wait_seconds as i64);
    let deadline = Instant::now() + Duration::from_secs(wait_seconds as u64);
    let mut stop = state.stop.clone();
    loop {
        // Registered before the claim, so that work made ready while it runs still wakes this request.
        let ready = state.jobs_ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();

        let mut jobs: Vec<Job> = Vec::new();
        {
            let client = state.db().await?;
            let outcome = queue::claim_external_batch(
                &client, &locked_by, lease, max_jobs, &queues, owner, None,
            )
            .await?;
            for work in &outcome.claimed {
                let mut job = job_from(work);
                // Without an explicit lease, a step's timeout_seconds is the lease of its jobs.
                if let (None, (_, Some(step_lease))) =
                    (asked_lease, external_step(&work.task_payload))
                {
                    if let Some(until) = queue::renew_external(
                        &client,
                        work.id,
                        work.fencing_token,
                        step_lease as f64,
                        None,
                        None,
                    )
                    .await?
                    {
                        job.lease_expires_at = until;
                    }
                }
                jobs.push(job);
            }
        }
        if !jobs.is_empty() {
            orrery::metrics::EXTERNAL_JOBS
                .with_label_values(&["claimed"])
                .inc_by(jobs.len() as u64);
            for job in &jobs {
                run_event(
                    &state,
                    job.job_id,
                    job.task_id,
                    "started",
                    job.attempt,
                    &locked_by,
                );
            }
            return Ok(HttpResponse::Ok().json(JobsClaimed { jobs }));
        }
        let now = Instant::now();
        if now >= deadline || *stop.borrow() {
            return Ok(HttpResponse::Ok().json(JobsClaimed { jobs }));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL.min(deadline - now)) => {}
            _ = ready => {}
            _ = stop.changed() => {}
        }
    }
}

/// Why a job is not (or no longer) the caller's to settle: 404 when it cannot be seen, else 409.
async fn refusal(
    client: &impl db::Db,
    id: i64,
    token: i64,
    owner: Option<Uuid>,
) -> ApiResult<ApiError> {
    Ok(match queue::external_job(client, id, owner, None).await? {
        None => ApiError::not_found("Job", id),
        Some(job) => conflict(&job, token),
    })
}

fn conflict(job: &ExternalJob, token: i64) -> ApiError {
    orrery::metrics::EXTERNAL_JOBS
        .with_label_values(&["refused"])
        .inc();
    let (reason, why) = if job.fencing_token != token {
        (
            "fencing_token_mismatch",
            format!(
                "its lease was taken over (it is now held with fencing token {})",
                job.fencing_token
            ),
        )
    } else if job.state == "dead" {
        ("dead", "it is dead".to_string())
    } else if job.locked_by.is_none() {
        (
            "not_leased",
            "it is not leased (it was already settled into a retry, or released)".to_string(),
        )
    } else {
        ("lease_expired", "its lease expired".to_string())
    };
    ApiError::Conflict {
        message: format!(
            "Job {} is not held with fencing token {token}: {why}; discard this result",
            job.id
        ),
        details: Some(json!({"job_id": job.id, "reason": reason, "attempt": job.attempt})),
    }
}

#[utoipa::path(post, path = "/jobs/{id}/heartbeat", tag = "jobs", request_body = JobHeartbeat,
    params(("id" = i64, Path, minimum = 1)),
    description = "Extends the job's lease to now + `lease_seconds` while it is still held with this fencing token and the lease has not expired (an expired lease may already belong to another claim: 409, stop working on the job).",
    responses((status = 200, body = JobLease), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn heartbeat(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::JobsWork)?;
    let id = path_i64(&path, "id")?;
    let body = read_body::<JobHeartbeat>(&body.0, &[], &ReadOnly::NONE)?;
    let token = token_of(body.fencing_token);
    let lease = body.lease_seconds.set().map(|Int(n)| n);
    let owner = caller.owner_filter();
    let client = state.db().await?;
    let lease = lease_or_default(&state, lease);
    match queue::renew_external(&client, id, token, lease, owner, None).await? {
        Some(until) => Ok(HttpResponse::Ok().json(JobLease {
            job_id: id,
            fencing_token: token,
            lease_expires_at: until,
        })),
        None => Err(refusal(&client, id, token, owner).await?),
    }
}

/// What a completion or failure asks for.
struct Outcome {
    error: Option<String>,
    retryable: bool,
    output: Option<Value>,
}

async fn settle(
    state: &AppState,
    caller: &Caller,
    id: i64,
    token: i64,
    outcome: Outcome,
) -> ApiResult<HttpResponse> {
    let owner = caller.owner_filter();
    let mut client = state.db().await?;
    let tx = client.transaction().await?;
    // Locked: no claim can take the row between this check and the settlement.
    let job = queue::external_job(&tx, id, owner, None)
        .await?
        .ok_or_else(|| ApiError::not_found("Job", id))?;
    if job.fencing_token != token || job.state != "pending" || job.locked_by.is_none() {
        return Err(conflict(&job, token));
    }
    let settlement = match &outcome.error {
        None => Settlement::Succeeded,
        Some(_) => queue::failure_settlement(
            outcome.retryable,
            job.attempt,
            job.max_retries,
            job.backoff_strategy,
            state.settings.worker_backoff_base_delay,
            state.settings.worker_backoff_max_delay,
            rand::random::<f64>(),
        ),
    };
    let step = job
        .step_id
        .clone()
        .unwrap_or_else(|| "external".to_string());
    let output = outcome
        .output
        .map(|o| json!({"steps": {step: o}, "skipped": []}));
    let worker_id = job.locked_by.clone().unwrap_or_default();
    let completion = Completion {
        id,
        fencing_token: token,
        settlement,
        started_at: job.leased_at.unwrap_or(job.now).min(job.now),
        finished_at: job.now,
        error: outcome.error.clone(),
        error_kind: outcome.error.as_ref().map(|_| "external".to_string()),
        output,
    };
    let settled = queue::complete_batch(&tx, &worker_id, &[completion], None).await?;
    if settled.accepted.is_empty() {
        // Not expected under the row lock; refuse rather than pretend.
        return Err(conflict(&job, token));
    }
    tx.commit().await?;
    if settled.dependents_fired > 0 {
        // The settlement released dependent runs: wake the workers that take them.
        super::wake_workers(state, job.task_id);
    }
    let (name, event, retry_at) = match settlement {
        Settlement::Succeeded => ("succeeded", "succeeded", None),
        Settlement::Retry { delay_seconds } => (
            "retry",
            "failed",
            Some(job.now + chrono::Duration::milliseconds((delay_seconds * 1000.0).round() as i64)),
        ),
        Settlement::Dead => ("dead", "dead", None),
    };
    orrery::metrics::EXTERNAL_JOBS
        .with_label_values(&[match settlement {
            Settlement::Succeeded => "succeeded",
            Settlement::Retry { .. } => "retried",
            Settlement::Dead => "dead",
        }])
        .inc();
    run_event(state, id, job.task_id, event, job.attempt, &worker_id);
    if retry_at.is_some() {
        state.jobs_ready.notify_waiters();
    }
    Ok(HttpResponse::Ok().json(JobSettled {
        job_id: id,
        outcome: name.to_string(),
        retry_at,
    }))
}

#[utoipa::path(post, path = "/jobs/{id}/complete", tag = "jobs", request_body = JobComplete,
    params(("id" = i64, Path, minimum = 1)),
    description = "Records a successful run (its `output` under `steps.<step id>`) and removes the job, if it is still held with this fencing token. 409: the lease was taken over (or the job already failed into a retry, or is dead) and the result is discarded. 404: no such job, or it already finished.",
    responses((status = 200, body = JobSettled), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn complete(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::JobsWork)?;
    let id = path_i64(&path, "id")?;
    let body = read_body::<JobComplete>(&body.0, &[], &ReadOnly::NONE)?;
    let token = token_of(body.fencing_token);
    let output = output_of(body.output);
    settle(
        &state,
        &caller,
        id,
        token,
        Outcome {
            error: None,
            retryable: false,
            output,
        },
    )
    .await
}

#[utoipa::path(post, path = "/jobs/{id}/fail", tag = "jobs", request_body = JobFail,
    params(("id" = i64, Path, minimum = 1)),
    description = "Records a failed run (error kind `external`). A retryable failure with retries left is retried after the task's backoff (`outcome: retry`, `retry_at`); otherwise the job is dead (`GET /queue/dead`, replayable). Same 409/404 rules as complete.",
    responses((status = 200, body = JobSettled), (status = 400, body = ErrorEnvelope), (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope),
        (status = 413, body = ErrorEnvelope), (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope),
        (status = 503, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn fail(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody,
) -> ApiResult<HttpResponse> {
    caller.require(Scope::JobsWork)?;
    let id = path_i64(&path, "id")?;
    let body = read_body::<JobFail>(&body.0, &[], &ReadOnly::NONE)?;
    let token = token_of(body.fencing_token);
    let error = body.error.set().map(|Text(e)| e);
    let retryable = match body.retryable {
        Nullable::Set(Bool(b)) => b,
        _ => true,
    };
    let output = output_of(body.output);
    settle(
        &state,
        &caller,
        id,
        token,
        Outcome {
            error,
            retryable,
            output,
        },
    )
    .await
}
