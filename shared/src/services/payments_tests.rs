//! Unit tests of the payments service with in-memory doubles: validation, idempotency,
//! crash recovery, the polling chain on a fake clock.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{Duration, Utc};
use serde_json::{Value, json};

use super::*;
use crate::bank::{
    Account, Balance, ConsentCreated, ConsentDetails, ConsentRequest, PsuContext, ScaLink,
    Transaction, TransactionQuery,
};
use crate::domain::{AccountId, BankConsentId, BankPaymentId, ConsentStatus};
use crate::queue::{OutgoingMessage, QueueError};
use crate::services::testing::{FixedClock, MemNotifications, SECRET, start, unused};

// ---- doubles ---------------------------------------------------------------------

#[derive(Default)]
struct MemPayments {
    items: Mutex<HashMap<(UserId, PaymentId), PaymentRecord>>,
    batches: Mutex<HashMap<(UserId, crate::domain::BatchId), crate::store::BatchRecord>>,
    chunks: Mutex<HashMap<(UserId, crate::domain::BatchId, u32), crate::store::BatchChunk>>,
    slots: Mutex<HashMap<(BankId, i64), u32>>,
    /// Updates to fail (a crash at that write), counted down.
    failing_updates: Mutex<u32>,
}

impl MemPayments {
    fn one(&self, id: &PaymentId) -> PaymentRecord {
        self.items
            .lock()
            .unwrap()
            .values()
            .find(|p| &p.payment_id == id)
            .cloned()
            .unwrap()
    }

    fn all(&self) -> Vec<PaymentRecord> {
        self.items.lock().unwrap().values().cloned().collect()
    }
}

#[async_trait]
impl PaymentStore for MemPayments {
    async fn insert(&self, payment: &PaymentRecord) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        let mut items = self.items.lock().unwrap();
        let key = (payment.user_id.clone(), payment.payment_id.clone());
        if items.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        items.insert(key, payment.clone());
        Ok(())
    }

    async fn get(
        &self,
        user: &UserId,
        id: &PaymentId,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        tokio::task::yield_now().await;
        Ok(self
            .items
            .lock()
            .unwrap()
            .get(&(user.clone(), id.clone()))
            .cloned())
    }

    async fn list_for_user(&self, user: &UserId) -> Result<Vec<PaymentRecord>, StoreError> {
        Ok(self
            .all()
            .into_iter()
            .filter(|p| &p.user_id == user)
            .collect())
    }

    async fn list_page(
        &self,
        user: &UserId,
        state: Option<PaymentState>,
        after: Option<&PaymentId>,
        limit: usize,
    ) -> Result<PaymentPage, StoreError> {
        let mut all = self.list_for_user(user).await?;
        all.sort_by(|a, b| b.payment_id.cmp(&a.payment_id));
        let mut payments: Vec<PaymentRecord> = all
            .into_iter()
            .filter(|p| after.is_none_or(|a| &p.payment_id < a))
            .filter(|p| state.is_none_or(|s| p.state() == s))
            .collect();
        let more = payments.len() > limit;
        payments.truncate(limit);
        let next = more.then(|| payments.last().unwrap().payment_id.clone());
        Ok(PaymentPage { payments, next })
    }

    async fn batch_items_page(
        &self,
        user: &UserId,
        batch: &crate::domain::BatchId,
        from: u32,
        limit: usize,
    ) -> Result<(Vec<PaymentRecord>, bool), StoreError> {
        let mut items: Vec<PaymentRecord> = self
            .all()
            .into_iter()
            .filter(|p| &p.user_id == user && p.batch_id.as_ref() == Some(batch))
            .filter(|p| p.batch_index.unwrap_or(0) >= from)
            .collect();
        items.sort_by_key(|p| p.batch_index);
        let more = items.len() > limit;
        items.truncate(limit);
        Ok((items, more))
    }

    /// Derived from the records here (the ground truth the store's counters must match).
    async fn batch_counts(
        &self,
        user: &UserId,
        batch: &crate::domain::BatchId,
    ) -> Result<std::collections::BTreeMap<PaymentState, u32>, StoreError> {
        let mut counts = std::collections::BTreeMap::new();
        for p in self.all() {
            if &p.user_id == user
                && p.batch_id.as_ref() == Some(batch)
                && p.state() != PaymentState::Queued
            {
                *counts.entry(p.state()).or_default() += 1;
            }
        }
        Ok(counts)
    }

    async fn insert_batch(&self, batch: &crate::store::BatchRecord) -> Result<(), StoreError> {
        let mut batches = self.batches.lock().unwrap();
        let key = (batch.user_id.clone(), batch.batch_id.clone());
        if batches.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        batches.insert(key, batch.clone());
        Ok(())
    }

    async fn get_batch(
        &self,
        user: &UserId,
        batch: &crate::domain::BatchId,
    ) -> Result<Option<crate::store::BatchRecord>, StoreError> {
        Ok(self
            .batches
            .lock()
            .unwrap()
            .get(&(user.clone(), batch.clone()))
            .cloned())
    }

    async fn update_batch(
        &self,
        batch: &crate::store::BatchRecord,
    ) -> Result<crate::store::BatchRecord, StoreError> {
        let mut batches = self.batches.lock().unwrap();
        let key = (batch.user_id.clone(), batch.batch_id.clone());
        let stored = batches.get(&key).ok_or(StoreError::NotFound)?;
        if stored.version != batch.version {
            return Err(StoreError::VersionConflict {
                expected: batch.version,
            });
        }
        let mut next = batch.clone();
        next.version += 1;
        batches.insert(key, next.clone());
        Ok(next)
    }

    async fn put_chunks(&self, chunks: &[crate::store::BatchChunk]) -> Result<(), StoreError> {
        let mut stored = self.chunks.lock().unwrap();
        for c in chunks {
            stored.insert((c.user_id.clone(), c.batch_id.clone(), c.chunk), c.clone());
        }
        Ok(())
    }

    async fn get_chunk(
        &self,
        user: &UserId,
        batch: &crate::domain::BatchId,
        chunk: u32,
    ) -> Result<Option<crate::store::BatchChunk>, StoreError> {
        Ok(self
            .chunks
            .lock()
            .unwrap()
            .get(&(user.clone(), batch.clone(), chunk))
            .cloned())
    }

    async fn update_chunk(
        &self,
        chunk: &crate::store::BatchChunk,
    ) -> Result<crate::store::BatchChunk, StoreError> {
        let mut chunks = self.chunks.lock().unwrap();
        let key = (chunk.user_id.clone(), chunk.batch_id.clone(), chunk.chunk);
        let stored = chunks.get(&key).ok_or(StoreError::NotFound)?;
        if stored.version != chunk.version {
            return Err(StoreError::VersionConflict {
                expected: chunk.version,
            });
        }
        let mut next = chunk.clone();
        next.version += 1;
        chunks.insert(key, next.clone());
        Ok(next)
    }

    async fn take_rate_slot(
        &self,
        bank: &BankId,
        second: i64,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let mut slots = self.slots.lock().unwrap();
        let n = slots.entry((bank.clone(), second)).or_default();
        if *n >= limit {
            return Ok(false);
        }
        *n += 1;
        Ok(true)
    }

    async fn update(&self, payment: &PaymentRecord) -> Result<PaymentRecord, StoreError> {
        tokio::task::yield_now().await;
        {
            let mut failing = self.failing_updates.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(StoreError::Backend("injected crash".into()));
            }
        }
        let mut items = self.items.lock().unwrap();
        let key = (payment.user_id.clone(), payment.payment_id.clone());
        let stored = items.get(&key).ok_or(StoreError::NotFound)?;
        if stored.version != payment.version {
            return Err(StoreError::VersionConflict {
                expected: payment.version,
            });
        }
        let mut next = payment.clone();
        next.version += 1;
        items.insert(key, next.clone());
        Ok(next)
    }
}

#[derive(Default)]
struct MemKeys(Mutex<HashMap<(UserId, String), IdempotencyRecord>>);

#[async_trait]
impl IdempotencyStore for MemKeys {
    async fn insert(&self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        let mut items = self.0.lock().unwrap();
        let key = (record.user_id.clone(), record.key_hash.clone());
        if items.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        items.insert(key, record.clone());
        Ok(())
    }

