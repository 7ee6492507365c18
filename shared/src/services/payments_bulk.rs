//! Bulk payments: a batch of up to [`MAX_ITEMS`] credit transfers from one account,
//! accepted at once and initiated item by item by the bulk worker over SQS.
//!
//! - **Acceptance** validates every item first (one 400 lists every bad item by index and
//!   field; nothing is stored or queued if any is bad), then, under the request's
//!   `Idempotency-Key`: records the batch, stores its items in chunks of
//!   [`BATCH_CHUNK_ITEMS`] (one batched write), marks the batch `chunksWritten`, sends one
//!   message per chunk and marks it `enqueued`. Its cost does not grow with the number of
//!   items (a 1,000-item batch is 10 chunks: a handful of writes and one batched send). A
//!   retry after a crash continues where it stopped.
//! - **Fan-out**: the worker expands a chunk message into the chunk's payment records
//!   (state `queued`; each written only if it does not exist yet, so a redelivered chunk
//!   never resets an item that moved on) and initiates the items it wrote itself, within
//!   [`CHUNK_BUDGET`] (less when the invocation's deadline is nearer: [`CHUNK_TAIL`] is
//!   kept); only what is left (transient failures, items it had no time or rate slot for,
//!   items of a redelivered chunk) gets one queue message per item. One delivery expands a
//!   chunk at a time (a lease on the chunk record); a duplicate delivered meanwhile looks
//!   again after the lease. Items get ids and `X-Request-ID`s derived from the batch and
//!   their index, so every expansion produces the same items.
//! - **An item** (in its chunk, or from its own message) takes a slot of the bank's
//!   per-second budget (an atomic counter shared by all workers, handed out within a
//!   process by [`super::super::rate_pool`]), then is claimed with a conditional write (a
//!   redelivered or concurrent message finds it claimed and stops) and initiated with its
//!   stable `X-Request-ID`. Its status-poll chain (the same poller as single payments)
//!   starts with the write that records the bank's answer; until then the message that
//!   brought the item (its chunk's or its own) is what brings it back if the worker dies
//!   at the bank: SQS redelivers it, the lease has run out, the bank de-duplicates the
//!   repeated call. 5xx and timeouts are retried by SQS with backoff; a 429 (or no slot
//!   within 20 s) re-queues the item after `Retry-After` without using up the message's
//!   receives; a permanent refusal marks the item rejected with the bank's code. An item
//!   still failing on its last receive is marked failed with the reason and its message
//!   goes to the DLQ.
//! - **Totals** are derived from the items (index `ByGsi1`, their `state` attribute only);
//!   items of chunks not expanded yet count as queued. They cannot drift however often a
//!   message is retried. Items are read a page at a time from the cursor's index.
//! - **Status polls** of a chunk's items start as one group message, and chains stepped
//!   together go on together (one message per delay for up to 100 items).
//! - **The watch** (one chain per batch, with a generation on the batch record) tells the
//!   user once when every item is final.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration as StdDuration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{info, warn};
use uuid::Uuid;

use super::*;
use crate::domain::BatchId;
use crate::queue::OutgoingMessage;
use crate::store::{BATCH_CHUNK_ITEMS, BatchChunk, BatchItemSpec, BatchRecord, PollState};

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
/// How long a chunk message starts items itself before it leaves the rest to item
/// messages (the worker's timeout in template.yaml is 60 s; an item started just before
/// takes at most its bank's `timeoutMs` and a few writes more).
pub const CHUNK_BUDGET: StdDuration = StdDuration::from_secs(40);
/// What a chunk keeps of its invocation's time for the work after its last start: that
/// bank call (its `timeoutMs`), the writes, the poll group and the item messages.
pub const CHUNK_TAIL: StdDuration = StdDuration::from_secs(30);
/// Longest wait of a chunk's item for a rate slot.
const CHUNK_SLOT_WAIT_SECS: u64 = 10;
/// How long one delivery of a chunk message holds the chunk: its budget, and the rest of
/// the worker's 60 s timeout, so that a lease outlives the delivery holding it.
pub const CHUNK_LEASE: chrono::Duration = chrono::Duration::seconds(70);
/// Items of one chunk at the bank (or waiting for a rate slot) at once.
const CHUNK_CONCURRENCY: usize = 10;
/// How long after acceptance a batch's watch gives up (module docs of `watch_batch`).
pub const WATCH_HORIZON: chrono::Duration = chrono::Duration::hours(72);

