//! `make bench-bulk`: the bulk payment figures from the issue "Bulk payments", measured
//! through HTTP against the deployed functions (template.yaml in the local runtime, local
//! AWS, the in-process sandbox bank):
//!
//! - acceptance time of `POST /v1/payment-batches` with 1,000 items (target: well under a
//!   second);
//! - end-to-end initiation throughput towards one bank whose registry entry caps it at
//!   `BENCH_BULK_CAP` initiations per second (50), with every bank call delayed by the
//!   sandbox's latency fault (100 ms): from the 10th to the 90th percentile of initiations
//!   as the sandbox counted them (target ≥ 90 % of the cap), and from acceptance to the
//!   last one;
//! - the most initiations started in one second (the bank's rate counter, which the cap
//!   bounds), and the most bank answers in one second (the sandbox's request log: answers
//!   to calls started in one second can end in the next);
//! - exactly one initiation per item (the sandbox's counter);
//! - for comparison, the seed's approach in the same run: one payment at a time through the
//!   same connector against the same latency.
//!
//! The function binaries are the ones next to this binary (`target/release` when built
//! with `--release`), unless `BENCH_BIN_DIR` says otherwise.
//!
//! Environment: `BENCH_BULK_ITEMS` (1000), `BENCH_BULK_CAP` (50), `BENCH_LATENCY_MS` (100),
//! `BENCH_NAIVE_ITEMS` (30), `RUST_LOG` (error).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use integration_tests::bench::{Row, bin_dir, emit, env_number, init_logs, ms};
use integration_tests::{Bundle, BundleOptions};
use serde_json::{Value, json};
use shared::bank::{PaymentInitiation, PaymentProduct, RedirectUris};
use shared::domain::{Currency, Iban, Money, RequestId};

const SECRET: &str = "bench-bulk-secret";
const BANK: &str = "lt-alpha";
const USER: &str = "bench-payroll";

fn payroll(n: usize, tag: &str) -> Value {
    let payments: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "instructedAmount": {"amount": format!("{}.{:02}", 100 + i % 900, i % 100), "currency": "EUR"},
                "creditorAccount": {"iban": "DE89370400440532013000"},
                "creditorName": format!("Darbuotojas {i}"),
                "remittanceInformationUnstructured": "Atlyginimas",
                "endToEndIdentification": format!("{tag}-{i:04}")
            })
        })
        .collect();
    json!({
        "bankId": BANK,
        "debtorAccount": {"iban": "LT121000011101001000"},
        "redirectUrl": "http://127.0.0.1:3000/app/batch",
        "payments": payments
    })
}

/// Submits a batch; answers the acceptance time.
async fn submit(w: &Bundle, key: &str, body: &Value) -> anyhow::Result<Duration> {
    let body = body.to_string();
    let started = Instant::now();
    let response = w
        .http
        .post(w.rt.url("/v1/payment-batches"))
        .bearer_auth(w.token(USER))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body)
        .send()
        .await?;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let answer = response.text().await?;
    ensure!(status == 202, "POST /v1/payment-batches: {status} {answer}");
    Ok(elapsed)
}

