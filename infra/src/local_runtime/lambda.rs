//! The Lambda Runtime API, emulated: every function gets a pool of processes running its
//! real `bootstrap`, each talking to its own Runtime API endpoint
//! (`AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT`, API version 2018-06-01), exactly the protocol
//! `lambda_runtime` speaks in AWS.
//!
//! # Pool
//!
//! Invocations of a function wait in one queue. An instance that asks for its next event
//! (`GET /runtime/invocation/next`) takes the oldest one. When an invocation is queued and
//! no instance is free (idle, or still starting), a new instance is cold-started as long as
//! fewer than `max_instances` processes exist; otherwise the invocation waits for one.
//!
//! # Limits and failures
//!
//! - The function timeout runs from the moment an instance takes the invocation (the
//!   `Lambda-Runtime-Deadline-Ms` it receives). When it passes, the process is killed and
//!   the invocation fails with [`InvokeError::Timeout`].
//! - Initialisation (process start up to its first `/next`) is limited to
//!   `max(10 s, timeout)`: AWS allows 10 s of init and retries a slow init under the function
//!   timeout. A process that does not get there in time is killed and the invocation that
//!   waited longest fails with [`InvokeError::Timeout`]. A process that reports
//!   `/runtime/init/error` or exits before its first `/next` (for instance `/bin/sleep`
//!   without arguments) fails that invocation with [`InvokeError::Crashed`] instead.
//! - A process that exits while holding an invocation fails it with [`InvokeError::Crashed`]
//!   (the reason carries the exit status).
//! - A dead instance is forgotten; the next invocation that needs one cold-starts a new one.
//!
//! Response streaming (`Lambda-Runtime-Function-Response-Mode: streaming`) is not decoded:
//! such a body comes back as a JSON string.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path as FsPath, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Invoke, InvokeError};

/// The account id used in every ARN the local runtime makes up.
pub const ACCOUNT_ID: &str = "123456789012";
/// AWS's limit for the init phase; see the module documentation.
pub const INIT_LIMIT: Duration = Duration::from_secs(10);
/// Largest request/response body the Runtime API accepts (AWS: 6 MB synchronous payloads).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Region used in ARNs when neither the function's env nor the process env names one.
const FALLBACK_REGION: &str = "eu-central-1";

/// One function of the template, as the pool runs it.
#[derive(Debug, Clone)]
pub struct FunctionConfig {
    /// Template logical id, e.g. `ApiPublicFunction`.
    pub name: String,
    /// The `bootstrap` to run.
    pub binary: PathBuf,
    /// Environment for the process, on top of the inherited environment and the variables
    /// Lambda sets (these win over both).
    pub env: BTreeMap<String, String>,
    /// Template `Timeout`.
    pub timeout: Duration,
    /// Template `MemorySize` (only reported to the function, not enforced).
    pub memory_mb: u32,
    /// Concurrent processes allowed (values below 1 count as 1).
    pub max_instances: usize,
}

/// Counters of one function, see [`LambdaHost::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionStats {
    /// Finished invocations, whatever their outcome.
    pub invocations: u64,
    /// Invocations that did not produce a result (handler errors, timeouts, crashes).
    pub errors: u64,
    /// Of `errors`, the timeouts.
    pub timeouts: u64,
    /// Of `errors`, the crashes (including failed initialisations).
    pub crashes: u64,
    /// Processes started.
    pub cold_starts: u64,
    /// Processes alive now (starting, idle or busy).
    pub instances: usize,
    /// Processes holding an invocation now.
    pub busy: usize,
    /// Invocations waiting for an instance now.
    pub queued: usize,
}

/// Runs the functions' bootstraps behind emulated Runtime APIs. Cheap to share behind an
/// `Arc`; dropping it kills every process it started (as does [`LambdaHost::shutdown`]).
pub struct LambdaHost {
    pools: BTreeMap<String, Arc<Pool>>,
    root: CancellationToken,
}

