//! Bunyan JSON logs on stdout (or a sink), level from `LOG_LEVEL`, quiet in tests unless `TEST_LOG` is set.

use tracing::subscriber::set_global_default;
use tracing::Subscriber;
use tracing_bunyan_formatter::{BunyanFormattingLayer, JsonStorageLayer};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{layer::SubscriberExt, EnvFilter, Registry};

pub fn get_subscriber<Sink>(name: &str, level: &str, sink: Sink) -> impl Subscriber + Send + Sync
where
    Sink: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    Registry::default()
        .with(filter)
        .with(JsonStorageLayer)
        .with(BunyanFormattingLayer::new(name.into(), sink))
}

/// Installs the subscriber once per process (a second call is a no-op, which tests rely on).
pub fn init_subscriber(subscriber: impl Subscriber + Send + Sync) {
    let _ = tracing_log::LogTracer::init();
    let _ = set_global_default(subscriber);
}

/// The binaries' entry point: bunyan JSON to stdout.
pub fn init(name: &str, level: &str) {
    init_subscriber(get_subscriber(name, level, std::io::stdout));
}

/// For in-process tests: silent unless `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var("TEST_LOG").is_ok() {
        init_subscriber(get_subscriber("test", "debug", std::io::stdout));
    } else {
        init_subscriber(get_subscriber("test", "off", std::io::sink));
    }
}
