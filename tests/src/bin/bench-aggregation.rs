//! `make bench-aggregation`: the aggregation API's figures from the issue "Multi-bank
//! aggregation", measured through HTTP against the deployed functions (template.yaml in
//! the local runtime, local AWS, the in-process sandbox bank with 3 banks × 3 accounts):
//!
//! - cold `GET /v1/balances` and `GET /v1/transactions`: a user whose connections have no
//!   snapshot yet, with every bank call delayed by the sandbox's latency fault (target
//!   ≤ 2.5 × the latency);
//! - warm reads of the same, served from the snapshot (target ≤ 20 ms, zero bank calls;
//!   the sandbox's call counts are read before and after every request);
//! - categorisation throughput, from the `bench-categorise` binary next to this one
//!   (target ≥ 8 million transactions/s on one core).
//!
//! Every figure is measured in the run that prints it. The function binaries are the ones
//! next to this binary (`target/release` when built with `--release`), unless
//! `BENCH_BIN_DIR` says otherwise.
//!
//! Environment: `BENCH_LATENCY_MS` (100), `BENCH_COLD_RUNS` (5 users per cold figure),
//! `BENCH_WARM_RUNS` (20), `BENCH_PAGE_SIZE` (200: every account's history in one page),
//! `BENCH_PAGED_SIZE` (the sandbox's default, 50: the extra rows with 3-page listings; 0
//! skips them), `BENCH_CATEGORISE` (1; 0 skips bench-categorise),
//! `RUST_LOG` (error).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use infra::sandbox::SandboxConfig;
use integration_tests::bench::{Row, bin_dir, emit, env_number, init_logs, ms, percentile};
use integration_tests::{Bundle, BundleOptions};
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "bench-aggregation-secret";
const APP: &str = "http://127.0.0.1:3000/app/connected";
const BANKS: [&str; 3] = ["lt-alpha", "lv-baltija", "ee-pohja"];
const WARM_TARGET: Duration = Duration::from_millis(20);
const CATEGORISE_TARGET: f64 = 8.0;

/// Timings of one kind of request and the bank calls each caused.
struct Sample {
    times: Vec<Duration>,
    bank_calls: Vec<u64>,
}

impl Sample {
    fn sorted(&self) -> Vec<Duration> {
        let mut t = self.times.clone();
        t.sort();
        t
    }
}

/// A bundle (functions in the local runtime, local AWS, sandbox bank) and the users
/// linked to all three banks in it.
struct Scene {
    bundle: Bundle,
    next_user: usize,
    label: &'static str,
}

impl Scene {
    async fn start(
        label: &'static str,
        bin_dir: &Path,
        page_size: usize,
        registry: Option<&Path>,
    ) -> Scene {
        let mut env = Vec::new();
        if let Some(path) = registry {
            env.push(("BANK_REGISTRY_PATH", path.display().to_string()));
        }
        let bundle = Bundle::start_with(
            SECRET,
            &env,
            BundleOptions {
                sandbox: SandboxConfig {
                    page_size,
                    ..SandboxConfig::default()
                },
                bin_dir: bin_dir.to_owned(),
                // Long polls: the idle queues' pollers leave local AWS to the reads timed.
                sqs_poll_wait: Duration::from_secs(1),
                ..BundleOptions::default()
            },
        )
        .await;
        Scene {
            bundle,
            next_user: 0,
            label,
        }
    }

    /// A fresh user with the three banks linked and approved (no latency fault yet).
    async fn linked_user(&mut self) -> anyhow::Result<String> {
        self.next_user += 1;
        let user = format!("bench-{}-{}", self.label, self.next_user);
        for bank in BANKS {
            let created = self
                .bundle
                .connect(
                    &user,
                    json!({"bankId": bank, "validDays": 90, "redirectUrl": APP}),
                )
                .await;
            let (status, location) = self
                .bundle
                .follow(&self.bundle.decide(&created, "approve").await)
                .await;
            ensure!(
                status == 302
                    && location
                        .as_deref()
                        .is_some_and(|l| l.contains("status=valid")),
                "linking {bank} for {user}: {status} {location:?}"
            );
        }
        Ok(user)
    }

