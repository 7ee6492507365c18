//! The consent health job end to end: the deployed functions (template.yaml) in the local
//! runtime, local AWS and the sandbox bank. One run of the hourly schedule with every hour
//! checked (`detail.allHours`) mirrors a consent revoked at the bank, expires a consent
//! whose `validUntil` has passed (and starts its one renewal), leaves a healthy consent
//! alone and notifies each change once; a second run changes nothing.

use chrono::{Days, Utc};
use integration_tests::Bundle;
use serde_json::{Value, json};
use shared::domain::{ConsentId, ConsentState, UserId};
use shared::store::{ConsentStore, DynamoConsentStore};

const SECRET: &str = "health-e2e-secret";
const APP: &str = "http://127.0.0.1:3000/app/connected";
const SCHEDULE: &str = "ConsentHealthFunction.Hourly";

/// The consents table of the stack, read and written directly.
fn store(w: &Bundle) -> DynamoConsentStore {
    DynamoConsentStore::new(
        w.rt.local.dynamodb(),
        w.rt.local.resources.table("ConsentsTable"),
    )
}

/// `user` links `bank` and approves it at the bank; returns (connection id, the bank's
/// consent id).
async fn linked(w: &Bundle, user: &str, bank: &str) -> (String, String) {
    let body = json!({"bankId": bank, "validDays": 90, "redirectUrl": APP});
    let created = w.connect(user, body).await;
    let auth_url = created["authUrl"].as_str().unwrap();
    let bank_consent = auth_url.rsplit('/').next().unwrap().to_owned();
    let callback = w.decide(&created, "approve").await;
    let (status, location) = w.follow(&callback).await;
    assert_eq!(status, 302);
    let location = location.unwrap();
    assert!(location.contains("status=valid"), "{location}");
    (
        created["connectionId"].as_str().unwrap().to_owned(),
        bank_consent,
    )
}

/// Runs the health schedule now, checking every hour; returns the run's report.
async fn fire_all_hours(w: &Bundle) -> Value {
    w.fire(SCHEDULE, Some(json!({"allHours": true}))).await
}

fn of_kind<'a>(inbox: &'a [Value], kind: &str, connection: &str) -> Vec<&'a Value> {
    inbox
        .iter()
        .filter(|n| n["kind"] == kind && n["data"]["connectionId"] == connection)
        .collect()
}

#[tokio::test]
async fn one_health_run_mirrors_revocations_expires_and_renews_once() {
    let w = Bundle::start(SECRET, &[]).await;
    let user = UserId::parse("alice").unwrap();

    let (revoked, revoked_at_bank) = linked(&w, "alice", "lt-alpha").await;
    let (healthy, _) = linked(&w, "alice", "lt-alpha").await;
    let (lapsed, _) = linked(&w, "alice", "lt-alpha").await;
    assert_eq!(w.consent_creations("lt-alpha").await, 3);

    // The PSU revokes one consent at the bank.
    let response = w
        .http
        .post(
            w.sandbox
                .admin(&format!("consents/lt-alpha/{revoked_at_bank}/status")),
        )
        .json(&json!({"consentStatus": "revokedByPsu"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");

    // Another one was valid until yesterday (written directly, as a versioned update).
    let store = store(&w);
    let lapsed_id = ConsentId::parse(&lapsed).unwrap();
    let mut record = store.get(&user, &lapsed_id).await.unwrap().unwrap();
    assert_eq!(record.state, ConsentState::Valid);
    record.valid_until = Utc::now().date_naive() - Days::new(1);
    store.update(&record).await.unwrap();
    let healthy_before = w.connection("alice", &healthy).await;

    let report = fire_all_hours(&w).await;
    assert_eq!(
        report,
        json!({"expired": 1, "mirrored": 1, "checked": 2, "renewalsStarted": 1,
            "webhooksRequeued": 0, "failed": 0})
    );

    assert_eq!(
        w.connection("alice", &revoked).await["status"],
        "revoked_by_psu"
    );
    assert_eq!(w.connection("alice", &healthy).await, healthy_before);
    let expired = w.connection("alice", &lapsed).await;
    assert_eq!(expired["status"], "expired");
    assert_eq!(expired["renewal"]["state"], "pending", "{expired}");
    let renewal_id = expired["renewal"]["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();

    // Exactly one renewal: one new pending connection, one more consent at the bank.
    let list = w.connections("alice").await;
    assert_eq!(list.len(), 4, "{list:?}");
    let pending: Vec<&Value> = list
        .iter()
        .filter(|c| c["status"] == "pending_authorization")
        .collect();
    assert_eq!(pending.len(), 1, "{list:?}");
    assert_eq!(pending[0]["connectionId"], renewal_id.as_str());
    assert_eq!(pending[0]["bankId"], "lt-alpha");
    let stored = store
        .get(&user, &ConsentId::parse(&renewal_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.renewal_of, Some(lapsed_id.clone()));
    assert_eq!(w.consent_creations("lt-alpha").await, 4);

    // Each change notified once.
    let inbox = w.inbox("alice").await;
    let revoked_notes = of_kind(&inbox, "consent.revoked_by_psu", &revoked);
    assert_eq!(revoked_notes.len(), 1, "{inbox:?}");
    let expired_notes = of_kind(&inbox, "consent.expired", &lapsed);
    assert_eq!(expired_notes.len(), 1, "{inbox:?}");
    let renewal_notes = of_kind(&inbox, "consent.renewal_required", &lapsed);
    assert_eq!(renewal_notes.len(), 1, "{inbox:?}");
    assert_eq!(
        renewal_notes[0]["data"]["newConnectionId"],
        renewal_id.as_str()
    );
    assert_eq!(renewal_notes[0]["data"]["authUrl"], pending[0]["authUrl"]);
    let healthy_notes: Vec<&Value> = inbox
        .iter()
        .filter(|n| n["data"]["connectionId"] == healthy.as_str())
        .collect();
    assert_eq!(healthy_notes.len(), 1, "only its consent.valid: {inbox:?}");
    assert_eq!(healthy_notes[0]["kind"], "consent.valid");

    // Firing again changes nothing: only the healthy consent is still asked about.
    let again = fire_all_hours(&w).await;
    assert_eq!(
        again,
        json!({"expired": 0, "mirrored": 0, "checked": 1, "renewalsStarted": 0,
            "webhooksRequeued": 0, "failed": 0})
    );
    assert_eq!(w.connections("alice").await, list);
    assert_eq!(w.inbox("alice").await.len(), inbox.len());
    assert_eq!(w.consent_creations("lt-alpha").await, 4);

    w.stop().await;
}
