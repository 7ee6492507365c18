//! Cached bank data (snapshots of accounts, balances and transactions per connection) and
//! the daily counters of background accesses, in the bank data table.
//!
//! One partition per connection: `pk = DATA#{userId}#{consentId}`. Sort keys:
//! `META#ACCOUNTS`, `META#BALANCES`, `META#TRANSACTIONS` (small items: what was fetched and
//! when), `TX#{accountId}#{YYYY-MM}#{part}` (booked transactions of one month, up to
//! [`CHUNK_LEN`] per part), `TX#{accountId}#PENDING` (the pending set, replaced whole at
//! every refresh) and `USAGE#{YYYY-MM-DD}#{kind}` (atomic counters of reads without the
//! PSU). Snapshot payloads are compact JSON strings in a `data` attribute. Everything
//! carries `expiresAt` (TTL): snapshots a month after their last refresh, counters two days.
//! A revoked connection's partition is deleted ([`BankDataStore::purge`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, KeysAndAttributes, PutRequest, WriteRequest,
};
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::dynamo::{Item, backend, bounded_increment, s};
use crate::bank::{Account, Balance, Transaction};
use crate::domain::{AccountId, ConsentId, UserId};

/// Largest number of transactions in one stored item (keeps items far below 400 KB).
pub const CHUNK_LEN: usize = 400;
/// Snapshots are dropped (TTL) this long after their last refresh.
pub const SNAPSHOT_TTL_DAYS: i64 = 31;

/// The account list of one connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountsSnapshot {
    pub accounts: Vec<Account>,
    pub fetched_at: DateTime<Utc>,
}

/// The balances of every account of one connection, fetched together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BalancesSnapshot {
    /// Keyed by the bank's account id.
    pub balances: BTreeMap<String, Vec<Balance>>,
    pub fetched_at: DateTime<Utc>,
}

/// What the stored transactions of one connection cover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionsMeta {
    pub fetched_at: DateTime<Utc>,
    /// The first booking day fetched (the history starts here).
    pub covered_from: NaiveDate,
    /// The sort keys of the stored transaction items, so that they are read by key
    /// ([`BankDataStore::read_transaction_items`]); empty in metas written before the list
    /// existed (the items are then found by a Query of the partition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<String>,
}

/// One stored transaction: the bank's data plus our stable id and its account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredTransaction {
    /// The bank's `transactionId`, else a fingerprint (`fp-…`, see the aggregation service).
    pub id: String,
    pub account_id: AccountId,
    pub tx: Transaction,
}

/// What [`BankDataStore::put_transactions`] stores for one account: its id, the booked
/// transactions of the months it replaces, and its whole pending set.
pub type AccountTransactions = (AccountId, Vec<StoredTransaction>, Vec<StoredTransaction>);

/// The small items of one connection's snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub accounts: Option<AccountsSnapshot>,
    pub balances: Option<BalancesSnapshot>,
    pub transactions: Option<TransactionsMeta>,
}

/// The sort keys of [`SnapshotMeta`]'s items.
const META_KEYS: [&str; 3] = ["META#ACCOUNTS", "META#BALANCES", "META#TRANSACTIONS"];

impl SnapshotMeta {
    /// Takes in one stored meta item (others are ignored).
    fn absorb(&mut self, item: &Item) -> Result<(), StoreError> {
        match sort_key(item) {
            "META#ACCOUNTS" => self.accounts = Some(data(item)?),
            "META#BALANCES" => self.balances = Some(data(item)?),
            "META#TRANSACTIONS" => self.transactions = Some(data(item)?),
            _ => {}
        }
        Ok(())
    }
}

/// The kinds of bank reads counted against a consent's daily `frequencyPerDay`. Each kind
/// reads each resource of the connection once (the account list; every account's balances;
/// every account's transactions), so counting per kind bounds every resource's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AccessKind {
    Accounts,
    Balances,
    Transactions,
}

impl AccessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::Accounts => "accounts",
            AccessKind::Balances => "balances",
            AccessKind::Transactions => "transactions",
        }
    }
}

