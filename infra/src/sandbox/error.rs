//! Berlin Group error answers: `{"tppMessages":[{"category":"ERROR","code":..,"text":..}]}`.
//!
//! The HTTP status for each code follows the NextGenPSD2 Implementation Guidelines table of
//! message codes (the OpenAPI file lists the codes per status as `MessageCode4xx_*`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer of a Berlin Group route.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub text: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, text: impl Into<String>) -> Self {
        Self {
            status,
            code,
            text: text.into(),
            retry_after: None,
        }
    }

    /// 400 FORMAT_ERROR: a header, query parameter or body field is missing or malformed.
    pub fn format(text: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "FORMAT_ERROR", text)
    }

    /// 400 TIMESTAMP_INVALID: a date is outside the accepted period.
    pub fn timestamp_invalid(text: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "TIMESTAMP_INVALID", text)
    }

    /// 400 PERIOD_INVALID: the requested time period is out of bound (dateFrom after dateTo).
    pub fn period_invalid(text: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "PERIOD_INVALID", text)
    }

    /// 401 CONSENT_INVALID: the consent exists but is not valid for this service/resource.
    pub fn consent_invalid(text: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "CONSENT_INVALID", text)
    }

    /// 401 CONSENT_EXPIRED.
    pub fn consent_expired() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "CONSENT_EXPIRED",
            "The consent was created by this TPP but has expired and needs to be renewed.",
        )
    }

    /// 403 CONSENT_UNKNOWN.
    pub fn consent_unknown() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "CONSENT_UNKNOWN",
            "The Consent-ID cannot be matched by the ASPSP relative to the TPP.",
        )
    }

    /// RESOURCE_UNKNOWN: 404 when an account-id (or the bank) in the path is unknown, 403 for
    /// other resources addressed in the path (payments).
    pub fn resource_unknown(status: StatusCode, text: impl Into<String>) -> Self {
        Self::new(status, "RESOURCE_UNKNOWN", text)
    }

    /// 404 PRODUCT_UNKNOWN: the payment product is not supported by this ASPSP.
    pub fn product_unknown(product: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "PRODUCT_UNKNOWN",
            format!("The payment product {product} is not supported by this ASPSP."),
        )
    }

    /// 405 SERVICE_INVALID.
    pub fn service_invalid() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "SERVICE_INVALID",
            "The addressed service is not valid for the addressed resources.",
        )
    }

    /// 429 ACCESS_EXCEEDED.
    pub fn access_exceeded(text: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "ACCESS_EXCEEDED", text)
    }

    /// 500 INTERNAL_SERVER_ERROR (fault injection).
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_SERVER_ERROR",
            "Simulated internal server error.",
        )
    }

    /// 503 SERVICE_UNAVAILABLE (fault injection).
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "Simulated service outage.",
        )
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "tppMessages": [{
                "category": "ERROR",
                "code": self.code,
                "text": self.text,
            }]
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
