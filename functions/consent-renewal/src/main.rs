use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use shared::services::renewal::RenewalReport;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    // Built once per cold start, outside the handler.
    let sdk = shared::aws::load_config().await;
    let service = shared::services::renewal::renewals_from_env(&sdk).await?;
    let service = &service;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<EventBridgeEvent>| async move {
            shared::chaos::begin_invocation();
            Ok::<RenewalReport, Error>(consent_renewal::handle(service, &event.payload).await)
        },
    ))
    .await
}
