//! The queue port and its SQS adapter. Timers live here: a delayed message (up to 15
//! minutes, SQS's limit) is how a Lambda asks to be woken up later.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

/// SQS's longest message timer.
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// SQS's largest batch.
pub const MAX_BATCH: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("message delay {0:?} is longer than the 15 minutes SQS allows")]
    DelayTooLong(Duration),
    #[error("batch entry ids must be unique and non-empty: {0:?}")]
    BadEntryId(String),
    /// Entries that still failed after every retry, with the reason of the last failure.
    #[error("{} message(s) could not be sent: {}", .0.len(), .0.iter().map(|f| format!("{}: {}", f.id, f.reason)).collect::<Vec<_>>().join("; "))]
    Unsent(Vec<FailedEntry>),
    #[error("queue backend error: {0}")]
    Backend(String),
}

/// One message of a batch. `id` must be unique within the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub id: String,
    pub body: String,
    pub delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEntry {
    pub id: String,
    pub reason: String,
    /// SQS says whether the failure was the sender's fault (never worth retrying).
    pub sender_fault: bool,
}

/// Retry policy for failed batch entries: `attempts` sends in all, with exponential backoff.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Full-jitter exponential backoff before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_delay);
        let millis = exp.as_millis() as u64;
        Duration::from_millis(if millis == 0 {
            0
        } else {
            rand::random_range(0..=millis)
        })
    }
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends one message, visible after `delay`. Returns the queue's message id.
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError>;
    /// Sends many messages in batches of ten, retrying entries that failed; entries that
    /// still fail are returned in [`QueueError::Unsent`] (everything else was sent).
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<(), QueueError>;
}

/// One batch call: returns the entries that failed (the rest were accepted).
#[async_trait]
pub trait BatchTransport: Send + Sync {
    async fn send_entries(
        &self,
        entries: &[OutgoingMessage],
    ) -> Result<Vec<FailedEntry>, QueueError>;
}

/// The batch algorithm shared by every transport: validate, chunk by ten, resend the
/// entries that failed for reasons other than our own fault, with backoff.
pub async fn send_batch_with_retry(
    transport: &dyn BatchTransport,
    messages: &[OutgoingMessage],
    policy: RetryPolicy,
) -> Result<(), QueueError> {
    let mut ids = std::collections::HashSet::new();
    for m in messages {
        if m.id.is_empty() || !ids.insert(m.id.as_str()) {
            return Err(QueueError::BadEntryId(m.id.clone()));
        }
        if m.delay > MAX_DELAY {
            return Err(QueueError::DelayTooLong(m.delay));
        }
    }
    let mut pending: Vec<OutgoingMessage> = messages.to_vec();
    let mut given_up: Vec<FailedEntry> = Vec::new();
    for attempt in 1..=policy.attempts.max(1) {
        if pending.is_empty() {
            break;
        }
        if attempt > 1 {
            tokio::time::sleep(policy.backoff(attempt - 1)).await;
        }
        let mut failed_now = Vec::new();
        for chunk in pending.chunks(MAX_BATCH) {
            match transport.send_entries(chunk).await {
                Ok(failed) => failed_now.extend(failed),
                // The whole call failed (network, throttling): every entry is retried.
                Err(err) => failed_now.extend(chunk.iter().map(|m| FailedEntry {
                    id: m.id.clone(),
                    reason: err.to_string(),
                    sender_fault: false,
                })),
            }
        }
        let last = attempt == policy.attempts.max(1);
        let mut retry = Vec::new();
        for failure in failed_now {
            if failure.sender_fault || last {
                given_up.push(failure);
            } else if let Some(m) = pending.iter().find(|m| m.id == failure.id) {
                retry.push(m.clone());
            }
        }
        if !retry.is_empty() {
            tracing::warn!(
                attempt,
                retrying = retry.len(),
                "queue batch entries failed; retrying"
            );
        }
        pending = retry;
    }
    if given_up.is_empty() {
        Ok(())
    } else {
        Err(QueueError::Unsent(given_up))
    }
}

/// SQS adapter for one queue.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    url: String,
    policy: RetryPolicy,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
            policy: RetryPolicy::default(),
        }
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

fn delay_seconds(delay: Duration) -> Result<i32, QueueError> {
    if delay > MAX_DELAY {
        return Err(QueueError::DelayTooLong(delay));
    }
    // SQS timers have one-second resolution; round up so a message is never early.
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    Ok(secs.min(MAX_DELAY.as_secs()) as i32)
}

fn sqs_error<E: std::error::Error + 'static>(
    err: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> QueueError {
    QueueError::Backend(aws_sdk_sqs::error::DisplayErrorContext(&err).to_string())
}

