use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Built once per cold start, outside the handler.
    let sdk = shared::aws::load_config().await;
    let worker = std::sync::Arc::new(bulk_payment_worker::Worker::from_env(&sdk).await?);
    let worker = &worker;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        shared::chaos::begin_invocation();
        Ok::<serde_json::Value, Error>(worker.handle(event.payload, event.context.deadline).await)
    }))
    .await
}
