//! Account information service: consents, accounts, balances, transactions.

use std::collections::HashSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{Days, NaiveDate, Utc};
use serde_json::{Map, Value, json};

use super::SandboxState;
use super::banks::Bank;
use super::bg::{
    created, href, json_object, known_bank, psu_id, psu_present, public_base, redirect_uris,
    require_header, require_psu_ip,
};
use super::data::{self, Account, Statement, Tx};
use super::error::{ApiError, ApiResult};
use super::state::{Consent, ConsentStatus, Sca};
use super::util::{fmt_cents, is_valid_iban, mask_id, normalise_iban};

/// Longest consent validity accepted, in days from today.
pub const MAX_CONSENT_DAYS: u64 = 180;

/// Query parameters in their order of appearance.
pub(crate) type QueryPairs = Query<Vec<(String, String)>>;

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn consent_base(bank: &Bank, id: &str) -> String {
    format!("/{}/v1/consents/{id}", bank.id)
}

/// Validated body of POST /v1/consents.
struct ConsentRequest {
    access: Value,
    recurring_indicator: bool,
    valid_until: NaiveDate,
    frequency_per_day: u32,
    combined_service_indicator: bool,
}

const ALL_ACCOUNTS_VALUES: [&str; 2] = ["allAccounts", "allAccountsWithOwnerName"];

fn validate_access(access: &Value) -> ApiResult<()> {
    let Some(obj) = access.as_object() else {
        return Err(ApiError::format("access must be a JSON object."));
    };
    let mut any = false;
    for key in [
        "allPsd2",
        "availableAccounts",
        "availableAccountsWithBalance",
    ] {
        if let Some(v) = obj.get(key) {
            any = true;
            if !v.as_str().is_some_and(|s| ALL_ACCOUNTS_VALUES.contains(&s)) {
                return Err(ApiError::format(format!(
                    "access.{key} must be \"allAccounts\" or \"allAccountsWithOwnerName\"."
                )));
            }
        }
    }
    for key in ["accounts", "balances", "transactions"] {
        let Some(v) = obj.get(key) else { continue };
        any = true;
        let Some(items) = v.as_array() else {
            return Err(ApiError::format(format!("access.{key} must be an array.")));
        };
        for (i, item) in items.iter().enumerate() {
            let iban = item.get("iban").and_then(Value::as_str);
            match iban {
                Some(iban) if is_valid_iban(&normalise_iban(iban)) => {}
                Some(_) => {
                    return Err(ApiError::format(format!(
                        "access.{key}[{i}].iban is not a valid IBAN."
                    )));
                }
                None => {
                    return Err(ApiError::format(format!(
                        "access.{key}[{i}] must be an account reference with an iban."
                    )));
                }
            }
        }
    }
    if !any {
        return Err(ApiError::format(
            "access must contain accounts, balances, transactions, availableAccounts, \
             availableAccountsWithBalance or allPsd2.",
        ));
    }
    Ok(())
}

fn validate_consent_request(
    body: &Map<String, Value>,
    today: NaiveDate,
) -> ApiResult<ConsentRequest> {
    let access = body
        .get("access")
        .ok_or_else(|| ApiError::format("Field access is missing."))?;
    validate_access(access)?;
    let recurring_indicator = body
        .get("recurringIndicator")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::format("Field recurringIndicator is missing or not a boolean."))?;
    let valid_until = body
        .get("validUntil")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::format("Field validUntil is missing or not a string."))?;
    let valid_until = NaiveDate::parse_from_str(valid_until, "%Y-%m-%d")
        .map_err(|_| ApiError::format("Field validUntil is not an ISO date (YYYY-MM-DD)."))?;
    if valid_until < today {
        return Err(ApiError::timestamp_invalid("validUntil lies in the past."));
    }
    if valid_until > today + Days::new(MAX_CONSENT_DAYS) {
        return Err(ApiError::timestamp_invalid(format!(
            "validUntil may be at most {MAX_CONSENT_DAYS} days ahead."
        )));
    }
    let frequency_per_day = body
        .get("frequencyPerDay")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            ApiError::format("Field frequencyPerDay is missing or not an integer ≥ 1.")
        })?;
    if frequency_per_day < 1 {
        return Err(ApiError::format(
            "Field frequencyPerDay must be at least 1.",
        ));
    }
    let combined_service_indicator = body
        .get("combinedServiceIndicator")
        .and_then(Value::as_bool)
        .ok_or_else(|| {
            ApiError::format("Field combinedServiceIndicator is missing or not a boolean.")
        })?;
    Ok(ConsentRequest {
        access: access.clone(),
        recurring_indicator,
        valid_until,
        frequency_per_day: u32::try_from(frequency_per_day).unwrap_or(u32::MAX),
        combined_service_indicator,
    })
}

