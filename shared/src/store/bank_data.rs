//! Cached bank data (snapshots of accounts, balances and transactions per connection) and
//! the daily counters of background accesses.
//!
//! A connection's snapshot metas (what was fetched and when, as a compact JSON string in
//! `data`) live beside the user's consents, in the user's partition of the consents table:
//! `pk = USER#{userId}`, `sk = DATA#A#{consentId}` (accounts), `DATA#B#{consentId}`
//! (balances), `DATA#T#{consentId}` (transactions). So one Query of that partition, up to
//! the `DATA#B` metas (or the `DATA#T` ones with the transactions), reads a user's
//! connections and their snapshots together ([`BankDataStore::read_user`]): a warm read is
//! one request. Everything else is in the bank data table, one partition per connection
//! (`pk = DATA#{userId}#{consentId}`): `PART#{generation}#{n}` (transactions, when a
//! connection's do not fit in its meta) and `USAGE#{YYYY-MM-DD}#{kind}` (atomic counters of
//! reads without the PSU). Everything carries `expiresAt` (TTL): snapshots a month after
//! their last refresh, counters two days. A revoked connection's metas and partition are
//! deleted ([`BankDataStore::purge`]).
//!
//! Transactions are stored packed: the JSON array, LZ4-compressed, in a binary `txz`
//! attribute (about a fifth of the JSON's size). A connection's whole set is written at
//! every refresh: inside its transactions meta itself when it packs to at most
//! [`INLINE_LIMIT`] bytes (one PutItem to write, and the read of the metas reads it), else
//! in parts of at most [`PART_JSON_LIMIT`] bytes of JSON under a new generation that the
//! meta then lists (the parts first, the meta last, then the previous generation's parts
//! are deleted; a crash in between leaves the old meta and its parts whole).
//!
//! Written by earlier releases and still read: metas in the bank data table
//! (`META#ACCOUNTS`, `META#BALANCES`, `META#TRANSACTIONS` in the connection's partition),
//! looked up for a valid connection whose account list (or, when asked for, transactions
//! meta) is not beside its consent; and transactions from before packing
//! (`TX#{accountId}#{YYYY-MM}#{part}`, JSON in `data`): by key when their meta lists them,
//! else by a Query of the partition. Both expire with their TTL (31 days after their last
//! refresh, which now writes the new places), after which these reads find nothing.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, KeysAndAttributes, PutRequest, WriteRequest,
};
use chrono::{DateTime, NaiveDate, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::dynamo::{Item, backend, bounded_increment, from_item, s, user_pk};
use super::{ConsentRecord, StoreError};
use crate::bank::{Account, Balance, Transaction};
use crate::domain::{AccountId, ConsentId, ConsentState, UserId};

/// Largest packed transactions kept inside their meta (DynamoDB items hold
/// 400 KB; larger sets go to parts).
pub const INLINE_LIMIT: usize = 300 * 1024;
/// Largest JSON of one part of a connection's transactions (its packed form is never larger
/// than this plus a little, so it fits an item).
pub const PART_JSON_LIMIT: usize = 320 * 1024;
/// Largest unpacked size believed when unpacking a stored item.
const UNPACKED_LIMIT: usize = 64 * 1024 * 1024;
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
    /// The sort keys of the parts holding the transactions when they did not fit in the
    /// meta (module docs); empty when they are inside it, and in metas written before
    /// either existed (their items are then found by a Query of the partition).
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

/// The small items of one connection's snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub accounts: Option<AccountsSnapshot>,
    pub balances: Option<BalancesSnapshot>,
    pub transactions: Option<TransactionsMeta>,
}

/// One connection's snapshot as read: its metas and, when they were asked for, its
/// stored transactions (empty when none are stored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub transactions: Option<Vec<StoredTransaction>>,
}

/// The sort keys of [`SnapshotMeta`]'s items as earlier releases wrote them in the bank data
/// table, by kind (accounts, balances, transactions).
const META_KEYS: [&str; 3] = ["META#ACCOUNTS", "META#BALANCES", "META#TRANSACTIONS"];
/// The letters of the kinds in the sort keys of the metas beside the consents
/// (`DATA#{letter}#{consentId}`), in the same order; they sort as the kinds, so a range read
/// up to `B` leaves the transactions out.
const META_LETTERS: [&str; 3] = ["A", "B", "T"];
/// The kind of the transactions' meta.
const TX_KIND: usize = 2;
/// The packed transactions' attribute (module docs).
const PACKED: &str = "txz";

