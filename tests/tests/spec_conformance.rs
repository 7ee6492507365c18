//! Every request the connector sends is checked against the Berlin Group OpenAPI file:
//! required headers and query parameters, parameter formats, and the JSON bodies.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chrono::{Days, Utc};
use infra::sandbox::SandboxConfig;
use integration_tests::Sandbox;
use integration_tests::spec::{RecordedRequest, Spec};
use shared::bank::{
    BookingStatus, ConsentAccess, ConsentRequest, PaymentInitiation, PaymentProduct, PsuContext,
    RedirectUris, TransactionQuery,
};
use shared::domain::{Currency, Iban, Money, RequestId};

const PSU_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

fn recorded(sandbox_entry: &serde_json::Value) -> RecordedRequest {
    let bank = sandbox_entry["bank"].as_str().unwrap();
    let path = sandbox_entry["path"].as_str().unwrap();
    let path = path
        .strip_prefix(&format!("/{bank}"))
        .unwrap_or(path)
        .to_owned();
    let query = match &sandbox_entry["query"] {
        serde_json::Value::String(q) => url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect(),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        _ => vec![],
    };
    let headers: BTreeMap<String, String> = sandbox_entry["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.to_lowercase(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let body = match &sandbox_entry["body"] {
        serde_json::Value::Null => None,
        other => Some(other.clone()),
    };
    RecordedRequest {
        method: sandbox_entry["method"].as_str().unwrap().to_owned(),
        path,
        query,
        headers,
        body,
    }
}

