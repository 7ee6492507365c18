//! The payment status poller (SQS `PaymentStatusQueue`, `ReportBatchItemFailures`). Each
//! message names a payment and the generation of its polling chain (or, for the first
//! polls of a bulk chunk's items, a group of those, handled ten at a time; or a batch's
//! watch, which notifies the user once every item is final); the service asks the
//! bank, records any change, notifies on a final status and queues the next poll with the
//! schedule's delay (`shared::services::payments`). Stale and duplicate messages are
//! dropped by the generation check. A store or queue failure reports the message failed,
//! so SQS redelivers it; a malformed message is logged and dropped (it can never succeed).

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use serde_json::{Value, json};
use shared::services::payments::{Payments, PollOutcome, PollWork};
use tokio::task::JoinSet;

/// One SQS batch, processed in parallel; answers the messages to redeliver.
pub async fn handle(service: &Arc<Payments>, event: SqsEvent) -> Value {
    let mut tasks = JoinSet::new();
    for record in event.records {
        let service = Arc::clone(service);
        tasks.spawn(async move {
            let id = record.message_id.clone().unwrap_or_default();
            let body = record.body.as_deref().unwrap_or_default();
            let Ok(work) = serde_json::from_str::<PollWork>(body) else {
                tracing::error!(message_id = %id, "malformed poll message dropped");
                return (id, true);
            };
            let message = match work {
                PollWork::One(message) => message,
                PollWork::Watch(watch) => {
                    return match service.watch_batch(&watch).await {
                        Ok(outcome) => {
                            tracing::info!(batch_id = %watch.batch_id, outcome = ?outcome,
                                "batch watch handled");
                            // `Later`: not acknowledged, so it comes again.
                            (id, outcome != PollOutcome::Later)
                        }
                        Err(e) => {
                            tracing::warn!(batch_id = %watch.batch_id,
                                error = %shared::services::log_text(&e),
                                "batch watch failed; redelivered later");
                            (id, false)
                        }
                    };
                }
                PollWork::Group(group) => {
                    return match service.poll_group(&group).await {
                        Ok(outcome) => {
                            tracing::info!(
                                polls = outcome.handled,
                                come_back = outcome.come_back,
                                "poll group handled"
                            );
                            (id, !outcome.come_back)
                        }
                        Err(e) => {
                            tracing::warn!(polls = group.polls.len(),
                                error = %shared::services::log_text(&e),
                                "poll group failed; redelivered later");
                            (id, false)
                        }
                    };
                }
            };
            match service.poll(&message).await {
                Ok(outcome) => {
                    tracing::info!(payment_id = %message.payment_id,
                        generation = message.generation, outcome = ?outcome, "poll handled");
                    (id, outcome != PollOutcome::Later)
                }
                Err(e) => {
                    tracing::warn!(payment_id = %message.payment_id,
                        error = %shared::services::log_text(&e), "poll failed; redelivered later");
                    (id, false)
                }
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((_, true)) => {}
            Ok((id, false)) => failures.push(json!({ "itemIdentifier": id })),
            Err(e) => {
                // A panicked task: fail the whole batch; the generation check makes the
                // redelivery harmless.
                tracing::error!(error = %e, "poll task failed");
                return json!({ "batchItemFailures": null, "error": "task failed" });
            }
        }
    }
    json!({ "batchItemFailures": failures })
}
