//! The local runtime's Lambda host, SQS event source mappings and schedules, end to end:
//! real `lambda_runtime` binaries (tests/runtime-fixture, built beforehand with
//! `cargo build -p runtime-fixture`), small bash "runtimes" speaking the Runtime API by
//! hand for the timing cases, and moto for SQS.
//!
//! Timeouts, as the host implements them (see infra::local_runtime::lambda):
//! - an invocation taken by a process that then does not answer within the function
//!   timeout → `Timeout`, and that process is killed;
//! - a process that never asks for work → `Timeout` after the init limit, max(10 s, timeout);
//! - a process that exits before asking for work (`/bin/sleep` without an operand exits
//!   with status 1) → `Crashed`, with the exit status in the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infra::local_runtime::lambda::{FunctionConfig, LambdaHost};
use infra::local_runtime::schedule::{ScheduleSpec, Scheduler};
use infra::local_runtime::sqs::{self, SqsMapping};
use infra::local_runtime::{Invoke, InvokeError};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A fixture binary of tests/runtime-fixture.
fn fixture(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join(name);
    assert!(
        path.is_file(),
        "fixture binary {} is missing: run `cargo build -p runtime-fixture` before these tests",
        path.display()
    );
    path
}

/// A scratch directory of one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("runtime-lambda-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The FIXTURE_LOG of one test.
struct FixtureLog {
    dir: Scratch,
}

impl FixtureLog {
    fn new() -> FixtureLog {
        FixtureLog {
            dir: Scratch::new(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("fixture.log")
    }

    fn env(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("FIXTURE_LOG".to_owned(), self.path().display().to_string())])
    }

    fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(self.path())
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Events recorded by the SQS fixture: (body, receiveCount, batchSize).
    fn sqs_records(&self) -> Vec<(String, String, u64)> {
        self.entries()
            .into_iter()
            .filter(|entry| entry["function"] == "sqs")
            .map(|entry| {
                let event = &entry["event"];
                (
                    event["body"].as_str().unwrap().to_owned(),
                    event["receiveCount"].as_str().unwrap_or("?").to_owned(),
                    event["batchSize"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

fn function(name: &str, binary: PathBuf, env: BTreeMap<String, String>) -> FunctionConfig {
    FunctionConfig {
        name: name.to_owned(),
        binary,
        env,
        timeout: Duration::from_secs(10),
        memory_mb: 128,
        max_instances: 2,
    }
}

/// Writes an executable script.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A Lambda runtime in bash: appends its pid to $PID_LOG, then forever takes an
/// invocation, waits $SLOW_SECONDS and answers `{"pid": <its pid>}`. The wait is bash's
/// own `read -t`, so killing the process leaves nothing behind.
const SLOW_RUNTIME: &str = r#"#!/usr/bin/env bash
api="$AWS_LAMBDA_RUNTIME_API"
host="${api%:*}"
port="${api##*:}"
echo "$$" >> "$PID_LOG"
while true; do
  exec 3<>"/dev/tcp/$host/$port" || exit 1
  printf 'GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$api" >&3
  request_id=""
  while IFS= read -r line <&3; do
    line="${line%$'\r'}"
    [ -z "$line" ] && break
    case "${line,,}" in
      lambda-runtime-aws-request-id:*) request_id="${line#*: }" ;;
    esac
  done
  exec 3<&-
  [ -n "$request_id" ] || exit 2
  read -rt "$SLOW_SECONDS" <> <(:) || true
  body="{\"pid\":$$}"
  exec 3<>"/dev/tcp/$host/$port" || exit 1
  printf 'POST /2018-06-01/runtime/invocation/%s/response HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s' "$request_id" "$api" "${#body}" "$body" >&3
  cat <&3 >/dev/null
  exec 3<&-
done
"#;

/// A bootstrap that never talks to the Runtime API.
const SILENT_RUNTIME: &str = r#"#!/usr/bin/env bash
echo "$$" >> "$PID_LOG"
exec sleep 60
"#;

fn slow_function(
    name: &str,
    dir: &Path,
    slow_seconds: u64,
    timeout: Duration,
    max_instances: usize,
) -> (FunctionConfig, PathBuf) {
    let pid_log = dir.join("pids");
    let env = BTreeMap::from([
        ("PID_LOG".to_owned(), pid_log.display().to_string()),
        ("SLOW_SECONDS".to_owned(), slow_seconds.to_string()),
    ]);
    let mut config = function(name, script(dir, "bootstrap", SLOW_RUNTIME), env);
    config.timeout = timeout;
    config.max_instances = max_instances;
    (config, pid_log)
}

fn pids(pid_log: &Path) -> Vec<u32> {
    std::fs::read_to_string(pid_log)
        .unwrap_or_default()
        .lines()
        .map(|line| line.trim().parse().unwrap())
        .collect()
}

/// Waits until process `pid` is gone (killed and reaped).
async fn assert_process_gone(pid: u32) {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc.exists() {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_fixture_answers_and_sees_the_payload() {
    let log = FixtureLog::new();
    let host = LambdaHost::new(vec![function(
        "FixtureSchedule",
        fixture("fixture-schedule"),
        log.env(),
    )]);
    assert_eq!(host.functions(), vec!["FixtureSchedule".to_owned()]);

    let payload = json!({ "hello": "world", "n": [1, 2, 3] });
    let result = host.invoke("FixtureSchedule", payload.clone()).await;
    assert_eq!(result, Ok(json!({ "ok": true })));
    assert_eq!(
        log.entries(),
        vec![json!({ "function": "schedule", "event": payload })]
    );

    assert_eq!(
        host.invoke("Nope", json!({})).await,
        Err(InvokeError::UnknownFunction("Nope".to_owned()))
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_invocation_cold_starts_and_later_ones_reuse_the_instance() {
    let log = FixtureLog::new();
    let host = LambdaHost::new(vec![function(
        "FixtureSchedule",
        fixture("fixture-schedule"),
        log.env(),
    )]);
    let before = host.stats("FixtureSchedule").unwrap();
    assert_eq!((before.cold_starts, before.instances), (0, 0));

    for n in 0..3 {
        let result = host.invoke("FixtureSchedule", json!({ "n": n })).await;
        assert_eq!(result, Ok(json!({ "ok": true })));
        let stats = host.stats("FixtureSchedule").unwrap();
        assert_eq!(stats.invocations, n + 1);
        assert_eq!(
            stats.cold_starts, 1,
            "invocation {n} did not reuse the instance"
        );
        assert_eq!(stats.instances, 1);
        assert_eq!(stats.errors, 0);
    }
    assert_eq!(log.entries().len(), 3);

    host.shutdown().await;
    assert_eq!(host.stats("FixtureSchedule").unwrap().instances, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_is_reported_and_the_instance_survives() {
    let log = FixtureLog::new();
    let host = LambdaHost::new(vec![function(
        "FixtureSqs",
        fixture("fixture-sqs"),
        log.env(),
    )]);
    let crash = json!({ "Records": [{ "messageId": "m-1", "body": "crash" }] });
    match host.invoke("FixtureSqs", crash).await {
        Err(InvokeError::Handler {
            function,
            error_type,
            message,
        }) => {
            assert_eq!(function, "FixtureSqs");
            assert_eq!(message, "asked to crash");
            assert!(!error_type.is_empty());
        }
        other => panic!("expected a handler error, got {other:?}"),
    }

    // A payload the handler cannot deserialise is a handler error too.
    let result = host.invoke("FixtureSqs", json!({ "Records": 5 })).await;
    assert!(
        matches!(result, Err(InvokeError::Handler { .. })),
        "{result:?}"
    );

    let ok = json!({ "Records": [
        { "messageId": "m-2", "body": "fine" },
        { "messageId": "m-3", "body": "please fail" }
    ] });
    assert_eq!(
        host.invoke("FixtureSqs", ok).await,
        Ok(json!({ "batchItemFailures": [{ "itemIdentifier": "m-3" }] }))
    );

    let stats = host.stats("FixtureSqs").unwrap();
    assert_eq!(stats.invocations, 3);
    assert_eq!(stats.errors, 2);
    assert_eq!(
        stats.cold_starts, 1,
        "a handler error must not kill the instance"
    );
    assert_eq!(stats.instances, 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invocations_run_on_up_to_max_instances() {
    let dir = Scratch::new();
    let (config, pid_log) = slow_function("Slow", &dir, 1, Duration::from_secs(10), 2);
    let host = Arc::new(LambdaHost::new(vec![config]));

    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|n| {
            let host = host.clone();
            tokio::spawn(async move { host.invoke("Slow", json!({ "n": n })).await })
        })
        .collect();
    let mut answered_by = BTreeSet::new();
    for call in calls {
        let answer = call.await.unwrap().expect("slow invocation");
        answered_by.insert(answer["pid"].as_u64().unwrap() as u32);
    }
    let elapsed = started.elapsed();

    // Four one-second invocations on two instances: two rounds, in parallel.
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3900),
        "took {elapsed:?}"
    );
    assert_eq!(answered_by.len(), 2, "answered by {answered_by:?}");
    assert_eq!(
        answered_by,
        pids(&pid_log).into_iter().collect::<BTreeSet<_>>()
    );
    let stats = host.stats("Slow").unwrap();
    assert_eq!(stats.cold_starts, 2);
    assert_eq!(stats.instances, 2);
    assert_eq!(stats.invocations, 4);
    assert_eq!((stats.busy, stats.queued), (0, 0));

    host.shutdown().await;
    for pid in answered_by {
        assert_process_gone(pid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_past_its_timeout_fails_and_its_process_is_killed() {
    let dir = Scratch::new();
    let (config, pid_log) = slow_function("Hangs", &dir, 60, Duration::from_secs(1), 1);
    let host = LambdaHost::new(vec![config]);

    let started = Instant::now();
    let result = host.invoke("Hangs", json!({})).await;
    let elapsed = started.elapsed();
    assert_eq!(
        result,
        Err(InvokeError::Timeout {
            function: "Hangs".to_owned(),
            seconds: 1
        })
    );
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(3),
        "took {elapsed:?}"
    );
    let first = pids(&pid_log);
    assert_eq!(first.len(), 1);
    assert_process_gone(first[0]).await;

    // The dead instance is replaced by a cold start.
    let result = host.invoke("Hangs", json!({})).await;
    assert!(
        matches!(result, Err(InvokeError::Timeout { .. })),
        "{result:?}"
    );
    let all = pids(&pid_log);
    assert_eq!(all.len(), 2);
    assert_ne!(all[0], all[1]);
    assert_process_gone(all[1]).await;

    let stats = host.stats("Hangs").unwrap();
    assert_eq!(stats.cold_starts, 2);
    assert_eq!(stats.timeouts, 2);
    assert_eq!(stats.errors, 2);
    assert_eq!(stats.instances, 0);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_exiting_before_taking_work_is_a_crash() {
    // `/bin/sleep` without an operand exits at once with status 1.
    let mut config = function("Sleep", PathBuf::from("/bin/sleep"), BTreeMap::new());
    config.timeout = Duration::from_secs(1);
    let host = LambdaHost::new(vec![config]);

    let started = Instant::now();
    match host.invoke("Sleep", json!({})).await {
        Err(InvokeError::Crashed { function, reason }) => {
            assert_eq!(function, "Sleep");
            assert!(reason.contains("exit status: 1"), "{reason}");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let stats = host.stats("Sleep").unwrap();
    assert_eq!((stats.crashes, stats.instances), (1, 0));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_that_never_asks_for_work_times_out_after_the_init_limit() {
    let dir = Scratch::new();
    let pid_log = dir.join("pids");
    let env = BTreeMap::from([("PID_LOG".to_owned(), pid_log.display().to_string())]);
    let mut config = function("Silent", script(&dir, "bootstrap", SILENT_RUNTIME), env);
    config.timeout = Duration::from_secs(1);
    let host = LambdaHost::new(vec![config]);

    let started = Instant::now();
    let result = host.invoke("Silent", json!({})).await;
    let elapsed = started.elapsed();
    assert_eq!(
        result,
        Err(InvokeError::Timeout {
            function: "Silent".to_owned(),
            seconds: infra::local_runtime::lambda::INIT_LIMIT.as_secs()
        })
    );
    assert!(
        elapsed >= Duration::from_secs(10) && elapsed < Duration::from_secs(13),
        "took {elapsed:?}"
    );
    let started_pids = pids(&pid_log);
    assert_eq!(started_pids.len(), 1);
    assert_process_gone(started_pids[0]).await;
    assert_eq!(host.stats("Silent").unwrap().instances, 0);
    host.shutdown().await;
}

/// A main queue (2 s visibility timeout) with a DLQ after 2 receives: (url, arn, dlq url).
async fn queue_pair(sqs: &aws_sdk_sqs::Client, label: &str) -> (String, String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("rt-{label}-{suffix}-dlq"))
        .send()
        .await
        .expect("creating a queue (is moto running on 127.0.0.1:4566? `make aws-up`)")
        .queue_url
        .unwrap();
    let arn = |url: String| async move {
        sqs.get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone()
    };
    let dlq_arn = arn(dlq_url.clone()).await;
    let url = sqs
        .create_queue()
        .queue_name(format!("rt-{label}-{suffix}"))
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2" }).to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue_arn = arn(url.clone()).await;
    (url, queue_arn, dlq_url)
}

async fn send_batch(sqs: &aws_sdk_sqs::Client, url: &str, bodies: &[&str]) {
    use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
    let entries = bodies
        .iter()
        .enumerate()
        .map(|(index, body)| {
            SendMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .message_body(*body)
                .build()
                .unwrap()
        })
        .collect();
    let sent = sqs
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
        .unwrap();
    assert!(sent.failed().is_empty(), "{:?}", sent.failed());
}

/// Polls `url` until the bodies received there include all of `expected` (or `within`
/// passes); returns every body seen.
async fn wait_for_bodies(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    expected: &[&str],
    within: Duration,
) -> BTreeSet<String> {
    let deadline = Instant::now() + within;
    let mut seen = BTreeSet::new();
    while Instant::now() < deadline && !expected.iter().all(|body| seen.contains(*body)) {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in out.messages.unwrap_or_default() {
            seen.insert(message.body.unwrap_or_default());
        }
    }
    seen
}

async fn messages_left(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|name| {
        attributes
            .get(name)
            .map_or(0, |n| n.parse::<u64>().unwrap())
    })
    .sum()
}

fn sqs_host(log: &FixtureLog) -> Arc<LambdaHost> {
    Arc::new(LambdaHost::new(vec![function(
        "FixtureSqs",
        fixture("fixture-sqs"),
        log.env(),
    )]))
}

fn mapping(url: &str, arn: &str) -> SqsMapping {
    SqsMapping {
        name: "Jobs".to_owned(),
        function: "FixtureSqs".to_owned(),
        queue_url: url.to_owned(),
        queue_arn: arn.to_owned(),
        batch_size: 10,
        batching_window: Duration::ZERO,
        report_batch_item_failures: true,
        max_concurrency: 2,
        poll_wait: Duration::from_secs(1),
        duplicate_rate: 0.0,
    }
}

/// Fault runs: with `duplicate_rate` 1 every message is handled twice (two invocations at
/// once, as SQS's at-least-once delivery may do) and still deleted once, by the verdict
/// of the first; a message the first fails is not deleted by the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_duplicate_delivery_hands_every_message_over_twice() {
    let sdk = integration_tests::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (url, arn, dlq_url) = queue_pair(&sqs, "twice").await;
    send_batch(&sqs, &url, &["one", "two", "please fail"]).await;

    let log = FixtureLog::new();
    let host = sqs_host(&log);
    let shutdown = CancellationToken::new();
    let pollers = sqs::spawn(
        vec![SqsMapping {
            duplicate_rate: 1.0,
            ..mapping(&url, &arn)
        }],
        sqs.clone(),
        host.clone(),
        "eu-central-1".to_owned(),
        shutdown.clone(),
    );
    let dead = wait_for_bodies(&sqs, &dlq_url, &["please fail"], Duration::from_secs(30)).await;
    shutdown.cancel();
    pollers.await.unwrap();
    host.shutdown().await;

    assert_eq!(dead, BTreeSet::from(["please fail".to_owned()]));
    let records = log.sqs_records();
    let of = |body: &str| -> Vec<String> {
        let mut counts: Vec<String> = records
            .iter()
            .filter(|(b, _, _)| b == body)
            .map(|(_, count, _)| count.clone())
            .collect();
        counts.sort();
        counts
    };
    assert_eq!(of("one"), vec!["1", "1"], "{records:?}");
    assert_eq!(of("two"), vec!["1", "1"], "{records:?}");
    assert_eq!(of("please fail"), vec!["1", "1", "2", "2"], "{records:?}");
    assert_eq!(messages_left(&sqs, &url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_batch_item_failures_are_retried_then_dead_lettered() {
    let sdk = integration_tests::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (url, arn, dlq_url) = queue_pair(&sqs, "partial").await;
    send_batch(&sqs, &url, &["first", "please fail", "third"]).await;

    let log = FixtureLog::new();
    let host = sqs_host(&log);
    let shutdown = CancellationToken::new();
    let pollers = sqs::spawn(
        vec![mapping(&url, &arn)],
        sqs.clone(),
        host.clone(),
        "eu-central-1".to_owned(),
        shutdown.clone(),
    );

    // Received twice (receive count 1 and 2), then moved by the redrive policy.
    let dead = wait_for_bodies(&sqs, &dlq_url, &["please fail"], Duration::from_secs(30)).await;
    shutdown.cancel();
    pollers.await.unwrap();
    host.shutdown().await;

    assert_eq!(
        dead,
        BTreeSet::from(["please fail".to_owned()]),
        "fixture saw {:?}",
        log.sqs_records()
    );
    let records = log.sqs_records();
    let of = |body: &str| -> Vec<String> {
        records
            .iter()
            .filter(|(b, _, _)| b == body)
            .map(|(_, count, _)| count.clone())
            .collect()
    };
    assert_eq!(of("first"), vec!["1"], "{records:?}");
    assert_eq!(of("third"), vec!["1"], "{records:?}");
    assert_eq!(of("please fail"), vec!["1", "2"], "{records:?}");
    // The three arrived as one batch.
    assert!(
        records
            .iter()
            .filter(|(_, count, _)| count == "1")
            .all(|(_, _, size)| *size == 3),
        "{records:?}"
    );
    assert_eq!(messages_left(&sqs, &url).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_a_failed_invocation_retries_the_whole_batch() {
    let sdk = integration_tests::aws_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (url, arn, dlq_url) = queue_pair(&sqs, "crash").await;
    send_batch(&sqs, &url, &["crash", "bystander"]).await;

    let log = FixtureLog::new();
    let host = sqs_host(&log);
    let shutdown = CancellationToken::new();
    let pollers = sqs::spawn(
        vec![mapping(&url, &arn)],
        sqs.clone(),
        host.clone(),
        "eu-central-1".to_owned(),
        shutdown.clone(),
    );

    // Nothing of the failed batch is deleted: both messages come back, twice, and then
    // both are dead-lettered.
    let dead = wait_for_bodies(
        &sqs,
        &dlq_url,
        &["crash", "bystander"],
        Duration::from_secs(30),
    )
    .await;
    shutdown.cancel();
    pollers.await.unwrap();
    let stats = host.stats("FixtureSqs").unwrap();
    host.shutdown().await;

    let records = log.sqs_records();
    assert_eq!(
        dead,
        BTreeSet::from(["crash".to_owned(), "bystander".to_owned()]),
        "{records:?}"
    );
    let crash_counts: Vec<&str> = records
        .iter()
        .filter(|(body, _, _)| body == "crash")
        .map(|(_, count, _)| count.as_str())
        .collect();
    assert_eq!(crash_counts, vec!["1", "2"], "{records:?}");
    assert!(
        records.iter().all(|(_, _, size)| *size == 2),
        "the two messages were not batched together: {records:?}"
    );
    assert_eq!(stats.invocations, 2);
    assert_eq!(stats.errors, 2);
    assert_eq!(messages_left(&sqs, &url).await, 0);
}

fn schedule_host(log: &FixtureLog) -> Arc<LambdaHost> {
    Arc::new(LambdaHost::new(vec![function(
        "FixtureSchedule",
        fixture("fixture-schedule"),
        log.env(),
    )]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firing_a_schedule_invokes_the_function_with_a_scheduled_event() {
    let log = FixtureLog::new();
    let host = schedule_host(&log);
    let scheduler = Scheduler::new(
        vec![ScheduleSpec {
            name: "NightlyReport".to_owned(),
            function: "FixtureSchedule".to_owned(),
            expression: "cron(0 2 * * ? *)".to_owned(),
            enabled: false,
            input: None,
        }],
        host.clone(),
        1.0,
    )
    .unwrap()
    .with_region("eu-central-1");

    assert_eq!(
        scheduler.fire("NightlyReport").await,
        Ok(json!({ "ok": true }))
    );
    assert!(matches!(
        scheduler.fire("Unknown").await,
        Err(InvokeError::UnknownFunction(_))
    ));
    let entries = log.entries();
    assert_eq!(entries.len(), 1);
    let event = &entries[0]["event"];
    assert_eq!(event["detail-type"], "Scheduled Event");
    assert_eq!(event["source"], "aws.events");
    assert_eq!(event["account"], "123456789012");
    assert_eq!(event["region"], "eu-central-1");
    assert_eq!(
        event["resources"],
        json!(["arn:aws:events:eu-central-1:123456789012:rule/NightlyReport"])
    );
    assert_eq!(event["detail"], json!({}));
    let time = chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - time.to_utc()).num_seconds().abs() < 60);

    let listed = scheduler.list();
    assert_eq!(
        listed,
        vec![(
            "NightlyReport".to_owned(),
            "FixtureSchedule".to_owned(),
            "cron(0 2 * * ? *)".to_owned(),
            None
        )]
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_schedule_fires_on_the_scaled_clock() {
    let log = FixtureLog::new();
    let host = schedule_host(&log);
    // 120×: a minute every half second.
    let scheduler = Arc::new(
        Scheduler::new(
            vec![ScheduleSpec {
                name: "EveryMinute".to_owned(),
                function: "FixtureSchedule".to_owned(),
                expression: "rate(1 minute)".to_owned(),
                enabled: true,
                input: None,
            }],
            host.clone(),
            120.0,
        )
        .unwrap(),
    );
    let first_run = scheduler.list()[0]
        .3
        .expect("an enabled schedule has a next run");
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = scheduler.clone().spawn(shutdown.clone());

    while log.entries().is_empty() {
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "rate(1 minute) at 120× did not fire within 1.5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fired_after = started.elapsed();
    shutdown.cancel();
    task.await.unwrap();

    assert!(
        fired_after >= Duration::from_millis(400),
        "fired after {fired_after:?}"
    );
    let event = &log.entries()[0]["event"];
    assert_eq!(event["detail-type"], "Scheduled Event");
    assert_eq!(
        event["time"],
        first_run.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    // The next run moved on by whole virtual minutes.
    let moved = (scheduler.list()[0].3.unwrap() - first_run).num_seconds();
    assert!(moved >= 60 && moved % 60 == 0, "moved by {moved} s");
    host.shutdown().await;
}
