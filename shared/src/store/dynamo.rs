//! DynamoDB adapters for the stores (aws-sdk-dynamodb + serde_dynamo).
//!
//! Items carry the record's own attributes plus the generic keys `pk`/`sk` (and
//! `gsi1pk`/`gsi1sk`, `gsi2pk`/`gsi2sk` where an index needs them); see docs/data-model.md.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use chrono::NaiveDate;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BatchChunk, BatchRecord, ConsentOutbox, ConsentRecord, ConsentStore, IdempotencyRecord,
    IdempotencyStore, NonceStore, Notification, NotificationStore, PaymentPage, PaymentRecord,
    PaymentState, PaymentStore, StoreError, StoredEvent, WebhookMark, WebhookMarks, event_shard,
    health_hour, index_shard,
};
use crate::domain::{BankId, BatchId, ConsentId, ConsentState, PaymentId, UserId};

pub(super) type Item = HashMap<String, AttributeValue>;

/// Number of partitions the consent indexes spread one day (one hour) over, so that a
/// popular expiry day is not one hot partition.
pub const RENEWAL_INDEX_SHARDS: u32 = super::CONSENT_INDEX_SHARDS;
/// Name of the consents table's sparse index of valid consents by `validUntil` day (from
/// template.yaml), read by the renewal and health jobs.
pub const RENEWAL_INDEX: &str = "ByValidUntil";
/// Name of the consents table's sparse index of valid consents by health hour (from
/// template.yaml), read by the health job.
pub const HEALTH_INDEX: &str = "ByHealthHour";
/// Name of the notifications table's sparse index of events whose webhook was not queued
/// yet (from template.yaml), read by the health job's webhook sweep.
pub const PENDING_WEBHOOK_INDEX: &str = "ByPendingWebhook";

pub(super) fn user_pk(user: &UserId) -> String {
    format!("USER#{}", user.as_str())
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn backend<E: std::error::Error + 'static>(
    err: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> StoreError {
    StoreError::Backend(aws_sdk_dynamodb::error::DisplayErrorContext(&err).to_string())
}

pub(super) fn to_item<T: Serialize>(record: &T) -> Result<Item, StoreError> {
    serde_dynamo::to_item(record).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_item<T: DeserializeOwned>(item: Item) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Put `item` if no item has its key yet.
async fn put_new(client: &Client, table: &str, item: Item) -> Result<(), StoreError> {
    match client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_condition_failure(&err) => Err(StoreError::AlreadyExists),
        Err(err) => Err(backend(err)),
    }
}

/// Put `item` (already at `expected + 1`) if the stored item is at version `expected`.
async fn put_versioned(
    client: &Client,
    table: &str,
    item: Item,
    expected: u64,
) -> Result<(), StoreError> {
    let key: Item = ["pk", "sk"]
        .iter()
        .filter_map(|k| item.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    match client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_exists(pk) AND #v = :expected")
        .expression_attribute_names("#v", "version")
        .expression_attribute_values(":expected", AttributeValue::N(expected.to_string()))
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if is_condition_failure(&err) => {
            // Lost race or missing item? Only the failure path pays for this read.
            let current = client
                .get_item()
                .table_name(table)
                .set_key(Some(key))
                .consistent_read(true)
                .projection_expression("pk")
                .send()
                .await
                .map_err(backend)?;
            if current.item.is_some_and(|i| !i.is_empty()) {
                Err(StoreError::VersionConflict { expected })
            } else {
                Err(StoreError::NotFound)
            }
        }
        Err(err) => Err(backend(err)),
    }
}

fn is_condition_failure(
    err: &SdkError<
        aws_sdk_dynamodb::operation::put_item::PutItemError,
        aws_sdk_dynamodb::config::http::HttpResponse,
    >,
) -> bool {
    matches!(
        err.as_service_error(),
        Some(
            aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(_)
        )
    )
}

/// Adds one to the `count` of item (`pk`, `sk`) unless it reached `limit` (atomic, one
/// UpdateItem): `false` when the limit was reached. `expires_at` (epoch seconds) is its TTL.
pub(super) async fn bounded_increment(
    client: &Client,
    table: &str,
    pk: String,
    sk: String,
    limit: u32,
    expires_at: i64,
) -> Result<bool, StoreError> {
    bounded_add(client, table, pk, sk, 1, limit, expires_at).await
}

/// Adds `amount` to the `count` of item (`pk`, `sk`) if the sum stays within `limit`
/// (atomic, one UpdateItem): `false` (and nothing added) otherwise.
async fn bounded_add(
    client: &Client,
    table: &str,
    pk: String,
    sk: String,
    amount: u32,
    limit: u32,
    expires_at: i64,
) -> Result<bool, StoreError> {
    let Some(max_before) = limit.checked_sub(amount) else {
        return Ok(false);
    };
    let result = client
        .update_item()
        .table_name(table)
        .key("pk", s(pk))
        .key("sk", s(sk))
        .update_expression("ADD #n :amount SET expiresAt = :exp")
        .condition_expression("attribute_not_exists(#n) OR #n <= :max")
        .expression_attribute_names("#n", "count")
        .expression_attribute_values(":amount", AttributeValue::N(amount.to_string()))
        .expression_attribute_values(":max", AttributeValue::N(max_before.to_string()))
        .expression_attribute_values(":exp", AttributeValue::N(expires_at.to_string()))
        .send()
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(err)
            if matches!(
                err.as_service_error(),
                Some(
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(_)
                )
            ) =>
        {
            Ok(false)
        }
        Err(err) => Err(backend(err)),
    }
}

