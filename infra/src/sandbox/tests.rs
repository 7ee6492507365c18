//! End-to-end tests against a spawned sandbox over HTTP.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{Days, Utc};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

use super::{SandboxConfig, SandboxHandle, spawn};

const TPP_OK: &str = "https://tpp.example/callback?state=ok";
const TPP_NOK: &str = "https://tpp.example/callback?state=nok";
const PSU_IP: &str = "192.168.8.78";

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn start(config: SandboxConfig) -> (SandboxHandle, Client) {
    let sandbox = spawn(config).await.expect("sandbox starts");
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    (sandbox, client)
}

async fn body(resp: Response) -> Value {
    let text = resp.text().await.unwrap();
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

fn error_code(v: &Value) -> &str {
    v["tppMessages"][0]["code"].as_str().unwrap_or("")
}

fn valid_until(days: u64) -> String {
    (Utc::now().date_naive() + Days::new(days)).to_string()
}

fn consent_request(frequency: u32) -> Value {
    json!({
        "access": { "allPsd2": "allAccounts" },
        "recurringIndicator": true,
        "validUntil": valid_until(30),
        "frequencyPerDay": frequency,
        "combinedServiceIndicator": false
    })
}

async fn post_consent(client: &Client, sb: &SandboxHandle, bank: &str, req: &Value) -> Response {
    client
        .post(format!("{}/v1/consents", sb.bank_url(bank)))
        .header("X-Request-ID", rid())
        .header("PSU-IP-Address", PSU_IP)
        .header("TPP-Redirect-URI", TPP_OK)
        .header("TPP-Nok-Redirect-URI", TPP_NOK)
        .json(req)
        .send()
        .await
        .unwrap()
}

async fn admin_sca(
    client: &Client,
    sb: &SandboxHandle,
    bank: &str,
    kind: &str,
    id: &str,
    decision: &str,
) -> (StatusCode, Value) {
    let resp = client
        .post(format!(
            "{}/__admin/sca/{bank}/{kind}/{id}?decision={decision}",
            sb.base_url
        ))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, body(resp).await)
}

