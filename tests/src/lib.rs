//! Helpers for the integration tests: local AWS (moto or LocalStack, chosen by
//! `AWS_ENDPOINT_URL`), resources provisioned from template.yaml under a fresh stack name,
//! and an in-process sandbox bank.

pub mod bench;
pub mod spec;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use infra::provision::Provisioned;
use infra::sandbox::{SandboxConfig, SandboxHandle};
use shared::bank::BankApi;
use shared::bank::registry::BankRegistry;
use shared::domain::BankId;

/// SDK configuration for tests: the standard environment, with moto's defaults filled in
/// when a variable is unset (endpoint http://127.0.0.1:4566, region eu-central-1,
/// credentials test/test), so `cargo test` works without exporting anything.
pub async fn aws_config() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        loader = loader.endpoint_url("http://127.0.0.1:4566");
    }
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        loader = loader.region(aws_config::Region::new("eu-central-1"));
    }
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "static",
        ));
    }
    loader.load().await
}

/// Resources of template.yaml, provisioned under a unique stack name; torn down by
/// [`LocalStack::teardown`].
pub struct LocalStack {
    pub sdk: aws_config::SdkConfig,
    pub resources: Provisioned,
}

impl LocalStack {
    pub async fn provision() -> LocalStack {
        let template = infra::template::Template::load(infra::provision::template_path())
            .expect("template.yaml");
        Self::provision_template(&template).await
    }

    /// Provisions another template (test fixtures) the same way.
    pub async fn provision_template(template: &infra::template::Template) -> LocalStack {
        let sdk = aws_config().await;
        let stack = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let resources = infra::provision::provision(&sdk, template, &stack)
            .await
            .expect("provisioning local AWS from template.yaml (is moto running? `make aws-up`)");
        LocalStack { sdk, resources }
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk)
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }

    pub async fn teardown(self) {
        infra::provision::teardown(&self.sdk, &self.resources)
            .await
            .expect("teardown");
    }
}

/// An in-process sandbox bank plus connectors for every bank of infra/banks.json
/// pointed at it.
pub struct Sandbox {
    pub handle: SandboxHandle,
    pub registry: BankRegistry,
    pub http: reqwest::Client,
}

impl Sandbox {
    pub async fn start(config: SandboxConfig) -> Sandbox {
        Self::start_with(config, |_| {}).await
    }