    async fn get(
        &self,
        user: &UserId,
        key_hash: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        tokio::task::yield_now().await;
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(&(user.clone(), key_hash.to_owned()))
            .cloned())
    }

    async fn update(&self, record: &IdempotencyRecord) -> Result<IdempotencyRecord, StoreError> {
        tokio::task::yield_now().await;
        let mut items = self.0.lock().unwrap();
        let key = (record.user_id.clone(), record.key_hash.clone());
        let stored = items.get(&key).ok_or(StoreError::NotFound)?;
        if stored.version != record.version {
            return Err(StoreError::VersionConflict {
                expected: record.version,
            });
        }
        let mut next = record.clone();
        next.version += 1;
        items.insert(key, next.clone());
        Ok(next)
    }
}

/// A queue keeping every message with its delay.
#[derive(Default)]
struct DelayQueue(Mutex<Vec<(String, StdDuration)>>);

fn is_watch(body: &str) -> bool {
    matches!(serde_json::from_str(body), Ok(PollWork::Watch(_)))
}

impl DelayQueue {
    /// Every poll message queued (groups flattened), with its delay; batch watches stay.
    fn take(&self) -> Vec<(PollMessage, StdDuration)> {
        let mut queued = self.0.lock().unwrap();
        let (watches, polls): (Vec<_>, Vec<_>) = queued.drain(..).partition(|(b, _)| is_watch(b));
        *queued = watches;
        polls
            .into_iter()
            .flat_map(|(body, delay)| match serde_json::from_str(&body).unwrap() {
                PollWork::One(m) => vec![(m, delay)],
                PollWork::Group(g) => g.polls.into_iter().map(|m| (m, delay)).collect(),
                PollWork::Watch(_) => unreachable!(),
            })
            .collect()
    }

    /// The poll groups queued, as sent, with their delays (the rest stays).
    fn take_groups(&self) -> Vec<(PollGroup, StdDuration)> {
        let mut queued = self.0.lock().unwrap();
        let mut groups = Vec::new();
        queued.retain(|(body, delay)| match serde_json::from_str(body) {
            Ok(PollWork::Group(g)) => {
                groups.push((g, *delay));
                false
            }
            _ => true,
        });
        groups
    }

    /// The batch watches queued, with their delays.
    fn take_watches(&self) -> Vec<(BatchWatch, StdDuration)> {
        let mut queued = self.0.lock().unwrap();
        let (watches, polls): (Vec<_>, Vec<_>) = queued.drain(..).partition(|(b, _)| is_watch(b));
        *queued = polls;
        watches
            .into_iter()
            .map(|(body, delay)| match serde_json::from_str(&body).unwrap() {
                PollWork::Watch(w) => (w, delay),
                _ => unreachable!(),
            })
            .collect()
    }

    /// How many poll messages are waiting (a group counts once; watches do not count).
    fn sent(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _)| !is_watch(b))
            .count()
    }
}

#[async_trait]
impl Queue for DelayQueue {
    async fn send(&self, body: &str, delay: StdDuration) -> Result<String, QueueError> {
        self.0.lock().unwrap().push((body.to_owned(), delay));
        Ok("m".into())
    }

    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<(), QueueError> {
        for m in messages {
            self.send(&m.body, m.delay).await?;
        }
        Ok(())
    }
}

/// A bank that de-duplicates initiations by X-Request-ID (as the sandbox does) and
/// answers status polls from a script (then repeats the last answer).
struct PayBank {
    id: BankId,
    /// X-Request-ID → bank payment id.
    created: Mutex<HashMap<RequestId, BankPaymentId>>,
    initiation_calls: Mutex<u32>,
    initiation_error: Mutex<Option<BankError>>,
    statuses: Mutex<Vec<Result<TransactionStatus, BankError>>>,
    status_calls: Mutex<u32>,
}

impl PayBank {
    fn new(id: &str) -> Self {
        Self {
            id: BankId::parse(id).unwrap(),
            created: Mutex::default(),
            initiation_calls: Mutex::default(),
            initiation_error: Mutex::default(),
            statuses: Mutex::new(vec![Ok(TransactionStatus::Acsp)]),
            status_calls: Mutex::default(),
        }
    }

    fn payments_created(&self) -> usize {
        self.created.lock().unwrap().len()
    }

    fn script(&self, answers: Vec<Result<TransactionStatus, BankError>>) {
        *self.statuses.lock().unwrap() = answers;
    }
}

#[async_trait]
impl BankApi for PayBank {
    fn bank_id(&self) -> &BankId {
        &self.id
    }
    async fn create_consent(&self, _: &ConsentRequest) -> Result<ConsentCreated, BankError> {
        Err(unused())
    }
    async fn get_consent(&self, _: &BankConsentId) -> Result<ConsentDetails, BankError> {
        Err(unused())
    }
    async fn consent_status(&self, _: &BankConsentId) -> Result<ConsentStatus, BankError> {
        Err(unused())
    }
    async fn delete_consent(&self, _: &BankConsentId) -> Result<(), BankError> {
        Err(unused())
    }
    async fn accounts(&self, _: &BankConsentId, _: &PsuContext) -> Result<Vec<Account>, BankError> {
        Err(unused())
    }
    async fn balances(
        &self,
        _: &BankConsentId,
        _: &AccountId,
        _: &PsuContext,
    ) -> Result<Vec<Balance>, BankError> {
        Err(unused())
    }
    async fn transactions(
        &self,
        _: &BankConsentId,
        _: &AccountId,
        _: &TransactionQuery,
        _: &PsuContext,
    ) -> Result<Vec<Transaction>, BankError> {
        Err(unused())
    }
    async fn initiate_payment(
        &self,
        payment: &PaymentInitiation,
    ) -> Result<PaymentInitiated, BankError> {
        tokio::task::yield_now().await;
        *self.initiation_calls.lock().unwrap() += 1;
        if let Some(e) = self.initiation_error.lock().unwrap().clone() {
            return Err(e);
        }
        let mut created = self.created.lock().unwrap();
        let id = created
            .entry(payment.request_id)
            .or_insert_with(|| BankPaymentId::parse(&format!("bp-{}", Uuid::new_v4())).unwrap())
            .clone();
        Ok(PaymentInitiated {
            payment_id: id.clone(),
            status: TransactionStatus::Rcvd,
            sca: Some(ScaLink::Redirect(
                Url::parse(&format!("https://bank.example/sca/{id}")).unwrap(),
            )),
        })
    }
    async fn payment_status(
        &self,
        _: PaymentProduct,
        _: &BankPaymentId,
    ) -> Result<TransactionStatus, BankError> {
        tokio::task::yield_now().await;
        *self.status_calls.lock().unwrap() += 1;
        let mut script = self.statuses.lock().unwrap();
        if script.len() > 1 {
            script.remove(0)
        } else {
            script[0].clone()
        }
    }
}

const REGISTRY: &str = r#"{"banks":[
    {"id":"lt-alpha","name":"Alpha Bank","country":"LT","baseUrl":"http://127.0.0.1:8080/lt-alpha",
     "paymentProducts":["sepa-credit-transfers","cross-border-credit-transfers"],
     "paymentCurrencies":["EUR","USD"],"maxConsentDays":90,"frequencyPerDay":4}]}"#;

struct H {
    svc: Payments,
    bulk: Arc<DelayQueue>,
    payments: Arc<MemPayments>,
    keys: Arc<MemKeys>,
    notes: Arc<MemNotifications>,
    queue: Arc<DelayQueue>,
    bank: Arc<PayBank>,
    clock: Arc<FixedClock>,
}