    async fn bank_calls(&self) -> u64 {
        self.bundle.sandbox.get_json("counts").await["total"]
            .as_u64()
            .unwrap_or(0)
    }

    /// One timed request; checks the answer covers 3 banks × 3 accounts without errors and
    /// says whether it came from the snapshot as `from_snapshot` expects.
    async fn timed(
        &self,
        user: &str,
        path: &str,
        from_snapshot: bool,
    ) -> anyhow::Result<(Duration, u64, Value)> {
        let before = self.bank_calls().await;
        let started = Instant::now();
        let (status, answer) = self.bundle.call(user, Method::GET, path, None).await;
        let elapsed = started.elapsed();
        let calls = self.bank_calls().await - before;
        ensure!(status == 200, "GET {path} as {user}: {status} {answer}");
        ensure!(
            answer["errors"].as_array().is_some_and(Vec::is_empty),
            "GET {path} as {user} reported errors: {}",
            answer["errors"]
        );
        let sources = answer["sources"].as_array().context("sources")?;
        ensure!(
            sources.len() == BANKS.len()
                && sources
                    .iter()
                    .all(|s| s["fromSnapshot"].as_bool() == Some(from_snapshot)),
            "GET {path} as {user}: expected fromSnapshot={from_snapshot} for 3 banks: {sources:?}"
        );
        if path.starts_with("/v1/balances") {
            let accounts = answer["accounts"].as_array().map_or(0, Vec::len);
            ensure!(accounts == 9, "3 banks × 3 accounts, got {accounts}");
        }
        Ok((elapsed, calls, answer))
    }

    /// `runs` fresh users, each reading `path` once with nothing stored yet; returns the
    /// sample and the users (whose snapshots now exist).
    async fn cold(
        &mut self,
        path: &str,
        runs: usize,
        latency_ms: u64,
    ) -> anyhow::Result<(Sample, Vec<String>)> {
        let mut users = Vec::new();
        self.bundle.sandbox.clear_faults().await;
        for _ in 0..runs {
            users.push(self.linked_user().await?);
        }
        self.set_latency(latency_ms).await;
        let mut sample = Sample {
            times: vec![],
            bank_calls: vec![],
        };
        for user in &users {
            let (elapsed, calls, _) = self.timed(user, path, false).await?;
            sample.times.push(elapsed);
            sample.bank_calls.push(calls);
        }
        Ok((sample, users))
    }

    /// `runs` reads of `path` by `user`, after `warmup` unmeasured ones.
    async fn warm(
        &self,
        user: &str,
        path: &str,
        warmup: usize,
        runs: usize,
    ) -> anyhow::Result<Sample> {
        for _ in 0..warmup {
            self.timed(user, path, true).await?;
        }
        let mut sample = Sample {
            times: vec![],
            bank_calls: vec![],
        };
        for _ in 0..runs {
            let (elapsed, calls, _) = self.timed(user, path, true).await?;
            sample.times.push(elapsed);
            sample.bank_calls.push(calls);
        }
        Ok(sample)
    }

    /// `runs` reads of `path` by `user` that go to the banks (`refresh=true`).
    async fn refetch(&self, user: &str, path: &str, runs: usize) -> anyhow::Result<Sample> {
        let mut sample = Sample {
            times: vec![],
            bank_calls: vec![],
        };
        for _ in 0..runs {
            let (elapsed, calls, _) = self.timed(user, path, false).await?;
            sample.times.push(elapsed);
            sample.bank_calls.push(calls);
        }
        Ok(sample)
    }

    async fn set_latency(&self, latency_ms: u64) {
        self.bundle
            .sandbox
            .set_faults(json!({ "latencyMs": latency_ms }))
            .await;
    }