    /// Starts a sandbox; `adjust` may change the registry entries (e.g. timeouts).
    pub async fn start_with(
        config: SandboxConfig,
        adjust: impl Fn(&mut shared::bank::registry::BankConfig),
    ) -> Sandbox {
        let handle = infra::sandbox::spawn(config).await.expect("sandbox bank");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/banks.json");
        let text = std::fs::read_to_string(path).expect("infra/banks.json");
        let base = handle.base_url.clone();
        let parsed = BankRegistry::from_json_with(&text, |name| {
            (name == "SANDBOX_BANK_URL").then(|| base.clone())
        })
        .expect("registry");
        let mut banks = parsed.banks().to_vec();
        banks.iter_mut().for_each(&adjust);
        let registry = BankRegistry::new(banks).expect("registry");
        Sandbox {
            handle,
            registry,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub fn connectors(&self) -> HashMap<BankId, Arc<dyn BankApi>> {
        self.registry.connectors().expect("connectors")
    }

    pub fn bank(&self, id: &str) -> Arc<dyn BankApi> {
        self.connectors()
            .remove(&BankId::parse(id).unwrap())
            .expect("bank in registry")
    }

    pub fn admin(&self, path: &str) -> String {
        format!(
            "{}/__admin/{}",
            self.handle.base_url,
            path.trim_start_matches('/')
        )
    }

    pub async fn get_json(&self, admin_path: &str) -> serde_json::Value {
        self.http
            .get(self.admin(admin_path))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Approves or denies a consent or payment as the PSU would on the SCA page.
    pub async fn decide(
        &self,
        bank: &str,
        kind: &str,
        id: &str,
        decision: &str,
    ) -> serde_json::Value {
        self.http
            .post(self.admin(&format!("sca/{bank}/{kind}/{id}?decision={decision}")))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn set_faults(&self, faults: serde_json::Value) {
        self.http
            .put(self.admin("faults"))
            .json(&faults)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// Empties the sandbox's request log.
    pub async fn clear_requests(&self) {
        self.http
            .delete(self.admin("requests"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    pub async fn clear_faults(&self) {
        self.http
            .delete(self.admin("faults"))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
}

/// The local runtime serving a template, on a fresh local stack, in this process.
pub struct Runtime {
    pub runtime: infra::local_runtime::app::RunningRuntime,
    pub local: LocalStack,
    pub http: reqwest::Client,
}

impl Runtime {
    /// Provisions `template_path` under a unique stack and starts every function of it
    /// from the workspace's debug binaries (`cargo build --workspace --bins` first).
    /// `env` is added to every function's environment.
    pub async fn start(
        template_path: &std::path::Path,
        jwt_secret: &str,
        env: &[(&str, String)],
    ) -> Runtime {
        Self::start_from(
            template_path,
            jwt_secret,
            env,
            &debug_bin_dir(),
            0.0,
            Duration::ZERO,
        )
        .await
    }

    /// As [`Self::start`], with the function binaries taken from `bin_dir` (e.g. the
    /// workspace's `target/release` for benchmarks).
    pub async fn start_from(
        template_path: &std::path::Path,
        jwt_secret: &str,
        env: &[(&str, String)],
        bin_dir: &std::path::Path,
        sqs_duplicates: f64,
        sqs_poll_wait: Duration,
    ) -> Runtime {
        use infra::local_runtime::app::{RuntimeOptions, RuntimePlan};
        // Logs (ours and the functions') go to the test's captured output: shown on failure.
        let _ = tracing_subscriber::fmt()
            .json()
            .with_test_writer()
            .try_init();
        let template = infra::template::Template::load(template_path).expect("template");
        let local = LocalStack::provision_template(&template).await;
        let mut ctx = infra::provision::resolve_context(&local.sdk, &local.resources.stack_name);
        ctx.parameters
            .extend(infra::local_runtime::app::local_parameters());
        ctx.deployed = local.resources.deployed(&ctx.region, &ctx.account_id);
        let mut plan =
            RuntimePlan::build(&template, template_path, &ctx, &local.resources, bin_dir)
                .expect("runtime plan");
        let missing = plan.missing_binaries();
        assert!(
            missing.is_empty(),
            "build the functions first (cargo build --workspace --bins, or --release): {missing:?}"
        );
        // Functions reach the same local AWS as the test (Lambda hands its functions
        // credentials and a region the same way: through the environment).
        // The port is chosen up front so the functions can be told their public URL.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut aws_env = vec![
            ("AWS_REGION", ctx.region.clone()),
            (
                "CALLBACK_URL",
                format!("http://127.0.0.1:{port}/v1/callbacks/sca"),
            ),
        ];
        for (name, default) in [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ] {
            aws_env.push((
                name,
                std::env::var(name).unwrap_or_else(|_| default.to_owned()),
            ));
        }
        for f in &mut plan.functions {
            for (k, v) in aws_env.iter().chain(env) {
                f.environment.insert((*k).to_owned(), v.clone());
            }
        }
        let runtime = infra::local_runtime::app::start(
            plan,
            local.sqs(),
            ctx.region.clone(),
            RuntimeOptions {
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                jwt_secret: jwt_secret.to_owned(),
                time_scale: 1.0,
                max_instances: 2,
                sqs_poll_wait,
                sqs_duplicates,
                web_root: Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/app")),
            },
        )
        .await
        .expect("local runtime");
        Runtime {
            runtime,
            local,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.runtime.addr)
    }

    pub async fn stop(self) {
        self.runtime.stop().await;
        self.local.teardown().await;
    }
}

/// Where the tests take the function binaries from: the workspace's `target/debug`.
pub fn debug_bin_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

/// How [`Bundle::start_with`] starts the bundle.
#[derive(Clone, Debug)]
pub struct BundleOptions {
    /// The in-process sandbox bank's settings (page size, seed, payment step).
    pub sandbox: SandboxConfig,
    /// The function binaries: [`debug_bin_dir`] unless told otherwise.
    pub bin_dir: std::path::PathBuf,
    /// Share of SQS messages the local runtime delivers twice (0 to 1).
    pub sqs_duplicates: f64,
    /// How long the local runtime's SQS pollers wait in one receive. Zero (the default):
    /// short receives, every 200 ms per poller when the queue is empty (quick for queue
    /// tests, but about 60 requests a second to local AWS in all). A benchmark that times
    /// other requests to local AWS waits longer (long polls) so the pollers do not compete
    /// with them: in AWS, Lambda's pollers are not on the database's CPU.
    pub sqs_poll_wait: Duration,
}

impl Default for BundleOptions {
    fn default() -> Self {
        Self {
            sandbox: SandboxConfig::default(),
            bin_dir: debug_bin_dir(),
            sqs_duplicates: 0.0,
            sqs_poll_wait: Duration::ZERO,
        }
    }
}

/// The deployed functions (template.yaml) in the local runtime, an in-process sandbox bank
/// they talk to, and an HTTP client that looks at redirects instead of following them:
/// what the end-to-end tests drive.
pub struct Bundle {
    pub rt: Runtime,
    pub sandbox: Sandbox,
    pub http: reqwest::Client,
    secret: String,
}

impl Bundle {
    /// Starts a sandbox bank and template.yaml in the local runtime pointed at it, signing
    /// tokens with `secret`; `extra_env` is added to every function's environment.
    pub async fn start(secret: &str, extra_env: &[(&str, String)]) -> Bundle {
        Self::start_with(secret, extra_env, BundleOptions::default()).await
    }

    /// As [`Self::start`], with another sandbox configuration or function binaries.
    pub async fn start_with(
        secret: &str,
        extra_env: &[(&str, String)],
        options: BundleOptions,
    ) -> Bundle {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sandbox = Sandbox::start(options.sandbox).await;
        let mut env = vec![
            (
                "BANK_REGISTRY_PATH",
                root.join("infra/banks.json").display().to_string(),
            ),
            ("SANDBOX_BANK_URL", sandbox.handle.base_url.clone()),
            (
                "ECB_RATES_URL",
                format!("{}/ecb/eurofxref-daily.xml", sandbox.handle.base_url),
            ),
        ];
        env.extend(extra_env.iter().cloned());
        let rt = Runtime::start_from(
            &root.join("template.yaml"),
            secret,
            &env,
            &options.bin_dir,
            options.sqs_duplicates,
            options.sqs_poll_wait,
        )
        .await;
        Bundle {
            rt,
            sandbox,
            // Redirects are looked at, not followed.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            secret: secret.to_owned(),
        }
    }

    /// A bearer token for `user`, valid for ten minutes.
    pub fn token(&self, user: &str) -> String {
        infra::local_runtime::jwt::issue(&self.secret, user, Duration::from_secs(600), None)
    }

    /// Calls the API as `user` (a JSON `body`, if any); returns the status and the parsed
    /// answer (`Null` when it is not JSON).
    pub async fn call(
        &self,
        user: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .request(method, self.rt.url(path))
            .bearer_auth(self.token(user));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// `POST /v1/payments` as `user` with `Idempotency-Key: key` (none if `None`); returns
    /// the status and the parsed answer.
    pub async fn pay(&self, user: &str, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .post(self.rt.url("/v1/payments"))
            .bearer_auth(self.token(user))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// How many distinct payments `bank` has created (the sandbox's counts).
    pub async fn payment_initiations(&self, bank: &str) -> u64 {
        let counts = self.sandbox.get_json("counts").await;
        counts["paymentInitiations"][bank].as_u64().unwrap_or(0)
    }

    /// How many requests the sandbox received whose path contains `fragment`, among the
    /// last 1000 (its request log).
    pub async fn bank_requests_matching(&self, fragment: &str) -> usize {
        let log = self.sandbox.get_json("requests").await;
        log.as_array()
            .map(|requests| {
                requests
                    .iter()
                    .filter(|r| r["path"].as_str().is_some_and(|p| p.contains(fragment)))
                    .count()
            })
            .unwrap_or(0)
    }

    /// `POST /v1/connections` as `user`; asserts 201 and returns the created connection.
    pub async fn connect(&self, user: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, created) = self
            .call(
                user,
                reqwest::Method::POST,
                "/v1/connections",
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        created
    }

    /// Approves or denies a created connection's consent at the bank; returns where the
    /// bank sends the browser (our callback).
    pub async fn decide(&self, created: &serde_json::Value, decision: &str) -> String {
        let auth_url = created["authUrl"].as_str().unwrap();
        let bank_consent = auth_url.rsplit('/').next().unwrap();
        let bank = created["bankId"].as_str().unwrap();
        let answer = self
            .sandbox
            .decide(bank, "consents", bank_consent, decision)
            .await;
        answer["redirect"].as_str().unwrap().to_owned()
    }

    /// Follows a redirect (the bank's, to our callback) one step; returns (status, Location).
    pub async fn follow(&self, url: &str) -> (u16, Option<String>) {
        let response = self.http.get(url).send().await.unwrap();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (response.status().as_u16(), location)
    }

    /// Runs `schedule` (e.g. "ConsentRenewalFunction.Daily") now, with `detail` as the
    /// event's detail if given; asserts 200 and returns the run's report.
    pub async fn fire(
        &self,
        schedule: &str,
        detail: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let mut request = self
            .http
            .post(self.rt.url(&format!("/__local/schedules/{schedule}/fire")));
        if let Some(detail) = detail {
            request = request.json(&detail);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{answer}");
        answer["result"].clone()
    }

    /// `user`'s connections; asserts 200.
    pub async fn connections(&self, user: &str) -> Vec<serde_json::Value> {
        let (status, list) = self
            .call(user, reqwest::Method::GET, "/v1/connections", None)
            .await;
        assert_eq!(status, 200, "{list}");
        list["connections"].as_array().unwrap().clone()
    }

    /// One of `user`'s connections; asserts 200.
    pub async fn connection(&self, user: &str, id: &str) -> serde_json::Value {
        let (status, one) = self
            .call(
                user,
                reqwest::Method::GET,
                &format!("/v1/connections/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{one}");
        one
    }

    /// Every message body waiting in `queue` (a template logical id, e.g. a DLQ), as JSON
    /// (`Null` when a body is not JSON); each stays invisible for a minute after.
    pub async fn queue_bodies(&self, queue: &str) -> Vec<serde_json::Value> {
        let sqs = self.rt.local.sqs();
        let url = self.rt.local.resources.queue_url(queue).to_owned();
        let mut bodies = Vec::new();
        loop {
            let got = sqs
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .visibility_timeout(60)
                .send()
                .await
                .unwrap();
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                return bodies;
            }
            for m in messages {
                bodies.push(
                    serde_json::from_str(m.body().unwrap_or_default())
                        .unwrap_or(serde_json::Value::Null),
                );
            }
        }
    }

    /// `user`'s notifications; asserts 200.
    pub async fn inbox(&self, user: &str) -> Vec<serde_json::Value> {
        let (status, inbox) = self
            .call(user, reqwest::Method::GET, "/v1/notifications", None)
            .await;
        assert_eq!(status, 200, "{inbox}");
        inbox["notifications"].as_array().unwrap().clone()
    }

    /// How many consents were created at `bank` so far (the sandbox's counts).
    pub async fn consent_creations(&self, bank: &str) -> u64 {
        let counts = self.sandbox.get_json("counts").await;
        counts["byOperation"][format!("{bank} POST /v1/consents").as_str()]
            .as_u64()
            .unwrap_or(0)
    }

    /// Stops the runtime, tears its stack down and stops the sandbox bank.
    pub async fn stop(self) {
        self.rt.stop().await;
        self.sandbox.handle.shutdown();
    }
}
