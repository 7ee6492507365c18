//! `make bench`, first part: per-function figures of the built binaries, every function of
//! template.yaml driven through the same Lambda Runtime API emulation the local runtime
//! uses, with its resources provisioned in local AWS (`AWS_ENDPOINT_URL`; `make bench`
//! starts a private moto_server):
//!
//! - bootstrap size (as built; the release profile strips it);
//! - process start → first handled invocation answered (median and max of cold starts);
//! - warm invocation latency (p50 / p99);
//! - peak memory (VmHWM) of the function process after the warm runs.
//!
//! Each function gets the event it is deployed for: an API route's request (a GET route,
//! with a signed-in user's claims where the JWT authorizer guards it), an empty SQS batch,
//! or its schedule's event. The user has no data, so the figures are the function's own
//! start and one round trip to local AWS, not a bank's.
//!
//! The function binaries are the ones next to this binary (`target/release` when built
//! with `--release`) unless `BENCH_BIN_DIR` says otherwise. Environment: `BENCH_COLD_RUNS`
//! (default 10), `BENCH_WARM_RUNS` (default 100); `BENCH_REPORT` (see
//! `integration_tests::bench::emit`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use infra::local_runtime::Invoke;
use infra::local_runtime::app::{PlannedFunction, RuntimePlan};
use infra::local_runtime::lambda::{FunctionConfig, LambdaHost};
use integration_tests::LocalStack;
use integration_tests::bench::{Row, bin_dir, emit, env_number, init_logs, ms, percentile};
use serde_json::{Value, json};

/// A payload format 2.0 event for `GET path`, as API Gateway sends it; with the JWT
/// authorizer's claims of `user` when the route is protected.
fn http_event(path: &str, user: Option<&str>) -> Value {
    let mut event = json!({
        "version": "2.0", "routeKey": format!("GET {path}"), "rawPath": path,
        "rawQueryString": "", "headers": {"host": "bench"}, "isBase64Encoded": false,
        "requestContext": {"accountId": "123456789012", "apiId": "bench", "domainName": "bench",
            "domainPrefix": "bench", "requestId": "bench", "routeKey": format!("GET {path}"),
            "stage": "$default", "time": "21/Nov/2026:13:00:00 +0000", "timeEpoch": 0,
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1", "userAgent": "bench"}}
    });
    if let Some(user) = user {
        event["requestContext"]["authorizer"] =
            json!({"jwt": {"claims": {"sub": user}, "scopes": null}});
    }
    event
}

/// The event `f` is deployed for, and what it is (for the table).
fn event_for(plan: &RuntimePlan, f: &PlannedFunction, region: &str) -> Option<(Value, String)> {
    let routes: Vec<_> = plan
        .routes
        .iter()
        .filter(|r| r.function == f.name && r.method == "GET" && !r.path.contains('{'))
        .collect();
    // A public route first: it needs no user.
    let route = routes
        .iter()
        .find(|r| !r.protected)
        .or_else(|| routes.first());
    if let Some(route) = route {
        let user = route.protected.then_some("bench-user");
        let what = if route.protected {
            format!("GET {} (signed in, no data)", route.path)
        } else {
            format!("GET {}", route.path)
        };
        return Some((http_event(&route.path, user), what));
    }
    if let Some(queue) = plan.queues.iter().find(|q| q.function == f.name) {
        return Some((
            json!({"Records": []}),
            format!("SQS batch from {} (empty)", queue.queue),
        ));
    }
    let schedule = plan.schedules.iter().find(|s| s.function == f.name)?;
    let event = schedule.input.clone().unwrap_or_else(|| {
        infra::local_runtime::schedule::scheduled_event(&schedule.name, region, chrono::Utc::now())
    });
    Some((event, format!("schedule {}", schedule.name)))
}

/// Peak resident memory (kB) of the running processes of `binary`.
fn peak_rss_kb(binary: &Path) -> Option<u64> {
    let binary = binary.canonicalize().ok()?;
    let mut peak = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let dir = entry.path();
        if std::fs::read_link(dir.join("exe")).ok().as_deref() != Some(binary.as_path()) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        peak = peak.max(hwm);
    }
    peak
}

fn config(f: &PlannedFunction) -> FunctionConfig {
    FunctionConfig {
        name: f.name.clone(),
        binary: f.binary.clone(),
        env: f.environment.clone(),
        timeout: Duration::from_secs(u64::from(f.timeout_secs)),
        memory_mb: f.memory_mb,
        max_instances: 1,
    }
}

