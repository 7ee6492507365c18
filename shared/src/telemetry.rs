//! Structured JSON logs (one object per line, as CloudWatch's JSON log format expects).
//! Levels come from `RUST_LOG` (or `AWS_LAMBDA_LOG_LEVEL`), default `info`.
//!
//! Nothing sensitive reaches a log through our types: `Iban` prints masked, ids of the
//! bank are opaque handles, and tokens never enter a `tracing` field.

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber once; later calls are no-ops (tests, local runtime).
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|l| l.to_lowercase()))
        .map(EnvFilter::new)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_target(true)
        .flatten_event(true)
        .try_init();
}
