//! Payment initiation service: single payments of the bank's payment products.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::SandboxState;
use super::banks::{
    Bank, CROSS_BORDER_CREDIT_TRANSFERS, INSTANT_SEPA_CREDIT_TRANSFERS, SEPA_CREDIT_TRANSFERS,
};
use super::bg::{
    created, href, json_object, known_bank, psu_id, public_base, redirect_uris, request_id,
    require_psu_ip,
};
use super::error::{ApiError, ApiResult};
use super::state::{Payment, RejectRule, Sca};
use super::util::{
    currency_decimals, is_currency_code, is_valid_iban, mask_iban, mask_id, parse_amount,
};

/// Creditor IBAN whose payments are rejected after acceptance.
pub const REJECTED_CREDITOR_IBAN: &str = "LT601010012345678901";

/// Amounts above this (in thousandths: 50 000.00) are rejected right after SCA.
pub const MAX_AMOUNT_THOUSANDTHS: i128 = 50_000_000;

fn is_sepa(product: &str) -> bool {
    product == SEPA_CREDIT_TRANSFERS || product == INSTANT_SEPA_CREDIT_TRANSFERS
}

fn known_product(product: &str) -> bool {
    [
        SEPA_CREDIT_TRANSFERS,
        INSTANT_SEPA_CREDIT_TRANSFERS,
        CROSS_BORDER_CREDIT_TRANSFERS,
    ]
    .contains(&product)
}

fn account_iban(body: &Map<String, Value>, field: &str) -> ApiResult<String> {
    let Some(account) = body.get(field).and_then(Value::as_object) else {
        return Err(ApiError::format(format!(
            "Field {field} is missing or not an account reference."
        )));
    };
    let Some(iban) = account.get("iban").and_then(Value::as_str) else {
        return Err(ApiError::format(format!("Field {field}.iban is missing.")));
    };
    if !is_valid_iban(iban) {
        return Err(ApiError::format(format!(
            "Field {field}.iban is not a valid IBAN."
        )));
    }
    if let Some(c) = account.get("currency")
        && !c.as_str().is_some_and(is_currency_code)
    {
        return Err(ApiError::format(format!(
            "Field {field}.currency is not a currency code."
        )));
    }
    Ok(iban.to_owned())
}

fn optional_text(body: &Map<String, Value>, field: &str, max: usize) -> ApiResult<Option<String>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ApiError::format(format!(
            "Field {field} is longer than {max} characters."
        ))),
        Some(_) => Err(ApiError::format(format!("Field {field} must be a string."))),
    }
}

/// What the sandbox needs from a valid payment body.
struct ValidPayment {
    amount_thousandths: i128,
    creditor_name: String,
    creditor_iban: String,
    debtor_iban: String,
    currency: String,
}

fn validate_payment(body: &Map<String, Value>, product: &str) -> ApiResult<ValidPayment> {
    let debtor_iban = account_iban(body, "debtorAccount")?;
    let Some(amount) = body.get("instructedAmount").and_then(Value::as_object) else {
        return Err(ApiError::format(
            "Field instructedAmount is missing or not an object.",
        ));
    };
    let currency = amount
        .get("currency")
        .and_then(Value::as_str)
        .filter(|c| is_currency_code(c))
        .ok_or_else(|| {
            ApiError::format("Field instructedAmount.currency is missing or not a currency code.")
        })?;
    let value = amount
        .get("amount")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::format("Field instructedAmount.amount is missing or not a string.")
        })?;
    let parsed = parse_amount(value).ok_or_else(|| {
        ApiError::format(
            "Field instructedAmount.amount does not match -?[0-9]{1,14}(.[0-9]{1,3})?.",
        )
    })?;
    if parsed.thousandths <= 0 {
        return Err(ApiError::format(
            "Field instructedAmount.amount must be greater than zero.",
        ));
    }
    if parsed.decimals > currency_decimals(currency) {
        return Err(ApiError::format(format!(
            "Field instructedAmount.amount has more fraction digits than {currency} allows."
        )));
    }
    if is_sepa(product) && currency != "EUR" {
        return Err(ApiError::format(format!(
            "The payment product {product} only accepts EUR."
        )));
    }
    let creditor_iban = account_iban(body, "creditorAccount")?;
    let creditor_name = match body.get("creditorName").and_then(Value::as_str) {
        Some(n) if n.trim().is_empty() => {
            return Err(ApiError::format("Field creditorName is empty."));
        }
        Some(n) if n.chars().count() > 70 => {
            return Err(ApiError::format(
                "Field creditorName is longer than 70 characters.",
            ));
        }
        Some(n) => n.to_owned(),
        None => {
            return Err(ApiError::format(
                "Field creditorName is missing or not a string.",
            ));
        }
    };
    optional_text(body, "remittanceInformationUnstructured", 140)?;
    optional_text(body, "endToEndIdentification", 35)?;
    optional_text(body, "instructionIdentification", 35)?;
    optional_text(body, "debtorName", 70)?;
    if let Some(d) = optional_text(body, "requestedExecutionDate", 10)?
        && chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").is_err()
    {
        return Err(ApiError::format(
            "Field requestedExecutionDate is not an ISO date.",
        ));
    }
    Ok(ValidPayment {
        amount_thousandths: parsed.thousandths,
        creditor_name,
        creditor_iban,
        debtor_iban,
        currency: currency.to_owned(),
    })
}