/// Puts `items` unconditionally with `BatchWriteItem` (25 per call, up to eight calls in
/// flight); unprocessed items are retried with a growing pause until none is left.
async fn batch_put(client: &Client, table: &str, items: Vec<Item>) -> Result<(), StoreError> {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let mut batches = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let requests = items
            .by_ref()
            .take(25)
            .map(|item| {
                Ok(WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    )
                    .build())
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        batches.push(requests);
    }
    let writes = batches.into_iter().map(|mut requests| async move {
        for attempt in 0..10u32 {
            let out = client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .map_err(backend)?;
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(table))
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(25 << attempt.min(6))).await;
        }
        Err(StoreError::Backend(format!(
            "{} batch writes left unprocessed",
            requests.len()
        )))
    });
    use futures::StreamExt as _;
    let results: Vec<Result<(), StoreError>> = futures::stream::iter(writes)
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

pub(super) async fn get_item<T: DeserializeOwned>(
    client: &Client,
    table: &str,
    pk: String,
    sk: String,
) -> Result<Option<T>, StoreError> {
    let out = client
        .get_item()
        .table_name(table)
        .key("pk", s(pk))
        .key("sk", s(sk))
        .consistent_read(true)
        .send()
        .await
        .map_err(backend)?;
    out.item.map(from_item).transpose()
}

/// All items of one partition whose sort key starts with `prefix`, every page.
pub(super) async fn query_prefix<T: DeserializeOwned>(
    client: &Client,
    table: &str,
    pk: String,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let page = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(pk.clone()))
            .expression_attribute_values(":prefix", s(prefix))
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(backend)?;
        for item in page.items.unwrap_or_default() {
            out.push(from_item(item)?);
        }
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(out),
        }
    }
}

// ---------------------------------------------------------------- consents

#[derive(Clone, Debug)]
pub struct DynamoConsentStore {
    client: Client,
    table: String,
}

