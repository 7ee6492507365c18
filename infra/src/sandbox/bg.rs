//! The layer in front of every Berlin Group route (`/{bank}/v1/...`): counting, request log,
//! fault injection, X-Request-ID check; plus helpers shared by the handlers.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::SandboxState;
use super::banks::{self, Bank};
use super::error::{ApiError, ApiResult};
use super::state::RecordedRequest;
use super::util::is_uri;

/// Largest request body accepted (and recorded).
const BODY_LIMIT: usize = 1 << 20;

/// Splits "/{bank}/v1/..." into the bank id and "/v1/...". None for other paths.
pub(crate) fn split_bg_path(path: &str) -> Option<(&str, &str)> {
    let p = path.strip_prefix('/')?;
    let (bank, rest) = p.split_once('/')?;
    if bank.is_empty() || bank.starts_with("__") {
        return None;
    }
    if rest == "v1" || rest.starts_with("v1/") {
        Some((bank, &path[1 + bank.len()..]))
    } else {
        None
    }
}

/// The route template of a Berlin Group path ("/v1/accounts/{account-id}/transactions");
/// the path itself when it matches no route.
pub(crate) fn route_template(rest: &str) -> String {
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let t = match segs.get(1..).unwrap_or_default() {
        ["consents"] => "/v1/consents",
        ["consents", _] => "/v1/consents/{consentId}",
        ["consents", _, "status"] => "/v1/consents/{consentId}/status",
        ["consents", _, "authorisations"] => "/v1/consents/{consentId}/authorisations",
        ["consents", _, "authorisations", _] => {
            "/v1/consents/{consentId}/authorisations/{authorisationId}"
        }
        ["accounts"] => "/v1/accounts",
        ["accounts", _] => "/v1/accounts/{account-id}",
        ["accounts", _, "balances"] => "/v1/accounts/{account-id}/balances",
        ["accounts", _, "transactions"] => "/v1/accounts/{account-id}/transactions",
        ["accounts", _, "transactions", _] => {
            "/v1/accounts/{account-id}/transactions/{transactionId}"
        }
        ["payments", _] => "/v1/payments/{payment-product}",
        ["payments", _, _] => "/v1/payments/{payment-product}/{paymentId}",
        ["payments", _, _, "status"] => "/v1/payments/{payment-product}/{paymentId}/status",
        ["payments", _, _, "authorisations"] => {
            "/v1/payments/{payment-product}/{paymentId}/authorisations"
        }
        ["payments", _, _, "authorisations", _] => {
            "/v1/payments/{payment-product}/{paymentId}/authorisations/{authorisationId}"
        }
        _ => return rest.to_owned(),
    };
    t.to_owned()
}

fn headers_json(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

fn body_json(bytes: &Bytes) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Middleware for the whole router; acts only on Berlin Group paths.
pub(crate) async fn layer(State(state): State<SandboxState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let Some((bank_id, rest)) = split_bg_path(&path) else {
        return next.run(req).await;
    };
    let bank_id = bank_id.to_owned();
    let operation = route_template(rest);
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_owned);
    let headers = req.headers().clone();
    let started = Instant::now();

    let (parts, body) = req.into_parts();
    let (bytes, body_error) = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => (b, false),
        Err(_) => (Bytes::new(), true),
    };
    let req = Request::from_parts(parts, Body::from(bytes.clone()));
    let label = format!("{method} {operation}");
    state.store().count_call(&bank_id, &label);

    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| uuid::Uuid::parse_str(v).is_ok())
        .map(str::to_owned);

    let mut hang = None;
    let mut response = if banks::bank(&bank_id).is_none() {
        ApiError::resource_unknown(
            StatusCode::NOT_FOUND,
            format!("Unknown bank (ASPSP) '{bank_id}'."),
        )
        .into_response()
    } else {
        let faults = state.store().draw_faults(&bank_id, &path);
        hang = faults.hang;
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        if let Some(status) = faults.error_status {
            if status == 503 {
                ApiError::unavailable().into_response()
            } else {
                ApiError::internal().into_response()
            }
        } else if let Some(secs) = faults.rate_limit_retry_after {
            ApiError::access_exceeded("Simulated rate limit: too many requests.")
                .with_retry_after(secs)
                .into_response()
        } else if body_error {
            ApiError::format("The request body is too large or could not be read.").into_response()
        } else if request_id.is_none() {
            ApiError::format("Header X-Request-ID is missing or not a UUID.").into_response()
        } else {
            let resp = next.run(req).await;
            if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
                ApiError::service_invalid().into_response()
            } else {
                resp
            }
        }
    };
    if let Some(id) = request_id.as_deref()
        && let Ok(v) = HeaderValue::from_str(id)
    {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status();
    state.store().record(RecordedRequest {
        bank: bank_id.clone(),
        method: method.to_string(),
        path: path.clone(),
        query,
        headers: headers_json(&headers),
        body: body_json(&bytes),
        status: status.as_u16(),
        operation: operation.clone(),
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    tracing::info!(
        bank = %bank_id,
        method = %method,
        operation = %operation,
        status = status.as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        x_request_id = request_id.as_deref().unwrap_or("-"),
        hang_ms = hang.map(|h| h.as_millis() as u64),
        "berlin group request"
    );
    if let Some(h) = hang {
        tokio::time::sleep(h).await;
    }
    response
}

/// The bank of a Berlin Group path; the layer already answered unknown banks.
pub(crate) fn known_bank(id: &str) -> ApiResult<&'static Bank> {
    banks::bank(id).ok_or_else(|| {
        ApiError::resource_unknown(StatusCode::NOT_FOUND, format!("Unknown bank '{id}'."))
    })
}

/// A non-empty header value.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

pub(crate) fn require_header<'a>(headers: &'a HeaderMap, name: &str) -> ApiResult<&'a str> {
    header(headers, name).ok_or_else(|| ApiError::format(format!("Header {name} is missing.")))
}

