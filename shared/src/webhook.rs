//! Webhook notifications: every stored inbox notification is also sent, when configured,
//! to the operator's URL as a signed JSON event.
//!
//! # Flow
//! 1. [`Notifier::notify`] stores the notification (once per event id) and puts a
//!    [`WebhookMessage`] on the webhook queue (`WEBHOOK_QUEUE_URL`). A failed send is an
//!    error for the caller, whose invocation fails and is retried. The retry's `put` finds
//!    the event stored already, so the notifier looks at the event's `webhookQueuedAt`
//!    marker: unset means the earlier send may not have happened, and the message is sent
//!    (again). The marker is set with a conditional write after a successful send.
//! 2. The `webhook-sender` function takes the messages from the queue, loads the event and
//!    POSTs it. A 2xx sets `webhookDeliveredAt` (conditional write); a message for an event
//!    delivered already is acknowledged without sending. A 4xx other than 408/429 is
//!    permanent: recorded (`webhookFailedAt`) and acknowledged. Anything else (5xx, 408,
//!    429, timeout, network) is retried by SQS with exponential backoff ([`retry_backoff`],
//!    set through the message's visibility); after the queue's `maxReceiveCount` the
//!    message lands in the dead-letter queue (alarmed, kept 14 days).
//!
//! # Guarantees
//! At least once, deduplicated by event id: an event is queued at least once (a crash
//! between the send and the marker queues it twice), and sent to the endpoint once per
//! event id, except when the sender crashes (or the marker write fails) between the
//! endpoint's 2xx and the `webhookDeliveredAt` write: then the redelivered message sends it
//! again. Receivers must therefore deduplicate on `Webhook-Id` (the event id), which is the
//! same on every attempt. A consent state change is written in one transaction with its
//! notification (`crate::store::ConsentOutbox`) and its webhook queued afterwards with
//! [`Notifier::enqueue`], best effort: an event whose queueing failed stays in the
//! pending-webhook index and is queued by the health job's sweep
//! (`services::health`, docs/data-model.md).
//!
//! # Signature (for receivers)
//! Headers: `Webhook-Id` (event id), `Webhook-Timestamp` (unix seconds of this attempt) and
//! `Webhook-Signature: v1=<hex>` where `<hex>` is the lowercase hex HMAC-SHA256, keyed with
//! the shared secret (`WEBHOOK_SECRET`), of `"{Webhook-Id}.{Webhook-Timestamp}.{raw body}"`.
//! A receiver recomputes it over the raw body, compares in constant time, and rejects
//! timestamps more than [`REPLAY_TOLERANCE`] (5 minutes) away from its clock (replays), and
//! ids it has processed already (duplicates). [`verify`] does exactly that check.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::domain::{NotificationId, UserId};
use crate::queue::{Queue, QueueError};
use crate::services::Clock;
use crate::store::{Notification, NotificationStore, StoreError, WebhookMark};

/// Environment variable: URL of the webhook queue (unset: webhooks are not queued).
pub const QUEUE_URL_ENV: &str = "WEBHOOK_QUEUE_URL";
/// How far a receiver accepts `Webhook-Timestamp` from its own clock.
pub const REPLAY_TOLERANCE: Duration = Duration::from_secs(300);
/// Longest backoff between two attempts (SQS allows up to 12 hours of visibility).
pub const MAX_BACKOFF: Duration = Duration::from_secs(900);

/// The webhook queue's message: which event to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookMessage {
    pub event_id: String,
    pub user_id: UserId,
    pub notification_id: NotificationId,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("webhook queue: {0}")]
    Queue(#[from] QueueError),
}

impl From<NotifyError> for StoreError {
    /// Services report a failed enqueue like a failed store write: an internal error that
    /// fails the invocation (which is then retried).
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Store(e) => e,
            NotifyError::Queue(e) => StoreError::Backend(format!("webhook queue: {e}")),
        }
    }
}

/// Stores notifications and queues their webhooks (module docs: the guarantees).
#[derive(Clone)]
pub struct Notifier {
    store: Arc<dyn NotificationStore>,
    queue: Option<Arc<dyn Queue>>,
    clock: Arc<dyn Clock>,
}