/// How old a watch look's write must be before a redelivered message sends the look's
/// lost message again (the status queue's visibility timeout, 180 s, is longer: a crashed
/// look's message comes back after it).
pub const WATCH_RESEND_AFTER: chrono::Duration = chrono::Duration::seconds(60);
/// Namespace of the items' `X-Request-ID`s (UUID v5 of the item id).
const ITEM_REQUEST_NAMESPACE: Uuid = Uuid::from_u128(0x3b9e_51c2_7d04_4a8f_b6e1_0c55_92d7_1a3e);

/// The bulk queue's message: which item to initiate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkMessage {
    pub user_id: UserId,
    pub payment_id: PaymentId,
}

/// The bulk queue's message that asks for a chunk to be expanded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkMessage {
    pub user_id: UserId,
    pub batch_id: BatchId,
    pub chunk: u32,
}

/// Any message of the bulk queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BulkWork {
    Item(BulkMessage),
    Chunk(ChunkMessage),
}

/// What [`Payments::claim_item`] found.
enum ItemClaim {
    /// Leased to this worker, with a rate slot: initiate it.
    Claimed(Box<PaymentRecord>),
    /// Nothing to do (unknown, or initiated).
    Nothing,
    /// Another worker holds it (its lease runs this much longer): look again after that,
    /// since a holder that died leaves it to this message.
    Busy(StdDuration),
    /// The bank refused it for good.
    Refused,
    /// No rate slot came in time: try again later.
    NoSlot,
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

/// A validated batch, in canonical form (its JSON is the fingerprint).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidBatch {
    bank_id: BankId,
    product: PaymentProduct,
    debtor: String,
    redirect_url: Option<String>,
    items: Vec<BatchItemSpec>,
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
        let chunks: Vec<BatchChunk> = request
            .items
            .chunks(BATCH_CHUNK_ITEMS)
            .enumerate()
            .map(|(n, items)| BatchChunk {
                user_id: user.clone(),
                batch_id: batch_id.clone(),
                chunk: u32::try_from(n).expect("at most 10 chunks"),
                first_index: u32::try_from(n * BATCH_CHUNK_ITEMS).expect("at most 1000 items"),
                items: items.to_vec(),
                expanded: false,
                lease_until: None,
                version: 0,
            })
            .collect();
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
                    chunks: u32::try_from(chunks.len()).expect("at most 10 chunks"),
                    redirect_url: request.redirect_url.clone(),
                    psu_ip: Some(psu_ip),
                    chunks_written: false,
                    enqueued: false,
                    done_notified: false,
                    watch_generation: 0,
                    watch_unsent: false,
                    watch_at: None,
                    created_at: now,
                    version: 0,
                };
                self.payments.insert_batch(&batch).await?;
                batch
            }
        };
        if !batch.chunks_written {
            self.payments.put_chunks(&chunks).await?;
            batch.chunks_written = true;
            batch = self.payments.update_batch(&batch).await?;
        }
        if !batch.enqueued {
            let messages: Vec<OutgoingMessage> = chunks
                .iter()
                .map(|c| {
                    outgoing(
                        format!("c{}", c.chunk),
                        &BulkWork::Chunk(ChunkMessage {
                            user_id: user.clone(),
                            batch_id: batch_id.clone(),
                            chunk: c.chunk,
                        }),
                    )
                })
                .collect();
            self.send_bulk(&messages).await?;
            // The batch's watch: it tells the user when every item is final. (A retry of
            // an acceptance that died before the write below sends it again: the copies
            // share generation 0, and the first to look moves it on.)
            self.send_watch(
                user,
                &batch_id,
                batch.watch_generation,
                self.config.batch_watch,
            )
            .await?;
            batch.enqueued = true;
            batch = self.payments.update_batch(&batch).await?;
            info!(batch_id = %batch_id, items = total, chunks = chunks.len(), "batch accepted");
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

    /// Expands one chunk of an accepted batch: stores its items that are not stored yet and
    /// initiates those it stored itself, right here (no queue message per item on the
    /// happy path), each with a rate slot and a claim exactly as the item path takes them.
    /// What is not done within [`CHUNK_BUDGET`] — items that failed transiently, that got
    /// no rate slot, that existed already (a redelivered chunk), or that there was no time
    /// for — gets one item message each, with the delay it needs, and from then on takes
    /// the item path (SQS retries, receive counts, DLQ). The chunk is then marked expanded.
    ///
    /// A crash midway leaves the chunk unmarked: its message comes again, finds every item
    /// stored, and sends one message per item; the items' claims make that safe.
    ///
    /// # Errors
    /// A store or queue failure: SQS redelivers the chunk message.
    pub async fn expand_chunk(&self, message: &ChunkMessage) -> Result<BulkOutcome, ServiceError> {
        self.expand_chunk_within(message, CHUNK_BUDGET).await
    }

    /// [`Self::expand_chunk`], starting initiations for at most `budget` (what the
    /// invocation's time left allows, [`CHUNK_TAIL`] kept for what comes after).
    async fn expand_chunk_within(
        &self,
        message: &ChunkMessage,
        budget: StdDuration,
    ) -> Result<BulkOutcome, ServiceError> {
        let started = std::time::Instant::now();
        let user = &message.user_id;
        let (batch, chunk) = tokio::try_join!(
            self.payments.get_batch(user, &message.batch_id),
            self.payments
                .get_chunk(user, &message.batch_id, message.chunk)
        )?;
        let (Some(batch), Some(chunk)) = (batch, chunk) else {
            warn!(batch_id = %message.batch_id, chunk = message.chunk,
                "bulk chunk message for an unknown batch dropped");
            return Ok(BulkOutcome::Done);
        };
        if chunk.expanded {
            return Ok(BulkOutcome::Done);
        }
        // One delivery at a time: a duplicate delivered while another expands the chunk
        // looks again when that one's lease ends (by then the chunk is marked expanded,
        // unless its holder died, and then this one takes over).
        let now = self.clock.now();
        if let Some(until) = chunk.lease_until.filter(|until| *until > now) {
            let wait = (until - now).to_std().unwrap_or_default() + StdDuration::from_secs(1);
            return Ok(BulkOutcome::Requeue(wait));
        }
        let mut leased = chunk;
        leased.lease_until = Some(now + CHUNK_LEASE);
        let chunk = match self.payments.update_chunk(&leased).await {
            Ok(chunk) => chunk,
            Err(StoreError::VersionConflict { .. }) => {
                return Ok(BulkOutcome::Requeue(StdDuration::from_secs(5)));
            }
            Err(e) => return Err(e.into()),
        };
        let items = chunk
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let index = chunk.first_index + u32::try_from(i).expect("at most 100 items");
                self.item_record(&batch, index, item)
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let stored = self.payments.insert_many(&items).await?;
        crate::chaos::crash_point("chunk_after_store");
        let (fresh, existing): (Vec<_>, Vec<_>) = items
            .into_iter()
            .zip(stored)
            .partition(|(_, stored)| *stored);
        // Items of a redelivered chunk: those not at the bank yet get an item message; the
        // chains of those that are get their first message again (a same-generation
        // duplicate if it went out already, dropped by the poller), in case the crash came
        // between their writes and the group below.
        let mut later: Vec<(PaymentRecord, StdDuration)> = Vec::new();
        let mut chains: Vec<PaymentRecord> = Vec::new();
        if !existing.is_empty() {
            let reads: Vec<_> = existing
                .iter()
                .map(|(p, _)| self.payments.get(&p.user_id, &p.payment_id))
                .collect();
            let current: Vec<Result<Option<PaymentRecord>, StoreError>> =
                futures::stream::iter(reads).buffered(16).collect().await;
            for ((asked, _), now) in existing.into_iter().zip(current) {
                match now? {
                    Some(p) if p.bank_payment_id.is_some() => {
                        if p.is_final() || p.poll.gave_up {
                            // Nothing to follow.
                        } else if p.poll.sent {
                            chains.push(p);
                        } else {
                            // Its item message starts the chain (`ensure_sent`).
                            later.push((p, StdDuration::ZERO));
                        }
                    }
                    Some(p) => later.push((p, StdDuration::ZERO)),
                    None => later.push((asked, StdDuration::ZERO)),
                }
            }
        }
        use futures::StreamExt as _;
        let attempts: Vec<_> = fresh
            .into_iter()
            .map(|(record, _)| self.initiate_fresh(record, started, budget))
            .collect();
        let outcomes: Vec<(PaymentRecord, Option<StdDuration>)> = futures::stream::iter(attempts)
            .buffer_unordered(CHUNK_CONCURRENCY)
            .collect()
            .await;
        let mut initiated = 0usize;
        for (record, retry) in outcomes {
            match retry {
                None => {
                    initiated += 1;
                    if record.bank_payment_id.is_some()
                        && record.poll.sent
                        && !record.is_final()
                        && !record.poll.gave_up
                    {
                        chains.push(record);
                    }
                }
                Some(delay) => later.push((record, delay)),
            }
        }
        self.start_chains(&chains).await?;
        if !later.is_empty() {
            let messages: Vec<OutgoingMessage> = later
                .iter()
                .map(|(p, delay)| {
                    let mut m = outgoing(
                        format!("i{}", p.batch_index.unwrap_or(0)),
                        &BulkWork::Item(BulkMessage {
                            user_id: p.user_id.clone(),
                            payment_id: p.payment_id.clone(),
                        }),
                    );
                    m.delay = (*delay).min(crate::queue::MAX_DELAY);
                    m
                })
                .collect();
            self.send_bulk(&messages).await?;
        }
        crate::chaos::crash_point("chunk_before_mark");
        let mut done = chunk;
        done.expanded = true;
        done.lease_until = None;
        match self.payments.update_chunk(&done).await {
            Ok(_) | Err(StoreError::VersionConflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        info!(batch_id = %message.batch_id, chunk = message.chunk, initiated,
            queued = later.len(), elapsed_ms = started.elapsed().as_millis() as u64,
            "batch chunk expanded");
        Ok(BulkOutcome::Done)
    }

    async fn send_watch(
        &self,
        user: &UserId,
        batch: &BatchId,
        generation: u64,
        delay: StdDuration,
    ) -> Result<(), ServiceError> {
        let body = serde_json::to_string(&PollWork::Watch(BatchWatch {
            user_id: user.clone(),
            batch_id: batch.clone(),
            generation,
        }))
        .expect("batch watches serialise");
        self.status_queue
            .send(&body, delay)
            .await
            .map_err(|e| StoreError::Backend(format!("payment status queue: {e}")))?;
        Ok(())
    }

    /// One look of a batch's watch: when every item is final, the user is told once
    /// (event id `batch:{id}:done`, with the totals) and the watch ends; otherwise it looks
    /// again after `PAYMENT_BATCH_WATCH_SECS`. It gives up [`WATCH_HORIZON`] after the
    /// batch was accepted (its items give up polling after 24 hours, so it is done by
    /// then unless an item message is stuck in the DLQ).
    ///
    /// One chain per batch, as a payment's poll chain: a look moves the batch's watch
    /// generation with a conditional write before it sends the next message, so a
    /// duplicate or late message (SQS delivers at least once) is dropped instead of
    /// starting a second chain; a look that died between that write and its send is sent
    /// again by its own redelivery, once the write is [`WATCH_RESEND_AFTER`] old.
    ///
    /// # Errors
    /// A store or queue failure: the message is retried (the notification is stored once
    /// per event id).
    pub async fn watch_batch(&self, watch: &BatchWatch) -> Result<PollOutcome, ServiceError> {
        for _ in 0..4 {
            let Some(batch) = self
                .payments
                .get_batch(&watch.user_id, &watch.batch_id)
                .await?
            else {
                return Ok(PollOutcome::Dropped);
            };
            if batch.done_notified {
                return Ok(PollOutcome::Dropped);
            }
            let now = self.clock.now();
            if watch.generation + 1 == batch.watch_generation
                && batch.watch_unsent
                && batch
                    .watch_at
                    .is_some_and(|at| at + WATCH_RESEND_AFTER > now)
            {
                // Too early to tell a crashed look from one still sending: come again.
                return Ok(PollOutcome::Later);
            }
            if watch.generation + 1 == batch.watch_generation && batch.watch_unsent {
                info!(batch_id = %batch.batch_id, generation = batch.watch_generation,
                    "resending a batch watch that a crashed look did not send");
                self.send_watch(
                    &batch.user_id,
                    &batch.batch_id,
                    batch.watch_generation,
                    StdDuration::ZERO,
                )
                .await?;
                self.mark_watch_sent(batch).await;
                return Ok(PollOutcome::Resent);
            }
            if watch.generation != batch.watch_generation {
                return Ok(PollOutcome::Dropped);
            }
            match self.watch_look(batch).await {
                Err(ServiceError::Store(StoreError::VersionConflict { .. })) => continue,
                other => return other,
            }
        }
        Err(StoreError::VersionConflict {
            expected: watch.generation,
        }
        .into())
    }

    async fn mark_watch_sent(&self, batch: BatchRecord) {
        let mut sent = batch;
        sent.watch_unsent = false;
        if let Err(e) = self.payments.update_batch(&sent).await {
            warn!(batch_id = %sent.batch_id, error = %e, "could not mark a batch watch sent");
        }
    }

    /// The look of the live watch message.
    async fn watch_look(&self, batch: BatchRecord) -> Result<PollOutcome, ServiceError> {
        let watch = BatchWatch {
            user_id: batch.user_id.clone(),
            batch_id: batch.batch_id.clone(),
            generation: batch.watch_generation,
        };
        let counts = self
            .payments
            .batch_counts(&watch.user_id, &watch.batch_id)
            .await?;
        if !(batch.enqueued && final_items(&counts) == batch.total) {
            let now = self.clock.now();
            if now - batch.created_at > WATCH_HORIZON {
                warn!(batch_id = %batch.batch_id, "batch not finished after its watch horizon; watch ends");
                return Ok(PollOutcome::GaveUp);
            }
            let mut next = batch;
            next.watch_generation += 1;
            next.watch_unsent = true;
            next.watch_at = Some(now);
            let next = self.payments.update_batch(&next).await?;
            self.send_watch(
                &next.user_id,
                &next.batch_id,
                next.watch_generation,
                self.config.batch_watch,
            )
            .await?;
            self.mark_watch_sent(next).await;
            return Ok(PollOutcome::Continued);
        }
        let count = |state: PaymentState| counts.get(&state).copied().unwrap_or(0);
        let (completed, rejected) = (
            count(PaymentState::Completed),
            count(PaymentState::Rejected),
        );
        let (failed, unknown) = (count(PaymentState::Failed), count(PaymentState::Unknown));
        let mut message = format!("{completed} of {} payments were executed", batch.total);
        for (n, what) in [
            (rejected, "rejected"),
            (failed, "failed"),
            (unknown, "of unknown status"),
        ] {
            if n > 0 {
                message.push_str(&format!(", {n} {what}"));
            }
        }
        message.push('.');
        let notification = Notification {
            user_id: watch.user_id.clone(),
            notification_id: crate::domain::NotificationId::new(),
            event_id: format!("batch:{}:done", batch.batch_id),
            kind: "payment_batch.done".to_owned(),
            title: "Payment batch done".to_owned(),
            message,
            data: serde_json::json!({
                "batchId": batch.batch_id,
                "total": batch.total,
                "completed": completed,
                "rejected": rejected,
                "failed": failed,
                "unknown": unknown,
            }),
            created_at: self.clock.now(),
        };
        self.notifier
            .notify(&notification)
            .await
            .map_err(StoreError::from)?;
        crate::chaos::crash_point("watch_after_notify");
        let mut marked = batch;
        marked.done_notified = true;
        match self.payments.update_batch(&marked).await {
            // Told already by a concurrent look (the notification is stored once).
            Ok(_) | Err(StoreError::VersionConflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        info!(batch_id = %marked.batch_id, completed, rejected, failed, unknown, "batch done; user notified");
        Ok(PollOutcome::Final)
    }

    /// The first poll messages of `records`' chains, in groups of up to 100 per delay (one
    /// status queue message per chunk instead of one per item).
    async fn start_chains(&self, records: &[PaymentRecord]) -> Result<(), ServiceError> {
        self.send_poll_groups(records.iter().map(|p| (self.first_poll_delay(p), p)))
            .await
    }

    /// One item just stored by [`Self::expand_chunk`]: a rate slot, the claim, the bank.
    /// Answers the record and, unless the bank has settled it either way, the delay after
    /// which its item message should come.
    async fn initiate_fresh(
        &self,
        record: PaymentRecord,
        started: std::time::Instant,
        budget: StdDuration,
    ) -> (PaymentRecord, Option<StdDuration>) {
        let Some(left) = budget.checked_sub(started.elapsed()) else {
            return (record, Some(StdDuration::ZERO));
        };
        // An item that gets no slot soon takes the item path (its own message, 1 s later)
        // rather than holding the chunk's invocation.
        let max_wait = u32::try_from(left.as_secs().min(CHUNK_SLOT_WAIT_SECS)).unwrap_or(0);
        match self.wait_for_rate_slot(&record.bank_id, max_wait).await {
            Ok(true) => {}
            Ok(false) => return (record, Some(StdDuration::from_secs(1))),
            Err(_) => return (record, Some(StdDuration::from_secs(5))),
        }
        let now = self.clock.now();
        let mut claimed = record.clone();
        claimed.queued = false;
        claimed.lease_until = Some(now + self.config.initiation_lease);
        claimed.updated_at = now;
        let claimed = match self.payments.update(&claimed).await {
            Ok(saved) => saved,
            // Someone else has it (a duplicate chunk message): the item path sorts it out.
            Err(_) => return (record, Some(StdDuration::ZERO)),
        };
        match self
            .initiate_at_bank_with(claimed.clone(), ChainStart::ByCaller)
            .await
        {
            Ok(saved) => (saved, None),
            Err(ServiceError::Bank(BankError::AccessExceeded { retry_after })) => (
                claimed,
                Some(retry_after.unwrap_or(StdDuration::from_secs(1))),
            ),
            Err(ServiceError::Bank(_)) => (claimed, Some(crate::webhook::retry_backoff(1))),
            // A store failure after the claim: the message comes once the lease is over.
            Err(_) => (
                claimed,
                Some(
                    self.config
                        .initiation_lease
                        .to_std()
                        .unwrap_or(StdDuration::from_secs(60))
                        + StdDuration::from_secs(1),
                ),
            ),
        }
    }

    /// The record `index` of `chunk` as its expansion writes it (for tests).
    #[cfg(test)]
    pub(crate) async fn item_record_for_tests(
        &self,
        chunk: &ChunkMessage,
        index: u32,
    ) -> PaymentRecord {
        let batch = self
            .payments
            .get_batch(&chunk.user_id, &chunk.batch_id)
            .await
            .unwrap()
            .unwrap();
        let stored = self
            .payments
            .get_chunk(&chunk.user_id, &chunk.batch_id, chunk.chunk)
            .await
            .unwrap()
            .unwrap();
        let at = usize::try_from(index - stored.first_index).unwrap();
        self.item_record(&batch, index, &stored.items[at]).unwrap()
    }

    /// The payment record of item `index`: id and `X-Request-ID` derived from the batch,
    /// so writing it again produces the same item.
    fn item_record(
        &self,
        batch: &BatchRecord,
        index: u32,
        item: &BatchItemSpec,
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
            user_id: batch.user_id.clone(),
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
            psu_ip: batch.psu_ip,
            redirect_url: batch.redirect_url.clone(),
            lease_until: None,
            failure: None,
            sca_returned: false,
            poll: PollState {
                generation: 1,
                ..Default::default()
            },
            outcome_notified: false,
            batch_id: Some(batch.batch_id.clone()),
            batch_index: Some(index),
            queued: true,
            end_to_end_id: item.end_to_end_id.clone(),
            created_at: batch.created_at,
            updated_at: batch.created_at,
            version: 0,
        })
    }

    /// Sends bulk messages in batched sends (ten chunks of up to 100 in flight).
    async fn send_bulk(&self, messages: &[OutgoingMessage]) -> Result<(), ServiceError> {
        let queue = self
            .bulk_queue
            .as_ref()
            .ok_or_else(|| StoreError::Backend(format!("{BULK_QUEUE_URL_ENV} is not set")))?;
        use futures::StreamExt as _;
        // Collected first: the stream then holds no closure (its future stays `Send` for
        // any lifetime, as the worker's spawned tasks need).
        let sends: Vec<_> = messages
            .chunks(100)
            .map(|chunk| queue.send_batch(chunk))
            .collect();
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
        let claimed = match self.claim_item(message).await? {
            ItemClaim::Claimed(record) => *record,
            ItemClaim::Nothing => return Ok(BulkOutcome::Done),
            ItemClaim::Busy(wait) => return Ok(BulkOutcome::Requeue(wait)),
            ItemClaim::Refused => return Ok(BulkOutcome::Refused),
            ItemClaim::NoSlot => return Ok(BulkOutcome::Requeue(StdDuration::from_secs(1))),
        };
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

    /// Claims the item of `message` for this worker (a lease) with a slot of its bank's
    /// initiation budget, or says why not. The slot is taken before the claim is written,
    /// so no lease is held while waiting for one. A lost race looks again rather than
    /// assuming the winner took the item.
    async fn claim_item(&self, message: &BulkMessage) -> Result<ItemClaim, ServiceError> {
        let mut slot = false;
        for _ in 0..4 {
            let Some(record) = self
                .payments
                .get(&message.user_id, &message.payment_id)
                .await?
            else {
                warn!(payment_id = %message.payment_id, "bulk message for an unknown item dropped");
                return Ok(ItemClaim::Nothing);
            };
            if record.bank_payment_id.is_some() {
                // Initiated already (a duplicate message): make sure its polling runs.
                self.ensure_sent(record).await?;
                return Ok(ItemClaim::Nothing);
            }
            if record.failure.as_ref().is_some_and(|f| !f.retryable) {
                return Ok(ItemClaim::Refused);
            }
            let now = self.clock.now();
            if !record.queued && record.failure.is_none() && lease_live(&record, now) {
                // Another worker is at the bank with it right now.
                let left = record
                    .lease_until
                    .and_then(|until| (until - now).to_std().ok())
                    .unwrap_or_default();
                return Ok(ItemClaim::Busy(left + StdDuration::from_secs(1)));
            }
            if !slot {
                if !self
                    .wait_for_rate_slot(&record.bank_id, super::super::rate_pool::MAX_WAIT_SECONDS)
                    .await?
                {
                    return Ok(ItemClaim::NoSlot);
                }
                slot = true;
            }
            let now = self.clock.now();
            let mut claimed = record.clone();
            claimed.queued = false;
            claimed.failure = None;
            claimed.lease_until = Some(now + self.config.initiation_lease);
            claimed.updated_at = now;
            match self.payments.update(&claimed).await {
                Ok(saved) => return Ok(ItemClaim::Claimed(Box::new(saved))),
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // Four lost races in a row: someone else is busy with it; look again soon.
        Ok(ItemClaim::Busy(StdDuration::from_secs(5)))
    }

    /// Any bulk queue message: a chunk is expanded ([`Self::expand_chunk`]), an item
    /// initiated ([`Self::process_item_or_give_up`]).
    ///
    /// # Errors
    /// As those two.
    ///
    /// `time_left` is the invocation's (from its deadline): a chunk starts initiations
    /// only while [`CHUNK_TAIL`] of it remains, so the rest of its work ends in time.
    pub async fn process_work(
        &self,
        work: &BulkWork,
        receive: u32,
        max_receives: u32,
        time_left: Option<StdDuration>,
    ) -> Result<BulkOutcome, ServiceError> {
        match work {
            BulkWork::Item(message) => {
                self.process_item_or_give_up(message, receive, max_receives)
                    .await
            }
            BulkWork::Chunk(message) => {
                let budget = time_left
                    .map_or(CHUNK_BUDGET, |left| left.saturating_sub(CHUNK_TAIL))
                    .min(CHUNK_BUDGET);
                self.expand_chunk_within(message, budget).await
            }
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

    /// Waits (at most [`super::super::rate_pool::MAX_WAIT_SECONDS`]) for a slot of the
    /// bank's per-second initiation budget: `false` when none came.
    async fn wait_for_rate_slot(&self, bank: &BankId, max_wait: u32) -> Result<bool, ServiceError> {
        let Some(limit) = self
            .registry
            .get(bank)
            .map(|b| b.max_payments_per_second)
            .filter(|l| *l > 0)
        else {
            return Ok(true);
        };
        let take = |second, want| self.payments.take_rate_slots(bank, second, want, limit);
        Ok(self.rate_pool.acquire(bank, limit, max_wait, take).await?)
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
        let ((items, more), stored) = futures::try_join!(
            self.payments.batch_items_page(user, &id, from, limit),
            self.payments.batch_counts(user, &id),
        )?;
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
        .map(|s| (s.as_str(), stored.get(&s).copied().unwrap_or(0)))
        .collect();
        // Queued is the rest: items waiting for (or back in) the queue, and the items of
        // chunks not expanded yet.
        let counted: u32 = stored.values().sum();
        counts.insert(
            PaymentState::Queued.as_str(),
            batch.total.saturating_sub(counted),
        );
        let done = batch.enqueued && final_items(&stored) == batch.total;
        let page: Vec<BatchItemView> = items
            .iter()
            .filter(|p| p.user_id == *user)
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
            .filter(|_| more)
            .map(|last| (last.index + 1).to_string());
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
                items.push(BatchItemSpec {
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
/// A bulk queue message, sent at once.
fn outgoing(id: String, work: &BulkWork) -> OutgoingMessage {
    OutgoingMessage {
        id,
        body: serde_json::to_string(work).expect("bulk messages serialise"),
        delay: StdDuration::ZERO,
    }
}

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

/// How many of a batch's items are final, from its counters.
fn final_items(counts: &BTreeMap<PaymentState, u32>) -> u32 {
    counts
        .iter()
        .filter(|(state, _)| state.is_final())
        .map(|(_, n)| n)
        .sum()
}
