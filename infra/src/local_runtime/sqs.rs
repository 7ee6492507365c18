//! SQS event source mappings: pollers that receive from a queue, invoke the mapped function
//! with a real SQS event and delete what the function processed — the way Lambda's
//! pollers do.
//!
//! Messages that are not deleted are left alone: they become visible again after the
//! queue's visibility timeout, and the queue's own `RedrivePolicy` moves them to the
//! dead-letter queue after `maxReceiveCount` receives (SQS's/moto's job, not ours).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Invoke, InvokeError};

/// Pause after an empty short receive (mappings with a zero `poll_wait`).
pub const SHORT_POLL_PAUSE: Duration = Duration::from_millis(200);

/// One `Type: SQS` event of a function in the template.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsMapping {
    /// Event name in the template.
    pub name: String,
    /// Function logical id.
    pub function: String,
    pub queue_url: String,
    pub queue_arn: String,
    /// `BatchSize` (default 10); above 10 several receives are collected.
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds` (default 0).
    pub batching_window: Duration,
    /// `FunctionResponseTypes` contains `ReportBatchItemFailures`.
    pub report_batch_item_failures: bool,
    /// `ScalingConfig.MaximumConcurrency` (default 2): batches in flight at once.
    pub max_concurrency: usize,
    /// Long-poll wait per ReceiveMessage (default 1 s locally, at most 20 s). Zero makes
    /// short receives with a [`SHORT_POLL_PAUSE`] after each empty one: moto wakes every
    /// long-polling receiver on each send, and each rescans the whole queue (delayed
    /// messages included), so with many delayed messages long polls make every send
    /// slower; short receives keep that cost to a few scans a second.
    pub poll_wait: Duration,
    /// Share of received messages (0 to 1) delivered twice: a second invocation with
    /// those records runs alongside the first, as SQS's at-least-once delivery may do. Only
    /// the first invocation's answer decides what is deleted. 0 outside fault tests.
    pub duplicate_rate: f64,
}

impl SqsMapping {
    /// A mapping with the template's defaults (batch size 10, no batching window, no
    /// batch item failures, concurrency 2, 1 s long polls).
    pub fn new(
        name: impl Into<String>,
        function: impl Into<String>,
        queue_url: impl Into<String>,
        queue_arn: impl Into<String>,
    ) -> SqsMapping {
        SqsMapping {
            name: name.into(),
            function: function.into(),
            queue_url: queue_url.into(),
            queue_arn: queue_arn.into(),
            batch_size: 10,
            batching_window: Duration::ZERO,
            report_batch_item_failures: false,
            max_concurrency: 2,
            poll_wait: Duration::from_secs(1),
            duplicate_rate: 0.0,
        }
    }
}

/// Starts `max_concurrency` pollers per mapping; the task ends when `shutdown` is
/// cancelled and every poller stopped. A batch being processed when `shutdown` fires is
/// abandoned (its messages reappear after the visibility timeout).
pub fn spawn(
    mappings: Vec<SqsMapping>,
    sqs: aws_sdk_sqs::Client,
    invoker: Arc<dyn Invoke>,
    region: String,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut pollers = JoinSet::new();
        for mapping in mappings {
            let mapping = Arc::new(mapping);
            tracing::info!(
                mapping = %mapping.name,
                function = %mapping.function,
                queue = %mapping.queue_url,
                batch_size = mapping.batch_size,
                batching_window_ms = u64::try_from(mapping.batching_window.as_millis()).unwrap_or(u64::MAX),
                report_batch_item_failures = mapping.report_batch_item_failures,
                concurrency = mapping.max_concurrency.max(1),
                "sqs event source mapping started"
            );
            for _ in 0..mapping.max_concurrency.max(1) {
                let poller = Poller {
                    mapping: mapping.clone(),
                    sqs: sqs.clone(),
                    invoker: invoker.clone(),
                    region: region.clone(),
                    shutdown: shutdown.clone(),
                };
                pollers.spawn(poller.run());
            }
        }
        while let Some(joined) = pollers.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "sqs poller failed");
            }
        }
    })
}

/// What happens to the messages of a batch after the invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchVerdict {
    /// Every message was processed: delete them all.
    AllSucceeded,
    /// The function reported these message ids as failed: delete all others.
    PartialFailure(Vec<String>),
    /// The whole batch failed (invocation error, or a batch response Lambda rejects):
    /// delete nothing.
    AllFailed(String),
}

impl BatchVerdict {
    /// Indices (into `message_ids`) of the messages to delete.
    pub fn to_delete(&self, message_ids: &[&str]) -> Vec<usize> {
        match self {
            BatchVerdict::AllSucceeded => (0..message_ids.len()).collect(),
            BatchVerdict::AllFailed(_) => Vec::new(),
            BatchVerdict::PartialFailure(failed) => message_ids
                .iter()
                .enumerate()
                .filter(|(_, id)| !failed.iter().any(|failed| failed == *id))
                .map(|(index, _)| index)
                .collect(),
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            BatchVerdict::AllSucceeded => "ok",
            BatchVerdict::PartialFailure(_) => "partial_failure",
            BatchVerdict::AllFailed(_) => "failed",
        }
    }
}

/// Judges a batch the way Lambda does. Without `ReportBatchItemFailures` only the
/// invocation's success counts. With it, a `null`/empty response or an empty/`null`
/// `batchItemFailures` means success; listed `itemIdentifier`s failed; a response that is
/// not an object, a `batchItemFailures` that is not a list, an entry without a (non-empty
/// string) `itemIdentifier`, or an identifier that is not in the batch fails the whole
/// batch.
pub fn judge_batch(
    message_ids: &[&str],
    result: &Result<Value, InvokeError>,
    report_batch_item_failures: bool,
) -> BatchVerdict {
    let response = match result {
        Err(error) => return BatchVerdict::AllFailed(error.to_string()),
        Ok(_) if !report_batch_item_failures => return BatchVerdict::AllSucceeded,
        Ok(response) => response,
    };
    let failures = match response {
        Value::Null => return BatchVerdict::AllSucceeded,
        Value::Object(object) => match object.get("batchItemFailures") {
            None | Some(Value::Null) => return BatchVerdict::AllSucceeded,
            Some(Value::Array(failures)) => failures,
            Some(_) => {
                return BatchVerdict::AllFailed("batchItemFailures is not a list".to_owned());
            }
        },
        _ => {
            return BatchVerdict::AllFailed(
                "the batch response is not an object with batchItemFailures".to_owned(),
            );
        }
    };
    let batch: HashSet<&str> = message_ids.iter().copied().collect();
    let mut failed: Vec<String> = Vec::new();
    for failure in failures {
        let Some(id) = failure.get("itemIdentifier").and_then(Value::as_str) else {
            return BatchVerdict::AllFailed(format!(
                "batch item failure without an itemIdentifier: {failure}"
            ));
        };
        if id.is_empty() {
            return BatchVerdict::AllFailed("empty itemIdentifier".to_owned());
        }
        if !batch.contains(id) {
            return BatchVerdict::AllFailed(format!(
                "itemIdentifier {id} is not a message of the batch"
            ));
        }
        if !failed.iter().any(|known| known == id) {
            failed.push(id.to_owned());
        }
    }
    if failed.is_empty() {
        BatchVerdict::AllSucceeded
    } else {
        BatchVerdict::PartialFailure(failed)
    }
}

/// The record of one message in a Lambda SQS event.
pub fn sqs_record(message: &Message, queue_arn: &str, region: &str) -> Value {
    let attributes: Map<String, Value> = message
        .attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), Value::String(value.clone())))
                .collect()
        })
        .unwrap_or_default();
    let base64 = base64::engine::general_purpose::STANDARD;
    let message_attributes: Map<String, Value> = message
        .message_attributes()
        .map(|attributes| {
            attributes
                .iter()
                .map(|(name, value)| {
                    let mut attribute = Map::new();
                    if let Some(text) = value.string_value() {
                        attribute.insert("stringValue".into(), text.into());
                    }
                    if let Some(binary) = value.binary_value() {
                        attribute.insert("binaryValue".into(), base64.encode(binary).into());
                    }
                    attribute.insert("stringListValues".into(), value.string_list_values().into());
                    attribute.insert(
                        "binaryListValues".into(),
                        value
                            .binary_list_values()
                            .iter()
                            .map(|blob| Value::String(base64.encode(blob)))
                            .collect(),
                    );
                    attribute.insert("dataType".into(), value.data_type().into());
                    (name.clone(), Value::Object(attribute))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut record = json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": message_attributes,
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    });
    if let Some(md5) = message.md5_of_message_attributes() {
        record["md5OfMessageAttributes"] = md5.into();
    }
    record
}

struct Poller {
    mapping: Arc<SqsMapping>,
    sqs: aws_sdk_sqs::Client,
    invoker: Arc<dyn Invoke>,
    region: String,
    shutdown: CancellationToken,
}

impl Poller {
    async fn run(self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let (batch, error) = tokio::select! {
                collected = self.collect() => collected,
                () = self.shutdown.cancelled() => return,
            };
            if let Some(error) = &error {
                tracing::warn!(
                    mapping = %self.mapping.name,
                    queue = %self.mapping.queue_url,
                    error = %error,
                    "ReceiveMessage failed"
                );
            }
            if !batch.is_empty() {
                backoff = Duration::from_secs(1);
                tokio::select! {
                    () = self.process(batch) => {}
                    () = self.shutdown.cancelled() => {
                        tracing::info!(mapping = %self.mapping.name, "batch abandoned at shutdown");
                        return;
                    }
                }
            } else if error.is_some() {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = self.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            } else if self.mapping.poll_wait.is_zero() {
                // Short receives: pause between empty ones.
                tokio::select! {
                    () = tokio::time::sleep(SHORT_POLL_PAUSE) => {}
                    () = self.shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Receives up to `batch_size` messages: one long poll for the first ones, then more
    /// receives until the batch is full or the batching window (counted from the first
    /// message) has passed. Without a window only messages that are immediately available
    /// are added. Returns what was collected and the receive error that ended it, if any.
    async fn collect(&self) -> (Vec<Message>, Option<String>) {
        let mapping = &*self.mapping;
        let target = mapping.batch_size.max(1);
        let mut batch: Vec<Message> = Vec::new();
        let mut positions: HashMap<String, usize> = HashMap::new();
        let mut window_end: Option<Instant> = None;
        loop {
            let wait = match window_end {
                None => mapping.poll_wait,
                Some(_) if mapping.batching_window.is_zero() => Duration::ZERO,
                Some(end) => {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    left
                }
            };
            let wanted = (target - batch.len()).min(10);
            let wait_seconds = wait.as_secs_f64().ceil().min(20.0) as i32;
            #[allow(deprecated)]
            // AttributeNames: asked for as well, as the brief of the mapping says
            let request = self
                .sqs
                .receive_message()
                .queue_url(&mapping.queue_url)
                .max_number_of_messages(wanted as i32)
                .wait_time_seconds(wait_seconds)
                .attribute_names(QueueAttributeName::All)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All");
            let received = match request.send().await {
                Ok(output) => output.messages.unwrap_or_default(),
                Err(error) => {
                    return (batch, Some(DisplayErrorContext(&error).to_string()));
                }
            };
            let got = received.len();
            for message in received {
                let id = message.message_id().unwrap_or_default().to_owned();
                // Received twice while collecting (visibility expired): keep the newest
                // receipt handle, which is the one that can delete it.
                match positions.get(&id) {
                    Some(&index) => batch[index] = message,
                    None => {
                        positions.insert(id, batch.len());
                        batch.push(message);
                    }
                }
            }
            if batch.is_empty() || batch.len() >= target {
                break;
            }
            if window_end.is_none() {
                window_end = Some(Instant::now() + mapping.batching_window);
            }
            if mapping.batching_window.is_zero() && got < wanted {
                break;
            }
        }
        (batch, None)
    }

    async fn process(&self, batch: Vec<Message>) {
        let mapping = &*self.mapping;
        let records: Vec<Value> = batch
            .iter()
            .map(|message| sqs_record(message, &mapping.queue_arn, &self.region))
            .collect();
        let ids: Vec<&str> = batch
            .iter()
            .map(|message| message.message_id().unwrap_or_default())
            .collect();
        let copies: Vec<Value> = records
            .iter()
            .filter(|_| {
                mapping.duplicate_rate > 0.0 && rand::random::<f64>() < mapping.duplicate_rate
            })
            .cloned()
            .collect();
        let original = self
            .invoker
            .invoke(&mapping.function, json!({ "Records": records }));
        let result = if copies.is_empty() {
            original.await
        } else {
            let size = copies.len();
            let again = self
                .invoker
                .invoke(&mapping.function, json!({ "Records": copies }));
            let (result, again) = tokio::join!(original, again);
            tracing::info!(
                mapping = %mapping.name,
                function = %mapping.function,
                size,
                failed = again.is_err(),
                "sqs duplicate delivery"
            );
            result
        };
        let verdict = judge_batch(&ids, &result, mapping.report_batch_item_failures);
        let to_delete: Vec<&Message> = verdict
            .to_delete(&ids)
            .into_iter()
            .map(|index| &batch[index])
            .collect();
        let deleted = self.delete(&to_delete).await;
        let failed = batch.len() - to_delete.len();
        match &verdict {
            BatchVerdict::AllFailed(reason) => tracing::warn!(
                mapping = %mapping.name,
                function = %mapping.function,
                size = batch.len(),
                deleted,
                failed,
                outcome = verdict.outcome(),
                reason = %reason,
                "sqs batch"
            ),
            _ => tracing::info!(
                mapping = %mapping.name,
                function = %mapping.function,
                size = batch.len(),
                deleted,
                failed,
                outcome = verdict.outcome(),
                "sqs batch"
            ),
        }
    }

    /// Deletes the messages (10 per call); returns how many were deleted. Errors are logged.
    async fn delete(&self, messages: &[&Message]) -> usize {
        let mut deleted = 0;
        for chunk in messages.chunks(10) {
            let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(index, message)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(message.receipt_handle().unwrap_or_default())
                        .build()
                        .ok()
                })
                .collect();
            let result = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.mapping.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            match result {
                Ok(output) => {
                    deleted += output.successful().len();
                    for failure in output.failed() {
                        tracing::warn!(
                            mapping = %self.mapping.name,
                            code = failure.code(),
                            message = failure.message(),
                            "DeleteMessageBatch entry failed"
                        );
                    }
                }
                Err(error) => tracing::warn!(
                    mapping = %self.mapping.name,
                    error = %DisplayErrorContext(&error),
                    "DeleteMessageBatch failed"
                ),
            }
        }
        deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::primitives::Blob;
    use aws_sdk_sqs::types::MessageAttributeValue;

    const IDS: [&str; 3] = ["a", "b", "c"];

    fn handler_error() -> InvokeError {
        InvokeError::Handler {
            function: "F".into(),
            error_type: "E".into(),
            message: "m".into(),
        }
    }

    #[test]
    fn invocation_errors_fail_the_whole_batch() {
        for error in [
            handler_error(),
            InvokeError::Timeout {
                function: "F".into(),
                seconds: 3,
            },
            InvokeError::Crashed {
                function: "F".into(),
                reason: "signal 9".into(),
            },
        ] {
            for report in [false, true] {
                let verdict = judge_batch(&IDS, &Err(error.clone()), report);
                assert!(matches!(verdict, BatchVerdict::AllFailed(_)), "{verdict:?}");
                assert!(verdict.to_delete(&IDS).is_empty());
            }
        }
    }

    #[test]
    fn without_report_batch_item_failures_the_response_is_ignored() {
        let response = json!({ "batchItemFailures": [{ "itemIdentifier": "a" }] });
        let verdict = judge_batch(&IDS, &Ok(response), false);
        assert_eq!(verdict, BatchVerdict::AllSucceeded);
        assert_eq!(verdict.to_delete(&IDS), vec![0, 1, 2]);
    }

    #[test]
    fn empty_responses_are_complete_successes() {
        for response in [
            Value::Null,
            json!({}),
            json!({ "batchItemFailures": null }),
            json!({ "batchItemFailures": [] }),
        ] {
            assert_eq!(
                judge_batch(&IDS, &Ok(response.clone()), true),
                BatchVerdict::AllSucceeded,
                "{response}"
            );
        }
    }

    #[test]
    fn reported_failures_keep_only_those_messages() {
        let response = json!({ "batchItemFailures": [
            { "itemIdentifier": "b" }, { "itemIdentifier": "b" }
        ] });
        let verdict = judge_batch(&IDS, &Ok(response), true);
        assert_eq!(verdict, BatchVerdict::PartialFailure(vec!["b".into()]));
        assert_eq!(verdict.to_delete(&IDS), vec![0, 2]);

        let all = json!({ "batchItemFailures": [
            { "itemIdentifier": "a" }, { "itemIdentifier": "b" }, { "itemIdentifier": "c" }
        ] });
        assert!(judge_batch(&IDS, &Ok(all), true).to_delete(&IDS).is_empty());
    }

    #[test]
    fn malformed_failures_fail_the_whole_batch() {
        for response in [
            json!({ "batchItemFailures": [{ "itemIdentifier": "zzz" }] }),
            json!({ "batchItemFailures": [{ "itemIdentifier": "" }] }),
            json!({ "batchItemFailures": [{ "itemIdentifier": null }] }),
            json!({ "batchItemFailures": [{ "itemId": "a" }] }),
            json!({ "batchItemFailures": [{ "itemIdentifier": "a" }, { "itemIdentifier": "nope" }] }),
            json!({ "batchItemFailures": "a" }),
            json!("a"),
            json!([{ "itemIdentifier": "a" }]),
        ] {
            let verdict = judge_batch(&IDS, &Ok(response.clone()), true);
            assert!(
                matches!(verdict, BatchVerdict::AllFailed(_)),
                "{response} → {verdict:?}"
            );
            assert!(verdict.to_delete(&IDS).is_empty());
        }
    }

    #[test]
    fn records_have_the_lambda_event_shape() {
        let message = Message::builder()
            .message_id("m-1")
            .receipt_handle("rh-1")
            .body("hello")
            .md5_of_body("5d41402abc4b2a76b9719d911017c592")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "2")
            .attributes(MessageSystemAttributeName::SentTimestamp, "1700000000000")
            .message_attributes(
                "kind",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("greeting")
                    .build()
                    .unwrap(),
            )
            .message_attributes(
                "raw",
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(b"hi".to_vec()))
                    .build()
                    .unwrap(),
            )
            .build();
        let record = sqs_record(
            &message,
            "arn:aws:sqs:eu-central-1:123456789012:q",
            "eu-central-1",
        );
        assert_eq!(record["messageId"], "m-1");
        assert_eq!(record["receiptHandle"], "rh-1");
        assert_eq!(record["body"], "hello");
        assert_eq!(record["md5OfBody"], "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(record["attributes"]["ApproximateReceiveCount"], "2");
        assert_eq!(record["attributes"]["SentTimestamp"], "1700000000000");
        assert_eq!(record["eventSource"], "aws:sqs");
        assert_eq!(
            record["eventSourceARN"],
            "arn:aws:sqs:eu-central-1:123456789012:q"
        );
        assert_eq!(record["awsRegion"], "eu-central-1");
        assert_eq!(
            record["messageAttributes"]["kind"],
            json!({ "stringValue": "greeting", "stringListValues": [], "binaryListValues": [], "dataType": "String" })
        );
        assert_eq!(record["messageAttributes"]["raw"]["binaryValue"], "aGk=");
        assert!(record.get("md5OfMessageAttributes").is_none());
    }

    #[test]
    fn mapping_defaults_follow_the_template_defaults() {
        let mapping = SqsMapping::new("Jobs", "Worker", "http://q", "arn:q");
        assert_eq!(mapping.batch_size, 10);
        assert_eq!(mapping.batching_window, Duration::ZERO);
        assert!(!mapping.report_batch_item_failures);
        assert_eq!(mapping.max_concurrency, 2);
        assert_eq!(mapping.poll_wait, Duration::from_secs(1));
    }
}
