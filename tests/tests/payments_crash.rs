//! A crash between the bank's answer and our record of it, with the real adapters: the
//! payments service on DynamoDB and SQS (local AWS) and the sandbox bank. The write that
//! records the bank's answer fails once (as if the Lambda died right there). Whether the
//! caller retries with the same Idempotency-Key or the poller finds the unfinished
//! initiation, the bank ends up with one payment.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use integration_tests::{LocalStack, Sandbox};
use serde_json::json;
use shared::domain::{BankId, BatchId, PaymentId, UserId};
use shared::queue::SqsQueue;
use shared::sca_state::StateSigner;
use shared::services::SystemClock;
use shared::services::payments::{
    Payments, PaymentsConfig, PaymentsDeps, PollMessage, PollOutcome,
};
use shared::store::{
    BatchChunk, BatchRecord, DynamoIdempotencyStore, DynamoNotificationStore, DynamoPaymentStore,
    PaymentPage, PaymentRecord, PaymentState, PaymentStore, StoreError,
};

/// The DynamoDB payment store, except that the next `crashes` writes recording a bank
/// payment id fail (before reaching DynamoDB).
struct CrashingStore {
    inner: DynamoPaymentStore,
    crashes: AtomicU32,
}

#[async_trait]
impl PaymentStore for CrashingStore {
    async fn insert(&self, payment: &PaymentRecord) -> Result<(), StoreError> {
        self.inner.insert(payment).await
    }
    async fn get(
        &self,
        user: &UserId,
        id: &PaymentId,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        self.inner.get(user, id).await
    }
    async fn list_for_user(&self, user: &UserId) -> Result<Vec<PaymentRecord>, StoreError> {
        self.inner.list_for_user(user).await
    }
    async fn list_page(
        &self,
        user: &UserId,
        state: Option<PaymentState>,
        after: Option<&PaymentId>,
        limit: usize,
    ) -> Result<PaymentPage, StoreError> {
        self.inner.list_page(user, state, after, limit).await
    }
    async fn batch_items_page(
        &self,
        user: &UserId,
        batch: &BatchId,
        from: u32,
        limit: usize,
    ) -> Result<(Vec<PaymentRecord>, bool), StoreError> {
        self.inner.batch_items_page(user, batch, from, limit).await
    }
    async fn batch_counts(
        &self,
        user: &UserId,
        batch: &BatchId,
    ) -> Result<std::collections::BTreeMap<PaymentState, u32>, StoreError> {
        self.inner.batch_counts(user, batch).await
    }
    async fn insert_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        self.inner.insert_batch(batch).await
    }
    async fn get_batch(
        &self,
        user: &UserId,
        batch: &BatchId,
    ) -> Result<Option<BatchRecord>, StoreError> {
        self.inner.get_batch(user, batch).await
    }
    async fn update_batch(&self, batch: &BatchRecord) -> Result<BatchRecord, StoreError> {
        self.inner.update_batch(batch).await
    }
    async fn put_chunks(&self, chunks: &[BatchChunk]) -> Result<(), StoreError> {
        self.inner.put_chunks(chunks).await
    }
    async fn get_chunk(
        &self,
        user: &UserId,
        batch: &BatchId,
        chunk: u32,
    ) -> Result<Option<BatchChunk>, StoreError> {
        self.inner.get_chunk(user, batch, chunk).await
    }
    async fn update_chunk(&self, chunk: &BatchChunk) -> Result<BatchChunk, StoreError> {
        self.inner.update_chunk(chunk).await
    }
    async fn take_rate_slot(
        &self,
        bank: &BankId,
        second: i64,
        limit: u32,
    ) -> Result<bool, StoreError> {
        self.inner.take_rate_slot(bank, second, limit).await
    }
    async fn update(&self, payment: &PaymentRecord) -> Result<PaymentRecord, StoreError> {
        if payment.bank_payment_id.is_some()
            && self
                .crashes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::Backend("crashed before the write".into()));
        }
        self.inner.update(payment).await
    }
}

struct World {
    local: LocalStack,
    sandbox: Sandbox,
    svc: Payments,
    store: Arc<CrashingStore>,
}