fn harness() -> H {
    let payments = Arc::new(MemPayments::default());
    let keys = Arc::new(MemKeys::default());
    let notes = Arc::new(MemNotifications::default());
    let queue = Arc::new(DelayQueue::default());
    let bulk = Arc::new(DelayQueue::default());
    let bank = Arc::new(PayBank::new("lt-alpha"));
    let clock = Arc::new(FixedClock(Mutex::new(start())));
    let mut banks: HashMap<BankId, Arc<dyn BankApi>> = HashMap::new();
    banks.insert(bank.id.clone(), bank.clone());
    let config = PaymentsConfig::from_lookup(|name| match name {
        "REDIRECT_ALLOW_LIST" => Some("https://app.example".into()),
        _ => None,
    })
    .unwrap();
    let svc = Payments::new(PaymentsDeps {
        payments: payments.clone(),
        idempotency: keys.clone(),
        notifications: notes.clone(),
        webhooks: None,
        status_queue: queue.clone(),
        bulk_queue: Some(bulk.clone()),
        banks,
        registry: BankRegistry::from_json(REGISTRY).unwrap(),
        signer: StateSigner::new(SECRET).unwrap(),
        config,
        clock: clock.clone(),
    });
    H {
        svc,
        bulk,
        payments,
        keys,
        notes,
        queue,
        bank,
        clock,
    }
}

fn alice() -> UserId {
    UserId::parse("alice").unwrap()
}

const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

fn body() -> Value {
    json!({
        "bankId": "lt-alpha",
        "debtorAccount": {"iban": "LT121000011101001000"},
        "instructedAmount": {"amount": "12.30", "currency": "EUR"},
        "creditorAccount": {"iban": "DE89370400440532013000"},
        "creditorName": "Ona Onaitė",
        "remittanceInformationUnstructured": "Invoice 42",
        "redirectUrl": "https://app.example/paid"
    })
}

impl H {
    async fn pay(&self, key: &str, body: &Value) -> Result<StoredResponse, ServiceError> {
        self.svc
            .initiate(&alice(), Some(key), body.to_string().as_bytes(), IP)
            .await
    }

    fn created_id(answer: &StoredResponse) -> PaymentId {
        let v: Value = serde_json::from_str(&answer.body).unwrap();
        PaymentId::parse(v["paymentId"].as_str().unwrap()).unwrap()
    }

    /// Delivers every queued poll message once, advancing the clock by the smallest delay
    /// first; returns the outcomes.
    async fn deliver_all(&self) -> Vec<PollOutcome> {
        let mut outcomes = vec![];
        for (message, delay) in self.queue.take() {
            self.clock.advance(Duration::from_std(delay).unwrap());
            outcomes.push(self.svc.poll(&message).await.unwrap());
        }
        outcomes
    }
}

fn field_errors(e: ServiceError) -> Vec<String> {
    match e {
        ServiceError::Validation(errors) => errors.into_iter().map(|e| e.field).collect(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

// ---- validation ---------------------------------------------------------------------

#[tokio::test]
async fn bad_input_names_the_field_and_reaches_no_bank() {
    let h = harness();
    let with = |pointer: &str, value: Value| {
        let mut b = body();
        *b.pointer_mut(pointer).unwrap() = value;
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with("/debtorAccount/iban", json!("LT121000011101001001")),
            "debtorAccount.iban",
        ),
        (
            with("/creditorAccount/iban", json!("not an iban")),
            "creditorAccount.iban",
        ),
        (
            with("/instructedAmount/amount", json!("0")),
            "instructedAmount.amount",
        ),
        (
            with("/instructedAmount/amount", json!("-5")),
            "instructedAmount.amount",
        ),
        (
            with("/instructedAmount/amount", json!("1.234")),
            "instructedAmount.amount",
        ),
        (
            with("/instructedAmount/amount", json!(12.3)),
            "instructedAmount.amount",
        ),
        (
            with("/instructedAmount/currency", json!("XYZ")),
            "instructedAmount.currency",
        ),
        // Supported by the bank, but not for SEPA.
        (
            with("/instructedAmount/currency", json!("USD")),
            "instructedAmount.currency",
        ),
        (
            with("/instructedAmount/currency", json!("GBP")),
            "instructedAmount.currency",
        ),
        (with("/creditorName", json!("")), "creditorName"),
        (with("/creditorName", json!("x".repeat(71))), "creditorName"),
        (with("/creditorName", json!("Ona\u{0}")), "creditorName"),
        (
            with("/remittanceInformationUnstructured", json!("r".repeat(141))),
            "remittanceInformationUnstructured",
        ),
        (with("/bankId", json!("no-such-bank")), "bankId"),
        (
            with("/redirectUrl", json!("https://evil.example/x")),
            "redirectUrl",
        ),
        (json!({"bankId": "lt-alpha"}), "debtorAccount"),
    ];
    for (i, (b, field)) in cases.into_iter().enumerate() {
        let e = h.pay(&format!("key-{i}"), &b).await.unwrap_err();
        let fields = field_errors(e);
        assert!(fields.contains(&field.to_owned()), "{field}: {fields:?}");
    }
    // Cross-border in USD is fine for this bank.
    let mut usd = with("/instructedAmount/currency", json!("USD"));
    usd["paymentProduct"] = json!("cross-border-credit-transfers");
    assert_eq!(h.pay("usd", &usd).await.unwrap().status, 201);

    let e = h
        .svc
        .initiate(&alice(), None, body().to_string().as_bytes(), IP)
        .await
        .unwrap_err();
    assert_eq!(field_errors(e), vec!["Idempotency-Key"]);
    let e = h
        .svc
        .initiate(&alice(), Some("k"), b"{not json", IP)
        .await
        .unwrap_err();
    assert_eq!(field_errors(e), vec!["body"]);
    let mut huge = body();
    huge["remittanceInformationUnstructured"] = json!("r".repeat(70 * 1024));
    let e = h.pay("huge", &huge).await.unwrap_err();
    assert_eq!(field_errors(e), vec!["body"]);
    // Only the USD payment reached the bank.
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 1);
    assert_eq!(h.payments.all().len(), 1);
}

// ---- idempotency --------------------------------------------------------------------

#[tokio::test]
async fn same_key_same_body_replays_other_body_is_422_in_flight_is_409() {
    let h = harness();
    let first = h.pay("k1", &body()).await.unwrap();
    assert_eq!(first.status, 201);
    let again = h.pay("k1", &body()).await.unwrap();
    assert_eq!(again, first, "the same answer, byte for byte");
    let mut other = body();
    other["instructedAmount"]["amount"] = json!("99.00");
    assert_eq!(h.pay("k1", &other).await.unwrap().status, 422);
    // Keys are per user.
    let bob = h
        .svc
        .initiate(
            &UserId::parse("bob").unwrap(),
            Some("k1"),
            body().to_string().as_bytes(),
            IP,
        )
        .await
        .unwrap();
    assert_eq!(bob.status, 201);
    assert_ne!(H::created_id(&bob), H::created_id(&first));
    assert_eq!(h.bank.payments_created(), 2);

    // A request holding the key: 409 until its lock expires.
    let hash = sha256_hex(b"k2");
    h.keys.0.lock().unwrap().insert(
        (alice(), hash.clone()),
        IdempotencyRecord {
            user_id: alice(),
            key_hash: hash,
            fingerprint: sha256_hex(
                serde_json::to_string(&h.svc.validate(body().to_string().as_bytes()).unwrap())
                    .unwrap()
                    .as_bytes(),
            ),
            resource_id: new_payment_id().into_string(),
            state: IdempotencyState::InFlight,
            locked_until: h.clock.now() + Duration::seconds(60),
            response: None,
            created_at: h.clock.now(),
            keep_until: h.clock.now() + Duration::hours(48),
            version: 0,
        },
    );
    assert_eq!(h.pay("k2", &body()).await.unwrap().status, 409);
    h.clock.advance(Duration::seconds(61));
    assert_eq!(h.pay("k2", &body()).await.unwrap().status, 201);
    // After the keep time the key is forgotten and starts a new payment.
    h.clock.advance(Duration::hours(49));
    let later = h.pay("k1", &body()).await.unwrap();
    assert_ne!(H::created_id(&later), H::created_id(&first));
}

#[tokio::test]
async fn ten_concurrent_requests_with_one_key_make_one_payment() {
    let h = Arc::new(harness());
    let mut tasks = vec![];
    for _ in 0..10 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move { h.pay("same", &body()).await }));
    }
    let mut statuses = vec![];
    for t in tasks {
        statuses.push(t.await.unwrap().unwrap().status);
    }
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&201));
    assert_eq!(h.bank.payments_created(), 1);
    assert_eq!(h.payments.all().len(), 1);
}

