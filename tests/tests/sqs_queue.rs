//! The SQS adapter against local AWS, on queues provisioned from template.yaml.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use integration_tests::LocalStack;
use shared::queue::{OutgoingMessage, Queue, QueueError, SqsQueue};

async fn receive_all(sqs: &aws_sdk_sqs::Client, url: &str, wait_secs: i32) -> Vec<String> {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(wait_secs)
        .send()
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for m in out.messages.unwrap_or_default() {
        sqs.delete_message()
            .queue_url(url)
            .receipt_handle(m.receipt_handle.unwrap())
            .send()
            .await
            .unwrap();
        bodies.push(m.body.unwrap());
    }
    bodies
}

#[tokio::test]
async fn a_delayed_message_is_invisible_until_its_delay() {
    let local = LocalStack::provision().await;
    let url = local.resources.queue_url("PaymentStatusQueue").to_owned();
    let queue = SqsQueue::new(local.sqs(), &url);

    let sent_at = Instant::now();
    queue
        .send(r#"{"poll":"later"}"#, Duration::from_secs(3))
        .await
        .unwrap();
    queue
        .send(r#"{"poll":"now"}"#, Duration::ZERO)
        .await
        .unwrap();

    assert_eq!(
        receive_all(&local.sqs(), &url, 0).await,
        vec![r#"{"poll":"now"}"#.to_owned()]
    );
    assert!(
        receive_all(&local.sqs(), &url, 0).await.is_empty(),
        "the delayed message showed up early"
    );

    let mut got = Vec::new();
    while got.is_empty() && sent_at.elapsed() < Duration::from_secs(15) {
        got = receive_all(&local.sqs(), &url, 1).await;
    }
    assert_eq!(got, vec![r#"{"poll":"later"}"#.to_owned()]);
    assert!(
        sent_at.elapsed() >= Duration::from_secs(3),
        "visible after {:?}",
        sent_at.elapsed()
    );

    assert!(matches!(
        queue.send("x", Duration::from_secs(901)).await,
        Err(QueueError::DelayTooLong(_))
    ));
    local.teardown().await;
}

#[tokio::test]
async fn batch_send_delivers_every_message_once() {
    let local = LocalStack::provision().await;
    let url = local.resources.queue_url("BulkPaymentQueue").to_owned();
    let queue = SqsQueue::new(local.sqs(), &url);

    let messages: Vec<OutgoingMessage> = (0..37)
        .map(|i| OutgoingMessage {
            id: format!("item-{i}"),
            body: format!(r#"{{"item":{i}}}"#),
            delay: Duration::ZERO,
        })
        .collect();
    queue.send_batch(&messages).await.unwrap();

    let mut bodies = Vec::new();
    let started = Instant::now();
    while bodies.len() < 37 && started.elapsed() < Duration::from_secs(20) {
        bodies.extend(receive_all(&local.sqs(), &url, 1).await);
    }
    let unique: HashSet<_> = bodies.iter().cloned().collect();
    assert_eq!(bodies.len(), 37);
    assert_eq!(unique.len(), 37);
    local.teardown().await;
}

#[tokio::test]
async fn a_missing_queue_is_an_error_not_a_silent_loss() {
    let local = LocalStack::provision().await;
    let real = local.resources.queue_url("BulkPaymentQueue");
    let url = format!(
        "{}/no-such-queue-{}",
        real.rsplit_once('/').unwrap().0,
        uuid::Uuid::new_v4().simple()
    );
    let queue = SqsQueue::new(local.sqs(), url).with_retry_policy(shared::queue::RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    });
    let err = queue
        .send_batch(&[OutgoingMessage {
            id: "a".into(),
            body: "{}".into(),
            delay: Duration::ZERO,
        }])
        .await
        .unwrap_err();
    assert!(
        matches!(err, QueueError::Unsent(ref f) if f.len() == 1),
        "{err:?}"
    );
    local.teardown().await;
}
