//! The local runtime: every function of template.yaml, wired as the template says.
//!
//! Environment: `TEMPLATE_PATH` (default: the repository's template.yaml), `STACK_NAME`
//! (`openbank-local`), `PORT` (3000), `LOCAL_JWT_SECRET` (`local-dev-secret`),
//! `LOCAL_TIME_SCALE` (1.0; 60 makes an hour pass in a minute for schedules),
//! `LOCAL_MAX_INSTANCES` (4 processes per function), `LOCAL_BIN_DIR` (the workspace's
//! `target/debug`), `WEB_ROOT` (the demo web app, default the repository's `web/app`),
//! `PUBLIC_BASE_URL` (`http://127.0.0.1:$PORT`: where the banks send the browser back) and
//! `REDIRECT_ALLOW_LIST` (`http://127.0.0.1:$PORT,http://localhost:$PORT`), plus the
//! standard AWS variables (`AWS_ENDPOINT_URL`, ...), which the functions inherit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use infra::local_runtime::app::{RuntimeOptions, RuntimePlan, start};
use infra::template::Template;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not valid")),
        _ => Ok(default),
    }
}

/// Ctrl-C (SIGINT) or SIGTERM, so `make up` and process managers stop us cleanly and
/// every function process goes with us.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let template_path = infra::template::template_path();
    let template = Template::load(&template_path)?;
    let sdk = shared::aws::load_config().await;
    let stack = std::env::var("STACK_NAME").unwrap_or_else(|_| "openbank-local".to_owned());

    // Idempotent: creates what is missing, learns the physical names of what exists.
    let provisioned = infra::provision::provision(&sdk, &template, &stack)
        .await
        .context(
            "provisioning local AWS from the template (is local AWS running? `make aws-up`)",
        )?;
    let port: u16 = env_or("PORT", 3000)?;
    let mut ctx = infra::provision::resolve_context(&sdk, &stack);
    ctx.parameters
        .extend(infra::local_runtime::app::local_parameters());
    ctx.parameters
        .extend(infra::local_runtime::app::public_url_parameters(
            port,
            |name| std::env::var(name).ok(),
        ));
    ctx.deployed = provisioned.deployed(&ctx.region, &ctx.account_id);

    let bin_dir = std::env::var_os("LOCAL_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let plan = RuntimePlan::build(&template, &template_path, &ctx, &provisioned, &bin_dir)?;
    let missing = plan.missing_binaries();
    if !missing.is_empty() {
        bail!("function binaries are not built: {missing:?}; run `cargo build --workspace --bins`");
    }

    let web_root = std::env::var_os("WEB_ROOT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web/app"));
    let options = RuntimeOptions {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        jwt_secret: infra::local_runtime::jwt::secret_from_env(),
        time_scale: env_or("LOCAL_TIME_SCALE", 1.0)?,
        max_instances: env_or("LOCAL_MAX_INSTANCES", 4)?,
        // Short receives by default (see `SqsMapping::poll_wait`); LocalStack or AWS users
        // may prefer long polls.
        sqs_poll_wait: Duration::from_millis(env_or("LOCAL_SQS_POLL_WAIT_MS", 0)?),
        // Fault runs: deliver this share of SQS messages twice (0 to 1).
        sqs_duplicates: env_or("LOCAL_SQS_DUPLICATES", 0.0)?,
        web_root: Some(web_root),
    };
    let routes = plan.routes.len();
    let queues = plan.queues.len();
    let schedules = plan.schedules.len();
    let runtime = start(
        plan,
        aws_sdk_sqs::Client::new(&sdk),
        ctx.region.clone(),
        options,
    )
    .await?;
    tracing::info!(
        url = %format!("http://{}", runtime.addr),
        routes, queues, schedules,
        "local runtime ready"
    );
    eprintln!(
        "\nlocal runtime: http://{addr}  ({routes} routes, {queues} queue mappings, {schedules} schedules)\n\
         demo web app:  http://{addr}/\n\
         plan:          curl http://{addr}/__local/plan\n\
         fire schedule: curl -X POST http://{addr}/__local/schedules/<Function.Event>/fire\n",
        addr = runtime.addr
    );
    shutdown_signal().await?;
    tracing::info!("stopping the local runtime");
    runtime.stop().await;
    Ok(())
}