#[async_trait]
impl BatchTransport for SqsQueue {
    async fn send_entries(
        &self,
        entries: &[OutgoingMessage],
    ) -> Result<Vec<FailedEntry>, QueueError> {
        let mut request = self.client.send_message_batch().queue_url(&self.url);
        for m in entries {
            request = request.entries(
                SendMessageBatchRequestEntry::builder()
                    .id(&m.id)
                    .message_body(&m.body)
                    .delay_seconds(delay_seconds(m.delay)?)
                    .build()
                    .map_err(|e| QueueError::Backend(e.to_string()))?,
            );
        }
        let out = request.send().await.map_err(sqs_error)?;
        Ok(out
            .failed
            .into_iter()
            .map(|f| FailedEntry {
                reason: format!("{}: {}", f.code, f.message.unwrap_or_default()),
                id: f.id,
                sender_fault: f.sender_fault,
            })
            .collect())
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        let out = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay_seconds(delay)?)
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(out.message_id.unwrap_or_default())
    }

    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
        send_batch_with_retry(self, messages, self.policy).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A transport that fails chosen entries a chosen number of times.
    struct Flaky {
        failures_left: Mutex<HashMap<String, u32>>,
        sender_fault: bool,
        calls: Mutex<Vec<Vec<String>>>,
        delivered: Mutex<Vec<String>>,
    }

    impl Flaky {
        fn new(failing: &[(&str, u32)], sender_fault: bool) -> Self {
            Self {
                failures_left: Mutex::new(
                    failing.iter().map(|(id, n)| (id.to_string(), *n)).collect(),
                ),
                sender_fault,
                calls: Mutex::default(),
                delivered: Mutex::default(),
            }
        }
    }

    #[async_trait]
    impl BatchTransport for Flaky {
        async fn send_entries(
            &self,
            entries: &[OutgoingMessage],
        ) -> Result<Vec<FailedEntry>, QueueError> {
            assert!(entries.len() <= MAX_BATCH);
            self.calls
                .lock()
                .unwrap()
                .push(entries.iter().map(|e| e.id.clone()).collect());
            let mut left = self.failures_left.lock().unwrap();
            let mut failed = Vec::new();
            for e in entries {
                match left.get_mut(&e.id) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        failed.push(FailedEntry {
                            id: e.id.clone(),
                            reason: "InternalError: try again".into(),
                            sender_fault: self.sender_fault,
                        });
                    }
                    _ => self.delivered.lock().unwrap().push(e.id.clone()),
                }
            }
            Ok(failed)
        }
    }

    fn messages(n: usize) -> Vec<OutgoingMessage> {
        (0..n)
            .map(|i| OutgoingMessage {
                id: format!("m{i}"),
                body: format!("{{\"n\":{i}}}"),
                delay: Duration::ZERO,
            })
            .collect()
    }

    const FAST: RetryPolicy = RetryPolicy {
        attempts: 4,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    };

    #[tokio::test]
    async fn failed_entries_are_retried_until_sent() {
        let t = Flaky::new(&[("m3", 2), ("m17", 1)], false);
        send_batch_with_retry(&t, &messages(23), FAST)
            .await
            .unwrap();
        let mut delivered = t.delivered.lock().unwrap().clone();
        delivered.sort();
        let mut expected: Vec<String> = (0..23).map(|i| format!("m{i}")).collect();
        expected.sort();
        assert_eq!(delivered, expected, "every message exactly once");
        let calls = t.calls.lock().unwrap();
        assert_eq!(calls.len(), 3 + 1 + 1, "3 chunks, then m3+m17, then m3");
        assert_eq!(calls[3], vec!["m3", "m17"]);
        assert_eq!(calls[4], vec!["m3"]);
    }

    #[tokio::test]
    async fn gives_up_after_the_policy_and_reports_what_is_unsent() {
        let t = Flaky::new(&[("m1", 100)], false);
        let err = send_batch_with_retry(&t, &messages(5), FAST)
            .await
            .unwrap_err();
        match err {
            QueueError::Unsent(f) => assert_eq!(
                f.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
                vec!["m1"]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.calls.lock().unwrap().len(), 4);
        assert_eq!(t.delivered.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn sender_faults_are_not_retried() {
        let t = Flaky::new(&[("m0", 1)], true);
        assert!(matches!(
            send_batch_with_retry(&t, &messages(2), FAST).await,
            Err(QueueError::Unsent(_))
        ));
        assert_eq!(t.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn rejects_bad_batches_before_sending() {
        let t = Flaky::new(&[], false);
        let mut dup = messages(2);
        dup[1].id = "m0".into();
        assert!(matches!(
            send_batch_with_retry(&t, &dup, FAST).await,
            Err(QueueError::BadEntryId(_))
        ));
        let mut late = messages(1);
        late[0].delay = Duration::from_secs(901);
        assert!(matches!(
            send_batch_with_retry(&t, &late, FAST).await,
            Err(QueueError::DelayTooLong(_))
        ));
        assert!(t.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn delays_round_up_to_whole_seconds() {
        assert_eq!(delay_seconds(Duration::ZERO).unwrap(), 0);
        assert_eq!(delay_seconds(Duration::from_millis(1500)).unwrap(), 2);
        assert_eq!(delay_seconds(Duration::from_secs(900)).unwrap(), 900);
        assert!(delay_seconds(Duration::from_millis(900_001)).is_err());
    }

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy::default();
        for retry in 1..40 {
            assert!(p.backoff(retry) <= p.max_delay);
        }
    }
}