/// The sort key of a connection's meta of `kind` in the user's partition of the consents
/// table.
fn meta_sk(kind: usize, consent: &ConsentId) -> String {
    format!("DATA#{}#{}", META_LETTERS[kind], consent.as_str())
}

/// The kind and connection id of a [`meta_sk`].
fn parse_meta_sk(sk: &str) -> Option<(usize, &str)> {
    let (letter, consent) = sk.strip_prefix("DATA#")?.split_once('#')?;
    Some((META_LETTERS.iter().position(|l| *l == letter)?, consent))
}

impl SnapshotMeta {
    /// Takes in a stored meta item of `kind`.
    fn absorb(&mut self, kind: usize, item: &Item) -> Result<(), StoreError> {
        match kind {
            0 => self.accounts = Some(data(item)?),
            1 => self.balances = Some(data(item)?),
            _ => self.transactions = Some(data(item)?),
        }
        Ok(())
    }

    fn has(&self, kind: usize) -> bool {
        match kind {
            0 => self.accounts.is_some(),
            1 => self.balances.is_some(),
            _ => self.transactions.is_some(),
        }
    }
}

/// What [`BankDataStore::read_user`] reads: every consent of the user (as
/// `ConsentStore::list_for_user` lists them) and the snapshots of the valid ones (a valid
/// connection without a snapshot maps to an empty one).
#[derive(Clone, Debug, Default)]
pub struct UserData {
    pub consents: Vec<ConsentRecord>,
    pub snapshots: BTreeMap<ConsentId, Snapshot>,
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
    /// The user's consents and their snapshots, with the transactions when `transactions`
    /// (module docs): the DynamoDB adapter reads them with one Query of the user's
    /// partition of the consents table (plus the parts of large transaction sets, and the
    /// metas of earlier releases for valid connections that lack theirs).
    async fn read_user(&self, user: &UserId, transactions: bool) -> Result<UserData, StoreError>;
    /// The snapshots of several connections of one user; with `transactions`, also what
    /// the transactions cover and the stored transactions (else neither is read), in as
    /// few requests as the store allows (the DynamoDB adapter: one BatchGetItem of the
    /// metas, which hold the transactions unless they are large; then one of the parts
    /// large ones list). Connections without a snapshot map to an empty one.
    async fn read_snapshots(
        &self,
        user: &UserId,
        consents: &[ConsentId],
        transactions: bool,
    ) -> Result<BTreeMap<ConsentId, Snapshot>, StoreError>;
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
    /// Replaces the connection's stored transactions with `all` (booked and pending of
    /// every account), fetched at `fetched_at` back to `covered_from`. `previous` is the
    /// meta read before (its parts are deleted once the new set is stored).
    async fn put_transactions(
        &self,
        user: &UserId,
        consent: &ConsentId,
        fetched_at: DateTime<Utc>,
        covered_from: NaiveDate,
        all: &[StoredTransaction],
        previous: Option<&TransactionsMeta>,
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

    /// [`Self::read_snapshots`] of one connection.
    async fn read_snapshot(
        &self,
        user: &UserId,
        consent: &ConsentId,
        transactions: bool,
    ) -> Result<Snapshot, StoreError> {
        Ok(self
            .read_snapshots(user, std::slice::from_ref(consent), transactions)
            .await?
            .remove(consent)
            .unwrap_or_default())
    }
}

/// Packs transactions (module docs): the LZ4-compressed JSON array, its length first.
///
/// # Errors
/// [`StoreError::Corrupt`] when a transaction does not serialise.
pub fn pack(transactions: &[StoredTransaction]) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(transactions).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(lz4_flex::compress_prepend_size(&json))
}

/// The transactions [`pack`] packed.
///
/// # Errors
/// [`StoreError::Corrupt`] for bytes that are not packed transactions.
pub fn unpack(packed: &[u8]) -> Result<Vec<StoredTransaction>, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt(format!("packed transactions: {e}"));
    let size = packed
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| corrupt("too short".into()))?;
    if size > UNPACKED_LIMIT {
        return Err(corrupt(format!("claims {size} bytes unpacked")));
    }
    let json = lz4_flex::decompress_size_prepended(packed).map_err(|e| corrupt(e.to_string()))?;
    serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
}