impl DynamoConsentStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn sk(id: &ConsentId) -> String {
        format!("CONSENT#{}", id.as_str())
    }

    /// The `ByValidUntil` partition of a day: `VALID#2026-11-21#3`.
    pub fn renewal_bucket(day: NaiveDate, shard: u32) -> String {
        format!("VALID#{}#{shard}", day.format("%Y-%m-%d"))
    }

    /// The `ByHealthHour` partition of an hour: `HEALTH#07#3`.
    pub fn health_bucket(hour: u32, shard: u32) -> String {
        format!("HEALTH#{hour:02}#{shard}")
    }

    /// FNV-1a over the id's bytes: stable across processes, releases and Rust versions.
    fn shard_of(id: &ConsentId) -> u32 {
        index_shard(id)
    }

    /// The item of a record: its attributes, the table keys and, while it is valid, the
    /// keys of both sparse indexes (a write that ends `valid` removes it from both).
    fn item(record: &ConsentRecord) -> Result<Item, StoreError> {
        let mut item = to_item(record)?;
        item.insert("pk".into(), s(user_pk(&record.user_id)));
        item.insert("sk".into(), s(Self::sk(&record.consent_id)));
        if record.state == ConsentState::Valid {
            let shard = Self::shard_of(&record.consent_id);
            item.insert(
                "gsi1pk".into(),
                s(Self::renewal_bucket(record.valid_until, shard)),
            );
            item.insert("gsi1sk".into(), s(Self::sk(&record.consent_id)));
            item.insert(
                "gsi2pk".into(),
                s(Self::health_bucket(health_hour(&record.consent_id), shard)),
            );
            item.insert("gsi2sk".into(), s(Self::sk(&record.consent_id)));
        }
        Ok(item)
    }

    /// Every item of one index partition per shard, every page, that is still `valid` and
    /// passes `keep` (index reads are eventually consistent: the condition is re-checked).
    async fn query_index(
        &self,
        index: &str,
        key: &str,
        bucket: impl Fn(u32) -> String,
        keep: impl Fn(&ConsentRecord) -> bool,
    ) -> Result<Vec<ConsentRecord>, StoreError> {
        let mut out = Vec::new();
        for shard in 0..RENEWAL_INDEX_SHARDS {
            let mut start: Option<Item> = None;
            loop {
                let page = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(index)
                    .key_condition_expression("#k = :bucket")
                    .expression_attribute_names("#k", key)
                    .expression_attribute_values(":bucket", s(bucket(shard)))
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(backend)?;
                for item in page.items.unwrap_or_default() {
                    let record: ConsentRecord = from_item(item)?;
                    if record.state == ConsentState::Valid && keep(&record) {
                        out.push(record);
                    }
                }
                match page.last_evaluated_key {
                    Some(key) if !key.is_empty() => start = Some(key),
                    _ => break,
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ConsentStore for DynamoConsentStore {
    async fn insert(&self, consent: &ConsentRecord) -> Result<(), StoreError> {
        if consent.version != 0 {
            return Err(StoreError::Corrupt(
                "a new consent starts at version 0".into(),
            ));
        }
        put_new(&self.client, &self.table, Self::item(consent)?).await
    }

    async fn get(
        &self,
        user: &UserId,
        id: &ConsentId,
    ) -> Result<Option<ConsentRecord>, StoreError> {
        get_item(&self.client, &self.table, user_pk(user), Self::sk(id)).await
    }

    async fn list_for_user(&self, user: &UserId) -> Result<Vec<ConsentRecord>, StoreError> {
        query_prefix(&self.client, &self.table, user_pk(user), "CONSENT#").await
    }

    async fn update(&self, consent: &ConsentRecord) -> Result<ConsentRecord, StoreError> {
        let mut next = consent.clone();
        next.version = consent.version + 1;
        put_versioned(
            &self.client,
            &self.table,
            Self::item(&next)?,
            consent.version,
        )
        .await?;
        Ok(next)
    }

    async fn valid_until_on(&self, day: NaiveDate) -> Result<Vec<ConsentRecord>, StoreError> {
        self.query_index(
            RENEWAL_INDEX,
            "gsi1pk",
            |shard| Self::renewal_bucket(day, shard),
            |record| record.valid_until == day,
        )
        .await
    }

    async fn valid_for_health_hour(&self, hour: u32) -> Result<Vec<ConsentRecord>, StoreError> {
        self.query_index(
            HEALTH_INDEX,
            "gsi2pk",
            |shard| Self::health_bucket(hour, shard),
            |record| health_hour(&record.consent_id) == hour,
        )
        .await
    }
}

// ---------------------------------------------------------------- payments

#[derive(Clone, Debug)]
pub struct DynamoPaymentStore {
    client: Client,
    table: String,
}

impl DynamoPaymentStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn sk(id: &PaymentId) -> String {
        format!("PAYMENT#{}", id.as_str())
    }

    fn item(record: &PaymentRecord) -> Result<Item, StoreError> {
        let mut item = to_item(record)?;
        item.insert("pk".into(), s(user_pk(&record.user_id)));
        item.insert("sk".into(), s(Self::sk(&record.payment_id)));
        // The API's coarse state, for the list filter (derived, never read back).
        item.insert("state".into(), s(record.state().as_str()));
        // Batch items are listed per batch through the `ByGsi1` index.
        if let (Some(batch), Some(index)) = (&record.batch_id, record.batch_index) {
            item.insert("gsi1pk".into(), s(format!("BATCH#{}", batch.as_str())));
            item.insert("gsi1sk".into(), s(format!("ITEM#{index:05}")));
        }
        Ok(item)
    }

    fn chunk_sk(batch: &BatchId, chunk: u32) -> String {
        format!("BATCH#{}#CHUNK#{chunk:04}", batch.as_str())
    }

    fn chunk_item(chunk: &BatchChunk) -> Result<Item, StoreError> {
        let mut item = to_item(chunk)?;
        item.insert("pk".into(), s(user_pk(&chunk.user_id)));
        item.insert("sk".into(), s(Self::chunk_sk(&chunk.batch_id, chunk.chunk)));
        Ok(item)
    }

    fn batch_item(batch: &BatchRecord) -> Result<Item, StoreError> {
        let mut item = to_item(batch)?;
        item.insert("pk".into(), s(user_pk(&batch.user_id)));
        item.insert("sk".into(), s(format!("BATCH#{}", batch.batch_id.as_str())));
        Ok(item)
    }
}

#[async_trait]
impl PaymentStore for DynamoPaymentStore {
    async fn insert(&self, payment: &PaymentRecord) -> Result<(), StoreError> {
        if payment.version != 0 {
            return Err(StoreError::Corrupt(
                "a new payment starts at version 0".into(),
            ));
        }
        put_new(&self.client, &self.table, Self::item(payment)?).await
    }

    async fn get(
        &self,
        user: &UserId,
        id: &PaymentId,
    ) -> Result<Option<PaymentRecord>, StoreError> {
        get_item(&self.client, &self.table, user_pk(user), Self::sk(id)).await
    }

    async fn list_for_user(&self, user: &UserId) -> Result<Vec<PaymentRecord>, StoreError> {
        query_prefix(&self.client, &self.table, user_pk(user), "PAYMENT#").await
    }

    async fn list_page(
        &self,
        user: &UserId,
        state: Option<PaymentState>,
        after: Option<&PaymentId>,
        limit: usize,
    ) -> Result<PaymentPage, StoreError> {
        let limit = limit.max(1);
        let pk = user_pk(user);
        let mut payments: Vec<PaymentRecord> = Vec::new();
        let mut start: Option<Item> = after.map(|id| {
            [
                ("pk".to_owned(), s(pk.clone())),
                ("sk".to_owned(), s(Self::sk(id))),
            ]
            .into()
        });
        loop {
            let remaining = i32::try_from(limit - payments.len()).unwrap_or(i32::MAX);
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(pk.clone()))
                .expression_attribute_values(":prefix", s("PAYMENT#"))
                .scan_index_forward(false)
                .limit(remaining)
                .set_exclusive_start_key(start.take());
            if let Some(state) = state {
                query = query
                    .filter_expression("#state = :state")
                    .expression_attribute_names("#state", "state")
                    .expression_attribute_values(":state", s(state.as_str()));
            }
            let page = query.send().await.map_err(backend)?;
            for item in page.items.unwrap_or_default() {
                payments.push(from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => {
                    if payments.len() >= limit {
                        let next = payments.last().map(|p| p.payment_id.clone());
                        return Ok(PaymentPage { payments, next });
                    }
                    start = Some(key);
                }
                _ => {
                    return Ok(PaymentPage {
                        payments,
                        next: None,
                    });
                }
            }
        }
    }

    async fn update(&self, payment: &PaymentRecord) -> Result<PaymentRecord, StoreError> {
        let mut next = payment.clone();
        next.version = payment.version + 1;
        put_versioned(
            &self.client,
            &self.table,
            Self::item(&next)?,
            payment.version,
        )
        .await?;
        Ok(next)
    }

    async fn insert_many(&self, payments: &[PaymentRecord]) -> Result<Vec<bool>, StoreError> {
        if payments.iter().any(|p| p.version != 0) {
            return Err(StoreError::Corrupt(
                "a new payment starts at version 0".into(),
            ));
        }
        let items = payments
            .iter()
            .map(Self::item)
            .collect::<Result<Vec<_>, StoreError>>()?;
        // One conditional put per item (a batch write cannot be conditional), 16 in flight.
        let (client, table) = (&self.client, self.table.as_str());
        use futures::StreamExt as _;
        let results: Vec<Result<(), StoreError>> = futures::stream::iter(items)
            .map(|item| put_new(client, table, item))
            .buffered(16)
            .collect()
            .await;
        results
            .into_iter()
            .map(|r| match r {
                Ok(()) => Ok(true),
                Err(StoreError::AlreadyExists) => Ok(false),
                Err(e) => Err(e),
            })
            .collect()
    }

    async fn batch_items_page(
        &self,
        _user: &UserId,
        batch: &BatchId,
        from: u32,
        limit: usize,
    ) -> Result<(Vec<PaymentRecord>, bool), StoreError> {
        // One more than asked: whether more follow.
        let want = limit.saturating_add(1);
        let mut out: Vec<PaymentRecord> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("ByGsi1")
                .key_condition_expression("gsi1pk = :pk AND gsi1sk >= :from")
                .expression_attribute_values(":pk", s(format!("BATCH#{}", batch.as_str())))
                .expression_attribute_values(":from", s(format!("ITEM#{from:05}")))
                .limit(i32::try_from(want - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(backend)?;
            for item in page.items.unwrap_or_default() {
                out.push(from_item(item)?);
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() && out.len() < want => start = Some(key),
                _ => break,
            }
        }
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    async fn batch_counts(
        &self,
        user: &UserId,
        batch: &BatchId,
    ) -> Result<std::collections::BTreeMap<PaymentState, u32>, StoreError> {
        // Derived from the items (so nothing can drift): their `state` attribute only (and
        // their owner: a batch id is only ever looked up by its own user).
        let owner = s(user_pk(user));
        let mut counts = std::collections::BTreeMap::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("ByGsi1")
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(format!("BATCH#{}", batch.as_str())))
                .projection_expression("#state, pk")
                .expression_attribute_names("#state", "state")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(backend)?;
            for item in page.items.unwrap_or_default() {
                if item.get("pk") != Some(&owner) {
                    continue;
                }
                let state = item
                    .get("state")
                    .and_then(|v| v.as_s().ok())
                    .and_then(|v| PaymentState::parse(v))
                    .ok_or_else(|| StoreError::Corrupt("a batch item without its state".into()))?;
                if state != PaymentState::Queued {
                    *counts.entry(state).or_default() += 1;
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(counts),
            }
        }
    }

    async fn insert_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        put_new(&self.client, &self.table, Self::batch_item(batch)?).await
    }

    async fn get_batch(
        &self,
        user: &UserId,
        batch: &BatchId,
    ) -> Result<Option<BatchRecord>, StoreError> {
        get_item(
            &self.client,
            &self.table,
            user_pk(user),
            format!("BATCH#{}", batch.as_str()),
        )
        .await
    }

    async fn update_batch(&self, batch: &BatchRecord) -> Result<BatchRecord, StoreError> {
        let mut next = batch.clone();
        next.version = batch.version + 1;
        put_versioned(
            &self.client,
            &self.table,
            Self::batch_item(&next)?,
            batch.version,
        )
        .await?;
        Ok(next)
    }

    async fn put_chunks(&self, chunks: &[BatchChunk]) -> Result<(), StoreError> {
        let items = chunks
            .iter()
            .map(Self::chunk_item)
            .collect::<Result<Vec<_>, StoreError>>()?;
        batch_put(&self.client, &self.table, items).await
    }

    async fn get_chunk(
        &self,
        user: &UserId,
        batch: &BatchId,
        chunk: u32,
    ) -> Result<Option<BatchChunk>, StoreError> {
        get_item(
            &self.client,
            &self.table,
            user_pk(user),
            Self::chunk_sk(batch, chunk),
        )
        .await
    }

    async fn update_chunk(&self, chunk: &BatchChunk) -> Result<BatchChunk, StoreError> {
        let mut next = chunk.clone();
        next.version = chunk.version + 1;
        put_versioned(
            &self.client,
            &self.table,
            Self::chunk_item(&next)?,
            chunk.version,
        )
        .await?;
        Ok(next)
    }

    async fn take_rate_slot(
        &self,
        bank: &BankId,
        second: i64,
        limit: u32,
    ) -> Result<bool, StoreError> {
        bounded_increment(
            &self.client,
            &self.table,
            format!("RATE#{}", bank.as_str()),
            second.to_string(),
            limit,
            second + 3600,
        )
        .await
    }

    async fn take_rate_slots(
        &self,
        bank: &BankId,
        second: i64,
        want: u32,
        limit: u32,
    ) -> Result<u32, StoreError> {
        let pk = format!("RATE#{}", bank.as_str());
        let mut want = want.min(limit);
        // At most three tries: all of it, then what the counter says is left (it can only
        // shrink meanwhile), then whatever that left.
        for _ in 0..3 {
            if want == 0 {
                return Ok(0);
            }
            if bounded_add(
                &self.client,
                &self.table,
                pk.clone(),
                second.to_string(),
                want,
                limit,
                second + 3600,
            )
            .await?
            {
                return Ok(want);
            }
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", s(pk.clone()))
                .key("sk", s(second.to_string()))
                .consistent_read(true)
                .projection_expression("#n")
                .expression_attribute_names("#n", "count")
                .send()
                .await
                .map_err(backend)?;
            let taken = out
                .item
                .and_then(|i| {
                    i.get("count")
                        .and_then(|n| n.as_n().ok()?.parse::<u32>().ok())
                })
                .unwrap_or(0);
            want = want.min(limit.saturating_sub(taken));
        }
        Ok(0)
    }
}

// ---------------------------------------------------------------- idempotency keys

/// `Idempotency-Key` records, in the payments table beside the user's payments:
/// `pk = USER#<user>`, `sk = IDEMPOTENCY#<sha-256 of the key>`; `expiresAt` (TTL) a day
/// after `keepUntil`.
#[derive(Clone, Debug)]
pub struct DynamoIdempotencyStore {
    client: Client,
    table: String,
}

impl DynamoIdempotencyStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn sk(key_hash: &str) -> String {
        format!("IDEMPOTENCY#{key_hash}")
    }

    fn item(record: &IdempotencyRecord) -> Result<Item, StoreError> {
        let mut item = to_item(record)?;
        item.insert("pk".into(), s(user_pk(&record.user_id)));
        item.insert("sk".into(), s(Self::sk(&record.key_hash)));
        item.insert(
            "expiresAt".into(),
            AttributeValue::N((record.keep_until.timestamp() + 86_400).to_string()),
        );
        Ok(item)
    }
}

#[async_trait]
impl IdempotencyStore for DynamoIdempotencyStore {
    async fn insert(&self, record: &IdempotencyRecord) -> Result<(), StoreError> {
        if record.version != 0 {
            return Err(StoreError::Corrupt(
                "a new idempotency record starts at version 0".into(),
            ));
        }
        put_new(&self.client, &self.table, Self::item(record)?).await
    }

    async fn get(
        &self,
        user: &UserId,
        key_hash: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        get_item(&self.client, &self.table, user_pk(user), Self::sk(key_hash)).await
    }

    async fn update(&self, record: &IdempotencyRecord) -> Result<IdempotencyRecord, StoreError> {
        let mut next = record.clone();
        next.version = record.version + 1;
        put_versioned(
            &self.client,
            &self.table,
            Self::item(&next)?,
            record.version,
        )
        .await?;
        Ok(next)
    }
}

// ---------------------------------------------------------------- nonces

/// Single-use nonces, kept in the consents table under their own partition
/// (`pk = NONCE#<nonce>`), removed by TTL after they expire.
#[derive(Clone, Debug)]
pub struct DynamoNonceStore {
    client: Client,
    table: String,
}

impl DynamoNonceStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

#[async_trait]
impl NonceStore for DynamoNonceStore {
    async fn consume(
        &self,
        nonce: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let item: Item = HashMap::from([
            ("pk".to_owned(), s(format!("NONCE#{nonce}"))),
            ("sk".to_owned(), s("NONCE")),
            // Kept a day past its expiry: TTL deletion is lazy, and until then the
            // signature check already refuses the expired state.
            (
                "expiresAt".to_owned(),
                AttributeValue::N((expires_at.timestamp() + 86_400).to_string()),
            ),
        ]);
        match put_new(&self.client, &self.table, item).await {
            Ok(()) => Ok(true),
            Err(StoreError::AlreadyExists) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------- notifications

/// How long notifications stay in the inbox.
pub const NOTIFICATION_RETENTION_DAYS: i64 = 180;

/// The in-app inbox: `pk = USER#<user>`, `sk = NOTIF#<created_at>#<id>` (newest first by
/// a reverse Query), plus a guard item `sk = EVENT#<event id>` written in the same
/// transaction so one event is stored once.
#[derive(Clone, Debug)]
pub struct DynamoNotificationStore {
    client: Client,
    table: String,
}

impl DynamoNotificationStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

/// The two items of a notification: the event's guard (`sk = EVENT#<event id>`, with a
/// copy of the notification, so the webhook sender finds an event with one GetItem, and
/// the event's webhook markers) and the inbox item (`sk = NOTIF#<created_at>#<id>`).
fn notification_items(notification: &Notification) -> Result<(Item, Item), StoreError> {
    let pk = user_pk(&notification.user_id);
    let expires = AttributeValue::N(
        (notification.created_at.timestamp() + NOTIFICATION_RETENTION_DAYS * 86_400).to_string(),
    );
    let mut item = to_item(notification)?;
    item.insert("pk".into(), s(pk.clone()));
    item.insert(
        "sk".into(),
        s(format!(
            "NOTIF#{}#{}",
            micros(notification.created_at),
            notification.notification_id
        )),
    );
    item.insert("expiresAt".into(), expires.clone());
    let mut guard = to_item(notification)?;
    guard.extend([
        ("pk".to_owned(), s(pk)),
        (
            "sk".to_owned(),
            s(format!("EVENT#{}", notification.event_id)),
        ),
        ("expiresAt".to_owned(), expires),
    ]);
    Ok((guard, item))
}

fn micros(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The `ByPendingWebhook` partition of a shard: `WEBHOOK#3`.
pub fn pending_webhook_bucket(shard: u32) -> String {
    format!("WEBHOOK#{shard}")
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The put of a guard item: only if no event with its id is stored.
fn guard_put(table: &str, guard: Item) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder()
        .put(
            Put::builder()
                .table_name(table)
                .set_item(Some(guard))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build_error)?,
        )
        .build())
}

fn plain_put(table: &str, item: Item) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder()
        .put(
            Put::builder()
                .table_name(table)
                .set_item(Some(item))
                .build()
                .map_err(build_error)?,
        )
        .build())
}

/// The cancellation reasons of a cancelled transaction, one per item in request order;
/// `None` for any other error.
fn cancellation_reasons(
    err: &SdkError<TransactWriteItemsError, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> Option<&[CancellationReason]> {
    match err.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
            Some(c.cancellation_reasons())
        }
        _ => None,
    }
}

fn condition_failed(reasons: &[CancellationReason], index: usize) -> bool {
    reasons.get(index).and_then(|r| r.code()) == Some("ConditionalCheckFailed")
}

#[async_trait]
impl NotificationStore for DynamoNotificationStore {
    async fn put(&self, notification: &Notification) -> Result<bool, StoreError> {
        let (guard, item) = notification_items(notification)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(guard_put(&self.table, guard)?)
            .transact_items(plain_put(&self.table, item)?)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if cancellation_reasons(&err).is_some_and(|r| condition_failed(r, 0)) => {
                Ok(false)
            }
            Err(err) => Err(backend(err)),
        }
    }

    async fn get_event(
        &self,
        user: &UserId,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(user_pk(user)))
            .key("sk", s(format!("EVENT#{event_id}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        Ok(Some(StoredEvent {
            notification: from_item(item.clone())?,
            webhook: from_item::<WebhookMarks>(item)?,
        }))
    }

    async fn mark_webhook(
        &self,
        user: &UserId,
        event_id: &str,
        mark: WebhookMark,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let at = s(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(user_pk(user)))
            .key("sk", s(format!("EVENT#{event_id}")))
            .expression_attribute_values(":at", at);
        let request = match mark {
            // Queued: the event leaves the pending-webhook index (when it was in it).
            WebhookMark::Queued => request
                .update_expression("SET webhookQueuedAt = :at REMOVE gsi1pk, gsi1sk")
                .condition_expression(
                    "attribute_exists(pk) AND attribute_not_exists(webhookQueuedAt)",
                ),
            WebhookMark::Delivered => request
                .update_expression("SET webhookDeliveredAt = :at")
                .condition_expression(
                    "attribute_exists(pk) AND attribute_not_exists(webhookDeliveredAt)",
                ),
            WebhookMark::Failed(why) => request
                .update_expression("SET webhookFailedAt = :at, webhookFailure = :why")
                .expression_attribute_values(":why", s(why))
                .condition_expression(
                    "attribute_exists(pk) AND attribute_not_exists(webhookDeliveredAt)",
                ),
        };
        match request.send().await {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(err) => Err(backend(err)),
        }
    }

    async fn list(&self, user: &UserId, limit: usize) -> Result<Vec<Notification>, StoreError> {
        let limit = limit.clamp(1, 1000);
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", s(user_pk(user)))
            .expression_attribute_values(":prefix", s("NOTIF#"))
            .scan_index_forward(false)
            .limit(limit as i32)
            .send()
            .await
            .map_err(backend)?;
        let listed: Vec<Notification> = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(from_item)
            .collect::<Result<_, _>>()?;
        Ok(once_per_event(listed))
    }
}