impl Notifier {
    /// `queue: None` stores notifications only (no webhook queue configured).
    pub fn new(
        store: Arc<dyn NotificationStore>,
        queue: Option<Arc<dyn Queue>>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            queue,
            clock,
        }
    }

    /// Whether webhooks are configured (a queue to put their messages on).
    pub fn has_webhooks(&self) -> bool {
        self.queue.is_some()
    }

    /// Stores `notification` once per event id and makes sure its webhook is queued;
    /// `true` when the notification was new.
    ///
    /// # Errors
    /// The store or the queue failed; calling again with the same event id is safe.
    pub async fn notify(&self, notification: &Notification) -> Result<bool, NotifyError> {
        let stored = self.store.put(notification).await?;
        self.enqueue(notification, stored).await?;
        Ok(stored)
    }

    /// Queues the webhook of an event stored already (by [`Self::notify`], or in the same
    /// transaction as a consent's state change: `crate::store::ConsentOutbox`). `new`: the
    /// caller just stored `notification` itself, so it is queued without a read; otherwise
    /// the stored event is read (consistently) and queued only while its `webhookQueuedAt`
    /// is unset, with the stored notification's id. Nothing to do without a queue. A
    /// successful send sets `webhookQueuedAt` (which also takes the event out of the
    /// pending-webhook index). `true` when a message was sent.
    ///
    /// # Errors
    /// The store or the queue failed; calling again is safe (at least once, see the module
    /// docs).
    pub async fn enqueue(
        &self,
        notification: &Notification,
        new: bool,
    ) -> Result<bool, NotifyError> {
        let Some(queue) = &self.queue else {
            return Ok(false);
        };
        let notification_id = if new {
            notification.notification_id.clone()
        } else {
            match self
                .store
                .get_event(&notification.user_id, &notification.event_id)
                .await?
            {
                Some(event) if event.webhook.webhook_queued_at.is_none() => {
                    event.notification.notification_id
                }
                // Queued before (or gone: nothing left to send).
                _ => return Ok(false),
            }
        };
        let message = WebhookMessage {
            event_id: notification.event_id.clone(),
            user_id: notification.user_id.clone(),
            notification_id,
        };
        let body = serde_json::to_string(&message)
            .map_err(|e| QueueError::Backend(format!("serialising the message: {e}")))?;
        queue.send(&body, Duration::ZERO).await?;
        if let Err(e) = self
            .store
            .mark_webhook(
                &notification.user_id,
                &notification.event_id,
                WebhookMark::Queued,
                self.clock.now(),
            )
            .await
        {
            // Harmless: a retry (or the sweep) queues it again and the sender sends it once.
            tracing::warn!(event_id = %notification.event_id, error = %e,
                "could not mark a webhook as queued");
        }
        Ok(true)
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(secret: &[u8], id: &str, timestamp: i64, body: &str) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    mac
}

/// The `Webhook-Signature` header value: `v1=<hex HMAC-SHA256(secret, "{id}.{ts}.{body}")>`.
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    format!(
        "v1={}",
        hex(&mac(secret, id, timestamp, body).finalize().into_bytes())
    )
}

/// The receiver's check: the signature matches (constant time) and the timestamp is
/// within [`REPLAY_TOLERANCE`] of `now`.
pub fn verify(
    secret: &[u8],
    id: &str,
    timestamp: &str,
    body: &str,
    signature: &str,
    now: DateTime<Utc>,
) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now.timestamp() - ts).unsigned_abs() > REPLAY_TOLERANCE.as_secs() {
        return false;
    }
    let Some(given) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Some(bytes) = unhex(given) else {
        return false;
    };
    mac(secret, id, ts, body).verify_slice(&bytes).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The JSON event sent for a notification.
pub fn payload(n: &Notification) -> Value {
    json!({
        "id": n.event_id,
        "type": n.kind,
        "createdAt": n.created_at,
        "data": {
            "userId": n.user_id,
            "notificationId": n.notification_id,
            "title": n.title,
            "message": n.message,
            "details": n.data,
        },
    })
}

/// What one delivery attempt means for the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx: done.
    Delivered,
    /// The endpoint refused it for good (4xx other than 408/429): record and drop.
    Permanent(String),
    /// Try again later (5xx, 408, 429, timeout, network error, anything unexpected).
    Retry(String),
}

/// Maps an attempt's result (the HTTP status, or why there was none) to a [`Delivery`].
pub fn classify(result: Result<u16, String>) -> Delivery {
    match result {
        Ok(status) if (200..300).contains(&status) => Delivery::Delivered,
        Ok(status @ (408 | 429)) => Delivery::Retry(format!("HTTP {status}")),
        Ok(status) if (400..500).contains(&status) => Delivery::Permanent(format!("HTTP {status}")),
        Ok(status) => Delivery::Retry(format!("HTTP {status}")),
        Err(why) => Delivery::Retry(why),
    }
}

