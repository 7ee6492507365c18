//! Multi-bank aggregation: accounts, balances in one currency, merged and categorised
//! transactions, spending by category, over all of a user's valid connections.
//!
//! Decisions worth knowing:
//! - **Concurrent, bounded.** Every connection is loaded concurrently, each under a
//!   per-bank deadline; within a connection the critical path is the dependent round
//!   trips (the account list, then every account's balances or transactions in parallel).
//!   A slow or failing bank becomes an entry in `errors` (bank, connection, code, message,
//!   `retryAfter` where known) and never fails or delays the others beyond the deadline.
//! - **Snapshots and the access limit.** Reads are served from the connection's snapshot
//!   in the bank data table while it is younger than `SNAPSHOT_MAX_AGE_SECS`. An older (or
//!   missing) snapshot is refreshed *without the PSU* only if the consent's daily budget
//!   allows: each kind of read (account list, balances, transactions) takes one unit from
//!   an atomic per-consent, per-day counter whose limit is the consent's
//!   `frequencyPerDay`, *before* the bank is called, so concurrent readers can never go
//!   past it. With the budget spent, the stale snapshot is served with its age. A refresh
//!   the user asks for (`refresh=true`) carries `PSU-IP-Address` and is not counted.
//!   Every answer says, per connection, when its data was fetched.
//! - **Transactions** are fetched `bookingStatus=both`, every page, from the last refresh
//!   (minus an overlap) or `history_days` back. Booked ones are merged by a stable id (the
//!   bank's `transactionId`, else a fingerprint of account, dates, amount, counterparty
//!   and remittance), so re-sent transactions appear once; the pending set is replaced at
//!   every refresh, so a pending transaction that books is listed once, as booked.
//! - **Money.** Balances prefer `interimAvailable`, then `closingBooked`; conversion uses
//!   the ECB reference rates (cross rates via EUR, decimal, rounded once to the base
//!   currency's minor units); a missing rate is an error entry, never a zero.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Days, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::connections::Connections;
use super::{Clock, ServiceError};
use crate::bank::registry::BankRegistry;
use crate::bank::{
    Account, Balance, BalanceType, BankApi, BankError, BookingStatus, PsuContext, TransactionQuery,
    TransactionState,
};
use crate::domain::category::{Categoriser, Category, CategoryInput, Direction};
use crate::domain::{
    AccountId, BankId, ConsentEvent, ConsentId, ConsentState, ConsentStatus, Converted, Currency,
    Money, RateTable, UserId,
};
use crate::fx::RateSource;
use crate::http::FieldError;
use crate::store::{
    AccessKind, AccountsSnapshot, BalancesSnapshot, BankDataStore, ConsentRecord, ConsentStore,
    Snapshot, StoreError, StoredTransaction,
};

/// Env: how long a snapshot is served without asking the bank (seconds).
pub const MAX_AGE_ENV: &str = "SNAPSHOT_MAX_AGE_SECS";
/// Env: the per-bank deadline of one aggregated read (milliseconds).
pub const DEADLINE_ENV: &str = "BANK_DEADLINE_MS";
/// Largest page of `GET /v1/transactions`.
pub const MAX_LIMIT: usize = 500;

/// Settings of the aggregation service.
#[derive(Clone, Debug)]
pub struct AggregationConfig {
    /// Snapshots younger than this are served as they are. The default, 6 hours, spreads
    /// a budget of 4 reads a day over the day.
    pub max_age: Duration,
    /// Every bank's share of one request must finish within this.
    pub bank_deadline: StdDuration,
    /// How far back transactions are fetched the first time.
    pub history_days: u32,
    /// How far before the last refresh a refresh starts again (late bookings).
    pub overlap_days: u32,
}

impl AggregationConfig {
    /// From `SNAPSHOT_MAX_AGE_SECS` (default 21600) and `BANK_DEADLINE_MS` (default 8000).
    ///
    /// # Errors
    /// A message naming the variable that is not a number.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match lookup(name).filter(|v| !v.trim().is_empty()) {
                Some(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name} must be a whole number")),
                None => Ok(default),
            }
        };
        Ok(Self {
            max_age: Duration::seconds(
                i64::try_from(number(MAX_AGE_ENV, 21_600)?).unwrap_or(i64::MAX),
            ),
            bank_deadline: StdDuration::from_millis(number(DEADLINE_ENV, 8_000)?),
            history_days: 90,
            overlap_days: 7,
        })
    }
}

/// What the aggregation service needs.
pub struct AggregationDeps {
    pub consents: Arc<dyn ConsentStore>,
    pub data: Arc<dyn BankDataStore>,
    pub banks: HashMap<BankId, Arc<dyn BankApi>>,
    pub registry: BankRegistry,
    pub rates: Arc<dyn RateSource>,
    pub categoriser: Arc<Categoriser>,
    /// When present, a consent the bank reports expired is marked (and the user told).
    pub connections: Option<Arc<Connections>>,
    pub config: AggregationConfig,
    pub clock: Arc<dyn Clock>,
}

/// The aggregation service (module docs).
pub struct Aggregation {
    deps: AggregationDeps,
}

/// One entry of `errors`: what went wrong at one bank (or for one account).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorItem {
    pub bank_id: BankId,
    pub connection_id: ConsentId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    pub code: String,
    pub message: String,
    /// Seconds until a retry may succeed, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