    /// Starts the aggregation function's instance and its connections (Lambda cold start,
    /// SDK clients, ECB rates cache) with reads that are not measured.
    async fn warm_up_function(&mut self) -> anyhow::Result<()> {
        let user = self.linked_user().await?;
        for _ in 0..2 {
            for path in ["/v1/balances?baseCurrency=EUR", "/v1/transactions"] {
                let (status, answer) = self.bundle.call(&user, Method::GET, path, None).await;
                ensure!(status == 200, "warm-up GET {path}: {status} {answer}");
            }
        }
        Ok(())
    }

    /// One Berlin Group round trip with the latency fault, measured (an unauthenticated
    /// status read: the fault's delay comes before validation).
    async fn round_trip(&self) -> anyhow::Result<Duration> {
        let url = format!(
            "{}/lt-alpha/v1/consents/none/status",
            self.bundle.sandbox.handle.base_url
        );
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            self.bundle.sandbox.http.get(&url).send().await?;
            times.push(started.elapsed());
        }
        times.sort();
        Ok(percentile(&times, 0.5))
    }

    /// One DynamoDB call to local AWS from here (DescribeTable of the consents table),
    /// median of 10: what each store read of the functions costs at least.
    async fn store_round_trip(&self) -> anyhow::Result<Duration> {
        let client = self.bundle.rt.local.dynamodb();
        let table = self
            .bundle
            .rt
            .local
            .resources
            .tables
            .get("ConsentsTable")
            .context("ConsentsTable")?
            .clone();
        let mut times = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            client.describe_table().table_name(&table).send().await?;
            times.push(started.elapsed());
        }
        times.sort();
        Ok(percentile(&times, 0.5))
    }

    async fn stop(self) {
        self.bundle.stop().await;
    }
}

/// The bank calls a cold transactions read makes per account, as the sandbox counted them.
fn calls_summary(sample: &Sample) -> String {
    let min = sample.bank_calls.iter().min().copied().unwrap_or(0);
    let max = sample.bank_calls.iter().max().copied().unwrap_or(0);
    if min == max {
        format!("{min}")
    } else {
        format!("{min}–{max}")
    }
}

/// Throughput in million transactions per second from the `rate_of` line `bench-categorise`
/// printed (`<label>: … = <rate> million tx/s`).
fn rate_of(text: &str, label: &str) -> anyhow::Result<f64> {
    let line = text
        .lines()
        .find(|l| l.starts_with(label))
        .with_context(|| format!("bench-categorise printed no `{label}` line"))?;
    line.split('=')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .with_context(|| format!("no rate in {line:?}"))
}

