//! Payments end to end: the deployed functions (template.yaml) in the local runtime, local
//! AWS (the payment status queue with real message delays) and the sandbox bank.

use std::time::{Duration, Instant};

use integration_tests::Bundle;
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "payments-e2e-secret";
const APP: &str = "http://127.0.0.1:3000/app/paid";

fn payment(creditor_iban: &str, creditor_name: &str, amount: &str) -> Value {
    json!({
        "bankId": "lt-alpha",
        "debtorAccount": {"iban": "LT121000011101001000"},
        "instructedAmount": {"amount": amount, "currency": "EUR"},
        "creditorAccount": {"iban": creditor_iban},
        "creditorName": creditor_name,
        "remittanceInformationUnstructured": "Invoice 2026-117",
        "redirectUrl": APP
    })
}

fn ok_payment() -> Value {
    payment("DE89370400440532013000", "Ona Onaitė", "12.30")
}

/// Polls `GET /v1/payments/{id}` until it is final (or `limit` passes).
async fn until_final(w: &Bundle, user: &str, id: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let (status, p) = w
            .call(user, Method::GET, &format!("/v1/payments/{id}"), None)
            .await;
        assert_eq!(status, 200, "{p}");
        if p["final"] == true || started.elapsed() > limit {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Approves or denies a payment at the sandbox's SCA; returns our callback URL.
async fn sca(w: &Bundle, created: &Value, decision: &str) -> String {
    let auth_url = created["authUrl"].as_str().expect("an SCA link");
    let bank_payment = auth_url.rsplit('/').next().unwrap();
    let answer = w
        .sandbox
        .decide("lt-alpha", "payments", bank_payment, decision)
        .await;
    answer["redirect"].as_str().unwrap().to_owned()
}

fn kinds(inbox: &[Value], kind: &str) -> usize {
    inbox.iter().filter(|n| n["kind"] == kind).count()
}

#[tokio::test]
async fn approved_rejected_and_denied_payments_reach_their_final_status_once() {
    // Polls every second in the first two minutes, so the test does not wait 5 s steps.
    let w = Bundle::start(
        SECRET,
        &[("PAYMENT_POLL_SCHEDULE", "1:120,5:600".to_owned())],
    )
    .await;

    // Approved at SCA → ACSC, notified once.
    let (status, created) = w
        .pay("alice", Some("pay-1"), &ok_payment().to_string())
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "RCVD");
    assert_eq!(created["state"], "awaiting_authorisation");
    let id = created["paymentId"].as_str().unwrap().to_owned();
    let callback = sca(&w, &created, "approve").await;
    assert!(callback.starts_with(&w.rt.url("/v1/callbacks/sca?state=")));
    let (status, location) = w.follow(&callback).await;
    assert_eq!(status, 302);
    let location = location.unwrap();
    assert!(
        location.starts_with(APP) && location.contains(&id),
        "{location}"
    );
    assert_eq!(w.follow(&callback).await.0, 409, "the state is single-use");

    // Rejected by the bank after acceptance (the sandbox's rejecting creditor).
    let (status, rejecting) = w
        .pay(
            "alice",
            Some("pay-2"),
            &payment("LT601010012345678901", "Jonas Jonaitis", "40.00").to_string(),
        )
        .await;
    assert_eq!(status, 201, "{rejecting}");
    let rejecting_id = rejecting["paymentId"].as_str().unwrap().to_owned();
    let (status, _) = w.follow(&sca(&w, &rejecting, "approve").await).await;
    assert_eq!(status, 302);

    // Denied at SCA: the bank says RJCT.
    let (status, denied) = w
        .pay("alice", Some("pay-3"), &ok_payment().to_string())
        .await;
    assert_eq!(status, 201, "{denied}");
    let denied_id = denied["paymentId"].as_str().unwrap().to_owned();
    let (status, location) = w.follow(&sca(&w, &denied, "deny").await).await;
    assert_eq!(status, 302);
    assert!(location.unwrap().contains("status=rejected"));

    let done = until_final(&w, "alice", &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "ACSC", "{done}");
    assert_eq!(done["state"], "completed");
    let history: Vec<&str> = done["statusHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(history.first(), Some(&"RCVD"));
    assert_eq!(history.last(), Some(&"ACSC"));
    assert!(done.get("authUrl").is_none(), "no SCA link once authorised");
    assert!(
        !done["debtorAccount"]["iban"]
            .as_str()
            .unwrap()
            .contains("1000011101001000"),
        "IBANs are masked in answers"
    );
    let rejected = until_final(&w, "alice", &rejecting_id, Duration::from_secs(60)).await;
    assert_eq!(rejected["status"], "RJCT", "{rejected}");
    assert_eq!(rejected["state"], "rejected");
    let denied = until_final(&w, "alice", &denied_id, Duration::from_secs(60)).await;
    assert_eq!(denied["status"], "RJCT", "{denied}");

    // The chain stops at the final status: no more status calls for the payment.
    let calls_then = w.bank_requests_matching("/status").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        w.bank_requests_matching("/status").await,
        calls_then,
        "polling stopped at the final statuses"
    );

    // Each user is told once per payment.
    let inbox = w.inbox("alice").await;
    assert_eq!(kinds(&inbox, "payment.completed"), 1, "{inbox:?}");
    assert_eq!(kinds(&inbox, "payment.rejected"), 2, "{inbox:?}");

    // Lists: newest first, filtered by state or status code; bob sees none of it.
    let (_, list) = w.call("alice", Method::GET, "/v1/payments", None).await;
    let ids: Vec<&str> = list["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["paymentId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![denied_id.as_str(), rejecting_id.as_str(), id.as_str()]
    );
    let (_, completed) = w
        .call("alice", Method::GET, "/v1/payments?status=completed", None)
        .await;
    assert_eq!(completed["payments"].as_array().unwrap().len(), 1);
    let (_, rjct) = w
        .call(
            "alice",
            Method::GET,
            "/v1/payments?status=RJCT&limit=1",
            None,
        )
        .await;
    assert_eq!(rjct["payments"].as_array().unwrap().len(), 1);
    assert!(rjct["nextCursor"].is_string());
    let (_, bobs) = w.call("bob", Method::GET, "/v1/payments", None).await;
    assert!(bobs["payments"].as_array().unwrap().is_empty());
    let (status, problem) = w
        .call("bob", Method::GET, &format!("/v1/payments/{id}"), None)
        .await;
    assert_eq!(status, 404, "{problem}");
    assert_eq!(problem["status"], 404);

    w.stop().await;
}

#[tokio::test]
async fn one_key_ten_concurrent_requests_one_bank_payment_and_duplicate_polls_change_nothing() {
    let w = Bundle::start(
        SECRET,
        &[("PAYMENT_POLL_SCHEDULE", "1:120,5:600".to_owned())],
    )
    .await;
    let body = ok_payment().to_string();
    let mut tasks = Vec::new();
    let w = std::sync::Arc::new(w);
    for _ in 0..10 {
        let w = w.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            w.pay("carol", Some("same-key"), &body).await
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| body)
        .collect();
    assert!(!created.is_empty(), "{answers:?}");
    assert!(
        answers.iter().all(|(s, _)| *s == 201 || *s == 409),
        "{answers:?}"
    );
    let id = created[0]["paymentId"].as_str().unwrap().to_owned();
    assert!(created.iter().all(|c| c["paymentId"] == id.as_str()));
    assert_eq!(
        w.payment_initiations("lt-alpha").await,
        1,
        "one payment at the bank"
    );

    // A retry after the in-flight ones: the same answer; another body with the key: 422.
    let (status, again) = w.pay("carol", Some("same-key"), &body).await;
    assert_eq!(
        (status, again["paymentId"].as_str()),
        (201, Some(id.as_str()))
    );
    let (status, problem) = w
        .pay(
            "carol",
            Some("same-key"),
            &payment("DE89370400440532013000", "Ona Onaitė", "99.00").to_string(),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(w.payment_initiations("lt-alpha").await, 1);

    // The live poll message delivered three times (duplicates sent by hand): one final
    // notification, and no second chain.
    let sqs = w.rt.local.sqs();
    let queue = w.rt.local.resources.queue_url("PaymentStatusQueue");
    let (status, _) = w.follow(&sca(&w, created[0], "approve").await).await;
    assert_eq!(status, 302);
    for generation in 1..=4 {
        let body = json!({"userId": "carol", "paymentId": id, "generation": generation});
        for _ in 0..3 {
            sqs.send_message()
                .queue_url(queue)
                .message_body(body.to_string())
                .send()
                .await
                .unwrap();
        }
    }
    let done = until_final(&w, "carol", &id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "ACSC", "{done}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let inbox = w.inbox("carol").await;
    assert_eq!(kinds(&inbox, "payment.completed"), 1, "{inbox:?}");
    let calls = w.bank_requests_matching("/status").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.bank_requests_matching("/status").await,
        calls,
        "no chain left"
    );

    // Bad input: a 400 naming the field, and no bank call.
    let before = w
        .bank_requests_matching("/v1/payments/sepa-credit-transfers")
        .await;
    let with = |pointer: &str, value: Value| {
        let mut b = ok_payment();
        *b.pointer_mut(pointer).unwrap() = value;
        b.to_string()
    };
    let cases = [
        (
            with("/debtorAccount/iban", json!("LT121000011101001001")),
            "debtorAccount.iban",
        ),
        (
            with("/instructedAmount/amount", json!("0")),
            "instructedAmount.amount",
        ),
        (
            with("/instructedAmount/amount", json!("-5")),
            "instructedAmount.amount",
        ),
        (
            with("/instructedAmount/amount", json!("1.234")),
            "instructedAmount.amount",
        ),
        (
            with("/instructedAmount/currency", json!("QQQ")),
            "instructedAmount.currency",
        ),
        ("{\"bankId\": ".to_owned(), "body"),
        (
            with(
                "/remittanceInformationUnstructured",
                json!("x".repeat(70_000)),
            ),
            "body",
        ),
    ];
    for (i, (body, field)) in cases.iter().enumerate() {
        let (status, problem) = w.pay("carol", Some(&format!("bad-{i}")), body).await;
        assert!(
            status == 400 || status == 422,
            "{field}: {status} {problem}"
        );
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{field}: {problem}"))
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(field), "{field}: {problem}");
    }
    let (status, problem) = w.pay("carol", None, &ok_payment().to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(
        w.bank_requests_matching("/v1/payments/sepa-credit-transfers")
            .await,
        before,
        "bad input reaches no bank"
    );

    std::sync::Arc::try_unwrap(w).ok().unwrap().stop().await;
}
