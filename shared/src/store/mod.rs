//! Persistence ports and their DynamoDB adapters.
//!
//! Every state change is a conditional write on a `version` attribute: a writer that read
//! version N can only replace version N, so concurrent or repeated Lambdas can never
//! double-apply a change. Keys and access patterns: docs/data-model.md.

pub mod bank_data;
pub mod dynamo;

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::bank::{ConsentAccess, PaymentProduct};
use crate::domain::{
    BankConsentId, BankId, BankPaymentId, BatchId, ConsentId, ConsentState, Iban, Money,
    NotificationId, PaymentId, RequestId, TransactionStatus, UserId,
};

pub use bank_data::{
    AccessKind, AccountsSnapshot, BalancesSnapshot, BankDataStore, DynamoBankDataStore, Snapshot,
    SnapshotMeta, StoredTransaction, TransactionsMeta, UserData,
};
pub use dynamo::{
    DynamoConsentOutbox, DynamoConsentStore, DynamoIdempotencyStore, DynamoNonceStore,
    DynamoNotificationStore, DynamoPaymentStore,
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
    fnv1a_str(id.as_str())
}

fn fnv1a_str(value: &str) -> u64 {
    value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The shard (`0..CONSENT_INDEX_SHARDS`) of an event awaiting its webhook in the
/// notifications table's `ByPendingWebhook` index (stable, like [`index_shard`]).
pub fn event_shard(event_id: &str) -> u32 {
    (fnv1a_str(event_id) % u64::from(CONSENT_INDEX_SHARDS)) as u32
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

/// Why a payment did not reach (or was refused by) the bank at initiation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentFailure {
    /// [`crate::bank::BankError::code`], e.g. `FORMAT_ERROR`, `BANK_UNAVAILABLE`.
    pub code: String,
    /// The same request may succeed later (bank down, 429, timeout): a retry with the same
    /// `Idempotency-Key` continues this payment with the same `X-Request-ID`.
    pub retryable: bool,
    pub at: DateTime<Utc>,
}

/// The status-polling chain of a payment: at most one message is live, the one whose
/// generation equals `generation` (see `services::payments`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollState {
    /// The generation of the one live poll message; every other message is dropped.
    pub generation: u64,
    /// Whether the live message was handed to the queue (a step that crashed between
    /// advancing the generation and sending is resent by the previous message's redelivery).
    pub sent: bool,
    /// When the current chain started (initiation, or the SCA callback).
    pub started_at: Option<DateTime<Utc>>,
    /// Consecutive bank errors (drives the backoff); reset by an answer.
    pub errors: u32,
    /// Bank status calls made by the chain (for operators and the schedule test).
    pub bank_calls: u32,
    /// Polling gave up (24 h without a final status).
    pub gave_up: bool,
    /// The chain ended because the initiation failed: nothing to poll until a retry of
    /// the initiation starts a new chain.
    #[serde(default)]
    pub stopped: bool,
}

/// One single payment (or one item of a bulk batch).
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
    /// The PSU's IP address at initiation (`PSU-IP-Address`), sent again if the initiation
    /// has to be repeated (same `X-Request-ID`).
    #[serde(default)]
    pub psu_ip: Option<IpAddr>,
    /// Where the SCA callback sends the browser afterwards (allow-listed when recorded).
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// While set and in the future, one caller is at the bank initiating this payment; a
    /// poller finding it expired without a bank payment id repeats the initiation.
    #[serde(default)]
    pub lease_until: Option<DateTime<Utc>>,
    /// The initiation failed (see [`PaymentFailure`]).
    #[serde(default)]
    pub failure: Option<PaymentFailure>,
    /// The SCA callback came back for this payment.
    #[serde(default)]
    pub sca_returned: bool,
    #[serde(default)]
    pub poll: PollState,
    /// The user was notified of the final status (or of polling giving up).
    #[serde(default)]
    pub outcome_notified: bool,
    /// The bulk batch this payment is an item of.
    #[serde(default)]
    pub batch_id: Option<BatchId>,
    /// Its position in the batch (0-based).
    #[serde(default)]
    pub batch_index: Option<u32>,
    /// A batch item waiting for the bulk worker (not yet claimed).
    #[serde(default)]
    pub queued: bool,
    /// `endToEndIdentification` sent to the bank.
    #[serde(default)]
    pub end_to_end_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

