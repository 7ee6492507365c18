//! Redirect SCA: the HTML page the PSU's browser is sent to, and the decision logic shared
//! with the scripted admin approval.

use std::collections::HashMap;
use std::time::Instant;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::{Value, json};

use super::SandboxState;
use super::ais::describe_access;
use super::banks::{self, Bank};
use super::state::{ConsentStatus, Sca};
use super::util::{html_escape, mask_id};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Consents,
    Payments,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "consents" => Some(Self::Consents),
            "payments" => Some(Self::Payments),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(crate) enum DecideError {
    NotFound(String),
    Conflict(String),
    BadRequest(String),
}

#[derive(Debug)]
pub(crate) struct Decided {
    pub status: String,
    pub redirect: String,
}

fn parse_decision(s: Option<&str>) -> Result<bool, DecideError> {
    match s {
        Some("approve") => Ok(true),
        Some("deny") => Ok(false),
        _ => Err(DecideError::BadRequest(
            "decision must be approve or deny".into(),
        )),
    }
}

fn resolve(bank_id: &str, kind: &str) -> Result<(&'static Bank, Kind), DecideError> {
    let bank = banks::bank(bank_id)
        .ok_or_else(|| DecideError::NotFound(format!("unknown bank {bank_id}")))?;
    let kind = Kind::parse(kind)
        .ok_or_else(|| DecideError::NotFound("kind must be consents or payments".into()))?;
    Ok((bank, kind))
}

/// Applies the PSU's decision. A second decision on the same object is a conflict.
pub(crate) fn decide(
    state: &SandboxState,
    bank: &Bank,
    kind: Kind,
    id: &str,
    approve: bool,
) -> Result<Decided, DecideError> {
    let mut store = state.store();
    let key = (bank.id.to_owned(), id.to_owned());
    let decided = match kind {
        Kind::Consents => {
            let c = store
                .consents
                .get_mut(&key)
                .ok_or_else(|| DecideError::NotFound("unknown consent".into()))?;
            if c.sca != Sca::Pending || c.status != ConsentStatus::Received {
                return Err(DecideError::Conflict(format!(
                    "consent is already {}",
                    c.status.as_str()
                )));
            }
            if approve {
                c.sca = Sca::Approved(Instant::now());
                c.status = ConsentStatus::Valid;
            } else {
                c.sca = Sca::Denied;
                c.status = ConsentStatus::Rejected;
            }
            Decided {
                status: c.status.as_str().to_owned(),
                redirect: redirect_target(approve, &c.redirect_uri, c.nok_redirect_uri.as_deref()),
            }
        }
        Kind::Payments => {
            let step = state.inner.config.payment_step;
            let p = store
                .payments
                .get_mut(&key)
                .ok_or_else(|| DecideError::NotFound("unknown payment".into()))?;
            if p.sca != Sca::Pending {
                return Err(DecideError::Conflict(format!(
                    "payment is already {}",
                    p.transaction_status(Instant::now(), step)
                )));
            }
            let now = Instant::now();
            p.sca = if approve {
                Sca::Approved(now)
            } else {
                Sca::Denied
            };
            Decided {
                status: p.transaction_status(now, step).to_owned(),
                redirect: redirect_target(approve, &p.redirect_uri, p.nok_redirect_uri.as_deref()),
            }
        }
    };
    tracing::info!(
        bank = bank.id,
        kind = ?kind,
        id = %mask_id(id),
        approve,
        status = %decided.status,
        "SCA decision"
    );
    Ok(decided)
}

