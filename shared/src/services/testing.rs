//! In-memory doubles of the ports and a harness around [`Connections`], shared by the unit
//! tests of the services. Every double yields to the scheduler once per call, so services
//! run concurrently in one test really interleave; the stores can be told to fail once, to
//! simulate a crash at a chosen step.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use url::Url;

use super::Clock;
use super::connections::{Connections, ConnectionsConfig, ConnectionsDeps};
use crate::bank::registry::BankRegistry;
use crate::bank::{
    Account, Balance, BankApi, BankError, ConsentCreated, ConsentDetails, ConsentRequest,
    PaymentInitiated, PaymentInitiation, PaymentProduct, PsuContext, ScaLink, Transaction,
    TransactionQuery,
};
use crate::domain::{
    AccountId, BankConsentId, BankId, BankPaymentId, ConsentId, ConsentState, ConsentStatus,
    TransactionStatus, UserId,
};
use crate::sca_state::StateSigner;
use crate::store::{
    ConsentOutbox, ConsentRecord, ConsentStore, NonceStore, Notification, NotificationStore,
    StoreError, StoredEvent, WebhookMark, WebhookMarks, health_hour,
};

// ---- doubles ---------------------------------------------------------------------

pub(crate) type Items = HashMap<(UserId, ConsentId), ConsentRecord>;
pub(crate) type Hook = Box<dyn FnOnce(&mut Items) + Send>;

/// A consent store honouring versions, with a hook that runs just before the next
/// update of one consent (to simulate a concurrent writer) and one-shot failures (to
/// simulate a crash just before a write).
#[derive(Default)]
pub(crate) struct MemConsents {
    items: Mutex<Items>,
    hook: Mutex<Option<(ConsentId, Hook)>>,
    /// Consent id and how many of its updates still succeed before one fails.
    failing_updates: Mutex<Vec<(ConsentId, u32)>>,
    failing_inserts: Mutex<u32>,
    failing_queries: Mutex<Vec<NaiveDate>>,
}

impl MemConsents {
    pub(crate) fn all(&self) -> Vec<ConsentRecord> {
        let mut all: Vec<_> = self.items.lock().unwrap().values().cloned().collect();
        all.sort_by(|a, b| a.consent_id.cmp(&b.consent_id));
        all
    }

    pub(crate) fn one(&self, id: &ConsentId) -> ConsentRecord {
        self.all()
            .into_iter()
            .find(|r| &r.consent_id == id)
            .expect("stored")
    }

    pub(crate) fn before_update_of(
        &self,
        id: &ConsentId,
        hook: impl FnOnce(&mut Items) + Send + 'static,
    ) {
        *self.hook.lock().unwrap() = Some((id.clone(), Box::new(hook)));
    }

    /// The next update of consent `id` fails with a backend error (nothing is written).
    pub(crate) fn fail_next_update_of(&self, id: &ConsentId) {
        self.fail_update_of(id, 0);
    }

    /// After `skip` more successful updates of consent `id`, one fails with a backend error.
    pub(crate) fn fail_update_of(&self, id: &ConsentId, skip: u32) {
        self.failing_updates
            .lock()
            .unwrap()
            .push((id.clone(), skip));
    }

    /// The next insert fails with a backend error (nothing is written).
    pub(crate) fn fail_next_insert(&self) {
        *self.failing_inserts.lock().unwrap() += 1;
    }

    /// The next index query for `day` fails with a backend error.
    pub(crate) fn fail_next_query_of(&self, day: NaiveDate) {
        self.failing_queries.lock().unwrap().push(day);
    }

    /// Stores `record` as it is (a state left by an earlier run).
    pub(crate) fn put(&self, record: ConsentRecord) {
        self.items
            .lock()
            .unwrap()
            .insert((record.user_id.clone(), record.consent_id.clone()), record);
    }
}

fn injected() -> StoreError {
    StoreError::Backend("injected failure".into())
}