// ---- crash safety -------------------------------------------------------------------

#[tokio::test]
async fn crash_after_the_bank_call_retry_with_the_key_makes_no_second_payment() {
    let h = harness();
    // The write recording the bank's answer fails (as if the Lambda died there).
    let key = "crash";
    // Run the initiation step by step: let the first update (sent mark) pass, fail the
    // second (the bank's answer).
    let svc = &h.svc;
    let payments = h.payments.clone();
    let watcher = tokio::spawn(async move {
        loop {
            let sent = payments.all().iter().any(|p| p.poll.sent);
            if sent {
                *payments.failing_updates.lock().unwrap() = 1;
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    let first = svc
        .initiate(&alice(), Some(key), body().to_string().as_bytes(), IP)
        .await;
    watcher.await.unwrap();
    assert!(first.is_err(), "{first:?}");
    assert_eq!(h.bank.payments_created(), 1, "the bank has it");
    let recorded = h.payments.all();
    assert_eq!(recorded.len(), 1);
    assert!(
        recorded[0].bank_payment_id.is_none(),
        "we did not record it"
    );

    // The retry with the same key sends the same X-Request-ID: still one payment.
    let retry = h.pay(key, &body()).await.unwrap();
    assert_eq!(retry.status, 201);
    assert_eq!(h.bank.payments_created(), 1);
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 2);
    let payment = h.payments.one(&H::created_id(&retry));
    assert!(payment.bank_payment_id.is_some());
}

#[tokio::test]
async fn the_poller_finishes_an_initiation_whose_caller_died() {
    let h = harness();
    let payments = h.payments.clone();
    let watcher = tokio::spawn(async move {
        loop {
            if payments.all().iter().any(|p| p.poll.sent) {
                *payments.failing_updates.lock().unwrap() = 1;
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    assert!(h.pay("died", &body()).await.is_err());
    watcher.await.unwrap();
    // The first poll (5 s later) sees the lease still live and waits for it.
    let outcomes = h.deliver_all().await;
    assert_eq!(outcomes, vec![PollOutcome::Continued]);
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 1);
    // After the lease: the poller repeats the initiation (same X-Request-ID).
    let outcomes = h.deliver_all().await;
    assert_eq!(outcomes, vec![PollOutcome::Continued]);
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 2);
    assert_eq!(h.bank.payments_created(), 1);
    let p = &h.payments.all()[0];
    assert!(p.bank_payment_id.is_some());
    assert_eq!(p.state(), PaymentState::AwaitingAuthorisation);
}

#[tokio::test]
async fn a_bank_refusal_is_final_and_replayed_a_transient_failure_is_retryable() {
    let h = harness();
    *h.bank.initiation_error.lock().unwrap() = Some(BankError::FormatError {
        code: "FORMAT_ERROR".into(),
        message: "m".into(),
    });
    let refused = h.pay("refused", &body()).await.unwrap();
    assert_eq!(refused.status, 502);
    assert_eq!(h.pay("refused", &body()).await.unwrap(), refused);
    assert_eq!(
        *h.bank.initiation_calls.lock().unwrap(),
        1,
        "not sent again"
    );

    *h.bank.initiation_error.lock().unwrap() = Some(BankError::Unavailable {
        status: Some(503),
        retry_after: None,
    });
    let down = h.pay("down", &body()).await.unwrap_err();
    assert!(matches!(down, ServiceError::Bank(_)));
    *h.bank.initiation_error.lock().unwrap() = None;
    let ok = h.pay("down", &body()).await.unwrap();
    assert_eq!(ok.status, 201);
    assert_eq!(h.bank.payments_created(), 1);
    // The poll chain of the refused payment stops at once.
    let outcomes = h.deliver_all().await;
    assert!(outcomes.contains(&PollOutcome::Stopped), "{outcomes:?}");
}

// ---- polling ------------------------------------------------------------------------

#[tokio::test]
async fn the_schedule_on_a_fake_clock_5s_30s_5min_then_gives_up_at_24h() {
    let h = harness();
    let answer = h.pay("slow", &body()).await.unwrap();
    let id = H::created_id(&answer);
    let started = h.clock.now();
    let mut delays = vec![];
    let mut polls = 0;
    loop {
        let mut messages = h.queue.take();
        assert!(messages.len() <= 1, "one live chain");
        let Some((message, delay)) = messages.pop() else {
            break;
        };
        delays.push(delay.as_secs());
        h.clock.advance(Duration::from_std(delay).unwrap());
        h.svc.poll(&message).await.unwrap();
        polls += 1;
    }
    // 12 polls in the first minute, 8 until 5 minutes, 287 until 24 hours.
    assert_eq!(polls, 307);
    assert_eq!(*h.bank.status_calls.lock().unwrap(), 307);
    assert!(delays[..12].iter().all(|d| *d == 5), "{:?}", &delays[..12]);
    assert!(delays[12..20].iter().all(|d| *d == 30));
    assert!(delays[20..].iter().all(|d| *d == 300));
    assert_eq!(h.clock.now() - started, Duration::hours(24));
    let p = h.payments.one(&id);
    assert_eq!(p.state(), PaymentState::Unknown);
    assert_eq!(p.poll.bank_calls, 307);
    assert_eq!(h.notes.of_kind("payment.status_unknown").len(), 1);
}

#[tokio::test]
async fn a_final_status_notifies_once_and_stops_the_chain() {
    let h = harness();
    let id = H::created_id(&h.pay("fin", &body()).await.unwrap());
    h.bank.script(vec![
        Ok(TransactionStatus::Rcvd),
        Ok(TransactionStatus::Actc),
        Ok(TransactionStatus::Acsc),
    ]);
    let mut outcomes = vec![];
    for _ in 0..5 {
        outcomes.extend(h.deliver_all().await);
    }
    assert_eq!(
        outcomes,
        vec![
            PollOutcome::Continued,
            PollOutcome::Continued,
            PollOutcome::Final
        ]
    );
    let p = h.payments.one(&id);
    assert_eq!(p.status, Some(TransactionStatus::Acsc));
    let codes: Vec<_> = p.history.iter().map(|e| e.status).collect();
    assert_eq!(
        codes,
        vec![
            TransactionStatus::Rcvd,
            TransactionStatus::Actc,
            TransactionStatus::Acsc
        ]
    );
    assert_eq!(h.notes.of_kind("payment.completed").len(), 1);
    assert_eq!(*h.bank.status_calls.lock().unwrap(), 3);
}

#[tokio::test]
async fn a_message_delivered_three_times_makes_one_step() {
    let h = harness();
    h.pay("dup", &body()).await.unwrap();
    h.bank.script(vec![Ok(TransactionStatus::Acsc)]);
    let (message, delay) = h.queue.take().pop().unwrap();
    h.clock.advance(Duration::from_std(delay).unwrap());
    let mut outcomes = vec![];
    for _ in 0..3 {
        outcomes.push(h.svc.poll(&message).await.unwrap());
    }
    assert_eq!(
        outcomes,
        vec![
            PollOutcome::Final,
            PollOutcome::Dropped,
            PollOutcome::Dropped
        ]
    );
    assert_eq!(h.notes.of_kind("payment.completed").len(), 1);
    assert!(h.queue.take().is_empty(), "no second chain");

    // A non-final step delivered three times queues one next message.
    let h = harness();
    h.pay("dup2", &body()).await.unwrap();
    let (message, delay) = h.queue.take().pop().unwrap();
    h.clock.advance(Duration::from_std(delay).unwrap());
    let mut outcomes = vec![];
    for _ in 0..3 {
        outcomes.push(h.svc.poll(&message).await.unwrap());
    }
    assert_eq!(
        outcomes,
        vec![
            PollOutcome::Continued,
            PollOutcome::Dropped,
            PollOutcome::Dropped
        ]
    );
    assert_eq!(h.queue.take().len(), 1);
    assert_eq!(*h.bank.status_calls.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_step_that_crashed_before_sending_is_resent_by_its_redelivery() {
    let h = harness();
    h.pay("resend", &body()).await.unwrap();
    let (message, delay) = h.queue.take().pop().unwrap();
    h.clock.advance(Duration::from_std(delay).unwrap());
    // The queue is down for the next send: the step fails after advancing the generation.
    let failing = Arc::new(FailingOnce::default());
    let svc = Payments {
        status_queue: failing.clone(),
        ..h.svc
    };
    assert!(svc.poll(&message).await.is_err());
    // An early redelivery (a duplicate, or a short visibility timeout) cannot tell a
    // crashed step from one still sending: it is not acknowledged, and comes again.
    assert_eq!(svc.poll(&message).await.unwrap(), PollOutcome::Later);
    h.clock.advance(Duration::seconds(30));
    assert_eq!(svc.poll(&message).await.unwrap(), PollOutcome::Later);
    // The redelivery once the step's write is a minute old resends the missing message.
    h.clock.advance(Duration::seconds(180));
    assert_eq!(svc.poll(&message).await.unwrap(), PollOutcome::Resent);
    let sent = failing.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let next: PollMessage = serde_json::from_str(&sent[0]).unwrap();
    assert_eq!(next.generation, message.generation + 1);
    // And the resent message is the live one.
    assert_eq!(svc.poll(&next).await.unwrap(), PollOutcome::Continued);
    // The old message once more (it was resent and marked): dropped for good.
    assert_eq!(svc.poll(&message).await.unwrap(), PollOutcome::Dropped);
}

#[derive(Default)]
struct FailingOnce {
    failed: Mutex<bool>,
    sent: Mutex<Vec<String>>,
}

#[async_trait]
impl Queue for FailingOnce {
    async fn send(&self, body: &str, _: StdDuration) -> Result<String, QueueError> {
        let mut failed = self.failed.lock().unwrap();
        if !*failed {
            *failed = true;
            return Err(QueueError::Backend("injected".into()));
        }
        self.sent.lock().unwrap().push(body.to_owned());
        Ok("m".into())
    }

    async fn send_batch(&self, _: &[OutgoingMessage]) -> Result<(), QueueError> {
        Err(QueueError::Backend("unused".into()))
    }
}

#[tokio::test]
async fn bank_errors_back_off_and_429_honours_retry_after() {
    let h = harness();
    h.pay("errs", &body()).await.unwrap();
    h.bank.script(vec![
        Err(BankError::AccessExceeded {
            retry_after: Some(StdDuration::from_secs(40)),
        }),
        Err(BankError::Timeout(StdDuration::from_secs(5))),
        Ok(TransactionStatus::Acsp),
    ]);
    let (m, d) = h.queue.take().pop().unwrap();
    h.clock.advance(Duration::from_std(d).unwrap());
    h.svc.poll(&m).await.unwrap();
    let (m, d) = h.queue.take().pop().unwrap();
    assert_eq!(d, StdDuration::from_secs(40), "Retry-After honoured");
    h.clock.advance(Duration::from_std(d).unwrap());
    h.svc.poll(&m).await.unwrap();
    let (m, d) = h.queue.take().pop().unwrap();
    // Second consecutive error: 4..6 s backoff vs the 30 s schedule phase (elapsed 45 s
    // is still the first minute: 5 s) → the backoff.
    assert!(
        d >= StdDuration::from_secs(5) && d <= StdDuration::from_secs(6),
        "{d:?}"
    );
    h.clock.advance(Duration::from_std(d).unwrap());
    h.svc.poll(&m).await.unwrap();
    let p = &h.payments.all()[0];
    assert_eq!(p.poll.errors, 0, "reset by an answer");
    assert_eq!(p.status, Some(TransactionStatus::Acsp));
}

// ---- callback and reads -------------------------------------------------------------

#[tokio::test]
async fn the_callback_restarts_the_chain_and_redirects_with_the_state() {
    let h = harness();
    let id = H::created_id(&h.pay("cb", &body()).await.unwrap());
    let (old, _) = h.queue.take().pop().unwrap();
    h.bank.script(vec![Ok(TransactionStatus::Actc)]);
    let state = ScaState::new(
        StateSubject::Payment {
            user: alice(),
            payment: id.clone(),
        },
        h.clock.now() + Duration::minutes(30),
        Some(Url::parse("https://app.example/paid").unwrap()),
    );
    let outcome = h.svc.sca_callback(state).await;
    let CallbackOutcome::Redirect { location } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        location.as_str().contains("status=in_progress"),
        "{location}"
    );
    assert!(location.as_str().contains(id.as_str()));
    let fresh = h.queue.take();
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0].1, StdDuration::ZERO, "an immediate poll");
    // The old chain's message is now stale.
    assert_eq!(h.svc.poll(&old).await.unwrap(), PollOutcome::Dropped);
    assert_eq!(
        h.svc.poll(&fresh[0].0).await.unwrap(),
        PollOutcome::Continued
    );
}

#[tokio::test]
async fn reads_are_per_user_and_list_newest_first_with_a_cursor() {
    let h = harness();
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(H::created_id(
            &h.pay(&format!("r{i}"), &body()).await.unwrap(),
        ));
        h.clock.advance(Duration::milliseconds(5));
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let view = h.svc.get(&alice(), ids[0].as_str()).await.unwrap();
    assert_eq!(view.state, PaymentState::AwaitingAuthorisation);
    assert!(view.auth_url.is_some());
    assert!(
        view.debtor_account.iban.contains('*')
            || view.debtor_account.iban.contains('…')
            || !view.debtor_account.iban.contains("1000011101001000")
    );
    let bob = UserId::parse("bob").unwrap();
    assert!(matches!(
        h.svc.get(&bob, ids[0].as_str()).await,
        Err(ServiceError::NotFound)
    ));
    assert!(matches!(
        h.svc.get(&alice(), "../etc/passwd").await,
        Err(ServiceError::NotFound)
    ));
    let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let page = h.svc.list(&alice(), &q(&[("limit", "3")])).await.unwrap();
    let got: Vec<_> = page.payments.iter().map(|p| p.payment_id.clone()).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(got, newest_first[..3]);
    let cursor = page.next_cursor.unwrap();
    let rest = h
        .svc
        .list(&alice(), &q(&[("limit", "3"), ("cursor", &cursor)]))
        .await
        .unwrap();
    assert_eq!(rest.payments.len(), 2);
    assert!(rest.next_cursor.is_none());
    let rcvd = h
        .svc
        .list(&alice(), &q(&[("status", "RCVD")]))
        .await
        .unwrap();
    assert_eq!(rcvd.payments.len(), 5);
    let done = h
        .svc
        .list(&alice(), &q(&[("status", "completed")]))
        .await
        .unwrap();
    assert!(done.payments.is_empty());
    for bad in [
        ("limit", "0"),
        ("limit", "10000"),
        ("cursor", "garbage"),
        ("status", "nope"),
    ] {
        let e = h.svc.list(&alice(), &q(&[bad])).await.unwrap_err();
        assert_eq!(field_errors(e), vec![bad.0.to_owned()]);
    }
    assert!(h.svc.list(&bob, &q(&[])).await.unwrap().payments.is_empty());
    let _ = Utc::now();
}

// ---- bulk ---------------------------------------------------------------------------

fn batch(n: usize) -> Value {
    let payments: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "instructedAmount": {"amount": format!("{}.{:02}", 10 + i, i % 100), "currency": "EUR"},
                "creditorAccount": {"iban": "DE89370400440532013000"},
                "creditorName": format!("Employee {i}"),
                "endToEndIdentification": format!("PAYROLL-{i}")
            })
        })
        .collect();
    json!({
        "bankId": "lt-alpha",
        "debtorAccount": {"iban": "LT121000011101001000"},
        "payments": payments
    })
}