/// Wait before the next attempt after `receive_count` attempts (SQS's
/// `ApproximateReceiveCount`, 1 on the first): 2, 4, 8 … seconds, at most [`MAX_BACKOFF`].
pub fn retry_backoff(receive_count: u32) -> Duration {
    Duration::from_secs(1u64 << receive_count.clamp(1, 20)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::{FixedClock, MemNotifications, RecordingQueue, start};
    use std::sync::Mutex;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn signature_known_vector() {
        // python3: hmac.new(SECRET, b'evt_1.1700000000.{"id":"evt_1"}', sha256).hexdigest()
        assert_eq!(
            sign(SECRET, "evt_1", 1_700_000_000, r#"{"id":"evt_1"}"#),
            "v1=c270d23b567170c333596bf6d137a71d9914c150dde7adc8c51ca8dda443b0cd"
        );
    }

    #[test]
    fn verify_rejects_tampering_and_replays() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let body = r#"{"id":"evt_1"}"#;
        let sig = sign(SECRET, "evt_1", now.timestamp(), body);
        let ts = now.timestamp().to_string();
        assert!(verify(SECRET, "evt_1", &ts, body, &sig, now));
        assert!(!verify(SECRET, "evt_2", &ts, body, &sig, now));
        assert!(!verify(
            SECRET,
            "evt_1",
            &ts,
            r#"{"id":"evt_2"}"#,
            &sig,
            now
        ));
        assert!(!verify(b"another secret", "evt_1", &ts, body, &sig, now));
        assert!(!verify(SECRET, "evt_1", &ts, body, "v1=zz", now));
        assert!(!verify(SECRET, "evt_1", &ts, body, &sig[3..], now));
        let later = now + chrono::Duration::seconds(301);
        assert!(!verify(SECRET, "evt_1", &ts, body, &sig, later));
        let within = now + chrono::Duration::seconds(299);
        assert!(verify(SECRET, "evt_1", &ts, body, &sig, within));
    }

    #[test]
    fn outcome_mapping() {
        assert_eq!(classify(Ok(200)), Delivery::Delivered);
        assert_eq!(classify(Ok(204)), Delivery::Delivered);
        for permanent in [400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(classify(Ok(permanent)), Delivery::Permanent(_)),
                "{permanent}"
            );
        }
        for retry in [408, 429, 500, 502, 503, 504, 301, 100] {
            assert!(matches!(classify(Ok(retry)), Delivery::Retry(_)), "{retry}");
        }
        assert!(matches!(
            classify(Err("timed out".into())),
            Delivery::Retry(_)
        ));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(retry_backoff(0), Duration::from_secs(2));
        assert_eq!(retry_backoff(1), Duration::from_secs(2));
        assert_eq!(retry_backoff(2), Duration::from_secs(4));
        assert_eq!(retry_backoff(3), Duration::from_secs(8));
        assert_eq!(retry_backoff(12), MAX_BACKOFF);
        assert_eq!(retry_backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn payload_shape() {
        let n = note("consent:1:valid");
        let p = payload(&n);
        assert_eq!(p["id"], "consent:1:valid");
        assert_eq!(p["type"], "consent.valid");
        assert_eq!(p["data"]["userId"], "auth0|alice");
        assert_eq!(p["data"]["details"]["connectionId"], "c1");
        assert!(p["createdAt"].is_string());
    }

    fn note(event: &str) -> Notification {
        Notification {
            user_id: UserId::parse("auth0|alice").unwrap(),
            notification_id: NotificationId::new(),
            event_id: event.to_owned(),
            kind: "consent.valid".into(),
            title: "t".into(),
            message: "m".into(),
            data: json!({"connectionId": "c1"}),
            created_at: start(),
        }
    }

    #[tokio::test]
    async fn queues_once_and_again_after_a_failed_send() {
        let store = Arc::new(MemNotifications::default());
        let queue = Arc::new(RecordingQueue::default());
        let notifier = Notifier::new(
            store.clone(),
            Some(queue.clone()),
            Arc::new(FixedClock(Mutex::new(start()))),
        );
        let n = note("e1");
        assert!(notifier.notify(&n).await.unwrap());
        assert!(!notifier.notify(&n).await.unwrap());
        assert_eq!(queue.sent.lock().unwrap().len(), 1, "queued once");
        let msg: WebhookMessage = serde_json::from_str(&queue.sent.lock().unwrap()[0]).unwrap();
        assert_eq!(msg.event_id, "e1");
        assert_eq!(msg.notification_id, n.notification_id);

        // The send fails: an error, the notification is stored, no marker.
        *queue.failing.lock().unwrap() = 1;
        let second = note("e2");
        assert!(notifier.notify(&second).await.is_err());
        assert_eq!(store.all().len(), 2);
        // The retry (a new notification id, same event) queues the stored one.
        let retry = note("e2");
        assert!(!notifier.notify(&retry).await.unwrap());
        assert!(!notifier.notify(&retry).await.unwrap());
        let sent = queue.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2);
        let msg: WebhookMessage = serde_json::from_str(&sent[1]).unwrap();
        assert_eq!(msg.notification_id, second.notification_id);
    }
}
