//! The local runtime: runs every function of template.yaml exactly as it is wired there,
//! as the same `bootstrap` binaries that are deployed, behind emulations of the AWS
//! pieces that call them:
//!
//! - [`lambda`]: the Lambda Runtime API, one process pool per function;
//! - [`http_api`]: API Gateway HTTP API (payload format 2.0) with the JWT authorizer;
//! - [`sqs`]: SQS event source mappings (batches, `ReportBatchItemFailures`, redrive);
//! - [`schedule`]: EventBridge schedules (rate/cron), fire-now and a time scale;
//! - [`web`]: the demo web app's static files and a local sign-in token route.

pub mod app;
pub mod http_api;
pub mod jwt;
pub mod lambda;
pub mod schedule;
pub mod sqs;
pub mod web;

use async_trait::async_trait;
use serde_json::Value;

/// Why an invocation did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("no function named {0}")]
    UnknownFunction(String),
    /// The handler returned an error (`/runtime/invocation/{id}/error`).
    #[error("{function} failed: {error_type}: {message}")]
    Handler {
        function: String,
        error_type: String,
        message: String,
    },
    /// The handler did not answer within the function's timeout; its process was killed.
    #[error("{function} timed out after {seconds} s")]
    Timeout { function: String, seconds: u64 },
    /// The process exited (or failed to initialise) during the invocation.
    #[error("{function} crashed: {reason}")]
    Crashed { function: String, reason: String },
}

/// Something that can invoke a function by its template logical id. Implemented by
/// [`lambda::LambdaHost`]; tests may use a closure-backed double.
#[async_trait]
pub trait Invoke: Send + Sync {
    async fn invoke(&self, function: &str, payload: Value) -> Result<Value, InvokeError>;
}
