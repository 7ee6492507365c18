//! The bulk payment worker (SQS `BulkPaymentQueue`, `ReportBatchItemFailures`): one
//! message per batch item; the payments service claims the item once and initiates it
//! (`shared::services::payments::bulk`). A chunk message (acceptance sends one per 100
//! items) is expanded into the chunk's items and one message per item. Per item message:
//! - done, refused for good, or claimed elsewhere → acknowledged;
//! - 429 → a fresh message after `Retry-After`, this one acknowledged (its receive count
//!   is not used up);
//! - 5xx / timeout → reported failed, visible again after a growing backoff
//!   (ChangeMessageVisibility), so SQS retries it; on the queue's last receive the item is
//!   marked failed with the reason and the message goes to the DLQ;
//! - a store failure → reported failed (retried by SQS; the claim keeps it from doubling);
//! - a malformed message → logged and acknowledged (it can never succeed).

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use serde_json::{Value, json};
use shared::services::payments::Payments;
use shared::services::payments::bulk::{BulkOutcome, BulkWork, MAX_RECEIVES_ENV};
use tokio::task::JoinSet;

pub struct Worker {
    service: Payments,
    /// The bulk queue, for the retry backoff (`ChangeMessageVisibility`).
    queue: Option<(aws_sdk_sqs::Client, String)>,
    /// The queue's `maxReceiveCount`.
    max_receives: u32,
}

impl Worker {
    /// The payments service from the environment, plus `BULK_PAYMENT_QUEUE_URL` and
    /// `BULK_MAX_RECEIVES` (default 5, as template.yaml's redrive policy).
    ///
    /// # Errors
    /// A message naming what is missing or invalid.
    pub async fn from_env(sdk: &aws_config::SdkConfig) -> Result<Worker, String> {
        let service = shared::services::payments::payments_from_env(sdk).await?;
        let url =
            std::env::var(shared::services::payments::bulk::BULK_QUEUE_URL_ENV).unwrap_or_default();
        let max_receives = match std::env::var(MAX_RECEIVES_ENV) {
            Ok(v) => v
                .parse()
                .map_err(|_| format!("{MAX_RECEIVES_ENV} must be a whole number"))?,
            Err(_) => 5,
        };
        Ok(Worker {
            service,
            queue: (!url.is_empty()).then(|| (aws_sdk_sqs::Client::new(sdk), url)),
            max_receives,
        })
    }

    /// One SQS batch, processed in parallel; answers the messages to redeliver.
    /// Handles one batch; `deadline` is the invocation's (Lambda's `Context::deadline`,
    /// milliseconds since the epoch; 0 when unknown).
    pub async fn handle(self: &Arc<Self>, event: SqsEvent, deadline: u64) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let time_left = (deadline > 0).then(|| Duration::from_millis(deadline.saturating_sub(now)));
        let mut tasks = JoinSet::new();
        for record in event.records {
            let me = Arc::clone(self);
            tasks.spawn(async move {
                let ok = me.process(&record, time_left).await;
                (record.message_id.unwrap_or_default(), ok)
            });
        }
        let mut failures = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((_, true)) => {}
                Ok((id, false)) => failures.push(json!({ "itemIdentifier": id })),
                Err(e) => {
                    tracing::error!(error = %e, "bulk task failed");
                    return json!({ "batchItemFailures": null, "error": "task failed" });
                }
            }
        }
        json!({ "batchItemFailures": failures })
    }

    /// `true` to acknowledge the message.
    async fn process(&self, record: &SqsMessage, time_left: Option<Duration>) -> bool {
        let receive: u32 = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let Ok(work) = serde_json::from_str::<BulkWork>(record.body.as_deref().unwrap_or_default())
        else {
            tracing::error!(message_id = ?record.message_id, "malformed bulk message dropped");
            return true;
        };
        match self
            .service
            .process_work(&work, receive, self.max_receives, time_left)
            .await
        {
            Ok(BulkOutcome::Done | BulkOutcome::Refused) => true,
            Ok(BulkOutcome::Requeue(delay)) => {
                let BulkWork::Item(message) = &work else {
                    self.delay(record, delay).await;
                    return false;
                };
                match self.service.requeue_item(message, delay).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(payment_id = %message.payment_id,
                            error = %shared::services::log_text(&e), "could not requeue; retried by SQS");
                        self.delay(record, delay).await;
                        false
                    }
                }
            }
            Ok(BulkOutcome::Retry(backoff)) => {
                self.delay(record, backoff).await;
                false
            }
            Ok(BulkOutcome::Poison) => false,
            Err(e) => {
                let error = shared::services::log_text(&e);
                match &work {
                    BulkWork::Item(m) => tracing::warn!(payment_id = %m.payment_id, error = %error,
                        "bulk item failed; retried by SQS"),
                    BulkWork::Chunk(m) if receive >= self.max_receives => tracing::error!(
                        batch_id = %m.batch_id, chunk = m.chunk, error = %error,
                        "bulk chunk failed on its last receive; its message goes to the DLQ"),
                    BulkWork::Chunk(m) => tracing::warn!(batch_id = %m.batch_id, chunk = m.chunk,
                        error = %error, "bulk chunk failed; retried by SQS"),
                }
                false
            }
        }
    }

    /// Makes a failed message visible again after `backoff` instead of the queue's
    /// visibility timeout. Best effort.
    async fn delay(&self, record: &SqsMessage, backoff: Duration) {
        let (Some((sqs, url)), Some(handle)) = (&self.queue, &record.receipt_handle) else {
            return;
        };
        let secs = i32::try_from(backoff.as_secs().max(1)).unwrap_or(900);
        if let Err(e) = sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(handle)
            .visibility_timeout(secs)
            .send()
            .await
        {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                "could not shorten the message's visibility");
        }
    }
}
