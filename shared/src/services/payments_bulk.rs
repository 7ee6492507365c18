//! Bulk payments: a batch of up to [`MAX_ITEMS`] credit transfers from one account,
//! accepted at once and initiated item by item by the bulk worker over SQS.
//!
//! - **Acceptance** validates every item first (one 400 lists every bad item by index and
//!   field; nothing is stored or queued if any is bad), then, under the request's
//!   `Idempotency-Key`: records the batch, writes every item as a payment in state `queued`
//!   (batched writes, several in flight, unprocessed items retried), marks the batch
//!   `itemsWritten`, sends one message per item (batched sends, failed entries retried) and
//!   marks it `enqueued`. A retry after a crash continues where it stopped; items get ids
//!   and `X-Request-ID`s derived from the batch, so rewriting them (only ever before any
//!   message was sent) produces the same items.
//! - **The worker** claims an item with a conditional write (a redelivered or concurrent
//!   message finds it claimed and stops), starts the item's status-poll chain (the same
//!   poller as single payments; it also repeats an initiation whose worker died), takes a
//!   slot of the bank's per-second budget (an atomic counter shared by all workers), and
//!   initiates the payment with the item's stable `X-Request-ID`. 5xx and timeouts are
//!   retried by SQS with backoff; a 429 re-queues the item after `Retry-After` without
//!   using up the message's receives; a permanent refusal marks the item rejected with the
//!   bank's code. An item still failing on its last receive is marked failed with the
//!   reason and its message goes to the DLQ.
//! - **Totals** are derived from the items (index `ByGsi1`), so they cannot drift however
//!   often a message is retried.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration as StdDuration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{info, warn};
use uuid::Uuid;

use super::*;
use crate::domain::BatchId;
use crate::queue::OutgoingMessage;
use crate::store::{BatchRecord, PollState};

/// Most items in one batch.
pub const MAX_ITEMS: usize = 1000;
/// Largest accepted batch body.
pub const MAX_BATCH_BODY_BYTES: usize = 1024 * 1024;
/// Env: the bulk payment queue's URL.
pub const BULK_QUEUE_URL_ENV: &str = "BULK_PAYMENT_QUEUE_URL";
/// Env: the bulk queue's `maxReceiveCount` (the last receive marks an item failed).
pub const MAX_RECEIVES_ENV: &str = "BULK_MAX_RECEIVES";
/// Berlin Group `Max35Text` for `endToEndIdentification`.
pub const MAX_END_TO_END: usize = 35;

const BATCH_FIELDS: [&str; 5] = [
    "bankId",
    "debtorAccount",
    "paymentProduct",
    "payments",
    "redirectUrl",
];
const ITEM_FIELDS: [&str; 5] = [
    "instructedAmount",
    "creditorAccount",
    "creditorName",
    "remittanceInformationUnstructured",
    "endToEndIdentification",
];
/// Namespace of the items' `X-Request-ID`s (UUID v5 of the item id).
const ITEM_REQUEST_NAMESPACE: Uuid = Uuid::from_u128(0x3b9e_51c2_7d04_4a8f_b6e1_0c55_92d7_1a3e);

/// The bulk queue's message: which item to initiate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkMessage {
    pub user_id: UserId,
    pub payment_id: PaymentId,
}

/// What the worker does with one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BulkOutcome {
    /// Initiated at the bank (now or before), or claimed by another worker: acknowledge.
    Done,
    /// The bank refused the item for good (recorded on it): acknowledge.
    Refused,
    /// A transient failure: let SQS redeliver the message after this backoff.
    Retry(StdDuration),
    /// The bank asked us to slow down: send a fresh message with this delay and
    /// acknowledge this one (its receive count is not used up).
    Requeue(StdDuration),
    /// The last receive failed too: the reason is on the item; the message goes to the DLQ.
    Poison,
}

/// One validated item.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidItem {
    amount: String,
    currency: String,
    creditor: String,
    creditor_name: String,
    remittance: Option<String>,
    end_to_end_id: Option<String>,
}

/// A validated batch, in canonical form (its JSON is the fingerprint).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidBatch {
    bank_id: BankId,
    product: PaymentProduct,
    debtor: String,
    redirect_url: Option<String>,
    items: Vec<ValidItem>,
}