/// Where a payment stands, in the words of our API (`state`); derived from the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// A batch item waiting for the bulk worker (or for its retry).
    Queued,
    /// Recorded; the bank has not answered the initiation yet.
    Initiating,
    /// The bank refused the initiation, or could not be reached (`failure` says which).
    Failed,
    /// The bank accepted it; the user must authorise it (SCA link).
    AwaitingAuthorisation,
    /// Authorised or accepted, not final yet.
    InProgress,
    /// `ACSC` / `ACCC`.
    Completed,
    /// `RJCT` / `CANC`.
    Rejected,
    /// Polling gave up without a final status.
    Unknown,
}

impl PaymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Queued => "queued",
            PaymentState::Initiating => "initiating",
            PaymentState::Failed => "failed",
            PaymentState::AwaitingAuthorisation => "awaiting_authorisation",
            PaymentState::InProgress => "in_progress",
            PaymentState::Completed => "completed",
            PaymentState::Rejected => "rejected",
            PaymentState::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            PaymentState::Queued,
            PaymentState::Initiating,
            PaymentState::Failed,
            PaymentState::AwaitingAuthorisation,
            PaymentState::InProgress,
            PaymentState::Completed,
            PaymentState::Rejected,
            PaymentState::Unknown,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

impl PaymentRecord {
    /// Whether the bank reported a final status.
    pub fn is_final(&self) -> bool {
        self.status.is_some_and(|s| s.is_final())
    }

    pub fn state(&self) -> PaymentState {
        match (self.status, &self.failure) {
            (Some(status), _) if status.is_final() && status.is_rejected() => {
                PaymentState::Rejected
            }
            (Some(status), _) if status.is_final() => PaymentState::Completed,
            (Some(_), _) if self.poll.gave_up => PaymentState::Unknown,
            (Some(TransactionStatus::Rcvd), _) if self.sca_url.is_some() && !self.sca_returned => {
                PaymentState::AwaitingAuthorisation
            }
            (Some(_), _) => PaymentState::InProgress,
            // A batch item whose attempt failed transiently goes back to the queue (SQS
            // retries it); a single payment waits for its caller's retry.
            (None, Some(f)) if f.retryable && self.batch_id.is_some() => PaymentState::Queued,
            (None, Some(_)) => PaymentState::Failed,
            (None, None) if self.queued => PaymentState::Queued,
            (None, None) => PaymentState::Initiating,
        }
    }
}

impl PaymentState {
    /// Whether nothing will change any more (for batch totals).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PaymentState::Completed
                | PaymentState::Rejected
                | PaymentState::Failed
                | PaymentState::Unknown
        )
    }
}

/// One bulk batch: what was asked, and how far its acceptance got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    pub user_id: UserId,
    pub batch_id: BatchId,
    pub bank_id: BankId,
    pub product: PaymentProduct,
    pub debtor: Iban,
    pub total: u32,
    /// Number of [`BatchChunk`]s the items are stored in.
    #[serde(default)]
    pub chunks: u32,
    /// Where the user comes back to after an item's SCA.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// The user's IP address at acceptance (sent to the bank with every item).
    #[serde(default)]
    pub psu_ip: Option<IpAddr>,
    /// Every chunk is stored (chunk messages may be sent from now on).
    pub chunks_written: bool,
    /// Every chunk's message was accepted by the bulk queue.
    pub enqueued: bool,
    /// The user was told that every item is final.
    #[serde(default)]
    pub done_notified: bool,
    /// The batch watch's chain (one live message, as a payment's poll chain): only the
    /// message of this generation looks; every other is dropped.
    #[serde(default)]
    pub watch_generation: u64,
    /// The message of `watch_generation` is due but not known to be sent (a step wrote
    /// the generation, then died before or at its send).
    #[serde(default)]
    pub watch_unsent: bool,
    /// When the watch last moved its generation.
    #[serde(default)]
    pub watch_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub version: u64,
}