impl LambdaHost {
    pub fn new(functions: Vec<FunctionConfig>) -> LambdaHost {
        let root = CancellationToken::new();
        let pools = functions
            .into_iter()
            .map(|config| {
                let region = region_for(&config.env);
                let arn = format!(
                    "arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{}",
                    config.name
                );
                let pool = Pool {
                    arn,
                    region,
                    state: Mutex::new(PoolState::default()),
                    work: Notify::new(),
                    root: root.clone(),
                    config,
                };
                (pool.config.name.clone(), Arc::new(pool))
            })
            .collect();
        LambdaHost { pools, root }
    }

    /// The functions this host runs, by logical id.
    pub fn functions(&self) -> Vec<String> {
        self.pools.keys().cloned().collect()
    }

    /// Fails every queued invocation, kills every process and waits (up to 5 s) until they
    /// are gone. The host accepts no invocations afterwards.
    pub async fn shutdown(&self) {
        let mut supervisors = Vec::new();
        for pool in self.pools.values() {
            let mut guard = pool.lock();
            let st = &mut *guard;
            st.closed = true;
            while let Some(pending) = st.queue.pop_front() {
                let error = pool.crashed("the local runtime shut down");
                finish(
                    &pool.config,
                    &mut st.stats,
                    pending.ticket,
                    false,
                    Err(error),
                );
            }
            supervisors.append(&mut st.supervisors);
        }
        self.root.cancel();
        let all = async {
            for supervisor in supervisors {
                let _ = supervisor.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("some function processes did not exit within 5 s of the shutdown");
        }
    }

    /// Counters of a function, `None` for an unknown name.
    pub fn stats(&self, function: &str) -> Option<FunctionStats> {
        let pool = self.pools.get(function)?;
        let st = pool.lock();
        let mut stats = st.stats;
        stats.instances = st.instances.len();
        stats.busy = st
            .instances
            .values()
            .filter(|slot| slot.current.is_some())
            .count();
        stats.queued = st.queue.len();
        Some(stats)
    }
}

impl Drop for LambdaHost {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

#[async_trait]
impl Invoke for LambdaHost {
    async fn invoke(&self, function: &str, payload: Value) -> Result<Value, InvokeError> {
        let pool = self
            .pools
            .get(function)
            .ok_or_else(|| InvokeError::UnknownFunction(function.to_owned()))?;
        pool.invoke(payload).await
    }
}

/// The region of a function: its own `AWS_REGION`/`AWS_DEFAULT_REGION`, else the process's,
/// else eu-central-1.
fn region_for(env: &BTreeMap<String, String>) -> String {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|key| env.get(*key).cloned())
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|region| !region.is_empty())
        .unwrap_or_else(|| FALLBACK_REGION.to_owned())
}

/// How many instances to start for `queued` invocations when `free` instances (idle or
/// starting) exist, `alive` processes run and `max` are allowed.
fn instances_to_start(queued: usize, free: usize, alive: usize, max: usize) -> usize {
    let needed = queued.saturating_sub(free);
    let room = max.max(1).saturating_sub(alive);
    needed.min(room)
}

/// The caller's side of an invocation.
struct Ticket {
    request_id: String,
    enqueued: Instant,
    done: oneshot::Sender<Result<Value, InvokeError>>,
}

struct Pending {
    ticket: Ticket,
    payload: Value,
}

struct Running {
    ticket: Ticket,
    cold: bool,
    /// The timeout watchdog, stopped when the invocation is answered.
    watchdog: tokio::task::AbortHandle,
}

/// One process of a pool.
struct Slot {
    kill: CancellationToken,
    started: Instant,
    /// It asked for `/next` at least once.
    ready: bool,
    /// Invocations handed to it so far.
    delivered: u64,
    current: Option<Running>,
    init_error: Option<String>,
    init_timed_out: bool,
    /// The current (or most recent) request id, for its log lines.
    log_request: Arc<Mutex<Option<String>>>,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Pending>,
    instances: HashMap<u64, Slot>,
    next_id: u64,
    stats: FunctionStats,
    closed: bool,
    supervisors: Vec<JoinHandle<()>>,
}

struct Pool {
    config: FunctionConfig,
    arn: String,
    region: String,
    state: Mutex<PoolState>,
    /// Woken whenever the queue gets work (or an instance must re-check its fate).
    work: Notify,
    root: CancellationToken,
}

