use api_public::ApiPublic;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::bank::registry::BankRegistry;
use shared::http::{Request, Response};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Built once per cold start, outside the handler.
    let api = ApiPublic::new(BankRegistry::from_env()?);
    let api = &api;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Request>| async move {
        Ok::<Response, Error>(api.handle(&event.payload))
    }))
    .await
}