/// Where one connection's data came from and how old it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceView {
    pub bank_id: BankId,
    pub bank_name: String,
    pub connection_id: ConsentId,
    /// When the oldest part of the data shown was fetched from the bank.
    pub fetched_at: Option<DateTime<Utc>>,
    pub age_seconds: Option<i64>,
    /// Served from the snapshot (no bank call in this request).
    pub from_snapshot: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    /// `{connectionId}:{bank's account id}`.
    pub account_id: String,
    pub connection_id: ConsentId,
    pub bank_id: BankId,
    pub bank_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iban: Option<String>,
    pub currency: Currency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cash_account_type: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountsAnswer {
    pub accounts: Vec<AccountView>,
    pub sources: Vec<SourceView>,
    pub errors: Vec<ErrorItem>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceView {
    #[serde(flatten)]
    pub account: AccountView,
    /// `interimAvailable`, else `closingBooked`, else the first the bank gave.
    pub balance_type: String,
    pub balance: Money,
    /// In the base currency; absent when no rate was available (see `errors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converted: Option<Converted>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Total {
    pub amount: Money,
    pub currency: Currency,
    /// The ECB reference date of the rates used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates_as_of: Option<NaiveDate>,
    /// Every account's balance is included (no conversion failed, no bank failed).
    pub complete: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BalancesAnswer {
    pub base_currency: Currency,
    pub accounts: Vec<BalanceView>,
    pub total: Total,
    /// Units of each currency shown per 1 EUR (the ECB reference rates used).
    pub rates: BTreeMap<String, String>,
    pub sources: Vec<SourceView>,
    pub errors: Vec<ErrorItem>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionView {
    pub transaction_id: String,
    pub account_id: String,
    pub connection_id: ConsentId,
    pub bank_id: BankId,
    pub status: TransactionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booking_date: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_date: Option<NaiveDate>,
    /// Signed: negative for money leaving the account.
    pub amount: Money,
    /// `debit` or `credit`.
    #[serde(rename = "direction")]
    pub direction_name: &'static str,
    #[serde(skip)]
    pub direction: Direction,
    pub category: Category,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterparty_iban: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remittance_information: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merchant_category_code: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionsAnswer {
    pub transactions: Vec<TransactionView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    pub sources: Vec<SourceView>,
    pub errors: Vec<ErrorItem>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryTotal {
    pub category: Category,
    pub count: usize,
    pub total: Money,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendingAnswer {
    pub base_currency: Currency,
    pub date_from: NaiveDate,
    pub date_to: NaiveDate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates_as_of: Option<NaiveDate>,
    /// Money out, per category, largest first (positive totals).
    pub spending: Vec<CategoryTotal>,
    /// Money in, per category, largest first.
    pub income: Vec<CategoryTotal>,
    pub total_spending: Money,
    pub total_income: Money,
    pub sources: Vec<SourceView>,
    pub errors: Vec<ErrorItem>,
}

/// What a request needs of each connection.
#[derive(Clone, Copy, Debug, Default)]
struct Need {
    balances: bool,
    transactions: bool,
}

/// One connection's data for this request.
struct Loaded {
    consent: ConsentRecord,
    accounts: Vec<Account>,
    balances: BTreeMap<String, Vec<Balance>>,
    transactions: Vec<StoredTransaction>,
    source: SourceView,
}

/// The validated query of the transaction list and the spending insight.
#[derive(Clone, Debug, Default)]
struct TxFilter {
    date_from: Option<NaiveDate>,
    date_to: Option<NaiveDate>,
    bank: Option<BankId>,
    account: Option<String>,
    category: Option<Category>,
}

/// Position after the last transaction of a page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    d: Option<NaiveDate>,
    i: String,
}

impl Aggregation {
    pub fn new(deps: AggregationDeps) -> Self {
        Self { deps }
    }

    // ---- routes -----------------------------------------------------------------------

    /// `GET /v1/accounts`.
    ///
    /// # Errors
    /// [`ServiceError::Validation`] for a bad query; [`ServiceError::Store`].
    pub async fn accounts(
        &self,
        user: &UserId,
        query: &HashMap<String, String>,
        ip: Option<IpAddr>,
    ) -> Result<AccountsAnswer, ServiceError> {
        let psu = refresh(query, ip)?;
        let (loaded, errors) = self.gather(user, Need::default(), psu).await?;
        Ok(AccountsAnswer {
            accounts: loaded
                .iter()
                .flat_map(|l| l.accounts.iter().map(|a| account_view(l, a)))
                .collect(),
            sources: loaded.iter().map(|l| l.source.clone()).collect(),
            errors,
        })
    }

    /// `GET /v1/balances?baseCurrency=EUR`.
    ///
    /// # Errors
    /// [`ServiceError::Validation`] for a bad query; [`ServiceError::Store`].
    pub async fn balances(
        &self,
        user: &UserId,
        query: &HashMap<String, String>,
        ip: Option<IpAddr>,
    ) -> Result<BalancesAnswer, ServiceError> {
        let base = base_currency(query)?;
        let psu = refresh(query, ip)?;
        let need = Need {
            balances: true,
            transactions: false,
        };
        let (gathered, rates) =
            tokio::join!(self.gather(user, need, psu), self.deps.rates.latest());
        let (loaded, mut errors) = gathered?;
        let rates = rates.map_err(|e| e.to_string());
        let mut accounts = Vec::new();
        let mut complete = errors.is_empty();
        let mut converted_total = Money::zero(base);
        let mut used: HashSet<Currency> = HashSet::new();
        for l in &loaded {
            for account in &l.accounts {
                let Some((balance_type, balance)) = l
                    .balances
                    .get(account.id.as_str())
                    .and_then(|b| preferred_balance(b))
                else {
                    complete = false;
                    continue;
                };
                let converted = match convert(&rates, &balance, base) {
                    Ok(converted) => {
                        used.insert(balance.currency());
                        match converted_total.checked_add(&converted.amount) {
                            Ok(sum) => converted_total = sum,
                            Err(_) => complete = false,
                        }
                        Some(converted)
                    }
                    Err(message) => {
                        complete = false;
                        errors.push(ErrorItem {
                            bank_id: l.consent.bank_id.clone(),
                            connection_id: l.consent.consent_id.clone(),
                            account_id: Some(account_key(&l.consent.consent_id, &account.id)),
                            code: "FX_RATE_MISSING".into(),
                            message,
                            retry_after: None,
                        });
                        None
                    }
                };
                accounts.push(BalanceView {
                    account: account_view(l, account),
                    balance_type: balance_type_name(&balance_type),
                    balance,
                    converted,
                });
            }
        }
        let (rates_as_of, rate_list) = match &rates {
            Ok(table) => (
                Some(table.as_of()),
                used.iter()
                    .chain(std::iter::once(&base))
                    .filter_map(|c| table.rate(*c).map(|r| (c.code().to_owned(), r.to_string())))
                    .collect(),
            ),
            Err(_) => (None, BTreeMap::new()),
        };
        Ok(BalancesAnswer {
            base_currency: base,
            accounts,
            total: Total {
                amount: converted_total,
                currency: base,
                rates_as_of,
                complete,
            },
            rates: rate_list,
            sources: loaded.iter().map(|l| l.source.clone()).collect(),
            errors,
        })
    }

    /// `GET /v1/transactions?dateFrom&dateTo&bankId&accountId&category&limit&cursor`.
    ///
    /// # Errors
    /// [`ServiceError::Validation`] for a bad query; [`ServiceError::Store`].
    pub async fn transactions(
        &self,
        user: &UserId,
        query: &HashMap<String, String>,
        ip: Option<IpAddr>,
    ) -> Result<TransactionsAnswer, ServiceError> {
        let mut errors_in = Vec::new();
        let filter = self.tx_filter(query, &mut errors_in);
        let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
            None => 50,
            Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
            Some(_) => {
                errors_in.push(field("limit", format!("must be between 1 and {MAX_LIMIT}")));
                50
            }
        };
        let cursor = match query.get("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(text) => match decode_cursor(text) {
                Some(cursor) => Some(cursor),
                None => {
                    errors_in.push(field(
                        "cursor",
                        "is not a cursor from a previous page".into(),
                    ));
                    None
                }
            },
        };
        let psu = match refresh(query, ip) {
            Ok(psu) => psu,
            Err(ServiceError::Validation(mut e)) => {
                errors_in.append(&mut e);
                None
            }
            Err(e) => return Err(e),
        };
        if !errors_in.is_empty() {
            return Err(ServiceError::Validation(errors_in));
        }
        let need = Need {
            balances: false,
            transactions: true,
        };
        let (loaded, errors) = self.gather(user, need, psu).await?;
        let mut views = self.views(&loaded, &filter);
        sort_newest_first(&mut views);
        if let Some(cursor) = &cursor {
            views.retain(|v| is_after(v, cursor));
        }
        let more = views.len() > limit;
        views.truncate(limit);
        let next_cursor = more.then(|| {
            let last = views.last().expect("a full page");
            encode_cursor(&Cursor {
                d: day_of(last),
                i: sort_id(last),
            })
        });
        Ok(TransactionsAnswer {
            transactions: views,
            next_cursor,
            sources: loaded.iter().map(|l| l.source.clone()).collect(),
            errors,
        })
    }

    /// `GET /v1/insights/spending?dateFrom&dateTo&baseCurrency=EUR`.
    ///
    /// # Errors
    /// [`ServiceError::Validation`] for a bad query; [`ServiceError::Store`].
    pub async fn spending(
        &self,
        user: &UserId,
        query: &HashMap<String, String>,
        ip: Option<IpAddr>,
    ) -> Result<SpendingAnswer, ServiceError> {
        let mut errors_in = Vec::new();
        let filter = self.tx_filter(query, &mut errors_in);
        let base = match base_currency(query) {
            Ok(base) => Some(base),
            Err(ServiceError::Validation(mut e)) => {
                errors_in.append(&mut e);
                None
            }
            Err(e) => return Err(e),
        };
        let psu = refresh(query, ip)?;
        let Some(base) = base.filter(|_| errors_in.is_empty()) else {
            return Err(ServiceError::Validation(errors_in));
        };
        let today = self.deps.clock.now().date_naive();
        let date_to = filter.date_to.unwrap_or(today);
        let date_from = filter
            .date_from
            .unwrap_or_else(|| date_to - Days::new(u64::from(self.deps.config.history_days)));
        let filter = TxFilter {
            date_from: Some(date_from),
            date_to: Some(date_to),
            ..filter
        };
        let need = Need {
            balances: false,
            transactions: true,
        };
        let (gathered, rates) =
            tokio::join!(self.gather(user, need, psu), self.deps.rates.latest());
        let (loaded, mut errors) = gathered?;
        let rates = rates.map_err(|e| e.to_string());
        let mut spending: BTreeMap<Category, (usize, Money)> = BTreeMap::new();
        let mut income: BTreeMap<Category, (usize, Money)> = BTreeMap::new();
        let mut missing: BTreeMap<(BankId, ConsentId, String), String> = BTreeMap::new();
        for view in self.views(&loaded, &filter) {
            let converted = match convert(&rates, &view.amount, base) {
                Ok(c) => c.amount,
                Err(message) => {
                    missing.insert(
                        (
                            view.bank_id.clone(),
                            view.connection_id.clone(),
                            view.amount.currency().code().to_owned(),
                        ),
                        message,
                    );
                    continue;
                }
            };
            let bucket = match view.direction {
                Direction::Debit => &mut spending,
                Direction::Credit => &mut income,
            };
            let entry = bucket
                .entry(view.category)
                .or_insert((0, Money::zero(base)));
            entry.0 += 1;
            entry.1 = entry.1.checked_add(&converted.abs()).map_err(|e| {
                ServiceError::Validation(vec![field("dateFrom", format!("totals overflow: {e}"))])
            })?;
        }
        for ((bank_id, connection_id, currency), message) in missing {
            errors.push(ErrorItem {
                bank_id,
                connection_id,
                account_id: None,
                code: "FX_RATE_MISSING".into(),
                message: format!("{currency} transactions left out: {message}"),
                retry_after: None,
            });
        }
        let totals = |bucket: BTreeMap<Category, (usize, Money)>| {
            let mut list: Vec<CategoryTotal> = bucket
                .into_iter()
                .map(|(category, (count, total))| CategoryTotal {
                    category,
                    count,
                    total,
                })
                .collect();
            list.sort_by_key(|c| std::cmp::Reverse(c.total.amount()));
            list
        };
        let sum = |list: &[CategoryTotal]| {
            list.iter()
                .try_fold(Money::zero(base), |acc, c| acc.checked_add(&c.total))
                .unwrap_or(Money::zero(base))
        };
        let spending = totals(spending);
        let income = totals(income);
        Ok(SpendingAnswer {
            base_currency: base,
            date_from,
            date_to,
            rates_as_of: rates.as_ref().ok().map(RateTable::as_of),
            total_spending: sum(&spending),
            total_income: sum(&income),
            spending,
            income,
            sources: loaded.iter().map(|l| l.source.clone()).collect(),
            errors,
        })
    }

    /// Purges a connection's cached bank data (revocation).
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub async fn purge(&self, user: &UserId, consent: &ConsentId) -> Result<usize, ServiceError> {
        Ok(self.deps.data.purge(user, consent).await?)
    }

    // ---- loading ----------------------------------------------------------------------

    /// Loads every valid connection of the user concurrently.
    async fn gather(
        &self,
        user: &UserId,
        need: Need,
        psu: Option<IpAddr>,
    ) -> Result<(Vec<Loaded>, Vec<ErrorItem>), ServiceError> {
        // The connections and their snapshots in one read (the metas hold the transactions
        // unless a connection's are large). Should that read fail, the connections are
        // listed alone and the snapshots read apart; a connection whose snapshot could not
        // be read either way reads it itself in `load`.
        let valid = |all: Vec<ConsentRecord>| -> Vec<ConsentRecord> {
            all.into_iter()
                .filter(|c| c.state == ConsentState::Valid && c.bank_consent_id.is_some())
                .collect()
        };
        let (consents, mut snapshots) = match self
            .deps
            .data
            .read_user(user, need.transactions)
            .await
        {
            Ok(read) => (valid(read.consents), read.snapshots),
            Err(e) => {
                warn!(error = %e, "connections and snapshots unreadable together; reading them apart");
                let consents = valid(self.deps.consents.list_for_user(user).await?);
                let ids: Vec<ConsentId> = consents.iter().map(|c| c.consent_id.clone()).collect();
                let snapshots = self
                    .deps
                    .data
                    .read_snapshots(user, &ids, need.transactions)
                    .await
                    .unwrap_or_else(|e| {
                        warn!(error = %e, "snapshots unreadable together; reading them one by one");
                        BTreeMap::new()
                    });
                (consents, snapshots)
            }
        };
        let loads = consents.into_iter().map(|consent| {
            let snapshot = snapshots.remove(&consent.consent_id);
            self.load_bounded(consent, need, psu, snapshot)
        });
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        for (data, mut errs) in futures::future::join_all(loads).await {
            loaded.extend(data);
            errors.append(&mut errs);
        }
        loaded.sort_by(|a, b| {
            (a.consent.bank_id.as_str(), a.consent.consent_id.as_str())
                .cmp(&(b.consent.bank_id.as_str(), b.consent.consent_id.as_str()))
        });
        Ok((loaded, errors))
    }

    /// [`Self::load`] under the per-bank deadline; past it, the snapshot (if any) and an
    /// error entry.
    async fn load_bounded(
        &self,
        consent: ConsentRecord,
        need: Need,
        psu: Option<IpAddr>,
        preloaded: Option<Snapshot>,
    ) -> (Option<Loaded>, Vec<ErrorItem>) {
        let deadline = self.deps.config.bank_deadline;
        match tokio::time::timeout(deadline, self.load(consent.clone(), need, psu, preloaded)).await
        {
            Ok(result) => result,
            Err(_) => {
                warn!(consent_id = %consent.consent_id, bank_id = %consent.bank_id,
                    "bank missed the aggregation deadline");
                let error = ErrorItem {
                    bank_id: consent.bank_id.clone(),
                    connection_id: consent.consent_id.clone(),
                    account_id: None,
                    code: "BANK_TIMEOUT".into(),
                    message: format!(
                        "The bank did not answer within {} ms; showing stored data if any.",
                        deadline.as_millis()
                    ),
                    retry_after: None,
                };
                // The snapshot alone, without waiting for the bank again.
                let snapshot = self.snapshot_only(consent, need).await;
                (snapshot, vec![error])
            }
        }
    }

    async fn snapshot_only(&self, consent: ConsentRecord, need: Need) -> Option<Loaded> {
        let Snapshot { meta, transactions } = self
            .deps
            .data
            .read_snapshot(&consent.user_id, &consent.consent_id, need.transactions)
            .await
            .ok()?;
        let accounts = meta.accounts?;
        let transactions = transactions.unwrap_or_default();
        let mut fetched = vec![accounts.fetched_at];
        let balances = match (&meta.balances, need.balances) {
            (Some(b), true) => {
                fetched.push(b.fetched_at);
                b.balances.clone()
            }
            _ => BTreeMap::new(),
        };
        if let (Some(t), true) = (&meta.transactions, need.transactions) {
            fetched.push(t.fetched_at);
        }
        let source = self.source(&consent, fetched.into_iter().min(), true);
        Some(Loaded {
            consent,
            accounts: accounts.accounts,
            balances,
            transactions,
            source,
        })
    }

    /// One connection: snapshot (`preloaded` when the caller read it already), budget,
    /// bank (module docs).
    async fn load(
        &self,
        consent: ConsentRecord,
        need: Need,
        psu: Option<IpAddr>,
        preloaded: Option<Snapshot>,
    ) -> (Option<Loaded>, Vec<ErrorItem>) {
        let user = consent.user_id.clone();
        let id = consent.consent_id.clone();
        let mut errors = Vec::new();
        let error = |code: &str, message: String, retry_after: Option<u64>| ErrorItem {
            bank_id: consent.bank_id.clone(),
            connection_id: id.clone(),
            account_id: None,
            code: code.to_owned(),
            message,
            retry_after,
        };
        let unreadable = |e: StoreError| {
            warn!(consent_id = %id, error = %e, "snapshot unreadable; asking the bank");
        };
        let snapshot = match preloaded {
            Some(s) if !need.transactions || s.transactions.is_some() => s,
            _ => self
                .deps
                .data
                .read_snapshot(&user, &id, need.transactions)
                .await
                .unwrap_or_else(|e| {
                    unreadable(e);
                    Snapshot::default()
                }),
        };
        let Snapshot {
            meta,
            transactions: stored_tx,
        } = snapshot;
        let stored_tx = stored_tx.unwrap_or_default();
        let now = self.deps.clock.now();
        let today = now.date_naive();
        let max_age = self.deps.config.max_age;
        let is_fresh = |at: DateTime<Utc>| now - at < max_age;

        // Which kinds to fetch now: all of them when the user asked; else the stale ones
        // for which the daily budget still has a unit.
        let wanted = [
            (
                AccessKind::Accounts,
                true,
                meta.accounts.as_ref().map(|a| a.fetched_at),
            ),
            (
                AccessKind::Balances,
                need.balances,
                meta.balances.as_ref().map(|b| b.fetched_at),
            ),
            (
                AccessKind::Transactions,
                need.transactions,
                meta.transactions.as_ref().map(|t| t.fetched_at),
            ),
        ];
        let Some(connector) = self.deps.banks.get(&consent.bank_id).cloned() else {
            errors.push(error(
                "BANK_UNKNOWN",
                "This bank is no longer configured.".into(),
                None,
            ));
            return (None, errors);
        };
        let mut fetch = HashSet::new();
        // Kinds to claim from the budget: the account list and balances before round trip
        // 1 (the balances may come with the list); the transactions, read in round trip 2,
        // while round trip 1 runs.
        let mut claim_first = Vec::new();
        let mut claim_later = Vec::new();
        for (kind, needed, fetched_at) in wanted {
            if !needed {
                continue;
            }
            if psu.is_some() {
                fetch.insert(kind);
                continue;
            }
            // The accounts list is only re-read when it is missing or stale *and* the
            // budget allows; a stale list still serves to read balances.
            if !fetched_at.is_some_and(is_fresh) {
                if kind == AccessKind::Transactions {
                    claim_later.push(kind);
                } else {
                    claim_first.push(kind);
                }
            }
        }
        let mut budget_spent = self.claim(&consent, &claim_first, today, &mut fetch).await;
        let bank_consent = consent
            .bank_consent_id
            .clone()
            .expect("valid connections have a bank consent");
        let psu_context = psu.map_or_else(PsuContext::absent, PsuContext::present);

        // Round trip 1: the account list (fresh or stored). With the balances wanted too,
        // the bank may send them along with the list (the `withBalance` quirk): those
        // accounts skip their balances call.
        let list_accounts = fetch.contains(&AccessKind::Accounts);
        let with_balances = fetch.contains(&AccessKind::Balances);
        let round_trip_1 = async {
            if !list_accounts {
                None
            } else if with_balances {
                Some(
                    connector
                        .accounts_with_balances(&bank_consent, &psu_context)
                        .await,
                )
            } else {
                Some(
                    connector
                        .accounts(&bank_consent, &psu_context)
                        .await
                        .map(|list| list.into_iter().map(|a| (a, None)).collect()),
                )
            }
        };
        let mut claimed_later = HashSet::new();
        let (listed, spent_later) = tokio::join!(
            round_trip_1,
            self.claim(&consent, &claim_later, today, &mut claimed_later)
        );
        fetch.extend(claimed_later);
        budget_spent |= spent_later;
        if budget_spent {
            let next_day = (today + Days::new(1))
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc();
            errors.push(error(
                "ACCESS_LIMIT_REACHED",
                format!(
                    "The bank allows {} reads a day without you; showing stored data. \
                     Refresh with refresh=true while you are present.",
                    consent.frequency_per_day
                ),
                Some(u64::try_from((next_day - now).num_seconds()).unwrap_or(0)),
            ));
        }
        let mut from_snapshot = true;
        let mut accounts_write = None;
        let mut fetched_times = Vec::new();
        let mut listed_balances: BTreeMap<String, Vec<Balance>> = BTreeMap::new();
        let accounts = match listed {
            Some(Ok(list)) => {
                from_snapshot = false;
                fetched_times.push(now);
                let accounts: Vec<Account> = list
                    .into_iter()
                    .map(|(account, balances)| {
                        if let Some(b) = balances {
                            listed_balances.insert(account.id.as_str().to_owned(), b);
                        }
                        account
                    })
                    .collect();
                // Stored while round trip 2 runs.
                accounts_write = Some(AccountsSnapshot {
                    accounts: accounts.clone(),
                    fetched_at: now,
                });
                Some(accounts)
            }
            Some(Err(e)) => {
                errors.push(self.bank_error(&consent, None, &e).await);
                fetch.clear();
                meta.accounts.as_ref().map(|a| {
                    fetched_times.push(a.fetched_at);
                    a.accounts.clone()
                })
            }
            None => meta.accounts.as_ref().map(|a| {
                fetched_times.push(a.fetched_at);
                a.accounts.clone()
            }),
        };
        let Some(accounts) = accounts else {
            if errors.is_empty() {
                errors.push(error(
                    "NO_DATA",
                    "No data was fetched for this connection yet.".into(),
                    None,
                ));
            }
            return (None, errors);
        };

        // Round trip 2: every account's balances and transactions, in parallel.
        let fetch_balances = fetch.contains(&AccessKind::Balances);
        let fetch_tx = fetch.contains(&AccessKind::Transactions);
        let tx_from = match &meta.transactions {
            Some(t) => (t.fetched_at.date_naive()
                - Days::new(u64::from(self.deps.config.overlap_days)))
            .max(t.covered_from),
            None => today - Days::new(u64::from(self.deps.config.history_days)),
        };
        let covered_from = meta
            .transactions
            .as_ref()
            .map_or(tx_from, |t| t.covered_from.min(tx_from));
        let per_account = accounts.iter().map(|account| {
            let connector = connector.clone();
            let bank_consent = bank_consent.clone();
            let psu_context = psu_context.clone();
            let listed = listed_balances.remove(account.id.as_str());
            async move {
                let balances = if let Some(list) = listed {
                    Some(Ok(list))
                } else if fetch_balances {
                    Some(
                        connector
                            .balances(&bank_consent, &account.id, &psu_context)
                            .await,
                    )
                } else {
                    None
                };
                let transactions = if fetch_tx {
                    let query = TransactionQuery {
                        booking_status: BookingStatus::Both,
                        date_from: Some(tx_from),
                        date_to: None,
                    };
                    Some(
                        connector
                            .transactions(&bank_consent, &account.id, &query, &psu_context)
                            .await,
                    )
                } else {
                    None
                };
                (account, balances, transactions)
            }
        });
        let (results, ()) = tokio::join!(futures::future::join_all(per_account), async {
            if let Some(snapshot) = &accounts_write
                && let Err(e) = self.deps.data.put_accounts(&user, &id, snapshot).await
            {
                warn!(consent_id = %id, error = %e, "could not store the account list");
            }
        });

        let mut balances = meta
            .balances
            .as_ref()
            .map(|b| b.balances.clone())
            .unwrap_or_default();
        let mut balances_fetched = false;
        let mut tx_by_account: BTreeMap<String, Vec<StoredTransaction>> = BTreeMap::new();
        for t in stored_tx {
            tx_by_account
                .entry(t.account_id.as_str().to_owned())
                .or_default()
                .push(t);
        }
        let mut tx_fetched = false;
        for (account, fetched_balances, fetched_tx) in results {
            match fetched_balances {
                Some(Ok(list)) => {
                    balances.insert(account.id.as_str().to_owned(), list);
                    balances_fetched = true;
                }
                Some(Err(e)) => errors.push(self.bank_error(&consent, Some(&account.id), &e).await),
                None => {}
            }
            match fetched_tx {
                Some(Ok(list)) => {
                    tx_fetched = true;
                    let stored = tx_by_account
                        .remove(account.id.as_str())
                        .unwrap_or_default();
                    let (booked, pending) = merge_transactions(&account.id, stored, list);
                    let mut all = booked;
                    all.extend(pending);
                    tx_by_account.insert(account.id.as_str().to_owned(), all);
                }
                Some(Err(e)) => errors.push(self.bank_error(&consent, Some(&account.id), &e).await),
                None => {}
            }
        }
        if balances_fetched || tx_fetched {
            from_snapshot = false;
            fetched_times.push(now);
        }
        if !balances_fetched
            && need.balances
            && let Some(b) = &meta.balances
        {
            fetched_times.push(b.fetched_at);
        }
        if !tx_fetched
            && need.transactions
            && let Some(t) = &meta.transactions
        {
            fetched_times.push(t.fetched_at);
        }
        // The connection's transactions: the merged ones of the accounts fetched now, the
        // stored ones of the others (whose fetch failed).
        let transactions: Vec<StoredTransaction> = tx_by_account.into_values().flatten().collect();
        // The snapshot writes go together: balances, and the connection's transactions.
        let store_balances = async {
            if !balances_fetched {
                return;
            }
            let snapshot = BalancesSnapshot {
                balances: balances.clone(),
                fetched_at: now,
            };
            if let Err(e) = self.deps.data.put_balances(&user, &id, &snapshot).await {
                warn!(consent_id = %id, error = %e, "could not store balances");
            }
        };
        let store_transactions = async {
            if !tx_fetched {
                return;
            }
            if let Err(e) = self
                .deps
                .data
                .put_transactions(
                    &user,
                    &id,
                    now,
                    covered_from,
                    &transactions,
                    meta.transactions.as_ref(),
                )
                .await
            {
                warn!(consent_id = %id, error = %e, "could not store the transactions; refetched next time");
            }
        };
        tokio::join!(store_balances, store_transactions);
        info!(consent_id = %id, bank_id = %consent.bank_id, from_snapshot,
            fetched = ?fetch.iter().map(|k| k.as_str()).collect::<Vec<_>>(), "connection loaded");
        let source = self.source(&consent, fetched_times.into_iter().min(), from_snapshot);
        (
            Some(Loaded {
                consent,
                accounts,
                balances,
                transactions,
                source,
            }),
            errors,
        )
    }

    /// Takes one read of each of `kinds` from the connection's budget for `today` (the
    /// counters are independent, so the claims go together); the kinds granted go into
    /// `granted`. Answers whether any was refused (or its counter unavailable).
    async fn claim(
        &self,
        consent: &ConsentRecord,
        kinds: &[AccessKind],
        today: NaiveDate,
        granted: &mut HashSet<AccessKind>,
    ) -> bool {
        let claims = kinds.iter().map(|&kind| {
            self.deps.data.claim_access(
                &consent.user_id,
                &consent.consent_id,
                kind,
                today,
                consent.frequency_per_day,
            )
        });
        let mut refused = false;
        for (kind, claimed) in kinds.iter().zip(futures::future::join_all(claims).await) {
            match claimed {
                Ok(true) => {
                    granted.insert(*kind);
                }
                Ok(false) => refused = true,
                Err(e) => {
                    warn!(consent_id = %consent.consent_id, error = %e,
                        "access counter unavailable; not calling the bank");
                    refused = true;
                }
            }
        }
        refused
    }

    fn source(
        &self,
        consent: &ConsentRecord,
        fetched_at: Option<DateTime<Utc>>,
        from_snapshot: bool,
    ) -> SourceView {
        let now = self.deps.clock.now();
        SourceView {
            bank_id: consent.bank_id.clone(),
            bank_name: self.bank_name(&consent.bank_id),
            connection_id: consent.consent_id.clone(),
            fetched_at,
            age_seconds: fetched_at.map(|at| (now - at).num_seconds().max(0)),
            from_snapshot,
        }
    }

    fn bank_name(&self, id: &BankId) -> String {
        self.deps
            .registry
            .get(id)
            .map_or_else(|| id.to_string(), |b| b.name.clone())
    }

    /// The error entry for a bank failure; an expired consent is also marked expired.
    async fn bank_error(
        &self,
        consent: &ConsentRecord,
        account: Option<&AccountId>,
        e: &BankError,
    ) -> ErrorItem {
        warn!(consent_id = %consent.consent_id, bank_id = %consent.bank_id, code = e.code(),
            "bank read failed");
        let message = match e {
            BankError::ConsentExpired => {
                if let Some(connections) = &self.deps.connections
                    && let Err(err) = connections
                        .apply_event(
                            consent.clone(),
                            ConsentEvent::BankReported(ConsentStatus::Expired),
                        )
                        .await
                {
                    warn!(consent_id = %consent.consent_id, error = %super::log_text(&err),
                        "could not mark the connection expired");
                }
                format!(
                    "The bank reports the consent expired; renew the connection \
                     (POST /v1/connections/{}/renew).",
                    consent.consent_id
                )
            }
            BankError::ConsentInvalid { .. } => {
                "The bank no longer accepts this connection's consent; connect the bank again."
                    .to_owned()
            }
            BankError::AccessExceeded { .. } => {
                "The bank's access limit is reached; showing stored data.".to_owned()
            }
            BankError::Unavailable { .. } | BankError::Timeout(_) => {
                "The bank is not available right now; showing stored data.".to_owned()
            }
            _ => "The bank's answer could not be used.".to_owned(),
        };
        ErrorItem {
            bank_id: consent.bank_id.clone(),
            connection_id: consent.consent_id.clone(),
            account_id: account.map(|a| account_key(&consent.consent_id, a)),
            code: e.code().to_owned(),
            message,
            retry_after: e.retry_after().map(|d| d.as_secs().max(1)),
        }
    }

    // ---- transactions -------------------------------------------------------------------

    fn tx_filter(&self, query: &HashMap<String, String>, errors: &mut Vec<FieldError>) -> TxFilter {
        let date = |name: &str, errors: &mut Vec<FieldError>| match query.get(name) {
            None => None,
            Some(text) if text.is_empty() => None,
            Some(text) => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
                Ok(d) => Some(d),
                Err(_) => {
                    errors.push(field(name, "must be a date YYYY-MM-DD".into()));
                    None
                }
            },
        };
        let date_from = date("dateFrom", errors);
        let date_to = date("dateTo", errors);
        if let (Some(from), Some(to)) = (date_from, date_to)
            && from > to
        {
            errors.push(field("dateFrom", "must not be after dateTo".into()));
        }
        let bank = match query.get("bankId").filter(|b| !b.is_empty()) {
            None => None,
            Some(text) => match BankId::parse(text) {
                Ok(id) if self.deps.registry.get(&id).is_some() => Some(id),
                _ => {
                    errors.push(field("bankId", "unknown bank".into()));
                    None
                }
            },
        };
        let account = match query.get("accountId").filter(|a| !a.is_empty()) {
            None => None,
            Some(text) if parse_account_key(text).is_some() => Some(text.clone()),
            Some(_) => {
                errors.push(field(
                    "accountId",
                    "is not an account id from GET /v1/accounts".into(),
                ));
                None
            }
        };
        let category = match query.get("category").filter(|c| !c.is_empty()) {
            None => None,
            Some(text) => match Category::parse(text) {
                Some(c) => Some(c),
                None => {
                    errors.push(field("category", "unknown category".into()));
                    None
                }
            },
        };
        TxFilter {
            date_from,
            date_to,
            bank,
            account,
            category,
        }
    }

    /// The filtered, categorised transactions of every loaded connection (unsorted).
    fn views(&self, loaded: &[Loaded], filter: &TxFilter) -> Vec<TransactionView> {
        let mut out = Vec::new();
        for l in loaded {
            if filter
                .bank
                .as_ref()
                .is_some_and(|b| b != &l.consent.bank_id)
            {
                continue;
            }
            for t in &l.transactions {
                let account_id = account_key(&l.consent.consent_id, &t.account_id);
                if filter.account.as_ref().is_some_and(|a| a != &account_id) {
                    continue;
                }
                let day = t.tx.booking_date.or(t.tx.value_date);
                if let (Some(from), Some(d)) = (filter.date_from, day)
                    && d < from
                {
                    continue;
                }
                if let (Some(to), Some(d)) = (filter.date_to, day)
                    && d > to
                {
                    continue;
                }
                let input = CategoryInput::from_transaction(&t.tx);
                let category = self.deps.categoriser.categorise(&input);
                if filter.category.is_some_and(|c| c != category) {
                    continue;
                }
                let (counterparty, counterparty_iban) = match input.direction {
                    Direction::Debit => (&t.tx.creditor_name, &t.tx.creditor_iban),
                    Direction::Credit => (&t.tx.debtor_name, &t.tx.debtor_iban),
                };
                out.push(TransactionView {
                    transaction_id: t.id.clone(),
                    account_id,
                    connection_id: l.consent.consent_id.clone(),
                    bank_id: l.consent.bank_id.clone(),
                    status: t.tx.state,
                    booking_date: t.tx.booking_date,
                    value_date: t.tx.value_date,
                    amount: t.tx.amount,
                    direction_name: match input.direction {
                        Direction::Debit => "debit",
                        Direction::Credit => "credit",
                    },
                    direction: input.direction,
                    category,
                    counterparty: counterparty.clone(),
                    counterparty_iban: counterparty_iban.as_ref().map(crate::domain::Iban::masked),
                    remittance_information: t.tx.remittance.clone(),
                    merchant_category_code: t.tx.merchant_category_code.clone(),
                });
            }
        }
        out
    }
}

// ---- pure helpers (unit-tested) ------------------------------------------------------------

fn field(name: &str, message: String) -> FieldError {
    FieldError {
        field: name.to_owned(),
        message,
    }
}

/// `refresh=true` (user present, needs the caller's IP) or absent/false.
fn refresh(
    query: &HashMap<String, String>,
    ip: Option<IpAddr>,
) -> Result<Option<IpAddr>, ServiceError> {
    match query.get("refresh").map(String::as_str) {
        None | Some("" | "false") => Ok(None),
        Some("true") => ip
            .map(Some)
            .ok_or_else(|| ServiceError::field("refresh", "the caller's IP address is unknown")),
        Some(_) => Err(ServiceError::field("refresh", "must be true or false")),
    }
}

fn base_currency(query: &HashMap<String, String>) -> Result<Currency, ServiceError> {
    let code = query
        .get("baseCurrency")
        .filter(|c| !c.is_empty())
        .map_or("EUR", String::as_str);
    Currency::parse(code)
        .map_err(|_| ServiceError::field("baseCurrency", "unknown currency (ISO 4217 code)"))
}

fn convert(
    rates: &Result<RateTable, String>,
    amount: &Money,
    base: Currency,
) -> Result<Converted, String> {
    match rates {
        Ok(table) => table.convert(amount, base).map_err(|e| e.to_string()),
        Err(_) if amount.currency() == base => Ok(Converted {
            amount: *amount,
            rate: rust_decimal::Decimal::ONE,
            as_of: Utc::now().date_naive(),
        }),
        Err(e) => Err(format!("exchange rates unavailable: {e}")),
    }
}

/// `interimAvailable`, then `closingBooked`, then the first the bank listed.
pub fn preferred_balance(balances: &[Balance]) -> Option<(BalanceType, Money)> {
    [BalanceType::InterimAvailable, BalanceType::ClosingBooked]
        .iter()
        .find_map(|wanted| balances.iter().find(|b| &b.balance_type == wanted))
        .or_else(|| balances.first())
        .map(|b| (b.balance_type.clone(), b.amount))
}

fn balance_type_name(t: &BalanceType) -> String {
    match t {
        BalanceType::ClosingBooked => "closingBooked".into(),
        BalanceType::Expected => "expected".into(),
        BalanceType::OpeningBooked => "openingBooked".into(),
        BalanceType::InterimAvailable => "interimAvailable".into(),
        BalanceType::InterimBooked => "interimBooked".into(),
        BalanceType::ForwardAvailable => "forwardAvailable".into(),
        BalanceType::NonInvoiced => "nonInvoiced".into(),
        BalanceType::Other(code) => code.clone(),
    }
}

/// Our account id: `{connectionId}:{bank's account id}`.
pub fn account_key(consent: &ConsentId, account: &AccountId) -> String {
    format!("{}:{}", consent.as_str(), account.as_str())
}

fn parse_account_key(key: &str) -> Option<(ConsentId, AccountId)> {
    let (consent, account) = key.split_once(':')?;
    Some((
        ConsentId::parse(consent).ok()?,
        AccountId::parse(account).ok()?,
    ))
}

fn account_view(l: &Loaded, account: &Account) -> AccountView {
    AccountView {
        account_id: account_key(&l.consent.consent_id, &account.id),
        connection_id: l.consent.consent_id.clone(),
        bank_id: l.consent.bank_id.clone(),
        bank_name: l.source.bank_name.clone(),
        iban: account.iban.as_ref().map(crate::domain::Iban::masked),
        currency: account.currency,
        name: account.name.clone(),
        product: account.product.clone(),
        cash_account_type: account.cash_account_type.clone(),
    }
}

/// The stable id of a transaction: the bank's `transactionId`, else a fingerprint of what
/// identifies it (account, state, dates, amount, parties, references).
pub fn stable_id(account: &AccountId, tx: &crate::bank::Transaction) -> String {
    if let Some(id) = tx.transaction_id.as_deref().filter(|id| !id.is_empty()) {
        return id.to_owned();
    }
    let mut h = Sha256::new();
    let parts = [
        account.as_str().to_owned(),
        format!("{:?}", tx.state),
        tx.booking_date.map(|d| d.to_string()).unwrap_or_default(),
        tx.value_date.map(|d| d.to_string()).unwrap_or_default(),
        tx.amount.to_minor_string(),
        tx.amount.currency().code().to_owned(),
        tx.creditor_name.clone().unwrap_or_default(),
        tx.debtor_name.clone().unwrap_or_default(),
        tx.remittance.clone().unwrap_or_default(),
        tx.entry_reference.clone().unwrap_or_default(),
    ];
    for part in parts {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("fp-{hex}")
}

/// Merges a fresh bank listing into the stored transactions of one account: booked ones
/// by stable id (the fresh version wins), the pending set replaced. Returns (booked,
/// pending).
pub fn merge_transactions(
    account: &AccountId,
    stored: Vec<StoredTransaction>,
    fresh: Vec<crate::bank::Transaction>,
) -> (Vec<StoredTransaction>, Vec<StoredTransaction>) {
    let mut booked: BTreeMap<String, StoredTransaction> = stored
        .into_iter()
        .filter(|t| t.tx.state == TransactionState::Booked)
        .map(|t| (t.id.clone(), t))
        .collect();
    let mut pending: BTreeMap<String, StoredTransaction> = BTreeMap::new();
    for tx in fresh {
        let id = stable_id(account, &tx);
        let item = StoredTransaction {
            id: id.clone(),
            account_id: account.clone(),
            tx,
        };
        match item.tx.state {
            TransactionState::Booked => {
                booked.insert(id, item);
            }
            TransactionState::Pending => {
                pending.insert(id, item);
            }
        }
    }
    // A pending id that is now booked is listed once, as booked.
    pending.retain(|id, _| !booked.contains_key(id));
    (
        booked.into_values().collect(),
        pending.into_values().collect(),
    )
}

fn day_of(v: &TransactionView) -> Option<NaiveDate> {
    v.booking_date.or(v.value_date)
}

fn sort_id(v: &TransactionView) -> String {
    format!("{}|{}", v.account_id, v.transaction_id)
}

/// Newest first; undated last; ties by id (stable across pages).
fn sort_newest_first(views: &mut [TransactionView]) {
    views.sort_by(|a, b| {
        day_of(b)
            .cmp(&day_of(a))
            .then_with(|| sort_id(b).cmp(&sort_id(a)))
    });
}

fn is_after(v: &TransactionView, cursor: &Cursor) -> bool {
    match day_of(v).cmp(&cursor.d) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => sort_id(v) < cursor.i,
    }
}

fn encode_cursor(cursor: &Cursor) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(cursor).expect("cursors serialise"))
}