/// The sandbox rule deciding how the payment ends (see SANDBOX.md).
fn reject_rule(p: &ValidPayment) -> RejectRule {
    if p.amount_thousandths > MAX_AMOUNT_THOUSANDTHS {
        RejectRule::Immediate
    } else if p.creditor_name.to_lowercase().contains("reject")
        || p.creditor_iban == REJECTED_CREDITOR_IBAN
    {
        RejectRule::AfterAcceptance
    } else {
        RejectRule::None
    }
}

fn payment_base(bank: &Bank, product: &str, id: &str) -> String {
    format!("/{}/v1/payments/{product}/{id}", bank.id)
}

/// POST /{bank}/v1/payments/{payment-product}
pub(crate) async fn initiate(
    State(state): State<SandboxState>,
    Path((bank_id, product)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let bank = known_bank(&bank_id)?;
    if !bank.supports_product(&product) {
        return Err(ApiError::product_unknown(&product));
    }
    let request_id = request_id(&headers)?;
    let dedup_key = (bank.id.to_owned(), request_id.clone());
    if let Some(resp) = replay(&state, bank, &dedup_key) {
        return Ok(resp);
    }
    require_psu_ip(&headers)?;
    let (redirect_uri, nok_redirect_uri) = redirect_uris(&headers)?;
    let body = json_object(&body)?;
    let valid = validate_payment(&body, &product)?;
    let rule = reject_rule(&valid);

    let id = uuid::Uuid::new_v4().to_string();
    let authorisation_id = uuid::Uuid::new_v4().to_string();
    let base = payment_base(bank, &product, &id);
    let mut links = Map::new();
    links.insert(
        bank.sca_link_name().to_owned(),
        href(format!(
            "{}/{}/sca/payments/{id}",
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
    let response = json!({
        "transactionStatus": "RCVD",
        "paymentId": id,
        "_links": links,
    });
    let payment = Payment {
        id: id.clone(),
        product: product.clone(),
        psu: psu_id(&headers),
        details: Value::Object(body),
        rule,
        sca: Sca::Pending,
        redirect_uri,
        nok_redirect_uri,
        authorisation_id,
        initiation_response: response.clone(),
    };
    {
        let mut store = state.store();
        // A concurrent initiation with the same X-Request-ID may have won the race.
        if let Some(existing) = store.payment_by_request_id.get(&dedup_key).cloned() {
            drop(store);
            if let Some(resp) = replay(&state, bank, &dedup_key) {
                return Ok(resp);
            }
            tracing::warn!(payment = %mask_id(&existing), "dedup entry without payment");
            return Err(ApiError::internal());
        }
        store.payment_by_request_id.insert(dedup_key, id.clone());
        store
            .payments
            .insert((bank.id.to_owned(), id.clone()), payment);
        *store
            .counts
            .payment_initiations
            .entry(bank.id.to_owned())
            .or_default() += 1;
    }
    tracing::info!(
        bank = bank.id,
        product = %product,
        payment = %mask_id(&id),
        debtor = %mask_iban(&valid.debtor_iban),
        creditor = %mask_iban(&valid.creditor_iban),
        currency = %valid.currency,
        rule = ?rule,
        "payment initiated"
    );
    Ok(created(bank, &base, response))
}

/// The stored 201 answer of an earlier initiation with the same X-Request-ID.
fn replay(state: &SandboxState, bank: &Bank, key: &(String, String)) -> Option<Response> {
    let store = state.store();
    let id = store.payment_by_request_id.get(key)?;
    let p = store.payments.get(&(bank.id.to_owned(), id.clone()))?;
    let location = payment_base(bank, &p.product, &p.id);
    tracing::info!(bank = bank.id, payment = %mask_id(&p.id), "payment initiation replayed (same X-Request-ID)");
    Some(created(bank, &location, p.initiation_response.clone()))
}

fn find_payment(
    state: &SandboxState,
    bank_id: &str,
    product: &str,
    id: &str,
) -> ApiResult<(&'static Bank, Payment)> {
    let bank = known_bank(bank_id)?;
    if !known_product(product) || !bank.supports_product(product) {
        return Err(ApiError::product_unknown(product));
    }
    let store = state.store();
    match store.payments.get(&(bank.id.to_owned(), id.to_owned())) {
        Some(p) if p.product == product => Ok((bank, p.clone())),
        _ => Err(ApiError::resource_unknown(
            StatusCode::FORBIDDEN,
            "The paymentId is unknown for this payment product.",
        )),
    }
}

/// GET /{bank}/v1/payments/{payment-product}/{paymentId}
pub(crate) async fn get_payment(
    State(state): State<SandboxState>,
    Path((bank_id, product, id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, p) = find_payment(&state, &bank_id, &product, &id)?;
    let mut body = p.details.clone();
    body["transactionStatus"] =
        json!(p.transaction_status(Instant::now(), state.config().payment_step));
    Ok(Json(body))
}

/// GET /{bank}/v1/payments/{payment-product}/{paymentId}/status
pub(crate) async fn payment_status(
    State(state): State<SandboxState>,
    Path((bank_id, product, id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, p) = find_payment(&state, &bank_id, &product, &id)?;
    Ok(Json(json!({
        "transactionStatus": p.transaction_status(Instant::now(), state.config().payment_step),
    })))
}

/// GET /{bank}/v1/payments/{payment-product}/{paymentId}/authorisations
pub(crate) async fn payment_authorisations(
    State(state): State<SandboxState>,
    Path((bank_id, product, id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, p) = find_payment(&state, &bank_id, &product, &id)?;
    Ok(Json(json!({ "authorisationIds": [p.authorisation_id] })))
}

/// GET /{bank}/v1/payments/{payment-product}/{paymentId}/authorisations/{authorisationId}
pub(crate) async fn payment_sca_status(
    State(state): State<SandboxState>,
    Path((bank_id, product, id, auth)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, p) = find_payment(&state, &bank_id, &product, &id)?;
    if p.authorisation_id != auth {
        return Err(ApiError::resource_unknown(
            StatusCode::FORBIDDEN,
            "Unknown authorisation sub-resource.",
        ));
    }
    Ok(Json(json!({ "scaStatus": p.sca.sca_status() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn sample() -> Value {
        json!({
            "debtorAccount": {"iban": "LT601010012345678901"},
            "instructedAmount": {"currency": "EUR", "amount": "12.30"},
            "creditorAccount": {"iban": "DE89370400440532013000"},
            "creditorName": "Merchant AG",
            "remittanceInformationUnstructured": "Invoice 1"
        })
    }

    #[test]
    fn validation() {
        let ok = validate_payment(&body(sample()), SEPA_CREDIT_TRANSFERS).unwrap();
        assert_eq!(ok.amount_thousandths, 12_300);
        assert_eq!(reject_rule(&ok), RejectRule::None);

        let mut v = sample();
        v["instructedAmount"]["amount"] = json!("12.345");
        assert!(validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).is_err());
        let mut v = sample();
        v["instructedAmount"]["amount"] = json!("0.00");
        assert!(validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).is_err());
        let mut v = sample();
        v["instructedAmount"]["amount"] = json!(12.3);
        assert!(validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).is_err());
        let mut v = sample();
        v["instructedAmount"]["currency"] = json!("USD");
        assert!(validate_payment(&body(v.clone()), SEPA_CREDIT_TRANSFERS).is_err());
        assert!(validate_payment(&body(v), CROSS_BORDER_CREDIT_TRANSFERS).is_ok());
        let mut v = sample();
        v["creditorAccount"]["iban"] = json!("DE89370400440532013001");
        assert!(validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).is_err());
        let mut v = sample();
        v["creditorName"] = json!("x".repeat(71));
        assert!(validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).is_err());
        let mut v = sample();
        v["remittanceInformationUnstructured"] = json!("x".repeat(141));
        assert!(validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).is_err());
        let mut v = sample();
        v.as_object_mut().unwrap().remove("creditorName");
        assert!(validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).is_err());
    }

    #[test]
    fn rules() {
        let mut v = sample();
        v["creditorName"] = json!("Please Reject Me");
        let p = validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).unwrap();
        assert_eq!(reject_rule(&p), RejectRule::AfterAcceptance);
        let mut v = sample();
        v["creditorAccount"]["iban"] = json!(REJECTED_CREDITOR_IBAN);
        let p = validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).unwrap();
        assert_eq!(reject_rule(&p), RejectRule::AfterAcceptance);
        let mut v = sample();
        v["instructedAmount"]["amount"] = json!("50000.01");
        let p = validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).unwrap();
        assert_eq!(reject_rule(&p), RejectRule::Immediate);
        let mut v = sample();
        v["instructedAmount"]["amount"] = json!("50000.00");
        let p = validate_payment(&body(v), SEPA_CREDIT_TRANSFERS).unwrap();
        assert_eq!(reject_rule(&p), RejectRule::None);
    }
}
