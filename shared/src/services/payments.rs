//! Single payments: idempotent initiation, the SCA callback's payment half, and status
//! polling over a queue (no timer lives in memory).
//!
//! Money-safety decisions worth knowing:
//! - **Idempotency-Key** (IETF httpapi draft semantics), scoped per user and kept at least
//!   [`IDEMPOTENCY_KEEP_HOURS`] hours: the first request claims the key with a conditional
//!   insert (and a lock); the same key with the same body replays the stored answer, with
//!   another body is a 422, while the first is in flight a 409. A transient bank failure
//!   leaves the key retryable: the retry continues *the same payment*.
//! - **Recorded before the bank is called.** The payment record, with its `X-Request-ID`
//!   fixed, exists before the bank sees anything, so every retry of the initiation (the
//!   API's retry, or the poller's recovery) is the same request, and a bank that
//!   de-duplicates by `X-Request-ID` creates one payment. The bank's answer is recorded by
//!   a conditional write.
//! - **Crash between the bank call and the record:** the first poll message is queued
//!   *before* the bank call. When it finds the payment without a bank payment id after the
//!   initiation lease has passed, it repeats the initiation with the same `X-Request-ID`
//!   and records the bank's (de-duplicated) answer. A retry with the same key does the same.
//!   Nothing moves without the user's SCA, so a payment that the bank knows and we learn of
//!   late cannot move money by itself.
//! - **One live polling chain.** The record holds the generation of the one live poll
//!   message; a message of any other generation is dropped (duplicates, stale chains, late
//!   deliveries). Each step advances the generation with a conditional write *before* it
//!   sends the next message, so two copies of one message cannot both continue the chain.
//!   A step that crashed between that write and the send is completed by the redelivery of
//!   its own message (after the visibility timeout), which resends the missing message.
//!   The SCA callback starts a new generation (an immediate poll), which retires the old
//!   chain. Statuses only move forward ([`advance`]); a final one is never overwritten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};
use url::Url;
use uuid::Uuid;

use super::connections::{CallbackOutcome, ConnectionsConfig, try_again_page};
use super::{Clock, ServiceError};
use crate::bank::registry::{BankConfig, BankRegistry};
use crate::bank::{
    BankApi, BankError, PaymentInitiated, PaymentInitiation, PaymentProduct, RedirectUris,
};
use crate::domain::error::echo;
use crate::domain::polling::{NextPoll, PollSchedule};
use crate::domain::{
    BankId, Currency, Iban, Money, NotificationId, PaymentId, RequestId, StatusChange,
    TransactionStatus, UserId, advance,
};
use crate::http::{FieldError, Problem};
use crate::queue::Queue;
use crate::sca_state::{ScaState, StateSigner, StateSubject};
use crate::store::{
    IdempotencyRecord, IdempotencyState, IdempotencyStore, Notification, NotificationStore,
    PaymentFailure, PaymentPage, PaymentRecord, PaymentState, PaymentStore, StatusEntry,
    StoreError, StoredResponse,
};
use crate::webhook::Notifier;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;
/// How long an `Idempotency-Key` is remembered (the draft asks for at least 24 hours).
pub const IDEMPOTENCY_KEEP_HOURS: i64 = 48;
/// Berlin Group `Max70Text` for the creditor name.
pub const MAX_CREDITOR_NAME: usize = 70;
/// Berlin Group `Max140Text` for the unstructured remittance information.
pub const MAX_REMITTANCE: usize = 140;
/// Env: the payment status queue's URL.
pub const STATUS_QUEUE_URL_ENV: &str = "PAYMENT_STATUS_QUEUE_URL";
/// Env: the polling schedule, `delay:until` pairs in seconds (see [`PollSchedule::parse`]).
pub const POLL_SCHEDULE_ENV: &str = "PAYMENT_POLL_SCHEDULE";
/// Env: how often (seconds) a batch item waiting for its SCA is polled at most.
pub const BATCH_SCA_WAIT_ENV: &str = "PAYMENT_BATCH_SCA_WAIT_SECS";
/// Env: seconds between two looks at an unfinished batch (default 60).
pub const BATCH_WATCH_ENV: &str = "PAYMENT_BATCH_WATCH_SECS";
/// Largest page of `GET /v1/payments`.
pub const MAX_PAGE: usize = 100;

const BODY_FIELDS: [&str; 8] = [
    "bankId",
    "debtorAccount",
    "instructedAmount",
    "creditorAccount",
    "creditorName",
    "remittanceInformationUnstructured",
    "paymentProduct",
    "redirectUrl",
];

/// Settings of the payments service.
#[derive(Clone, Debug)]
pub struct PaymentsConfig {
    /// Callback URL, redirect allow-list and state lifetime (shared with connections).
    pub links: ConnectionsConfig,
    pub schedule: PollSchedule,
    /// How long a request holds its `Idempotency-Key` (longer than the function timeout).
    pub key_lock: Duration,
    /// How long an initiation at the bank is left to its caller before the poller repeats
    /// it (longer than the function timeout).
    pub initiation_lease: Duration,
    /// After this long without the next poll message being marked sent, a redelivered
    /// message of the previous step resends it.
    pub resend_after: Duration,
    /// A batch item waiting for its SCA is polled at most this often (its SCA callback
    /// starts an immediate poll anyway), so a thousand items awaiting SCA do not poll the
    /// bank every 5 seconds.
    pub batch_sca_wait: StdDuration,
    /// How often an unfinished batch is looked at for its completion notification.
    pub batch_watch: StdDuration,
}

impl PaymentsConfig {
    /// From the environment ([`ConnectionsConfig::from_env`] and [`POLL_SCHEDULE_ENV`]).
    ///
    /// # Errors
    /// A message naming the variable that is not usable.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`] with an explicit lookup.
    ///
    /// # Errors
    /// A message naming the variable that is not usable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let batch_sca_wait = match lookup(BATCH_SCA_WAIT_ENV).filter(|s| !s.trim().is_empty()) {
            Some(text) => StdDuration::from_secs(
                text.trim()
                    .parse()
                    .map_err(|_| format!("{BATCH_SCA_WAIT_ENV} must be a whole number"))?,
            ),
            None => StdDuration::from_secs(60),
        };
        let batch_watch = match lookup(BATCH_WATCH_ENV).filter(|s| !s.trim().is_empty()) {
            Some(text) => StdDuration::from_secs(
                text.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=900).contains(s))
                    .ok_or_else(|| format!("{BATCH_WATCH_ENV} must be 1 to 900 seconds"))?,
            ),
            None => StdDuration::from_secs(60),
        };
        let schedule = match lookup(POLL_SCHEDULE_ENV).filter(|s| !s.trim().is_empty()) {
            Some(text) => {
                PollSchedule::parse(&text).map_err(|e| format!("{POLL_SCHEDULE_ENV}: {e}"))?
            }
            None => PollSchedule::default(),
        };
        Ok(Self {
            links: ConnectionsConfig::from_lookup(lookup)?,
            schedule,
            key_lock: Duration::seconds(60),
            initiation_lease: Duration::seconds(60),
            resend_after: Duration::seconds(60),
            batch_sca_wait,
            batch_watch,
        })
    }
}

/// What the payments service needs.
pub struct PaymentsDeps {
    pub payments: Arc<dyn PaymentStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub notifications: Arc<dyn NotificationStore>,
    pub webhooks: Option<Arc<dyn Queue>>,
    /// The payment status queue (poll messages with delays).
    pub status_queue: Arc<dyn Queue>,
    /// The bulk payment queue (one message per batch item); `None` where batches are not
    /// accepted.
    pub bulk_queue: Option<Arc<dyn Queue>>,
    pub banks: HashMap<BankId, Arc<dyn BankApi>>,
    pub registry: BankRegistry,
    pub signer: StateSigner,
    pub config: PaymentsConfig,
    pub clock: Arc<dyn Clock>,
}