/// Records the outcome of an invocation, logs it and hands it to the caller.
fn finish(
    config: &FunctionConfig,
    stats: &mut FunctionStats,
    ticket: Ticket,
    cold_start: bool,
    result: Result<Value, InvokeError>,
) {
    stats.invocations += 1;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(InvokeError::Handler { .. }) => "handler_error",
        Err(InvokeError::Timeout { .. }) => {
            stats.timeouts += 1;
            "timeout"
        }
        Err(InvokeError::Crashed { .. } | InvokeError::UnknownFunction(_)) => {
            stats.crashes += 1;
            "crashed"
        }
    };
    if result.is_err() {
        stats.errors += 1;
    }
    let duration_ms = u64::try_from(ticket.enqueued.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &result {
        Ok(_) => tracing::info!(
            function = %config.name,
            request_id = %ticket.request_id,
            duration_ms,
            outcome,
            cold_start,
            "invocation finished"
        ),
        Err(error) => tracing::info!(
            function = %config.name,
            request_id = %ticket.request_id,
            duration_ms,
            outcome,
            cold_start,
            error = %error,
            "invocation finished"
        ),
    }
    let _ = ticket.done.send(result);
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn crashed(&self, reason: impl Into<String>) -> InvokeError {
        InvokeError::Crashed {
            function: self.config.name.clone(),
            reason: reason.into(),
        }
    }

    fn timeout_error(&self, limit: Duration) -> InvokeError {
        InvokeError::Timeout {
            function: self.config.name.clone(),
            seconds: limit.as_secs_f64().ceil() as u64,
        }
    }

    fn init_limit(&self) -> Duration {
        INIT_LIMIT.max(self.config.timeout)
    }

    async fn invoke(self: &Arc<Self>, payload: Value) -> Result<Value, InvokeError> {
        let (done, result) = oneshot::channel();
        {
            let mut st = self.lock();
            if st.closed {
                return Err(self.crashed("the local runtime is shutting down"));
            }
            st.queue.push_back(Pending {
                ticket: Ticket {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    enqueued: Instant::now(),
                    done,
                },
                payload,
            });
            self.scale(&mut st);
        }
        self.work.notify_waiters();
        result.await.unwrap_or_else(|_| {
            Err(self.crashed("the invocation was dropped by the local runtime"))
        })
    }

    /// Starts instances for queued invocations no free instance will take.
    fn scale(self: &Arc<Self>, st: &mut PoolState) {
        if st.closed || self.root.is_cancelled() {
            return;
        }
        st.queue.retain(|pending| !pending.ticket.done.is_closed());
        let free = st
            .instances
            .values()
            .filter(|slot| slot.current.is_none() && !slot.kill.is_cancelled())
            .count();
        let start = instances_to_start(
            st.queue.len(),
            free,
            st.instances.len(),
            self.config.max_instances,
        );
        for _ in 0..start {
            self.start_instance(st);
        }
    }

    fn start_instance(self: &Arc<Self>, st: &mut PoolState) {
        let id = st.next_id;
        st.next_id += 1;
        let kill = self.root.child_token();
        let log_request = Arc::new(Mutex::new(None));
        st.instances.insert(
            id,
            Slot {
                kill: kill.clone(),
                started: Instant::now(),
                ready: false,
                delivered: 0,
                current: None,
                init_error: None,
                init_timed_out: false,
                log_request: log_request.clone(),
            },
        );
        st.stats.cold_starts += 1;
        st.supervisors.retain(|handle| !handle.is_finished());
        st.supervisors
            .push(tokio::spawn(self.clone().supervise(id, kill, log_request)));
    }

    /// Runs one instance from start to death.
    async fn supervise(
        self: Arc<Self>,
        id: u64,
        kill: CancellationToken,
        log_request: Arc<Mutex<Option<String>>>,
    ) {
        let exit = match self.launch(id, &kill, log_request).await {
            Err(error) => format!("could not start {}: {error}", self.config.binary.display()),
            Ok((mut child, server)) => {
                let init_timer = tokio::time::sleep(self.init_limit());
                tokio::pin!(init_timer);
                let mut init_checked = false;
                let status = loop {
                    tokio::select! {
                        status = child.wait() => break status,
                        () = kill.cancelled() => {
                            let _ = child.start_kill();
                            break child.wait().await;
                        }
                        () = &mut init_timer, if !init_checked => {
                            init_checked = true;
                            self.check_init(id);
                        }
                    }
                };
                server.abort();
                match status {
                    Ok(status) => status.to_string(),
                    Err(error) => format!("waiting for the process failed: {error}"),
                }
            }
        };
        kill.cancel();
        self.work.notify_waiters();
        self.on_exit(id, &exit);
    }

    /// Binds the instance's Runtime API and starts its process.
    async fn launch(
        self: &Arc<Self>,
        id: u64,
        kill: &CancellationToken,
        log_request: Arc<Mutex<Option<String>>>,
    ) -> std::io::Result<(Child, JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .fallback(unknown_route)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(Api {
                pool: self.clone(),
                id,
                kill: kill.clone(),
            });
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "runtime API server stopped");
            }
        });

        let mut command = self.command(&address.to_string());
        let mut attempts = 0;
        let spawned = loop {
            match command.spawn() {
                // ETXTBSY: the binary was written a moment ago (a rebuild, a test's script)
                // and a concurrently forked process still holds it open for writing.
                Err(error) if error.raw_os_error() == Some(26) && attempts < 20 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                other => break other,
            }
        };
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                server.abort();
                return Err(error);
            }
        };
        tracing::info!(
            function = %self.config.name,
            instance = id,
            pid = child.id(),
            runtime_api = %address,
            "cold start"
        );
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pump(
                self.config.name.clone(),
                "stdout",
                stdout,
                log_request.clone(),
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pump(
                self.config.name.clone(),
                "stderr",
                stderr,
                log_request,
            ));
        }
        Ok((child, server))
    }

    fn command(&self, runtime_api: &str) -> Command {
        let config = &self.config;
        // A bare name is looked up on PATH; anything else is made absolute, so that the
        // working directory change below does not change what it points at.
        let binary = if config.binary.components().count() > 1 {
            std::path::absolute(&config.binary).unwrap_or_else(|_| config.binary.clone())
        } else {
            config.binary.clone()
        };
        let task_root = binary
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(FsPath::to_path_buf)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| PathBuf::from("."));
        let log_stream = format!(
            "{}/[$LATEST]{}",
            chrono::Utc::now().format("%Y/%m/%d"),
            uuid::Uuid::new_v4().simple()
        );

        let mut command = Command::new(&binary);
        command
            .current_dir(&task_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // One invocation per process, as in (on-demand) Lambda.
            .env_remove("AWS_LAMBDA_MAX_CONCURRENCY")
            .env_remove("_X_AMZN_TRACE_ID");
        if std::env::var_os("AWS_REGION").is_none() {
            command.env("AWS_REGION", &self.region);
        }
        if std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            command.env("AWS_DEFAULT_REGION", &self.region);
        }
        command
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", &config.name)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                config.memory_mb.to_string(),
            )
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", config.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", log_stream)
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("_HANDLER", "bootstrap")
            .env("LAMBDA_TASK_ROOT", &task_root)
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_rust")
            .envs(&config.env);
        command
    }

    /// The init limit passed: kill the instance if it never asked for an invocation.
    fn check_init(&self, id: u64) {
        let mut st = self.lock();
        if let Some(slot) = st.instances.get_mut(&id)
            && !slot.ready
        {
            slot.init_timed_out = true;
            tracing::warn!(
                function = %self.config.name,
                instance = id,
                limit_s = self.init_limit().as_secs(),
                "the instance did not finish its initialisation in time; killing it"
            );
            slot.kill.cancel();
        }
    }

    /// The process of instance `id` is gone: settle what it held, start replacements.
    fn on_exit(self: &Arc<Self>, id: u64, exit: &str) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(slot) = st.instances.remove(&id) else {
            return;
        };
        if let Some(running) = slot.current {
            let reason = if st.closed {
                "the local runtime shut down during the invocation".to_owned()
            } else {
                format!("the process exited during the invocation ({exit})")
            };
            tracing::warn!(function = %self.config.name, instance = id, exit, "instance died during an invocation");
            finish(
                &self.config,
                &mut st.stats,
                running.ticket,
                running.cold,
                Err(self.crashed(reason)),
            );
        } else if !slot.ready && !st.closed {
            let error = if slot.init_timed_out {
                self.timeout_error(self.init_limit())
            } else if let Some(init_error) = &slot.init_error {
                self.crashed(format!("initialisation failed: {init_error}"))
            } else {
                self.crashed(format!("the process exited during initialisation ({exit})"))
            };
            tracing::warn!(function = %self.config.name, instance = id, exit, error = %error, "instance failed to initialise");
            // The invocation that waited longest is the one whose cold start this was.
            while let Some(pending) = st.queue.pop_front() {
                if !pending.ticket.done.is_closed() {
                    finish(
                        &self.config,
                        &mut st.stats,
                        pending.ticket,
                        true,
                        Err(error),
                    );
                    break;
                }
            }
        } else {
            tracing::info!(
                function = %self.config.name,
                instance = id,
                exit,
                lifetime_ms = u64::try_from(slot.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                invocations = slot.delivered,
                "instance stopped"
            );
        }
        self.scale(st);
    }

    /// `/next` of instance `id`: the answer (an invocation, or 410 when the instance is
    /// done for), or `None` to wait for work.
    fn try_deliver(self: &Arc<Self>, id: u64, kill: &CancellationToken) -> Option<Response> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(slot) = st.instances.get_mut(&id) else {
            return Some(gone());
        };
        if kill.is_cancelled() {
            return Some(gone());
        }
        if !slot.ready {
            slot.ready = true;
            tracing::info!(
                function = %self.config.name,
                instance = id,
                init_ms = u64::try_from(slot.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "instance initialised"
            );
        }
        if let Some(running) = slot.current.take() {
            running.watchdog.abort();
            let error = self.crashed(format!(
                "the runtime asked for its next invocation without answering {}",
                running.ticket.request_id
            ));
            finish(
                &self.config,
                &mut st.stats,
                running.ticket,
                running.cold,
                Err(error),
            );
        }
        while let Some(pending) = st.queue.pop_front() {
            if pending.ticket.done.is_closed() {
                continue;
            }
            let request_id = pending.ticket.request_id.clone();
            let deadline_ms = epoch_ms(SystemTime::now() + self.config.timeout);
            let body = serde_json::to_vec(&pending.payload).unwrap_or_else(|_| b"null".to_vec());
            let cold = slot.delivered == 0;
            slot.delivered += 1;
            let pool = self.clone();
            let kill = kill.clone();
            let watched = request_id.clone();
            let watchdog = tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(pool.config.timeout) => pool.expire(id, &watched),
                    () = kill.cancelled() => {}
                }
            })
            .abort_handle();
            slot.current = Some(Running {
                ticket: pending.ticket,
                cold,
                watchdog,
            });
            *slot
                .log_request
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(request_id.clone());

            let mut headers = HeaderMap::new();
            let mut put = |name: &'static str, value: String| {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            };
            put("lambda-runtime-aws-request-id", request_id);
            put("lambda-runtime-deadline-ms", deadline_ms.to_string());
            put("lambda-runtime-invoked-function-arn", self.arn.clone());
            put("lambda-runtime-trace-id", trace_id());
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Some((StatusCode::OK, headers, body).into_response());
        }
        None
    }

    /// The timeout of `request_id` passed: fail it and kill the instance holding it.
    fn expire(&self, id: u64, request_id: &str) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(slot) = st.instances.get_mut(&id) else {
            return;
        };
        let Some(running) = slot
            .current
            .take_if(|running| running.ticket.request_id == request_id)
        else {
            return;
        };
        tracing::warn!(
            function = %self.config.name,
            instance = id,
            request_id,
            timeout_ms = u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX),
            "invocation timed out; killing the instance"
        );
        slot.kill.cancel();
        let error = self.timeout_error(self.config.timeout);
        finish(
            &self.config,
            &mut st.stats,
            running.ticket,
            running.cold,
            Err(error),
        );
    }

    /// `/response` or `/error` of instance `id` for `request_id`.
    fn complete(&self, id: u64, request_id: &str, result: Result<Value, InvokeError>) -> Response {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(slot) = st.instances.get_mut(&id) else {
            return gone();
        };
        match slot.current.take() {
            Some(running) if running.ticket.request_id == request_id => {
                running.watchdog.abort();
                finish(
                    &self.config,
                    &mut st.stats,
                    running.ticket,
                    running.cold,
                    result,
                );
                accepted()
            }
            other => {
                slot.current = other;
                tracing::warn!(
                    function = %self.config.name,
                    instance = id,
                    request_id,
                    "answer for an invocation this instance does not hold (timed out?)"
                );
                api_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestID",
                    "no such invocation in progress",
                )
            }
        }
    }
}

