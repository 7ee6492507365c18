//! HTTP API plumbing shared by the API functions: the caller's identity from the JWT
//! authorizer context, JSON answers and RFC 9457 problem details.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue};
use serde::Serialize;

use crate::domain::UserId;

pub type Request = ApiGatewayV2httpRequest;
pub type Response = ApiGatewayV2httpResponse;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    pub fn new(status: u16, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("https://docs.openbank.example/problems/{slug}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            errors: vec![],
        }
    }

    pub fn not_found() -> Self {
        Self::new(404, "not-found", "Not Found", "No such resource.")
    }

    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "unauthorized",
            "Unauthorized",
            "A valid bearer token is required.",
        )
    }

    pub fn into_response(self) -> Response {
        respond(self.status, "application/problem+json", &self)
    }
}

/// `200`-style JSON answer.
pub fn json(status: u16, body: &impl Serialize) -> Response {
    respond(status, "application/json", body)
}

/// An answer whose JSON body is already serialised (a stored idempotent answer): a
/// problem document for 4xx/5xx, else plain JSON.
pub fn raw_json(status: u16, body: String) -> Response {
    let content_type = if status >= 400 {
        "application/problem+json"
    } else {
        "application/json"
    };
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    let mut response = Response::default();
    response.status_code = i64::from(status);
    response.headers = headers;
    response.body = Some(Body::Text(body));
    response
}

fn respond(status: u16, content_type: &'static str, body: &impl Serialize) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    let mut response = Response::default();
    response.status_code = i64::from(status);
    response.headers = headers;
    response.body = Some(Body::Text(
        serde_json::to_string(body).expect("our response types serialise"),
    ));
    response
}

/// The caller, from the `sub` claim the JWT authorizer put in the request context —
/// never from the path, the query or the body.
pub fn caller(request: &Request) -> Result<UserId, Problem> {
    request
        .request_context
        .authorizer
        .as_ref()
        .and_then(|a| a.jwt.as_ref())
        .and_then(|jwt| jwt.claims.get("sub"))
        .and_then(|sub| UserId::parse(sub).ok())
        .ok_or_else(Problem::unauthorized)
}

/// `"GET /v1/banks"`-style route of the request.
pub fn route(request: &Request) -> (String, String) {
    (
        request.request_context.http.method.as_str().to_owned(),
        request.raw_path.clone().unwrap_or_default(),
    )
}

/// The request body as bytes (API Gateway base64-encodes binary bodies).
pub fn body_bytes(request: &Request) -> Result<Vec<u8>, Problem> {
    use base64::Engine as _;
    let Some(body) = request.body.as_deref() else {
        return Ok(Vec::new());
    };
    if request.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| {
                Problem::new(
                    400,
                    "validation",
                    "Invalid request",
                    "The body is not valid base64.",
                )
            })
    } else {
        Ok(body.as_bytes().to_vec())
    }
}

/// The caller's IP address as API Gateway saw it (`PSU-IP-Address` for the bank).
pub fn source_ip(request: &Request) -> Option<std::net::IpAddr> {
    request
        .request_context
        .http
        .source_ip
        .as_deref()?
        .parse()
        .ok()
}

/// A response without a body.
pub fn empty(status: u16) -> Response {
    let mut response = Response::default();
    response.status_code = i64::from(status);
    response
}
