use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::http::{Request, Response};
use shared::store::DynamoNotificationStore;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Built once per cold start, outside the handler.
    let sdk = shared::aws::load_config().await;
    let table =
        std::env::var("NOTIFICATIONS_TABLE").map_err(|_| "NOTIFICATIONS_TABLE is not set")?;
    let store = DynamoNotificationStore::new(aws_sdk_dynamodb::Client::new(&sdk), table);
    let store = &store;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Request>| async move {
        Ok::<Response, Error>(api_notifications::handle(store, &event.payload).await)
    }))
    .await
}
