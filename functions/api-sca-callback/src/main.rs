use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::http::{Request, Response};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Built once per cold start, outside the handler.
    let sdk = shared::aws::load_config().await;
    let service = api_sca_callback::Services {
        connections: shared::services::connections::connections_from_env(&sdk).await?,
        payments: shared::services::payments::payments_from_env(&sdk).await?,
    };
    let service = &service;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Request>| async move {
        Ok::<Response, Error>(api_sca_callback::handle(service, &event.payload).await)
    }))
    .await
}
