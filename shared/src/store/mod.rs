//! Persistence ports and their DynamoDB adapters.
//!
//! Every state change is a conditional write on a `version` attribute: a writer that read
//! version N can only replace version N, so concurrent or repeated Lambdas can never
//! double-apply a change. Keys and access patterns: docs/data-model.md.

pub mod dynamo;

use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::bank::{ConsentAccess, PaymentProduct};
use crate::domain::{
    BankConsentId, BankId, BankPaymentId, ConsentId, ConsentState, Iban, Money, NotificationId,
    PaymentId, RequestId, TransactionStatus, UserId,
};

pub use dynamo::{
    DynamoConsentStore, DynamoNonceStore, DynamoNotificationStore, DynamoPaymentStore,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An insert found the item already there.
    #[error("the item already exists")]
    AlreadyExists,
    /// A conditional update lost a race: someone else wrote a newer version first.
    #[error("the item changed since it was read (expected version {expected})")]
    VersionConflict { expected: u64 },
    /// An update targeted an item that does not exist.
    #[error("the item does not exist")]
    NotFound,
    /// A stored item no longer matches our types.
    #[error("stored item is corrupt: {0}")]
    Corrupt(String),
    /// DynamoDB itself failed (throttling, network, permissions).
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// One consent (one user at one bank), ours and the bank's view of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsentRecord {
    pub user_id: UserId,
    pub consent_id: ConsentId,
    pub bank_id: BankId,
    /// Set once the bank has created it.
    pub bank_consent_id: Option<BankConsentId>,
    pub state: ConsentState,
    pub access: ConsentAccess,
    pub valid_until: NaiveDate,
    pub frequency_per_day: u32,
    pub recurring: bool,
    /// The consent this one renews.
    pub renewal_of: Option<ConsentId>,
    /// The consent created to renew this one.
    pub renewed_by: Option<ConsentId>,
    /// Whether the user has been notified of the renewal in `renewed_by` (the last step of
    /// a renewal). Until then the consent stays in the renewal index, so a run that crashed
    /// halfway is resumed by the next one. Reset when a new renewal replaces a failed one.
    #[serde(default)]
    pub renewal_notified: bool,
    /// On a renewal still waiting for its consent at the bank: until when one runner holds
    /// the exclusive right to create that consent (see `services::renewal`).
    #[serde(default)]
    pub lease_until: Option<DateTime<Utc>>,
    /// The PSU's IP address when the consent was requested (`PSU-IP-Address`), sent again
    /// when the renewal job asks the bank for this consent's renewal without the PSU.
    /// Absent on items written before it existed.
    #[serde(default)]
    pub psu_ip: Option<IpAddr>,
    /// The bank's SCA link (`scaRedirect` / `scaOAuth`), kept so the app can show it again
    /// while the consent waits for authorisation. Absent on items written before it existed.
    #[serde(default)]
    pub sca_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every write; the condition of every update.
    pub version: u64,
}

impl ConsentRecord {
    /// Whether the renewal job must look at this consent: it is valid and its renewal has
    /// not been carried through to the user's notification yet (not started, or started by
    /// a run that crashed halfway). The renewal job keeps only these of the valid consents
    /// it reads from the `ByValidUntil` index.
    pub fn renewal_outstanding(&self) -> bool {
        self.state == ConsentState::Valid && !self.renewal_notified
    }
}

/// Number of partitions one day of the `ByValidUntil` index (and one hour of the
/// `ByHealthHour` index) is spread over, so that a popular day is not one hot partition.
pub const CONSENT_INDEX_SHARDS: u32 = 8;

/// FNV-1a (64 bit) over the consent id's bytes: stable across processes, releases and Rust
/// versions, so an id's shard and health hour never move.
fn fnv1a(id: &ConsentId) -> u64 {
    id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The index shard of a consent (`0..CONSENT_INDEX_SHARDS`).
pub fn index_shard(id: &ConsentId) -> u32 {
    (fnv1a(id) % u64::from(CONSENT_INDEX_SHARDS)) as u32
}

/// The hour of the day (UTC, `0..24`) in which the health job asks the bank about this
/// consent: one status call per consent per day, the consents spread over the 24 hours.
pub fn health_hour(id: &ConsentId) -> u32 {
    (fnv1a(id) % 24) as u32
}

/// One status observation of a payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    pub status: TransactionStatus,
    pub at: DateTime<Utc>,
}

/// One single payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRecord {
    pub user_id: UserId,
    pub payment_id: PaymentId,
    pub bank_id: BankId,
    pub product: PaymentProduct,
    /// The `X-Request-ID` of the initiation, fixed when the payment is recorded, so every
    /// retry of the initiation is the same request to the bank.
    pub request_id: RequestId,
    pub debtor: Iban,
    pub creditor: Iban,
    pub creditor_name: String,
    pub amount: Money,
    pub remittance: Option<String>,
    /// Set once the bank accepted the initiation.
    pub bank_payment_id: Option<BankPaymentId>,
    /// `None` until the bank answered the initiation.
    pub status: Option<TransactionStatus>,
    pub sca_url: Option<String>,
    pub history: Vec<StatusEntry>,
    /// Generation of the live status-polling chain; older messages are dropped.
    pub poll_generation: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

