//! Bulk payments end to end: the deployed functions (template.yaml) in the local runtime,
//! local AWS and the sandbox bank with faults on (HTTP 500, 429 with Retry-After, held
//! back answers that time out) and every SQS message delivered at least twice.
//! Every item must reach a final state, the bank must have exactly one payment per
//! initiated item, the totals must add up, and the DLQ may only hold explained items.

use std::time::{Duration, Instant};

use integration_tests::{Bundle, BundleOptions};
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "bulk-e2e-secret";
const APP: &str = "http://127.0.0.1:3000/app/batch";

/// Valid creditor IBANs to spread the items over; the last one is the sandbox's
/// rejecting creditor (rejected after acceptance).
const CREDITORS: [&str; 4] = [
    "DE89370400440532013000",
    "LT121000011101001000",
    "GB29NWBK60161331926819",
    "LT601010012345678901",
];

fn payroll(n: usize) -> Value {
    let payments: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "instructedAmount": {"amount": format!("{}.{:02}", 100 + i % 900, i % 100), "currency": "EUR"},
                "creditorAccount": {"iban": CREDITORS[i % CREDITORS.len()]},
                "creditorName": format!("Darbuotojas {i}"),
                "remittanceInformationUnstructured": "Atlyginimas 2026-11",
                "endToEndIdentification": format!("PAY-2026-11-{i:04}")
            })
        })
        .collect();
    json!({
        "bankId": "lt-alpha",
        "debtorAccount": {"iban": "LT121000011101001000"},
        "redirectUrl": APP,
        "payments": payments
    })
}