fn epoch_ms(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis())
        .unwrap_or_default()
}

/// An X-Ray trace header as Lambda hands it over (not sampled).
fn trace_id() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default();
    let root = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{seconds:08x}-{};Parent={};Sampled=0",
        &root[..24],
        &parent[..16]
    )
}

/// `errorType`/`errorMessage` of an error report; the error type header or the raw body
/// when the body is not the usual JSON.
fn parse_diagnostic(headers: &HeaderMap, body: &[u8]) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|value| value.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let error_type = field("errorType")
        .or_else(|| {
            headers
                .get("lambda-runtime-function-error-type")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "Unhandled".to_owned());
    let message =
        field("errorMessage").unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    (error_type, message)
}

/// Re-emits a process's output line by line through `tracing`.
async fn pump(
    function: String,
    stream: &'static str,
    output: impl AsyncRead + Unpin,
    log_request: Arc<Mutex<Option<String>>>,
) {
    let mut reader = BufReader::new(output);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buffer);
        let line = text.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        let request_id = log_request
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let is_json =
            line.starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok();
        if is_json {
            tracing::info!(function = %function, request_id = request_id.as_deref(), stream, log = line, "function log");
        } else {
            tracing::info!(function = %function, request_id = request_id.as_deref(), stream, line, "function output");
        }
    }
}

