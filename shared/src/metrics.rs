//! Prometheus metrics, process-wide. Label values are always bounded (route templates, status classes,
//! states, outcome names), never ids or raw paths.

use std::sync::LazyLock;

use prometheus::{
    register_gauge_vec, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge_vec, Encoder, GaugeVec, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orrery_http_requests_total",
        "HTTP requests by route template, method and status class",
        &["route", "method", "status"]
    )
    .expect("metric registers")
});

pub static HTTP_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    prometheus::register_histogram_vec!(
        "orrery_http_request_duration_seconds",
        "HTTP request latency by route template and status class",
        &["route", "method", "status"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers")
});

pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "orrery_queue_depth",
        "due_work rows by state (ready, scheduled, leased, dead), refreshed on scrape",
        &["state"]
    )
    .expect("metric registers")
});

/// Per named queue (operator-defined, a bounded set): ready, scheduled, running rows, paused (0/1) and runs
/// finished in the last minute, refreshed on scrape.
pub static NAMED_QUEUE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "orrery_named_queue",
        "Per queue: ready, scheduled and running rows, paused (0/1), runs finished in the last minute",
        &["queue", "measure"]
    )
    .expect("metric registers")
});

/// Per named queue: age of its oldest ready row (0 when none), refreshed on scrape.
pub static NAMED_QUEUE_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "orrery_named_queue_lag_seconds",
        "Per queue: age of the oldest ready, unleased row (0 when none), refreshed on scrape",
        &["queue"]
    )
    .expect("metric registers")
});

pub static WORKER_CLAIMS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "orrery_worker_claims_total",
        "claim statements the worker ran (each looks at every queue it serves, whether or not it finds work)"
    )
    .expect("metric registers")
});

pub static FIRES_MATERIALIZED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orrery_scheduler_fires_materialized_total",
        "due_work rows inserted by the scheduler, by trigger",
        &["trigger"]
    )
    .expect("metric registers")
});

pub static EVENTS_RELAYED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "orrery_scheduler_events_relayed_total",
        "events the relay published from the outbox (the API could not, or Redis lost them)"
    )
    .expect("metric registers")
});

pub static MISFIRES_SKIPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "orrery_scheduler_misfires_skipped_total",
        "fires older than their grace window that the catch-up policy did not run"
    )
    .expect("metric registers")
});

pub static SCHEDULER_LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "orrery_scheduler_lag_seconds",
        "materialization lead (fire instant minus insert time, negative clamps to 0 in 'late') and event lag",
        &["kind"],
        LAG_BUCKETS.to_vec()
    )
    .expect("metric registers")
});

pub static RECONCILE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "orrery_scheduler_reconcile_duration_seconds",
        "duration of a full reconcile pass",
        &["outcome"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers")
});

pub static WORK: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orrery_worker_work_total",
        "work items by outcome: claimed, succeeded, failed, retried, dead, discarded, released, dependents_fired",
        &["outcome"]
    )
    .expect("metric registers")
});

pub static EXTERNAL_JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orrery_external_jobs_total",
        "external jobs (POST /jobs/*) by outcome: claimed, succeeded, retried, dead, refused",
        &["outcome"]
    )
    .expect("metric registers")
});

pub static RUN_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "orrery_worker_run_duration_seconds",
        "pipeline run duration by outcome",
        &["outcome"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers")
});

pub static QUEUE_LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "orrery_worker_queue_lag_seconds",
        "now minus ready_at when a run starts, by trigger",
        &["trigger"],
        LAG_BUCKETS.to_vec()
    )
    .expect("metric registers")
});

/// Maps a status code to its class label (`2xx` …), keeping the label set bounded.
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Prometheus text exposition of every registered metric.
pub fn render() -> String {
    let families = prometheus::gather();
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&families, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