async fn submit(w: &Bundle, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut request = w
        .http
        .post(w.rt.url("/v1/payment-batches"))
        .bearer_auth(w.token("payroll"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every item of the batch (all pages).
async fn items(w: &Bundle, batch: &str) -> (Value, Vec<Value>) {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = w
            .call(
                "payroll",
                Method::GET,
                &format!("/v1/payment-batches/{batch}?limit=1000&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        all.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return (page, all),
        }
    }
}

/// Sends `bodies` to the queue, ten per call.
async fn send_all(sqs: &aws_sdk_sqs::Client, queue: &str, bodies: &[Value]) {
    for chunk in bodies.chunks(10) {
        let mut send = sqs.send_message_batch().queue_url(queue);
        for (i, body) in chunk.iter().enumerate() {
            send = send.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("d{i}"))
                    .message_body(body.to_string())
                    .build()
                    .unwrap(),
            );
        }
        send.send().await.unwrap();
    }
}

async fn run(n: usize) {
    let w = Bundle::start_with(
        SECRET,
        &[
            // Items awaiting SCA are polled every 5 s (the batch SCA wait), then every
            // 2 s; the sandbox settles a payment 2 steps (2 s each) after approval.
            ("PAYMENT_POLL_SCHEDULE", "2:1800".to_owned()),
            ("PAYMENT_BATCH_SCA_WAIT_SECS", "5".to_owned()),
            ("PAYMENT_BATCH_WATCH_SECS", "10".to_owned()),
        ],
        BundleOptions {
            sqs_duplicates: 1.0,
            ..BundleOptions::default()
        },
    )
    .await;

    // Bad input: every bad item named, nothing queued.
    let mut bad = payroll(600);
    bad["payments"][537]["creditorAccount"]["iban"] = json!("LT601010012345678900");
    bad["payments"][3]["endToEndIdentification"] = json!("PAY-2026-11-0001");
    let (status, problem) = submit(&w, Some("bad"), &bad.to_string()).await;
    assert_eq!(status, 400, "{problem}");
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec![
            "payments[3].endToEndIdentification",
            "payments[537].creditorAccount.iban"
        ]
    );
    for (body, field) in [
        (payroll(1001).to_string(), "payments"),
        (payroll(0).to_string(), "payments"),
    ] {
        let (status, problem) = submit(&w, Some("bad-size"), &body).await;
        assert_eq!(status, 400);
        assert_eq!(problem["errors"][0]["field"], field);
    }
    let (status, problem) = submit(&w, None, &payroll(2).to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");

    // Faults: 10 % HTTP 500, 5 % 429 (Retry-After 1 s), 2 % answers held back past the
    // connector's timeout.
    w.sandbox
        .set_faults(json!({
            "errorRate": 0.10,
            "rateLimitRate": 0.05,
            "retryAfterSecs": 1,
            "hangRate": 0.02,
            "hangMs": 7000
        }))
        .await;

    let body = payroll(n).to_string();
    let started = Instant::now();
    let (status, accepted) = submit(&w, Some("payroll-2026-11"), &body).await;
    let acceptance = started.elapsed();
    assert_eq!(status, 202, "{accepted}");
    println!("accepted {n} items in {} ms", acceptance.as_millis());
    let batch = accepted["batchId"].as_str().unwrap().to_owned();
    assert_eq!(accepted["total"], n);
    let (status, again) = submit(&w, Some("payroll-2026-11"), &body).await;
    assert_eq!(
        (status, &again),
        (202, &accepted),
        "the same answer for the same key"
    );

    // Every SQS message (chunks, items, status polls, the batch watch) is delivered twice
    // at once by the local runtime (`sqs_duplicates`). Late duplicates come on top: once
    // every item is through the bank's initiation, each chunk's message and one item
    // message in five arrive again.
    let sqs = w.rt.local.sqs();
    let queue =
        w.rt.local
            .resources
            .queue_url("BulkPaymentQueue")
            .to_owned();
    let mut late_sent = false;

    // The user authorises each item at the bank as it becomes ready (the sandbox's SCA,
    // scripted from the bank's list of pending authorisations). The browser's return
    // through our callback is left out here: the status poller has to find every
    // authorisation by itself. The batch is read for its counts only, as a progress bar
    // would; every item is read once at the end.
    let deadline = Instant::now() + Duration::from_secs(1200);
    let mut all_at_bank: Option<Duration> = None;
    let summary = loop {
        let read = Instant::now();
        let (status, summary) = w
            .call(
                "payroll",
                Method::GET,
                &format!("/v1/payment-batches/{batch}?limit=1"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{summary}");
        eprintln!(
            "bulk_e2e: {:>6.1} s, counts read in {} ms: {}",
            started.elapsed().as_secs_f64(),
            read.elapsed().as_millis(),
            summary["counts"]
        );
        if all_at_bank.is_none()
            && summary["counts"]["queued"] == 0
            && summary["counts"]["initiating"] == 0
        {
            all_at_bank = Some(started.elapsed());
        }
        if all_at_bank.is_some() && !late_sent {
            late_sent = true;
            let (_, stored) = items(&w, &batch).await;
            assert_eq!(stored.len(), n, "every item stored");
            let mut late: Vec<Value> = (0..n.div_ceil(100))
                .map(|k| json!({"userId": "payroll", "batchId": batch, "chunk": k}))
                .collect();
            late.extend(
                stored
                    .iter()
                    .step_by(5)
                    .map(|item| json!({"userId": "payroll", "paymentId": item["paymentId"]})),
            );
            send_all(&sqs, &queue, &late).await;
        }
        let pending = w.sandbox.get_json("pending-sca/lt-alpha").await;
        let approvals = pending["payments"].as_array().unwrap().iter().map(|id| {
            let (w, id) = (&w, id.as_str().unwrap().to_owned());
            async move {
                w.sandbox
                    .decide("lt-alpha", "payments", &id, "approve")
                    .await;
            }
        });
        use futures::StreamExt as _;
        futures::stream::iter(approvals)
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
        if summary["done"] == true || Instant::now() > deadline {
            break summary;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let (_, all) = items(&w, &batch).await;
    w.sandbox.clear_faults().await;
    assert_eq!(summary["done"], true, "{}", summary["counts"]);

    // Totals: exact, adding up to the batch.
    let counts = summary["counts"].as_object().unwrap();
    let sum: u64 = counts.values().map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(sum, n as u64, "{counts:?}");
    assert_eq!(all.len(), n);
    for item in &all {
        let state = item["state"].as_str().unwrap();
        assert!(
            ["completed", "rejected", "failed"].contains(&state),
            "{item}"
        );
    }
    let initiated = all.iter().filter(|i| i["status"].is_string()).count() as u64;
    let failed: Vec<&Value> = all.iter().filter(|i| i["state"] == "failed").collect();
    assert_eq!(initiated + failed.len() as u64, n as u64);
    assert!(
        failed.iter().all(|i| i["failure"]["code"].is_string()),
        "failed items say why"
    );
    // Exactly one payment at the bank per initiated item, despite faults and duplicates.
    assert_eq!(w.payment_initiations("lt-alpha").await, initiated);
    // The rejecting creditor's items were rejected by the bank, the others completed.
    let rejected = all.iter().filter(|i| i["state"] == "rejected").count();
    assert!(rejected >= n / CREDITORS.len() - failed.len(), "{counts:?}");
    assert!(counts["completed"].as_u64().unwrap() > 0);

    // The DLQ holds only items that say why they failed.
    for body in w.queue_bodies("BulkPaymentDLQ").await {
        let id = body["paymentId"]
            .as_str()
            .unwrap_or_else(|| panic!("only items may reach the DLQ: {body}"));
        let item = all.iter().find(|i| i["paymentId"] == id).unwrap();
        assert_eq!(item["state"], "failed", "{item}");
    }
    // The user is told once that the batch is done, with its totals.
    let told_by = Instant::now() + Duration::from_secs(60);
    let told = loop {
        let told: Vec<Value> = w
            .inbox("payroll")
            .await
            .into_iter()
            .filter(|n| n["kind"] == "payment_batch.done")
            .collect();
        if !told.is_empty() || Instant::now() > told_by {
            break told;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["data"]["batchId"], batch.as_str());
    assert_eq!(told[0]["data"]["completed"], counts["completed"]);
    assert_eq!(told[0]["data"]["rejected"], counts["rejected"]);
    assert_eq!(told[0]["data"]["failed"], counts["failed"]);

    let at_bank = all_at_bank.unwrap_or(started.elapsed());
    println!(
        "bulk: {n} items, {initiated} initiated once each, {} rejected, {} failed; accepted in \
         {} ms; every item through the bank's initiation after {:.1} s ({:.1} items/s, with \
         faults and every message delivered twice, through the local runtime and moto)",
        rejected,
        failed.len(),
        acceptance.as_millis(),
        at_bank.as_secs_f64(),
        n as f64 / at_bank.as_secs_f64()
    );
    w.stop().await;
}

#[tokio::test]
async fn a_payroll_batch_with_faults_and_duplicates_settles_exactly_once() {
    // `make test` runs 200 items (about two minutes through the local runtime and moto);
    // BULK_E2E_ITEMS=1000 is the full payroll run (`make test-bulk`).
    let n = std::env::var("BULK_E2E_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    run(n).await;
}