/// `GET /v1/payment-batches/{id}`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchView {
    pub batch_id: BatchId,
    pub bank_id: BankId,
    pub total: u32,
    /// Items per state; they add up to `total` once the batch is accepted.
    pub counts: BTreeMap<&'static str, u32>,
    /// Every item is in a final state (completed, rejected, failed, unknown).
    pub done: bool,
    pub items: Vec<BatchItemView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemView {
    pub index: u32,
    pub payment_id: PaymentId,
    pub state: PaymentState,
    pub status: Option<TransactionStatus>,
    pub instructed_amount: Money,
    pub creditor_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_end_identification: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<PaymentFailure>,
}

impl Payments {
    /// `POST /v1/payment-batches` with its `Idempotency-Key`: the answer to send (202 with
    /// the batch id and total, or a stored problem), the same for every retry.
    ///
    /// # Errors
    /// [`ServiceError::Validation`] listing every bad item (nothing stored or queued);
    /// a store or queue failure (the key stays retryable and a retry continues).
    pub async fn create_batch(
        &self,
        user: &UserId,
        idempotency_key: Option<&str>,
        body: &[u8],
        psu_ip: IpAddr,
    ) -> Result<StoredResponse, ServiceError> {
        let key = validate_key(idempotency_key)?;
        if body.len() > MAX_BATCH_BODY_BYTES {
            return Err(ServiceError::field(
                "body",
                format!("must be at most {MAX_BATCH_BODY_BYTES} bytes"),
            ));
        }
        let request = self.validate_batch(body)?;
        let fingerprint = sha256_hex(
            serde_json::to_string(&request)
                .expect("the canonical batch serialises")
                .as_bytes(),
        );
        let claim = match self
            .claim_key_for(user, &key, &fingerprint, BatchId::new().into_string())
            .await?
        {
            Claim::Go(record) => record,
            Claim::Answer(response) => return Ok(response),
        };
        let result = self.accept_claimed(user, &request, &claim, psu_ip).await;
        self.settle_with(claim, result).await
    }

    async fn accept_claimed(
        &self,
        user: &UserId,
        request: &ValidBatch,
        claim: &IdempotencyRecord,
        psu_ip: IpAddr,
    ) -> Result<StoredResponse, ServiceError> {
        let batch_id = BatchId::parse(&claim.resource_id)
            .map_err(|e| StoreError::Corrupt(format!("idempotency record: {e}")))?;
        let now = self.clock.now();
        let corrupt = |e: crate::domain::DomainError| StoreError::Corrupt(e.to_string());
        let total = u32::try_from(request.items.len()).expect("at most 1000 items");
        let mut batch = match self.payments.get_batch(user, &batch_id).await? {
            Some(batch) => batch,
            None => {
                let batch = BatchRecord {
                    user_id: user.clone(),
                    batch_id: batch_id.clone(),
                    bank_id: request.bank_id.clone(),
                    product: request.product,
                    debtor: Iban::parse(&request.debtor).map_err(corrupt)?,
                    total,
                    items_written: false,
                    enqueued: false,
                    created_at: now,
                    version: 0,
                };
                self.payments.insert_batch(&batch).await?;
                batch
            }
        };
        let items = request
            .items
            .iter()
            .enumerate()
            .map(|(index, item)| self.item_record(user, &batch, request, index, item, psu_ip))
            .collect::<Result<Vec<_>, ServiceError>>()?;
        if !batch.items_written {
            self.payments.put_many(&items).await?;
            batch.items_written = true;
            batch = self.payments.update_batch(&batch).await?;
            info!(batch_id = %batch_id, items = total, "batch items recorded");
        }
        if !batch.enqueued {
            self.enqueue_items(&items).await?;
            batch.enqueued = true;
            batch = self.payments.update_batch(&batch).await?;
            info!(batch_id = %batch_id, items = total, "batch items queued");
        }
        let body = serde_json::json!({
            "batchId": batch.batch_id,
            "total": batch.total,
            "state": "accepted",
        });
        Ok(StoredResponse {
            status: 202,
            body: body.to_string(),
        })
    }

