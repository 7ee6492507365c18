//! The consent renewal job end to end: the deployed functions (template.yaml) in the local
//! runtime, local AWS and the sandbox bank. Two runs of the schedule fired at the same time
//! create one renewal at the bank and one notification; the renewal, once authorised,
//! supersedes the old connection.

use integration_tests::Bundle;
use serde_json::{Value, json};

const SECRET: &str = "renewal-e2e-secret";
const APP: &str = "http://127.0.0.1:3000/app/connected";
const SCHEDULE: &str = "ConsentRenewalFunction.Daily";

/// `user` links `bank` for `days` days and approves it at the bank.
async fn linked(w: &Bundle, user: &str, bank: &str, days: u32) -> String {
    let body = json!({"bankId": bank, "validDays": days, "redirectUrl": APP});
    let created = w.connect(user, body).await;
    let callback = w.decide(&created, "approve").await;
    let (status, location) = w.follow(&callback).await;
    assert_eq!(status, 302);
    assert!(location.unwrap().contains("status=valid"));
    created["connectionId"].as_str().unwrap().to_owned()
}

/// `user`'s notifications of `kind`.
async fn inbox(w: &Bundle, user: &str, kind: &str) -> Vec<Value> {
    let all = w.inbox(user).await;
    all.into_iter().filter(|n| n["kind"] == kind).collect()
}

#[tokio::test]
async fn two_concurrent_runs_renew_once_and_the_renewal_supersedes() {
    let w = Bundle::start(SECRET, &[]).await;

    let due = linked(&w, "alice", "lt-alpha", 6).await;
    let later = linked(&w, "alice", "lt-alpha", 90).await;
    let later_before = w.connection("alice", &later).await;
    let created_before = w.consent_creations("lt-alpha").await;
    assert_eq!(created_before, 2);

    // Two runs of the schedule at the same time (as EventBridge may deliver).
    let (a, b) = tokio::join!(w.fire(SCHEDULE, None), w.fire(SCHEDULE, None));
    for report in [&a, &b] {
        assert_eq!(report["failed"], 0, "{a} {b}");
        assert!(report["considered"].as_u64().unwrap() <= 1, "{a} {b}");
    }
    let started = a["started"].as_u64().unwrap() + b["started"].as_u64().unwrap();
    assert_eq!(started, 1, "exactly one run started the renewal: {a} {b}");

    // Exactly one new pending connection, linked to the due one.
    let list = w.connections("alice").await;
    assert_eq!(list.len(), 3, "{list:?}");
    let pending: Vec<&Value> = list
        .iter()
        .filter(|c| c["status"] == "pending_authorization")
        .collect();
    assert_eq!(pending.len(), 1, "{list:?}");
    let renewal = pending[0].clone();
    let renewal_id = renewal["connectionId"].as_str().unwrap().to_owned();
    assert_eq!(renewal["bankId"], "lt-alpha");
    assert!(
        renewal["authUrl"]
            .as_str()
            .unwrap()
            .starts_with(&w.sandbox.handle.base_url),
        "{renewal}"
    );
    let old = list
        .iter()
        .find(|c| c["connectionId"] == due.as_str())
        .unwrap();
    assert_eq!(old["status"], "valid");
    assert_eq!(
        old["renewal"],
        json!({"state": "pending", "connectionId": renewal_id})
    );

    // One notification, with the new link; one more consent created at the bank.
    let notes = inbox(&w, "alice", "consent.renewal_required").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["data"]["connectionId"], due.as_str());
    assert_eq!(notes[0]["data"]["newConnectionId"], renewal_id.as_str());
    assert_eq!(notes[0]["data"]["authUrl"], renewal["authUrl"]);
    assert_eq!(w.consent_creations("lt-alpha").await, created_before + 1);

    // Firing again changes nothing.
    let again = w.fire(SCHEDULE, None).await;
    assert_eq!(
        again,
        json!({"considered": 0, "started": 0, "resumed": 0, "skippedBusy": 0, "failed": 0})
    );
    assert_eq!(w.connections("alice").await, list);
    assert_eq!(
        inbox(&w, "alice", "consent.renewal_required").await.len(),
        1
    );
    assert_eq!(w.consent_creations("lt-alpha").await, created_before + 1);

    // The 90-day connection is untouched.
    let later_after = w.connection("alice", &later).await;
    assert_eq!(later_after["status"], "valid");
    assert_eq!(later_after["renewal"], json!({"state": "none"}));
    assert_eq!(later_after["validUntil"], later_before["validUntil"]);

    // The user approves the renewal at the bank and is sent to our callback: the renewal
    // becomes valid and the old connection superseded.
    let callback = w.decide(&renewal, "approve").await;
    assert!(
        callback.starts_with(&w.rt.url("/v1/callbacks/sca?state=")),
        "{callback}"
    );
    let (status, _) = w.follow(&callback).await;
    assert_eq!(status, 200, "no redirectUrl for a renewal: a page");
    let renewed = w.connection("alice", &renewal_id).await;
    assert_eq!(renewed["status"], "valid");
    let superseded = w.connection("alice", &due).await;
    assert_eq!(superseded["status"], "superseded");
    assert_eq!(
        superseded["renewal"],
        json!({"state": "superseded", "connectionId": renewal_id})
    );
    assert_eq!(w.connection("alice", &later).await["status"], "valid");

    // Still no second renewal: the superseded one is out of the job's reach.
    let last = w.fire(SCHEDULE, None).await;
    assert_eq!(last["considered"], 0, "{last}");
    assert_eq!(w.consent_creations("lt-alpha").await, created_before + 1);

    w.stop().await;
}