/// The Runtime API of one instance.
#[derive(Clone)]
struct Api {
    pool: Arc<Pool>,
    id: u64,
    kill: CancellationToken,
}

async fn next_invocation(State(api): State<Api>) -> Response {
    loop {
        let notified = api.pool.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(response) = api.pool.try_deliver(api.id, &api.kill) {
            return response;
        }
        tokio::select! {
            () = &mut notified => {}
            () = api.kill.cancelled() => return gone(),
        }
    }
}

async fn invocation_response(
    State(api): State<Api>,
    Path(request_id): Path<String>,
    body: Bytes,
) -> Response {
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    api.pool.complete(api.id, &request_id, Ok(value))
}

async fn invocation_error(
    State(api): State<Api>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (error_type, message) = parse_diagnostic(&headers, &body);
    let error = InvokeError::Handler {
        function: api.pool.config.name.clone(),
        error_type,
        message,
    };
    api.pool.complete(api.id, &request_id, Err(error))
}

async fn init_error(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let (error_type, message) = parse_diagnostic(&headers, &body);
    tracing::warn!(
        function = %api.pool.config.name,
        instance = api.id,
        error_type,
        message,
        "the function reported an initialisation error"
    );
    if let Some(slot) = api.pool.lock().instances.get_mut(&api.id) {
        slot.init_error = Some(format!("{error_type}: {message}"));
    }
    api.kill.cancel();
    accepted()
}