/// Each event once, as first stored (`newest_first` keeps its order). The guard item makes
/// a second inbox item impossible where TransactWriteItems is atomic (DynamoDB); local
/// stand-ins that apply concurrent transactions without a lock (moto) can store two, and
/// the user must still see the event once.
fn once_per_event(newest_first: Vec<Notification>) -> Vec<Notification> {
    let mut seen = std::collections::HashSet::new();
    let mut oldest_first: Vec<Notification> = newest_first
        .into_iter()
        .rev()
        .filter(|n| seen.insert(n.event_id.clone()))
        .collect();
    oldest_first.reverse();
    oldest_first
}

// ---------------------------------------------------------------- outbox

/// [`ConsentOutbox`] over the consents and notifications tables: one `TransactWriteItems`
/// of three Puts, in this order (cancellation reasons are read by index):
///
/// 0. the consent at `version + 1`, if the stored one is at `version` (`ALL_OLD` on a
///    failed condition tells a lost race from a missing item without another read);
/// 1. the event's guard, if no event with its id is stored (with the pending-webhook
///    index keys when asked);
/// 2. the inbox item.
///
/// When only the guard's condition failed, the event is stored already (an earlier
/// attempt, or the pre-outbox path): the consent alone is then written with the plain
/// versioned Put, and the stored event is kept.
#[derive(Clone, Debug)]
pub struct DynamoConsentOutbox {
    client: Client,
    consents_table: String,
    notifications_table: String,
}

