//! The consent outbox against local AWS: a consent's state change and its notification in
//! one TransactWriteItems across the consents and notifications tables (provisioned from
//! template.yaml), and the pending-webhook index the health job's sweep reads.

use chrono::{DateTime, Days, Duration, Utc};
use integration_tests::LocalStack;
use shared::bank::ConsentAccess;
use shared::domain::{BankId, ConsentId, ConsentState, NotificationId, UserId};
use shared::store::{
    ConsentOutbox, ConsentRecord, ConsentStore, DynamoConsentOutbox, DynamoConsentStore,
    DynamoNotificationStore, Notification, NotificationStore, StoreError, WebhookMark,
};

struct Stores {
    consents: DynamoConsentStore,
    notifications: DynamoNotificationStore,
    outbox: DynamoConsentOutbox,
}

fn stores(local: &LocalStack) -> Stores {
    let consents_table = local.resources.table("ConsentsTable");
    let notifications_table = local.resources.table("NotificationsTable");
    Stores {
        consents: DynamoConsentStore::new(local.dynamodb(), consents_table),
        notifications: DynamoNotificationStore::new(local.dynamodb(), notifications_table),
        outbox: DynamoConsentOutbox::new(local.dynamodb(), consents_table, notifications_table),
    }
}

fn consent(user: &UserId) -> ConsentRecord {
    let now = Utc::now();
    ConsentRecord {
        user_id: user.clone(),
        consent_id: ConsentId::new(),
        bank_id: BankId::parse("lt-alpha").unwrap(),
        bank_consent_id: None,
        state: ConsentState::PendingAuthorization,
        access: ConsentAccess::AllAccounts,
        valid_until: now.date_naive().checked_add_days(Days::new(90)).unwrap(),
        frequency_per_day: 4,
        recurring: true,
        renewal_of: None,
        renewed_by: None,
        renewal_notified: false,
        lease_until: None,
        psu_ip: None,
        sca_url: None,
        created_at: now,
        updated_at: now,
        version: 0,
    }
}

fn note(record: &ConsentRecord, state: ConsentState, at: DateTime<Utc>) -> Notification {
    Notification {
        user_id: record.user_id.clone(),
        notification_id: NotificationId::new(),
        event_id: format!("consent:{}:{}", record.consent_id, state.as_str()),
        kind: format!("consent.{}", state.as_str()),
        title: "Bank connection".into(),
        message: format!("now {state}"),
        data: serde_json::json!({"connectionId": record.consent_id}),
        created_at: at,
    }
}

/// `record` moved to `state` (the caller's next write).
fn moved(record: &ConsentRecord, state: ConsentState) -> ConsentRecord {
    let mut next = record.clone();
    next.state = state;
    next.updated_at = Utc::now();
    next
}