/// Splits transactions into parts of at most [`PART_JSON_LIMIT`] bytes of JSON (one
/// transaction larger than that is a part of its own), in order.
fn parts(all: &[StoredTransaction]) -> Result<Vec<&[StoredTransaction]>, StoreError> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 2;
    for (i, t) in all.iter().enumerate() {
        let len = serde_json::to_vec(t)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .len()
            + 1;
        if i > start && size + len > PART_JSON_LIMIT {
            out.push(&all[start..i]);
            start = i;
            size = 2;
        }
        size += len;
    }
    if start < all.len() {
        out.push(&all[start..]);
    }
    Ok(out)
}

/// The DynamoDB adapter (module docs): `table` is the bank data table, `consents_table`
/// the consents table (whose user partitions hold the snapshot metas).
#[derive(Clone, Debug)]
pub struct DynamoBankDataStore {
    client: Client,
    table: String,
    consents_table: String,
}

impl DynamoBankDataStore {
    pub fn new(
        client: Client,
        table: impl Into<String>,
        consents_table: impl Into<String>,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            consents_table: consents_table.into(),
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
        self.client
            .put_item()
            .set_item(Some(snapshot_item(
                pk,
                sk,
                Some(to_json(data)?),
                None,
                expires_at,
            )))
            .table_name(&self.consents_table)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Every item of the partition of `table` whose sort key starts with `prefix`, or sorts
    /// before `bound` when `prefix` is `<bound` (all pages, consistent).
    async fn query(
        &self,
        table: &str,
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
                .table_name(table)
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

    async fn delete_keys(
        &self,
        table: &str,
        keys: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
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
        self.batch_write(table, deletes).await
    }

    /// BatchGetItem (consistent) of `keys` of `table`, 100 a request; unprocessed keys are
    /// asked again (with a short pause) until none is left. Missing items are simply absent.
    async fn batch_get(&self, table: &str, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
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
                    .request_items(table, request)
                    .send()
                    .await
                    .map_err(backend)?;
                found.extend(
                    answer
                        .responses
                        .and_then(|mut r| r.remove(table))
                        .unwrap_or_default(),
                );
                pending = answer
                    .unprocessed_keys
                    .and_then(|mut m| m.remove(table))
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

    /// BatchWriteItem of `requests` to `table`, 25 a request; unprocessed ones are sent
    /// again (with a short pause) until none is left.
    async fn batch_write(
        &self,
        table: &str,
        requests: Vec<WriteRequest>,
    ) -> Result<(), StoreError> {
        for batch in requests.chunks(25) {
            let mut requests = batch.to_vec();
            for attempt in 0..8u32 {
                let out = self
                    .client
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

/// The transactions of a `TX#…` item: packed in `txz`, or JSON in `data` (written before
/// packing).
fn stored_transactions(item: &Item) -> Result<Vec<StoredTransaction>, StoreError> {
    match item.get(PACKED) {
        Some(AttributeValue::B(packed)) => unpack(packed.as_ref()),
        _ => data(item),
    }
}

/// A snapshot item: `data` (JSON) and/or `txz` (packed transactions), with its TTL.
fn snapshot_item(
    pk: String,
    sk: String,
    json: Option<String>,
    packed: Option<Vec<u8>>,
    expires_at: i64,
) -> Item {
    let mut item = Item::from([
        ("pk".to_owned(), s(pk)),
        ("sk".to_owned(), s(sk)),
        (
            "expiresAt".to_owned(),
            AttributeValue::N(expires_at.to_string()),
        ),
    ]);
    if let Some(json) = json {
        item.insert("data".into(), s(json));
    }
    if let Some(packed) = packed {
        item.insert(PACKED.into(), AttributeValue::B(Blob::new(packed)));
    }
    item
}

fn key(pk: &str, sk: &str) -> Item {
    Item::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
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

impl DynamoBankDataStore {
    /// The snapshots of `consents`, from the metas `found` beside the consents (by
    /// connection, with their kind; only connections of `consents`): a connection that
    /// lacks its account list, or its transactions' meta when `transactions`, is looked up
    /// where earlier releases kept metas (module docs); then every connection's
    /// transactions are read as its meta says. Every connection of `consents` has a
    /// snapshot in the answer.
    async fn complete(
        &self,
        user: &UserId,
        found: BTreeMap<ConsentId, Vec<(usize, Item)>>,
        consents: &[ConsentId],
        transactions: bool,
    ) -> Result<BTreeMap<ConsentId, Snapshot>, StoreError> {
        let kinds = if transactions { 3 } else { 2 };
        // Each connection's metas, and the item of its transactions' meta.
        let mut metas: BTreeMap<ConsentId, (SnapshotMeta, Option<Item>)> = consents
            .iter()
            .map(|c| (c.clone(), Default::default()))
            .collect();
        for (consent, items) in found {
            let (meta, tx_item) = metas.entry(consent).or_default();
            for (kind, item) in items.into_iter().filter(|(kind, _)| *kind < kinds) {
                meta.absorb(kind, &item)?;
                if kind == TX_KIND {
                    *tx_item = Some(item);
                }
            }
        }
        let by_pk: BTreeMap<String, ConsentId> = metas
            .keys()
            .map(|c| (Self::pk(user, c), c.clone()))
            .collect();
        let lacking: Vec<&String> = by_pk
            .iter()
            .filter(|(_, c)| {
                let meta = &metas[*c].0;
                !meta.has(0) || (transactions && !meta.has(TX_KIND))
            })
            .map(|(pk, _)| pk)
            .collect();
        if !lacking.is_empty() {
            let keys: Vec<Item> = lacking
                .iter()
                .flat_map(|pk| META_KEYS[..kinds].iter().map(move |sk| key(pk, sk)))
                .collect();
            for item in self.batch_get(&self.table, keys).await? {
                let (Some(consent), Some(kind)) = (
                    consent_of(&item, &by_pk),
                    META_KEYS.iter().position(|k| *k == sort_key(&item)),
                ) else {
                    continue;
                };
                let (meta, tx_item) = metas.get_mut(consent).expect("asked for");
                // What is beside the consent is newer.
                if !meta.has(kind) {
                    meta.absorb(kind, &item)?;
                    if kind == TX_KIND {
                        *tx_item = Some(item);
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        let mut listed = Vec::new();
        let mut unlisted = Vec::new();
        for (consent, (meta, tx_item)) in metas {
            let mut stored = transactions.then(Vec::new);
            if let (Some(item), Some(tx_meta)) = (tx_item, &meta.transactions) {
                let pk = Self::pk(user, &consent);
                if let Some(AttributeValue::B(packed)) = item.get(PACKED) {
                    stored = Some(unpack(packed.as_ref())?);
                } else if !tx_meta.items.is_empty() {
                    listed.extend(tx_meta.items.iter().map(|sk| key(&pk, sk)));
                } else {
                    unlisted.push((consent.clone(), pk));
                }
            }
            out.insert(
                consent,
                Snapshot {
                    meta,
                    transactions: stored,
                },
            );
        }
        if !listed.is_empty() {
            let expected = listed.len();
            let found = self.batch_get(&self.table, listed).await?;
            if found.len() != expected {
                return Err(StoreError::Corrupt(format!(
                    "{} of {expected} listed transaction parts are missing",
                    expected - found.len()
                )));
            }
            for item in &found {
                if let Some(consent) = consent_of(item, &by_pk) {
                    let mut part = stored_transactions(item)?;
                    if let Some(list) = &mut out.get_mut(consent).expect("asked for").transactions {
                        list.append(&mut part);
                    }
                }
            }
        }
        let queries = unlisted
            .iter()
            .map(|(_, pk)| self.query(&self.table, pk, "TX#", false));
        for ((consent, _), items) in unlisted
            .iter()
            .zip(futures::future::join_all(queries).await)
        {
            let list = out
                .get_mut(consent)
                .and_then(|s| s.transactions.as_mut())
                .expect("asked for");
            for item in items? {
                list.append(&mut stored_transactions(&item)?);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl BankDataStore for DynamoBankDataStore {
    async fn read_user(&self, user: &UserId, transactions: bool) -> Result<UserData, StoreError> {
        // The partition holds the consents (`CONSENT#…`) and the metas (`DATA#…`): all of
        // it up to the last kind of meta asked for.
        let last = if transactions { TX_KIND } else { 1 };
        let bound = format!("<DATA#{}$", META_LETTERS[last]);
        let items = self
            .query(&self.consents_table, &user_pk(user), &bound, false)
            .await?;
        let mut consents: Vec<ConsentRecord> = Vec::new();
        let mut metas = Vec::new();
        for item in items {
            if sort_key(&item).starts_with("CONSENT#") {
                consents.push(from_item(item)?);
            } else {
                metas.push(item);
            }
        }
        let valid: Vec<ConsentId> = consents
            .iter()
            .filter(|c| c.state == ConsentState::Valid)
            .map(|c| c.consent_id.clone())
            .collect();
        // Only the valid connections' snapshots are completed (their transactions unpacked,
        // their parts read): the metas a superseded or expired connection keeps until its
        // TTL, and those of a consent that is gone, are left alone.
        let mut found: BTreeMap<ConsentId, Vec<(usize, Item)>> = BTreeMap::new();
        for item in metas {
            let Some((kind, consent)) = parse_meta_sk(sort_key(&item)) else {
                continue;
            };
            if let Some(id) = valid.iter().find(|c| c.as_str() == consent) {
                found.entry(id.clone()).or_default().push((kind, item));
            }
        }
        let snapshots = self.complete(user, found, &valid, transactions).await?;
        Ok(UserData {
            consents,
            snapshots,
        })
    }

    async fn read_snapshots(
        &self,
        user: &UserId,
        consents: &[ConsentId],
        transactions: bool,
    ) -> Result<BTreeMap<ConsentId, Snapshot>, StoreError> {
        if consents.is_empty() {
            return Ok(BTreeMap::new());
        }
        let kinds = if transactions { 3 } else { 2 };
        let pk = user_pk(user);
        let keys: Vec<Item> = consents
            .iter()
            .flat_map(|c| (0..kinds).map(|kind| key(&pk, &meta_sk(kind, c))))
            .collect();
        let mut found: BTreeMap<ConsentId, Vec<(usize, Item)>> = BTreeMap::new();
        for item in self.batch_get(&self.consents_table, keys).await? {
            let Some((kind, id)) = parse_meta_sk(sort_key(&item)) else {
                continue;
            };
            if let Some(consent) = consents.iter().find(|c| c.as_str() == id) {
                found.entry(consent.clone()).or_default().push((kind, item));
            }
        }
        self.complete(user, found, consents, transactions).await
    }

    async fn put_accounts(
        &self,
        user: &UserId,
        consent: &ConsentId,
        snapshot: &AccountsSnapshot,
    ) -> Result<(), StoreError> {
        self.put_data(
            user_pk(user),
            meta_sk(0, consent),
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
            user_pk(user),
            meta_sk(1, consent),
            snapshot,
            snapshot_expiry(snapshot.fetched_at),
        )
        .await
    }

    async fn put_transactions(
        &self,
        user: &UserId,
        consent: &ConsentId,
        fetched_at: DateTime<Utc>,
        covered_from: NaiveDate,
        all: &[StoredTransaction],
        previous: Option<&TransactionsMeta>,
    ) -> Result<(), StoreError> {
        let pk = Self::pk(user, consent);
        let expires = snapshot_expiry(fetched_at);
        let mut meta = TransactionsMeta {
            fetched_at,
            covered_from,
            items: Vec::new(),
        };
        let packed = pack(all)?;
        let inline = if packed.len() <= INLINE_LIMIT {
            Some(packed)
        } else {
            // A new generation of parts, written before the meta that lists them (under
            // `PART#`: a Query of a partition from before packing, `TX#`, never sees them).
            let generation = fetched_at.timestamp_micros();
            let mut puts = Vec::new();
            for (n, part) in parts(all)?.into_iter().enumerate() {
                let sk = format!("PART#{generation}#{n:04}");
                let item = snapshot_item(pk.clone(), sk.clone(), None, Some(pack(part)?), expires);
                puts.push(
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .set_item(Some(item))
                                .build()
                                .expect("the item is set"),
                        )
                        .build(),
                );
                meta.items.push(sk);
            }
            self.batch_write(&self.table, puts).await?;
            None
        };
        let item = snapshot_item(
            user_pk(user),
            meta_sk(TX_KIND, consent),
            Some(to_json(&meta)?),
            inline,
            expires,
        );
        self.client
            .put_item()
            .table_name(&self.consents_table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(backend)?;
        // The previous generation's parts are no longer listed: deleted (else the TTL
        // drops them).
        let stale: Vec<(String, String)> = previous
            .map(|p| p.items.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|sk| !meta.items.contains(sk))
            .map(|sk| (pk.clone(), sk.clone()))
            .collect();
        if !stale.is_empty()
            && let Err(e) = self.delete_keys(&self.table, stale).await
        {
            warn!(error = %e, "previous transaction parts not deleted; their TTL drops them");
        }
        Ok(())
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
        // The metas beside the consent (counted when they existed), then the connection's
        // partition of the bank data table.
        let metas = (0..META_LETTERS.len()).map(|kind| {
            self.client
                .delete_item()
                .table_name(&self.consents_table)
                .key("pk", s(user_pk(user)))
                .key("sk", s(meta_sk(kind, consent)))
                .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
                .send()
        });
        let mut n = 0;
        for deleted in futures::future::join_all(metas).await {
            n += usize::from(deleted.map_err(backend)?.attributes.is_some());
        }
        let pk = Self::pk(user, consent);
        let keys: Vec<(String, String)> = self
            .query(&self.table, &pk, "", true)
            .await?
            .iter()
            .map(|item| (pk.clone(), sort_key(item).to_owned()))
            .collect();
        n += keys.len();
        self.delete_keys(&self.table, keys).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::TransactionState;
    use crate::domain::{Currency, Money};

    fn transaction(n: usize, text_len: usize) -> StoredTransaction {
        let eur = Currency::parse("EUR").unwrap();
        StoredTransaction {
            id: format!("tx-{n}"),
            account_id: AccountId::parse("acc-1").unwrap(),
            tx: Transaction {
                transaction_id: Some(format!("tx-{n}")),
                entry_reference: None,
                state: TransactionState::Booked,
                booking_date: NaiveDate::from_ymd_opt(2026, 11, 1 + (n % 28) as u32),
                value_date: None,
                amount: Money::parse(&format!("-{}.{:02}", n % 500, n % 100), eur).unwrap(),
                creditor_name: Some("Rimi Latvia".into()),
                creditor_iban: None,
                debtor_name: None,
                debtor_iban: None,
                remittance: Some(format!("{n}{}", "0".repeat(text_len))),
                merchant_category_code: Some("5411".into()),
                bank_transaction_code: None,
            },
        }
    }

    #[test]
    fn packed_transactions_unpack_to_the_same_and_are_smaller() {
        let all: Vec<StoredTransaction> = (0..1_000).map(|n| transaction(n, 40)).collect();
        let packed = pack(&all).unwrap();
        assert_eq!(unpack(&packed).unwrap(), all);
        let json = serde_json::to_vec(&all).unwrap().len();
        assert!(packed.len() * 3 < json, "{} of {json} bytes", packed.len());
        assert_eq!(unpack(&pack(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn damaged_packed_bytes_are_an_error_not_a_panic() {
        let packed = pack(&[transaction(1, 10)]).unwrap();
        for bad in [
            &b""[..],
            &b"\x01\x00"[..],
            &packed[..packed.len() - 3],
            &b"\xff\xff\xff\x7fabc"[..],
        ] {
            assert!(
                matches!(unpack(bad), Err(StoreError::Corrupt(_))),
                "{bad:?}"
            );
        }
        let mut flipped = packed.clone();
        flipped[0] ^= 0x40;
        assert!(unpack(&flipped).is_err());
    }

    #[test]
    fn parts_stay_under_the_limit_and_keep_every_transaction_in_order() {
        let all: Vec<StoredTransaction> = (0..3_000).map(|n| transaction(n, 300)).collect();
        let split = parts(&all).unwrap();
        assert!(split.len() >= 3, "{}", split.len());
        for part in &split {
            let json = serde_json::to_vec(part).unwrap().len();
            assert!(json <= PART_JSON_LIMIT, "{json}");
            assert!(pack(part).unwrap().len() < 400 * 1024);
        }
        let joined: Vec<StoredTransaction> = split.concat();
        assert_eq!(joined, all);
        assert!(parts(&[]).unwrap().is_empty());
        // One transaction larger than a part is a part of its own.
        let huge = [transaction(1, PART_JSON_LIMIT), transaction(2, 10)];
        assert_eq!(parts(&huge).unwrap().len(), 2);
    }
}