impl H {
    async fn submit(&self, key: &str, body: &Value) -> Result<StoredResponse, ServiceError> {
        self.svc
            .create_batch(&alice(), Some(key), body.to_string().as_bytes(), IP)
            .await
    }

    /// Everything on the bulk queue.
    fn bulk_work(&self) -> Vec<bulk::BulkWork> {
        self.bulk
            .0
            .lock()
            .unwrap()
            .drain(..)
            .map(|(body, _)| serde_json::from_str(&body).unwrap())
            .collect()
    }

    /// The item messages, once every chunk message on the queue is expanded.
    async fn bulk_messages(&self) -> Vec<bulk::BulkMessage> {
        let mut items = Vec::new();
        loop {
            let work = self.bulk_work();
            if work.is_empty() {
                return items;
            }
            for w in work {
                match w {
                    bulk::BulkWork::Item(m) => items.push(m),
                    bulk::BulkWork::Chunk(c) => {
                        assert_eq!(
                            self.svc.expand_chunk(&c).await.unwrap(),
                            bulk::BulkOutcome::Done
                        );
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_bad_batch_lists_every_bad_item_and_queues_nothing() {
    let h = harness();
    let mut b = batch(600);
    b["payments"][537]["creditorAccount"]["iban"] = json!("LT121000011101001001");
    b["payments"][12]["instructedAmount"]["amount"] = json!("0");
    b["payments"][40]["endToEndIdentification"] = json!("PAYROLL-3");
    let e = h.submit("bad", &b).await.unwrap_err();
    let fields = field_errors(e);
    assert_eq!(
        fields,
        vec![
            "payments[12].instructedAmount.amount",
            "payments[40].endToEndIdentification",
            "payments[537].creditorAccount.iban"
        ]
    );
    for (n, ok) in [(0, false), (1000, true), (1001, false)] {
        let r = h.submit(&format!("n{n}"), &batch(n)).await;
        assert_eq!(r.is_ok(), ok, "{n} items");
        if !ok {
            assert_eq!(field_errors(r.unwrap_err()), vec!["payments"]);
        }
    }
    let mut mixed = batch(3);
    mixed["paymentProduct"] = json!("cross-border-credit-transfers");
    mixed["payments"][1]["instructedAmount"]["currency"] = json!("USD");
    assert!(
        h.submit("mixed-ok", &mixed).await.is_ok(),
        "cross-border takes several currencies"
    );
    let mut sepa_usd = batch(3);
    sepa_usd["payments"][2]["instructedAmount"]["currency"] = json!("USD");
    assert_eq!(
        field_errors(h.submit("sepa-usd", &sepa_usd).await.unwrap_err()),
        vec!["payments[2].instructedAmount.currency"]
    );
    // Only the good batches were stored and queued: 10 chunks of 1,000 items, and one
    // chunk for the cross-border batch.
    assert_eq!(h.bulk_work().len(), 11);
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 0);
}

#[tokio::test]
async fn items_are_claimed_once_whatever_the_duplicates() {
    let h = harness();
    let accepted = h.submit("payroll", &batch(20)).await.unwrap();
    assert_eq!(accepted.status, 202);
    assert_eq!(
        h.submit("payroll", &batch(20)).await.unwrap(),
        accepted,
        "replayed"
    );
    let v: Value = serde_json::from_str(&accepted.body).unwrap();
    let batch_id = v["batchId"].as_str().unwrap().to_owned();
    // The chunk message delivered three times: the first initiates every item itself.
    let work = h.bulk_work();
    assert_eq!(work.len(), 1);
    for w in work.iter().chain(&work).chain(&work) {
        assert_eq!(
            h.svc.process_work(w, 1, 5, None).await.unwrap(),
            bulk::BulkOutcome::Done
        );
    }
    assert!(h.bulk_work().is_empty(), "no item message was needed");
    // Item messages for every item (as a crash midway would send), three times each.
    let messages: Vec<bulk::BulkMessage> = h
        .payments
        .all()
        .into_iter()
        .map(|p| bulk::BulkMessage {
            user_id: p.user_id,
            payment_id: p.payment_id,
        })
        .collect();
    assert_eq!(messages.len(), 20);
    for m in messages.iter().chain(&messages).chain(&messages) {
        let outcome = h.svc.process_item(m, 1, 5).await.unwrap();
        assert_eq!(outcome, bulk::BulkOutcome::Done);
    }
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 20);
    assert_eq!(h.bank.payments_created(), 20);
    let view = h
        .svc
        .get_batch(&alice(), &batch_id, &HashMap::new())
        .await
        .unwrap();
    assert_eq!(view.total, 20);
    assert_eq!(view.counts["awaiting_authorisation"], 20);
    assert_eq!(view.counts.values().sum::<u32>(), 20);
    assert!(!view.done);
    let page = h
        .svc
        .get_batch(
            &alice(),
            &batch_id,
            &HashMap::from([("limit".to_owned(), "8".to_owned())]),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 8);
    assert_eq!(page.next_cursor.as_deref(), Some("8"));
    assert!(matches!(
        h.svc
            .get_batch(&UserId::parse("bob").unwrap(), &batch_id, &HashMap::new())
            .await,
        Err(ServiceError::NotFound)
    ));
}

#[tokio::test]
async fn transient_429_and_permanent_failures_per_item() {
    let h = harness();
    h.submit("faults", &batch(3)).await.unwrap();
    // The chunk's own attempt fails for every item: each gets an item message.
    *h.bank.initiation_error.lock().unwrap() = Some(BankError::Unavailable {
        status: Some(500),
        retry_after: None,
    });
    let mut messages = h.bulk_messages().await;
    messages.sort_by_key(|m| m.payment_id.as_str().to_owned());
    assert_eq!(messages.len(), 3);
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 3);
    assert!(matches!(
        h.svc.process_item(&messages[0], 1, 5).await.unwrap(),
        bulk::BulkOutcome::Retry(_)
    ));
    assert_eq!(
        h.svc.process_item(&messages[0], 5, 5).await.unwrap(),
        bulk::BulkOutcome::Poison,
        "the last receive gives up"
    );
    let failed = h
        .payments
        .all()
        .into_iter()
        .find(|p| p.payment_id == messages[0].payment_id)
        .unwrap();
    assert_eq!(failed.state(), PaymentState::Failed);
    assert_eq!(failed.failure.as_ref().unwrap().code, "BANK_UNAVAILABLE");
    *h.bank.initiation_error.lock().unwrap() = Some(BankError::AccessExceeded {
        retry_after: Some(StdDuration::from_secs(3)),
    });
    assert_eq!(
        h.svc.process_item(&messages[1], 1, 5).await.unwrap(),
        bulk::BulkOutcome::Requeue(StdDuration::from_secs(3))
    );
    *h.bank.initiation_error.lock().unwrap() = Some(BankError::FormatError {
        code: "FORMAT_ERROR".into(),
        message: "m".into(),
    });
    assert_eq!(
        h.svc.process_item(&messages[2], 1, 5).await.unwrap(),
        bulk::BulkOutcome::Refused
    );
    // The 429'd item goes through once the bank is back; the refused one stays refused.
    *h.bank.initiation_error.lock().unwrap() = None;
    assert_eq!(
        h.svc.process_item(&messages[1], 1, 5).await.unwrap(),
        bulk::BulkOutcome::Done
    );
    assert_eq!(
        h.svc.process_item(&messages[2], 2, 5).await.unwrap(),
        bulk::BulkOutcome::Refused
    );
    assert_eq!(h.bank.payments_created(), 1);
}

#[tokio::test]
async fn a_poll_step_that_read_a_stale_failure_does_not_end_the_chain() {
    let h = harness();
    // The first attempt fails transiently: the payment records a retryable failure, and
    // its poll chain (generation 1) is already queued.
    *h.bank.initiation_error.lock().unwrap() = Some(BankError::Unavailable {
        status: Some(500),
        retry_after: None,
    });
    let key = "stale-read";
    assert!(
        h.svc
            .initiate(&alice(), Some(key), body().to_string().as_bytes(), IP)
            .await
            .is_err()
    );
    let (poll, _) = h.queue.take().pop().unwrap();
    // The poller reads the payment while it still shows the failure …
    let stale = h.payments.one(&poll.payment_id);
    assert!(stale.failure.is_some());
    // … and meanwhile the caller's retry with the key initiates it (no new poll message:
    // the chain's message is still the live one).
    *h.bank.initiation_error.lock().unwrap() = None;
    let retried = h
        .svc
        .initiate(&alice(), Some(key), body().to_string().as_bytes(), IP)
        .await
        .unwrap();
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert!(h.queue.take().is_empty());
    // The step decided "stopped" from its stale read; ending the chain must be refused.
    assert_eq!(
        h.svc.poll_step(stale).await.unwrap().0,
        PollOutcome::Stopped
    );
    assert!(
        !h.svc.mark_stopped(&poll).await.unwrap(),
        "the chain goes on"
    );
    // The same message, looked at again, continues the chain.
    assert_eq!(h.svc.poll(&poll).await.unwrap(), PollOutcome::Continued);
    assert_eq!(h.queue.take().len(), 1, "one next poll");
}

#[tokio::test]
async fn a_bulk_items_chain_starts_with_its_initiation_and_survives_a_lost_write() {
    let h = harness();
    h.submit("chain", &batch(1)).await.unwrap();
    // The chunk's attempt fails transiently: no chain (an item message comes instead).
    *h.bank.initiation_error.lock().unwrap() = Some(BankError::Unavailable {
        status: Some(500),
        retry_after: None,
    });
    let message = h.bulk_messages().await.pop().unwrap();
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 1);
    assert!(h.queue.take().is_empty(), "no chain before the bank has it");
    // The next attempt reaches the bank, but the write of its answer is lost (a crash):
    // the chain's first message went out before that write.
    *h.bank.initiation_error.lock().unwrap() = None;
    let payments = h.payments.clone();
    let bank = h.bank.clone();
    let watcher = tokio::spawn(async move {
        loop {
            if *bank.initiation_calls.lock().unwrap() == 2 {
                *payments.failing_updates.lock().unwrap() = 1;
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    assert!(h.svc.process_item(&message, 2, 5).await.is_err());
    watcher.await.unwrap();
    assert_eq!(h.bank.payments_created(), 1);
    let first = h.queue.take();
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].1, h.svc.config.batch_sca_wait,
        "an item waiting for its SCA is first polled after the batch SCA wait"
    );
    // The message comes again once the lease is over: the same X-Request-ID, the same
    // payment at the bank, and the chain's first message once more (same generation).
    let lease = h.svc.config.initiation_lease;
    h.clock.advance(lease + chrono::Duration::seconds(1));
    assert_eq!(
        h.svc.process_item(&message, 3, 5).await.unwrap(),
        bulk::BulkOutcome::Done
    );
    assert_eq!(h.bank.payments_created(), 1);
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 3);
    let second = h.queue.take();
    assert_eq!(second.len(), 1);
    assert_eq!(
        first[0].0, second[0].0,
        "a duplicate of the same generation"
    );
    // Of the two, one continues the chain and the other is dropped: one live chain.
    assert_eq!(
        h.svc.poll(&first[0].0).await.unwrap(),
        PollOutcome::Continued
    );
    assert_eq!(
        h.svc.poll(&second[0].0).await.unwrap(),
        PollOutcome::Dropped
    );
    assert_eq!(h.queue.take().len(), 1, "one next poll");
}

#[tokio::test]
async fn acceptance_fans_out_in_chunks_and_a_redelivered_chunk_resets_nothing() {
    let h = harness();
    let accepted = h.submit("fan-out", &batch(250)).await.unwrap();
    let v: Value = serde_json::from_str(&accepted.body).unwrap();
    let batch_id = v["batchId"].as_str().unwrap().to_owned();
    // Acceptance stored no item and sent one message per chunk of 100.
    let chunks: Vec<bulk::ChunkMessage> = h
        .bulk_work()
        .into_iter()
        .map(|w| match w {
            bulk::BulkWork::Chunk(c) => c,
            bulk::BulkWork::Item(_) => panic!("acceptance sends chunks only"),
        })
        .collect();
    assert_eq!(
        chunks.iter().map(|c| c.chunk).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert!(h.payments.all().is_empty());
    let view = h
        .svc
        .get_batch(&alice(), &batch_id, &HashMap::new())
        .await
        .unwrap();
    assert_eq!(view.counts["queued"], 250, "unexpanded items are queued");
    assert_eq!(view.counts.values().sum::<u32>(), 250);
    assert!(!view.done);

    // Chunk 0 stores its 100 items and initiates them itself: no item message, and one
    // status queue message starts the 100 chains, after the batch SCA wait.
    h.svc.expand_chunk(&chunks[0]).await.unwrap();
    assert!(h.bulk_work().is_empty());
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 100);
    let first = h.payments.all();
    assert_eq!(first.len(), 100);
    assert!(
        first
            .iter()
            .all(|p| p.bank_payment_id.is_some() && p.poll.sent)
    );
    assert_eq!(h.queue.sent(), 1, "one group");
    let chains = h.queue.take();
    assert_eq!(chains.len(), 100);
    assert!(
        chains
            .iter()
            .all(|(_, delay)| *delay == h.svc.config.batch_sca_wait)
    );
    // A crash before the chunk was marked expanded: its message comes again. The items
    // exist: none is rewritten, each gets an item message, and those find them initiated.
    {
        let mut stored = h.payments.chunks.lock().unwrap();
        for c in stored.values_mut() {
            c.expanded = false;
        }
    }
    h.svc.expand_chunk(&chunks[0]).await.unwrap();
    assert!(
        h.payments.all().iter().all(|p| first.contains(p)),
        "no item was rewritten"
    );
    // They are all at the bank: no item message, their chains' first messages again (in
    // case the group was lost); of each pair, one goes on and the other is dropped.
    assert!(h.bulk_work().is_empty());
    assert_eq!(h.queue.sent(), 1, "one group");
    let again = h.queue.take();
    assert_eq!(again.len(), 100);
    let mut outcomes: HashMap<PollOutcome, usize> = HashMap::new();
    for (m, _) in chains.iter().chain(&again) {
        *outcomes.entry(h.svc.poll(m).await.unwrap()).or_default() += 1;
    }
    assert_eq!(outcomes[&PollOutcome::Continued], 100, "{outcomes:?}");
    assert_eq!(outcomes[&PollOutcome::Dropped], 100, "{outcomes:?}");
    assert_eq!(h.queue.take().len(), 100, "one live chain each");
    // The same chunk once more, now marked: nothing is sent.
    h.svc.expand_chunk(&chunks[0]).await.unwrap();
    assert!(h.bulk_work().is_empty());

    for c in &chunks[1..] {
        h.svc.expand_chunk(c).await.unwrap();
    }
    assert!(h.bulk_work().is_empty());
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 250);
    assert_eq!(h.bank.payments_created(), 250);
    let view = h
        .svc
        .get_batch(&alice(), &batch_id, &HashMap::new())
        .await
        .unwrap();
    // Chunk 0's items were polled once (the bank says ACSP), the others not yet.
    assert_eq!(view.counts["awaiting_authorisation"], 150);
    assert_eq!(view.counts["in_progress"], 100);
    assert_eq!(view.counts.values().sum::<u32>(), 250);
    let indexes: Vec<u32> = h
        .payments
        .all()
        .iter()
        .filter_map(|p| p.batch_index)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(indexes, (0..250).collect::<Vec<u32>>());
}

#[tokio::test]
async fn a_batch_is_announced_once_when_every_item_is_final() {
    let h = harness();
    h.submit("watched", &batch(3)).await.unwrap();
    let watches = h.queue.take_watches();
    assert_eq!(watches.len(), 1);
    let (watch, delay) = watches[0].clone();
    assert_eq!(delay, h.svc.config.batch_watch);
    assert_eq!(watch.generation, 0);
    // Not done yet (the chunk is not even expanded): the watch looks again later, with
    // one message of the next generation.
    assert_eq!(
        h.svc.watch_batch(&watch).await.unwrap(),
        PollOutcome::Continued
    );
    let (watch, _) = h.queue.take_watches().remove(0);
    assert_eq!(watch.generation, 1);
    // The same message again (SQS delivers at least once): dropped, no second chain.
    assert_eq!(
        h.svc.watch_batch(&watches[0].0).await.unwrap(),
        PollOutcome::Dropped
    );
    assert!(h.queue.take_watches().is_empty());
    // The items are initiated, then the bank settles them: two executed, one rejected.
    assert!(h.bulk_messages().await.is_empty());
    *h.bank.statuses.lock().unwrap() = vec![
        Ok(TransactionStatus::Acsc),
        Ok(TransactionStatus::Acsc),
        Ok(TransactionStatus::Rjct),
    ];
    assert_eq!(
        h.svc.watch_batch(&watch).await.unwrap(),
        PollOutcome::Continued,
        "awaiting SCA is not done"
    );
    let (watch, _) = h.queue.take_watches().remove(0);
    // A look that died after moving the generation, before its send: the message it
    // looked for comes again (after the queue's visibility timeout) and sends it.
    let mut stalled = h
        .payments
        .batches
        .lock()
        .unwrap()
        .values()
        .next()
        .cloned()
        .unwrap();
    stalled.watch_generation += 1;
    stalled.watch_unsent = true;
    stalled.watch_at = Some(h.clock.now());
    h.payments.update_batch(&stalled).await.unwrap();
    assert_eq!(
        h.svc.watch_batch(&watch).await.unwrap(),
        PollOutcome::Later,
        "not before the write is a minute old: it comes again"
    );
    h.clock.advance(Duration::seconds(61));
    assert_eq!(
        h.svc.watch_batch(&watch).await.unwrap(),
        PollOutcome::Resent
    );
    assert_eq!(
        h.svc.watch_batch(&watch).await.unwrap(),
        PollOutcome::Dropped,
        "sent once"
    );
    let resent = h.queue.take_watches();
    assert_eq!(resent.len(), 1);
    let (watch, delay) = resent[0].clone();
    assert_eq!((watch.generation, delay), (3, StdDuration::ZERO));
    let mut polls = h.queue.take();
    polls.sort_by_key(|(m, _)| m.payment_id.as_str().to_owned());
    for (m, _) in &polls {
        assert_eq!(h.svc.poll(m).await.unwrap(), PollOutcome::Final);
    }
    // Done: one notification with the totals, and the watch ends; a duplicate watch finds
    // it told already.
    assert_eq!(h.svc.watch_batch(&watch).await.unwrap(), PollOutcome::Final);
    assert_eq!(
        h.svc.watch_batch(&watch).await.unwrap(),
        PollOutcome::Dropped
    );
    assert!(h.queue.take_watches().is_empty());
    let notes: Vec<_> = h
        .notes
        .all()
        .into_iter()
        .filter(|n| n.kind == "payment_batch.done")
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].data["completed"], 2);
    assert_eq!(notes[0].data["rejected"], 1);
    assert_eq!(
        notes[0].message,
        "2 of 3 payments were executed, 1 rejected."
    );
}