/// Creates and approves an allPsd2 consent; returns its id.
async fn valid_consent(client: &Client, sb: &SandboxHandle, bank: &str, frequency: u32) -> String {
    let resp = post_consent(client, sb, bank, &consent_request(frequency)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v = body(resp).await;
    let id = v["consentId"].as_str().unwrap().to_owned();
    let (status, decided) = admin_sca(client, sb, bank, "consents", &id, "approve").await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    id
}

async fn ais_get(
    client: &Client,
    sb: &SandboxHandle,
    bank: &str,
    path_and_query: &str,
    consent: &str,
    psu_ip: bool,
) -> Response {
    let url = if path_and_query.starts_with('/') {
        format!("{}{path_and_query}", sb.base_url)
    } else {
        format!("{}/v1/{path_and_query}", sb.bank_url(bank))
    };
    let mut req = client
        .get(url)
        .header("X-Request-ID", rid())
        .header("Consent-ID", consent);
    if psu_ip {
        req = req.header("PSU-IP-Address", PSU_IP);
    }
    req.send().await.unwrap()
}

fn payment_request(creditor_name: &str, creditor_iban: &str, amount: &str) -> Value {
    json!({
        "debtorAccount": { "iban": "LT121000011101001000" },
        "instructedAmount": { "currency": "EUR", "amount": amount },
        "creditorAccount": { "iban": creditor_iban },
        "creditorName": creditor_name,
        "remittanceInformationUnstructured": "Invoice 2024-001",
        "endToEndIdentification": "E2E-TEST-1"
    })
}

async fn post_payment(
    client: &Client,
    sb: &SandboxHandle,
    bank: &str,
    product: &str,
    request_id: &str,
    req: &Value,
) -> Response {
    client
        .post(format!("{}/v1/payments/{product}", sb.bank_url(bank)))
        .header("X-Request-ID", request_id)
        .header("PSU-IP-Address", PSU_IP)
        .header("TPP-Redirect-URI", TPP_OK)
        .header("TPP-Nok-Redirect-URI", TPP_NOK)
        .json(req)
        .send()
        .await
        .unwrap()
}

async fn payment_status(
    client: &Client,
    sb: &SandboxHandle,
    bank: &str,
    product: &str,
    id: &str,
) -> String {
    let resp = client
        .get(format!(
            "{}/v1/payments/{product}/{id}/status",
            sb.bank_url(bank)
        ))
        .header("X-Request-ID", rid())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    body(resp).await["transactionStatus"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_for_status(
    client: &Client,
    sb: &SandboxHandle,
    product: &str,
    id: &str,
    want: &str,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        let s = payment_status(client, sb, "lt-alpha", product, id).await;
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == want {
            return seen;
        }
        assert!(Instant::now() < deadline, "never reached {want}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn valid_test_ibans() {
    assert!(super::util::is_valid_iban("LT121000011101001000"));
}

#[tokio::test]
async fn consent_sca_accounts_balances_and_paged_transactions() {
    let (sb, client) = start(SandboxConfig::default()).await;
    assert_eq!(sb.bank_url("lt-alpha"), format!("{}/lt-alpha", sb.base_url));

    let resp = post_consent(&client, &sb, "lt-alpha", &consent_request(4)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["aspsp-sca-approach"], "REDIRECT");
    let created = body(resp).await;
    assert_eq!(created["consentStatus"], "received");
    let id = created["consentId"].as_str().unwrap().to_owned();
    let links = &created["_links"];
    assert_eq!(
        links["scaRedirect"]["href"],
        format!("{}/lt-alpha/sca/consents/{id}", sb.base_url)
    );
    assert_eq!(links["self"]["href"], format!("/lt-alpha/v1/consents/{id}"));
    assert_eq!(
        links["status"]["href"],
        format!("/lt-alpha/v1/consents/{id}/status")
    );
    let sca_status_href = links["scaStatus"]["href"].as_str().unwrap().to_owned();

    // Not yet authorised.
    let resp = ais_get(&client, &sb, "lt-alpha", "accounts", &id, true).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body(resp).await), "CONSENT_INVALID");
    let resp = ais_get(&client, &sb, "lt-alpha", &sca_status_href, &id, true).await;
    assert_eq!(body(resp).await["scaStatus"], "received");

    let (status, decided) = admin_sca(&client, &sb, "lt-alpha", "consents", &id, "approve").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decided, json!({ "status": "valid", "redirect": TPP_OK }));
    let (status, _) = admin_sca(&client, &sb, "lt-alpha", "consents", &id, "deny").await;
    assert_eq!(status, StatusCode::CONFLICT);

    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("consents/{id}/status"),
        &id,
        true,
    )
    .await;
    assert_eq!(body(resp).await, json!({ "consentStatus": "valid" }));
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("consents/{id}"),
        &id,
        true,
    )
    .await;
    let info = body(resp).await;
    assert_eq!(info["access"], json!({ "allPsd2": "allAccounts" }));
    assert_eq!(info["frequencyPerDay"], 4);
    assert_eq!(info["validUntil"], valid_until(30));
    assert!(info["lastActionDate"].is_string());
    let resp = ais_get(&client, &sb, "lt-alpha", &sca_status_href, &id, true).await;
    assert_eq!(body(resp).await["scaStatus"], "finalised");

    // Accounts.
    let resp = ais_get(&client, &sb, "lt-alpha", "accounts", &id, true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let accounts = body(resp).await;
    let list = accounts["accounts"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let kinds: Vec<(&str, &str)> = list
        .iter()
        .map(|a| {
            (
                a["currency"].as_str().unwrap(),
                a["cashAccountType"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("EUR", "CACC"), ("EUR", "SVGS"), ("USD", "CACC")]);
    for a in list {
        let iban = a["iban"].as_str().unwrap();
        assert!(iban.starts_with("LT") && iban.len() == 20);
        assert!(super::util::is_valid_iban(iban));
        assert_eq!(a["status"], "enabled");
        assert_eq!(a["usage"], "PRIV");
    }
    let main = &list[0];
    let resource_id = main["resourceId"].as_str().unwrap();
    assert_eq!(
        main["_links"]["transactions"]["href"],
        format!("/lt-alpha/v1/accounts/{resource_id}/transactions")
    );

    // Balances.
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        main["_links"]["balances"]["href"].as_str().unwrap(),
        &id,
        true,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let balances = body(resp).await;
    assert_eq!(balances["account"]["iban"], main["iban"]);
    let types: Vec<&str> = balances["balances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["balanceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["interimAvailable", "closingBooked"]);
    let amount = balances["balances"][0]["balanceAmount"]["amount"]
        .as_str()
        .unwrap();
    assert!(super::util::parse_amount(amount).is_some(), "{amount}");

    // Transactions, following next links.
    let date_from = (Utc::now().date_naive() - Days::new(200)).to_string();
    let first =
        format!("accounts/{resource_id}/transactions?bookingStatus=booked&dateFrom={date_from}");
    let mut url = format!("/lt-alpha/v1/{first}");
    let mut pages = 0;
    let mut ids = HashSet::new();
    let mut total = 0;
    loop {
        let resp = ais_get(&client, &sb, "lt-alpha", &url, &id, true).await;
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        let v = body(resp).await;
        let report = &v["transactions"];
        let booked = report["booked"].as_array().unwrap();
        assert!(report.get("pending").is_none());
        assert!(booked.len() <= 50);
        assert_eq!(
            report["_links"]["first"]["href"],
            format!("/lt-alpha/v1/{first}&pageIndex=0")
        );
        for t in booked {
            assert!(ids.insert(t["transactionId"].as_str().unwrap().to_owned()));
            let amount = t["transactionAmount"]["amount"].as_str().unwrap();
            let parsed = super::util::parse_amount(amount).unwrap();
            assert_eq!(parsed.decimals, 2);
            if parsed.thousandths < 0 {
                assert!(t["creditorName"].is_string(), "{t}");
            } else {
                assert!(t["debtorName"].is_string(), "{t}");
            }
            if let Some(mcc) = t["merchantCategoryCode"].as_str() {
                assert_eq!(mcc.len(), 4);
            }
            assert!(t["bookingDate"].is_string() && t["valueDate"].is_string());
            assert!(t["bankTransactionCode"].is_string());
            assert!(t["entryReference"].is_string());
        }
        total += booked.len();
        pages += 1;
        match report["_links"]["next"]["href"].as_str() {
            Some(next) => {
                assert_eq!(booked.len(), 50);
                assert!(
                    next.starts_with(&format!("/lt-alpha/v1/{first}&pageIndex=")),
                    "{next}"
                );
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert!(pages >= 2, "only {pages} page(s)");
    assert_eq!(ids.len(), total);

    // Same request, same data.
    let a = body(
        ais_get(
            &client,
            &sb,
            "lt-alpha",
            &format!("/lt-alpha/v1/{first}"),
            &id,
            true,
        )
        .await,
    )
    .await;
    let b = body(
        ais_get(
            &client,
            &sb,
            "lt-alpha",
            &format!("/lt-alpha/v1/{first}"),
            &id,
            true,
        )
        .await,
    )
    .await;
    assert_eq!(a, b);

    // both + itemsPerPage.
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("accounts/{resource_id}/transactions?bookingStatus=both&itemsPerPage=5"),
        &id,
        true,
    )
    .await;
    let v = body(resp).await;
    let pending = v["transactions"]["pending"].as_array().unwrap();
    let booked = v["transactions"]["booked"].as_array().unwrap();
    assert_eq!(pending.len() + booked.len(), 5);
    assert!(!pending.is_empty());
    assert!(
        v["transactions"]["_links"]["next"]["href"]
            .as_str()
            .unwrap()
            .ends_with("itemsPerPage=5&pageIndex=1")
    );

    // Unknown account.
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        "accounts/nope/balances",
        &id,
        true,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body(resp).await), "RESOURCE_UNKNOWN");

    // Termination by the TPP.
    let resp = client
        .delete(format!("{}/v1/consents/{id}", sb.bank_url("lt-alpha")))
        .header("X-Request-ID", rid())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("consents/{id}/status"),
        &id,
        true,
    )
    .await;
    assert_eq!(body(resp).await["consentStatus"], "terminatedByTpp");
    let resp = ais_get(&client, &sb, "lt-alpha", "accounts", &id, true).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body(resp).await), "CONSENT_INVALID");
}