/// One item of a batch as it was asked for (validated, canonical form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemSpec {
    pub amount: String,
    pub currency: String,
    pub creditor: String,
    pub creditor_name: String,
    pub remittance: Option<String>,
    pub end_to_end_id: Option<String>,
}

/// Up to [`BATCH_CHUNK_ITEMS`] consecutive items of a batch, stored at acceptance. The
/// bulk worker expands a chunk into one payment record and one queue message per item,
/// so accepting a batch costs a few writes and sends whatever its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchChunk {
    pub user_id: UserId,
    pub batch_id: BatchId,
    /// 0-based chunk number.
    pub chunk: u32,
    /// Batch index of `items[0]`.
    pub first_index: u32,
    pub items: Vec<BatchItemSpec>,
    /// Every item is stored and its message sent.
    pub expanded: bool,
    /// While in the future, one delivery of the chunk's message is expanding it; another
    /// delivery looks again after it.
    #[serde(default)]
    pub lease_until: Option<DateTime<Utc>>,
    pub version: u64,
}

/// Most items in one [`BatchChunk`] (a chunk stays far below DynamoDB's item size limit).
pub const BATCH_CHUNK_ITEMS: usize = 100;

/// A page of a user's payments, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentPage {
    pub payments: Vec<PaymentRecord>,
    /// The last payment id of this page when more may follow.
    pub next: Option<PaymentId>,
}

/// The answer stored for an `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

/// Where the request of an `Idempotency-Key` stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyState {
    /// A request holds the key until `locked_until`.
    InFlight,
    /// The last attempt ended in a transient failure; a retry continues the same payment.
    Retryable,
    /// The answer is final and is replayed for every retry.
    Done,
}

/// One `Idempotency-Key` of one user (IETF httpapi idempotency-key semantics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyRecord {
    pub user_id: UserId,
    /// SHA-256 of the key (hex): the key itself never reaches a storage key or a log.
    pub key_hash: String,
    /// SHA-256 of the canonical request body.
    pub fingerprint: String,
    /// The payment (or batch) this key created.
    pub resource_id: String,
    pub state: IdempotencyState,
    pub locked_until: DateTime<Utc>,
    pub response: Option<StoredResponse>,
    pub created_at: DateTime<Utc>,
    /// Kept at least this long; readers treat it as absent afterwards (TTL removes it a
    /// day later).
    pub keep_until: DateTime<Utc>,
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

/// The transactional outbox of consent state changes: a consent's versioned write and the
/// notification announcing it commit together or not at all, so a state change is never
/// stored without its notification (docs/data-model.md, "Outbox").
#[async_trait]
pub trait ConsentOutbox: Send + Sync {
    /// Writes `consent` as [`ConsentStore::update`] does (stored version `consent.version`
    /// replaced by `version + 1`) and, in the same transaction, stores `notification` once
    /// per event id, as [`NotificationStore::put`] does. Returns what was written and
    /// whether the notification was new: when an event with the same id is stored already,
    /// the consent is still written and the stored event is kept (`false`).
    ///
    /// `pending_webhook`: the event is also entered in the pending-webhook index until its
    /// webhook is marked queued ([`WebhookMark::Queued`]), so [`Self::pending_webhooks`]
    /// finds it if queueing it fails. Pass `true` only when webhooks are configured.
    ///
    /// # Errors
    /// `VersionConflict` / `NotFound` as [`ConsentStore::update`] (nothing written);
    /// `Backend` when either table failed (nothing written).
    async fn update_with_event(
        &self,
        consent: &ConsentRecord,
        notification: &Notification,
        pending_webhook: bool,
    ) -> Result<(ConsentRecord, bool), StoreError>;

