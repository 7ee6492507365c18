//! The local runtime end to end, on the fixture template: real function processes behind
//! the HTTP API emulation (JWT), an SQS event source mapping against local AWS (partial
//! batch failures, redrive to the DLQ) and schedules fired on demand.
//!
//! Needs the fixture binaries: `cargo build -p runtime-fixture` (make test does it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infra::local_runtime::jwt;
use integration_tests::Runtime;
use serde_json::Value;

const SECRET: &str = "e2e-secret";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Harness {
    rt: Runtime,
    log: PathBuf,
}

impl std::ops::Deref for Harness {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.rt
    }
}

impl Harness {
    async fn start() -> Harness {
        let log = std::env::temp_dir().join(format!(
            "runtime-e2e-{}.jsonl",
            uuid::Uuid::new_v4().simple()
        ));
        let rt = Runtime::start(
            &root().join("tests/fixtures/runtime-template.yaml"),
            SECRET,
            &[("FIXTURE_LOG", log.display().to_string())],
        )
        .await;
        Harness { rt, log }
    }

    /// Invocations recorded by the fixture functions, of one kind.
    fn recorded(&self, function: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["function"] == function)
            .map(|v| v["event"].clone())
            .collect()
    }

    async fn stop(self) {
        self.rt.stop().await;
        let _ = std::fs::remove_file(&self.log);
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn local_runtime_runs_the_template_as_wired() {
    let h = Harness::start().await;

    // HTTP API: a protected route without a token never reaches the function.
    let r = h.http.get(h.url("/v1/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let forged = jwt::issue("another-secret", "alice", Duration::from_secs(60), None);
    let r = h
        .http
        .get(h.url("/v1/me"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(h.recorded("echo").is_empty());

    // With a token, the handler sees the `sub` claim in the authorizer context.
    let token = jwt::issue(SECRET, "alice", Duration::from_secs(60), None);
    let r = h
        .http
        .get(h.url("/v1/me?x=1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["routeKey"], "GET /v1/me");
    assert_eq!(body["query"]["x"], "1");

    let r = h
        .http
        .post(h.url("/v1/items/it%20em-7"))
        .bearer_auth(&token)
        .body("{\"a\":1}")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["pathParameters"]["id"], "it em-7");
    assert_eq!(body["body"], "{\"a\":1}");
    assert_eq!(body["routeKey"], "ANY /v1/items/{id}");

    // A public route needs no token, and the function's status code is kept.
    let r = h.http.get(h.url("/teapot")).send().await.unwrap();
    assert_eq!(r.status(), 418);
    assert_eq!(r.headers()["x-fixture"], "echo");
    assert_eq!(
        h.http.get(h.url("/nowhere")).send().await.unwrap().status(),
        404
    );

    // SQS: messages reach the handler; only the reported failure comes back, and after
    // maxReceiveCount (2) deliveries it is in the dead-letter queue.
    let queue = h.local.resources.queue_url("WorkQueue").to_owned();
    let dlq = h.local.resources.queue_url("WorkDLQ").to_owned();
    for body in ["ok-1", "please-fail", "ok-2"] {
        h.local
            .sqs()
            .send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    wait_until(
        "two deliveries of the failing message",
        Duration::from_secs(30),
        || {
            h.recorded("sqs")
                .iter()
                .filter(|e| e["body"] == "please-fail")
                .count()
                >= 2
        },
    )
    .await;
    let mut in_dlq = Vec::new();
    let started = Instant::now();
    while in_dlq.is_empty() && started.elapsed() < Duration::from_secs(20) {
        let out = h
            .local
            .sqs()
            .receive_message()
            .queue_url(&dlq)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        in_dlq.extend(
            out.messages
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| m.body),
        );
        // The runtime keeps polling the source queue; moto moves the message to the DLQ
        // on the receive after its last allowed delivery.
    }
    assert_eq!(in_dlq, vec!["please-fail".to_owned()]);
    let sqs = h.recorded("sqs");
    for ok in ["ok-1", "ok-2"] {
        assert_eq!(
            sqs.iter().filter(|e| e["body"] == ok).count(),
            1,
            "{ok} handled exactly once: {sqs:?}"
        );
    }
    let fail_counts: Vec<_> = sqs
        .iter()
        .filter(|e| e["body"] == "please-fail")
        .map(|e| e["receiveCount"].clone())
        .collect();
    assert_eq!(fail_counts, vec![Value::from("1"), Value::from("2")]);

    // Schedules: firing one invokes its function with the template's input.
    let r = h
        .http
        .post(h.url("/__local/schedules/TickFunction.Daily/fire"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["result"]["ok"], true);
    let ticks = h.recorded("schedule");
    assert_eq!(ticks, vec![serde_json::json!({"job": "daily"})]);
    // A disabled schedule can still be fired by hand, with an EventBridge event.
    let r = h
        .http
        .post(h.url("/__local/schedules/TickFunction.Hourly/fire"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ticks = h.recorded("schedule");
    assert_eq!(ticks[1]["detail-type"], "Scheduled Event");
    assert_eq!(ticks[1]["source"], "aws.events");
    let r = h
        .http
        .post(h.url("/__local/schedules/Nope.Nope/fire"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    h.stop().await;
}