    /// The payment record of item `index`: id and `X-Request-ID` derived from the batch,
    /// so writing it again produces the same item.
    fn item_record(
        &self,
        user: &UserId,
        batch: &BatchRecord,
        request: &ValidBatch,
        index: usize,
        item: &ValidItem,
        psu_ip: IpAddr,
    ) -> Result<PaymentRecord, ServiceError> {
        let corrupt = |e: crate::domain::DomainError| StoreError::Corrupt(e.to_string());
        let seed = Sha256::digest(format!("{}#{index}", batch.batch_id).as_bytes());
        let mut random = [0u8; 10];
        random.copy_from_slice(&seed[..10]);
        let millis = u64::try_from(batch.created_at.timestamp_millis()).unwrap_or(0);
        let payment_id = PaymentId::parse(
            &uuid::Builder::from_unix_timestamp_millis(millis, &random)
                .into_uuid()
                .hyphenated()
                .to_string(),
        )
        .map_err(corrupt)?;
        let request_id = RequestId::from_uuid(Uuid::new_v5(
            &ITEM_REQUEST_NAMESPACE,
            payment_id.as_str().as_bytes(),
        ));
        let currency = Currency::parse(&item.currency).map_err(corrupt)?;
        Ok(PaymentRecord {
            user_id: user.clone(),
            payment_id,
            bank_id: batch.bank_id.clone(),
            product: batch.product,
            request_id,
            debtor: batch.debtor.clone(),
            creditor: Iban::parse(&item.creditor).map_err(corrupt)?,
            creditor_name: item.creditor_name.clone(),
            amount: Money::parse_instructed(&item.amount, currency).map_err(corrupt)?,
            remittance: item.remittance.clone(),
            bank_payment_id: None,
            status: None,
            sca_url: None,
            history: vec![],
            psu_ip: Some(psu_ip),
            redirect_url: request.redirect_url.clone(),
            lease_until: None,
            failure: None,
            sca_returned: false,
            poll: PollState {
                generation: 1,
                ..Default::default()
            },
            outcome_notified: false,
            batch_id: Some(batch.batch_id.clone()),
            batch_index: Some(u32::try_from(index).expect("at most 1000 items")),
            queued: true,
            end_to_end_id: item.end_to_end_id.clone(),
            created_at: batch.created_at,
            updated_at: batch.created_at,
            version: 0,
        })
    }

    /// One message per item, in batched sends (ten chunks of up to 100 in flight).
    async fn enqueue_items(&self, items: &[PaymentRecord]) -> Result<(), ServiceError> {
        let queue = self
            .bulk_queue
            .as_ref()
            .ok_or_else(|| StoreError::Backend(format!("{BULK_QUEUE_URL_ENV} is not set")))?;
        let messages: Vec<OutgoingMessage> = items
            .iter()
            .map(|p| OutgoingMessage {
                id: format!("i{}", p.batch_index.unwrap_or(0)),
                body: serde_json::to_string(&BulkMessage {
                    user_id: p.user_id.clone(),
                    payment_id: p.payment_id.clone(),
                })
                .expect("bulk messages serialise"),
                delay: StdDuration::ZERO,
            })
            .collect();
        use futures::StreamExt as _;
        let sends = messages.chunks(100).map(|chunk| queue.send_batch(chunk));
        let results: Vec<_> = futures::stream::iter(sends)
            .buffer_unordered(10)
            .collect()
            .await;
        for result in results {
            result.map_err(|e| StoreError::Backend(format!("bulk queue: {e}")))?;
        }
        Ok(())
    }

    // ---- the worker -------------------------------------------------------------------

