//! Bank connections end to end: the deployed functions (template.yaml) in the local
//! runtime, local AWS, and the sandbox bank's SCA (scripted approve/deny, which answers
//! with the redirect the browser would follow to our callback).

use integration_tests::Bundle;
use serde_json::{Value, json};

const SECRET: &str = "connections-e2e-secret";
const APP: &str = "http://127.0.0.1:3000/app/connected";

/// The body linking `bank` for 90 days, back to the app.
fn link(bank: &str) -> Value {
    json!({"bankId": bank, "validDays": 90, "redirectUrl": APP})
}

#[tokio::test]
async fn link_banks_authorise_list_isolate_and_revoke() {
    let w = Bundle::start(SECRET, &[]).await;
    use reqwest::Method;

    // Two banks for alice, one for bob.
    let alice_alpha = w.connect("alice", link("lt-alpha")).await;
    let alice_baltija = w.connect("alice", link("lv-baltija")).await;
    let bob_alpha = w.connect("bob", link("lt-alpha")).await;
    assert_eq!(alice_alpha["status"], "pending_authorization");
    assert!(
        alice_alpha["authUrl"]
            .as_str()
            .unwrap()
            .starts_with(&w.sandbox.handle.base_url)
    );
    assert_eq!(
        alice_baltija["validUntil"].as_str().unwrap().len(),
        10,
        "ISO date"
    );

    // The bank's redirect URL is our callback with the signed state.
    let callback = w.decide(&alice_alpha, "approve").await;
    assert!(
        callback.starts_with(&w.rt.url("/v1/callbacks/sca?state=")),
        "{callback}"
    );
    let (status, location) = w.follow(&callback).await;
    assert_eq!(status, 302);
    let location = location.unwrap();
    let alice_alpha_id = alice_alpha["connectionId"].as_str().unwrap();
    assert!(location.starts_with(APP), "{location}");
    assert!(
        location.contains("status=valid") && location.contains(alice_alpha_id),
        "{location}"
    );

    // Replayed, tampered or unknown states change nothing.
    let (status, _) = w.follow(&callback).await;
    assert_eq!(status, 409, "a state is single-use");
    let mut tampered = callback.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(w.follow(&tampered).await.0, 400);
    assert_eq!(w.follow(&w.rt.url("/v1/callbacks/sca")).await.0, 400);

    // A denied SCA ends rejected.
    let denied = w.decide(&alice_baltija, "deny").await;
    let (status, location) = w.follow(&denied).await;
    assert_eq!(status, 302);
    assert!(location.unwrap().contains("status=rejected"));

    // Listing: each user sees exactly their own.
    let (_, list) = w.call("alice", Method::GET, "/v1/connections", None).await;
    let mut states: Vec<(String, String)> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["bankId"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    states.sort();
    assert_eq!(
        states,
        vec![
            ("lt-alpha".into(), "valid".into()),
            ("lv-baltija".into(), "rejected".into())
        ]
    );
    let (_, one) = w
        .call(
            "alice",
            Method::GET,
            &format!("/v1/connections/{alice_alpha_id}"),
            None,
        )
        .await;
    assert_eq!(one["status"], "valid");
    assert!(one["daysLeft"].as_i64().unwrap() >= 89);
    let (_, bobs) = w.call("bob", Method::GET, "/v1/connections", None).await;
    assert_eq!(bobs["connections"].as_array().unwrap().len(), 1);
    assert_eq!(
        bobs["connections"][0]["connectionId"],
        bob_alpha["connectionId"]
    );

    // Bob can neither see, renew nor delete alice's connection.
    for (method, path) in [
        (Method::GET, format!("/v1/connections/{alice_alpha_id}")),
        (
            Method::POST,
            format!("/v1/connections/{alice_alpha_id}/renew"),
        ),
        (Method::DELETE, format!("/v1/connections/{alice_alpha_id}")),
    ] {
        let (status, problem) = w.call("bob", method.clone(), &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {problem}");
        assert_eq!(problem["status"], 404);
    }
    let (_, still) = w
        .call(
            "alice",
            Method::GET,
            &format!("/v1/connections/{alice_alpha_id}"),
            None,
        )
        .await;
    assert_eq!(still["status"], "valid");

    // Revocation: at the bank and here, idempotent.
    let (status, _) = w
        .call(
            "alice",
            Method::DELETE,
            &format!("/v1/connections/{alice_alpha_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = w
        .call(
            "alice",
            Method::DELETE,
            &format!("/v1/connections/{alice_alpha_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, revoked) = w
        .call(
            "alice",
            Method::GET,
            &format!("/v1/connections/{alice_alpha_id}"),
            None,
        )
        .await;
    assert_eq!(revoked["status"], "terminated_by_tpp");
    let bank_consent = alice_alpha["authUrl"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    let bank = w.sandbox.bank("lt-alpha");
    let at_bank = bank
        .consent_status(&shared::domain::BankConsentId::parse(bank_consent).unwrap())
        .await
        .unwrap();
    assert_eq!(at_bank, shared::domain::ConsentStatus::TerminatedByTpp);

    // Every change reached alice's inbox once.
    let (_, inbox) = w
        .call("alice", Method::GET, "/v1/notifications", None)
        .await;
    let mut kinds: Vec<&str> = inbox["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "consent.rejected",
            "consent.terminated_by_tpp",
            "consent.valid"
        ]
    );

    w.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field_and_changes_nothing() {
    let w = Bundle::start(SECRET, &[]).await;
    for (body, field) in [
        (r#"{"bankId":"no-such-bank"}"#, "bankId"),
        (r#"{"bankId":"lt-alpha","validDays":0}"#, "validDays"),
        (r#"{"bankId":"lt-alpha","validDays":1000}"#, "validDays"),
        (
            r#"{"bankId":"lt-alpha","frequencyPerDay":9}"#,
            "frequencyPerDay",
        ),
        (
            r#"{"bankId":"lt-alpha","redirectUrl":"https://evil.example/x"}"#,
            "redirectUrl",
        ),
        (r#"{"bankId":"lt-alpha","#, "body"),
    ] {
        let response = w
            .http
            .post(w.rt.url("/v1/connections"))
            .bearer_auth(w.token("alice"))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!(status == 400 || status == 422, "{body}: {status}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{body}: {problem}");
    }
    let (_, list) = w
        .call("alice", reqwest::Method::GET, "/v1/connections", None)
        .await;
    assert_eq!(list["connections"], json!([]));
    let counts = w.sandbox.get_json("counts").await;
    assert_eq!(
        counts["total"], 0,
        "no bad request reached a bank: {counts}"
    );

    // Without a token nothing is served.
    let r = w
        .http
        .get(w.rt.url("/v1/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    w.stop().await;
}