/// The mandatory PSU-IP-Address header (consent and payment initiation).
pub(crate) fn require_psu_ip(headers: &HeaderMap) -> ApiResult<()> {
    let ip = require_header(headers, "PSU-IP-Address")?;
    check_ip(ip)
}

fn check_ip(ip: &str) -> ApiResult<()> {
    if super::util::is_ip_address(ip) {
        Ok(())
    } else {
        Err(ApiError::format(
            "Header PSU-IP-Address is not an IP address.",
        ))
    }
}

/// True when the request was actively initiated by the PSU (PSU-IP-Address present).
pub(crate) fn psu_present(headers: &HeaderMap) -> ApiResult<bool> {
    match header(headers, "PSU-IP-Address") {
        Some(ip) => check_ip(ip).map(|()| true),
        None => Ok(false),
    }
}

/// TPP-Redirect-URI (required: the sandbox only offers the redirect approach) and the optional
/// TPP-Nok-Redirect-URI.
pub(crate) fn redirect_uris(headers: &HeaderMap) -> ApiResult<(String, Option<String>)> {
    let ok = header(headers, "TPP-Redirect-URI").ok_or_else(|| {
        ApiError::format(
            "Header TPP-Redirect-URI is missing (this ASPSP only supports redirect SCA).",
        )
    })?;
    if !is_uri(ok) {
        return Err(ApiError::format("Header TPP-Redirect-URI is not a URI."));
    }
    let nok = match header(headers, "TPP-Nok-Redirect-URI") {
        Some(n) if !is_uri(n) => {
            return Err(ApiError::format(
                "Header TPP-Nok-Redirect-URI is not a URI.",
            ));
        }
        n => n.map(str::to_owned),
    };
    Ok((ok.to_owned(), nok))
}

/// The PSU addressed by the request (PSU-ID header, default "demo").
pub(crate) fn psu_id(headers: &HeaderMap) -> String {
    header(headers, "PSU-ID")
        .unwrap_or(super::data::DEFAULT_PSU)
        .to_owned()
}

/// The X-Request-ID (validated by the layer).
pub(crate) fn request_id(headers: &HeaderMap) -> ApiResult<String> {
    header(headers, "X-Request-ID")
        .filter(|v| uuid::Uuid::parse_str(v).is_ok())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::format("Header X-Request-ID is missing or not a UUID."))
}

/// Absolute base URL for links opened by the PSU's browser.
pub(crate) fn public_base(state: &SandboxState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.inner.public_base_url {
        return base.clone();
    }
    match header(headers, header::HOST.as_str()) {
        Some(host) => format!("http://{host}"),
        None => String::new(),
    }
}

/// Parses a JSON object body.
pub(crate) fn json_object(bytes: &Bytes) -> ApiResult<Map<String, Value>> {
    if bytes.is_empty() {
        return Err(ApiError::format("The request body is missing."));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::format("The request body must be a JSON object.")),
        Err(e) => Err(ApiError::format(format!(
            "The request body is not valid JSON: {e}"
        ))),
    }
}

/// `{"href": href}`.
pub(crate) fn href(href: impl Into<String>) -> Value {
    serde_json::json!({ "href": href.into() })
}

/// A 201 answer with Location and ASPSP-SCA-Approach headers.
pub(crate) fn created(bank: &Bank, location: &str, body: Value) -> Response {
    let mut resp = (StatusCode::CREATED, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        "aspsp-sca-approach",
        HeaderValue::from_static(bank.sca_approach()),
    );
    resp
}

/// Fallback for unmatched paths.
pub(crate) async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::resource_unknown(
        StatusCode::NOT_FOUND,
        format!("No resource at {method} {}.", uri.path()),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bg_paths_and_templates() {
        assert_eq!(
            split_bg_path("/lt-alpha/v1/consents"),
            Some(("lt-alpha", "/v1/consents"))
        );
        assert_eq!(split_bg_path("/lt-alpha/sca/consents/x"), None);
        assert_eq!(split_bg_path("/__admin/v1/x"), None);
        assert_eq!(split_bg_path("/healthz"), None);
        assert_eq!(
            route_template("/v1/accounts/abc/transactions"),
            "/v1/accounts/{account-id}/transactions"
        );
        assert_eq!(
            route_template("/v1/payments/sepa-credit-transfers"),
            "/v1/payments/{payment-product}"
        );
        assert_eq!(
            route_template("/v1/payments/sepa-credit-transfers/p1/status"),
            "/v1/payments/{payment-product}/{paymentId}/status"
        );
        assert_eq!(route_template("/v1/unknown/x/y/z"), "/v1/unknown/x/y/z");
    }
}