#[tokio::test]
async fn chains_stepped_as_a_group_go_on_as_one_group_message() {
    let h = harness();
    let accepted = h.submit("grouped", &batch(100)).await.unwrap();
    let v: Value = serde_json::from_str(&accepted.body).unwrap();
    let batch_id = v["batchId"].as_str().unwrap().to_owned();
    assert!(h.bulk_messages().await.is_empty());
    let mut groups = h.queue.take_groups();
    assert_eq!(
        groups.len(),
        1,
        "the chunk's 100 chains start in one message"
    );
    let (first, _) = groups.remove(0);
    assert_eq!(first.polls.len(), 100);

    // A step of the group (the bank says ACSP): the 100 chains go on in one message, each
    // at its next generation and recorded as sent.
    assert_eq!(h.svc.poll_group(&first).await.unwrap().handled, 100);
    assert_eq!(h.queue.sent(), 1, "one message for the 100 next polls");
    let (second, delay) = h.queue.take_groups().remove(0);
    assert_eq!(
        delay,
        StdDuration::from_secs(5),
        "the schedule's first phase"
    );
    assert_eq!(second.polls.len(), 100);
    for m in &second.polls {
        let p = h.payments.one(&m.payment_id);
        assert_eq!(m.generation, p.poll.generation);
        assert_eq!(m.generation, 2);
        assert!(p.poll.sent);
        assert_eq!(p.state(), PaymentState::InProgress);
    }
    // The first group delivered again: every poll in it is stale, nothing is sent.
    assert_eq!(h.svc.poll_group(&first).await.unwrap().handled, 100);
    assert_eq!(h.queue.sent(), 0, "a duplicate group starts no chain");
    assert_eq!(*h.bank.status_calls.lock().unwrap(), 100);

    // The bank settles them: the chains end, with no message.
    h.bank.script(vec![Ok(TransactionStatus::Acsc)]);
    assert_eq!(h.svc.poll_group(&second).await.unwrap().handled, 100);
    assert_eq!(h.queue.sent(), 0);
    let view = h
        .svc
        .get_batch(&alice(), &batch_id, &HashMap::new())
        .await
        .unwrap();
    assert_eq!(view.counts["completed"], 100);
    assert!(view.done);
}