impl DynamoConsentOutbox {
    pub fn new(
        client: Client,
        consents_table: impl Into<String>,
        notifications_table: impl Into<String>,
    ) -> Self {
        Self {
            client,
            consents_table: consents_table.into(),
            notifications_table: notifications_table.into(),
        }
    }
}

const CONSENT_AT: usize = 0;
const GUARD_AT: usize = 1;

#[async_trait]
impl ConsentOutbox for DynamoConsentOutbox {
    async fn update_with_event(
        &self,
        consent: &ConsentRecord,
        notification: &Notification,
        pending_webhook: bool,
    ) -> Result<(ConsentRecord, bool), StoreError> {
        if notification.user_id != consent.user_id {
            return Err(StoreError::Corrupt(
                "a consent's notification must be for the consent's user".into(),
            ));
        }
        let mut next = consent.clone();
        next.version = consent.version + 1;
        let consent_item = DynamoConsentStore::item(&next)?;
        let (mut guard, item) = notification_items(notification)?;
        if pending_webhook {
            guard.insert(
                "gsi1pk".into(),
                s(pending_webhook_bucket(event_shard(&notification.event_id))),
            );
            guard.insert("gsi1sk".into(), s(micros(notification.created_at)));
        }
        let versioned = TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.consents_table)
                    .set_item(Some(consent_item.clone()))
                    .condition_expression("attribute_exists(pk) AND #v = :expected")
                    .expression_attribute_names("#v", "version")
                    .expression_attribute_values(
                        ":expected",
                        AttributeValue::N(consent.version.to_string()),
                    )
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .build()
                    .map_err(build_error)?,
            )
            .build();
        let result = self
            .client
            .transact_write_items()
            .transact_items(versioned)
            .transact_items(guard_put(&self.notifications_table, guard)?)
            .transact_items(plain_put(&self.notifications_table, item)?)
            .send()
            .await;
        let err = match result {
            Ok(_) => return Ok((next, true)),
            Err(err) => err,
        };
        let Some(reasons) = cancellation_reasons(&err) else {
            return Err(backend(err));
        };
        if condition_failed(reasons, CONSENT_AT) {
            let exists = reasons[CONSENT_AT].item().is_some_and(|i| !i.is_empty());
            return Err(if exists {
                StoreError::VersionConflict {
                    expected: consent.version,
                }
            } else {
                StoreError::NotFound
            });
        }
        if condition_failed(reasons, GUARD_AT) {
            // The event is stored already: apply the state change alone.
            put_versioned(
                &self.client,
                &self.consents_table,
                consent_item,
                consent.version,
            )
            .await?;
            return Ok((next, false));
        }
        Err(backend(err))
    }

    async fn pending_webhooks(
        &self,
        created_before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut out = Vec::new();
        for shard in 0..super::CONSENT_INDEX_SHARDS {
            let mut start: Option<Item> = None;
            while out.len() < limit {
                let remaining = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
                let page = self
                    .client
                    .query()
                    .table_name(&self.notifications_table)
                    .index_name(PENDING_WEBHOOK_INDEX)
                    .key_condition_expression("gsi1pk = :bucket AND gsi1sk < :before")
                    .expression_attribute_values(":bucket", s(pending_webhook_bucket(shard)))
                    .expression_attribute_values(":before", s(micros(created_before)))
                    .limit(remaining)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(backend)?;
                for item in page.items.unwrap_or_default() {
                    out.push(from_item(item)?);
                }
                match page.last_evaluated_key {
                    Some(key) if !key.is_empty() => start = Some(key),
                    _ => break,
                }
            }
        }
        out.truncate(limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let ids: Vec<ConsentId> = (0..400).map(|_| ConsentId::new()).collect();
        let mut counts = [0u32; RENEWAL_INDEX_SHARDS as usize];
        for id in &ids {
            let shard = DynamoConsentStore::shard_of(id);
            assert_eq!(shard, DynamoConsentStore::shard_of(id));
            counts[shard as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 20), "uneven shards: {counts:?}");
        let fixed = ConsentId::parse("3f2b8c1e-6a4d-4e8b-9c1f-2a3b4c5d6e7f").unwrap();
        // Pinned: the shard of an id must never change between releases.
        assert_eq!(DynamoConsentStore::shard_of(&fixed), 4);
    }

    #[test]
    fn bucket_format() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        assert_eq!(
            DynamoConsentStore::renewal_bucket(day, 3),
            "VALID#2026-11-21#3"
        );
        assert_eq!(DynamoConsentStore::health_bucket(7, 3), "HEALTH#07#3");
    }

    #[test]
    fn health_hours_are_stable_and_spread() {
        let mut counts = [0u32; 24];
        for _ in 0..2400 {
            let id = ConsentId::new();
            let hour = health_hour(&id);
            assert_eq!(hour, health_hour(&id));
            counts[hour as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 40), "uneven hours: {counts:?}");
        let fixed = ConsentId::parse("3f2b8c1e-6a4d-4e8b-9c1f-2a3b4c5d6e7f").unwrap();
        // Pinned: a consent's health hour must never change between releases.
        assert_eq!(health_hour(&fixed), PINNED_HOUR);
    }

    const PINNED_HOUR: u32 = 20;

    #[test]
    fn only_valid_consents_carry_index_keys() {
        use crate::bank::ConsentAccess;
        use crate::domain::{BankId, UserId};
        let now = chrono::Utc::now();
        let mut record = ConsentRecord {
            user_id: UserId::parse("alice").unwrap(),
            consent_id: ConsentId::parse("3f2b8c1e-6a4d-4e8b-9c1f-2a3b4c5d6e7f").unwrap(),
            bank_id: BankId::parse("lt-alpha").unwrap(),
            bank_consent_id: None,
            state: ConsentState::Valid,
            access: ConsentAccess::AllAccounts,
            valid_until: NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(),
            frequency_per_day: 4,
            recurring: true,
            renewal_of: None,
            renewed_by: None,
            renewal_notified: true,
            lease_until: None,
            psu_ip: None,
            sca_url: None,
            created_at: now,
            updated_at: now,
            version: 0,
        };
        let item = DynamoConsentStore::item(&record).unwrap();
        let key = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        assert_eq!(key("gsi1pk").as_deref(), Some("VALID#2026-11-21#4"));
        assert_eq!(key("gsi2pk"), Some(format!("HEALTH#{PINNED_HOUR:02}#4")));
        assert_eq!(
            key("gsi2sk").as_deref(),
            Some("CONSENT#3f2b8c1e-6a4d-4e8b-9c1f-2a3b4c5d6e7f")
        );
        record.state = ConsentState::Expired;
        let item = DynamoConsentStore::item(&record).unwrap();
        for k in ["gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk"] {
            assert!(!item.contains_key(k), "{k}");
        }
    }
}