#[tokio::test]
async fn a_state_change_and_its_notification_commit_together_or_not_at_all() {
    let local = LocalStack::provision().await;
    let s = stores(&local);
    let alice = UserId::parse("auth0|alice").unwrap();
    let pending = consent(&alice);
    s.consents.insert(&pending).await.unwrap();

    // Another writer got there first: a version conflict, and no notification either.
    let mut other = pending.clone();
    other.sca_url = Some("https://bank.example/sca/1".into());
    let current = s.consents.update(&other).await.unwrap();
    let valid_note = note(&pending, ConsentState::Valid, Utc::now());
    let lost = s
        .outbox
        .update_with_event(&moved(&pending, ConsentState::Valid), &valid_note, true)
        .await;
    assert!(
        matches!(lost, Err(StoreError::VersionConflict { expected: 0 })),
        "{lost:?}"
    );
    assert_eq!(
        s.consents.get(&alice, &pending.consent_id).await.unwrap(),
        Some(current.clone())
    );
    assert!(
        s.notifications
            .get_event(&alice, &valid_note.event_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.notifications.list(&alice, 10).await.unwrap().is_empty());

    // A consent that does not exist: NotFound, and no notification.
    let ghost = consent(&alice);
    let ghost_note = note(&ghost, ConsentState::Valid, Utc::now());
    let missing = s
        .outbox
        .update_with_event(&moved(&ghost, ConsentState::Valid), &ghost_note, true)
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
    assert!(s.notifications.list(&alice, 10).await.unwrap().is_empty());

    // On the current version both are written.
    let (valid, new) = s
        .outbox
        .update_with_event(&moved(&current, ConsentState::Valid), &valid_note, true)
        .await
        .unwrap();
    assert!(new);
    assert_eq!(valid.version, 2);
    assert_eq!(
        s.consents.get(&alice, &pending.consent_id).await.unwrap(),
        Some(valid.clone())
    );
    let event = s
        .notifications
        .get_event(&alice, &valid_note.event_id)
        .await
        .unwrap()
        .expect("the event's guard");
    assert_eq!(event.notification, valid_note);
    assert_eq!(event.webhook.webhook_queued_at, None);
    assert_eq!(
        s.notifications.list(&alice, 10).await.unwrap(),
        std::slice::from_ref(&valid_note)
    );

    // The same event id again (a retry, or an event stored before): the state change is
    // applied, the stored event is kept, no second notification.
    let replay = note(&valid, ConsentState::Valid, Utc::now());
    assert_eq!(replay.event_id, valid_note.event_id);
    let (again, new) = s
        .outbox
        .update_with_event(&moved(&valid, ConsentState::Expired), &replay, true)
        .await
        .unwrap();
    assert!(!new);
    assert_eq!(again.version, 3);
    let stored = s
        .consents
        .get(&alice, &pending.consent_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.state, stored.version), (ConsentState::Expired, 3));
    assert_eq!(
        s.notifications.list(&alice, 10).await.unwrap(),
        std::slice::from_ref(&valid_note)
    );
    let event = s
        .notifications
        .get_event(&alice, &valid_note.event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event.notification.notification_id,
        valid_note.notification_id
    );

    // A stale version with a stored event is still a version conflict, and writes nothing.
    let stale = s
        .outbox
        .update_with_event(&moved(&valid, ConsentState::RevokedByPsu), &replay, true)
        .await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { expected: 2 })),
        "{stale:?}"
    );
    assert_eq!(
        s.consents.get(&alice, &pending.consent_id).await.unwrap(),
        Some(stored)
    );
    assert_eq!(s.notifications.list(&alice, 10).await.unwrap().len(), 1);
    local.teardown().await;
}

#[tokio::test]
async fn pending_webhooks_lists_unqueued_events_until_they_are_marked_queued() {
    let local = LocalStack::provision().await;
    let s = stores(&local);
    let alice = UserId::parse("auth0|alice").unwrap();
    let bob = UserId::parse("auth0|bob").unwrap();
    let now = Utc::now();
    let mut events = Vec::new();
    // (user, created, written with the pending-webhook mark)
    for (user, created, pending) in [
        (&alice, now - Duration::minutes(10), true),
        (&bob, now - Duration::minutes(9), true),
        (&alice, now - Duration::minutes(10), false),
        (&bob, now, true),
    ] {
        let record = consent(user);
        s.consents.insert(&record).await.unwrap();
        let n = note(&record, ConsentState::Valid, created);
        s.outbox
            .update_with_event(&moved(&record, ConsentState::Valid), &n, pending)
            .await
            .unwrap();
        events.push(n);
    }
    let ids = |notes: Vec<Notification>| {
        let mut ids: Vec<String> = notes.into_iter().map(|n| n.event_id).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    let old_enough = now - Duration::minutes(2);
    let due = s.outbox.pending_webhooks(old_enough, 100).await.unwrap();
    assert!(
        due.contains(&events[0]),
        "the index carries the notification: {due:?}"
    );
    assert_eq!(
        ids(due),
        sorted(vec![events[0].event_id.clone(), events[1].event_id.clone()])
    );
    let everything = s
        .outbox
        .pending_webhooks(now + Duration::minutes(1), 100)
        .await
        .unwrap();
    assert_eq!(
        ids(everything),
        sorted(vec![
            events[0].event_id.clone(),
            events[1].event_id.clone(),
            events[3].event_id.clone()
        ])
    );
    assert_eq!(
        s.outbox
            .pending_webhooks(old_enough, 1)
            .await
            .unwrap()
            .len(),
        1
    );

    // Marked queued: it leaves the index.
    assert!(
        s.notifications
            .mark_webhook(&alice, &events[0].event_id, WebhookMark::Queued, now)
            .await
            .unwrap()
    );
    assert_eq!(
        ids(s.outbox.pending_webhooks(old_enough, 100).await.unwrap()),
        [events[1].event_id.clone()]
    );
    local.teardown().await;
}
