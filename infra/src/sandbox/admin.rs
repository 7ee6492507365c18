//! Test-control endpoints under `/__admin` (never counted, never faulted), the ECB feed and
//! the health check.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Datelike, Days, NaiveDate, Utc, Weekday};
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::{Value, json};

use super::SandboxState;
use super::banks;
use super::state::{ConsentStatus, FaultConfig};
use super::util::{mask_id, stable_hash};

fn admin_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// GET /healthz
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// GET /__admin/pending-sca/{bank}: the ids of the bank's payments whose SCA is pending
/// (what a scripted user would find in the bank's app), sorted.
pub(crate) async fn pending_sca(
    State(state): State<SandboxState>,
    Path(bank): Path<String>,
) -> Json<Value> {
    let store = state.store();
    let mut payments: Vec<&str> = store
        .payments
        .iter()
        .filter(|((b, _), p)| *b == bank && matches!(p.sca, super::state::Sca::Pending))
        .map(|((_, id), _)| id.as_str())
        .collect();
    payments.sort_unstable();
    Json(json!({ "payments": payments }))
}

/// GET /__admin/counts
pub(crate) async fn counts(State(state): State<SandboxState>) -> Json<Value> {
    let counts = state.store().counts.clone();
    Json(serde_json::to_value(counts).unwrap_or(Value::Null))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RequestsQuery {
    bank: Option<String>,
}

/// GET /__admin/requests?bank=
pub(crate) async fn requests(
    State(state): State<SandboxState>,
    Query(q): Query<RequestsQuery>,
) -> Json<Value> {
    let store = state.store();
    let list: Vec<_> = store
        .requests
        .iter()
        .filter(|r| q.bank.as_deref().is_none_or(|b| r.bank == b))
        .cloned()
        .collect();
    Json(serde_json::to_value(list).unwrap_or(Value::Null))
}

/// DELETE /__admin/requests
pub(crate) async fn clear_requests(State(state): State<SandboxState>) -> StatusCode {
    state.store().requests.clear();
    StatusCode::NO_CONTENT
}

fn faults_json(state: &SandboxState) -> Value {
    let store = state.store();
    json!({
        "global": store.faults.global,
        "perBank": store.faults.per_bank,
    })
}

/// GET /__admin/faults
pub(crate) async fn get_faults(State(state): State<SandboxState>) -> Json<Value> {
    Json(faults_json(&state))
}

/// PUT /__admin/faults
pub(crate) async fn put_faults(State(state): State<SandboxState>, body: Bytes) -> Response {
    let cfg: FaultConfig = if body.is_empty() {
        FaultConfig::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(c) => c,
            Err(e) => return admin_error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
        }
    };
    for (name, rate) in [
        ("errorRate", cfg.error_rate),
        ("rateLimitRate", cfg.rate_limit_rate),
        ("hangRate", cfg.hang_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return admin_error(
                StatusCode::BAD_REQUEST,
                format!("{name} must be between 0 and 1"),
            );
        }
    }
    if !matches!(cfg.error_status, 500 | 503) {
        return admin_error(StatusCode::BAD_REQUEST, "errorStatus must be 500 or 503");
    }
    if let Some(b) = &cfg.bank
        && banks::bank(b).is_none()
    {
        return admin_error(StatusCode::BAD_REQUEST, format!("unknown bank {b}"));
    }
    tracing::info!(faults = ?cfg, "faults set");
    state.store().set_faults(cfg);
    Json(faults_json(&state)).into_response()
}

/// DELETE /__admin/faults
pub(crate) async fn delete_faults(State(state): State<SandboxState>) -> StatusCode {
    state.store().faults = Default::default();
    tracing::info!("faults cleared");
    StatusCode::NO_CONTENT
}

/// POST /__admin/consents/{bank}/{id}/status with {"consentStatus": "..."}
pub(crate) async fn set_consent_status(
    State(state): State<SandboxState>,
    Path((bank_id, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
    };
    let Some(status) = value
        .get("consentStatus")
        .and_then(Value::as_str)
        .and_then(ConsentStatus::parse)
    else {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "consentStatus must be one of received, rejected, valid, revokedByPsu, expired, \
             terminatedByTpp, partiallyAuthorised",
        );
    };
    let mut store = state.store();
    let Some(c) = store.consents.get_mut(&(bank_id.clone(), id.clone())) else {
        return admin_error(StatusCode::NOT_FOUND, "unknown consent");
    };
    c.status = status;
    tracing::info!(bank = %bank_id, consent = %mask_id(&id), status = status.as_str(), "consent status set by admin");
    Json(json!({ "consentStatus": status.as_str() })).into_response()
}