#[tokio::test]
async fn a_chunk_delivered_twice_is_expanded_by_one_delivery_at_a_time() {
    let h = harness();
    h.submit("twice", &batch(100)).await.unwrap();
    let chunk = match h.bulk_work().remove(0) {
        bulk::BulkWork::Chunk(c) => c,
        bulk::BulkWork::Item(_) => panic!("acceptance sends chunks only"),
    };
    // Another delivery holds the chunk (it is expanding it right now).
    {
        let mut chunks = h.payments.chunks.lock().unwrap();
        let stored = chunks.values_mut().next().unwrap();
        stored.lease_until = Some(h.clock.now() + Duration::seconds(30));
    }
    match h.svc.expand_chunk(&chunk).await.unwrap() {
        bulk::BulkOutcome::Requeue(wait) => assert_eq!(wait, StdDuration::from_secs(31)),
        other => panic!("{other:?}"),
    }
    assert!(
        h.payments.all().is_empty(),
        "nothing stored by the duplicate"
    );
    assert!(
        h.bulk_work().is_empty(),
        "no item message from the duplicate"
    );
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 0);
    // The holder died: once its lease is over, this delivery expands the chunk.
    h.clock.advance(Duration::seconds(31));
    assert!(matches!(
        h.svc.expand_chunk(&chunk).await.unwrap(),
        bulk::BulkOutcome::Done
    ));
    assert_eq!(h.payments.all().len(), 100);
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 100);
    assert!(h.bulk_work().is_empty());
    let stored = h
        .payments
        .chunks
        .lock()
        .unwrap()
        .values()
        .next()
        .cloned()
        .unwrap();
    assert!(stored.expanded && stored.lease_until.is_none());
}

