//! The fault run: the deployed functions (template.yaml) in the local runtime, local AWS
//! and the sandbox bank, with every kind of fault at once, then the invariants we promise.
//!
//! Faults: function processes crash at random points (`CHAOS_CRASH_RATE`, a share of
//! invocations: before a bank call, between a bank's answer and its write, between a write
//! and the acknowledgement; see `shared::chaos`); the bank adds latency, answers 5xx and 429, and holds answers
//! past the connector's timeout; SQS delivers messages twice (the local runtime's
//! `sqs_duplicates`) and, with short visibility timeouts, again while they are still being
//! handled; runs of the renewal schedule overlap. The user retries a failed request with
//! the same `Idempotency-Key`, as the API asks.
//!
//! Invariants checked at the end: one bank payment per requested payment; every payment
//! final (or given up with a notification); the batch's counts exact; one renewal per
//! expiring connection; no notification twice for one event; the DLQ holds only
//! explained items. The run prints what it did, what it injected and what held.
//!
//! `make test` runs the short form; `make chaos` the long one (`CHAOS_LONG=1`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration_tests::{Bundle, BundleOptions};
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "chaos-secret";
const APP: &str = "http://127.0.0.1:3000/app/chaos";
const USER: &str = "chaos";
const RENEWAL: &str = "ConsentRenewalFunction.Daily";

struct Plan {
    payments: usize,
    batch: usize,
    links: usize,
    renewal_runs: usize,
    crash_rate: f64,
    duplicates: f64,
    deadline: Duration,
}

impl Plan {
    fn from_env() -> Plan {
        if std::env::var("CHAOS_LONG").is_ok_and(|v| v == "1") {
            Plan {
                // The inbox shows the newest 100: every notification of the run must fit.
                payments: 80,
                batch: 500,
                links: 6,
                renewal_runs: 6,
                crash_rate: 0.1,
                duplicates: 0.3,
                deadline: Duration::from_secs(480),
            }
        } else {
            Plan {
                payments: 12,
                batch: 40,
                links: 2,
                renewal_runs: 3,
                crash_rate: 0.15,
                duplicates: 0.3,
                deadline: Duration::from_secs(240),
            }
        }
    }
}

/// Counters of what the run did (printed at the end).
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    retried: AtomicU64,
}

fn payment(i: usize) -> Value {
    let creditors = [
        "DE89370400440532013000",
        "GB29NWBK60161331926819",
        // The sandbox's rejecting creditor: rejected after acceptance.
        "LT601010012345678901",
    ];
    json!({
        "bankId": "lt-alpha",
        "debtorAccount": {"iban": "LT121000011101001000"},
        "instructedAmount": {"amount": format!("{}.{:02}", 10 + i, i % 100), "currency": "EUR"},
        "creditorAccount": {"iban": creditors[i % creditors.len()]},
        "creditorName": format!("Gavėjas {i}"),
        "remittanceInformationUnstructured": "Chaos run",
        "redirectUrl": APP
    })
}

fn batch(n: usize) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            let mut p = payment(i);
            let p = p.as_object_mut().unwrap();
            for k in ["bankId", "debtorAccount", "redirectUrl"] {
                p.remove(k);
            }
            p.insert(
                "endToEndIdentification".into(),
                json!(format!("CHAOS-{i:04}")),
            );
            Value::Object(p.clone())
        })
        .collect();
    json!({
        "bankId": "lt-alpha",
        "debtorAccount": {"iban": "LT121000011101001000"},
        "redirectUrl": APP,
        "payments": items
    })
}

/// POSTs `body` with `key` until the API gives an answer that is not a server error (a
/// crashed function is a 5xx here, as at API Gateway), a 429 (the bank's limit) nor a 409
/// (the key is held by an attempt in flight, or by one that crashed, until its lock runs
/// out); any other 4xx is a failure of the run.
async fn post_until_answered(
    w: &Bundle,
    tally: &Tally,
    path: &str,
    key: &str,
    body: &Value,
) -> Value {
    let give_up = Instant::now() + Duration::from_secs(240);
    let mut seen = Vec::new();
    while Instant::now() < give_up {
        if !seen.is_empty() {
            tally.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let sent = w
            .http
            .post(w.rt.url(path))
            .bearer_auth(w.token(USER))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
            .await;
        let Ok(response) = sent else {
            seen.push(0);
            continue;
        };
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            200..=299 => return answer,
            // 429: the bank's limit, passed on with Retry-After (1 s here).
            409 | 429 | 500..=599 => seen.push(status),
            _ => panic!("{path} with key {key}: {status} {answer}"),
        }
    }
    panic!("{path} with key {key}: no answer in 240 s ({seen:?})");
}

