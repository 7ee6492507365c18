//! The connections API: link a bank (SCA by redirect), list and read connections, revoke
//! one, renew one now. The caller is the JWT `sub`; another user's connection is a 404.

use shared::http::{self, Problem, Request, Response};
use shared::services::ServiceError;
use shared::services::connections::Connections;

/// The user's IP address, sent to the bank as `PSU-IP-Address` (the user is present).
fn caller_ip(request: &Request) -> Result<std::net::IpAddr, Problem> {
    http::source_ip(request).ok_or_else(|| {
        Problem::new(
            400,
            "validation",
            "Invalid request",
            "The caller's IP address is unknown.",
        )
    })
}

pub async fn handle(service: &Connections, request: &Request) -> Response {
    let user = match http::caller(request) {
        Ok(user) => user,
        Err(problem) => return problem.into_response(),
    };
    let (method, path) = http::route(request);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let outcome: Result<Response, ServiceError> = match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "connections"]) => {
            let body = match http::body_bytes(request) {
                Ok(body) => body,
                Err(problem) => return problem.into_response(),
            };
            let ip = match caller_ip(request) {
                Ok(ip) => ip,
                Err(problem) => return problem.into_response(),
            };
            service
                .connect(&user, &body, ip)
                .await
                .map(|created| http::json(201, &created))
        }
        ("GET", ["v1", "connections"]) => service
            .list(&user)
            .await
            .map(|list| http::json(200, &serde_json::json!({ "connections": list }))),
        ("GET", ["v1", "connections", id]) => service
            .get(&user, id)
            .await
            .map(|view| http::json(200, &view)),
        ("DELETE", ["v1", "connections", id]) => {
            service.revoke(&user, id).await.map(|()| http::empty(204))
        }
        ("POST", ["v1", "connections", id, "renew"]) => {
            let ip = match caller_ip(request) {
                Ok(ip) => ip,
                Err(problem) => return problem.into_response(),
            };
            service
                .renew_now(&user, id, ip)
                .await
                .map(|created| http::json(201, &created))
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