async fn unknown_route() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "UnknownRoute",
        "not a Runtime API (2018-06-01) route",
    )
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({ "status": "OK" }))).into_response()
}

fn gone() -> Response {
    api_error(
        StatusCode::GONE,
        "InstanceStopped",
        "this instance is being stopped",
    )
}

fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "errorType": error_type, "errorMessage": message })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, binary: &str) -> FunctionConfig {
        FunctionConfig {
            name: name.to_owned(),
            binary: PathBuf::from(binary),
            env: BTreeMap::new(),
            timeout: Duration::from_secs(3),
            memory_mb: 128,
            max_instances: 2,
        }
    }

    #[test]
    fn scaling_starts_only_what_free_instances_cannot_take() {
        // Nothing queued: nothing to start.
        assert_eq!(instances_to_start(0, 0, 0, 3), 0);
        // One queued, nobody free: one cold start.
        assert_eq!(instances_to_start(1, 0, 0, 3), 1);
        // One queued, an idle (or starting) instance: it will take it.
        assert_eq!(instances_to_start(1, 1, 1, 3), 0);
        // Burst of five with two busy: start up to the limit only.
        assert_eq!(instances_to_start(5, 0, 2, 3), 1);
        // At the limit: queue.
        assert_eq!(instances_to_start(4, 0, 3, 3), 0);
        // A limit of 0 counts as 1.
        assert_eq!(instances_to_start(2, 0, 0, 0), 1);
    }

    #[test]
    fn diagnostics_are_read_from_the_body_or_the_header() {
        let headers = HeaderMap::new();
        let (kind, message) = parse_diagnostic(
            &headers,
            br#"{"errorType":"Boom","errorMessage":"it broke"}"#,
        );
        assert_eq!((kind.as_str(), message.as_str()), ("Boom", "it broke"));

        let mut headers = HeaderMap::new();
        headers.insert(
            "lambda-runtime-function-error-type",
            HeaderValue::from_static("Runtime.Panic"),
        );
        let (kind, message) = parse_diagnostic(&headers, b"plain text");
        assert_eq!(
            (kind.as_str(), message.as_str()),
            ("Runtime.Panic", "plain text")
        );
    }

    #[test]
    fn trace_ids_look_like_xray_headers() {
        let id = trace_id();
        let parts: Vec<&str> = id.split(';').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert!(parts[0].starts_with("Root=1-"));
        assert_eq!(parts[0].len(), "Root=1-".len() + 8 + 1 + 24);
        assert_eq!(parts[1].len(), "Parent=".len() + 16);
        assert_eq!(parts[2], "Sampled=0");
    }

    #[test]
    fn region_prefers_the_function_env() {
        let mut env = BTreeMap::new();
        env.insert("AWS_REGION".to_owned(), "us-west-2".to_owned());
        assert_eq!(region_for(&env), "us-west-2");
    }

    #[tokio::test]
    async fn unknown_functions_are_reported() {
        let host = LambdaHost::new(vec![config("A", "/bin/true")]);
        assert_eq!(host.functions(), vec!["A".to_owned()]);
        assert!(host.stats("B").is_none());
        let error = host.invoke("B", json!({})).await.unwrap_err();
        assert_eq!(error, InvokeError::UnknownFunction("B".to_owned()));
    }

    #[tokio::test]
    async fn a_missing_binary_fails_the_invocation_as_a_crash() {
        let host = LambdaHost::new(vec![config("Missing", "/nonexistent/bootstrap")]);
        let error = host.invoke("Missing", json!({})).await.unwrap_err();
        let InvokeError::Crashed { function, reason } = error else {
            panic!("expected a crash, got {error:?}");
        };
        assert_eq!(function, "Missing");
        assert!(reason.contains("could not start"), "{reason}");
        let stats = host.stats("Missing").unwrap();
        assert_eq!(
            (
                stats.invocations,
                stats.crashes,
                stats.cold_starts,
                stats.instances
            ),
            (1, 1, 1, 0)
        );
        host.shutdown().await;
    }

    #[tokio::test]
    async fn a_process_exiting_during_init_fails_each_waiting_invocation_once() {
        let host = Arc::new(LambdaHost::new(vec![config("False", "false")]));
        let calls = (0..3).map(|_| {
            let host = host.clone();
            tokio::spawn(async move { host.invoke("False", json!({})).await })
        });
        for call in calls {
            let error = call.await.unwrap().unwrap_err();
            assert!(
                matches!(&error, InvokeError::Crashed { reason, .. } if reason.contains("initialisation")),
                "{error:?}"
            );
        }
        let stats = host.stats("False").unwrap();
        assert_eq!(stats.invocations, 3);
        assert_eq!(stats.crashes, 3);
        assert!(stats.cold_starts >= 3, "{stats:?}");
        assert_eq!(stats.queued, 0);
        host.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_refuses_later_invocations() {
        let host = LambdaHost::new(vec![config("A", "/bin/true")]);
        host.shutdown().await;
        let error = host.invoke("A", json!({})).await.unwrap_err();
        assert!(matches!(error, InvokeError::Crashed { .. }), "{error:?}");
    }
}