fn decode_cursor(text: &str) -> Option<Cursor> {
    if text.len() > 1024 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Builds the aggregation service from the environment: `CONSENTS_TABLE`,
/// `BANK_DATA_TABLE`, `ECB_RATES_URL`, `CATEGORY_RULES_PATH`, the bank registry, and what
/// the connections service needs to mark expired consents.
///
/// # Errors
/// A message naming what is missing or invalid.
pub async fn aggregation_from_env(sdk: &aws_config::SdkConfig) -> Result<Aggregation, String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let registry = BankRegistry::from_env().map_err(|e| e.to_string())?;
    let banks = registry.connectors().map_err(|e| e.to_string())?;
    let connections = super::connections::connections_from_env(sdk).await?;
    let consents_table = var("CONSENTS_TABLE")?;
    Ok(Aggregation::new(AggregationDeps {
        consents: Arc::new(crate::store::DynamoConsentStore::new(
            dynamodb.clone(),
            consents_table.clone(),
        )),
        data: Arc::new(crate::store::DynamoBankDataStore::new(
            dynamodb,
            var("BANK_DATA_TABLE")?,
            consents_table,
        )),
        banks,
        registry,
        rates: Arc::new(crate::fx::ecb::EcbRateSource::from_env().map_err(|e| e.to_string())?),
        categoriser: Arc::new(Categoriser::from_env().map_err(|e| e.to_string())?),
        connections: Some(Arc::new(connections)),
        config: AggregationConfig::from_lookup(|name| std::env::var(name).ok())?,
        clock: Arc::new(super::SystemClock),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::Transaction;

    fn eur(amount: &str) -> Money {
        Money::parse(amount, Currency::parse("EUR").unwrap()).unwrap()
    }

    fn tx(id: Option<&str>, state: TransactionState, day: u32, amount: &str) -> Transaction {
        Transaction {
            transaction_id: id.map(str::to_owned),
            entry_reference: None,
            state,
            booking_date: NaiveDate::from_ymd_opt(2026, 11, day),
            value_date: NaiveDate::from_ymd_opt(2026, 11, day),
            amount: eur(amount),
            creditor_name: Some("RIMI".into()),
            creditor_iban: None,
            debtor_name: None,
            debtor_iban: None,
            remittance: Some("Card payment".into()),
            merchant_category_code: None,
            bank_transaction_code: None,
        }
    }

    #[test]
    fn preferred_balance_is_interim_available_then_closing_booked() {
        let b = |t: BalanceType, a: &str| Balance {
            balance_type: t,
            amount: eur(a),
            reference_date: None,
        };
        let all = vec![
            b(BalanceType::Expected, "1.00"),
            b(BalanceType::ClosingBooked, "2.00"),
            b(BalanceType::InterimAvailable, "3.00"),
        ];
        assert_eq!(
            preferred_balance(&all),
            Some((BalanceType::InterimAvailable, eur("3.00")))
        );
        assert_eq!(
            preferred_balance(&all[..2]),
            Some((BalanceType::ClosingBooked, eur("2.00")))
        );
        assert_eq!(
            preferred_balance(&all[..1]),
            Some((BalanceType::Expected, eur("1.00")))
        );
        assert_eq!(preferred_balance(&[]), None);
    }

    #[test]
    fn resent_and_booked_pending_transactions_appear_once() {
        let account = AccountId::parse("acc-1").unwrap();
        // First refresh: two booked, one pending.
        let (booked, pending) = merge_transactions(
            &account,
            vec![],
            vec![
                tx(Some("b1"), TransactionState::Booked, 1, "-10.00"),
                tx(Some("b2"), TransactionState::Booked, 2, "-20.00"),
                tx(Some("p1"), TransactionState::Pending, 3, "-5.00"),
            ],
        );
        assert_eq!((booked.len(), pending.len()), (2, 1));
        let mut stored = booked;
        stored.extend(pending);
        // Second refresh: b2 sent again, p1 booked under the same id, a new pending one.
        let (booked, pending) = merge_transactions(
            &account,
            stored.clone(),
            vec![
                tx(Some("b2"), TransactionState::Booked, 2, "-20.00"),
                tx(Some("p1"), TransactionState::Booked, 4, "-5.00"),
                tx(Some("p1"), TransactionState::Pending, 3, "-5.00"),
                tx(Some("p2"), TransactionState::Pending, 4, "-7.00"),
            ],
        );
        let ids: Vec<&str> = booked.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, vec!["b1", "b2", "p1"]);
        let ids: Vec<&str> = pending.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, vec!["p2"], "p1 is listed once, as booked");
        // A pending one that booked under a new id: the old pending entry is gone.
        let (booked, pending) = merge_transactions(
            &account,
            [booked, pending].concat(),
            vec![tx(Some("b9"), TransactionState::Booked, 5, "-7.00")],
        );
        assert_eq!(booked.len(), 4);
        assert!(pending.is_empty());
    }

    #[test]
    fn transactions_without_a_bank_id_get_a_stable_fingerprint() {
        let account = AccountId::parse("acc-1").unwrap();
        let a = tx(None, TransactionState::Booked, 1, "-10.00");
        let id = stable_id(&account, &a);
        assert!(id.starts_with("fp-"));
        assert_eq!(id, stable_id(&account, &a.clone()), "stable");
        let mut other = a.clone();
        other.amount = eur("-10.01");
        assert_ne!(id, stable_id(&account, &other));
        assert_ne!(id, stable_id(&AccountId::parse("acc-2").unwrap(), &a));
        // Sent twice without ids: merged into one.
        let (booked, _) = merge_transactions(&account, vec![], vec![a.clone(), a]);
        assert_eq!(booked.len(), 1);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            d: NaiveDate::from_ymd_opt(2026, 11, 30),
            i: "x:y|z".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        for bad in ["", "!!!", "e30", &"A".repeat(2000)] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn account_keys_round_trip() {
        let consent = ConsentId::new();
        let account = AccountId::parse("LT-acc:1").unwrap();
        let key = account_key(&consent, &account);
        assert_eq!(parse_account_key(&key), Some((consent, account)));
        assert_eq!(parse_account_key("nope"), None);
    }

    #[test]
    fn refresh_and_base_currency_are_validated() {
        let q = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(refresh(&q("refresh", "true"), Some(ip)).unwrap(), Some(ip));
        assert_eq!(refresh(&HashMap::new(), Some(ip)).unwrap(), None);
        assert!(refresh(&q("refresh", "yes"), Some(ip)).is_err());
        assert!(refresh(&q("refresh", "true"), None).is_err());
        assert_eq!(base_currency(&HashMap::new()).unwrap().code(), "EUR");
        assert_eq!(
            base_currency(&q("baseCurrency", "USD")).unwrap().code(),
            "USD"
        );
        assert!(base_currency(&q("baseCurrency", "ZZZ")).is_err());
    }
}
