use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Built once per cold start, outside the handler.
    let sdk = shared::aws::load_config().await;
    let service = std::sync::Arc::new(shared::services::payments::payments_from_env(&sdk).await?);
    let service = &service;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        shared::chaos::begin_invocation();
        Ok::<serde_json::Value, Error>(payment_status_poller::handle(service, event.payload).await)
    }))
    .await
}