#[async_trait]
pub trait ConsentStore: Send + Sync {
    /// Stores a new consent (its `version` must be 0); `AlreadyExists` if the id is taken.
    async fn insert(&self, consent: &ConsentRecord) -> Result<(), StoreError>;
    async fn get(&self, user: &UserId, id: &ConsentId)
    -> Result<Option<ConsentRecord>, StoreError>;
    /// The user's consents at every bank.
    async fn list_for_user(&self, user: &UserId) -> Result<Vec<ConsentRecord>, StoreError>;
    /// Replaces the stored version `consent.version` with `consent` at `version + 1` and
    /// returns what was written; `VersionConflict` if the stored version differs.
    async fn update(&self, consent: &ConsentRecord) -> Result<ConsentRecord, StoreError>;
    /// The valid consents whose `validUntil` is `day` (index `ByValidUntil`). The renewal
    /// job keeps those whose renewal is outstanding, the health job expires them once the
    /// day has passed.
    async fn valid_until_on(&self, day: NaiveDate) -> Result<Vec<ConsentRecord>, StoreError>;
    /// The valid consents whose [`health_hour`] is `hour` (index `ByHealthHour`), every
    /// shard and page: the health job asks their banks for their status in that hour.
    async fn valid_for_health_hour(&self, hour: u32) -> Result<Vec<ConsentRecord>, StoreError>;
}

#[async_trait]
pub trait PaymentStore: Send + Sync {
    /// Stores a new payment (its `version` must be 0); `AlreadyExists` if the id is taken.
    async fn insert(&self, payment: &PaymentRecord) -> Result<(), StoreError>;
    async fn get(&self, user: &UserId, id: &PaymentId)
    -> Result<Option<PaymentRecord>, StoreError>;
    async fn list_for_user(&self, user: &UserId) -> Result<Vec<PaymentRecord>, StoreError>;
    /// Conditional replace, as [`ConsentStore::update`].
    async fn update(&self, payment: &PaymentRecord) -> Result<PaymentRecord, StoreError>;
}

/// Single-use values (the nonce of a signed SCA `state`): the first `consume` of a value
/// wins, every later one is refused, for as long as the value could still be presented.
#[async_trait]
pub trait NonceStore: Send + Sync {
    /// `true` the first time `nonce` is consumed, `false` ever after (until `expires_at`
    /// has passed, when the signed value carrying it is no longer accepted anyway).
    async fn consume(&self, nonce: &str, expires_at: DateTime<Utc>) -> Result<bool, StoreError>;
}

/// One message in a user's in-app inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub user_id: UserId,
    pub notification_id: NotificationId,
    /// What happened, once: the same event id is stored (and sent) only once.
    pub event_id: String,
    /// Machine-readable kind, e.g. `consent.valid`, `consent.renewal_required`.
    pub kind: String,
    pub title: String,
    pub message: String,
    /// Ids and links the app needs (connectionId, authUrl, ...).
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Webhook bookkeeping of one event, kept next to its notification (on the event's guard
/// item): set once each, by conditional writes (see `crate::webhook`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookMarks {
    /// The webhook message for this event was accepted by the webhook queue.
    #[serde(default)]
    pub webhook_queued_at: Option<DateTime<Utc>>,
    /// The operator's endpoint answered 2xx.
    #[serde(default)]
    pub webhook_delivered_at: Option<DateTime<Utc>>,
    /// The endpoint refused the webhook for good (a 4xx other than 408/429).
    #[serde(default)]
    pub webhook_failed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub webhook_failure: Option<String>,
}

/// One stored event: its notification and its webhook bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub notification: Notification,
    pub webhook: WebhookMarks,
}

/// A webhook marker to set on an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookMark {
    /// `webhookQueuedAt`, unless already set.
    Queued,
    /// `webhookDeliveredAt`, unless already set.
    Delivered,
    /// `webhookFailedAt` + `webhookFailure`, unless the event was delivered.
    Failed(String),
}

#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Stores the notification unless one with the same `event_id` exists for the user;
    /// `true` when it was new.
    async fn put(&self, notification: &Notification) -> Result<bool, StoreError>;
    /// The user's notifications, newest first, at most `limit`.
    async fn list(&self, user: &UserId, limit: usize) -> Result<Vec<Notification>, StoreError>;
    /// The stored event `event_id` of the user (strongly consistent), `None` if unknown.
    async fn get_event(
        &self,
        user: &UserId,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError>;
    /// Sets a webhook marker with a conditional write; `false` when the condition failed
    /// (already set, delivered already, or no such event).
    async fn mark_webhook(
        &self,
        user: &UserId,
        event_id: &str,
        mark: WebhookMark,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}