#[tokio::test]
async fn an_item_held_by_a_worker_that_died_is_initiated_once_its_lease_is_over() {
    let h = harness();
    h.submit("held", &batch(1)).await.unwrap();
    let chunk = match h.bulk_work().remove(0) {
        bulk::BulkWork::Chunk(c) => c,
        bulk::BulkWork::Item(_) => panic!("acceptance sends chunks only"),
    };
    // The chunk's worker claimed the item, then died before the bank call: the item is
    // stored and leased, and nothing else happened.
    h.payments
        .insert_many(&[h.svc.item_record_for_tests(&chunk, 0).await])
        .await
        .unwrap();
    let mut held = h.payments.all().remove(0);
    held.queued = false;
    held.lease_until = Some(h.clock.now() + Duration::seconds(60));
    let held = h.payments.update(&held).await.unwrap();
    let message = bulk::BulkMessage {
        user_id: held.user_id.clone(),
        payment_id: held.payment_id.clone(),
    };
    // Its message, while the lease runs: it comes again after the lease, not dropped.
    assert_eq!(
        h.svc.process_item(&message, 1, 5).await.unwrap(),
        bulk::BulkOutcome::Requeue(StdDuration::from_secs(61))
    );
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 0);
    // Then: the lease is over, the message initiates it, once.
    h.clock.advance(Duration::seconds(61));
    assert_eq!(
        h.svc.process_item(&message, 1, 5).await.unwrap(),
        bulk::BulkOutcome::Done
    );
    assert_eq!(
        h.svc.process_item(&message, 1, 5).await.unwrap(),
        bulk::BulkOutcome::Done
    );
    assert_eq!(*h.bank.initiation_calls.lock().unwrap(), 1);
    assert_eq!(h.bank.payments_created(), 1);
}
