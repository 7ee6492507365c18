//! The payments API: initiate a payment (`Idempotency-Key` required), read one, list the
//! caller's payments; submit a bulk batch (`Idempotency-Key` required) and follow it. The caller is the JWT `sub`; another user's payment is a 404.

use std::collections::HashMap;

use shared::http::{self, Problem, Request, Response};
use shared::services::ServiceError;
use shared::services::payments::Payments;

/// The caller's IP (`PSU-IP-Address`: the user is present) and the `Idempotency-Key`.
fn ip_and_key(request: &Request) -> Result<(std::net::IpAddr, Option<&str>), Problem> {
    let ip = http::source_ip(request).ok_or_else(|| {
        Problem::new(
            400,
            "validation",
            "Invalid request",
            "The caller's IP address is unknown.",
        )
    })?;
    let key = request
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok());
    Ok((ip, key))
}

pub async fn handle(service: &Payments, request: &Request) -> Response {
    let user = match http::caller(request) {
        Ok(user) => user,
        Err(problem) => return problem.into_response(),
    };
    let (method, path) = http::route(request);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let outcome: Result<Response, ServiceError> = match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "payments"]) => {
            let body = match http::body_bytes(request) {
                Ok(body) => body,
                Err(problem) => return problem.into_response(),
            };
            let (ip, key) = match ip_and_key(request) {
                Ok(found) => found,
                Err(problem) => return problem.into_response(),
            };
            service
                .initiate(&user, key, &body, ip)
                .await
                .map(|answer| http::raw_json(answer.status, answer.body))
        }
        ("GET", ["v1", "payments"]) => {
            let query: HashMap<String, String> = request
                .query_string_parameters
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            service
                .list(&user, &query)
                .await
                .map(|list| http::json(200, &list))
        }
        ("GET", ["v1", "payments", id]) => service
            .get(&user, id)
            .await
            .map(|view| http::json(200, &view)),
        ("POST", ["v1", "payment-batches"]) => {
            let body = match http::body_bytes(request) {
                Ok(body) => body,
                Err(problem) => return problem.into_response(),
            };
            let (ip, key) = match ip_and_key(request) {
                Ok(found) => found,
                Err(problem) => return problem.into_response(),
            };
            service
                .create_batch(&user, key, &body, ip)
                .await
                .map(|answer| http::raw_json(answer.status, answer.body))
        }
        ("GET", ["v1", "payment-batches", id]) => {
            let query: HashMap<String, String> = request
                .query_string_parameters
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            service
                .get_batch(&user, id, &query)
                .await
                .map(|view| http::json(200, &view))
        }
        _ => return Problem::not_found().into_response(),
    };
    match outcome {
        Ok(response) => response,
        Err(error) => {
            if matches!(error, ServiceError::Store(_) | ServiceError::Bank(_)) {
                tracing::warn!(error = %error, route = %format!("{method} {path}"), "request failed");
            }
            error.into_problem().into_response()
        }
    }
}