    /// Handles one bulk message (module docs). `receive` is the message's receive count,
    /// `max_receives` the queue's `maxReceiveCount`.
    ///
    /// # Errors
    /// A store failure: SQS redelivers the message (the claim keeps it from doubling).
    pub async fn process_item(
        &self,
        message: &BulkMessage,
        receive: u32,
        max_receives: u32,
    ) -> Result<BulkOutcome, ServiceError> {
        let Some(record) = self
            .payments
            .get(&message.user_id, &message.payment_id)
            .await?
        else {
            warn!(payment_id = %message.payment_id, "bulk message for an unknown item dropped");
            return Ok(BulkOutcome::Done);
        };
        if record.bank_payment_id.is_some() {
            // Initiated already (a duplicate message): make sure its polling runs.
            self.ensure_sent(record).await?;
            return Ok(BulkOutcome::Done);
        }
        if record.failure.as_ref().is_some_and(|f| !f.retryable) {
            return Ok(BulkOutcome::Refused);
        }
        let now = self.clock.now();
        if !record.queued && record.failure.is_none() && lease_live(&record, now) {
            // Another worker is at the bank with it right now.
            return Ok(BulkOutcome::Done);
        }
        // Claim: one worker wins the conditional write.
        let mut claimed = record.clone();
        claimed.queued = false;
        claimed.failure = None;
        claimed.lease_until = Some(now + self.config.initiation_lease);
        if claimed.poll.started_at.is_none() {
            claimed.poll.started_at = Some(now);
        }
        claimed.updated_at = now;
        let claimed = match self.payments.update(&claimed).await {
            Ok(saved) => saved,
            Err(StoreError::VersionConflict { .. }) => return Ok(BulkOutcome::Done),
            Err(e) => return Err(e.into()),
        };
        // The poll chain first: it finishes the initiation if this worker dies at the bank.
        let claimed = self.ensure_sent(claimed).await?;
        self.wait_for_rate_slot(&claimed.bank_id).await?;
        match self.initiate_at_bank(claimed).await {
            Ok(saved) if saved.bank_payment_id.is_some() => Ok(BulkOutcome::Done),
            Ok(_) => Ok(BulkOutcome::Refused),
            Err(ServiceError::Bank(e)) => {
                if let BankError::AccessExceeded { retry_after } = &e {
                    return Ok(BulkOutcome::Requeue(
                        retry_after.unwrap_or(StdDuration::from_secs(1)),
                    ));
                }
                if receive >= max_receives {
                    self.give_up_item(message, e.code()).await?;
                    return Ok(BulkOutcome::Poison);
                }
                Ok(BulkOutcome::Retry(crate::webhook::retry_backoff(receive)))
            }
            Err(e) => Err(e),
        }
    }

    /// [`Self::process_item`], and on the message's last receive a failure of our own
    /// (storage, queue) is recorded on the item too, so nothing reaches the DLQ unexplained.
    ///
    /// # Errors
    /// As [`Self::process_item`].
    pub async fn process_item_or_give_up(
        &self,
        message: &BulkMessage,
        receive: u32,
        max_receives: u32,
    ) -> Result<BulkOutcome, ServiceError> {
        match self.process_item(message, receive, max_receives).await {
            Err(e) if receive >= max_receives => {
                warn!(payment_id = %message.payment_id, error = %super::super::log_text(&e),
                    "bulk item failed on its last receive");
                self.give_up_item(message, "INTERNAL_ERROR").await?;
                Ok(BulkOutcome::Poison)
            }
            other => other,
        }
    }

    /// Waits (at most ~10 s) for a slot of the bank's per-second initiation budget.
    async fn wait_for_rate_slot(&self, bank: &BankId) -> Result<(), ServiceError> {
        let Some(limit) = self
            .registry
            .get(bank)
            .map(|b| b.max_payments_per_second)
            .filter(|l| *l > 0)
        else {
            return Ok(());
        };
        for _ in 0..40 {
            let now = Utc::now();
            if self
                .payments
                .take_rate_slot(bank, now.timestamp(), limit)
                .await?
            {
                return Ok(());
            }
            // Sleep to the next second, with a little jitter so waiters spread out.
            let rest = 1_000 - i64::from(now.timestamp_subsec_millis().min(999));
            let jitter = rand::random::<u64>() % 50;
            tokio::time::sleep(StdDuration::from_millis(
                u64::try_from(rest).unwrap_or(0) + jitter,
            ))
            .await;
        }
        Err(ServiceError::Bank(BankError::AccessExceeded {
            retry_after: Some(StdDuration::from_secs(1)),
        }))
    }