#[tokio::test]
async fn every_connector_request_conforms_to_the_berlin_group_spec() {
    let sandbox = Sandbox::start(SandboxConfig {
        payment_step: Duration::from_millis(50),
        page_size: 20,
        ..SandboxConfig::default()
    })
    .await;
    let bank = sandbox.bank("lt-alpha");
    let redirect = RedirectUris {
        ok: "https://tpp.example/v1/callbacks/sca?state=abc"
            .parse()
            .unwrap(),
        nok: Some(
            "https://tpp.example/v1/callbacks/sca?state=abc&nok=1"
                .parse()
                .unwrap(),
        ),
    };

    // One of each call, through the real connector.
    let all = bank
        .create_consent(&ConsentRequest {
            access: ConsentAccess::AllAccounts,
            recurring: true,
            valid_until: Utc::now().date_naive() + Days::new(60),
            frequency_per_day: 4,
            psu_ip: PSU_IP,
            psu_id: Some("demo".into()),
            redirect: redirect.clone(),
        })
        .await
        .unwrap();
    sandbox
        .decide("lt-alpha", "consents", all.consent_id.as_str(), "approve")
        .await;
    bank.get_consent(&all.consent_id).await.unwrap();
    bank.consent_status(&all.consent_id).await.unwrap();
    let psu = PsuContext::present(PSU_IP);
    let accounts = bank.accounts(&all.consent_id, &psu).await.unwrap();
    let account = &accounts[0];
    bank.balances(&all.consent_id, &account.id, &PsuContext::absent())
        .await
        .unwrap();
    let query = TransactionQuery {
        booking_status: BookingStatus::Booked,
        date_from: Some(Utc::now().date_naive() - Days::new(90)),
        date_to: Some(Utc::now().date_naive()),
    };
    bank.transactions(&all.consent_id, &account.id, &query, &psu)
        .await
        .unwrap();
    let narrowed = bank
        .create_consent(&ConsentRequest {
            access: ConsentAccess::Accounts {
                ibans: vec![account.iban.clone().unwrap()],
            },
            recurring: false,
            valid_until: Utc::now().date_naive() + Days::new(1),
            frequency_per_day: 1,
            psu_ip: PSU_IP,
            psu_id: None,
            redirect: redirect.clone(),
        })
        .await
        .unwrap();
    bank.delete_consent(&narrowed.consent_id).await.unwrap();
    let payment = PaymentInitiation {
        product: PaymentProduct::SepaCreditTransfers,
        request_id: RequestId::new(),
        debtor: account.iban.clone().unwrap(),
        creditor: Iban::parse("DE89370400440532013000").unwrap(),
        creditor_name: "Ona Onaitė".into(),
        amount: Money::parse_instructed("1500.05", Currency::parse("EUR").unwrap()).unwrap(),
        remittance: Some("Rent November".into()),
        end_to_end_id: Some("E2E-2026-11-21-1".into()),
        psu_ip: PSU_IP,
        redirect,
    };
    let initiated = bank.initiate_payment(&payment).await.unwrap();
    bank.initiate_payment(&payment).await.unwrap();
    bank.payment_status(PaymentProduct::SepaCreditTransfers, &initiated.payment_id)
        .await
        .unwrap();

    let log = sandbox.get_json("requests?bank=lt-alpha").await;
    let requests: Vec<RecordedRequest> = log.as_array().unwrap().iter().map(recorded).collect();
    let spec = Spec::load();

    let mut operations = HashMap::new();
    let mut problems = Vec::new();
    for r in &requests {
        *operations
            .entry(format!("{} {}", r.method, template_of(&r.path)))
            .or_insert(0) += 1;
        problems.extend(spec.check_request(r));
    }
    assert!(
        problems.is_empty(),
        "spec violations:\n{}",
        problems.join("\n")
    );
    for op in [
        "POST /v1/consents",
        "GET /v1/consents/{id}",
        "GET /v1/consents/{id}/status",
        "DELETE /v1/consents/{id}",
        "GET /v1/accounts",
        "GET /v1/accounts/{id}/balances",
        "GET /v1/accounts/{id}/transactions",
        "POST /v1/payments/sepa-credit-transfers",
        "GET /v1/payments/sepa-credit-transfers/{id}/status",
    ] {
        assert!(
            operations.contains_key(op),
            "no {op} recorded; saw {operations:?}"
        );
    }
    assert!(
        operations["GET /v1/accounts/{id}/transactions"] >= 2,
        "paged listing: {operations:?}"
    );

    // Headers the flows need beyond the spec's minimum.
    let consent_post = requests
        .iter()
        .find(|r| r.method == "POST" && r.path == "/v1/consents")
        .unwrap();
    assert_eq!(consent_post.headers["psu-ip-address"], PSU_IP.to_string());
    assert!(consent_post.headers.contains_key("tpp-redirect-uri"));
    assert!(consent_post.headers.contains_key("tpp-nok-redirect-uri"));
    let balances = requests
        .iter()
        .find(|r| r.path.ends_with("/balances"))
        .unwrap();
    assert!(
        !balances.headers.contains_key("psu-ip-address"),
        "a background read must not claim the PSU is present"
    );
    assert_eq!(balances.headers["consent-id"], all.consent_id.as_str());

    // X-Request-ID: unique per call, except the retried payment initiation.
    let mut ids: HashMap<&str, Vec<&RecordedRequest>> = HashMap::new();
    for r in &requests {
        ids.entry(r.headers["x-request-id"].as_str())
            .or_default()
            .push(r);
    }
    for (id, same) in &ids {
        if same.len() > 1 {
            assert!(
                same.iter()
                    .all(|r| r.method == "POST" && r.path.starts_with("/v1/payments/")),
                "X-Request-ID {id} reused outside a payment retry"
            );
            assert_eq!(*id, payment.request_id.to_string());
        }
    }
    assert_eq!(ids[payment.request_id.to_string().as_str()].len(), 2);
}

/// `/v1/accounts/abc/balances` → `/v1/accounts/{id}/balances` (for reporting only).
fn template_of(path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let is_id = matches!(
            (segs.get(1).copied(), i),
            (Some("consents" | "accounts"), 2) | (Some("payments"), 3)
        );
        out.push(if is_id { "{id}" } else { s });
    }
    format!("/{}", out.join("/"))
}
