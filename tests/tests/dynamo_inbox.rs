//! Single-use nonces and the notification inbox against local AWS.

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{Duration, Utc};
use integration_tests::LocalStack;
use shared::domain::{NotificationId, UserId};
use shared::store::{
    DynamoNonceStore, DynamoNotificationStore, NonceStore, Notification, NotificationStore,
};

fn notification(user: &UserId, event: &str, minutes_ago: i64) -> Notification {
    Notification {
        user_id: user.clone(),
        notification_id: NotificationId::new(),
        event_id: event.into(),
        kind: "consent.valid".into(),
        title: "Bank connected".into(),
        message: "Your bank is connected.".into(),
        data: serde_json::json!({"connectionId": "c"}),
        created_at: Utc::now() - Duration::minutes(minutes_ago),
    }
}

#[tokio::test]
async fn a_nonce_is_consumed_once_even_under_concurrency() {
    let local = LocalStack::provision().await;
    let store = DynamoNonceStore::new(local.dynamodb(), local.resources.table("ConsentsTable"));
    let expires = Utc::now() + Duration::minutes(30);

    let attempts: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.consume("n-abc", expires).await })
        })
        .collect();
    let mut firsts = 0;
    for a in attempts {
        if a.await.unwrap().unwrap() {
            firsts += 1;
        }
    }
    assert_eq!(firsts, 1, "exactly one consumer wins");
    assert!(!store.consume("n-abc", expires).await.unwrap());
    assert!(store.consume("n-other", expires).await.unwrap());
    local.teardown().await;
}

#[tokio::test]
async fn notifications_are_stored_once_per_event_and_listed_newest_first() {
    let local = LocalStack::provision().await;
    let store = DynamoNotificationStore::new(
        local.dynamodb(),
        local.resources.table("NotificationsTable"),
    );
    let alice = UserId::parse("alice").unwrap();
    let bob = UserId::parse("bob").unwrap();

    assert!(
        store
            .put(&notification(&alice, "consent:1:valid", 10))
            .await
            .unwrap()
    );
    assert!(
        store
            .put(&notification(&alice, "consent:2:valid", 5))
            .await
            .unwrap()
    );
    assert!(
        store
            .put(&notification(&alice, "consent:3:rejected", 1))
            .await
            .unwrap()
    );
    // The same event again (a retried Lambda): not stored twice, even with a new id.
    assert!(
        !store
            .put(&notification(&alice, "consent:2:valid", 0))
            .await
            .unwrap()
    );
    assert!(
        store
            .put(&notification(&bob, "consent:2:valid", 0))
            .await
            .unwrap(),
        "event ids are per user"
    );

    let listed = store.list(&alice, 10).await.unwrap();
    let events: Vec<_> = listed.iter().map(|n| n.event_id.as_str()).collect();
    assert_eq!(
        events,
        ["consent:3:rejected", "consent:2:valid", "consent:1:valid"]
    );
    assert_eq!(store.list(&alice, 2).await.unwrap().len(), 2);
    assert_eq!(store.list(&bob, 10).await.unwrap().len(), 1);

    // A second inbox item of a stored event (what a store without atomic transactions,
    // like moto under concurrent duplicates, can leave): still listed once, as first told.
    let first = listed
        .iter()
        .find(|n| n.event_id == "consent:1:valid")
        .unwrap()
        .clone();
    let table = local.resources.table("NotificationsTable").to_owned();
    let dynamodb = local.dynamodb();
    let stored = dynamodb
        .query()
        .table_name(&table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :p)")
        .expression_attribute_values(":pk", AttributeValue::S("USER#alice".into()))
        .expression_attribute_values(":p", AttributeValue::S("NOTIF#".into()))
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    let mut twin = stored
        .into_iter()
        .find(|item| item.get("eventId") == Some(&AttributeValue::S("consent:1:valid".into())))
        .expect("the inbox item of consent:1:valid");
    let later = NotificationId::new();
    twin.insert(
        "sk".into(),
        AttributeValue::S(format!(
            "NOTIF#{}#{later}",
            (Utc::now()).format("%Y-%m-%dT%H:%M:%S%.6fZ")
        )),
    );
    twin.insert(
        "notificationId".into(),
        AttributeValue::S(later.to_string()),
    );
    dynamodb
        .put_item()
        .table_name(&table)
        .set_item(Some(twin))
        .send()
        .await
        .unwrap();
    let relisted = store.list(&alice, 10).await.unwrap();
    let events: Vec<_> = relisted.iter().map(|n| n.event_id.as_str()).collect();
    assert_eq!(
        events,
        ["consent:3:rejected", "consent:2:valid", "consent:1:valid"]
    );
    assert_eq!(relisted[2].notification_id, first.notification_id);
    assert!(
        store
            .list(&UserId::parse("carol").unwrap(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    local.teardown().await;
}
