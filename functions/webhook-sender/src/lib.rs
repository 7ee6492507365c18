//! The webhook sender (SQS `WebhookQueue`, `ReportBatchItemFailures`): POSTs each queued
//! event, signed, to `WEBHOOK_URL`. Semantics (at least once, deduplicated by event id;
//! the signature; what is retried) are documented in `shared::webhook`.
//!
//! Per message: load the event; delivered already → acknowledge; webhooks off (empty
//! `WEBHOOK_URL`) → acknowledge; else POST. 2xx → record `webhookDeliveredAt`, acknowledge.
//! 4xx other than 408/429 → record the failure, acknowledge. Anything else → report the
//! item failed and set its visibility to the backoff (2, 4, 8 … s), so SQS redelivers it
//! then; after the queue's `maxReceiveCount` it moves to the DLQ.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chrono::Utc;
use serde_json::{Value, json};
use shared::store::{DynamoNotificationStore, NotificationStore, WebhookMark};
use shared::webhook::{Delivery, WebhookMessage, classify, payload, retry_backoff, sign};
use tokio::task::JoinSet;

/// Per-attempt HTTP timeout: ten messages in parallel finish well within the 30 s
/// function timeout.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where webhooks go; `None` when they are off.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub secret: Vec<u8>,
}

pub struct Sender {
    store: Arc<dyn NotificationStore>,
    http: reqwest::Client,
    target: Option<Target>,
    /// The webhook queue, for the retry backoff (`ChangeMessageVisibility`).
    queue: Option<(aws_sdk_sqs::Client, String)>,
}

/// What happens to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delete it (done, permanently failed, or nothing to do).
    Ack,
    /// Redeliver it after this backoff.
    Retry(Duration),
}

impl Sender {
    pub fn new(
        store: Arc<dyn NotificationStore>,
        target: Option<Target>,
        queue: Option<(aws_sdk_sqs::Client, String)>,
    ) -> Sender {
        Sender {
            store,
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .build()
                .expect("HTTP client"),
            target,
            queue,
        }
    }

    /// `NOTIFICATIONS_TABLE`, `WEBHOOK_URL` (empty: off), `WEBHOOK_SECRET` (≥ 32 bytes when
    /// the URL is set), `WEBHOOK_QUEUE_URL` (for the backoff; optional).
    ///
    /// # Errors
    /// A message naming what is missing or invalid.
    pub fn from_env(sdk: &aws_config::SdkConfig) -> Result<Sender, String> {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let table = var("NOTIFICATIONS_TABLE");
        if table.is_empty() {
            return Err("NOTIFICATIONS_TABLE is not set".into());
        }
        let url = var("WEBHOOK_URL");
        let target = if url.trim().is_empty() {
            None
        } else {
            let secret = var("WEBHOOK_SECRET");
            if secret.len() < 32 {
                return Err("WEBHOOK_SECRET must be at least 32 bytes".into());
            }
            Some(Target {
                url: url.trim().to_owned(),
                secret: secret.into_bytes(),
            })
        };
        let queue_url = var(shared::webhook::QUEUE_URL_ENV);
        Ok(Sender::new(
            Arc::new(DynamoNotificationStore::new(
                aws_sdk_dynamodb::Client::new(sdk),
                table,
            )),
            target,
            (!queue_url.is_empty()).then(|| (aws_sdk_sqs::Client::new(sdk), queue_url)),
        ))
    }

    /// One SQS batch: the messages are processed in parallel; the answer lists the ones
    /// to redeliver (`batchItemFailures`).
    pub async fn handle(self: &Arc<Self>, event: SqsEvent) -> Value {
        let mut tasks = JoinSet::new();
        for record in event.records {
            let me = Arc::clone(self);
            tasks.spawn(async move {
                let verdict = me.process(&record).await;
                if let Verdict::Retry(backoff) = verdict {
                    me.delay(&record, backoff).await;
                }
                (record.message_id.unwrap_or_default(), verdict)
            });
        }
        let mut failures = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok((id, Verdict::Retry(_))) => failures.push(json!({ "itemIdentifier": id })),
                Ok((_, Verdict::Ack)) => {}
                // A panicked task: fail the whole batch (it is redelivered; delivered
                // events are skipped then).
                Err(e) => {
                    tracing::error!(error = %e, "webhook task failed");
                    return json!({ "batchItemFailures": null, "error": "task failed" });
                }
            }
        }
        json!({ "batchItemFailures": failures })
    }

    /// The verdict on one message.
    pub async fn process(&self, record: &SqsMessage) -> Verdict {
        let receives: u32 = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let retry = Verdict::Retry(retry_backoff(receives));
        let Ok(message) =
            serde_json::from_str::<WebhookMessage>(record.body.as_deref().unwrap_or_default())
        else {
            tracing::error!(message_id = ?record.message_id, "malformed webhook message dropped");
            return Verdict::Ack;
        };
        let Some(target) = &self.target else {
            tracing::info!(event_id = %message.event_id, "webhooks are off; message acknowledged");
            return Verdict::Ack;
        };
        let event = match self
            .store
            .get_event(&message.user_id, &message.event_id)
            .await
        {
            Ok(Some(event)) => event,
            Ok(None) => {
                tracing::warn!(event_id = %message.event_id, "event not found; message dropped");
                return Verdict::Ack;
            }
            Err(e) => {
                tracing::warn!(event_id = %message.event_id, error = %e, "could not load the event");
                return retry;
            }
        };
        if event.webhook.webhook_delivered_at.is_some() {
            tracing::info!(event_id = %message.event_id, "delivered already; not sent again");
            return Verdict::Ack;
        }
        let body = payload(&event.notification).to_string();
        let timestamp = Utc::now().timestamp();
        let result = self
            .http
            .post(&target.url)
            .header("Content-Type", "application/json")
            .header("Webhook-Id", &message.event_id)
            .header("Webhook-Timestamp", timestamp.to_string())
            .header(
                "Webhook-Signature",
                sign(&target.secret, &message.event_id, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| {
                if e.is_timeout() {
                    "timed out".to_owned()
                } else {
                    format!("request failed: {e}")
                }
            });
        let (mark, verdict) = match classify(result) {
            Delivery::Delivered => {
                tracing::info!(event_id = %message.event_id, "webhook delivered");
                (WebhookMark::Delivered, Verdict::Ack)
            }
            Delivery::Permanent(why) => {
                tracing::error!(event_id = %message.event_id, reason = %why,
                    "webhook refused for good; not retried");
                (WebhookMark::Failed(why), Verdict::Ack)
            }
            Delivery::Retry(why) => {
                tracing::warn!(event_id = %message.event_id, reason = %why, receives,
                    "webhook attempt failed; retried later");
                return retry;
            }
        };
        if let Err(e) = self
            .store
            .mark_webhook(&message.user_id, &message.event_id, mark, Utc::now())
            .await
        {
            // Acknowledged anyway: the endpoint has answered for good. (A redelivery after
            // a 2xx whose mark failed would send the event twice.)
            tracing::error!(event_id = %message.event_id, error = %e,
                "could not record the webhook outcome");
        }
        verdict
    }

    /// Makes a failed message visible again after `backoff` instead of the queue's
    /// visibility timeout. Best effort: without it SQS redelivers after the timeout.
    async fn delay(&self, record: &SqsMessage, backoff: Duration) {
        let (Some((sqs, url)), Some(handle)) = (&self.queue, &record.receipt_handle) else {
            return;
        };
        if let Err(e) = sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(handle)
            .visibility_timeout(backoff.as_secs() as i32)
            .send()
            .await
        {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                "could not shorten the message's visibility");
        }
    }
}
