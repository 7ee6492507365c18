//! `make bench`: per-function figures of the release build, measured through the same
//! Lambda Runtime API emulation the local runtime uses:
//!
//! - bootstrap size (stripped, as packaged);
//! - cold start: process start → first handled invocation answered (median of runs);
//! - warm invocation latency (p50 / p99);
//! - peak memory (VmHWM) of the function process after the runs.
//!
//! Usage: `bench-functions [BIN_DIR]` (default: the workspace's target/release).
//! Environment: `BENCH_COLD_RUNS` (default 20), `BENCH_WARM_RUNS` (default 200).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use infra::local_runtime::Invoke;
use infra::local_runtime::app::{PlannedFunction, PlannedRoute, RuntimePlan};
use infra::local_runtime::lambda::{FunctionConfig, LambdaHost};
use infra::template::{ResolveContext, Template};
use serde_json::{Value, json};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The plan with stand-in resource names: the bench needs no AWS for functions whose
/// measured route does not touch it.
fn plan(template_path: &Path, bin_dir: &Path) -> anyhow::Result<RuntimePlan> {
    let template = Template::load(template_path)?;
    let mut ctx = ResolveContext::new("bench", "eu-central-1", "123456789012");
    ctx.parameters
        .extend(infra::local_runtime::app::local_parameters());
    let provisioned = infra::provision::stand_in(&template, &ctx)?;
    ctx.deployed = provisioned.deployed(&ctx.region, &ctx.account_id);
    RuntimePlan::build(&template, template_path, &ctx, &provisioned, bin_dir)
}

/// A payload format 2.0 event for a public GET route, as API Gateway sends it.
fn http_event(route: &PlannedRoute) -> Value {
    json!({
        "version": "2.0", "routeKey": format!("GET {}", route.path), "rawPath": route.path,
        "rawQueryString": "", "headers": {"host": "bench"}, "isBase64Encoded": false,
        "requestContext": {"accountId": "123456789012", "apiId": "bench", "domainName": "bench",
            "domainPrefix": "bench", "requestId": "bench", "routeKey": format!("GET {}", route.path),
            "stage": "$default", "time": "21/Nov/2026:13:00:00 +0000", "timeEpoch": 0,
            "http": {"method": "GET", "path": route.path, "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1", "userAgent": "bench"}}
    })
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release"));
    let cold_runs: usize = std::env::var("BENCH_COLD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let warm_runs: usize = std::env::var("BENCH_WARM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let plan = plan(&infra::template::template_path(), &bin_dir)?;

    println!(
        "| function | route | bootstrap size | cold start p50 (max) | warm p50 / p99 | peak memory |"
    );
    println!("|---|---|---|---|---|---|");
    for f in &plan.functions {
        let size = std::fs::metadata(&f.binary)
            .with_context(|| {
                format!(
                    "{} (build with `cargo build --release --bins`)",
                    f.binary.display()
                )
            })?
            .len();
        let Some(route) = plan
            .routes
            .iter()
            .find(|r| r.function == f.name && r.method == "GET" && !r.protected)
        else {
            println!(
                "| {} | (no public GET route to drive it) | {:.2} MB | | | |",
                f.name,
                size as f64 / 1e6
            );
            continue;
        };
        let event = http_event(route);

        let mut cold = Vec::with_capacity(cold_runs);
        for _ in 0..cold_runs {
            let host = LambdaHost::new(vec![config(f)]);
            let started = Instant::now();
            let answer = host.invoke(&f.name, event.clone()).await?;
            cold.push(started.elapsed());
            // Any answer that is not a server error counts (a callback without a state
            // answers 400 by design); a 5xx means the function is broken.
            let status = answer["statusCode"].as_u64().unwrap_or(200);
            anyhow::ensure!(status < 500, "{} answered {answer}", f.name);
            host.shutdown().await;
        }
        cold.sort();

        let host = LambdaHost::new(vec![config(f)]);
        host.invoke(&f.name, event.clone()).await?;
        let mut warm = Vec::with_capacity(warm_runs);
        for _ in 0..warm_runs {
            let started = Instant::now();
            host.invoke(&f.name, event.clone()).await?;
            warm.push(started.elapsed());
        }
        warm.sort();
        let rss = peak_rss_kb(&f.binary);
        host.shutdown().await;

        println!(
            "| {} | GET {} | {:.2} MB | {} ms ({} ms) | {} / {} ms | {} |",
            f.name,
            route.path,
            size as f64 / 1e6,
            ms(percentile(&cold, 0.5)),
            ms(*cold.last().unwrap_or(&Duration::ZERO)),
            ms(percentile(&warm, 0.5)),
            ms(percentile(&warm, 0.99)),
            rss.map_or_else(
                || "n/a".to_owned(),
                |kb| format!("{:.1} MB", kb as f64 / 1024.0)
            ),
        );
    }
    println!(
        "\n{cold_runs} cold starts (process spawn → first answer, through the Lambda Runtime API emulation), {warm_runs} warm invocations; {} ({}).",
        std::env::consts::ARCH,
        bin_dir.display()
    );
    Ok(())
}