/// POST /{bank}/v1/consents
pub(crate) async fn create_consent(
    State(state): State<SandboxState>,
    Path(bank_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let bank = known_bank(&bank_id)?;
    require_psu_ip(&headers)?;
    let (redirect_uri, nok_redirect_uri) = redirect_uris(&headers)?;
    let psu = psu_id(&headers);
    let body = json_object(&body)?;
    let today = today();
    let req = validate_consent_request(&body, today)?;
    let id = uuid::Uuid::new_v4().to_string();
    let authorisation_id = uuid::Uuid::new_v4().to_string();
    let consent = Consent {
        id: id.clone(),
        bank: bank.id,
        psu: psu.clone(),
        access: req.access,
        recurring_indicator: req.recurring_indicator,
        valid_until: req.valid_until,
        frequency_per_day: req.frequency_per_day,
        combined_service_indicator: req.combined_service_indicator,
        status: ConsentStatus::Received,
        sca: Sca::Pending,
        last_action_date: today,
        redirect_uri,
        nok_redirect_uri,
        authorisation_id: authorisation_id.clone(),
    };
    state
        .store()
        .consents
        .insert((bank.id.to_owned(), id.clone()), consent);
    let base = consent_base(bank, &id);
    let mut links = Map::new();
    links.insert(
        bank.sca_link_name().to_owned(),
        href(format!(
            "{}/{}/sca/consents/{id}",
            public_base(&state, &headers),
            bank.id
        )),
    );
    links.insert("self".into(), href(base.clone()));
    links.insert("status".into(), href(format!("{base}/status")));
    links.insert(
        "scaStatus".into(),
        href(format!("{base}/authorisations/{authorisation_id}")),
    );
    tracing::info!(bank = bank.id, consent = %mask_id(&id), psu = %psu, "consent created");
    Ok(created(
        bank,
        &base,
        json!({
            "consentStatus": "received",
            "consentId": id,
            "_links": links,
        }),
    ))
}

fn find_consent(state: &SandboxState, bank: &Bank, id: &str) -> ApiResult<Consent> {
    state
        .store()
        .consents
        .get(&(bank.id.to_owned(), id.to_owned()))
        .cloned()
        .ok_or_else(ApiError::consent_unknown)
}

/// GET /{bank}/v1/consents/{consentId}
pub(crate) async fn get_consent(
    State(state): State<SandboxState>,
    Path((bank_id, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let bank = known_bank(&bank_id)?;
    let c = find_consent(&state, bank, &id)?;
    Ok(Json(json!({
        "access": c.access,
        "recurringIndicator": c.recurring_indicator,
        "validUntil": c.valid_until.to_string(),
        "frequencyPerDay": c.frequency_per_day,
        "lastActionDate": c.last_action_date.to_string(),
        "consentStatus": c.effective_status(today()).as_str(),
        "_links": { "account": href(format!("/{}/v1/accounts", bank.id)) },
    })))
}

/// GET /{bank}/v1/consents/{consentId}/status
pub(crate) async fn consent_status(
    State(state): State<SandboxState>,
    Path((bank_id, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let bank = known_bank(&bank_id)?;
    let c = find_consent(&state, bank, &id)?;
    Ok(Json(
        json!({ "consentStatus": c.effective_status(today()).as_str() }),
    ))
}

/// DELETE /{bank}/v1/consents/{consentId}
pub(crate) async fn delete_consent(
    State(state): State<SandboxState>,
    Path((bank_id, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let bank = known_bank(&bank_id)?;
    let mut store = state.store();
    let c = store
        .consents
        .get_mut(&(bank.id.to_owned(), id.clone()))
        .ok_or_else(ApiError::consent_unknown)?;
    c.status = ConsentStatus::TerminatedByTpp;
    tracing::info!(bank = bank.id, consent = %mask_id(&id), "consent terminated by TPP");
    Ok(StatusCode::NO_CONTENT)
}

/// GET /{bank}/v1/consents/{consentId}/authorisations
pub(crate) async fn consent_authorisations(
    State(state): State<SandboxState>,
    Path((bank_id, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let bank = known_bank(&bank_id)?;
    let c = find_consent(&state, bank, &id)?;
    Ok(Json(json!({ "authorisationIds": [c.authorisation_id] })))
}

/// GET /{bank}/v1/consents/{consentId}/authorisations/{authorisationId}
pub(crate) async fn consent_sca_status(
    State(state): State<SandboxState>,
    Path((bank_id, id, auth)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let bank = known_bank(&bank_id)?;
    let c = find_consent(&state, bank, &id)?;
    if c.authorisation_id != auth {
        return Err(ApiError::resource_unknown(
            StatusCode::FORBIDDEN,
            "Unknown authorisation sub-resource.",
        ));
    }
    Ok(Json(json!({ "scaStatus": c.sca.sca_status() })))
}

/// Which accounts a consent covers, per service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    None,
    All,
    Ibans(HashSet<String>),
}

impl Scope {
    fn allows(&self, iban: &str) -> bool {
        match self {
            Scope::None => false,
            Scope::All => true,
            Scope::Ibans(set) => set.contains(iban),
        }
    }

    fn add_all(&mut self) {
        *self = Scope::All;
    }

    fn add(&mut self, ibans: &HashSet<String>) {
        match self {
            Scope::All => {}
            Scope::None => *self = Scope::Ibans(ibans.clone()),
            Scope::Ibans(set) => set.extend(ibans.iter().cloned()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Grants {
    pub list: Scope,
    pub balances: Scope,
    pub transactions: Scope,
}

impl Grants {
    /// Reads the access object of a consent. Empty arrays (a bank-offered consent) are taken
    /// as granted for all accounts of the PSU, as if the PSU selected all of them during SCA.
    pub(crate) fn from_access(access: &Value) -> Self {
        let mut g = Grants {
            list: Scope::None,
            balances: Scope::None,
            transactions: Scope::None,
        };
        let is_all = |key: &str| access.get(key).and_then(Value::as_str).is_some();
        if is_all("allPsd2") {
            g.list.add_all();
            g.balances.add_all();
            g.transactions.add_all();
        }
        if is_all("availableAccounts") {
            g.list.add_all();
        }
        if is_all("availableAccountsWithBalance") {
            g.list.add_all();
            g.balances.add_all();
        }
        for key in ["accounts", "balances", "transactions"] {
            let Some(items) = access.get(key).and_then(Value::as_array) else {
                continue;
            };
            let ibans: HashSet<String> = items
                .iter()
                .filter_map(|i| i.get("iban").and_then(Value::as_str))
                .map(normalise_iban)
                .collect();
            let target = match key {
                "balances" => Some(&mut g.balances),
                "transactions" => Some(&mut g.transactions),
                _ => None,
            };
            if ibans.is_empty() {
                g.list.add_all();
                if let Some(t) = target {
                    t.add_all();
                }
            } else {
                g.list.add(&ibans);
                if let Some(t) = target {
                    t.add(&ibans);
                }
            }
        }
        g
    }

    fn visible(&self, iban: &str) -> bool {
        self.list.allows(iban) || self.balances.allows(iban) || self.transactions.allows(iban)
    }
}

/// A valid consent and the PSU's accounts it can see.
struct AisContext {
    consent: Consent,
    bank: &'static Bank,
    accounts: Vec<Account>,
    grants: Grants,
    today: NaiveDate,
    psu_present: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Service {
    Details,
    Balances,
    Transactions,
}

impl AisContext {
    fn account(&self, resource_id: &str, service: Service) -> ApiResult<&Account> {
        let account = self
            .accounts
            .iter()
            .find(|a| a.resource_id == resource_id && self.grants.visible(&a.iban))
            .ok_or_else(|| {
                ApiError::resource_unknown(
                    StatusCode::NOT_FOUND,
                    "The account-id is unknown or not covered by the consent.",
                )
            })?;
        let allowed = match service {
            Service::Details => true,
            Service::Balances => self.grants.balances.allows(&account.iban),
            Service::Transactions => self.grants.transactions.allows(&account.iban),
        };
        if !allowed {
            return Err(ApiError::consent_invalid(
                "The consent does not cover this service for the addressed account.",
            ));
        }
        Ok(account)
    }

    fn statement(&self, state: &SandboxState, account: &Account) -> Statement {
        data::statement(
            state.config().seed,
            self.bank,
            &self.consent.psu,
            &self.accounts,
            account,
            self.today,
        )
    }

    /// Counts an access without PSU involvement against frequencyPerDay, then records the
    /// action date.
    fn access(&self, state: &SandboxState, resource: &str, counted: bool) -> ApiResult<()> {
        let mut store = state.store();
        if counted && !self.psu_present {
            let ok = store.register_access(
                self.bank.id,
                &self.consent.id,
                resource,
                self.consent.frequency_per_day,
            );
            if !ok {
                return Err(ApiError::access_exceeded(format!(
                    "The access frequency limit of {} per day for this consent and resource is \
                     exceeded.",
                    self.consent.frequency_per_day
                )));
            }
        }
        if let Some(c) = store
            .consents
            .get_mut(&(self.bank.id.to_owned(), self.consent.id.clone()))
        {
            c.last_action_date = self.today;
        }
        Ok(())
    }
}

fn ais_context(state: &SandboxState, bank_id: &str, headers: &HeaderMap) -> ApiResult<AisContext> {
    let bank = known_bank(bank_id)?;
    let psu_present = psu_present(headers)?;
    let consent_id = require_header(headers, "Consent-ID")?;
    let consent = find_consent(state, bank, consent_id)?;
    let today = today();
    match consent.effective_status(today) {
        ConsentStatus::Valid => {}
        ConsentStatus::Expired => return Err(ApiError::consent_expired()),
        other => {
            return Err(ApiError::consent_invalid(format!(
                "The consent is not valid (status {}).",
                other.as_str()
            )));
        }
    }
    let accounts = data::psu_accounts(state.config().seed, bank, &consent.psu);
    let grants = Grants::from_access(&consent.access);
    Ok(AisContext {
        consent,
        bank,
        accounts,
        grants,
        today,
        psu_present,
    })
}

fn amount_json(currency: &str, cents: i64) -> Value {
    json!({ "currency": currency, "amount": fmt_cents(cents) })
}

fn balances_json(account: &Account, s: &Statement, today: NaiveDate) -> Value {
    let mut closing = json!({
        "balanceAmount": amount_json(account.currency, s.closing_booked_cents),
        "balanceType": "closingBooked",
        "referenceDate": today.to_string(),
    });
    if let Some(last) = s.booked.first() {
        closing["lastCommittedTransaction"] = json!(last.entry_reference);
    }
    json!([
        {
            "balanceAmount": amount_json(account.currency, s.interim_available_cents),
            "balanceType": "interimAvailable",
            "referenceDate": today.to_string(),
        },
        closing,
    ])
}

fn account_json(
    ctx: &AisContext,
    state: &SandboxState,
    account: &Account,
    with_balance: bool,
) -> Value {
    let base = format!("/{}/v1/accounts/{}", ctx.bank.id, account.resource_id);
    let mut links = Map::new();
    if ctx.grants.balances.allows(&account.iban) {
        links.insert("balances".into(), href(format!("{base}/balances")));
    }
    if ctx.grants.transactions.allows(&account.iban) {
        links.insert("transactions".into(), href(format!("{base}/transactions")));
    }
    let mut v = json!({
        "resourceId": account.resource_id,
        "iban": account.iban,
        "currency": account.currency,
        "name": account.name,
        "product": account.product,
        "cashAccountType": account.cash_account_type(),
        "status": "enabled",
        "bic": ctx.bank.bic,
        "usage": "PRIV",
        "_links": links,
    });
    if with_balance && ctx.grants.balances.allows(&account.iban) {
        let s = ctx.statement(state, account);
        v["balances"] = balances_json(account, &s, ctx.today);
    }
    if ctx
        .consent
        .access
        .as_object()
        .is_some_and(|a| a.values().any(|v| v == "allAccountsWithOwnerName"))
    {
        v["ownerName"] = json!(data::owner_name(ctx.bank, &ctx.consent.psu));
    }
    v
}

fn parse_bool_param(q: &[(String, String)], name: &str) -> ApiResult<bool> {
    match param(q, name) {
        None => Ok(false),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(ApiError::format(format!(
            "Query parameter {name} must be true or false."
        ))),
    }
}

fn query_pairs(
    q: Result<QueryPairs, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Vec<(String, String)>> {
    q.map(|Query(v)| v)
        .map_err(|_| ApiError::format("The query string is malformed."))
}

/// GET /{bank}/v1/accounts
pub(crate) async fn accounts(
    State(state): State<SandboxState>,
    Path(bank_id): Path<String>,
    headers: HeaderMap,
    query: Result<QueryPairs, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query_pairs(query)?;
    let with_balance = parse_bool_param(&q, "withBalance")?;
    let ctx = ais_context(&state, &bank_id, &headers)?;
    ctx.access(&state, "accounts", true)?;
    let list: Vec<Value> = ctx
        .accounts
        .iter()
        .filter(|a| ctx.grants.visible(&a.iban))
        .map(|a| account_json(&ctx, &state, a, with_balance))
        .collect();
    Ok(Json(json!({ "accounts": list })))
}

/// GET /{bank}/v1/accounts/{account-id}
pub(crate) async fn account_details(
    State(state): State<SandboxState>,
    Path((bank_id, account_id)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<QueryPairs, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query_pairs(query)?;
    let with_balance = parse_bool_param(&q, "withBalance")?;
    let ctx = ais_context(&state, &bank_id, &headers)?;
    let account = ctx.account(&account_id, Service::Details)?;
    ctx.access(&state, &format!("account/{account_id}"), true)?;
    Ok(Json(
        json!({ "account": account_json(&ctx, &state, account, with_balance) }),
    ))
}

/// GET /{bank}/v1/accounts/{account-id}/balances
pub(crate) async fn balances(
    State(state): State<SandboxState>,
    Path((bank_id, account_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let ctx = ais_context(&state, &bank_id, &headers)?;
    let account = ctx.account(&account_id, Service::Balances)?;
    ctx.access(&state, &format!("balances/{account_id}"), true)?;
    let s = ctx.statement(&state, account);
    Ok(Json(json!({
        "account": { "iban": account.iban, "currency": account.currency },
        "balances": balances_json(account, &s, ctx.today),
    })))
}

fn tx_json(t: &Tx) -> Value {
    let mut m = Map::new();
    m.insert("transactionId".into(), json!(t.id));
    m.insert("entryReference".into(), json!(t.entry_reference));
    if let Some(e2e) = &t.end_to_end_id {
        m.insert("endToEndId".into(), json!(e2e));
    }
    m.insert("bookingDate".into(), json!(t.booking_date.to_string()));
    m.insert("valueDate".into(), json!(t.value_date.to_string()));
    m.insert(
        "transactionAmount".into(),
        amount_json(t.currency, t.amount_cents),
    );
    let (name_key, account_key) = if t.amount_cents < 0 {
        ("creditorName", "creditorAccount")
    } else {
        ("debtorName", "debtorAccount")
    };
    m.insert(name_key.into(), json!(t.counterparty));
    if let Some(iban) = &t.counterparty_iban {
        m.insert(account_key.into(), json!({ "iban": iban }));
    }
    m.insert(
        "remittanceInformationUnstructured".into(),
        json!(t.remittance),
    );
    if let Some(mcc) = t.mcc {
        m.insert("merchantCategoryCode".into(), json!(mcc));
    }
    m.insert("bankTransactionCode".into(), json!(t.bank_transaction_code));
    Value::Object(m)
}

fn parse_date_param(q: &[(String, String)], name: &str) -> ApiResult<Option<NaiveDate>> {
    param(q, name)
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                ApiError::format(format!(
                    "Query parameter {name} is not an ISO date (YYYY-MM-DD)."
                ))
            })
        })
        .transpose()
}

fn parse_usize_param(q: &[(String, String)], name: &str, min: usize) -> ApiResult<Option<usize>> {
    match param(q, name) {
        None => Ok(None),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= min => Ok(Some(n)),
            _ => Err(ApiError::format(format!(
                "Query parameter {name} must be an integer ≥ {min}."
            ))),
        },
    }
}

/// The query string with pageIndex replaced (or appended).
fn with_page_index(raw: &str, page: usize) -> String {
    let mut parts: Vec<&str> = raw
        .split('&')
        .filter(|p| !p.is_empty() && *p != "pageIndex" && !p.starts_with("pageIndex="))
        .collect();
    let page = format!("pageIndex={page}");
    parts.push(&page);
    parts.join("&")
}

/// GET /{bank}/v1/accounts/{account-id}/transactions
pub(crate) async fn transactions(
    State(state): State<SandboxState>,
    Path((bank_id, account_id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
    query: Result<QueryPairs, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let q = query_pairs(query)?;
    let booking_status = param(&q, "bookingStatus")
        .ok_or_else(|| ApiError::format("Query parameter bookingStatus is missing."))?;
    let (want_booked, want_pending, want_information) = match booking_status {
        "booked" => (true, false, false),
        "pending" => (false, true, false),
        "both" => (true, true, false),
        "information" => (false, false, true),
        "all" => (true, true, true),
        _ => {
            return Err(ApiError::format(
                "Query parameter bookingStatus must be booked, pending, both, information or all.",
            ));
        }
    };
    let date_from = parse_date_param(&q, "dateFrom")?;
    let date_to = parse_date_param(&q, "dateTo")?;
    if let (Some(f), Some(t)) = (date_from, date_to)
        && f > t
    {
        return Err(ApiError::period_invalid("dateFrom lies after dateTo."));
    }
    let page_index = parse_usize_param(&q, "pageIndex", 0)?.unwrap_or(0);
    let items_per_page = parse_usize_param(&q, "itemsPerPage", 1)?;
    let with_balance = parse_bool_param(&q, "withBalance")?;

    let ctx = ais_context(&state, &bank_id, &headers)?;
    let account = ctx.account(&account_id, Service::Transactions)?;
    // Follow-up pages of one listing are not new accesses.
    ctx.access(
        &state,
        &format!("transactions/{account_id}"),
        page_index == 0,
    )?;

    let s = ctx.statement(&state, account);
    let in_range = |t: &&Tx| {
        date_from.is_none_or(|f| t.booking_date >= f) && date_to.is_none_or(|d| t.booking_date <= d)
    };
    let mut items: Vec<(bool, &Tx)> = Vec::new();
    if want_pending {
        items.extend(s.pending.iter().filter(in_range).map(|t| (true, t)));
    }
    if want_booked {
        items.extend(s.booked.iter().filter(in_range).map(|t| (false, t)));
    }
    let page_size = state.config().page_size.max(1);
    let per_page = items_per_page.map_or(page_size, |n| n.min(page_size));
    let pages = items.len().div_ceil(per_page).max(1);
    let start = page_index.saturating_mul(per_page).min(items.len());
    let end = (start + per_page).min(items.len());
    let mut booked = Vec::new();
    let mut pending = Vec::new();
    for (is_pending, t) in &items[start..end] {
        if *is_pending {
            pending.push(tx_json(t));
        } else {
            booked.push(tx_json(t));
        }
    }

    let account_path = format!("/{}/v1/accounts/{}", ctx.bank.id, account.resource_id);
    let list_path = format!("{account_path}/transactions");
    let raw = raw_query.unwrap_or_default();
    let page_href = |p: usize| href(format!("{list_path}?{}", with_page_index(&raw, p)));
    let mut links = Map::new();
    links.insert("account".into(), href(account_path));
    links.insert("first".into(), page_href(0));
    if page_index > 0 {
        links.insert(
            "previous".into(),
            page_href((page_index - 1).min(pages - 1)),
        );
    }
    if page_index + 1 < pages {
        links.insert("next".into(), page_href(page_index + 1));
    }
    links.insert("last".into(), page_href(pages - 1));

    let mut report = Map::new();
    if want_booked {
        report.insert("booked".into(), Value::Array(booked));
    }
    if want_pending {
        report.insert("pending".into(), Value::Array(pending));
    }
    if want_information {
        report.insert("information".into(), json!([]));
    }
    report.insert("_links".into(), Value::Object(links));
    let mut body = json!({
        "account": { "iban": account.iban, "currency": account.currency },
        "transactions": report,
    });
    if with_balance && ctx.grants.balances.allows(&account.iban) {
        body["balances"] = balances_json(account, &s, ctx.today);
    }
    Ok(Json(body).into_response())
}

/// One line per account the consent covers, for the SCA page.
pub(crate) fn describe_access(state: &SandboxState, consent: &Consent) -> Vec<String> {
    let Some(bank) = super::banks::bank(consent.bank) else {
        return Vec::new();
    };
    let accounts = data::psu_accounts(state.config().seed, bank, &consent.psu);
    let grants = Grants::from_access(&consent.access);
    accounts
        .iter()
        .filter(|a| grants.visible(&a.iban))
        .map(|a| {
            let mut services = vec!["account details"];
            if grants.balances.allows(&a.iban) {
                services.push("balances");
            }
            if grants.transactions.allows(&a.iban) {
                services.push("transactions");
            }
            format!(
                "{} ({}, {}): {}",
                a.iban,
                a.currency,
                a.name,
                services.join(", ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_from_access() {
        let g = Grants::from_access(&json!({"allPsd2": "allAccounts"}));
        assert_eq!(g.transactions, Scope::All);
        let g = Grants::from_access(&json!({"availableAccounts": "allAccounts"}));
        assert_eq!(g.list, Scope::All);
        assert_eq!(g.balances, Scope::None);
        let g = Grants::from_access(&json!({
            "accounts": [{"iban": "LT601010012345678901"}],
            "balances": [{"iban": "LT601010012345678901"}],
            "transactions": []
        }));
        assert!(g.balances.allows("LT601010012345678901"));
        assert!(!g.balances.allows("LT000000000000000000"));
        assert_eq!(g.transactions, Scope::All);
    }

    #[test]
    fn page_index_rewrite() {
        assert_eq!(
            with_page_index("bookingStatus=booked&dateFrom=2024-01-01", 1),
            "bookingStatus=booked&dateFrom=2024-01-01&pageIndex=1"
        );
        assert_eq!(
            with_page_index("bookingStatus=booked&pageIndex=1&itemsPerPage=5", 2),
            "bookingStatus=booked&itemsPerPage=5&pageIndex=2"
        );
        assert_eq!(with_page_index("", 0), "pageIndex=0");
    }

    #[test]
    fn consent_validation() {
        let today = NaiveDate::from_ymd_opt(2025, 1, 10).unwrap();
        let ok = json!({
            "access": {"allPsd2": "allAccounts"},
            "recurringIndicator": true,
            "validUntil": "2025-04-01",
            "frequencyPerDay": 4,
            "combinedServiceIndicator": false
        });
        let obj = ok.as_object().unwrap();
        assert!(validate_consent_request(obj, today).is_ok());
        let mut bad = obj.clone();
        bad.insert("validUntil".into(), json!("2025-01-09"));
        assert_eq!(
            validate_consent_request(&bad, today).err().unwrap().code,
            "TIMESTAMP_INVALID"
        );
        bad.insert("validUntil".into(), json!("2025-13-01"));
        assert_eq!(
            validate_consent_request(&bad, today).err().unwrap().code,
            "FORMAT_ERROR"
        );
        let mut bad = obj.clone();
        bad.insert("frequencyPerDay".into(), json!(0));
        assert!(validate_consent_request(&bad, today).is_err());
        let mut bad = obj.clone();
        bad.remove("combinedServiceIndicator");
        assert!(validate_consent_request(&bad, today).is_err());
        let mut bad = obj.clone();
        bad.insert(
            "access".into(),
            json!({"accounts": [{"iban": "LT611010012345678901"}]}),
        );
        assert!(validate_consent_request(&bad, today).is_err());
    }
}