#[tokio::test]
async fn frequency_per_day_limits_unattended_reads() {
    let (sb, client) = start(SandboxConfig {
        page_size: 20,
        ..SandboxConfig::default()
    })
    .await;
    let id = valid_consent(&client, &sb, "lv-baltija", 2).await;
    for _ in 0..2 {
        let resp = ais_get(&client, &sb, "lv-baltija", "accounts", &id, false).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = ais_get(&client, &sb, "lv-baltija", "accounts", &id, false).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&body(resp).await), "ACCESS_EXCEEDED");
    // PSU-initiated reads are not limited.
    let resp = ais_get(&client, &sb, "lv-baltija", "accounts", &id, true).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let accounts = body(resp).await;
    let list = accounts["accounts"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[1]["currency"], "GBP");
    assert_eq!(list[0]["iban"].as_str().unwrap().len(), 21);
    let acc = list[0]["resourceId"].as_str().unwrap();

    // Counted per resource: balances has its own budget.
    let balances = format!("accounts/{acc}/balances");
    for _ in 0..2 {
        let resp = ais_get(&client, &sb, "lv-baltija", &balances, &id, false).await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = ais_get(&client, &sb, "lv-baltija", &balances, &id, false).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);

    // Follow-up pages do not count.
    let tx = format!("accounts/{acc}/transactions?bookingStatus=booked");
    let resp = ais_get(&client, &sb, "lv-baltija", &tx, &id, false).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = body(resp).await;
    let mut next = v["transactions"]["_links"]["next"]["href"]
        .as_str()
        .map(str::to_owned);
    let mut followed = 0;
    while let Some(url) = next {
        let resp = ais_get(&client, &sb, "lv-baltija", &url, &id, false).await;
        assert_eq!(resp.status(), StatusCode::OK);
        next = body(resp).await["transactions"]["_links"]["next"]["href"]
            .as_str()
            .map(str::to_owned);
        followed += 1;
    }
    assert!(followed >= 2);
    let resp = ais_get(&client, &sb, "lv-baltija", &tx, &id, false).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = ais_get(&client, &sb, "lv-baltija", &tx, &id, false).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn request_validation_and_consent_errors() {
    let (sb, client) = start(SandboxConfig::default()).await;
    let id = valid_consent(&client, &sb, "lt-alpha", 10).await;
    let resp = ais_get(&client, &sb, "lt-alpha", "accounts", &id, true).await;
    let acc = body(resp).await["accounts"][0]["resourceId"]
        .as_str()
        .unwrap()
        .to_owned();

    // bookingStatus is mandatory.
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("accounts/{acc}/transactions"),
        &id,
        true,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body(resp).await), "FORMAT_ERROR");
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("accounts/{acc}/transactions?bookingStatus=later"),
        &id,
        true,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body(resp).await), "FORMAT_ERROR");
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("accounts/{acc}/transactions?bookingStatus=booked&dateFrom=2024-13-01"),
        &id,
        true,
    )
    .await;
    assert_eq!(error_code(&body(resp).await), "FORMAT_ERROR");
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!(
            "accounts/{acc}/transactions?bookingStatus=booked&dateFrom=2024-05-02&dateTo=2024-05-01"
        ),
        &id,
        true,
    )
    .await;
    assert_eq!(error_code(&body(resp).await), "PERIOD_INVALID");

    // X-Request-ID must be a UUID.
    let resp = client
        .get(format!("{}/v1/accounts", sb.bank_url("lt-alpha")))
        .header("Consent-ID", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body(resp).await), "FORMAT_ERROR");
    let resp = client
        .get(format!("{}/v1/accounts", sb.bank_url("lt-alpha")))
        .header("X-Request-ID", "not-a-uuid")
        .header("Consent-ID", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Consent-ID header.
    let resp = client
        .get(format!("{}/v1/accounts", sb.bank_url("lt-alpha")))
        .header("X-Request-ID", rid())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(&body(resp).await), "FORMAT_ERROR");
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        "accounts",
        "unknown-consent",
        true,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body(resp).await), "CONSENT_UNKNOWN");
    // Consents are per bank.
    let resp = ais_get(&client, &sb, "lv-baltija", "accounts", &id, true).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        "consents/unknown-consent",
        &id,
        true,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body(resp).await), "CONSENT_UNKNOWN");

    // Unknown bank.
    let resp = ais_get(&client, &sb, "xx-nobank", "accounts", &id, true).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body(resp).await), "RESOURCE_UNKNOWN");

    // Consent request validation.
    let mut req = consent_request(1);
    req["validUntil"] = json!(valid_until(181));
    let resp = post_consent(&client, &sb, "lt-alpha", &req).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    req["validUntil"] = json!("2020-01-01");
    let resp = post_consent(&client, &sb, "lt-alpha", &req).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    req["validUntil"] = json!("01.01.2030");
    let resp = post_consent(&client, &sb, "lt-alpha", &req).await;
    assert_eq!(error_code(&body(resp).await), "FORMAT_ERROR");
    let mut req = consent_request(1);
    req["frequencyPerDay"] = json!(0);
    let resp = post_consent(&client, &sb, "lt-alpha", &req).await;
    assert_eq!(error_code(&body(resp).await), "FORMAT_ERROR");
    let mut req = consent_request(1);
    req.as_object_mut().unwrap().remove("recurringIndicator");
    let resp = post_consent(&client, &sb, "lt-alpha", &req).await;
    assert_eq!(error_code(&body(resp).await), "FORMAT_ERROR");
    let resp = client
        .post(format!("{}/v1/consents", sb.bank_url("lt-alpha")))
        .header("X-Request-ID", rid())
        .header("TPP-Redirect-URI", TPP_OK)
        .json(&consent_request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(&body(resp).await),
        "FORMAT_ERROR",
        "PSU-IP-Address is required"
    );

    // Admin-driven status changes.
    let post_status = |status: &'static str, consent: String| {
        let client = client.clone();
        let url = format!("{}/__admin/consents/lt-alpha/{consent}/status", sb.base_url);
        async move {
            client
                .post(url)
                .json(&json!({ "consentStatus": status }))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(post_status("expired", id.clone()).await, StatusCode::OK);
    let resp = ais_get(&client, &sb, "lt-alpha", "accounts", &id, true).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body(resp).await), "CONSENT_EXPIRED");
    assert_eq!(
        post_status("revokedByPsu", id.clone()).await,
        StatusCode::OK
    );
    let resp = ais_get(&client, &sb, "lt-alpha", "accounts", &id, true).await;
    assert_eq!(error_code(&body(resp).await), "CONSENT_INVALID");
    assert_eq!(
        post_status("bogus", id.clone()).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post_status("expired", "nope".into()).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn restricted_consent_and_oauth_bank() {
    let (sb, client) = start(SandboxConfig::default()).await;
    // Learn the PSU's accounts through a global consent first.
    let global = valid_consent(&client, &sb, "lt-alpha", 10).await;
    let list = body(ais_get(&client, &sb, "lt-alpha", "accounts", &global, true).await).await;
    let eur = list["accounts"][0].clone();
    let usd = list["accounts"][2].clone();

    let req = json!({
        "access": {
            "accounts": [{ "iban": eur["iban"] }, { "iban": usd["iban"] }],
            "balances": [{ "iban": eur["iban"] }],
        },
        "recurringIndicator": false,
        "validUntil": valid_until(1),
        "frequencyPerDay": 1,
        "combinedServiceIndicator": false
    });
    let resp = post_consent(&client, &sb, "lt-alpha", &req).await;
    let id = body(resp).await["consentId"].as_str().unwrap().to_owned();
    admin_sca(&client, &sb, "lt-alpha", "consents", &id, "approve").await;
    let list = body(ais_get(&client, &sb, "lt-alpha", "accounts", &id, true).await).await;
    let accounts = list["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    assert!(accounts[0]["_links"]["balances"].is_object());
    assert!(accounts[0]["_links"].get("transactions").is_none());
    let tx = format!(
        "accounts/{}/transactions?bookingStatus=booked",
        eur["resourceId"].as_str().unwrap()
    );
    let resp = ais_get(&client, &sb, "lt-alpha", &tx, &id, true).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body(resp).await), "CONSENT_INVALID");
    let usd_balances = format!(
        "accounts/{}/balances",
        list["accounts"][1]["resourceId"].as_str().unwrap()
    );
    let resp = ais_get(&client, &sb, "lt-alpha", &usd_balances, &id, true).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // ee-pohja names its SCA link scaOAuth.
    let resp = post_consent(&client, &sb, "ee-pohja", &consent_request(1)).await;
    assert_eq!(resp.headers()["aspsp-sca-approach"], "OAUTH");
    let v = body(resp).await;
    assert!(v["_links"].get("scaRedirect").is_none());
    let href = v["_links"]["scaOAuth"]["href"].as_str().unwrap();
    assert!(href.starts_with(&format!("{}/ee-pohja/sca/consents/", sb.base_url)));
    let id = v["consentId"].as_str().unwrap();
    admin_sca(&client, &sb, "ee-pohja", "consents", id, "approve").await;
    let list = body(ais_get(&client, &sb, "ee-pohja", "accounts", id, true).await).await;
    let iban = list["accounts"][0]["iban"].as_str().unwrap();
    assert!(iban.starts_with("EE") && iban.len() == 20);

    // Another PSU gets other accounts.
    let resp = client
        .post(format!("{}/v1/consents", sb.bank_url("ee-pohja")))
        .header("X-Request-ID", rid())
        .header("PSU-IP-Address", PSU_IP)
        .header("PSU-ID", "someone-else")
        .header("TPP-Redirect-URI", TPP_OK)
        .json(&consent_request(1))
        .send()
        .await
        .unwrap();
    let other = body(resp).await["consentId"].as_str().unwrap().to_owned();
    admin_sca(&client, &sb, "ee-pohja", "consents", &other, "approve").await;
    let list2 = body(ais_get(&client, &sb, "ee-pohja", "accounts", &other, true).await).await;
    assert_ne!(list2["accounts"][0]["iban"].as_str().unwrap(), iban);
}

