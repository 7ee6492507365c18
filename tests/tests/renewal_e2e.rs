//! The consent renewal job end to end: the deployed functions (template.yaml) in the local
//! runtime, local AWS and the sandbox bank. Two runs of the schedule fired at the same time
//! create one renewal at the bank and one notification; the renewal, once authorised,
//! supersedes the old connection.

use std::path::Path;
use std::time::Duration;

use infra::local_runtime::jwt;
use infra::sandbox::SandboxConfig;
use integration_tests::{Runtime, Sandbox};
use serde_json::{Value, json};

const SECRET: &str = "renewal-e2e-secret";
const APP: &str = "http://127.0.0.1:3000/app/connected";
const SCHEDULE: &str = "ConsentRenewalFunction.Daily";
const CONSENT_CREATIONS: &str = "lt-alpha POST /v1/consents";

struct World {
    rt: Runtime,
    sandbox: Sandbox,
    http: reqwest::Client,
}

impl World {
    async fn start() -> World {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sandbox = Sandbox::start(SandboxConfig::default()).await;
        let rt = Runtime::start(
            &root.join("template.yaml"),
            SECRET,
            &[
                (
                    "BANK_REGISTRY_PATH",
                    root.join("infra/banks.json").display().to_string(),
                ),
                ("SANDBOX_BANK_URL", sandbox.handle.base_url.clone()),
            ],
        )
        .await;
        World {
            rt,
            sandbox,
            // Redirects are looked at, not followed.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    async fn call(
        &self,
        user: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let token = jwt::issue(SECRET, user, Duration::from_secs(600), None);
        let mut request = self
            .http
            .request(method, self.rt.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `user` links `bank` for `days` days and approves it at the bank.
    async fn linked(&self, user: &str, bank: &str, days: u32) -> String {
        let body = json!({"bankId": bank, "validDays": days, "redirectUrl": APP}).to_string();
        let (status, created) = self
            .call(user, reqwest::Method::POST, "/v1/connections", Some(&body))
            .await;
        assert_eq!(status, 201, "{created}");
        let callback = self.decide(&created, "approve").await;
        let (status, location) = self.follow(&callback).await;
        assert_eq!(status, 302);
        assert!(location.unwrap().contains("status=valid"));
        created["connectionId"].as_str().unwrap().to_owned()
    }

    /// Approves or denies at the bank; returns where the bank sends the browser (our callback).
    async fn decide(&self, connection: &Value, decision: &str) -> String {
        let auth_url = connection["authUrl"].as_str().unwrap();
        let bank_consent = auth_url.rsplit('/').next().unwrap();
        let bank = connection["bankId"].as_str().unwrap();
        let answer = self
            .sandbox
            .decide(bank, "consents", bank_consent, decision)
            .await;
        answer["redirect"].as_str().unwrap().to_owned()
    }

    /// Follows the bank's redirect to our callback; returns (status, Location).
    async fn follow(&self, callback: &str) -> (u16, Option<String>) {
        let response = self.http.get(callback).send().await.unwrap();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (response.status().as_u16(), location)
    }

    /// Runs the renewal schedule now; returns the run's report.
    async fn fire(&self) -> Value {
        let response = self
            .http
            .post(self.rt.url(&format!("/__local/schedules/{SCHEDULE}/fire")))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{answer}");
        answer["result"].clone()
    }

    async fn connections(&self, user: &str) -> Vec<Value> {
        let (status, list) = self
            .call(user, reqwest::Method::GET, "/v1/connections", None)
            .await;
        assert_eq!(status, 200, "{list}");
        list["connections"].as_array().unwrap().clone()
    }

    async fn connection(&self, user: &str, id: &str) -> Value {
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

    async fn inbox(&self, user: &str, kind: &str) -> Vec<Value> {
        let (status, inbox) = self
            .call(user, reqwest::Method::GET, "/v1/notifications", None)
            .await;
        assert_eq!(status, 200, "{inbox}");
        inbox["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == kind)
            .cloned()
            .collect()
    }

    async fn consent_creations(&self) -> u64 {
        let counts = self.sandbox.get_json("counts").await;
        counts["byOperation"][CONSENT_CREATIONS]
            .as_u64()
            .unwrap_or(0)
    }
}

#[tokio::test]
async fn two_concurrent_runs_renew_once_and_the_renewal_supersedes() {
    let w = World::start().await;

    let due = w.linked("alice", "lt-alpha", 6).await;
    let later = w.linked("alice", "lt-alpha", 90).await;
    let later_before = w.connection("alice", &later).await;
    let created_before = w.consent_creations().await;
    assert_eq!(created_before, 2);

    // Two runs of the schedule at the same time (as EventBridge may deliver).
    let (a, b) = tokio::join!(w.fire(), w.fire());
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
    let notes = w.inbox("alice", "consent.renewal_required").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["data"]["connectionId"], due.as_str());
    assert_eq!(notes[0]["data"]["newConnectionId"], renewal_id.as_str());
    assert_eq!(notes[0]["data"]["authUrl"], renewal["authUrl"]);
    assert_eq!(w.consent_creations().await, created_before + 1);

    // Firing again changes nothing.
    let again = w.fire().await;
    assert_eq!(
        again,
        json!({"considered": 0, "started": 0, "resumed": 0, "skippedBusy": 0, "failed": 0})
    );
    assert_eq!(w.connections("alice").await, list);
    assert_eq!(w.inbox("alice", "consent.renewal_required").await.len(), 1);
    assert_eq!(w.consent_creations().await, created_before + 1);

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
    let last = w.fire().await;
    assert_eq!(last["considered"], 0, "{last}");
    assert_eq!(w.consent_creations().await, created_before + 1);

    w.rt.stop().await;
}