impl MemConsents {
    /// The versioned write of `consent` (injected failures, the hook, the version check),
    /// with `also` run under the store's lock just before the consent is written: when
    /// `also` fails, nothing is written (one transaction).
    async fn write<T>(
        &self,
        consent: &ConsentRecord,
        also: impl FnOnce(&ConsentRecord) -> Result<T, StoreError>,
    ) -> Result<(ConsentRecord, T), StoreError> {
        {
            let mut failing = self.failing_updates.lock().unwrap();
            if let Some(at) = failing.iter().position(|(id, _)| id == &consent.consent_id) {
                if failing[at].1 == 0 {
                    failing.remove(at);
                    return Err(injected());
                }
                failing[at].1 -= 1;
            }
        }
        let hook = {
            let mut slot = self.hook.lock().unwrap();
            match slot.take() {
                Some((id, hook)) if id == consent.consent_id => Some(hook),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        let mut items = self.items.lock().unwrap();
        if let Some(hook) = hook {
            hook(&mut items);
        }
        let key = (consent.user_id.clone(), consent.consent_id.clone());
        let stored = items.get(&key).ok_or(StoreError::NotFound)?;
        if stored.version != consent.version {
            return Err(StoreError::VersionConflict {
                expected: consent.version,
            });
        }
        let mut written = consent.clone();
        written.version += 1;
        let also = also(&written)?;
        items.insert(key, written.clone());
        Ok((written, also))
    }
}

/// The outbox over a [`MemConsents`] and a [`MemNotifications`]: the consent's versioned
/// write and the notification commit together (under the consents' lock), or neither
/// when either fails (the injected failures of both doubles apply).
pub(crate) struct MemOutbox {
    pub(crate) consents: Arc<MemConsents>,
    pub(crate) notes: Arc<MemNotifications>,
}

#[async_trait]
impl ConsentOutbox for MemOutbox {
    async fn update_with_event(
        &self,
        consent: &ConsentRecord,
        notification: &Notification,
        pending_webhook: bool,
    ) -> Result<(ConsentRecord, bool), StoreError> {
        tokio::task::yield_now().await;
        self.consents
            .write(consent, |_| self.notes.store(notification, pending_webhook))
            .await
    }

    async fn pending_webhooks(
        &self,
        created_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        tokio::task::yield_now().await;
        let pending = self.notes.pending.lock().unwrap().clone();
        Ok(self
            .notes
            .all()
            .into_iter()
            .filter(|n| {
                n.created_at < created_before
                    && pending.contains(&(n.user_id.clone(), n.event_id.clone()))
            })
            .take(limit)
            .collect())
    }
}

#[async_trait]
impl ConsentStore for MemConsents {
    async fn insert(&self, consent: &ConsentRecord) -> Result<(), StoreError> {
        tokio::task::yield_now().await;
        assert_eq!(consent.version, 0);
        {
            let mut failing = self.failing_inserts.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(injected());
            }
        }
        let mut items = self.items.lock().unwrap();
        let key = (consent.user_id.clone(), consent.consent_id.clone());
        if items.contains_key(&key) {
            return Err(StoreError::AlreadyExists);
        }
        items.insert(key, consent.clone());
        Ok(())
    }

    async fn get(
        &self,
        user: &UserId,
        id: &ConsentId,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        tokio::task::yield_now().await;
        Ok(self
            .items
            .lock()
            .unwrap()
            .get(&(user.clone(), id.clone()))
            .cloned())
    }

    async fn list_for_user(&self, user: &UserId) -> Result<Vec<ConsentRecord>, StoreError> {
        Ok(self
            .items
            .lock()
            .unwrap()
            .values()
            .filter(|r| &r.user_id == user)
            .cloned()
            .collect())
    }

    async fn update(&self, consent: &ConsentRecord) -> Result<ConsentRecord, StoreError> {
        tokio::task::yield_now().await;
        self.write(consent, |_| Ok(()))
            .await
            .map(|(written, ())| written)
    }

    async fn valid_until_on(&self, day: NaiveDate) -> Result<Vec<ConsentRecord>, StoreError> {
        tokio::task::yield_now().await;
        {
            let mut failing = self.failing_queries.lock().unwrap();
            if let Some(at) = failing.iter().position(|d| d == &day) {
                failing.remove(at);
                return Err(injected());
            }
        }
        Ok(self
            .all()
            .into_iter()
            .filter(|r| r.valid_until == day && r.state == ConsentState::Valid)
            .collect())
    }

    async fn valid_for_health_hour(&self, hour: u32) -> Result<Vec<ConsentRecord>, StoreError> {
        tokio::task::yield_now().await;
        Ok(self
            .all()
            .into_iter()
            .filter(|r| health_hour(&r.consent_id) == hour && r.state == ConsentState::Valid)
            .collect())
    }
}

#[derive(Default)]
pub(crate) struct MemNonces(pub(crate) Mutex<HashSet<String>>);

#[async_trait]
impl NonceStore for MemNonces {
    async fn consume(&self, nonce: &str, _: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self.0.lock().unwrap().insert(nonce.to_owned()))
    }
}