fn redirect_target(approve: bool, ok: &str, nok: Option<&str>) -> String {
    if approve {
        ok.to_owned()
    } else {
        nok.unwrap_or(ok).to_owned()
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222}}\
         h1{{font-size:1.4rem}}dl{{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem}}\
         dt{{font-weight:600}}button{{font-size:1rem;padding:.5rem 1.5rem;margin-right:1rem}}\
         .approve{{background:#1a7f37;color:#fff;border:0}}.deny{{background:#cf222e;color:#fff;border:0}}\
         .note{{color:#666;font-size:.85rem}}</style></head>\
         <body>{body}</body></html>\n",
        title = html_escape(title),
    )
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(page(
            "Sandbox SCA",
            &format!(
                "<h1>{}</h1><p>{}</p>",
                status.canonical_reason().unwrap_or("Error"),
                html_escape(message)
            ),
        )),
    )
        .into_response()
}

fn decide_error_page(e: DecideError) -> Response {
    match e {
        DecideError::NotFound(m) => error_page(StatusCode::NOT_FOUND, &m),
        DecideError::Conflict(m) => error_page(StatusCode::CONFLICT, &m),
        DecideError::BadRequest(m) => error_page(StatusCode::BAD_REQUEST, &m),
    }
}

fn row(k: &str, v: &str) -> String {
    format!("<dt>{}</dt><dd>{}</dd>", html_escape(k), html_escape(v))
}

/// GET /{bank}/sca/{consents|payments}/{id}
pub(crate) async fn show(
    State(state): State<SandboxState>,
    Path((bank_id, kind, id)): Path<(String, String, String)>,
) -> Response {
    let (bank, kind) = match resolve(&bank_id, &kind) {
        Ok(v) => v,
        Err(e) => return decide_error_page(e),
    };
    let key = (bank.id.to_owned(), id.clone());
    let (what, rows, pending, status) = {
        let store = state.store();
        match kind {
            Kind::Consents => {
                let Some(c) = store.consents.get(&key).cloned() else {
                    return error_page(StatusCode::NOT_FOUND, "Unknown consent.");
                };
                drop(store);
                let mut rows = String::new();
                for line in describe_access(&state, &c) {
                    rows.push_str(&row("Account", &line));
                }
                rows.push_str(&row("Valid until", &c.valid_until.to_string()));
                rows.push_str(&row("Accesses per day", &c.frequency_per_day.to_string()));
                rows.push_str(&row(
                    "Recurring",
                    if c.recurring_indicator { "yes" } else { "no" },
                ));
                rows.push_str(&row(
                    "Combined with payment",
                    if c.combined_service_indicator {
                        "yes"
                    } else {
                        "no"
                    },
                ));
                rows.push_str(&row("PSU", &c.psu));
                (
                    "access to your account information",
                    rows,
                    c.sca == Sca::Pending && c.status == ConsentStatus::Received,
                    c.status.as_str().to_owned(),
                )
            }
            Kind::Payments => {
                let Some(p) = store.payments.get(&key).cloned() else {
                    return error_page(StatusCode::NOT_FOUND, "Unknown payment.");
                };
                drop(store);
                let d = &p.details;
                let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
                let mut rows = String::new();
                rows.push_str(&row(
                    "Amount",
                    &format!(
                        "{} {}",
                        s(&d["instructedAmount"]["amount"]),
                        s(&d["instructedAmount"]["currency"])
                    ),
                ));
                rows.push_str(&row("Creditor", &s(&d["creditorName"])));
                rows.push_str(&row("Creditor IBAN", &s(&d["creditorAccount"]["iban"])));
                rows.push_str(&row("From account", &s(&d["debtorAccount"]["iban"])));
                if let Some(r) = d["remittanceInformationUnstructured"].as_str() {
                    rows.push_str(&row("Reference", r));
                }
                rows.push_str(&row("Payment product", &p.product));
                rows.push_str(&row("PSU", &p.psu));
                (
                    "a payment",
                    rows,
                    p.sca == Sca::Pending,
                    p.transaction_status(Instant::now(), state.inner.config.payment_step)
                        .to_owned(),
                )
            }
        }
    };
    let action = format!(
        "/{}/sca/{}/{}",
        bank.id,
        match kind {
            Kind::Consents => "consents",
            Kind::Payments => "payments",
        },
        html_escape(&id)
    );
    let controls = if pending {
        format!(
            "<form method=\"post\" action=\"{action}\">\
             <button class=\"approve\" type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
             <button class=\"deny\" type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
             </form>"
        )
    } else {
        format!(
            "<p>This request has already been decided (status {}).</p>",
            html_escape(&status)
        )
    };
    let body = format!(
        "<h1>{bank_name}</h1><p>A third party asks you to authorise {what}.</p>\
         <dl>{rows}</dl>{controls}\
         <p class=\"note\">Sandbox bank: no real money or data is involved.</p>",
        bank_name = html_escape(bank.name),
    );
    Html(page(&format!("{} – authorise", bank.name), &body)).into_response()
}

/// POST /{bank}/sca/{consents|payments}/{id} with form field decision=approve|deny.
pub(crate) async fn submit(
    State(state): State<SandboxState>,
    Path((bank_id, kind, id)): Path<(String, String, String)>,
    form: Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let result = resolve(&bank_id, &kind).and_then(|(bank, kind)| {
        let decision = form
            .as_ref()
            .ok()
            .and_then(|Form(f)| f.get("decision"))
            .map(String::as_str);
        let approve = parse_decision(decision)?;
        decide(&state, bank, kind, &id, approve)
    });
    match result {
        Ok(d) => Redirect::to(&d.redirect).into_response(),
        Err(e) => decide_error_page(e),
    }
}

/// POST /__admin/sca/{bank}/{kind}/{id}?decision=approve|deny
pub(crate) async fn admin_decide(
    State(state): State<SandboxState>,
    Path((bank_id, kind, id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let result = resolve(&bank_id, &kind).and_then(|(bank, kind)| {
        let approve = parse_decision(q.get("decision").map(String::as_str))?;
        decide(&state, bank, kind, &id, approve)
    });
    match result {
        Ok(d) => (
            StatusCode::OK,
            axum::Json(json!({ "status": d.status, "redirect": d.redirect })),
        )
            .into_response(),
        Err(e) => {
            let (status, msg) = match e {
                DecideError::NotFound(m) => (StatusCode::NOT_FOUND, m),
                DecideError::Conflict(m) => (StatusCode::CONFLICT, m),
                DecideError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            };
            (status, axum::Json(json!({ "error": msg }))).into_response()
        }
    }
}
