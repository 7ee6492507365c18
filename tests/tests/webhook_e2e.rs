//! Webhooks end to end: the deployed functions (template.yaml) in the local runtime, the
//! sandbox bank's SCA, and an in-test receiver that checks every signature. A consent that
//! becomes valid is delivered to the receiver once; a 500 on the first attempt is retried
//! (after the sender's 2 s backoff, not the queue's 180 s visibility timeout) and then
//! delivered once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use integration_tests::Bundle;
use serde_json::{Value, json};
use shared::domain::UserId;
use shared::store::{DynamoNotificationStore, NotificationStore};

const SECRET: &str = "webhook-e2e-jwt-secret";
const WEBHOOK_SECRET: &str = "webhook-e2e-signing-secret-0123456789";
const APP: &str = "http://127.0.0.1:3000/app/connected";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    body: Value,
    signature_ok: bool,
    answered: u16,
}

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Received>>,
    /// Events whose id contains one of these answer 500 to their first attempt.
    fail_first: Mutex<HashSet<String>>,
}

impl Receiver {
    fn of(&self, needle: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.id.contains(needle))
            .cloned()
            .collect()
    }
}

async fn receive(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = header("webhook-id");
    let signature_ok = shared::webhook::verify(
        WEBHOOK_SECRET.as_bytes(),
        &id,
        &header("webhook-timestamp"),
        &body,
        &header("webhook-signature"),
        chrono::Utc::now(),
    );
    let mut got = rx.got.lock().unwrap();
    let first = !got.iter().any(|r| r.id == id);
    let fail = first && rx.fail_first.lock().unwrap().iter().any(|n| id.contains(n));
    let status = if !signature_ok {
        StatusCode::UNAUTHORIZED
    } else if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    };
    got.push(Received {
        id,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        signature_ok,
        answered: status.as_u16(),
    });
    status
}

/// The bundle, its functions sending webhooks to a receiver in this test.
async fn start() -> (Bundle, Arc<Receiver>) {
    let rx = Arc::new(Receiver::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(receive))
        .with_state(rx.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let w = Bundle::start(
        SECRET,
        &[
            ("WEBHOOK_URL", format!("http://{addr}/hooks")),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ],
    )
    .await;
    (w, rx)
}

/// `user` links `bank` for 90 days.
async fn connect(w: &Bundle, user: &str, bank: &str) -> Value {
    w.connect(
        user,
        json!({"bankId": bank, "validDays": 90, "redirectUrl": APP}),
    )
    .await
}

/// Approves at the bank and follows the browser's redirect to our callback.
async fn approve(w: &Bundle, created: &Value) {
    let callback = w.decide(created, "approve").await;
    let (status, _) = w.follow(&callback).await;
    assert_eq!(status, 302);
}

/// Waits until `done` holds for the requests received so far.
async fn until(rx: &Receiver, what: &str, done: impl Fn(&Receiver) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(rx) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            rx.got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_valid_consent_is_delivered_once_signed_and_a_failed_attempt_is_retried() {
    let (w, rx) = start().await;

    // Alice: delivered at the first attempt.
    let alice = connect(&w, "alice", "lt-alpha").await;
    let alice_id = alice["connectionId"].as_str().unwrap().to_owned();
    approve(&w, &alice).await;
    until(&rx, "alice's webhook", |rx| !rx.of(&alice_id).is_empty()).await;

    // Bob: the receiver fails the first attempt with a 500.
    let bob = connect(&w, "bob", "lt-alpha").await;
    let bob_id = bob["connectionId"].as_str().unwrap().to_owned();
    rx.fail_first.lock().unwrap().insert(bob_id.clone());
    let retried_at = Instant::now();
    approve(&w, &bob).await;
    until(&rx, "bob's retried webhook", |rx| {
        rx.of(&bob_id).iter().any(|r| r.answered == 204)
    })
    .await;
    assert!(
        retried_at.elapsed() < Duration::from_secs(60),
        "retried after the backoff, not the 180 s visibility timeout"
    );

    // Redeliveries (if any) must not send a delivered event again.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let alice_got = rx.of(&alice_id);
    assert_eq!(alice_got.len(), 1, "exactly one request: {alice_got:?}");
    let hook = &alice_got[0];
    assert!(hook.signature_ok);
    assert_eq!(hook.answered, 204);
    assert_eq!(hook.id, format!("consent:{alice_id}:valid"));
    assert_eq!(hook.body["id"], hook.id.as_str());
    assert_eq!(hook.body["type"], "consent.valid");
    assert_eq!(
        hook.body["data"]["details"]["connectionId"],
        alice_id.as_str()
    );
    assert!(hook.body["createdAt"].is_string());

    let bob_got = rx.of(&bob_id);
    let answers: Vec<u16> = bob_got.iter().map(|r| r.answered).collect();
    assert_eq!(
        answers,
        [500, 204],
        "one failure, then one delivery: {bob_got:?}"
    );
    assert!(bob_got.iter().all(|r| r.signature_ok));
    assert_eq!(
        bob_got[0].id, bob_got[1].id,
        "the same Webhook-Id on every attempt"
    );
    assert_eq!(bob_got[1].body["type"], "consent.valid");

    // The outcome is recorded on each event (queued, then delivered; no failure).
    let store = DynamoNotificationStore::new(
        w.rt.local.dynamodb(),
        w.rt.local.resources.table("NotificationsTable"),
    );
    for (user, id) in [("alice", &alice_id), ("bob", &bob_id)] {
        let event = store
            .get_event(
                &UserId::parse(user).unwrap(),
                &format!("consent:{id}:valid"),
            )
            .await
            .unwrap()
            .expect("the stored event");
        assert!(event.webhook.webhook_queued_at.is_some(), "{event:?}");
        assert!(event.webhook.webhook_delivered_at.is_some(), "{event:?}");
        assert_eq!(event.webhook.webhook_failed_at, None);
    }
    // Nothing gave up.
    let dlq =
        w.rt.local
            .sqs()
            .get_queue_attributes()
            .queue_url(w.rt.local.resources.queue_url("WebhookDLQ"))
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .unwrap();
    assert_eq!(
        dlq.attributes().unwrap()
            [&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages],
        "0"
    );

    // Everything the receiver got was signed correctly.
    assert!(rx.got.lock().unwrap().iter().all(|r| r.signature_ok));

    w.stop().await;
}