/// A queue recording what was sent; can be told to fail the next sends.
#[derive(Default)]
pub(crate) struct RecordingQueue {
    pub(crate) sent: Mutex<Vec<String>>,
    pub(crate) failing: Mutex<u32>,
}

impl RecordingQueue {
    /// The event ids of the queued webhook messages.
    pub(crate) fn event_ids(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .map(|body| {
                serde_json::from_str::<crate::webhook::WebhookMessage>(body)
                    .unwrap()
                    .event_id
            })
            .collect()
    }
}

#[async_trait]
impl crate::queue::Queue for RecordingQueue {
    async fn send(
        &self,
        body: &str,
        _: std::time::Duration,
    ) -> Result<String, crate::queue::QueueError> {
        let mut failing = self.failing.lock().unwrap();
        if *failing > 0 {
            *failing -= 1;
            return Err(crate::queue::QueueError::Backend("injected".into()));
        }
        self.sent.lock().unwrap().push(body.to_owned());
        Ok("m".into())
    }

    async fn send_batch(
        &self,
        messages: &[crate::queue::OutgoingMessage],
    ) -> Result<(), crate::queue::QueueError> {
        for m in messages {
            self.send(&m.body, m.delay).await?;
        }
        Ok(())
    }
}

/// An inbox storing each event id once; can be told to fail the next put.
#[derive(Default)]
pub(crate) struct MemNotifications {
    items: Mutex<Vec<Notification>>,
    marks: Mutex<HashMap<(UserId, String), WebhookMarks>>,
    /// Events in the pending-webhook index (written by the outbox with the mark, not
    /// marked queued yet).
    pending: Mutex<HashSet<(UserId, String)>>,
    failing_puts: Mutex<u32>,
}

impl MemNotifications {
    pub(crate) fn all(&self) -> Vec<Notification> {
        self.items.lock().unwrap().clone()
    }

    /// The notifications of one kind.
    pub(crate) fn of_kind(&self, kind: &str) -> Vec<Notification> {
        self.all().into_iter().filter(|n| n.kind == kind).collect()
    }

    /// The next put (also the outbox's) fails with a backend error (nothing is stored).
    pub(crate) fn fail_next_put(&self) {
        *self.failing_puts.lock().unwrap() += 1;
    }

    /// Stores the notification unless its event is stored; `true` when new.
    fn store(
        &self,
        notification: &Notification,
        pending_webhook: bool,
    ) -> Result<bool, StoreError> {
        {
            let mut failing = self.failing_puts.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(injected());
            }
        }
        let mut all = self.items.lock().unwrap();
        if all
            .iter()
            .any(|n| n.user_id == notification.user_id && n.event_id == notification.event_id)
        {
            return Ok(false);
        }
        all.push(notification.clone());
        if pending_webhook {
            self.pending
                .lock()
                .unwrap()
                .insert((notification.user_id.clone(), notification.event_id.clone()));
        }
        Ok(true)
    }
}

#[async_trait]
impl NotificationStore for MemNotifications {
    async fn put(&self, notification: &Notification) -> Result<bool, StoreError> {
        tokio::task::yield_now().await;
        self.store(notification, false)
    }

    async fn get_event(
        &self,
        user: &UserId,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let notification = self
            .all()
            .into_iter()
            .find(|n| &n.user_id == user && n.event_id == event_id);
        Ok(notification.map(|notification| StoredEvent {
            notification,
            webhook: self
                .marks
                .lock()
                .unwrap()
                .get(&(user.clone(), event_id.to_owned()))
                .cloned()
                .unwrap_or_default(),
        }))
    }