/// POST /__admin/reset
pub(crate) async fn reset(State(state): State<SandboxState>) -> StatusCode {
    state.reset();
    tracing::info!("sandbox state reset");
    StatusCode::NO_CONTENT
}

/// (currency, rate in 1e-5 units, decimals as published by the ECB)
const ECB_BASE_RATES: [(&str, i64, u32); 9] = [
    ("USD", 108_320, 4),
    ("JPY", 16_123_000, 2),
    ("CZK", 2_526_200, 3),
    ("DKK", 745_980, 4),
    ("GBP", 85_710, 5),
    ("PLN", 431_050, 4),
    ("SEK", 1_143_750, 4),
    ("CHF", 94_210, 4),
    ("NOK", 1_168_200, 4),
];

/// The reference date: today, or the last weekday before a weekend.
pub(crate) fn ecb_date(today: NaiveDate) -> NaiveDate {
    match today.weekday() {
        Weekday::Sat => today - Days::new(1),
        Weekday::Sun => today - Days::new(2),
        _ => today,
    }
}

/// Deterministic (per seed and date) rates as decimal strings.
pub(crate) fn ecb_rates(seed: u64, date: NaiveDate) -> Vec<(&'static str, String)> {
    let day = date.to_string();
    let mut rng =
        StdRng::seed_from_u64(stable_hash(&[&seed.to_le_bytes(), b"ecb", day.as_bytes()]));
    ECB_BASE_RATES
        .iter()
        .map(|&(currency, base, decimals)| {
            let jitter_bp: i64 = rng.random_range(-60..=60);
            let value = base * (10_000 + jitter_bp) / 10_000;
            let unit = 10i64.pow(5 - decimals);
            let rounded = (value + unit / 2) / unit;
            let scale = 10i64.pow(decimals);
            let text = if decimals == 0 {
                rounded.to_string()
            } else {
                format!(
                    "{}.{:0width$}",
                    rounded / scale,
                    rounded % scale,
                    width = decimals as usize
                )
            };
            (currency, text)
        })
        .collect()
}

/// GET /ecb/eurofxref-daily.xml
pub(crate) async fn ecb_daily(State(state): State<SandboxState>) -> Response {
    let date = ecb_date(Utc::now().date_naive());
    let mut cubes = String::new();
    for (currency, rate) in ecb_rates(state.config().seed, date) {
        cubes.push_str(&format!(
            "\t\t\t<Cube currency='{currency}' rate='{rate}'/>\n"
        ));
    }
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <gesmes:Envelope xmlns:gesmes=\"http://www.gesmes.org/xml/2002-08-01\" \
         xmlns=\"http://www.ecb.int/vocabulary/2002-08-01/eurofxref\">\n\
         \t<gesmes:subject>Reference rates</gesmes:subject>\n\
         \t<gesmes:Sender>\n\
         \t\t<gesmes:name>European Central Bank</gesmes:name>\n\
         \t</gesmes:Sender>\n\
         \t<Cube>\n\
         \t\t<Cube time='{date}'>\n\
         {cubes}\
         \t\t</Cube>\n\
         \t</Cube>\n\
         </gesmes:Envelope>\n"
    );
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], xml).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecb_rates_are_plausible_and_stable() {
        let d = NaiveDate::from_ymd_opt(2025, 3, 14).unwrap();
        let a = ecb_rates(1, d);
        assert_eq!(a, ecb_rates(1, d));
        let usd = &a.iter().find(|(c, _)| *c == "USD").unwrap().1;
        assert!(usd.starts_with("1.0"), "{usd}");
        assert_eq!(usd.split('.').nth(1).unwrap().len(), 4);
        let jpy = &a.iter().find(|(c, _)| *c == "JPY").unwrap().1;
        assert!(jpy.starts_with("16"), "{jpy}");
        assert_eq!(a.len(), 9);
    }

    #[test]
    fn ecb_date_skips_weekends() {
        let sat = NaiveDate::from_ymd_opt(2025, 3, 15).unwrap();
        let sun = NaiveDate::from_ymd_opt(2025, 3, 16).unwrap();
        let fri = NaiveDate::from_ymd_opt(2025, 3, 14).unwrap();
        assert_eq!(ecb_date(sat), fri);
        assert_eq!(ecb_date(sun), fri);
        assert_eq!(ecb_date(fri), fri);
    }
}