    /// Events written with `pending_webhook` whose webhook was not marked queued and that
    /// were created before `created_before`, oldest first per shard, at most `limit`.
    /// Read from an eventually consistent index: callers re-read each event.
    async fn pending_webhooks(
        &self,
        created_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError>;
}

#[async_trait]
pub trait PaymentStore: Send + Sync {
    /// Stores a new payment (its `version` must be 0); `AlreadyExists` if the id is taken.
    async fn insert(&self, payment: &PaymentRecord) -> Result<(), StoreError>;
    async fn get(&self, user: &UserId, id: &PaymentId)
    -> Result<Option<PaymentRecord>, StoreError>;
    async fn list_for_user(&self, user: &UserId) -> Result<Vec<PaymentRecord>, StoreError>;
    /// Up to `limit` of the user's payments, newest first, after `after` (a page's `next`),
    /// only those in `state` if given.
    async fn list_page(
        &self,
        user: &UserId,
        state: Option<PaymentState>,
        after: Option<&PaymentId>,
        limit: usize,
    ) -> Result<PaymentPage, StoreError>;
    /// Conditional replace, as [`ConsentStore::update`].
    async fn update(&self, payment: &PaymentRecord) -> Result<PaymentRecord, StoreError>;
    /// Stores those of `payments` (new batch items, version 0) whose id is not taken yet;
    /// an existing payment is left as it is, whatever became of it. Answers, for each
    /// payment, whether this call stored it.
    async fn insert_many(&self, payments: &[PaymentRecord]) -> Result<Vec<bool>, StoreError> {
        let mut stored = Vec::with_capacity(payments.len());
        for p in payments {
            match self.insert(p).await {
                Ok(()) => stored.push(true),
                Err(StoreError::AlreadyExists) => stored.push(false),
                Err(e) => return Err(e),
            }
        }
        Ok(stored)
    }
    /// Up to `limit` items of a batch in index order from index `from` (index `ByGsi1`),
    /// and whether more follow.
    async fn batch_items_page(
        &self,
        user: &UserId,
        batch: &BatchId,
        from: u32,
        limit: usize,
    ) -> Result<(Vec<PaymentRecord>, bool), StoreError>;
    /// How many of a batch's stored items are in each state other than
    /// [`PaymentState::Queued`] (the rest of the batch's total is queued). Derived from
    /// the items themselves (their state only), so retries and races cannot make the
    /// counts drift.
    async fn batch_counts(
        &self,
        user: &UserId,
        batch: &BatchId,
    ) -> Result<BTreeMap<PaymentState, u32>, StoreError>;
    async fn insert_batch(&self, batch: &BatchRecord) -> Result<(), StoreError>;
    async fn get_batch(
        &self,
        user: &UserId,
        batch: &BatchId,
    ) -> Result<Option<BatchRecord>, StoreError>;
    async fn update_batch(&self, batch: &BatchRecord) -> Result<BatchRecord, StoreError>;
    /// Stores a batch's chunks (unconditionally: only before any chunk message was sent).
    async fn put_chunks(&self, chunks: &[BatchChunk]) -> Result<(), StoreError>;
    async fn get_chunk(
        &self,
        user: &UserId,
        batch: &BatchId,
        chunk: u32,
    ) -> Result<Option<BatchChunk>, StoreError>;
    /// Conditional replace on `version`, as [`ConsentStore::update`].
    async fn update_chunk(&self, chunk: &BatchChunk) -> Result<BatchChunk, StoreError>;
    /// Takes one initiation from `bank`'s budget for the current second (atomic counter
    /// shared by every worker): `false` when `limit` were taken already.
    async fn take_rate_slot(
        &self,
        bank: &BankId,
        second: i64,
        limit: u32,
    ) -> Result<bool, StoreError>;
    /// Takes up to `want` initiations from `bank`'s budget for `second` at once (as many
    /// as are left, possibly 0): what a process hands out to its own waiters, so that
    /// waiting costs one store call per second per process rather than one per payment.
    async fn take_rate_slots(
        &self,
        bank: &BankId,
        second: i64,
        want: u32,
        limit: u32,
    ) -> Result<u32, StoreError> {
        let mut taken = 0;
        while taken < want && self.take_rate_slot(bank, second, limit).await? {
            taken += 1;
        }
        Ok(taken)
    }
}

/// `Idempotency-Key` records, per user.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Stores a new record (version 0); `AlreadyExists` if the key is taken (even by an
    /// expired record, which the caller then replaces with [`Self::update`]).
    async fn insert(&self, record: &IdempotencyRecord) -> Result<(), StoreError>;
    async fn get(
        &self,
        user: &UserId,
        key_hash: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Conditional replace on `version`, as [`ConsentStore::update`].
    async fn update(&self, record: &IdempotencyRecord) -> Result<IdempotencyRecord, StoreError>;
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