    async fn mark_webhook(
        &self,
        user: &UserId,
        event_id: &str,
        mark: WebhookMark,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if self.get_event(user, event_id).await?.is_none() {
            return Ok(false);
        }
        let mut marks = self.marks.lock().unwrap();
        let m = marks
            .entry((user.clone(), event_id.to_owned()))
            .or_default();
        let slot = match mark {
            WebhookMark::Queued => {
                self.pending
                    .lock()
                    .unwrap()
                    .remove(&(user.clone(), event_id.to_owned()));
                &mut m.webhook_queued_at
            }
            WebhookMark::Delivered => &mut m.webhook_delivered_at,
            WebhookMark::Failed(why) => {
                if m.webhook_delivered_at.is_some() {
                    return Ok(false);
                }
                m.webhook_failure = Some(why);
                m.webhook_failed_at = Some(at);
                return Ok(true);
            }
        };
        if slot.is_some() {
            return Ok(false);
        }
        *slot = Some(at);
        Ok(true)
    }

    async fn list(&self, user: &UserId, limit: usize) -> Result<Vec<Notification>, StoreError> {
        Ok(self
            .all()
            .into_iter()
            .rev()
            .filter(|n| &n.user_id == user)
            .take(limit)
            .collect())
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Call {
    Create(Box<ConsentRequest>),
    Status(BankConsentId),
    Delete(BankConsentId),
}

/// A bank that records calls and answers as scripted.
pub(crate) struct FakeBank {
    pub(crate) id: BankId,
    calls: Mutex<Vec<Call>>,
    created: AtomicU32,
    pub(crate) create_error: Mutex<Option<BankError>>,
    status: Mutex<Result<ConsentStatus, BankError>>,
    pub(crate) delete_result: Mutex<Result<(), BankError>>,
}

impl FakeBank {
    pub(crate) fn new(id: &str) -> Self {
        Self {
            id: BankId::parse(id).unwrap(),
            calls: Mutex::default(),
            created: AtomicU32::new(0),
            create_error: Mutex::new(None),
            status: Mutex::new(Ok(ConsentStatus::Received)),
            delete_result: Mutex::new(Ok(())),
        }
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub(crate) fn creates(&self) -> Vec<ConsentRequest> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Create(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn deletes(&self) -> Vec<BankConsentId> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Delete(id) => Some(id),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn status_calls(&self) -> usize {
        self.status_ids().len()
    }

    pub(crate) fn status_ids(&self) -> Vec<BankConsentId> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Status(id) => Some(id),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn answer_status(&self, status: Result<ConsentStatus, BankError>) {
        *self.status.lock().unwrap() = status;
    }
}

pub(crate) fn unused() -> BankError {
    BankError::Config("not used in these tests".into())
}

#[async_trait]
impl BankApi for FakeBank {
    fn bank_id(&self) -> &BankId {
        &self.id
    }

    async fn create_consent(&self, request: &ConsentRequest) -> Result<ConsentCreated, BankError> {
        tokio::task::yield_now().await;
        self.calls
            .lock()
            .unwrap()
            .push(Call::Create(Box::new(request.clone())));
        if let Some(error) = self.create_error.lock().unwrap().clone() {
            return Err(error);
        }
        let n = self.created.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(ConsentCreated {
            consent_id: BankConsentId::parse(&format!("{}-bc-{n}", self.id)).unwrap(),
            status: ConsentStatus::Received,
            sca: Some(ScaLink::Redirect(
                Url::parse(&format!("https://{}.bank.example/sca/{n}", self.id)).unwrap(),
            )),
        })
    }

    async fn get_consent(&self, _: &BankConsentId) -> Result<ConsentDetails, BankError> {
        Err(unused())
    }

    async fn consent_status(&self, consent: &BankConsentId) -> Result<ConsentStatus, BankError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Status(consent.clone()));
        self.status.lock().unwrap().clone()
    }

    async fn delete_consent(&self, consent: &BankConsentId) -> Result<(), BankError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Delete(consent.clone()));
        self.delete_result.lock().unwrap().clone()
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

    async fn initiate_payment(&self, _: &PaymentInitiation) -> Result<PaymentInitiated, BankError> {
        Err(unused())
    }

    async fn payment_status(
        &self,
        _: PaymentProduct,
        _: &BankPaymentId,
    ) -> Result<TransactionStatus, BankError> {
        Err(unused())
    }
}

pub(crate) struct FixedClock(pub(crate) Mutex<DateTime<Utc>>);

impl FixedClock {
    pub(crate) fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

// ---- harness ---------------------------------------------------------------------

pub(crate) const REGISTRY: &str = r#"{"banks":[
    {"id":"lt-alpha","name":"Alpha Bank","country":"LT","baseUrl":"http://127.0.0.1:8080/lt-alpha",
     "paymentProducts":["sepa-credit-transfers"],"maxConsentDays":90,"frequencyPerDay":4},
    {"id":"lv-beta","name":"Beta Bank","country":"LV","baseUrl":"http://127.0.0.1:8080/lv-beta",
     "paymentProducts":["sepa-credit-transfers"],"maxConsentDays":180,"frequencyPerDay":2},
    {"id":"ee-gamma","name":"Gamma Bank","country":"EE","baseUrl":"http://127.0.0.1:8080/ee-gamma",
     "paymentProducts":["sepa-credit-transfers"]}]}"#;

