//! SQS fixture: records every message; a body containing "fail" is reported as a failed
//! batch item, a body "crash" fails the whole invocation.
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};

async fn handle(event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, Error> {
    let mut response = SqsBatchResponse::default();
    for record in &event.payload.records {
        let body = record.body.clone().unwrap_or_default();
        runtime_fixture::record(
            "sqs",
            &serde_json::json!({
                "messageId": record.message_id,
                "body": body,
                "receiveCount": record.attributes.get("ApproximateReceiveCount"),
                "batchSize": event.payload.records.len(),
            }),
        );
        if body == "crash" {
            return Err("asked to crash".into());
        }
        if body.contains("fail") {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = record.message_id.clone().unwrap_or_default();
            response.batch_item_failures.push(failure);
        }
    }
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}