/// The payments service (module docs).
pub struct Payments {
    payments: Arc<dyn PaymentStore>,
    idempotency: Arc<dyn IdempotencyStore>,
    notifier: Notifier,
    status_queue: Arc<dyn Queue>,
    bulk_queue: Option<Arc<dyn Queue>>,
    banks: HashMap<BankId, Arc<dyn BankApi>>,
    registry: BankRegistry,
    signer: StateSigner,
    config: PaymentsConfig,
    clock: Arc<dyn Clock>,
    /// This process's share of each bank's initiation budget (bulk worker).
    rate_pool: super::rate_pool::RatePool,
}

/// Who sends the first message of a payment's poll chain when its initiation is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChainStart {
    /// The write that records the bank's answer (before it).
    Send,
    /// The caller, after the write (a bulk chunk, for all its items in one message; the
    /// chunk's own message brings the items back if that send is lost).
    ByCaller,
}

/// What [`PaymentsService::poll_group`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupOutcome {
    /// Polls handled (any outcome).
    pub handled: usize,
    /// One of them was [`PollOutcome::Later`]: the group message must come again (the
    /// others then find it stale).
    pub come_back: bool,
}

/// The next message of a poll chain, written as due but not sent yet: sent on its own
/// ([`PaymentsService::poll`]) or together with others ([`PaymentsService::poll_group`]).
struct Continuation {
    record: PaymentRecord,
    delay: StdDuration,
}

/// Several poll messages in one: the first polls of a bulk chunk's items, and the next
/// polls of chains that were stepped together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollGroup {
    pub polls: Vec<PollMessage>,
}

/// The watch of a bulk batch: looks at its items now and then, and tells the user once
/// when every one is final.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchWatch {
    pub user_id: UserId,
    pub batch_id: crate::domain::BatchId,
    /// The watch chain's generation this message belongs to (see
    /// [`crate::store::BatchRecord::watch_generation`]).
    #[serde(default)]
    pub generation: u64,
}

/// Any message of the payment status queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PollWork {
    One(PollMessage),
    Group(PollGroup),
    Watch(BatchWatch),
}

/// The poll message: which payment, and which generation of its chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PollMessage {
    pub user_id: UserId,
    pub payment_id: PaymentId,
    pub generation: u64,
}

impl PollMessage {
    /// The message of `record`'s live generation.
    pub fn live(record: &PaymentRecord) -> PollMessage {
        PollMessage {
            user_id: record.user_id.clone(),
            payment_id: record.payment_id.clone(),
            generation: record.poll.generation,
        }
    }
}

/// What one poll message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PollOutcome {
    /// Not the live message (duplicate, stale or late), or nothing left to do: dropped.
    Dropped,
    /// Asked the bank (or waited for an initiation) and queued the next poll.
    Continued,
    /// The payment reached a final status (the user was notified).
    Final,
    /// The schedule's horizon passed (the user was told the status is unknown).
    GaveUp,
    /// The initiation failed for good or waits for the caller's retry: nothing to poll.
    Stopped,
    /// Resent the live message that a crashed step had not sent.
    Resent,
    /// The message before the live one, whose step moved the chain on but has not (yet)
    /// recorded sending the next message: too early to tell a crash from a step still at
    /// work, so the message must come again later (not be acknowledged) to resend it if
    /// the step died.
    Later,
}

/// `POST /v1/payments` answer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created<'a> {
    payment_id: &'a PaymentId,
    status: Option<TransactionStatus>,
    state: PaymentState,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_url: Option<&'a str>,
}

/// `GET /v1/payments/{id}` answer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    pub payment_id: PaymentId,
    pub bank_id: BankId,
    pub payment_product: PaymentProduct,
    /// The Berlin Group `transactionStatus`, once the bank answered.
    pub status: Option<TransactionStatus>,
    pub state: PaymentState,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub instructed_amount: Money,
    pub debtor_account: MaskedAccount,
    pub creditor_account: MaskedAccount,
    pub creditor_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remittance_information_unstructured: Option<String>,
    /// The SCA link while the payment waits for the user's authorisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<PaymentFailure>,
    pub status_history: Vec<StatusEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An account as the API shows it: the IBAN masked (the caller knows the full one).
#[derive(Clone, Debug, Serialize)]
pub struct MaskedAccount {
    pub iban: String,
}

/// `GET /v1/payments` answer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentList {
    pub payments: Vec<PaymentView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A validated `POST /v1/payments` body, in canonical form (its JSON is the fingerprint).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidPayment {
    bank_id: BankId,
    product: PaymentProduct,
    debtor: String,
    creditor: String,
    amount: String,
    currency: String,
    creditor_name: String,
    remittance: Option<String>,
    redirect_url: Option<String>,
}

/// Where a claimed `Idempotency-Key` leaves the request.
enum Claim {
    /// This request holds the key: go on with this payment id.
    Go(IdempotencyRecord),
    /// Answer this (a replay, or a 409/422).
    Answer(StoredResponse),
}

impl Payments {
    pub fn new(deps: PaymentsDeps) -> Self {
        Self {
            payments: deps.payments,
            idempotency: deps.idempotency,
            notifier: Notifier::new(deps.notifications, deps.webhooks, deps.clock.clone()),
            status_queue: deps.status_queue,
            bulk_queue: deps.bulk_queue,
            banks: deps.banks,
            registry: deps.registry,
            signer: deps.signer,
            config: deps.config,
            clock: deps.clock,
            rate_pool: super::rate_pool::RatePool::default(),
        }
    }

    // ---- POST /v1/payments ---------------------------------------------------------

    /// `POST /v1/payments` with its `Idempotency-Key`: the answer to send (status and JSON
    /// body, a problem document for 4xx/5xx), the same for every retry with the same key.
    ///
    /// # Errors
    /// [`ServiceError::Validation`] (nothing stored, no bank call), and for a transient
    /// failure (the key stays retryable) [`ServiceError::Bank`] or [`ServiceError::Store`].
    pub async fn initiate(
        &self,
        user: &UserId,
        idempotency_key: Option<&str>,
        body: &[u8],
        psu_ip: IpAddr,
    ) -> Result<StoredResponse, ServiceError> {
        let key = validate_key(idempotency_key)?;
        if body.len() > MAX_BODY_BYTES {
            return Err(ServiceError::field(
                "body",
                format!("must be at most {MAX_BODY_BYTES} bytes"),
            ));
        }
        let request = self.validate(body)?;
        let fingerprint = sha256_hex(
            serde_json::to_string(&request)
                .expect("the canonical request serialises")
                .as_bytes(),
        );
        let claim = match self.claim_key(user, &key, &fingerprint).await? {
            Claim::Go(record) => record,
            Claim::Answer(response) => return Ok(response),
        };
        let result = self.initiate_claimed(user, &request, &claim, psu_ip).await;
        self.settle_with(claim, result).await
    }

    /// Settles a claimed key with the outcome of its request: an answer is kept for every
    /// retry (`Done`); a failure leaves the key retryable.
    async fn settle_with(
        &self,
        claim: IdempotencyRecord,
        result: Result<StoredResponse, ServiceError>,
    ) -> Result<StoredResponse, ServiceError> {
        match result {
            Ok(response) => {
                self.settle_key(claim, IdempotencyState::Done, Some(response.clone()))
                    .await;
                Ok(response)
            }
            Err(e) => {
                self.settle_key(claim, IdempotencyState::Retryable, None)
                    .await;
                Err(e)
            }
        }
    }