/// Fails unless `answer` is a handled invocation: no function error, no 5xx, no SQS
/// message reported failed.
fn check(name: &str, answer: &Value) -> anyhow::Result<()> {
    ensure!(answer.get("errorType").is_none(), "{name} failed: {answer}");
    // A 4xx counts (a callback without a state answers 400 by design); a 5xx means the
    // function is broken.
    let status = answer["statusCode"].as_u64().unwrap_or(200);
    ensure!(status < 500, "{name} answered {answer}");
    ensure!(
        answer["batchItemFailures"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{name} reported failures: {answer}"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let bin_dir = bin_dir()?;
    let cold_runs = usize::try_from(env_number("BENCH_COLD_RUNS", 10)?)?.max(1);
    let warm_runs = usize::try_from(env_number("BENCH_WARM_RUNS", 100)?)?.max(1);

    let template_path = infra::template::template_path();
    let template = infra::template::Template::load(&template_path)?;
    let local = LocalStack::provision_template(&template).await;
    let mut ctx = infra::provision::resolve_context(&local.sdk, &local.resources.stack_name);
    ctx.parameters
        .extend(infra::local_runtime::app::local_parameters());
    ctx.deployed = local.resources.deployed(&ctx.region, &ctx.account_id);
    let mut plan = RuntimePlan::build(&template, &template_path, &ctx, &local.resources, &bin_dir)?;
    let missing = plan.missing_binaries();
    ensure!(
        missing.is_empty(),
        "build the functions first (cargo build --release --bins): {missing:?}"
    );
    // Lambda hands its functions credentials and a region through the environment; the
    // bank registry is the repository's unless BANK_REGISTRY_PATH names another.
    let registry = std::env::var("BANK_REGISTRY_PATH").unwrap_or_else(|_| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../infra/banks.json")
            .display()
            .to_string()
    });
    for f in &mut plan.functions {
        f.environment
            .insert("BANK_REGISTRY_PATH".to_owned(), registry.clone());
        f.environment
            .insert("AWS_REGION".to_owned(), ctx.region.clone());
        for name in [
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            if let Ok(value) = std::env::var(name) {
                f.environment.insert(name.to_owned(), value);
            }
        }
    }

    let mut rows = Vec::new();
    for f in &plan.functions {
        let size = std::fs::metadata(&f.binary)
            .with_context(|| f.binary.display().to_string())?
            .len();
        let Some((event, what)) = event_for(&plan, f, &ctx.region) else {
            rows.push(Row::new(
                "functions",
                format!("{} (no event to drive it)", f.name),
                format!("bootstrap {:.2} MB", size as f64 / 1e6),
            ));
            continue;
        };
        eprintln!("{}: {what}", f.name);

        let mut cold = Vec::with_capacity(cold_runs);
        for _ in 0..cold_runs {
            let host = LambdaHost::new(vec![config(f)]);
            let started = Instant::now();
            let answer = host.invoke(&f.name, event.clone()).await?;
            cold.push(started.elapsed());
            check(&f.name, &answer)?;
            host.shutdown().await;
        }
        cold.sort();

        let host = LambdaHost::new(vec![config(f)]);
        host.invoke(&f.name, event.clone()).await?;
        let mut warm = Vec::with_capacity(warm_runs);
        for _ in 0..warm_runs {
            let started = Instant::now();
            let answer = host.invoke(&f.name, event.clone()).await?;
            warm.push(started.elapsed());
            check(&f.name, &answer)?;
        }
        warm.sort();
        let rss = peak_rss_kb(&f.binary);
        host.shutdown().await;

        rows.push(Row::new(
            "functions",
            format!("{}: {what}", f.name),
            format!(
                "bootstrap {:.2} MB · start → first answer {} (max {}) · warm p50 {} / p99 {} · peak memory {}",
                size as f64 / 1e6,
                ms(percentile(&cold, 0.5)),
                ms(*cold.last().unwrap_or(&Duration::ZERO)),
                ms(percentile(&warm, 0.5)),
                ms(percentile(&warm, 0.99)),
                rss.map_or_else(
                    || "n/a".to_owned(),
                    |kb| format!("{:.1} MB", kb as f64 / 1024.0)
                ),
            ),
        ));
    }
    local.teardown().await;

    println!("## bench-functions\n");
    emit(&rows)?;
    println!(
        "\n{cold_runs} cold starts per function (process spawn → first answer, through the Lambda Runtime API emulation), \
         {warm_runs} warm invocations; local AWS at {}; {} binaries ({}).",
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into()),
        std::env::consts::ARCH,
        bin_dir.display()
    );
    Ok(())
}