#[tokio::test]
async fn sca_html_pages() {
    let (sb, client) = start(SandboxConfig::default()).await;
    let resp = post_consent(&client, &sb, "lt-alpha", &consent_request(1)).await;
    let v = body(resp).await;
    let sca = v["_links"]["scaRedirect"]["href"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = client.get(&sca).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("Alpha Bankas"));
    assert!(html.contains("value=\"approve\"") && html.contains("value=\"deny\""));
    let submit = |decision: &'static str| {
        client
            .post(&sca)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("decision={decision}"))
            .send()
    };
    let resp = submit("deny").await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], TPP_NOK);
    let resp = submit("approve").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let id = v["consentId"].as_str().unwrap();
    let resp = ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("consents/{id}/status"),
        id,
        true,
    )
    .await;
    assert_eq!(body(resp).await["consentStatus"], "rejected");

    // Payment page, approve.
    let resp = post_payment(
        &client,
        &sb,
        "lt-alpha",
        "sepa-credit-transfers",
        &rid(),
        &payment_request("Jonas Jonaitis", "DE89370400440532013000", "99.95"),
    )
    .await;
    let v = body(resp).await;
    let sca = v["_links"]["scaRedirect"]["href"]
        .as_str()
        .unwrap()
        .to_owned();
    let html = client.get(&sca).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("99.95 EUR") && html.contains("Jonas Jonaitis"));
    let resp = client
        .post(&sca)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("decision=approve")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], TPP_OK);
    let resp = client
        .post(&sca)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("decision=maybe")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = client
        .get(format!("{}/lt-alpha/sca/payments/unknown", sb.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn payment_dedup_by_request_id() {
    let (sb, client) = start(SandboxConfig::default()).await;
    let request_id = rid();
    let req = payment_request("Jonas Jonaitis", "DE89370400440532013000", "12.30");
    let first = post_payment(
        &client,
        &sb,
        "lt-alpha",
        "sepa-credit-transfers",
        &request_id,
        &req,
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(first.headers()["x-request-id"], request_id.as_str());
    let first = body(first).await;
    assert_eq!(first["transactionStatus"], "RCVD");
    let second = post_payment(
        &client,
        &sb,
        "lt-alpha",
        "sepa-credit-transfers",
        &request_id,
        &req,
    )
    .await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(body(second).await, first);
    // Same X-Request-ID at another bank is another payment.
    let other = post_payment(
        &client,
        &sb,
        "lv-baltija",
        "sepa-credit-transfers",
        &request_id,
        &req,
    )
    .await;
    assert_eq!(other.status(), StatusCode::CREATED);
    assert_ne!(body(other).await["paymentId"], first["paymentId"]);
    let third = post_payment(
        &client,
        &sb,
        "lt-alpha",
        "sepa-credit-transfers",
        &rid(),
        &req,
    )
    .await;
    assert_ne!(body(third).await["paymentId"], first["paymentId"]);

    let counts = body(
        client
            .get(format!("{}/__admin/counts", sb.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(counts["paymentInitiations"]["lt-alpha"], 2);
    assert_eq!(counts["paymentInitiations"]["lv-baltija"], 1);
    assert_eq!(counts["paymentInitiations"]["ee-pohja"], 0);
    assert_eq!(
        counts["byOperation"]["lt-alpha POST /v1/payments/{payment-product}"],
        3
    );
    assert_eq!(counts["byBank"]["lt-alpha"], 3);
    assert_eq!(counts["total"], 4);

    // GET the payment.
    let id = first["paymentId"].as_str().unwrap();
    let resp = client
        .get(format!(
            "{}/v1/payments/sepa-credit-transfers/{id}",
            sb.bank_url("lt-alpha")
        ))
        .header("X-Request-ID", rid())
        .send()
        .await
        .unwrap();
    let v = body(resp).await;
    assert_eq!(v["transactionStatus"], "RCVD");
    assert_eq!(
        v["instructedAmount"],
        json!({ "currency": "EUR", "amount": "12.30" })
    );
    assert_eq!(v["creditorName"], "Jonas Jonaitis");
    let resp = client
        .get(format!(
            "{}/v1/payments/sepa-credit-transfers/unknown",
            sb.bank_url("lt-alpha")
        ))
        .header("X-Request-ID", rid())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body(resp).await), "RESOURCE_UNKNOWN");
}

#[tokio::test]
async fn payment_validation_and_products() {
    let (sb, client) = start(SandboxConfig::default()).await;
    let ok = payment_request("Jonas Jonaitis", "DE89370400440532013000", "12.30");
    for (bank, product, status) in [
        ("lt-alpha", "sepa-credit-transfers", StatusCode::CREATED),
        (
            "lt-alpha",
            "instant-sepa-credit-transfers",
            StatusCode::CREATED,
        ),
        (
            "lt-alpha",
            "cross-border-credit-transfers",
            StatusCode::CREATED,
        ),
        (
            "lv-baltija",
            "instant-sepa-credit-transfers",
            StatusCode::CREATED,
        ),
        (
            "lv-baltija",
            "cross-border-credit-transfers",
            StatusCode::NOT_FOUND,
        ),
        ("ee-pohja", "sepa-credit-transfers", StatusCode::CREATED),
        (
            "ee-pohja",
            "instant-sepa-credit-transfers",
            StatusCode::NOT_FOUND,
        ),
        ("lt-alpha", "target-2-payments", StatusCode::NOT_FOUND),
    ] {
        let resp = post_payment(&client, &sb, bank, product, &rid(), &ok).await;
        assert_eq!(resp.status(), status, "{bank} {product}");
        if status == StatusCode::NOT_FOUND {
            assert_eq!(error_code(&body(resp).await), "PRODUCT_UNKNOWN");
        }
    }
    let bad = |f: &dyn Fn(&mut Value)| {
        let mut v = ok.clone();
        f(&mut v);
        v
    };
    for req in [
        bad(&|v| v["instructedAmount"]["amount"] = json!("12.345")),
        bad(&|v| v["instructedAmount"]["amount"] = json!("-5.00")),
        bad(&|v| v["instructedAmount"]["amount"] = json!("abc")),
        bad(&|v| v["instructedAmount"]["currency"] = json!("USD")),
        bad(&|v| v["creditorAccount"]["iban"] = json!("DE00370400440532013000")),
        bad(&|v| v["debtorAccount"] = json!({})),
        bad(&|v| v["creditorName"] = json!("x".repeat(71))),
        bad(&|v| {
            v.as_object_mut().unwrap().remove("creditorName");
        }),
    ] {
        let resp = post_payment(
            &client,
            &sb,
            "lt-alpha",
            "sepa-credit-transfers",
            &rid(),
            &req,
        )
        .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{req}");
        assert_eq!(error_code(&body(resp).await), "FORMAT_ERROR");
    }
    let mut usd = ok.clone();
    usd["instructedAmount"]["currency"] = json!("USD");
    let resp = post_payment(
        &client,
        &sb,
        "lt-alpha",
        "cross-border-credit-transfers",
        &rid(),
        &usd,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = client
        .post(format!(
            "{}/v1/payments/sepa-credit-transfers",
            sb.bank_url("lt-alpha")
        ))
        .header("X-Request-ID", rid())
        .header("TPP-Redirect-URI", TPP_OK)
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "PSU-IP-Address is required"
    );
}

#[tokio::test]
async fn payment_progresses_to_acsc() {
    let (sb, client) = start(SandboxConfig {
        payment_step: Duration::from_millis(50),
        ..SandboxConfig::default()
    })
    .await;
    let product = "instant-sepa-credit-transfers";
    let resp = post_payment(
        &client,
        &sb,
        "lt-alpha",
        product,
        &rid(),
        &payment_request("Jonas Jonaitis", "DE89370400440532013000", "25.00"),
    )
    .await;
    let v = body(resp).await;
    let id = v["paymentId"].as_str().unwrap().to_owned();
    assert_eq!(
        payment_status(&client, &sb, "lt-alpha", product, &id).await,
        "RCVD"
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        payment_status(&client, &sb, "lt-alpha", product, &id).await,
        "RCVD"
    );
    let pending = |bank: &'static str| {
        let (client, url) = (
            client.clone(),
            format!("{}/__admin/pending-sca/{bank}", sb.base_url),
        );
        async move { body(client.get(url).send().await.unwrap()).await }
    };
    assert_eq!(pending("lt-alpha").await, json!({ "payments": [id] }));
    assert_eq!(pending("lv-baltija").await, json!({ "payments": [] }));
    let (status, decided) = admin_sca(&client, &sb, "lt-alpha", "payments", &id, "approve").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decided, json!({ "status": "ACTC", "redirect": TPP_OK }));
    assert_eq!(
        pending("lt-alpha").await,
        json!({ "payments": [] }),
        "approved: no longer pending"
    );
    let seen = wait_for_status(&client, &sb, product, &id, "ACSC").await;
    assert_eq!(seen.last().unwrap(), "ACSC");
    assert!(
        seen.iter()
            .all(|s| ["ACTC", "ACSP", "ACSC"].contains(&s.as_str())),
        "{seen:?}"
    );
    let sca_status = v["_links"]["scaStatus"]["href"].as_str().unwrap();
    let resp = client
        .get(format!("{}{sca_status}", sb.base_url))
        .header("X-Request-ID", rid())
        .send()
        .await
        .unwrap();
    assert_eq!(body(resp).await["scaStatus"], "finalised");
}

#[tokio::test]
async fn payment_rejection_rules() {
    let (sb, client) = start(SandboxConfig {
        payment_step: Duration::from_millis(50),
        ..SandboxConfig::default()
    })
    .await;
    let product = "sepa-credit-transfers";
    let create = |name: &'static str, iban: &'static str, amount: &'static str| {
        let client = client.clone();
        let sb = sb.clone();
        async move {
            let resp = post_payment(
                &client,
                &sb,
                "lt-alpha",
                product,
                &rid(),
                &payment_request(name, iban, amount),
            )
            .await;
            assert_eq!(resp.status(), StatusCode::CREATED);
            body(resp).await["paymentId"].as_str().unwrap().to_owned()
        }
    };

    // Creditor name containing REJECT: ACTC, then RJCT.
    let id = create("Please reject me", "DE89370400440532013000", "10.00").await;
    let (_, d) = admin_sca(&client, &sb, "lt-alpha", "payments", &id, "approve").await;
    assert_eq!(d["status"], "ACTC");
    let seen = wait_for_status(&client, &sb, product, &id, "RJCT").await;
    assert!(
        !seen.contains(&"ACSP".to_owned()) && !seen.contains(&"ACSC".to_owned()),
        "{seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        payment_status(&client, &sb, "lt-alpha", product, &id).await,
        "RJCT"
    );

    // Blocked creditor IBAN.
    let id = create("Jonas Jonaitis", super::REJECTED_CREDITOR_IBAN, "10.00").await;
    admin_sca(&client, &sb, "lt-alpha", "payments", &id, "approve").await;
    wait_for_status(&client, &sb, product, &id, "RJCT").await;

    // Over 50 000.00: RJCT right after SCA.
    let id = create("Jonas Jonaitis", "DE89370400440532013000", "50000.01").await;
    let (_, d) = admin_sca(&client, &sb, "lt-alpha", "payments", &id, "approve").await;
    assert_eq!(d["status"], "RJCT");

    // Denied SCA.
    let id = create("Jonas Jonaitis", "DE89370400440532013000", "10.00").await;
    let (_, d) = admin_sca(&client, &sb, "lt-alpha", "payments", &id, "deny").await;
    assert_eq!(d, json!({ "status": "RJCT", "redirect": TPP_NOK }));
    let (status, _) = admin_sca(&client, &sb, "lt-alpha", "payments", &id, "approve").await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn faults_at_full_rate() {
    let (sb, client) = start(SandboxConfig::default()).await;
    let faults = |body: Value| {
        let client = client.clone();
        let url = format!("{}/__admin/faults", sb.base_url);
        async move { client.put(url).json(&body).send().await.unwrap().status() }
    };
    let accounts = |bank: &'static str| {
        let client = client.clone();
        let url = format!("{}/v1/accounts", sb.bank_url(bank));
        async move {
            client
                .get(url)
                .header("X-Request-ID", rid())
                .header("Consent-ID", "whatever")
                .send()
                .await
                .unwrap()
        }
    };

    assert_eq!(faults(json!({ "errorRate": 1.0 })).await, StatusCode::OK);
    for _ in 0..5 {
        let resp = accounts("lt-alpha").await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error_code(&body(resp).await), "INTERNAL_SERVER_ERROR");
    }
    // Admin and health routes are never faulted.
    let resp = client
        .get(format!("{}/healthz", sb.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    assert_eq!(
        faults(json!({ "rateLimitRate": 1.0, "retryAfterSecs": 7 })).await,
        StatusCode::OK
    );
    for _ in 0..5 {
        let resp = accounts("lv-baltija").await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "7");
        assert_eq!(error_code(&body(resp).await), "ACCESS_EXCEEDED");
    }

    // Bank-specific faults leave other banks alone.
    let resp = client
        .delete(format!("{}/__admin/faults", sb.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        faults(json!({ "bank": "ee-pohja", "errorRate": 1.0, "errorStatus": 503 })).await,
        StatusCode::OK
    );
    let resp = accounts("ee-pohja").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = accounts("lt-alpha").await;
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "normal answer: unknown consent"
    );

    // Hang then answer.
    assert_eq!(
        faults(json!({ "bank": "lt-alpha", "hangRate": 1.0, "hangMs": 300 })).await,
        StatusCode::OK
    );
    let t0 = Instant::now();
    let resp = accounts("lt-alpha").await;
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    assert_eq!(
        faults(json!({ "errorRate": 1.5 })).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        faults(json!({ "bank": "nope" })).await,
        StatusCode::BAD_REQUEST
    );

    client
        .delete(format!("{}/__admin/faults", sb.base_url))
        .send()
        .await
        .unwrap();
    let resp = accounts("lt-alpha").await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // Faulted calls are counted too.
    let counts = body(
        client
            .get(format!("{}/__admin/counts", sb.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(counts["byOperation"]["lt-alpha GET /v1/accounts"], 8);
    assert_eq!(counts["byOperation"]["lv-baltija GET /v1/accounts"], 5);
    assert_eq!(counts["byBank"]["ee-pohja"], 1);
    assert_eq!(counts["total"], 14);
}

#[tokio::test]
async fn counts_request_log_and_reset() {
    let (sb, client) = start(SandboxConfig::default()).await;
    let id = valid_consent(&client, &sb, "lt-alpha", 10).await;
    let list = body(ais_get(&client, &sb, "lt-alpha", "accounts", &id, true).await).await;
    let acc = list["accounts"][0]["resourceId"]
        .as_str()
        .unwrap()
        .to_owned();
    ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("accounts/{acc}/transactions?bookingStatus=booked"),
        &id,
        false,
    )
    .await;
    ais_get(
        &client,
        &sb,
        "lt-alpha",
        &format!("accounts/{acc}/transactions?bookingStatus=pending"),
        &id,
        false,
    )
    .await;
    ais_get(&client, &sb, "lv-baltija", "accounts", &id, false).await;

    let counts = body(
        client
            .get(format!("{}/__admin/counts", sb.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(counts["total"], 5);
    assert_eq!(counts["byBank"]["lt-alpha"], 4);
    assert_eq!(counts["byBank"]["lv-baltija"], 1);
    assert_eq!(counts["byOperation"]["lt-alpha POST /v1/consents"], 1);
    assert_eq!(counts["byOperation"]["lt-alpha GET /v1/accounts"], 1);
    assert_eq!(
        counts["byOperation"]["lt-alpha GET /v1/accounts/{account-id}/transactions"],
        2
    );

    let log = body(
        client
            .get(format!("{}/__admin/requests?bank=lt-alpha", sb.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0]["method"], "POST");
    assert_eq!(log[0]["path"], "/lt-alpha/v1/consents");
    assert_eq!(log[0]["status"], 201);
    assert_eq!(log[0]["body"]["frequencyPerDay"], 10);
    assert_eq!(log[0]["headers"]["psu-ip-address"], PSU_IP);
    assert_eq!(log[2]["query"], "bookingStatus=booked");
    assert!(log[2]["body"].is_null());
    assert_eq!(log[2]["headers"]["consent-id"], id.as_str());
    let all = body(
        client
            .get(format!("{}/__admin/requests", sb.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(all.as_array().unwrap().len(), 5);
    assert_eq!(all[4]["status"], 403);

    let resp = client
        .delete(format!("{}/__admin/requests", sb.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let all = body(
        client
            .get(format!("{}/__admin/requests", sb.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(all, json!([]));

    let resp = client
        .post(format!("{}/__admin/reset", sb.base_url))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let counts = body(
        client
            .get(format!("{}/__admin/counts", sb.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(counts["total"], 0);
    let resp = ais_get(&client, &sb, "lt-alpha", "accounts", &id, true).await;
    assert_eq!(error_code(&body(resp).await), "CONSENT_UNKNOWN");
}

#[tokio::test]
async fn ecb_feed_and_health() {
    let (sb, client) = start(SandboxConfig::default()).await;
    let resp = client
        .get(format!("{}/healthz", sb.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .get(format!("{}/ecb/eurofxref-daily.xml", sb.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("xml")
    );
    let xml = resp.text().await.unwrap();
    assert!(xml.contains("<gesmes:Envelope"));
    assert!(xml.contains("<Cube time='"));
    for c in [
        "USD", "GBP", "JPY", "SEK", "NOK", "PLN", "CHF", "DKK", "CZK",
    ] {
        assert!(xml.contains(&format!("<Cube currency='{c}' rate='")), "{c}");
    }
    let again = client
        .get(format!("{}/ecb/eurofxref-daily.xml", sb.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(xml, again);
}