/// Runs `bench-categorise` (printing its output); returns the engine's throughput and the
/// seed's substring loop's, in million transactions per second.
fn categorise(bin_dir: &Path) -> anyhow::Result<(f64, f64)> {
    let binary = bin_dir.join("bench-categorise");
    let output = std::process::Command::new(&binary)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(output.status.success(), "{} failed", binary.display());
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    Ok((
        rate_of(&text, "categorisation:")?,
        rate_of(&text, "naive lower-case substring loop")?,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let latency_ms = env_number("BENCH_LATENCY_MS", 100)?;
    let cold_runs = usize::try_from(env_number("BENCH_COLD_RUNS", 5)?)?.max(1);
    let warm_runs = usize::try_from(env_number("BENCH_WARM_RUNS", 20)?)?.max(1);
    // Page sizes: `page` holds an account's 90 days in one page (the two dependent
    // round trips); `paged` (the sandbox's default) splits the longest into 3 pages.
    let page = usize::try_from(env_number("BENCH_PAGE_SIZE", 200)?)?.max(1);
    let paged = usize::try_from(env_number(
        "BENCH_PAGED_SIZE",
        SandboxConfig::default().page_size as u64,
    )?)?;
    let run_categorise = env_number("BENCH_CATEGORISE", 1)? != 0;
    let bin_dir = bin_dir()?;
    let profile = bin_dir
        .file_name()
        .map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned());
    let cold_target = Duration::from_secs_f64(2.5 * latency_ms as f64 / 1000.0);
    let mut rows = Vec::new();

    // One core, nothing else running: before the bundle starts.
    let categorise_rate = if run_categorise {
        println!("## bench-categorise\n");
        Some(categorise(&bin_dir)?)
    } else {
        None
    };

    println!("\n## bench-aggregation\n");
    eprintln!(
        "starting the bundle ({profile} binaries from {})",
        bin_dir.display()
    );
    let mut scene = Scene::start("p50", &bin_dir, page, None).await;
    scene.warm_up_function().await?;
    scene.set_latency(latency_ms).await;
    let round_trip = scene.round_trip().await?;
    let store_round_trip = scene.store_round_trip().await?;

    eprintln!("cold reads ({cold_runs} users each)");
    let (cold_balances, balance_users) = scene
        .cold("/v1/balances?baseCurrency=EUR", cold_runs, latency_ms)
        .await?;
    let (cold_tx, tx_users) = scene
        .cold("/v1/transactions", cold_runs, latency_ms)
        .await?;
    eprintln!("warm reads ({warm_runs} each)");
    let warm_balances = scene
        .warm(
            &balance_users[0],
            "/v1/balances?baseCurrency=EUR",
            3,
            warm_runs,
        )
        .await?;
    let warm_tx = scene
        .warm(&tx_users[0], "/v1/transactions", 3, warm_runs)
        .await?;
    // The seed's approach: every read asks the banks again (accounts, then balances).
    // Ours does the same when the caller asks for it with `refresh=true`.
    eprintln!("reads that fetch everything again ({cold_runs})");
    let refetch = scene
        .refetch(
            &balance_users[0],
            "/v1/balances?baseCurrency=EUR&refresh=true",
            cold_runs,
        )
        .await?;
    scene.stop().await;

    let cold_row = |what: &str, sample: &Sample, page: usize| {
        let sorted = sample.sorted();
        let median = percentile(&sorted, 0.5);
        Row::new(
            "aggregation",
            format!(
                "cold {what}, page size {page} (median of {}, max)",
                sorted.len()
            ),
            format!(
                "{} ({}), {} bank calls",
                ms(median),
                ms(*sorted.last().unwrap_or(&Duration::ZERO)),
                calls_summary(sample)
            ),
        )
        .target(
            format!("≤ {} (2.5 × {latency_ms} ms)", ms(cold_target)),
            median <= cold_target,
        )
    };
    let warm_rows = |what: &str, sample: &Sample, rows: &mut Vec<Row>| {
        let sorted = sample.sorted();
        let p95 = percentile(&sorted, 0.95);
        rows.push(
            Row::new(
                "aggregation",
                format!(
                    "warm {what} from the snapshot (p50 / p95 of {})",
                    sorted.len()
                ),
                format!("{} / {}", ms(percentile(&sorted, 0.5)), ms(p95)),
            )
            .target(format!("≤ {}", ms(WARM_TARGET)), p95 <= WARM_TARGET),
        );
        let most = sample.bank_calls.iter().max().copied().unwrap_or(0);
        rows.push(
            Row::new(
                "bank calls per operation",
                format!("warm {what} (max of {})", sorted.len()),
                most.to_string(),
            )
            .target("0", most == 0),
        );
    };
    rows.push(cold_row("GET /v1/balances", &cold_balances, page));
    rows.push(cold_row("GET /v1/transactions", &cold_tx, page));
    warm_rows("GET /v1/balances", &warm_balances, &mut rows);
    warm_rows("GET /v1/transactions", &warm_tx, &mut rows);
    for (what, sample) in [
        ("cold GET /v1/balances", &cold_balances),
        ("cold GET /v1/transactions", &cold_tx),
        ("GET /v1/balances?refresh=true", &refetch),
    ] {
        rows.push(Row::new(
            "bank calls per operation",
            format!("{what}, 3 banks × 3 accounts"),
            calls_summary(sample),
        ));
    }
    let naive = percentile(&refetch.sorted(), 0.5);
    let ours = percentile(&warm_balances.sorted(), 0.5);
    rows.push(
        Row::new(
            "naive approach",
            format!(
                "seed's refetch on every read: GET /v1/balances asking the banks each time (p50 of {})",
                refetch.times.len()
            ),
            format!("{}, {} bank calls", ms(naive), calls_summary(&refetch)),
        )
        .against(
            format!("snapshot read {}, 0 bank calls", ms(ours)),
            naive.as_secs_f64() / ours.as_secs_f64().max(1e-9),
        ),
    );

    // For comparison: the same cold read when listings take several pages, with the
    // parallelPages quirk (pages 2..N together) and without it (one page after the other).
    // Paging adds dependent round trips by the bank's design, so these rows have no target.
    if paged > 0 {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sequential_registry = std::env::temp_dir().join(format!(
            "bench-aggregation-banks-{}.json",
            std::process::id()
        ));
        let mut registry: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("infra/banks.json"))?)?;
        for bank in registry["banks"].as_array_mut().context("banks")? {
            bank["quirks"]["parallelPages"] = json!(false);
        }
        std::fs::write(&sequential_registry, registry.to_string())?;
        for (label, registry, how) in [
            ("par", None, "pages 2..N together (parallelPages)"),
            (
                "seq",
                Some(sequential_registry.as_path()),
                "pages one by one (parallelPages off)",
            ),
        ] {
            eprintln!("cold transactions, page size {paged}, {how}");
            let mut scene = Scene::start(label, &bin_dir, paged, registry).await;
            scene.warm_up_function().await?;
            let (sample, _) = scene
                .cold("/v1/transactions", cold_runs, latency_ms)
                .await?;
            scene.stop().await;
            let mut row = cold_row("GET /v1/transactions", &sample, paged);
            row.measurement = row.measurement.replace(
                "cold GET /v1/transactions",
                &format!("cold GET /v1/transactions, {how}"),
            );
            row.target = "(no target: 3 or more dependent round trips when listings take 3 pages)"
                .to_owned();
            row.verdict = String::new();
            rows.push(row);
        }
        let _ = std::fs::remove_file(&sequential_registry);
    }

    if let Some((rate, naive_rate)) = categorise_rate {
        rows.push(
            Row::new(
                "categorisation",
                "1,000,000 transactions (bench-categorise, best of 5)",
                format!("{rate:.2} million tx/s"),
            )
            .target(
                format!("≥ {CATEGORISE_TARGET} million tx/s, one core"),
                rate >= CATEGORISE_TARGET,
            ),
        );
        rows.push(
            Row::new(
                "naive approach",
                "seed's categoriser: lower-cased substring loop over the keywords (same transactions)",
                format!("{naive_rate:.2} million tx/s"),
            )
            .against(
                format!("{rate:.2} million tx/s"),
                rate / naive_rate.max(1e-9),
            ),
        );
    }

    emit(&rows)?;
    println!(
        "\nSandbox latency fault {latency_ms} ms on every Berlin Group call (one round trip measured: {}); \
         local AWS at {} (one DynamoDB call measured: {}); \
         sandbox page size {page} unless the row says otherwise; 3 banks × 3 accounts, 90 days of history; \
         {profile} function binaries ({}); {cold_runs} users per cold figure, {warm_runs} warm reads after 3 unmeasured ones; \
         the aggregation function's instance warmed up first.",
        ms(round_trip),
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into()),
        ms(store_round_trip),
        bin_dir.display()
    );
    println!(
        "A cold balances read is 1 bank round trip with the sandbox banks' withBalance quirk (the account list \
         with its balances; 2 without: the list, then every account's balances). A cold transactions read is 2 \
         when each account's history fits one page (the account list, then every account's transactions), \
         3 when listings take several pages (the remaining pages together with the parallelPages quirk, \
         else one round trip per page). Both also make dependent DynamoDB calls (the connections with \
         their snapshots, access budget, snapshot writes); a warm read makes one DynamoDB request (a Query of \
         the user's partition: the connections and their snapshots together) and no bank call."
    );
    if profile != "release" {
        println!(
            "Note: {profile} binaries measured; build with --release for figures worth quoting."
        );
    }
    Ok(())
}
