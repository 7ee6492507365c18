//! Wiring: template.yaml → a [`RuntimePlan`] (functions, routes, queue mappings,
//! schedules) → the running emulations. Nothing here is configured twice: every route,
//! queue and schedule comes from the template.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Invoke;
use super::http_api::{self, HttpApiConfig, RouteSpec};
use super::lambda::{FunctionConfig, LambdaHost};
use super::schedule::{ScheduleSpec, Scheduler};
use super::sqs::{self, SqsMapping};
use crate::provision::Provisioned;
use crate::template::{EventSpec, FunctionSpec, ResolveContext, Template};

/// Everything the local runtime will run, derived from the template alone.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimePlan {
    pub functions: Vec<PlannedFunction>,
    pub routes: Vec<PlannedRoute>,
    pub queues: Vec<PlannedQueue>,
    pub schedules: Vec<PlannedSchedule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedFunction {
    pub name: String,
    pub binary: PathBuf,
    pub timeout_secs: u32,
    pub memory_mb: u32,
    #[serde(skip)]
    pub environment: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedRoute {
    pub method: String,
    pub path: String,
    pub function: String,
    pub protected: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedQueue {
    pub event: String,
    pub function: String,
    pub queue: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: u32,
    pub batching_window_secs: u32,
    pub report_batch_item_failures: bool,
    pub max_concurrency: u32,
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedSchedule {
    pub name: String,
    pub function: String,
    pub expression: String,
    pub enabled: bool,
    #[serde(skip)]
    pub input: Option<serde_json::Value>,
}

/// Values for template parameters that have no safe default to deploy with (secrets):
/// locally they come from the environment or a development default.
pub fn local_parameters() -> BTreeMap<String, String> {
    let secret = std::env::var("LOCAL_SCA_STATE_SECRET")
        .ok()
        .filter(|v| v.len() >= 32)
        .unwrap_or_else(|| "local-development-sca-state-secret-not-for-deployment".to_owned());
    let webhook_secret = std::env::var("LOCAL_WEBHOOK_SECRET")
        .ok()
        .filter(|v| v.len() >= 32)
        .unwrap_or_else(|| "local-development-webhook-secret-not-for-deployment".to_owned());
    // FX rates from the sandbox bank's ECB-format feed unless told otherwise.
    let ecb = std::env::var("ECB_RATES_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            let bank = std::env::var("SANDBOX_BANK_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned());
            format!("{}/ecb/eurofxref-daily.xml", bank.trim_end_matches('/'))
        });
    BTreeMap::from([
        ("ScaStateSecret".to_owned(), secret),
        ("WebhookSecret".to_owned(), webhook_secret),
        ("EcbRatesUrl".to_owned(), ecb),
    ])
}

/// The template parameters that name the public URL of the API for a runtime on `port`:
/// `PublicBaseUrl` (where the banks send the browser back, `PUBLIC_BASE_URL` or
/// `http://127.0.0.1:{port}`) and `RedirectAllowList` (`REDIRECT_ALLOW_LIST` or the
/// runtime's own origins). The template's defaults name port 3000 only.
pub fn public_url_parameters(
    port: u16,
    lookup: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let base = set("PUBLIC_BASE_URL")
        .map(|v| v.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
    let allow = set("REDIRECT_ALLOW_LIST")
        .unwrap_or_else(|| format!("http://127.0.0.1:{port},http://localhost:{port}"));
    BTreeMap::from([
        ("PublicBaseUrl".to_owned(), base),
        ("RedirectAllowList".to_owned(), allow),
    ])
}

/// Lambda's default for SQS event source mappings without ScalingConfig is "as many as
/// needed"; locally we cap it.
const DEFAULT_SQS_CONCURRENCY: u32 = 2;

impl RuntimePlan {
    /// The plan for `template` (at `template_path`) against provisioned resources.
    /// `bin_dir` holds the built function binaries (e.g. `target/debug`).
    pub fn build(
        template: &Template,
        template_path: &Path,
        ctx: &ResolveContext,
        provisioned: &Provisioned,
        bin_dir: &Path,
    ) -> anyhow::Result<RuntimePlan> {
        let template_dir = template_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let functions: Vec<FunctionSpec> = template.functions(ctx, &template_dir)?;
        let mut plan = RuntimePlan {
            functions: vec![],
            routes: vec![],
            queues: vec![],
            schedules: vec![],
        };
        for f in &functions {
            plan.functions.push(PlannedFunction {
                name: f.logical_id.clone(),
                binary: bin_dir.join(&f.binary),
                timeout_secs: f.timeout_secs,
                memory_mb: f.memory_mb,
                environment: f.environment.clone(),
            });
            for event in &f.events {
                match event {
                    EventSpec::HttpApi {
                        method,
                        path,
                        protected,
                        ..
                    } => plan.routes.push(PlannedRoute {
                        method: method.clone(),
                        path: path.clone(),
                        function: f.logical_id.clone(),
                        protected: *protected,
                    }),
                    EventSpec::Sqs {
                        name,
                        queue,
                        batch_size,
                        batching_window_secs,
                        report_batch_item_failures,
                        max_concurrency,
                        enabled,
                    } => {
                        let q = provisioned.queues.get(queue).ok_or_else(|| {
                            anyhow!("{}: queue {queue} was not provisioned", f.logical_id)
                        })?;
                        plan.queues.push(PlannedQueue {
                            event: name.clone(),
                            function: f.logical_id.clone(),
                            queue: queue.clone(),
                            queue_url: q.url.clone(),
                            queue_arn: q.arn.clone(),
                            batch_size: *batch_size,
                            batching_window_secs: *batching_window_secs,
                            report_batch_item_failures: *report_batch_item_failures,
                            max_concurrency: max_concurrency.unwrap_or(DEFAULT_SQS_CONCURRENCY),
                            enabled: *enabled,
                        });
                    }
                    EventSpec::Schedule {
                        name,
                        expression,
                        enabled,
                        input,
                    } => plan.schedules.push(PlannedSchedule {
                        name: format!("{}.{name}", f.logical_id),
                        function: f.logical_id.clone(),
                        expression: expression.clone(),
                        enabled: *enabled,
                        input: input.clone(),
                    }),
                }
            }
        }
        plan.routes.sort();
        Ok(plan)
    }

    /// Binaries the plan needs that are not built yet.
    pub fn missing_binaries(&self) -> Vec<&Path> {
        self.functions
            .iter()
            .map(|f| f.binary.as_path())
            .filter(|b| !b.is_file())
            .collect()
    }
}

/// Settings of one local runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub addr: SocketAddr,
    pub jwt_secret: String,
    pub time_scale: f64,
    pub max_instances: usize,
    pub sqs_poll_wait: Duration,
    /// Share of SQS messages delivered twice (`SqsMapping::duplicate_rate`); 0 normally.
    pub sqs_duplicates: f64,
    /// The demo web app's folder (`web/app`), served where no API route answers, with
    /// `POST /__local/token`; `None` serves neither.
    pub web_root: Option<PathBuf>,
}

/// A running local runtime.
pub struct RunningRuntime {
    pub addr: SocketAddr,
    pub host: Arc<LambdaHost>,
    pub scheduler: Arc<Scheduler>,
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningRuntime {
    /// Stops pollers, schedules and the HTTP server, then every function process.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.host.shutdown().await;
    }
}

#[derive(Clone)]
struct AdminState {
    scheduler: Arc<Scheduler>,
    host: Arc<LambdaHost>,
    plan: Arc<RuntimePlan>,
}

/// Starts everything in `plan`; the HTTP API and the admin routes (`/__local/...`) are
/// served on `options.addr`.
pub async fn start(
    plan: RuntimePlan,
    sqs_client: aws_sdk_sqs::Client,
    region: String,
    options: RuntimeOptions,
) -> anyhow::Result<RunningRuntime> {
    let host = Arc::new(LambdaHost::new(
        plan.functions
            .iter()
            .map(|f| FunctionConfig {
                name: f.name.clone(),
                binary: f.binary.clone(),
                env: f.environment.clone(),
                timeout: Duration::from_secs(u64::from(f.timeout_secs)),
                memory_mb: f.memory_mb,
                max_instances: options.max_instances,
            })
            .collect(),
    ));
    let invoker: Arc<dyn Invoke> = host.clone();
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    let mappings: Vec<SqsMapping> = plan
        .queues
        .iter()
        .filter(|q| q.enabled)
        .map(|q| SqsMapping {
            name: q.event.clone(),
            function: q.function.clone(),
            queue_url: q.queue_url.clone(),
            queue_arn: q.queue_arn.clone(),
            batch_size: q.batch_size as usize,
            batching_window: Duration::from_secs(u64::from(q.batching_window_secs)),
            report_batch_item_failures: q.report_batch_item_failures,
            max_concurrency: q.max_concurrency as usize,
            poll_wait: options.sqs_poll_wait,
            duplicate_rate: options.sqs_duplicates.clamp(0.0, 1.0),
        })
        .collect();
    tasks.push(sqs::spawn(
        mappings,
        sqs_client,
        invoker.clone(),
        region,
        shutdown.clone(),
    ));

    let scheduler = Arc::new(
        Scheduler::new(
            plan.schedules
                .iter()
                .map(|s| ScheduleSpec {
                    name: s.name.clone(),
                    function: s.function.clone(),
                    expression: s.expression.clone(),
                    enabled: s.enabled,
                    input: s.input.clone(),
                })
                .collect(),
            invoker.clone(),
            options.time_scale,
        )
        .map_err(|e| anyhow!(e))?,
    );
    tasks.push(scheduler.clone().spawn(shutdown.clone()));

    let api = http_api::router(
        HttpApiConfig {
            routes: plan
                .routes
                .iter()
                .map(|r| RouteSpec {
                    function: r.function.clone(),
                    method: r.method.clone(),
                    path: r.path.clone(),
                    protected: r.protected,
                })
                .collect(),
            jwt_secret: options.jwt_secret.clone(),
            audience: None,
            max_body_bytes: 10 * 1024 * 1024,
        },
        invoker,
    );
    let web = options.web_root.as_deref().and_then(|folder| {
        match super::web::WebRoot::new(folder, plan.routes.iter().map(|r| r.path.as_str())) {
            Ok(web) => Some(web),
            Err(e) => {
                tracing::warn!(folder = %folder.display(), error = %e, "not serving the web app");
                None
            }
        }
    });
    let token = web
        .as_ref()
        .map(|_| super::web::token_router(options.jwt_secret.clone()));
    let admin = axum::Router::new()
        .route("/__local/plan", get(admin_plan))
        .route("/__local/functions", get(admin_functions))
        .route("/__local/schedules", get(admin_schedules))
        .route("/__local/schedules/{name}/fire", post(admin_fire))
        .with_state(AdminState {
            scheduler: scheduler.clone(),
            host: host.clone(),
            plan: Arc::new(plan),
        });
    let admin = match token {
        Some(token) => admin.merge(token),
        None => admin,
    };
    let app = super::web::serve_static(admin.merge(api), web);
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .with_context(|| format!("binding {}", options.addr))?;
    let addr = listener.local_addr()?;
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "local runtime HTTP server stopped");
        }
    }));
    tracing::info!(%addr, "local runtime listening");
    Ok(RunningRuntime {
        addr,
        host,
        scheduler,
        shutdown,
        tasks,
    })
}