/// Waits until the sandbox counted `target` initiations at the bank; answers the moments
/// (since `since`) each count in `marks` was first seen.
async fn watch_initiations(
    w: &Bundle,
    target: u64,
    marks: &[u64],
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<u64, Duration>> {
    let mut seen = BTreeMap::new();
    loop {
        let count = w.payment_initiations(BANK).await;
        let now = since.elapsed();
        for mark in marks {
            if count >= *mark {
                seen.entry(*mark).or_insert(now);
            }
        }
        if count >= target {
            return Ok(seen);
        }
        ensure!(
            now < timeout,
            "{count} of {target} initiations after {} s",
            timeout.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The most initiations the sandbox logged in one wall-clock second.
async fn busiest_second(w: &Bundle) -> anyhow::Result<usize> {
    let log = w.sandbox.get_json("requests").await;
    let mut per_second: BTreeMap<String, usize> = BTreeMap::new();
    for r in log.as_array().context("request log")? {
        let is_initiation = r["method"] == "POST"
            && r["path"]
                .as_str()
                .is_some_and(|p| p.contains("/v1/payments/"));
        if is_initiation && let Some(ts) = r["timestamp"].as_str() {
            // RFC 3339 with milliseconds: the second is everything before the '.'.
            let second = ts.split('.').next().unwrap_or(ts).to_owned();
            *per_second.entry(second).or_default() += 1;
        }
    }
    Ok(per_second.values().copied().max().unwrap_or(0))
}

/// The most initiation slots the bank's rate counter (in the payments table, one item per
/// second) handed out in one second: what the cap bounds.
async fn most_slots_in_a_second(w: &Bundle) -> anyhow::Result<u64> {
    let table = w.rt.local.resources.table("PaymentsTable");
    let out =
        w.rt.local
            .dynamodb()
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(
                ":pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("RATE#{BANK}")),
            )
            .send()
            .await?;
    Ok(out
        .items
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.get("count")?.as_n().ok()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0))
}

/// What one SendMessage costs local AWS now: to the status queue (which holds every
/// item's delayed first poll) and to a new empty queue (median of 10 each), and how many
/// delayed messages the status queue holds. moto's SendMessage grows with the messages a
/// queue holds, and every item sends one there.
async fn local_aws_send_cost(w: &Bundle) -> anyhow::Result<(Duration, Duration, String)> {
    let sqs = w.rt.local.sqs();
    let status =
        w.rt.local
            .resources
            .queue_url("PaymentStatusQueue")
            .to_owned();
    let delayed = sqs
        .get_queue_attributes()
        .queue_url(&status)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await?
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .cloned()
        })
        .unwrap_or_else(|| "?".into());
    let empty = sqs
        .create_queue()
        .queue_name(format!("bench-bulk-empty-{}", std::process::id()))
        .send()
        .await?
        .queue_url
        .context("queue url")?;
    let mut median = Vec::new();
    for url in [&status, &empty] {
        let mut times = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            // Not a poll message the poller would act on (malformed: dropped), and delayed
            // past the end of the run.
            sqs.send_message()
                .queue_url(url)
                .message_body("{\"bench\":true}")
                .delay_seconds(900)
                .send()
                .await?;
            times.push(started.elapsed());
        }
        times.sort();
        median.push(times[times.len() / 2]);
    }
    sqs.delete_queue().queue_url(&empty).send().await?;
    Ok((median[0], median[1], delayed))
}

/// The seed's approach: one initiation at a time through the same connector and latency.
async fn one_at_a_time(w: &Bundle, n: usize) -> anyhow::Result<f64> {
    let bank = w.sandbox.bank(BANK);
    let eur = Currency::parse("EUR")?;
    let started = Instant::now();
    for i in 0..n {
        bank.initiate_payment(&PaymentInitiation {
            product: PaymentProduct::SepaCreditTransfers,
            request_id: RequestId::new(),
            debtor: Iban::parse("LT121000011101001000")?,
            creditor: Iban::parse("DE89370400440532013000")?,
            creditor_name: format!("Darbuotojas {i}"),
            amount: Money::parse_instructed("10.00", eur)?,
            remittance: None,
            end_to_end_id: None,
            psu_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            redirect: RedirectUris {
                ok: "http://127.0.0.1:3000/v1/callbacks/sca?state=bench".parse()?,
                nok: None,
            },
        })
        .await
        .map_err(|e| anyhow::anyhow!("one-at-a-time initiation: {e}"))?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let items = env_number("BENCH_BULK_ITEMS", 1000)?;
    let cap = env_number("BENCH_BULK_CAP", 50)?;
    let latency_ms = env_number("BENCH_LATENCY_MS", 100)?;
    let naive_items = usize::try_from(env_number("BENCH_NAIVE_ITEMS", 30)?)?.max(1);
    ensure!((10..=1000).contains(&items), "BENCH_BULK_ITEMS: 10 to 1000");
    let bin_dir = bin_dir()?;
    let profile = bin_dir
        .file_name()
        .map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned());

    // The bank registry with the benchmark's cap on the bank.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let registry_path =
        std::env::temp_dir().join(format!("bench-bulk-banks-{}.json", std::process::id()));
    let mut registry: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("infra/banks.json"))?)?;
    for bank in registry["banks"].as_array_mut().context("banks")? {
        if bank["id"] == BANK {
            bank["maxPaymentsPerSecond"] = json!(cap);
        }
    }
    std::fs::write(&registry_path, registry.to_string())?;

    println!("## bench-bulk\n");
    eprintln!(
        "starting the bundle ({profile} binaries from {})",
        bin_dir.display()
    );
    let w = Bundle::start_with(
        SECRET,
        &[
            ("BANK_REGISTRY_PATH", registry_path.display().to_string()),
            // Items wait for their SCA: their status polls start after the run.
            ("PAYMENT_BATCH_SCA_WAIT_SECS", "900".to_owned()),
        ],
        BundleOptions {
            bin_dir: bin_dir.clone(),
            ..BundleOptions::default()
        },
    )
    .await;
    let result = run(&w, items, cap, latency_ms, naive_items).await;
    w.stop().await;
    let _ = std::fs::remove_file(&registry_path);
    result
}