    /// The last receive failed: the item is failed for good, with the bank's reason.
    async fn give_up_item(&self, message: &BulkMessage, code: &str) -> Result<(), ServiceError> {
        for _ in 0..4 {
            let Some(mut record) = self
                .payments
                .get(&message.user_id, &message.payment_id)
                .await?
            else {
                return Ok(());
            };
            if record.bank_payment_id.is_some() {
                return Ok(());
            }
            record.failure = Some(PaymentFailure {
                code: code.to_owned(),
                retryable: false,
                at: self.clock.now(),
            });
            record.lease_until = None;
            record.queued = false;
            match self.payments.update(&record).await {
                Ok(_) => {
                    warn!(payment_id = %message.payment_id, code,
                        "bulk item failed on its last attempt; its message goes to the DLQ");
                    return Ok(());
                }
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Sends a fresh bulk message for `message` after `delay` (429: Retry-After).
    ///
    /// # Errors
    /// The bulk queue failed.
    pub async fn requeue_item(
        &self,
        message: &BulkMessage,
        delay: StdDuration,
    ) -> Result<(), ServiceError> {
        let queue = self
            .bulk_queue
            .as_ref()
            .ok_or_else(|| StoreError::Backend(format!("{BULK_QUEUE_URL_ENV} is not set")))?;
        let body = serde_json::to_string(message).expect("bulk messages serialise");
        queue
            .send(&body, delay.min(crate::queue::MAX_DELAY))
            .await
            .map_err(|e| StoreError::Backend(format!("bulk queue: {e}")))?;
        Ok(())
    }

    // ---- reads --------------------------------------------------------------------------

    /// `GET /v1/payment-batches/{id}?cursor&limit`: totals per state and a page of items.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`] (also another user's batch); bad `cursor`/`limit`.
    pub async fn get_batch(
        &self,
        user: &UserId,
        id: &str,
        query: &HashMap<String, String>,
    ) -> Result<BatchView, ServiceError> {
        let id = BatchId::parse(id).map_err(|_| ServiceError::NotFound)?;
        let mut errors = Vec::new();
        let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
            None => 100,
            Some(Ok(n)) if (1..=MAX_ITEMS).contains(&n) => n,
            Some(_) => {
                errors.push(FieldError {
                    field: "limit".into(),
                    message: format!("must be between 1 and {MAX_ITEMS}"),
                });
                100
            }
        };
        let from = match query.get("cursor").filter(|c| !c.is_empty()) {
            None => 0,
            Some(c) => match c.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    errors.push(FieldError {
                        field: "cursor".into(),
                        message: "is not a cursor from a previous page".into(),
                    });
                    0
                }
            },
        };
        if !errors.is_empty() {
            return Err(ServiceError::Validation(errors));
        }
        let batch = self
            .payments
            .get_batch(user, &id)
            .await?
            .ok_or(ServiceError::NotFound)?;
        let mut items = self.payments.batch_items(user, &id).await?;
        items.retain(|p| p.user_id == *user);
        items.sort_by_key(|p| p.batch_index);
        let mut counts: BTreeMap<&'static str, u32> = [
            PaymentState::Queued,
            PaymentState::Initiating,
            PaymentState::AwaitingAuthorisation,
            PaymentState::InProgress,
            PaymentState::Completed,
            PaymentState::Rejected,
            PaymentState::Failed,
            PaymentState::Unknown,
        ]
        .into_iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        let mut all_final = true;
        for item in &items {
            let state = item.state();
            *counts.entry(state.as_str()).or_default() += 1;
            all_final &= state.is_final();
        }
        let done = batch.enqueued && items.len() == batch.total as usize && all_final;
        let page: Vec<BatchItemView> = items
            .iter()
            .filter(|p| p.batch_index.unwrap_or(0) >= from)
            .take(limit)
            .map(|p| BatchItemView {
                index: p.batch_index.unwrap_or(0),
                payment_id: p.payment_id.clone(),
                state: p.state(),
                status: p.status,
                instructed_amount: p.amount,
                creditor_name: p.creditor_name.clone(),
                end_to_end_identification: p.end_to_end_id.clone(),
                auth_url: (p.state() == PaymentState::AwaitingAuthorisation)
                    .then(|| p.sca_url.clone())
                    .flatten(),
                failure: p.failure.clone(),
            })
            .collect();
        let next_cursor = page
            .last()
            .map(|last| last.index + 1)
            .filter(|next| items.iter().any(|p| p.batch_index.unwrap_or(0) >= *next))
            .map(|n| n.to_string());
        Ok(BatchView {
            batch_id: batch.batch_id,
            bank_id: batch.bank_id,
            total: batch.total,
            counts,
            done,
            items: page,
            next_cursor,
            created_at: batch.created_at,
        })
    }

    // ---- validation ---------------------------------------------------------------------

    fn validate_batch(&self, body: &[u8]) -> Result<ValidBatch, ServiceError> {
        let body = crate::services::body::json_object(body)?;
        let mut errors = Vec::new();
        let mut fail = |field: String, message: String| errors.push(FieldError { field, message });
        for key in body.keys() {
            if !BATCH_FIELDS.contains(&key.as_str()) {
                fail(echo(key), "unknown field".into());
            }
        }
        let bank = match present(&body, "bankId") {
            Some(Value::String(text)) => {
                let found = BankId::parse(text)
                    .ok()
                    .and_then(|id| self.registry.get(&id))
                    .filter(|config| self.banks.contains_key(&config.id));
                if found.is_none() {
                    fail("bankId".into(), "unknown bank".into());
                }
                found
            }
            Some(_) => {
                fail("bankId".into(), "must be a string".into());
                None
            }
            None => {
                fail("bankId".into(), "is required".into());
                None
            }
        };
        let product = match present(&body, "paymentProduct") {
            None => Some(PaymentProduct::SepaCreditTransfers),
            Some(Value::String(text)) => match PaymentProduct::parse(text) {
                Some(p) if bank.is_none_or(|b| b.payment_products.contains(&p)) => Some(p),
                Some(_) => {
                    fail(
                        "paymentProduct".into(),
                        "is not offered by this bank".into(),
                    );
                    None
                }
                None => {
                    fail("paymentProduct".into(), "unknown payment product".into());
                    None
                }
            },
            Some(_) => {
                fail("paymentProduct".into(), "must be a string".into());
                None
            }
        };
        let debtor = match iban_of(&body, "debtorAccount") {
            Ok(iban) => Some(iban),
            Err((field, message)) => {
                fail(field, message);
                None
            }
        };
        let redirect_url = match present(&body, "redirectUrl") {
            None => None,
            Some(value) => match self.config.links.redirect_url(value) {
                Ok(url) => Some(url.to_string()),
                Err(message) => {
                    fail("redirectUrl".into(), message);
                    None
                }
            },
        };
        let list = match present(&body, "payments") {
            Some(Value::Array(list)) if (1..=MAX_ITEMS).contains(&list.len()) => list.as_slice(),
            Some(Value::Array(list)) => {
                fail(
                    "payments".into(),
                    format!("must list 1 to {MAX_ITEMS} payments, got {}", list.len()),
                );
                &[]
            }
            Some(_) => {
                fail("payments".into(), "must be an array".into());
                &[]
            }
            None => {
                fail("payments".into(), "is required".into());
                &[]
            }
        };
        let mut items = Vec::with_capacity(list.len());
        let mut first_currency: Option<Currency> = None;
        let mut end_to_end: HashMap<String, usize> = HashMap::new();
        for (i, value) in list.iter().enumerate() {
            let at = |f: &str| format!("payments[{i}].{f}");
            let Value::Object(item) = value else {
                fail(format!("payments[{i}]"), "must be an object".into());
                continue;
            };
            for key in item.keys() {
                if !ITEM_FIELDS.contains(&key.as_str()) {
                    fail(at(&echo(key)), "unknown field".into());
                }
            }
            let creditor = match iban_of(item, "creditorAccount") {
                Ok(iban) => Some(iban),
                Err((field, message)) => {
                    fail(format!("payments[{i}].{field}"), message);
                    None
                }
            };
            let amount = match present(item, "instructedAmount") {
                Some(Value::Object(a)) => {
                    let currency = match a.get("currency") {
                        Some(Value::String(code)) => match Currency::parse(code) {
                            Ok(c) => Some(c),
                            Err(e) => {
                                fail(at("instructedAmount.currency"), e.to_string());
                                None
                            }
                        },
                        _ => {
                            fail(at("instructedAmount.currency"), "is required".into());
                            None
                        }
                    };
                    if let (Some(c), Some(bank), Some(product)) = (currency, bank, product) {
                        if !supports(bank, product, c) {
                            fail(
                                at("instructedAmount.currency"),
                                format!(
                                    "{} is not supported by {} for {product}",
                                    c.code(),
                                    bank.name
                                ),
                            );
                        } else if product != PaymentProduct::CrossBorderCreditTransfers {
                            match first_currency {
                                None => first_currency = Some(c),
                                Some(first) if first != c => fail(
                                    at("instructedAmount.currency"),
                                    format!(
                                        "{} differs from the batch's {}; {product} takes one currency per batch",
                                        c.code(),
                                        first.code()
                                    ),
                                ),
                                Some(_) => {}
                            }
                        }
                    }
                    match (a.get("amount"), currency) {
                        (Some(Value::String(text)), Some(c)) => {
                            match Money::parse_instructed(text, c) {
                                Ok(m) => Some(m),
                                Err(e) => {
                                    fail(at("instructedAmount.amount"), e.to_string());
                                    None
                                }
                            }
                        }
                        (Some(Value::String(_)), None) => None,
                        _ => {
                            fail(
                                at("instructedAmount.amount"),
                                "must be a decimal string such as \"12.30\"".into(),
                            );
                            None
                        }
                    }
                }
                _ => {
                    fail(
                        at("instructedAmount"),
                        "must be an object with amount and currency".into(),
                    );
                    None
                }
            };
            let name = match present(item, "creditorName") {
                Some(Value::String(text)) => match check_text(text, MAX_CREDITOR_NAME, false) {
                    Ok(()) => Some(text.trim().to_owned()),
                    Err(m) => {
                        fail(at("creditorName"), m);
                        None
                    }
                },
                Some(_) => {
                    fail(at("creditorName"), "must be a string".into());
                    None
                }
                None => {
                    fail(at("creditorName"), "is required".into());
                    None
                }
            };
            let remittance = match present(item, "remittanceInformationUnstructured") {
                None => None,
                Some(Value::String(text)) => match check_text(text, MAX_REMITTANCE, true) {
                    Ok(()) => Some(text.clone()),
                    Err(m) => {
                        fail(at("remittanceInformationUnstructured"), m);
                        None
                    }
                },
                Some(_) => {
                    fail(
                        at("remittanceInformationUnstructured"),
                        "must be a string".into(),
                    );
                    None
                }
            };
            let end_to_end_id = match present(item, "endToEndIdentification") {
                None => None,
                Some(Value::String(text)) => match check_text(text, MAX_END_TO_END, false) {
                    Ok(()) => {
                        if let Some(first) = end_to_end.insert(text.clone(), i) {
                            fail(
                                at("endToEndIdentification"),
                                format!("duplicates payments[{first}]"),
                            );
                        }
                        Some(text.clone())
                    }
                    Err(m) => {
                        fail(at("endToEndIdentification"), m);
                        None
                    }
                },
                Some(_) => {
                    fail(at("endToEndIdentification"), "must be a string".into());
                    None
                }
            };
            if let (Some(creditor), Some(amount), Some(creditor_name)) = (creditor, amount, name) {
                items.push(ValidItem {
                    amount: amount.to_minor_string(),
                    currency: amount.currency().code().to_owned(),
                    creditor,
                    creditor_name,
                    remittance,
                    end_to_end_id,
                });
            }
        }
        match (bank, product, debtor) {
            (Some(bank), Some(product), Some(debtor)) if errors.is_empty() => Ok(ValidBatch {
                bank_id: bank.id.clone(),
                product,
                debtor,
                redirect_url,
                items,
            }),
            _ => Err(ServiceError::Validation(errors)),
        }
    }
}

/// `{field: {iban}}` of `body`, validated; else (field path, message).
fn iban_of(body: &Map<String, Value>, field: &str) -> Result<String, (String, String)> {
    match present(body, field) {
        None => Err((field.to_owned(), "is required".into())),
        Some(Value::Object(account)) => {
            if let Some(key) = account.keys().find(|k| *k != "iban") {
                return Err((format!("{field}.{}", echo(key)), "unknown field".into()));
            }
            match account.get("iban") {
                Some(Value::String(text)) => Iban::parse(text)
                    .map(|iban| iban.expose().to_owned())
                    .map_err(|e| (format!("{field}.iban"), e.to_string())),
                Some(_) => Err((format!("{field}.iban"), "must be a string".into())),
                None => Err((format!("{field}.iban"), "is required".into())),
            }
        }
        Some(_) => Err((field.to_owned(), "must be an object with an iban".into())),
    }
}
