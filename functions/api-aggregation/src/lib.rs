//! The aggregated read API: accounts, balances (converted to a base currency), merged and
//! categorised transactions, and spending by category, across all of the caller's valid
//! connections. `refresh=true` asks the banks now with the caller present
//! (`PSU-IP-Address`); otherwise data comes from the snapshot within the banks' daily
//! access limits. Every answer lists per-bank errors and the age of each bank's data.

use std::collections::HashMap;

use shared::http::{self, Problem, Request, Response};
use shared::services::ServiceError;
use shared::services::aggregation::Aggregation;

pub async fn handle(service: &Aggregation, request: &Request) -> Response {
    let user = match http::caller(request) {
        Ok(user) => user,
        Err(problem) => return problem.into_response(),
    };
    let (method, path) = http::route(request);
    let query: HashMap<String, String> = request
        .query_string_parameters
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let ip = http::source_ip(request);
    let outcome: Result<Response, ServiceError> = match (method.as_str(), path.as_str()) {
        ("GET", "/v1/accounts") => service
            .accounts(&user, &query, ip)
            .await
            .map(|a| http::json(200, &a)),
        ("GET", "/v1/balances") => service
            .balances(&user, &query, ip)
            .await
            .map(|a| http::json(200, &a)),
        ("GET", "/v1/transactions") => service
            .transactions(&user, &query, ip)
            .await
            .map(|a| http::json(200, &a)),
        ("GET", "/v1/insights/spending") => service
            .spending(&user, &query, ip)
            .await
            .map(|a| http::json(200, &a)),
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
