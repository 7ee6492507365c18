use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Built once per cold start, outside the handler.
    let sdk = shared::aws::load_config().await;
    let sender = std::sync::Arc::new(webhook_sender::Sender::from_env(&sdk)?);
    let sender = &sender;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<serde_json::Value, Error>(sender.handle(event.payload).await)
    }))
    .await
}
