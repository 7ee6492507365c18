//! `GET /healthz` and `GET /v1/banks`: the routes that need no token.

use serde::Serialize;
use shared::bank::PaymentProduct;
use shared::bank::registry::BankRegistry;
use shared::domain::{BankId, Currency};
use shared::http::{self, Problem, Request, Response};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BankView<'a> {
    id: &'a BankId,
    name: &'a str,
    country: &'a str,
    capabilities: Capabilities<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Capabilities<'a> {
    account_information: bool,
    max_consent_days: u32,
    frequency_per_day: u32,
    payment_products: &'a [PaymentProduct],
    payment_currencies: &'a [Currency],
    bulk_payments: bool,
}

/// The whole function: built once per cold start, then called per request.
pub struct ApiPublic {
    registry: BankRegistry,
}

impl ApiPublic {
    pub fn new(registry: BankRegistry) -> Self {
        Self { registry }
    }

    pub fn handle(&self, request: &Request) -> Response {
        let (method, path) = http::route(request);
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => http::json(200, &serde_json::json!({ "status": "ok" })),
            ("GET", "/v1/banks") => {
                let banks: Vec<BankView<'_>> = self
                    .registry
                    .banks()
                    .iter()
                    .map(|b| BankView {
                        id: &b.id,
                        name: &b.name,
                        country: &b.country,
                        capabilities: Capabilities {
                            account_information: true,
                            max_consent_days: b.max_consent_days,
                            frequency_per_day: b.frequency_per_day,
                            payment_products: &b.payment_products,
                            payment_currencies: &b.payment_currencies,
                            bulk_payments: true,
                        },
                    })
                    .collect();
                http::json(200, &serde_json::json!({ "banks": banks }))
            }
            _ => Problem::not_found().into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> Request {
        serde_json::from_value(serde_json::json!({
            "version": "2.0", "routeKey": format!("{method} {path}"), "rawPath": path, "rawQueryString": "",
            "headers": {}, "isBase64Encoded": false,
            "requestContext": {"accountId": "123456789012", "apiId": "local", "domainName": "localhost",
                "domainPrefix": "localhost", "requestId": "r", "routeKey": format!("{method} {path}"), "stage": "$default",
                "time": "21/Nov/2026:13:00:00 +0000", "timeEpoch": 0,
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "t"}}
        }))
        .unwrap()
    }

    fn api() -> ApiPublic {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/banks.json");
        let text = std::fs::read_to_string(path).unwrap();
        ApiPublic::new(BankRegistry::from_json_with(&text, |_| None).unwrap())
    }

    fn body(r: &Response) -> serde_json::Value {
        match &r.body {
            Some(aws_lambda_events::encodings::Body::Text(t)) => serde_json::from_str(t).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lists_the_registry_banks() {
        let r = api().handle(&request("GET", "/v1/banks"));
        assert_eq!(r.status_code, 200);
        let b = body(&r);
        let ids: Vec<_> = b["banks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["lt-alpha", "lv-baltija", "ee-pohja"]);
        assert_eq!(b["banks"][1]["capabilities"]["maxConsentDays"], 90);
        assert_eq!(
            b["banks"][0]["capabilities"]["paymentProducts"][0],
            "sepa-credit-transfers"
        );
    }

    #[test]
    fn health_and_unknown_routes() {
        assert_eq!(
            body(&api().handle(&request("GET", "/healthz")))["status"],
            "ok"
        );
        let r = api().handle(&request("POST", "/v1/banks"));
        assert_eq!(r.status_code, 404);
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert_eq!(body(&r)["status"], 404);
    }
}