async fn admin_plan(State(state): State<AdminState>) -> impl IntoResponse {
    Json(state.plan.as_ref().clone())
}

async fn admin_functions(State(state): State<AdminState>) -> impl IntoResponse {
    let stats: BTreeMap<String, serde_json::Value> = state
        .host
        .functions()
        .into_iter()
        .map(|f| {
            let s = state
                .host
                .stats(&f)
                .map(|s| format!("{s:?}"))
                .unwrap_or_default();
            (f, serde_json::Value::String(s))
        })
        .collect();
    Json(stats)
}

async fn admin_schedules(State(state): State<AdminState>) -> impl IntoResponse {
    let list: Vec<_> = state
        .scheduler
        .list()
        .into_iter()
        .map(|(name, function, expression, next)| {
            serde_json::json!({"name": name, "function": function, "expression": expression, "nextRun": next})
        })
        .collect();
    Json(list)
}

/// `POST /__local/schedules/{name}/fire`: runs a schedule now. An optional JSON body is
/// the scheduled event's `detail` (default `{}`), e.g. `{"allHours": true}`.
async fn admin_fire(
    State(state): State<AdminState>,
    UrlPath(name): UrlPath<String>,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let detail = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(detail) => Some(detail),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(
                        serde_json::json!({"error": format!("the body must be JSON (the event's detail): {e}")}),
                    ),
                );
            }
        }
    };
    match state.scheduler.fire_with_detail(&name, detail).await {
        Ok(result) => (
            StatusCode::OK,
            Json(serde_json::json!({"schedule": name, "result": result})),
        ),
        Err(super::InvokeError::UnknownFunction(_)) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no schedule named {name}")})),
        ),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(serde_json::json!({"schedule": name, "error": e.to_string()})),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_parameters_follow_the_port_unless_told() {
        let p = public_url_parameters(3100, |_| None);
        assert_eq!(p["PublicBaseUrl"], "http://127.0.0.1:3100");
        assert_eq!(
            p["RedirectAllowList"],
            "http://127.0.0.1:3100,http://localhost:3100"
        );
        let p = public_url_parameters(3100, |name| match name {
            "PUBLIC_BASE_URL" => Some("https://api.example/".to_owned()),
            "REDIRECT_ALLOW_LIST" => Some("https://app.example".to_owned()),
            _ => None,
        });
        assert_eq!(p["PublicBaseUrl"], "https://api.example");
        assert_eq!(p["RedirectAllowList"], "https://app.example");
        let p = public_url_parameters(3000, |_| Some(" ".to_owned()));
        assert_eq!(p["PublicBaseUrl"], "http://127.0.0.1:3000");
    }
}