async fn run(
    w: &Bundle,
    items: u64,
    cap: u64,
    latency_ms: u64,
    naive_items: usize,
) -> anyhow::Result<()> {
    // Warm-up (not measured): both functions started, SDK clients connected.
    let before = w.payment_initiations(BANK).await;
    submit(w, "warm-up", &payroll(20, "WARM")).await?;
    watch_initiations(w, before + 20, &[], Instant::now(), Duration::from_secs(60)).await?;

    w.sandbox
        .set_faults(json!({ "latencyMs": latency_ms }))
        .await;
    w.sandbox.clear_requests().await;
    let before = w.payment_initiations(BANK).await;
    let n = usize::try_from(items)?;
    let body = payroll(n, "PAY");
    eprintln!("submitting {n} items");
    let started = Instant::now();
    let acceptance = submit(w, "payroll", &body).await?;
    let p10 = before + items / 10;
    let p90 = before + items * 9 / 10;
    let marks = watch_initiations(
        w,
        before + items,
        &[before + 1, p10, p90, before + items],
        started,
        Duration::from_secs(600),
    )
    .await?;
    let all = marks[&(before + items)];
    let sustained_window = marks[&p90].saturating_sub(marks[&p10]);
    let sustained = (p90 - p10) as f64 / sustained_window.as_secs_f64().max(1e-9);
    let overall = items as f64 / all.as_secs_f64();
    // Late duplicates would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let initiations = w.payment_initiations(BANK).await - before;
    let busiest = busiest_second(w).await?;
    let most_slots = most_slots_in_a_second(w).await?;

    let (sends_here, sends_empty, delayed) = local_aws_send_cost(w).await?;

    eprintln!("one payment at a time ({naive_items} items)");
    let naive = one_at_a_time(w, naive_items).await?;

    let target = cap as f64 * 0.9;
    let rows = [
        Row::new(
            "bulk payments",
            format!("acceptance of {items} items (POST /v1/payment-batches, 202)"),
            ms(acceptance),
        )
        .target("< 1000 ms", acceptance < Duration::from_secs(1)),
        Row::new(
            "bulk payments",
            "first initiation at the bank after submitting",
            format!("{:.2} s", marks[&(before + 1)].as_secs_f64()),
        ),
        Row::new(
            "bulk payments",
            format!(
                "initiation throughput, 10th→90th percentile ({latency_ms} ms bank latency, cap {cap}/s)"
            ),
            format!("{sustained:.1} /s"),
        )
        .target(format!("≥ {target:.0} /s"), sustained >= target),
        Row::new(
            "bulk payments",
            "submit → every item initiated",
            format!("{:.1} s ({overall:.1} /s)", all.as_secs_f64()),
        ),
        Row::new(
            "bulk payments",
            "most initiations started in one second (the bank's rate counter)",
            most_slots.to_string(),
        )
        .target(format!("≤ {cap}"), most_slots <= cap),
        Row::new(
            "bulk payments",
            "most bank answers in one second (sandbox log, by completion time)",
            busiest.to_string(),
        ),
        Row::new(
            "bank calls per operation",
            "bulk item initiated (payment initiations at the bank per item)",
            format!("{initiations} for {items}"),
        )
        .target("exactly 1 each", initiations == items),
        Row::new(
            "naive approach",
            format!("seed's queue: one payment at a time, same latency ({naive_items} items)"),
            format!("{naive:.1} /s"),
        )
        .against(format!("{sustained:.1} /s"), sustained / naive.max(1e-9)),
        Row::new(
            "bulk payments",
            format!(
                "local AWS: one SendMessage to the status queue ({delayed} delayed polls) / to an empty queue"
            ),
            format!("{} / {}", ms(sends_here), ms(sends_empty)),
        ),
    ];
    emit(&rows)?;
    ensure!(
        initiations == items,
        "{initiations} initiations for {items} items"
    );
    Ok(())
}
