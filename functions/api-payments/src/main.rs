use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::http::{Request, Response};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Built once per cold start, outside the handler.
    let sdk = shared::aws::load_config().await;
    let service = shared::services::payments::payments_from_env(&sdk).await?;
    let service = &service;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Request>| async move {
        shared::chaos::begin_invocation();
        Ok::<Response, Error>(api_payments::handle(service, &event.payload).await)
    }))
    .await
}
