//! The product's API functions as deployed (template.yaml), through the local runtime,
//! against local AWS. Needs `cargo build --workspace --bins` (make test does it).

use std::path::Path;

use infra::local_runtime::jwt;
use integration_tests::Runtime;
use serde_json::Value;
use shared::domain::{NotificationId, UserId};
use shared::store::{DynamoNotificationStore, Notification, NotificationStore};

const SECRET: &str = "api-e2e-secret";

async fn start() -> Runtime {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Runtime::start(
        &root.join("template.yaml"),
        SECRET,
        &[(
            "BANK_REGISTRY_PATH",
            root.join("infra/banks.json").display().to_string(),
        )],
    )
    .await
}

fn token(user: &str) -> String {
    jwt::issue(SECRET, user, std::time::Duration::from_secs(300), None)
}

#[tokio::test]
async fn public_routes_and_the_notification_inbox() {
    let rt = start().await;

    let r = rt.http.get(rt.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = rt.http.get(rt.url("/v1/banks")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let banks: Value = r.json().await.unwrap();
    assert_eq!(banks["banks"].as_array().unwrap().len(), 3);

    // The inbox needs a token, and shows only the caller's notifications.
    assert_eq!(
        rt.http
            .get(rt.url("/v1/notifications"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let store = DynamoNotificationStore::new(
        rt.local.dynamodb(),
        rt.local.resources.table("NotificationsTable"),
    );
    for (user, event) in [
        ("alice", "consent:1:valid"),
        ("alice", "consent:2:valid"),
        ("bob", "consent:3:valid"),
    ] {
        store
            .put(&Notification {
                user_id: UserId::parse(user).unwrap(),
                notification_id: NotificationId::new(),
                event_id: event.into(),
                kind: "consent.valid".into(),
                title: "Bank connected".into(),
                message: "Your bank account is connected.".into(),
                data: serde_json::json!({}),
                created_at: chrono::Utc::now(),
            })
            .await
            .unwrap();
    }
    let r = rt
        .http
        .get(rt.url("/v1/notifications"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let inbox: Value = r.json().await.unwrap();
    assert_eq!(inbox["notifications"].as_array().unwrap().len(), 2);
    let r = rt
        .http
        .get(rt.url("/v1/notifications"))
        .bearer_auth(token("carol"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["notifications"],
        serde_json::json!([])
    );

    let r = rt
        .http
        .get(rt.url("/v1/notifications?limit=0"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        r.json::<Value>().await.unwrap()["errors"][0]["field"],
        "limit"
    );

    rt.stop().await;
}