/// Fires the renewal schedule; a crashed or failed run is fine (the next one resumes).
async fn fire_renewal(w: &Bundle) -> bool {
    w.http
        .post(w.rt.url(&format!("/__local/schedules/{RENEWAL}/fire")))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

async fn get(w: &Bundle, path: &str) -> Value {
    for _ in 0..20 {
        let (status, answer) = w.call(USER, Method::GET, path, None).await;
        if status == 200 {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("GET {path} kept failing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_crashes_bank_faults_and_duplicates_money_moves_once_and_nothing_is_lost() {
    let plan = Plan::from_env();
    let started = Instant::now();
    let crash_log = std::env::temp_dir().join(format!("chaos-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&crash_log);
    let w = Bundle::start_with(
        SECRET,
        &[
            ("CHAOS_CRASH_RATE", plan.crash_rate.to_string()),
            ("CHAOS_LOG", crash_log.display().to_string()),
            ("PAYMENT_POLL_SCHEDULE", "2:1800".to_owned()),
            ("PAYMENT_BATCH_SCA_WAIT_SECS", "4".to_owned()),
            ("PAYMENT_BATCH_WATCH_SECS", "5".to_owned()),
        ],
        BundleOptions {
            sqs_duplicates: plan.duplicates,
            ..BundleOptions::default()
        },
    )
    .await;
    // A crashed invocation's messages come back after the queue's visibility timeout:
    // shortened here (template: minutes) so that the run takes minutes, not hours. Some
    // messages then come back while still being handled: more duplicates. (Not below 30 s:
    // a poll step that died after its write is resent once the write is a minute old, and
    // each look before that uses up one of the message's 5 receives.)
    let sqs = w.rt.local.sqs();
    for queue in ["BulkPaymentQueue", "PaymentStatusQueue"] {
        sqs.set_queue_attributes()
            .queue_url(w.rt.local.resources.queue_url(queue))
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                "30",
            )
            .send()
            .await
            .unwrap();
    }

    // Connections that expire within the renewal window, linked before the faults start.
    let mut expiring = Vec::new();
    for _ in 0..plan.links {
        let created = w
            .connect(
                USER,
                json!({"bankId": "lt-alpha", "validDays": 5, "redirectUrl": APP}),
            )
            .await;
        let callback = w.decide(&created, "approve").await;
        let (status, _) = w.follow(&callback).await;
        assert_eq!(status, 302);
        expiring.push(created["connectionId"].as_str().unwrap().to_owned());
    }
    let consents_before = w.consent_creations("lt-alpha").await;

    w.sandbox
        .set_faults(json!({
            "latencyMs": 20,
            "errorRate": 0.05,
            "rateLimitRate": 0.03,
            "retryAfterSecs": 1,
            "hangRate": 0.01,
            "hangMs": 6000
        }))
        .await;

    let tally = Tally::default();
    let batch_body = batch(plan.batch);
    let singles = async {
        let calls = (0..plan.payments).map(|i| {
            let (w, tally) = (&w, &tally);
            async move {
                let key = format!("chaos-pay-{i}");
                let answer = post_until_answered(w, tally, "/v1/payments", &key, &payment(i)).await;
                answer["paymentId"].as_str().unwrap().to_owned()
            }
        });
        use futures::StreamExt as _;
        futures::stream::iter(calls)
            .buffer_unordered(6)
            .collect::<Vec<String>>()
            .await
    };
    let bulk = async {
        let answer = post_until_answered(
            &w,
            &tally,
            "/v1/payment-batches",
            "chaos-batch",
            &batch_body,
        )
        .await;
        answer["batchId"].as_str().unwrap().to_owned()
    };
    let renewals = async {
        let mut ok = 0;
        for round in 0..plan.renewal_runs.div_ceil(2) {
            // Two runs at once, as EventBridge may deliver.
            let (a, b) = tokio::join!(fire_renewal(&w), fire_renewal(&w));
            ok += usize::from(a) + usize::from(b);
            tokio::time::sleep(Duration::from_millis(300 * round as u64)).await;
        }
        ok
    };
    let (payment_ids, batch_id, renewal_runs_ok) = tokio::join!(singles, bulk, renewals);
    let submitted = started.elapsed();

    // The user authorises what waits at the bank; the pollers have to find it.
    let deadline = Instant::now() + plan.deadline;
    let (mut open, mut batch_view) = (usize::MAX, Value::Null);
    while Instant::now() < deadline {
        let pending = w.sandbox.get_json("pending-sca/lt-alpha").await;
        for id in pending["payments"].as_array().unwrap() {
            w.sandbox
                .decide("lt-alpha", "payments", id.as_str().unwrap(), "approve")
                .await;
        }
        batch_view = get(&w, &format!("/v1/payment-batches/{batch_id}?limit=1")).await;
        let mut still = 0;
        for id in &payment_ids {
            let p = get(&w, &format!("/v1/payments/{id}")).await;
            if p["final"] != true && p["state"] != "unknown" && p["state"] != "failed" {
                still += 1;
            }
        }
        open = still;
        eprintln!(
            "chaos: {:>5.1} s, {open} single payments open, batch {}",
            started.elapsed().as_secs_f64(),
            batch_view["counts"]
        );
        if open == 0 && batch_view["done"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let settled = started.elapsed();
    w.sandbox.clear_faults().await;
    // One more renewal run without faults: whatever a crash left half done is resumed.
    assert!(fire_renewal(&w).await);

    let mut held: Vec<String> = Vec::new();
    let mut check = |name: String, ok: bool, detail: String| {
        assert!(ok, "invariant failed: {name}: {detail}");
        held.push(name);
    };

    // Every payment final (or given up, with its notification).
    check(
        format!("every one of {} single payments final", payment_ids.len()),
        open == 0,
        format!("{open} open"),
    );
    check(
        format!("the batch of {} done", plan.batch),
        batch_view["done"] == true,
        batch_view["counts"].to_string(),
    );
    // The batch's counts exact: they add up, and match its items one by one.
    let mut items = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get(
            &w,
            &format!("/v1/payment-batches/{batch_id}?limit=1000&cursor={cursor}"),
        )
        .await;
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    for item in &items {
        *by_state
            .entry(item["state"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let counts: BTreeMap<String, u64> = batch_view["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .filter(|(_, v)| *v > 0)
        .collect();
    check(
        "batch counts exact (sum and per state, against the items)".into(),
        items.len() == plan.batch && counts == by_state,
        format!("{counts:?} vs items {by_state:?}"),
    );

    // One bank payment per requested payment.
    let mut at_bank = 0u64;
    let mut singles_by_state: BTreeMap<String, u64> = BTreeMap::new();
    for id in &payment_ids {
        let p = get(&w, &format!("/v1/payments/{id}")).await;
        at_bank += u64::from(p["status"].is_string());
        *singles_by_state
            .entry(p["state"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    at_bank += items.iter().filter(|i| i["status"].is_string()).count() as u64;
    let bank_payments = w.payment_initiations("lt-alpha").await;
    check(
        format!("one bank payment per requested payment ({bank_payments} at the bank)"),
        bank_payments == at_bank,
        format!("{bank_payments} at the bank, {at_bank} of ours reached it"),
    );
    let distinct: HashSet<&String> = payment_ids.iter().collect();
    check(
        "one payment per Idempotency-Key".into(),
        distinct.len() == plan.payments,
        format!("{} ids for {} keys", distinct.len(), plan.payments),
    );

    // One renewal per expiring connection; nothing told twice.
    let connections = w.connections(USER).await;
    let mut renewal_of: BTreeMap<String, u64> = BTreeMap::new();
    for c in &connections {
        if c["renewal"]["connectionId"].is_string() {
            *renewal_of
                .entry(c["connectionId"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let pending_renewals = connections
        .iter()
        .filter(|c| c["status"] == "pending_authorization")
        .count();
    check(
        format!("one renewal per expiring connection ({})", expiring.len()),
        expiring.iter().all(|id| renewal_of.get(id) == Some(&1))
            && pending_renewals == expiring.len(),
        format!("{renewal_of:?}, {pending_renewals} pending"),
    );
    let consents_created = w.consent_creations("lt-alpha").await - consents_before;
    // The batch's watch looks every few seconds; one that died after its write is resent
    // a minute later.
    let told_by = Instant::now() + Duration::from_secs(120);
    let inbox = loop {
        let inbox = get(&w, "/v1/notifications?limit=100").await["notifications"]
            .as_array()
            .unwrap()
            .clone();
        if inbox.iter().any(|n| n["kind"] == "payment_batch.done") || Instant::now() > told_by {
            break inbox;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert!(inbox.len() < 100, "the whole inbox is read");
    let mut told: BTreeMap<String, u64> = BTreeMap::new();
    for n in &inbox {
        let about = ["paymentId", "batchId", "connectionId"]
            .iter()
            .find_map(|k| n["data"][k].as_str())
            .unwrap_or("");
        *told
            .entry(format!("{} {about}", n["kind"].as_str().unwrap_or("")))
            .or_default() += 1;
    }
    let twice: Vec<&String> = told
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    check(
        format!("no event told twice ({} notifications)", inbox.len()),
        twice.is_empty(),
        format!("{twice:?}"),
    );
    check(
        "the batch's completion told once".into(),
        told.get(&format!("payment_batch.done {batch_id}")) == Some(&1),
        format!("{told:?}"),
    );

    // The DLQs hold only explained items.
    let bulk_dlq = w.queue_bodies("BulkPaymentDLQ").await;
    let explained = bulk_dlq.iter().all(|body| {
        body["paymentId"].as_str().is_some_and(|id| {
            items.iter().any(|i| {
                i["paymentId"] == id && i["state"] == "failed" && i["failure"]["code"].is_string()
            })
        })
    });
    check(
        format!("bulk DLQ holds only explained items ({})", bulk_dlq.len()),
        explained,
        format!("{bulk_dlq:?}"),
    );
    let status_dlq = w.queue_bodies("PaymentStatusDLQ").await;
    check(
        format!("status DLQ empty ({})", status_dlq.len()),
        status_dlq.is_empty(),
        format!("{status_dlq:?}"),
    );

    let crashes = std::fs::read_to_string(&crash_log).unwrap_or_default();
    let mut by_point: BTreeMap<&str, u64> = BTreeMap::new();
    for line in crashes.lines() {
        *by_point
            .entry(line.split_whitespace().next().unwrap_or("?"))
            .or_default() += 1;
    }
    let _ = std::fs::remove_file(&crash_log);
    let counts = w.sandbox.get_json("counts").await;
    println!(
        "chaos run ({}):",
        if plan.payments > 20 { "long" } else { "short" }
    );
    println!(
        "  operations: {} single payments, 1 batch of {} items, {} renewal runs ({} answered), \
         {} API requests ({} retries after a crash or 5xx), {} bank calls",
        plan.payments,
        plan.batch,
        plan.renewal_runs.div_ceil(2) * 2 + 1,
        renewal_runs_ok,
        tally.requests.load(Ordering::Relaxed),
        tally.retried.load(Ordering::Relaxed),
        counts["total"]
    );
    println!(
        "  faults: {} process crashes {by_point:?}; bank: 20 ms latency, 5 % 5xx, 3 % 429, \
         1 % held past the timeout; {:.0} % of SQS messages delivered twice; queue visibility \
         30 s",
        crashes.lines().count(),
        plan.duplicates * 100.0
    );
    println!(
        "  outcome: singles {singles_by_state:?}, batch {by_state:?}, {consents_created} \
         consents created at the bank for {} renewals",
        expiring.len()
    );
    println!(
        "  submitted in {:.1} s, settled in {:.1} s",
        submitted.as_secs_f64(),
        settled.as_secs_f64()
    );
    println!("  invariants held ({}):", held.len());
    for name in &held {
        println!("    ok  {name}");
    }
    w.stop().await;
}