    /// Records (or finds) the payment of a claimed key, makes sure its poll chain exists,
    /// calls the bank unless it already answered, and returns the answer to keep.
    async fn initiate_claimed(
        &self,
        user: &UserId,
        request: &ValidPayment,
        claim: &IdempotencyRecord,
        psu_ip: IpAddr,
    ) -> Result<StoredResponse, ServiceError> {
        let payment_id = PaymentId::parse(&claim.resource_id)
            .map_err(|e| StoreError::Corrupt(format!("idempotency record: {e}")))?;
        let now = self.clock.now();
        let record = match self.payments.get(user, &payment_id).await? {
            Some(existing) => existing,
            None => {
                let record = self.new_record(user, payment_id, request, psu_ip, now)?;
                self.payments.insert(&record).await?;
                info!(payment_id = %record.payment_id, bank_id = %record.bank_id,
                    amount = %record.amount.to_minor_string(), currency = %record.amount.currency(),
                    "payment recorded");
                record
            }
        };
        // The safety net first: the live poll message exists before the bank is called.
        let mut record = self.ensure_sent(record).await?;
        if record.bank_payment_id.is_none() {
            if record.failure.is_some() || !lease_live(&record, now) {
                // A retry of a failed attempt, or the lease of a crashed one ran out.
                record.failure = None;
                record.lease_until = Some(now + self.config.initiation_lease);
                record.updated_at = now;
                record = self.payments.update(&record).await?;
            }
            record = self.initiate_at_bank(record).await?;
        }
        Ok(created_response(&record))
    }

    fn new_record(
        &self,
        user: &UserId,
        payment_id: PaymentId,
        request: &ValidPayment,
        psu_ip: IpAddr,
        now: DateTime<Utc>,
    ) -> Result<PaymentRecord, ServiceError> {
        let corrupt = |e: crate::domain::DomainError| StoreError::Corrupt(e.to_string());
        let currency = Currency::parse(&request.currency).map_err(corrupt)?;
        Ok(PaymentRecord {
            user_id: user.clone(),
            payment_id,
            bank_id: request.bank_id.clone(),
            product: request.product,
            request_id: RequestId::new(),
            debtor: Iban::parse(&request.debtor).map_err(corrupt)?,
            creditor: Iban::parse(&request.creditor).map_err(corrupt)?,
            creditor_name: request.creditor_name.clone(),
            amount: Money::parse_instructed(&request.amount, currency).map_err(corrupt)?,
            remittance: request.remittance.clone(),
            bank_payment_id: None,
            status: None,
            sca_url: None,
            history: vec![],
            psu_ip: Some(psu_ip),
            redirect_url: request.redirect_url.clone(),
            lease_until: Some(now + self.config.initiation_lease),
            failure: None,
            sca_returned: false,
            poll: crate::store::PollState {
                generation: 1,
                sent: false,
                started_at: Some(now),
                ..Default::default()
            },
            outcome_notified: false,
            batch_id: None,
            batch_index: None,
            queued: false,
            end_to_end_id: None,
            created_at: now,
            updated_at: now,
            version: 0,
        })
    }

    /// Calls the bank for a recorded payment that has no bank payment id (the caller holds
    /// the initiation lease) and records the answer. Transient failures are recorded as
    /// retryable and returned; permanent refusals are recorded and answered.
    async fn initiate_at_bank(&self, record: PaymentRecord) -> Result<PaymentRecord, ServiceError> {
        self.initiate_at_bank_with(record, ChainStart::Send).await
    }

    /// [`Self::initiate_at_bank`]; with [`ChainStart::ByCaller`] a payment that has no
    /// poll chain yet is recorded as having one and the caller sends its first message
    /// (in a [`PollGroup`] with others).
    async fn initiate_at_bank_with(
        &self,
        record: PaymentRecord,
        chain: ChainStart,
    ) -> Result<PaymentRecord, ServiceError> {
        let connector = self.connector(&record.bank_id)?;
        let initiation = self.initiation(&record);
        crate::chaos::crash_point("before_bank_call");
        let answer = connector.initiate_payment(&initiation).await;
        match answer {
            Ok(initiated) => {
                crate::chaos::crash_point("after_bank_call");
                self.record_initiated(record, initiated, chain).await
            }
            Err(e) => {
                warn!(payment_id = %record.payment_id, bank_id = %record.bank_id, code = e.code(),
                    "the bank did not accept the initiation");
                let failed = self.record_failure(record, &e).await?;
                if e.is_transient() {
                    Err(e.into())
                } else {
                    Ok(failed)
                }
            }
        }
    }

    fn initiation(&self, record: &PaymentRecord) -> PaymentInitiation {
        let redirect_url = record
            .redirect_url
            .as_deref()
            .and_then(|u| Url::parse(u).ok());
        let state = ScaState::new(
            StateSubject::Payment {
                user: record.user_id.clone(),
                payment: record.payment_id.clone(),
            },
            self.clock.now() + self.config.links.state_ttl,
            redirect_url,
        );
        let token = self.signer.sign(&state);
        let mut ok = self.config.links.callback_url.clone();
        ok.query_pairs_mut().append_pair("state", &token);
        let mut nok = ok.clone();
        nok.query_pairs_mut().append_pair("outcome", "nok");
        PaymentInitiation {
            product: record.product,
            request_id: record.request_id,
            debtor: record.debtor.clone(),
            creditor: record.creditor.clone(),
            creditor_name: record.creditor_name.clone(),
            amount: record.amount,
            remittance: record.remittance.clone(),
            end_to_end_id: record.end_to_end_id.clone(),
            psu_ip: record
                .psu_ip
                .unwrap_or(super::connections::FALLBACK_RENEWAL_PSU_IP),
            redirect: RedirectUris { ok, nok: Some(nok) },
        }
    }

    /// Writes the bank's answer; a lost race re-reads and writes again unless someone else
    /// recorded it already (the same de-duplicated answer).
    async fn record_initiated(
        &self,
        mut record: PaymentRecord,
        initiated: PaymentInitiated,
        chain: ChainStart,
    ) -> Result<PaymentRecord, ServiceError> {
        for _ in 0..4 {
            if record.bank_payment_id.is_some() {
                return Ok(record);
            }
            let now = self.clock.now();
            let mut next = record.clone();
            next.bank_payment_id = Some(initiated.payment_id.clone());
            next.sca_url = initiated.sca.as_ref().map(|l| l.href().to_string());
            next.status = Some(initiated.status);
            next.history.push(StatusEntry {
                status: initiated.status,
                at: now,
            });
            next.lease_until = None;
            next.failure = None;
            next.updated_at = now;
            if !next.poll.sent && !next.poll.gave_up && !next.is_final() {
                // No chain yet (a bulk item: its queue message, not a chain, stands in for
                // a worker that dies at the bank). Its first message goes out before this
                // write, which records it as sent: if the write is lost, the message is a
                // same-generation duplicate that the poller drops.
                if next.poll.stopped || next.poll.started_at.is_none() {
                    next.poll.started_at = Some(now);
                    next.poll.errors = 0;
                }
                if chain == ChainStart::Send {
                    self.send_poll(&next, self.first_poll_delay(&next)).await?;
                }
                next.poll.sent = true;
                next.poll.stopped = false;
            }
            match self.payments.update(&next).await {
                Ok(saved) => {
                    info!(payment_id = %saved.payment_id, bank_id = %saved.bank_id,
                        status = %initiated.status, "payment initiated at the bank");
                    crate::chaos::crash_point("after_write");
                    return Ok(saved);
                }
                Err(StoreError::VersionConflict { .. }) => {
                    record = self.reload(&record).await?;
                }
                Err(e) => {
                    error!(payment_id = %record.payment_id, error = %e,
                        "could not record the bank's answer; the poller will repeat the \
                         initiation with the same X-Request-ID");
                    return Err(e.into());
                }
            }
        }
        Err(StoreError::VersionConflict {
            expected: record.version,
        }
        .into())
    }

