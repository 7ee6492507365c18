//! Schedule fixture: records the EventBridge event it was invoked with.
use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    runtime_fixture::record("schedule", &event.payload);
    Ok(serde_json::json!({ "ok": true }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}
