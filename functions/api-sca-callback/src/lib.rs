//! `GET /v1/callbacks/sca?state=…`: the bank sends the browser here after SCA. The signed
//! state says which consent or payment it is about; it is verified and consumed once, then
//! the connections or the payments service finishes the job. The answer is a redirect to
//! the caller's `redirectUrl`, or a small page when there is none or the link is bad.

use std::collections::HashMap;

use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue};
use shared::http::{Request, Response};
use shared::sca_state::StateSubject;
use shared::services::connections::{CallbackOutcome, Connections};
use shared::services::payments::Payments;

/// The two services a callback can be about.
pub struct Services {
    pub connections: Connections,
    pub payments: Payments,
}

pub async fn handle(services: &Services, request: &Request) -> Response {
    let query: HashMap<String, String> = request
        .query_string_parameters
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut response = Response::default();
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    let outcome = match services.connections.verify_callback(&query).await {
        Ok(state) => match state.subject {
            StateSubject::Consent { .. } => services.connections.consent_callback(state).await,
            StateSubject::Payment { .. } => services.payments.sca_callback(state).await,
        },
        Err(page) => page,
    };
    match outcome {
        CallbackOutcome::Redirect { location } => {
            response.status_code = 302;
            if let Ok(value) = HeaderValue::from_str(location.as_str()) {
                headers.insert("location", value);
            }
        }
        CallbackOutcome::Page {
            status,
            title,
            message,
        } => {
            response.status_code = i64::from(status);
            headers.insert(
                "content-type",
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            headers.insert(
                "content-security-policy",
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            );
            response.body = Some(Body::Text(page(&title, &message)));
        }
    }
    response.headers = headers;
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(title: &str, message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem}}</style>\
         </head><body><h1>{t}</h1><p>{m}</p></body></html>",
        t = escape(title),
        m = escape(message)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_escape_text() {
        let html = super::page("<b>", "a & \"b\"");
        assert!(html.contains("&lt;b&gt;") && html.contains("a &amp; &quot;b&quot;"));
        assert!(!html.contains("<b>"));
    }
}