async fn world(lease_secs: i64) -> World {
    let local = LocalStack::provision().await;
    let sandbox = Sandbox::start(infra::sandbox::SandboxConfig::default()).await;
    let table = local.resources.table("PaymentsTable").to_owned();
    let store = Arc::new(CrashingStore {
        inner: DynamoPaymentStore::new(local.dynamodb(), table.clone()),
        crashes: AtomicU32::new(1),
    });
    let mut config = PaymentsConfig::from_lookup(|_| None).unwrap();
    config.initiation_lease = chrono::Duration::seconds(lease_secs);
    let svc = Payments::new(PaymentsDeps {
        payments: store.clone(),
        idempotency: Arc::new(DynamoIdempotencyStore::new(local.dynamodb(), table)),
        notifications: Arc::new(DynamoNotificationStore::new(
            local.dynamodb(),
            local.resources.table("NotificationsTable"),
        )),
        webhooks: None,
        status_queue: Arc::new(SqsQueue::new(
            local.sqs(),
            local.resources.queue_url("PaymentStatusQueue"),
        )),
        bulk_queue: None,
        banks: sandbox.connectors(),
        registry: sandbox.registry.clone(),
        signer: StateSigner::new(b"payments-crash-test-secret-0123456789").unwrap(),
        config,
        clock: Arc::new(SystemClock),
    });
    World {
        local,
        sandbox,
        svc,
        store,
    }
}

fn body() -> Vec<u8> {
    json!({
        "bankId": "lt-alpha",
        "debtorAccount": {"iban": "LT121000011101001000"},
        "instructedAmount": {"amount": "250.00", "currency": "EUR"},
        "creditorAccount": {"iban": "DE89370400440532013000"},
        "creditorName": "Ona Onaitė"
    })
    .to_string()
    .into_bytes()
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 4));

impl World {
    async fn counts(&self) -> (u64, u64) {
        let counts = self.sandbox.get_json("counts").await;
        (
            counts["paymentInitiations"]["lt-alpha"].as_u64().unwrap(),
            counts["byOperation"]["lt-alpha POST /v1/payments/{payment-product}"]
                .as_u64()
                .unwrap_or(0),
        )
    }

    async fn stop(self) {
        self.sandbox.handle.shutdown();
        self.local.teardown().await;
    }
}

#[tokio::test]
async fn a_retry_with_the_same_key_after_the_crash_makes_no_second_payment() {
    let w = world(60).await;
    let user = UserId::parse("dora").unwrap();
    let first = w.svc.initiate(&user, Some("crash-1"), &body(), IP).await;
    assert!(first.is_err(), "the crash surfaces: {first:?}");
    assert_eq!(w.counts().await, (1, 1), "the bank has the payment");

    let retry = w
        .svc
        .initiate(&user, Some("crash-1"), &body(), IP)
        .await
        .unwrap();
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(
        w.counts().await,
        (1, 2),
        "asked twice with one X-Request-ID: one payment at the bank"
    );
    let answer: serde_json::Value = serde_json::from_str(&retry.body).unwrap();
    let stored = w
        .store
        .inner
        .get(
            &user,
            &PaymentId::parse(answer["paymentId"].as_str().unwrap()).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(stored.bank_payment_id.is_some());
    assert_eq!(stored.state(), PaymentState::AwaitingAuthorisation);
    w.stop().await;
}

#[tokio::test]
async fn the_poller_finishes_the_initiation_when_nobody_retries() {
    let w = world(1).await;
    let user = UserId::parse("erik").unwrap();
    assert!(
        w.svc
            .initiate(&user, Some("crash-2"), &body(), IP)
            .await
            .is_err()
    );
    assert_eq!(w.counts().await, (1, 1));

    // The poll message queued before the bank call (5 s delay) arrives.
    let sqs = w.local.sqs();
    let url = w.local.resources.queue_url("PaymentStatusQueue").to_owned();
    let mut outcomes = HashMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while outcomes.is_empty() && std::time::Instant::now() < deadline {
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        for m in received.messages.unwrap_or_default() {
            let message: PollMessage = serde_json::from_str(m.body().unwrap()).unwrap();
            let outcome = w.svc.poll(&message).await.unwrap();
            outcomes.insert(message.generation, outcome);
        }
    }
    assert_eq!(
        outcomes.get(&1),
        Some(&PollOutcome::Continued),
        "{outcomes:?}"
    );
    assert_eq!(
        w.counts().await,
        (1, 2),
        "repeated with the same X-Request-ID"
    );
    let payments = w.store.inner.list_for_user(&user).await.unwrap();
    assert_eq!(payments.len(), 1);
    assert!(payments[0].bank_payment_id.is_some());
    w.stop().await;
}