/// Snapshots and access counters (module docs).
#[async_trait]
pub trait BankDataStore: Send + Sync {
    /// The accounts, balances and transactions meta items of a connection.
    async fn read_meta(
        &self,
        user: &UserId,
        consent: &ConsentId,
    ) -> Result<SnapshotMeta, StoreError>;
    async fn put_accounts(
        &self,
        user: &UserId,
        consent: &ConsentId,
        snapshot: &AccountsSnapshot,
    ) -> Result<(), StoreError>;
    async fn put_balances(
        &self,
        user: &UserId,
        consent: &ConsentId,
        snapshot: &BalancesSnapshot,
    ) -> Result<(), StoreError>;
    /// Every stored transaction of the connection (booked and pending).
    async fn read_transactions(
        &self,
        user: &UserId,
        consent: &ConsentId,
    ) -> Result<Vec<StoredTransaction>, StoreError>;
    /// For each `(account, booked, pending)`: replaces the booked transactions of the
    /// account in the months present in `booked` (the caller merged them with what was
    /// stored) and the account's pending set. The DynamoDB adapter writes them with
    /// BatchWriteItem (25 items a request). Answers the sort keys written (for
    /// [`TransactionsMeta::items`]).
    async fn put_transactions(
        &self,
        user: &UserId,
        consent: &ConsentId,
        accounts: &[AccountTransactions],
    ) -> Result<Vec<String>, StoreError>;
    async fn put_transactions_meta(
        &self,
        user: &UserId,
        consent: &ConsentId,
        meta: &TransactionsMeta,
    ) -> Result<(), StoreError>;
    /// Takes one read of `kind` from the connection's budget for `day` (atomically):
    /// `false` when `limit` reads were taken already.
    async fn claim_access(
        &self,
        user: &UserId,
        consent: &ConsentId,
        kind: AccessKind,
        day: NaiveDate,
        limit: u32,
    ) -> Result<bool, StoreError>;
    /// Reads of `kind` taken on `day`.
    async fn accesses(
        &self,
        user: &UserId,
        consent: &ConsentId,
        kind: AccessKind,
        day: NaiveDate,
    ) -> Result<u32, StoreError>;
    /// Deletes everything stored for the connection; the number of items deleted.
    async fn purge(&self, user: &UserId, consent: &ConsentId) -> Result<usize, StoreError>;

    /// [`Self::read_meta`] of several connections of one user, in as few requests as the
    /// store allows (the DynamoDB adapter: one BatchGetItem per 33 connections).
    /// Connections without a snapshot map to an empty [`SnapshotMeta`].
    async fn read_metas(
        &self,
        user: &UserId,
        consents: &[ConsentId],
    ) -> Result<BTreeMap<ConsentId, SnapshotMeta>, StoreError> {
        let mut out = BTreeMap::new();
        for consent in consents {
            out.insert(consent.clone(), self.read_meta(user, consent).await?);
        }
        Ok(out)
    }

    /// The stored transactions of several connections of one user, read by the sort keys
    /// their metas list ([`TransactionsMeta::items`]; the DynamoDB adapter: BatchGetItem,
    /// 100 keys a request). A listed item that is missing is an error (the list is written
    /// after its items).
    async fn read_transaction_items(
        &self,
        user: &UserId,
        wanted: &[(ConsentId, Vec<String>)],
    ) -> Result<BTreeMap<ConsentId, Vec<StoredTransaction>>, StoreError> {
        let mut out = BTreeMap::new();
        for (consent, _) in wanted {
            out.insert(
                consent.clone(),
                self.read_transactions(user, consent).await?,
            );
        }
        Ok(out)
    }

    /// [`Self::read_meta`] and [`Self::read_transactions`] of one connection together (the
    /// DynamoDB adapter: one Query of the partition).
    async fn read_snapshot(
        &self,
        user: &UserId,
        consent: &ConsentId,
    ) -> Result<(SnapshotMeta, Vec<StoredTransaction>), StoreError> {
        Ok((
            self.read_meta(user, consent).await?,
            self.read_transactions(user, consent).await?,
        ))
    }
}