pub(crate) const SECRET: &[u8] = b"test secret, at least thirty-two bytes long";

pub(crate) struct Harness {
    pub(crate) svc: Arc<Connections>,
    pub(crate) consents: Arc<MemConsents>,
    pub(crate) nonces: Arc<MemNonces>,
    pub(crate) notes: Arc<MemNotifications>,
    /// What was queued for the webhook sender.
    pub(crate) webhooks: Arc<RecordingQueue>,
    pub(crate) alpha: Arc<FakeBank>,
    pub(crate) beta: Arc<FakeBank>,
    pub(crate) clock: Arc<FixedClock>,
}

pub(crate) fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, 9, 30, 0).unwrap()
}

pub(crate) fn config() -> ConnectionsConfig {
    ConnectionsConfig::from_lookup(|name| match name {
        "REDIRECT_ALLOW_LIST" => Some("https://app.example, http://127.0.0.1:3000".into()),
        _ => None,
    })
    .unwrap()
}

pub(crate) fn harness() -> Harness {
    let consents = Arc::new(MemConsents::default());
    let nonces = Arc::new(MemNonces::default());
    let notes = Arc::new(MemNotifications::default());
    let webhooks = Arc::new(RecordingQueue::default());
    let alpha = Arc::new(FakeBank::new("lt-alpha"));
    let beta = Arc::new(FakeBank::new("lv-beta"));
    let clock = Arc::new(FixedClock(Mutex::new(start())));
    let mut banks: HashMap<BankId, Arc<dyn BankApi>> = HashMap::new();
    banks.insert(alpha.id.clone(), alpha.clone());
    banks.insert(beta.id.clone(), beta.clone());
    let svc = Arc::new(Connections::new(ConnectionsDeps {
        consents: consents.clone(),
        outbox: Arc::new(MemOutbox {
            consents: consents.clone(),
            notes: notes.clone(),
        }),
        nonces: nonces.clone(),
        notifications: notes.clone(),
        webhooks: Some(webhooks.clone()),
        bank_data: None,
        banks,
        registry: BankRegistry::from_json_with(REGISTRY, |_| None).unwrap(),
        signer: StateSigner::new(SECRET).unwrap(),
        config: config(),
        clock: clock.clone(),
    }));
    Harness {
        svc,
        consents,
        nonces,
        notes,
        webhooks,
        alpha,
        beta,
        clock,
    }
}

pub(crate) fn alice() -> UserId {
    UserId::parse("auth0|alice").unwrap()
}

pub(crate) fn bob() -> UserId {
    UserId::parse("auth0|bob").unwrap()
}

pub(crate) fn ip() -> IpAddr {
    "203.0.113.7".parse().unwrap()
}

pub(crate) fn query_of(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// The query the bank sends the browser back with, from the last consent creation.
pub(crate) fn ok_query(bank: &FakeBank) -> HashMap<String, String> {
    query_of(&bank.creates().last().unwrap().redirect.ok)
}

pub(crate) fn nok_query(bank: &FakeBank) -> HashMap<String, String> {
    query_of(
        bank.creates()
            .last()
            .unwrap()
            .redirect
            .nok
            .as_ref()
            .unwrap(),
    )
}