    async fn record_failure(
        &self,
        mut record: PaymentRecord,
        e: &BankError,
    ) -> Result<PaymentRecord, ServiceError> {
        for _ in 0..4 {
            if record.bank_payment_id.is_some() {
                return Ok(record);
            }
            let now = self.clock.now();
            let mut next = record.clone();
            next.failure = Some(PaymentFailure {
                code: e.code().to_owned(),
                retryable: e.is_transient(),
                at: now,
            });
            next.lease_until = None;
            next.updated_at = now;
            match self.payments.update(&next).await {
                Ok(saved) => return Ok(saved),
                Err(StoreError::VersionConflict { .. }) => record = self.reload(&record).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::VersionConflict {
            expected: record.version,
        }
        .into())
    }

    async fn reload(&self, record: &PaymentRecord) -> Result<PaymentRecord, ServiceError> {
        self.payments
            .get(&record.user_id, &record.payment_id)
            .await?
            .ok_or(ServiceError::Store(StoreError::NotFound))
    }

    fn connector(&self, bank: &BankId) -> Result<&Arc<dyn BankApi>, ServiceError> {
        self.banks.get(bank).ok_or_else(|| {
            ServiceError::Bank(BankError::Config(format!("no connector for bank {bank}")))
        })
    }

    // ---- Idempotency-Key --------------------------------------------------------------

    async fn claim_key(
        &self,
        user: &UserId,
        key: &str,
        fingerprint: &str,
    ) -> Result<Claim, ServiceError> {
        self.claim_key_for(user, key, fingerprint, new_payment_id().into_string())
            .await
    }

    /// Claims `key` for a new resource `resource_id` (or finds what it is bound to).
    async fn claim_key_for(
        &self,
        user: &UserId,
        key: &str,
        fingerprint: &str,
        resource_id: String,
    ) -> Result<Claim, ServiceError> {
        let now = self.clock.now();
        let fresh = IdempotencyRecord {
            user_id: user.clone(),
            key_hash: sha256_hex(key.as_bytes()),
            fingerprint: fingerprint.to_owned(),
            resource_id,
            state: IdempotencyState::InFlight,
            locked_until: now + self.config.key_lock,
            response: None,
            created_at: now,
            keep_until: now + Duration::hours(IDEMPOTENCY_KEEP_HOURS),
            version: 0,
        };
        match self.idempotency.insert(&fresh).await {
            Ok(()) => return Ok(Claim::Go(fresh)),
            Err(StoreError::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(existing) = self.idempotency.get(user, &fresh.key_hash).await? else {
            // Removed (TTL) between the two calls: the caller may simply retry.
            return Ok(Claim::Answer(in_flight()));
        };
        if existing.keep_until <= now {
            // Forgotten: the key starts over (a conditional replace, so one request wins).
            let replacement = IdempotencyRecord {
                version: existing.version,
                ..fresh
            };
            return match self.idempotency.update(&replacement).await {
                Ok(saved) => Ok(Claim::Go(saved)),
                Err(StoreError::VersionConflict { .. }) => Ok(Claim::Answer(in_flight())),
                Err(e) => Err(e.into()),
            };
        }
        if existing.fingerprint != fingerprint {
            return Ok(Claim::Answer(problem_response(Problem::new(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "This Idempotency-Key was used with a different request body.",
            ))));
        }
        match existing.state {
            IdempotencyState::Done => {
                Ok(Claim::Answer(existing.response.ok_or_else(|| {
                    StoreError::Corrupt("done without a response".into())
                })?))
            }
            IdempotencyState::InFlight if existing.locked_until > now => {
                Ok(Claim::Answer(in_flight()))
            }
            // A retry after a transient failure, or after a request that died holding the
            // lock: continue the same payment.
            IdempotencyState::InFlight | IdempotencyState::Retryable => {
                let mut taken = existing.clone();
                taken.state = IdempotencyState::InFlight;
                taken.locked_until = now + self.config.key_lock;
                match self.idempotency.update(&taken).await {
                    Ok(saved) => Ok(Claim::Go(saved)),
                    Err(StoreError::VersionConflict { .. }) => Ok(Claim::Answer(in_flight())),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Releases the key with its outcome. A failure here only delays the key (its lock
    /// expires, and a retry then resumes the same payment), so it is logged, not returned.
    async fn settle_key(
        &self,
        mut claim: IdempotencyRecord,
        state: IdempotencyState,
        response: Option<StoredResponse>,
    ) {
        claim.state = state;
        claim.response = response;
        claim.locked_until = self.clock.now();
        if let Err(e) = self.idempotency.update(&claim).await {
            warn!(error = %e, "could not settle an idempotency key; it is released when its lock expires");
        }
    }

    // ---- validation -------------------------------------------------------------------

    fn validate(&self, body: &[u8]) -> Result<ValidPayment, ServiceError> {
        let body = crate::services::body::json_object(body)?;
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(FieldError {
                field: field.to_owned(),
                message,
            });
        };
        for key in body.keys() {
            if !BODY_FIELDS.contains(&key.as_str()) {
                fail(&echo(key), "unknown field".into());
            }
        }

        let bank: Option<&BankConfig> = match present(&body, "bankId") {
            None => {
                fail("bankId", "is required".into());
                None
            }
            Some(Value::String(text)) => {
                let found = BankId::parse(text)
                    .ok()
                    .and_then(|id| self.registry.get(&id))
                    .filter(|config| self.banks.contains_key(&config.id));
                if found.is_none() {
                    fail("bankId", "unknown bank".into());
                }
                found
            }
            Some(_) => {
                fail("bankId", "must be a string".into());
                None
            }
        };

        let product = match present(&body, "paymentProduct") {
            None => Some(PaymentProduct::SepaCreditTransfers),
            Some(Value::String(text)) => match PaymentProduct::parse(text) {
                Some(product) if bank.is_none_or(|b| b.payment_products.contains(&product)) => {
                    Some(product)
                }
                Some(_) => {
                    fail("paymentProduct", "is not offered by this bank".into());
                    None
                }
                None => {
                    fail("paymentProduct", "unknown payment product".into());
                    None
                }
            },
            Some(_) => {
                fail("paymentProduct", "must be a string".into());
                None
            }
        };
        if let (Some(bank), None) = (bank, present(&body, "paymentProduct"))
            && !bank
                .payment_products
                .contains(&PaymentProduct::SepaCreditTransfers)
        {
            fail(
                "paymentProduct",
                "is required: this bank does not offer sepa-credit-transfers".into(),
            );
        }

        let mut iban = |field: &str, path: &str| -> Option<String> {
            let account = match present(&body, field) {
                None => {
                    fail(field, "is required".into());
                    return None;
                }
                Some(Value::Object(account)) => account,
                Some(_) => {
                    fail(field, "must be an object with an iban".into());
                    return None;
                }
            };
            for key in account.keys() {
                if key != "iban" {
                    fail(&format!("{field}.{}", echo(key)), "unknown field".into());
                }
            }
            match account.get("iban") {
                Some(Value::String(text)) => match Iban::parse(text) {
                    Ok(iban) => Some(iban.expose().to_owned()),
                    Err(e) => {
                        fail(path, e.to_string());
                        None
                    }
                },
                Some(_) => {
                    fail(path, "must be a string".into());
                    None
                }
                None => {
                    fail(path, "is required".into());
                    None
                }
            }
        };
        let debtor = iban("debtorAccount", "debtorAccount.iban");
        let creditor = iban("creditorAccount", "creditorAccount.iban");

        let amount = match present(&body, "instructedAmount") {
            None => {
                fail("instructedAmount", "is required".into());
                None
            }
            Some(Value::Object(amount)) => {
                for key in amount.keys() {
                    if key != "amount" && key != "currency" {
                        fail(
                            &format!("instructedAmount.{}", echo(key)),
                            "unknown field".into(),
                        );
                    }
                }
                let currency = match amount.get("currency") {
                    Some(Value::String(code)) => match Currency::parse(code) {
                        Ok(currency) => Some(currency),
                        Err(e) => {
                            fail("instructedAmount.currency", e.to_string());
                            None
                        }
                    },
                    Some(_) => {
                        fail("instructedAmount.currency", "must be a string".into());
                        None
                    }
                    None => {
                        fail("instructedAmount.currency", "is required".into());
                        None
                    }
                };
                if let (Some(currency), Some(bank), Some(product)) = (currency, bank, product)
                    && !supports(bank, product, currency)
                {
                    fail(
                        "instructedAmount.currency",
                        format!(
                            "{} is not supported by {} for {product}",
                            currency.code(),
                            bank.name
                        ),
                    );
                }
                match (amount.get("amount"), currency) {
                    (Some(Value::String(text)), Some(currency)) => {
                        match Money::parse_instructed(text, currency) {
                            Ok(money) => Some(money),
                            Err(e) => {
                                fail("instructedAmount.amount", e.to_string());
                                None
                            }
                        }
                    }
                    (Some(Value::String(_)), None) => None,
                    (Some(_), _) => {
                        fail(
                            "instructedAmount.amount",
                            "must be a decimal string such as \"12.30\"".into(),
                        );
                        None
                    }
                    (None, _) => {
                        fail("instructedAmount.amount", "is required".into());
                        None
                    }
                }
            }
            Some(_) => {
                fail(
                    "instructedAmount",
                    "must be an object with amount and currency".into(),
                );
                None
            }
        };

        let creditor_name = match present(&body, "creditorName") {
            None => {
                fail("creditorName", "is required".into());
                None
            }
            Some(Value::String(text)) => match check_text(text, MAX_CREDITOR_NAME, false) {
                Ok(()) => Some(text.trim().to_owned()),
                Err(message) => {
                    fail("creditorName", message);
                    None
                }
            },
            Some(_) => {
                fail("creditorName", "must be a string".into());
                None
            }
        };
        let remittance = match present(&body, "remittanceInformationUnstructured") {
            None => None,
            Some(Value::String(text)) => match check_text(text, MAX_REMITTANCE, true) {
                Ok(()) => Some(text.to_owned()),
                Err(message) => {
                    fail("remittanceInformationUnstructured", message);
                    None
                }
            },
            Some(_) => {
                fail(
                    "remittanceInformationUnstructured",
                    "must be a string".into(),
                );
                None
            }
        };
        let redirect_url = match present(&body, "redirectUrl") {
            None => None,
            Some(value) => match self.config.links.redirect_url(value) {
                Ok(url) => Some(url.to_string()),
                Err(message) => {
                    fail("redirectUrl", message);
                    None
                }
            },
        };

        match (bank, product, debtor, creditor, amount, creditor_name) {
            (Some(bank), Some(product), Some(debtor), Some(creditor), Some(amount), Some(name))
                if errors.is_empty() =>
            {
                Ok(ValidPayment {
                    bank_id: bank.id.clone(),
                    product,
                    debtor,
                    creditor,
                    amount: amount.to_minor_string(),
                    currency: amount.currency().code().to_owned(),
                    creditor_name: name,
                    remittance,
                    redirect_url,
                })
            }
            _ => Err(ServiceError::Validation(errors)),
        }
    }

    // ---- reads -------------------------------------------------------------------------

    /// `GET /v1/payments/{id}`; another user's payment is not found.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`], [`ServiceError::Store`].
    pub async fn get(&self, user: &UserId, id: &str) -> Result<PaymentView, ServiceError> {
        let id = PaymentId::parse(id).map_err(|_| ServiceError::NotFound)?;
        let record = self
            .payments
            .get(user, &id)
            .await?
            .ok_or(ServiceError::NotFound)?;
        Ok(view(&record))
    }

    /// `GET /v1/payments?status&cursor&limit`, newest first. `status` is an API state
    /// (`completed`, …) or a Berlin Group code (`ACSC`, …).
    ///
    /// # Errors
    /// [`ServiceError::Validation`] for a bad filter, limit or cursor.
    pub async fn list(
        &self,
        user: &UserId,
        query: &HashMap<String, String>,
    ) -> Result<PaymentList, ServiceError> {
        let mut errors = Vec::new();
        let (state, code) = match query.get("status").map(String::as_str) {
            None | Some("") => (None, None),
            Some(text) => match (PaymentState::parse(text), TransactionStatus::parse(text)) {
                (Some(state), _) => (Some(state), None),
                (None, Ok(code)) => (None, Some(code)),
                (None, Err(_)) => {
                    errors.push(FieldError {
                        field: "status".into(),
                        message: "must be a payment state (e.g. completed) or a Berlin Group \
                                  status code (e.g. ACSC)"
                            .into(),
                    });
                    (None, None)
                }
            },
        };
        let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
            None => 20,
            Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
            Some(_) => {
                errors.push(FieldError {
                    field: "limit".into(),
                    message: format!("must be a whole number between 1 and {MAX_PAGE}"),
                });
                20
            }
        };
        let after = match query.get("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(cursor) => match PaymentId::parse(cursor) {
                Ok(id) => Some(id),
                Err(_) => {
                    errors.push(FieldError {
                        field: "cursor".into(),
                        message: "is not a cursor from a previous page".into(),
                    });
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(ServiceError::Validation(errors));
        }
        let PaymentPage { payments, next } = match code {
            // Status codes are rare filters; read pages and keep the matching ones.
            Some(code) => {
                let mut kept = Vec::new();
                let mut cursor = after;
                let mut next = None;
                'pages: loop {
                    let page = self
                        .payments
                        .list_page(user, None, cursor.as_ref(), MAX_PAGE)
                        .await?;
                    for payment in page.payments {
                        if payment.status == Some(code) {
                            kept.push(payment);
                            if kept.len() == limit {
                                next = kept.last().map(|p| p.payment_id.clone());
                                break 'pages;
                            }
                        }
                    }
                    match page.next {
                        Some(more) => cursor = Some(more),
                        None => break,
                    }
                }
                PaymentPage {
                    payments: kept,
                    next,
                }
            }
            None => {
                self.payments
                    .list_page(user, state, after.as_ref(), limit)
                    .await?
            }
        };
        Ok(PaymentList {
            payments: payments.iter().map(view).collect(),
            next_cursor: next.map(PaymentId::into_string),
        })
    }

    // ---- the SCA callback's payment half -------------------------------------------------

    /// For a verified and consumed payment `state`: asks the bank once, records what it
    /// says, starts a new poll chain with an immediate poll, and sends the browser back.
    pub async fn sca_callback(&self, state: ScaState) -> CallbackOutcome {
        let StateSubject::Payment { user, payment } = &state.subject else {
            return CallbackOutcome::invalid_link();
        };
        let record = match self.payments.get(user, payment).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                warn!(payment_id = %payment, "SCA callback for an unknown payment");
                return CallbackOutcome::page(
                    404,
                    "Payment not found",
                    "This payment no longer exists.",
                );
            }
            Err(e) => {
                error!(payment_id = %payment, error = %e, "payment store failed");
                return try_again_page();
            }
        };
        let reported = match (&record.bank_payment_id, self.banks.get(&record.bank_id)) {
            (Some(bank_payment), Some(connector)) => {
                match connector.payment_status(record.product, bank_payment).await {
                    Ok(status) => Some(status),
                    Err(e) => {
                        // The new chain's immediate poll asks again.
                        warn!(payment_id = %payment, code = e.code(),
                            "the bank's status was not available at the callback");
                        None
                    }
                }
            }
            _ => None,
        };
        let record = match self.restart_chain(record, reported).await {
            Ok(record) => record,
            Err(e) => {
                error!(payment_id = %payment, error = super::connections::log_text(&e),
                    "could not record a payment authorisation");
                return try_again_page();
            }
        };
        info!(payment_id = %payment, state = record.state().as_str(), "payment SCA callback handled");
        let state_name = record.state().as_str();
        match state.redirect_url {
            Some(mut location) => {
                location
                    .query_pairs_mut()
                    .append_pair("status", state_name)
                    .append_pair("paymentId", record.payment_id.as_str());
                CallbackOutcome::Redirect { location }
            }
            None => {
                let (title, message) = match record.state() {
                    PaymentState::Rejected => (
                        "Payment not authorised",
                        "The payment was rejected or cancelled. You can close this window.",
                    ),
                    PaymentState::Completed => (
                        "Payment completed",
                        "The payment has been executed. You can close this window.",
                    ),
                    _ => (
                        "Payment authorised",
                        "The bank is processing the payment. You can close this window and \
                         follow its status in the app.",
                    ),
                };
                CallbackOutcome::page(200, title, message)
            }
        }
    }

    /// Records the callback (and a reported status) and starts a new poll generation whose
    /// message is sent at once; the old chain's messages are dropped from now on.
    async fn restart_chain(
        &self,
        mut record: PaymentRecord,
        reported: Option<TransactionStatus>,
    ) -> Result<PaymentRecord, ServiceError> {
        for _ in 0..4 {
            let now = self.clock.now();
            let mut next = record.clone();
            next.sca_returned = true;
            if let Some(status) = reported {
                apply_status(&mut next, status, now);
            }
            let polling = !next.is_final() && next.bank_payment_id.is_some();
            if polling {
                next.poll.generation += 1;
                next.poll.sent = false;
                next.poll.started_at = Some(now);
                next.poll.errors = 0;
                next.poll.gave_up = false;
            }
            next.updated_at = now;
            match self.payments.update(&next).await {
                Ok(saved) => {
                    let saved = self.notify_outcome(saved).await?;
                    if polling {
                        return self.send_live(saved, StdDuration::ZERO).await;
                    }
                    return Ok(saved);
                }
                Err(StoreError::VersionConflict { .. }) => record = self.reload(&record).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::VersionConflict {
            expected: record.version,
        }
        .into())
    }

    // ---- status polling ----------------------------------------------------------------

    /// Handles a group of poll messages, ten at a time; answers how many. The chains
    /// that go on go on together: their next messages leave as groups (one per delay, up
    /// to [`crate::store::BATCH_CHUNK_ITEMS`] each) instead of one message per payment,
    /// so a batch's items keep the status queue short however many there are.
    ///
    /// # Errors
    /// The first failure of any of them, after all were tried and the next messages of
    /// the others were sent: the group is then retried by the queue, and the generation
    /// check drops the ones handled now.
    pub async fn poll_group(&self, group: &PollGroup) -> Result<GroupOutcome, ServiceError> {
        use futures::StreamExt as _;
        let polls: Vec<_> = group.polls.iter().map(|m| self.poll_one(m)).collect();
        let results: Vec<Result<(PollOutcome, Option<Continuation>), ServiceError>> =
            futures::stream::iter(polls)
                .buffer_unordered(10)
                .collect()
                .await;
        let mut first_error = None;
        let mut handled = 0;
        let mut come_back = false;
        let mut next = Vec::new();
        for result in results {
            match result {
                Ok((outcome, continuation)) => {
                    handled += 1;
                    come_back |= outcome == PollOutcome::Later;
                    next.extend(continuation);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.send_group_continuations(next).await?;
        match first_error {
            // The group comes again; the payments handled now find their message stale.
            Some(e) => Err(e),
            None => Ok(GroupOutcome { handled, come_back }),
        }
    }

    /// Sends the next messages of chains stepped together ([`Self::send_poll_groups`]),
    /// then marks each record sent (as [`Self::send_live`] does for one).
    async fn send_group_continuations(&self, next: Vec<Continuation>) -> Result<(), ServiceError> {
        use futures::StreamExt as _;
        self.send_poll_groups(next.iter().map(|c| (c.delay, &c.record)))
            .await?;
        let marks = next.into_iter().map(|c| self.mark_sent(c.record));
        futures::stream::iter(marks)
            .buffer_unordered(10)
            .collect::<Vec<_>>()
            .await;
        Ok(())
    }

    /// Sends the live poll messages of `polls` (each after its delay, in whole seconds) as
    /// groups: one status queue message per delay for up to
    /// [`crate::store::BATCH_CHUNK_ITEMS`] payments.
    pub(super) async fn send_poll_groups<'a>(
        &self,
        polls: impl IntoIterator<Item = (StdDuration, &'a PaymentRecord)>,
    ) -> Result<(), ServiceError> {
        let mut by_delay: std::collections::BTreeMap<u64, Vec<PollMessage>> =
            std::collections::BTreeMap::new();
        for (delay, record) in polls {
            let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            by_delay
                .entry(secs)
                .or_default()
                .push(PollMessage::live(record));
        }
        for (secs, polls) in by_delay {
            for chunk in polls.chunks(crate::store::BATCH_CHUNK_ITEMS) {
                let body = serde_json::to_string(&PollWork::Group(PollGroup {
                    polls: chunk.to_vec(),
                }))
                .expect("poll groups serialise");
                self.status_queue
                    .send(&body, StdDuration::from_secs(secs))
                    .await
                    .map_err(|e| StoreError::Backend(format!("payment status queue: {e}")))?;
            }
        }
        Ok(())
    }

    /// Handles one poll message (module docs: one live chain, generation check).
    ///
    /// # Errors
    /// A store or queue failure: the message is then retried by the queue, and the
    /// generation check keeps the retry from doubling anything.
    pub async fn poll(&self, message: &PollMessage) -> Result<PollOutcome, ServiceError> {
        let (outcome, next) = self.poll_one(message).await?;
        if let Some(next) = next {
            self.send_live(next.record, next.delay).await?;
        }
        Ok(outcome)
    }

    /// [`Self::poll`] up to the next message of the chain, which is left to the caller.
    async fn poll_one(
        &self,
        message: &PollMessage,
    ) -> Result<(PollOutcome, Option<Continuation>), ServiceError> {
        for _ in 0..4 {
            let Some(record) = self
                .payments
                .get(&message.user_id, &message.payment_id)
                .await?
            else {
                return Ok((PollOutcome::Dropped, None));
            };
            if record.is_final() || record.poll.gave_up {
                if !record.outcome_notified {
                    self.notify_outcome(record).await?;
                }
                return Ok((PollOutcome::Dropped, None));
            }
            let now = self.clock.now();
            if message.generation + 1 == record.poll.generation
                && !record.poll.sent
                && !record.poll.stopped
                && record.updated_at + self.config.resend_after > now
            {
                return Ok((PollOutcome::Later, None));
            }
            if message.generation + 1 == record.poll.generation
                && !record.poll.sent
                && !record.poll.stopped
            {
                info!(payment_id = %record.payment_id, generation = record.poll.generation,
                    "resending a poll message that a crashed step did not send");
                return Ok((
                    PollOutcome::Resent,
                    Some(Continuation {
                        record,
                        delay: StdDuration::ZERO,
                    }),
                ));
            }
            if message.generation != record.poll.generation {
                return Ok((PollOutcome::Dropped, None));
            }
            match self.poll_step(record).await {
                Err(ServiceError::Store(StoreError::VersionConflict { .. })) => continue,
                Ok((PollOutcome::Stopped, _)) => {
                    if self.mark_stopped(message).await? {
                        return Ok((PollOutcome::Stopped, None));
                    }
                    // The initiation was retried meanwhile (the bank has the payment, or a
                    // new attempt holds the lease): this message is still the live one, so
                    // look again instead of ending the chain.
                    continue;
                }
                other => return other,
            }
        }
        // Still racing other writers: let the queue redeliver this (still live) message.
        Err(StoreError::VersionConflict {
            expected: message.generation,
        }
        .into())
    }

    /// One step of the live chain: ask the bank (or wait for / repeat the initiation),
    /// record, notify on a final status, queue the next poll.
    async fn poll_step(
        &self,
        record: PaymentRecord,
    ) -> Result<(PollOutcome, Option<Continuation>), ServiceError> {
        let now = self.clock.now();
        let elapsed = elapsed_since(record.poll.started_at.unwrap_or(record.created_at), now);
        let mut next = record.clone();
        let next_poll = match &record.bank_payment_id {
            None if record.failure.is_some() => {
                // Failed for good, or waiting for the caller's retry with the same key.
                return Ok((PollOutcome::Stopped, None));
            }
            None if lease_live(&record, now) => {
                // The caller is at the bank right now: look again when its lease ends.
                let wait = record
                    .lease_until
                    .map_or(StdDuration::from_secs(1), |until| {
                        (until - now).to_std().unwrap_or_default() + StdDuration::from_secs(1)
                    });
                match self.config.schedule.next(elapsed) {
                    NextPoll::After(d) => {
                        NextPoll::After(d.max(wait).min(crate::domain::polling::MAX_DELAY))
                    }
                    NextPoll::GiveUp => NextPoll::GiveUp,
                }
            }
            None => {
                // The caller died between the bank call and the record (or before the
                // call): repeat the initiation with the same X-Request-ID.
                let mut leased = record.clone();
                leased.lease_until = Some(now + self.config.initiation_lease);
                leased.updated_at = now;
                let leased = self.payments.update(&leased).await?;
                info!(payment_id = %leased.payment_id, "repeating an unfinished initiation");
                let after = match self.initiate_at_bank(leased).await {
                    Ok(after) => after,
                    Err(ServiceError::Bank(_)) => return Ok((PollOutcome::Stopped, None)),
                    Err(e) => return Err(e),
                };
                if after.bank_payment_id.is_none() {
                    return Ok((PollOutcome::Stopped, None));
                }
                next = after;
                self.config.schedule.next(elapsed)
            }
            Some(bank_payment) => {
                let connector = self.connector(&record.bank_id)?;
                next.poll.bank_calls += 1;
                let answer = connector.payment_status(record.product, bank_payment).await;
                crate::chaos::crash_point("poll_after_bank_call");
                match answer {
                    Ok(status) => {
                        next.poll.errors = 0;
                        apply_status(&mut next, status, now);
                        match self.config.schedule.next(elapsed) {
                            NextPoll::After(d)
                                if next.batch_id.is_some()
                                    && next.state() == PaymentState::AwaitingAuthorisation =>
                            {
                                NextPoll::After(d.max(self.config.batch_sca_wait))
                            }
                            other => other,
                        }
                    }
                    Err(e) => {
                        next.poll.errors += 1;
                        warn!(payment_id = %record.payment_id, code = e.code(),
                            errors = next.poll.errors, "payment status poll failed");
                        self.config.schedule.error_delay(
                            elapsed,
                            next.poll.errors,
                            e.retry_after(),
                            rand::random::<f64>(),
                        )
                    }
                }
            }
        };
        let outcome = if next.is_final() {
            PollOutcome::Final
        } else {
            match next_poll {
                NextPoll::After(_) => {
                    next.poll.generation += 1;
                    next.poll.sent = false;
                    PollOutcome::Continued
                }
                NextPoll::GiveUp => {
                    next.poll.gave_up = true;
                    PollOutcome::GaveUp
                }
            }
        };
        next.updated_at = self.clock.now();
        let saved = self.payments.update(&next).await?;
        crate::chaos::crash_point("poll_after_write");
        match (outcome, next_poll) {
            (PollOutcome::Continued, NextPoll::After(delay)) => Ok((
                outcome,
                Some(Continuation {
                    record: saved,
                    delay,
                }),
            )),
            _ => {
                self.notify_outcome(saved).await?;
                Ok((outcome, None))
            }
        }
    }

    /// Ends the chain of `message` (its initiation failed): no live message until a retry
    /// of the initiation starts a new chain ([`Self::ensure_sent`]). `false` when the
    /// record changed meanwhile so that the chain must go on (the initiation was retried).
    async fn mark_stopped(&self, message: &PollMessage) -> Result<bool, ServiceError> {
        for _ in 0..4 {
            let Some(record) = self
                .payments
                .get(&message.user_id, &message.payment_id)
                .await?
            else {
                return Ok(true);
            };
            if record.poll.generation != message.generation {
                return Ok(true);
            }
            if record.bank_payment_id.is_some() || record.failure.is_none() {
                return Ok(false);
            }
            let mut stopped = record.clone();
            stopped.poll.generation += 1;
            stopped.poll.sent = false;
            stopped.poll.stopped = true;
            stopped.updated_at = self.clock.now();
            match self.payments.update(&stopped).await {
                Ok(_) => return Ok(true),
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::VersionConflict {
            expected: message.generation,
        }
        .into())
    }

    /// Sends the live poll message (with `delay`) and marks it sent. A failed mark is
    /// harmless: at worst a redelivered message resends a message that the generation
    /// check then drops as a duplicate.
    async fn send_live(
        &self,
        record: PaymentRecord,
        delay: StdDuration,
    ) -> Result<PaymentRecord, ServiceError> {
        self.send_poll(&record, delay).await?;
        Ok(self.mark_sent(record).await)
    }

    /// Records that the live message of `record` was sent. A failed mark is harmless (see
    /// [`Self::send_live`]): the record is answered as it was.
    async fn mark_sent(&self, record: PaymentRecord) -> PaymentRecord {
        let mut sent = record.clone();
        sent.poll.sent = true;
        sent.poll.stopped = false;
        match self.payments.update(&sent).await {
            Ok(saved) => saved,
            Err(e) => {
                warn!(payment_id = %record.payment_id, error = %e, "could not mark a poll message sent");
                record
            }
        }
    }

    /// When a new chain first looks: the schedule's first delay, and for a batch item
    /// waiting for its SCA at least the batch SCA wait (a payroll's items are not polled
    /// every few seconds while the user authorises them).
    fn first_poll_delay(&self, record: &PaymentRecord) -> StdDuration {
        let first = self.config.schedule.first_delay();
        if record.batch_id.is_some() && record.state() == PaymentState::AwaitingAuthorisation {
            first.max(self.config.batch_sca_wait)
        } else {
            first
        }
    }

    /// Sends the poll message of `record`'s current generation after `delay`.
    async fn send_poll(
        &self,
        record: &PaymentRecord,
        delay: StdDuration,
    ) -> Result<(), ServiceError> {
        let body =
            serde_json::to_string(&PollMessage::live(record)).expect("poll messages serialise");
        self.status_queue
            .send(&body, delay)
            .await
            .map_err(|e| StoreError::Backend(format!("payment status queue: {e}")))?;
        Ok(())
    }

    /// Sends the live message if the record says it has not been sent (a new payment, or
    /// a retry after a crash).
    async fn ensure_sent(&self, record: PaymentRecord) -> Result<PaymentRecord, ServiceError> {
        if record.poll.sent || record.is_final() || record.poll.gave_up {
            return Ok(record);
        }
        let mut record = record;
        if record.poll.stopped {
            // A retry after a failed initiation: a new chain, timed from now.
            record.poll.started_at = Some(self.clock.now());
            record.poll.errors = 0;
        }
        let delay = self.first_poll_delay(&record);
        self.send_live(record, delay).await
    }

    /// Tells the user about a final status (or about polling giving up), once per payment
    /// (event ids are per payment), and marks the record.
    async fn notify_outcome(&self, record: PaymentRecord) -> Result<PaymentRecord, ServiceError> {
        // Batch items are reported through their batch, not one notification each.
        if record.outcome_notified
            || record.batch_id.is_some()
            || !(record.is_final() || record.poll.gave_up)
        {
            return Ok(record);
        }
        let amount = format!(
            "{} {}",
            record.amount.to_minor_string(),
            record.amount.currency().code()
        );
        let (kind, title, message) = match record.state() {
            PaymentState::Completed => (
                "payment.completed",
                "Payment completed",
                format!(
                    "Your payment of {amount} to {} was executed.",
                    record.creditor_name
                ),
            ),
            PaymentState::Rejected => (
                "payment.rejected",
                "Payment rejected",
                format!(
                    "Your payment of {amount} to {} was rejected or cancelled.",
                    record.creditor_name
                ),
            ),
            _ => (
                "payment.status_unknown",
                "Payment status unknown",
                format!(
                    "We could not confirm the final status of your payment of {amount} to {}. \
                     Please check with your bank.",
                    record.creditor_name
                ),
            ),
        };
        let notification = Notification {
            user_id: record.user_id.clone(),
            notification_id: NotificationId::new(),
            event_id: format!("payment:{}:outcome", record.payment_id),
            kind: kind.to_owned(),
            title: title.to_owned(),
            message,
            data: json!({
                "paymentId": record.payment_id,
                "status": record.status,
                "state": record.state(),
            }),
            created_at: self.clock.now(),
        };
        self.notifier
            .notify(&notification)
            .await
            .map_err(StoreError::from)?;
        let mut marked = record.clone();
        marked.outcome_notified = true;
        match self.payments.update(&marked).await {
            Ok(saved) => Ok(saved),
            // Stored once per event id anyway; the next look marks it.
            Err(StoreError::VersionConflict { .. }) => Ok(record),
            Err(e) => Err(e.into()),
        }
    }
}

/// A time-ordered payment id (UUID v7), so a user's payments list newest first by key.
pub fn new_payment_id() -> PaymentId {
    PaymentId::parse(&Uuid::now_v7().hyphenated().to_string()).expect("a UUID is a payment id")
}

fn elapsed_since(start: DateTime<Utc>, now: DateTime<Utc>) -> StdDuration {
    (now - start).to_std().unwrap_or_default()
}

fn lease_live(record: &PaymentRecord, now: DateTime<Utc>) -> bool {
    record.lease_until.is_some_and(|until| until > now)
}

/// Moves the record's status forward if `reported` is news ([`advance`]).
fn apply_status(record: &mut PaymentRecord, reported: TransactionStatus, now: DateTime<Utc>) {
    let change = match record.status {
        None => StatusChange::Advanced(reported),
        Some(current) => advance(current, reported),
    };
    if let StatusChange::Advanced(reported) = change {
        record.status = Some(reported);
        record.history.push(StatusEntry {
            status: reported,
            at: now,
        });
    }
}

/// Whether `bank` takes `currency` for `product`: SEPA products are euro only.
fn supports(bank: &BankConfig, product: PaymentProduct, currency: Currency) -> bool {
    let sepa = matches!(
        product,
        PaymentProduct::SepaCreditTransfers | PaymentProduct::InstantSepaCreditTransfers
    );
    bank.payment_currencies.contains(&currency) && (!sepa || currency.code() == "EUR")
}

/// Free text for the bank: not blank (unless optional), at most `max` characters, no
/// control characters.
fn check_text(text: &str, max: usize, may_be_empty: bool) -> Result<(), String> {
    if !may_be_empty && text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if text.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn validate_key(key: Option<&str>) -> Result<String, ServiceError> {
    let field = |message: &str| ServiceError::field("Idempotency-Key", message);
    let key = key.ok_or_else(|| field("header is required"))?;
    let key = key.trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(field(&format!("must be 1 to {MAX_KEY_LEN} characters")));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(field("must be printable ASCII without spaces"));
    }
    Ok(key.to_owned())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn present<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|value| !value.is_null())
}

fn in_flight() -> StoredResponse {
    problem_response(Problem::new(
        409,
        "idempotency-key-in-use",
        "Request in progress",
        "A request with this Idempotency-Key is still being processed; retry shortly.",
    ))
}

fn problem_response(problem: Problem) -> StoredResponse {
    StoredResponse {
        status: problem.status,
        body: serde_json::to_string(&problem).expect("problems serialise"),
    }
}

/// The answer to keep for the key: 201 with the payment, or the bank's permanent refusal.
fn created_response(record: &PaymentRecord) -> StoredResponse {
    if let (None, Some(failure)) = (&record.bank_payment_id, &record.failure) {
        return problem_response(Problem::new(
            502,
            "bank-rejected",
            "Bank refused the request",
            format!("The bank refused the payment ({}).", failure.code),
        ));
    }
    let created = Created {
        payment_id: &record.payment_id,
        status: record.status,
        state: record.state(),
        auth_url: record.sca_url.as_deref(),
    };
    StoredResponse {
        status: 201,
        body: serde_json::to_string(&created).expect("answers serialise"),
    }
}

fn view(record: &PaymentRecord) -> PaymentView {
    let state = record.state();
    PaymentView {
        payment_id: record.payment_id.clone(),
        bank_id: record.bank_id.clone(),
        payment_product: record.product,
        status: record.status,
        state,
        is_final: record.is_final(),
        instructed_amount: record.amount,
        debtor_account: MaskedAccount {
            iban: record.debtor.masked(),
        },
        creditor_account: MaskedAccount {
            iban: record.creditor.masked(),
        },
        creditor_name: record.creditor_name.clone(),
        remittance_information_unstructured: record.remittance.clone(),
        auth_url: (state == PaymentState::AwaitingAuthorisation)
            .then(|| record.sca_url.clone())
            .flatten(),
        failure: record.failure.clone(),
        status_history: record.history.clone(),
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

/// Builds the payments service from the environment (`PAYMENTS_TABLE`,
/// `PAYMENT_STATUS_QUEUE_URL`, `NOTIFICATIONS_TABLE`, `SCA_STATE_SECRET`, the optional
/// `WEBHOOK_QUEUE_URL`, `PAYMENT_POLL_SCHEDULE`, `CALLBACK_URL`, `REDIRECT_ALLOW_LIST`
/// and the bank registry).
///
/// # Errors
/// A message naming what is missing or invalid.
pub async fn payments_from_env(sdk: &aws_config::SdkConfig) -> Result<Payments, String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let table = var("PAYMENTS_TABLE")?;
    let registry = BankRegistry::from_env().map_err(|e| e.to_string())?;
    let banks = registry.connectors().map_err(|e| e.to_string())?;
    let signer = StateSigner::new(var("SCA_STATE_SECRET")?.as_bytes())
        .map_err(|e| format!("SCA_STATE_SECRET: {e}"))?;
    Ok(Payments::new(PaymentsDeps {
        payments: Arc::new(crate::store::DynamoPaymentStore::new(
            dynamodb.clone(),
            table.clone(),
        )),
        idempotency: Arc::new(crate::store::DynamoIdempotencyStore::new(
            dynamodb.clone(),
            table,
        )),
        notifications: Arc::new(crate::store::DynamoNotificationStore::new(
            dynamodb,
            var("NOTIFICATIONS_TABLE")?,
        )),
        webhooks: std::env::var(crate::webhook::QUEUE_URL_ENV)
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| Arc::new(crate::queue::SqsQueue::new(sqs.clone(), url)) as Arc<dyn Queue>),
        status_queue: Arc::new(crate::queue::SqsQueue::new(
            sqs.clone(),
            var(STATUS_QUEUE_URL_ENV)?,
        )),
        bulk_queue: std::env::var(bulk::BULK_QUEUE_URL_ENV)
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| Arc::new(crate::queue::SqsQueue::new(sqs, url)) as Arc<dyn Queue>),
        banks,
        registry,
        signer,
        config: PaymentsConfig::from_env()?,
        clock: Arc::new(super::SystemClock),
    }))
}
#[path = "payments_bulk.rs"]
pub mod bulk;

#[cfg(test)]
#[path = "payments_tests.rs"]
mod tests;