/// Groups booked transactions into stored items: `(sort key suffix, transactions)`, one
/// per month and part of at most [`CHUNK_LEN`], in a stable order.
pub fn chunks(booked: &[StoredTransaction]) -> Vec<(String, Vec<&StoredTransaction>)> {
    let mut by_month: BTreeMap<String, Vec<&StoredTransaction>> = BTreeMap::new();
    for t in booked {
        let day = t.tx.booking_date.or(t.tx.value_date);
        let month = day.map_or_else(|| "undated".to_owned(), |d| d.format("%Y-%m").to_string());
        by_month.entry(month).or_default().push(t);
    }
    let mut out = Vec::new();
    for (month, mut items) in by_month {
        items.sort_by(|a, b| a.id.cmp(&b.id));
        for (part, chunk) in items.chunks(CHUNK_LEN).enumerate() {
            out.push((format!("{month}#{part:03}"), chunk.to_vec()));
        }
    }
    out
}

/// The DynamoDB adapter (module docs).
#[derive(Clone, Debug)]
pub struct DynamoBankDataStore {
    client: Client,
    table: String,
}

impl DynamoBankDataStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn pk(user: &UserId, consent: &ConsentId) -> String {
        format!("DATA#{}#{}", user.as_str(), consent.as_str())
    }

    async fn put_data<T: Serialize>(
        &self,
        pk: String,
        sk: String,
        data: &T,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.put_json(pk, sk, to_json(data)?, expires_at).await
    }

    async fn put_json(
        &self,
        pk: String,
        sk: String,
        json: String,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item("data", s(json))
            .item("expiresAt", AttributeValue::N(expires_at.to_string()))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Every item of the partition whose sort key starts with `prefix`, or sorts before
    /// `bound` when `prefix` is `<bound` (all pages).
    async fn query(
        &self,
        pk: &str,
        prefix: &str,
        keys_only: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", s(pk))
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            query = if prefix.is_empty() {
                query.key_condition_expression("pk = :pk")
            } else if let Some(bound) = prefix.strip_prefix('<') {
                query
                    .key_condition_expression("pk = :pk AND sk < :bound")
                    .expression_attribute_values(":bound", s(bound))
            } else {
                query
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix))
            };
            if keys_only {
                query = query.projection_expression("pk, sk");
            }
            let page = query.send().await.map_err(backend)?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(out),
            }
        }
    }

    async fn delete_keys(&self, keys: Vec<(String, String)>) -> Result<(), StoreError> {
        let deletes = keys
            .into_iter()
            .map(|(pk, sk)| {
                WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .key("pk", s(pk))
                            .key("sk", s(sk))
                            .build()
                            .expect("pk and sk are set"),
                    )
                    .build()
            })
            .collect();
        self.batch_write(deletes).await
    }

    /// A PutItem of a snapshot item (`data` holds `json`), for [`Self::batch_write`].
    fn json_put(&self, pk: &str, sk: String, json: String, expires_at: i64) -> WriteRequest {
        WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .item("pk", s(pk))
                    .item("sk", s(sk))
                    .item("data", s(json))
                    .item("expiresAt", AttributeValue::N(expires_at.to_string()))
                    .build()
                    .expect("the item is set"),
            )
            .build()
    }

    /// BatchGetItem (consistent) of `keys`, 100 a request; unprocessed keys are asked
    /// again (with a short pause) until none is left. Missing items are simply absent.
    async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut found = Vec::new();
        for batch in keys.chunks(100) {
            let mut pending = batch.to_vec();
            for attempt in 0..8u32 {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(pending))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                let answer = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(backend)?;
                found.extend(
                    answer
                        .responses
                        .and_then(|mut r| r.remove(&self.table))
                        .unwrap_or_default(),
                );
                pending = answer
                    .unprocessed_keys
                    .and_then(|mut m| m.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                if attempt == 7 {
                    return Err(StoreError::Backend(format!(
                        "{} reads left unprocessed",
                        pending.len()
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
            }
        }
        Ok(found)
    }

    /// BatchWriteItem of `requests`, 25 a request; unprocessed ones are sent again (with a
    /// short pause) until none is left.
    async fn batch_write(&self, requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        for batch in requests.chunks(25) {
            let mut requests = batch.to_vec();
            for attempt in 0..8u32 {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(backend)?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                if attempt == 7 {
                    return Err(StoreError::Backend(format!(
                        "{} writes left unprocessed",
                        requests.len()
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
        }
        Ok(())
    }
}

fn to_json<T: Serialize + ?Sized>(data: &T) -> Result<String, StoreError> {
    serde_json::to_string(data).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn data<T: DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    match item.get("data") {
        Some(AttributeValue::S(json)) => {
            serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        _ => Err(StoreError::Corrupt("snapshot item without data".into())),
    }
}

/// The connection an item of [`DynamoBankDataStore`] belongs to, by its partition key.
fn consent_of<'a>(item: &Item, by_pk: &'a BTreeMap<String, ConsentId>) -> Option<&'a ConsentId> {
    match item.get("pk") {
        Some(AttributeValue::S(pk)) => by_pk.get(pk),
        _ => None,
    }
}

fn sort_key(item: &Item) -> &str {
    match item.get("sk") {
        Some(AttributeValue::S(sk)) => sk,
        _ => "",
    }
}

fn snapshot_expiry(now: DateTime<Utc>) -> i64 {
    now.timestamp() + SNAPSHOT_TTL_DAYS * 86_400
}

#[async_trait]
impl BankDataStore for DynamoBankDataStore {
    async fn read_meta(
        &self,
        user: &UserId,
        consent: &ConsentId,
    ) -> Result<SnapshotMeta, StoreError> {
        let mut meta = SnapshotMeta::default();
        for item in self.query(&Self::pk(user, consent), "META#", false).await? {
            meta.absorb(&item)?;
        }
        Ok(meta)
    }

    async fn read_metas(
        &self,
        user: &UserId,
        consents: &[ConsentId],
    ) -> Result<BTreeMap<ConsentId, SnapshotMeta>, StoreError> {
        let mut out: BTreeMap<ConsentId, SnapshotMeta> = consents
            .iter()
            .map(|c| (c.clone(), SnapshotMeta::default()))
            .collect();
        let by_pk: BTreeMap<String, ConsentId> = consents
            .iter()
            .map(|c| (Self::pk(user, c), c.clone()))
            .collect();
        let keys: Vec<Item> = by_pk
            .keys()
            .flat_map(|pk| {
                META_KEYS.iter().map(move |sk| {
                    Item::from([("pk".to_owned(), s(pk.clone())), ("sk".to_owned(), s(*sk))])
                })
            })
            .collect();
        for item in self.batch_get(keys).await? {
            let consent = consent_of(&item, &by_pk);
            if let Some(meta) = consent.and_then(|c| out.get_mut(c)) {
                meta.absorb(&item)?;
            }
        }
        Ok(out)
    }

    async fn read_snapshot(
        &self,
        user: &UserId,
        consent: &ConsentId,
    ) -> Result<(SnapshotMeta, Vec<StoredTransaction>), StoreError> {
        // META#… and TX#… sort before USAGE#… (the access counters, not wanted here).
        let mut meta = SnapshotMeta::default();
        let mut transactions = Vec::new();
        for item in self
            .query(&Self::pk(user, consent), "<USAGE#", false)
            .await?
        {
            if sort_key(&item).starts_with("TX#") {
                let mut part: Vec<StoredTransaction> = data(&item)?;
                transactions.append(&mut part);
            } else {
                meta.absorb(&item)?;
            }
        }
        Ok((meta, transactions))
    }

    async fn put_accounts(
        &self,
        user: &UserId,
        consent: &ConsentId,
        snapshot: &AccountsSnapshot,
    ) -> Result<(), StoreError> {
        self.put_data(
            Self::pk(user, consent),
            "META#ACCOUNTS".into(),
            snapshot,
            snapshot_expiry(snapshot.fetched_at),
        )
        .await
    }

    async fn put_balances(
        &self,
        user: &UserId,
        consent: &ConsentId,
        snapshot: &BalancesSnapshot,
    ) -> Result<(), StoreError> {
        self.put_data(
            Self::pk(user, consent),
            "META#BALANCES".into(),
            snapshot,
            snapshot_expiry(snapshot.fetched_at),
        )
        .await
    }

    async fn read_transactions(
        &self,
        user: &UserId,
        consent: &ConsentId,
    ) -> Result<Vec<StoredTransaction>, StoreError> {
        let mut out = Vec::new();
        for item in self.query(&Self::pk(user, consent), "TX#", false).await? {
            let mut part: Vec<StoredTransaction> = data(&item)?;
            out.append(&mut part);
        }
        Ok(out)
    }

    async fn put_transactions(
        &self,
        user: &UserId,
        consent: &ConsentId,
        accounts: &[AccountTransactions],
    ) -> Result<Vec<String>, StoreError> {
        let pk = Self::pk(user, consent);
        let expires = snapshot_expiry(Utc::now());
        let mut puts = Vec::new();
        let mut keys = Vec::new();
        for (account, booked, pending) in accounts {
            let parts = chunks(booked)
                .into_iter()
                .map(|(suffix, items)| {
                    (format!("TX#{}#{suffix}", account.as_str()), to_json(&items))
                })
                .chain(std::iter::once((
                    format!("TX#{}#PENDING", account.as_str()),
                    to_json(pending),
                )));
            for (sk, json) in parts {
                puts.push(self.json_put(&pk, sk.clone(), json?, expires));
                keys.push(sk);
            }
        }
        self.batch_write(puts).await?;
        Ok(keys)
    }

    async fn read_transaction_items(
        &self,
        user: &UserId,
        wanted: &[(ConsentId, Vec<String>)],
    ) -> Result<BTreeMap<ConsentId, Vec<StoredTransaction>>, StoreError> {
        let mut out: BTreeMap<ConsentId, Vec<StoredTransaction>> = BTreeMap::new();
        let mut by_pk: BTreeMap<String, ConsentId> = BTreeMap::new();
        let mut keys = Vec::new();
        for (consent, sks) in wanted {
            let pk = Self::pk(user, consent);
            out.insert(consent.clone(), Vec::new());
            keys.extend(sks.iter().map(|sk| {
                Item::from([
                    ("pk".to_owned(), s(pk.clone())),
                    ("sk".to_owned(), s(sk.clone())),
                ])
            }));
            by_pk.insert(pk, consent.clone());
        }
        let expected = keys.len();
        let mut found = 0;
        for item in self.batch_get(keys).await? {
            let consent = consent_of(&item, &by_pk);
            if let Some(list) = consent.and_then(|c| out.get_mut(c)) {
                let mut part: Vec<StoredTransaction> = data(&item)?;
                list.append(&mut part);
                found += 1;
            }
        }
        if found != expected {
            return Err(StoreError::Corrupt(format!(
                "{} of {expected} listed transaction items are missing",
                expected - found
            )));
        }
        Ok(out)
    }

    async fn put_transactions_meta(
        &self,
        user: &UserId,
        consent: &ConsentId,
        meta: &TransactionsMeta,
    ) -> Result<(), StoreError> {
        self.put_data(
            Self::pk(user, consent),
            "META#TRANSACTIONS".into(),
            meta,
            snapshot_expiry(meta.fetched_at),
        )
        .await
    }

    async fn claim_access(
        &self,
        user: &UserId,
        consent: &ConsentId,
        kind: AccessKind,
        day: NaiveDate,
        limit: u32,
    ) -> Result<bool, StoreError> {
        let expires = day
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp()
            + 2 * 86_400;
        bounded_increment(
            &self.client,
            &self.table,
            Self::pk(user, consent),
            format!("USAGE#{day}#{}", kind.as_str()),
            limit,
            expires,
        )
        .await
    }

    async fn accesses(
        &self,
        user: &UserId,
        consent: &ConsentId,
        kind: AccessKind,
        day: NaiveDate,
    ) -> Result<u32, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(Self::pk(user, consent)))
            .key("sk", s(format!("USAGE#{day}#{}", kind.as_str())))
            .consistent_read(true)
            .send()
            .await
            .map_err(backend)?;
        Ok(out
            .item
            .and_then(|item| match item.get("count") {
                Some(AttributeValue::N(n)) => n.parse().ok(),
                _ => None,
            })
            .unwrap_or(0))
    }

    async fn purge(&self, user: &UserId, consent: &ConsentId) -> Result<usize, StoreError> {
        let pk = Self::pk(user, consent);
        let keys: Vec<(String, String)> = self
            .query(&pk, "", true)
            .await?
            .iter()
            .map(|item| (pk.clone(), sort_key(item).to_owned()))
            .collect();
        let n = keys.len();
        self.delete_keys(keys).await?;
        Ok(n)
    }
}
