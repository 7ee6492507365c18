//! Log hygiene: a representative flow through the deployed functions (template.yaml) in
//! the local runtime, with every log line captured — the runtime's own (and the in-process
//! sandbox bank's) through a `tracing` subscriber installed here before the bundle starts,
//! and every line each function process writes to stdout/stderr, which the runtime
//! re-emits as `function log` / `function output` events. No line may contain a full IBAN
//! of the flow, a bearer token (or anything JWT-shaped), an SCA `state`, or a secret.
//!
//! The checker is the same one the self-tests feed with lines that must be flagged.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use integration_tests::Bundle;
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "log-hygiene-jwt-secret-0123456789";
const WEBHOOK_SECRET: &str = "log-hygiene-webhook-signing-secret-0123456789";
const APP: &str = "http://127.0.0.1:3000/app/done";
const USER: &str = "alice-logs";

// ---------------------------------------------------------------------------------------
// Capture

/// Everything every subscriber writer wrote, shared by all writers.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs the capturing subscriber once for this test binary (before `Bundle::start`,
/// whose own `try_init` then does nothing), at `debug` so that the runtime's debug lines
/// (e.g. the authorizer's refusals) are checked too.
fn capture() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
            .with_writer(captured.clone())
            .init();
        captured
    })
}

/// One log line to check: where it came from and its text.
struct Line {
    source: String,
    text: String,
}

/// The captured lines: each subscriber line, and each function line carried in it (the
/// `log`/`line` field, unescaped), as its own line.
fn lines(captured: &Captured) -> Vec<Line> {
    let bytes = captured.0.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let mut out = Vec::new();
    for raw in text.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
        let fields = &parsed["fields"];
        let function = fields["function"].as_str().unwrap_or("-").to_owned();
        for field in ["log", "line"] {
            if let Some(inner) = fields[field].as_str() {
                out.push(Line {
                    source: format!("function {function}"),
                    text: inner.to_owned(),
                });
            }
        }
        out.push(Line {
            source: parsed["target"].as_str().unwrap_or("?").to_owned(),
            text: raw.to_owned(),
        });
    }
    out
}

// ---------------------------------------------------------------------------------------
// Checker

/// What must never be logged.
#[derive(Default)]
struct Forbidden {
    /// (what it is, the exact text)
    needles: Vec<(String, String)>,
    jwt: Option<regex::Regex>,
}

impl Forbidden {
    fn new() -> Forbidden {
        Forbidden {
            needles: Vec::new(),
            jwt: Some(
                regex::Regex::new(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
                    .unwrap(),
            ),
        }
    }

    fn add(&mut self, what: impl Into<String>, value: &str) {
        let what = what.into();
        if value.len() >= 8 && !self.needles.iter().any(|(_, v)| v == value) {
            self.needles.push((what, value.to_owned()));
        }
    }

    /// A full IBAN, in its electronic and its grouped print form (lower case too).
    fn add_iban(&mut self, iban: &str) {
        let iban: String = iban.chars().filter(|c| !c.is_whitespace()).collect();
        let grouped = iban
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        self.add(format!("IBAN {iban}"), &iban);
        self.add(format!("IBAN {iban} (print form)"), &grouped);
        self.add(format!("IBAN {iban} (lower case)"), &iban.to_lowercase());
    }

    /// A token, the `Bearer` header value and its signature on its own.
    fn add_token(&mut self, what: &str, token: &str) {
        self.add(what, token);
        if let Some(signature) = token.rsplit('.').next() {
            self.add(format!("{what} (signature)"), signature);
        }
    }

    /// Why `line` must not be logged (empty: it may).
    fn findings(&self, line: &str) -> Vec<String> {
        let mut found: Vec<String> = self
            .needles
            .iter()
            .filter(|(_, v)| line.contains(v.as_str()))
            .map(|(what, _)| what.clone())
            .collect();
        if let Some(jwt) = &self.jwt
            && let Some(m) = jwt.find(line)
        {
            found.push(format!("a JWT ({}…)", &m.as_str()[..12]));
        }
        found
    }
}

#[test]
fn the_checker_flags_what_it_must_and_passes_masked_forms() {
    let mut f = Forbidden::new();
    f.add_iban("LT121000011101001000");
    f.add("SCA state", "c3RhdGUtdG9rZW4tdmFsdWU");
    let token =
        infra::local_runtime::jwt::issue("k", "u", Duration::from_secs(60), None).to_string();
    f.add_token("bearer token", &token);
    for line in [
        r#"{"msg":"payment","debtor":"LT121000011101001000"}"#,
        r#"{"msg":"payment","debtor":"LT12 1000 0111 0100 1000"}"#,
        r#"{"url":"/v1/callbacks/sca?state=c3RhdGUtdG9rZW4tdmFsdWU"}"#,
        &format!(r#"{{"authorization":"Bearer {token}"}}"#),
        // Any JWT, not only the ones the test knows.
        &format!(
            r#"{{"t":"{}"}}"#,
            infra::local_runtime::jwt::issue("x", "y", Duration::from_secs(9), None)
        ),
    ] {
        assert!(!f.findings(line).is_empty(), "not flagged: {line}");
    }
    for line in [
        r#"{"msg":"payment","debtor":"LT12 **** **** 1000"}"#,
        r#"{"msg":"consent created","consent":"cons-1234****"}"#,
        r#"{"fields":{"message":"http api request","status":200}}"#,
    ] {
        assert!(f.findings(line).is_empty(), "flagged: {line}");
    }
}

// ---------------------------------------------------------------------------------------
// The flow

/// Calls the API with a fixed bearer token (so the test knows every token it used).
async fn call(
    w: &Bundle,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = w.http.request(method, w.rt.url(path)).bearer_auth(token);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The `state` query value of a callback URL, raw (as sent) and decoded.
fn states(callback: &str) -> Vec<String> {
    let raw = callback
        .split_once("state=")
        .map(|(_, rest)| rest.split('&').next().unwrap().to_owned())
        .expect("a state");
    let url = url::Url::parse(callback).unwrap();
    let decoded = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    vec![raw, decoded]
}

/// Every IBAN the sandbox holds for the (default) PSU at `bank`: its accounts' and the
/// counterparties' of every transaction, read from the bank directly with a consent of
/// the test's own.
async fn sandbox_ibans(w: &Bundle, bank: &str) -> BTreeSet<String> {
    let http = reqwest::Client::new();
    let base = &w.sandbox.handle.base_url;
    let headers = |req: reqwest::RequestBuilder| {
        req.header("X-Request-ID", uuid::Uuid::new_v4().to_string())
            .header("PSU-IP-Address", "192.0.2.10")
    };
    let until = (chrono::Utc::now().date_naive() + chrono::Days::new(30)).to_string();
    let created: Value = headers(http.post(format!("{base}/{bank}/v1/consents")))
        .header("TPP-Redirect-URI", "https://tpp.example/cb")
        .json(&json!({
            "access": {"allPsd2": "allAccounts"},
            "recurringIndicator": true,
            "validUntil": until,
            "frequencyPerDay": 4,
            "combinedServiceIndicator": false
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let consent = created["consentId"].as_str().unwrap().to_owned();
    w.sandbox
        .decide(bank, "consents", &consent, "approve")
        .await;
    let get = |path: String| {
        let req = headers(http.get(format!("{base}{path}"))).header("Consent-ID", &consent);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let mut ibans = BTreeSet::new();
    let accounts = get(format!("/{bank}/v1/accounts")).await;
    let from = (chrono::Utc::now().date_naive() - chrono::Days::new(400)).to_string();
    for account in accounts["accounts"].as_array().unwrap() {
        ibans.insert(account["iban"].as_str().unwrap().to_owned());
        let id = account["resourceId"].as_str().unwrap();
        let mut next = Some(format!(
            "/{bank}/v1/accounts/{id}/transactions?bookingStatus=both&dateFrom={from}"
        ));
        while let Some(path) = next {
            let page = get(path).await;
            for kind in ["booked", "pending"] {
                for t in page["transactions"][kind].as_array().into_iter().flatten() {
                    for side in ["debtorAccount", "creditorAccount"] {
                        if let Some(iban) = t[side]["iban"].as_str() {
                            ibans.insert(iban.to_owned());
                        }
                    }
                }
            }
            next = page["transactions"]["_links"]["next"]["href"]
                .as_str()
                .map(str::to_owned);
        }
    }
    ibans
}

/// A webhook receiver that answers 204 and counts what it got.
async fn webhook_receiver() -> (String, Arc<Mutex<usize>>) {
    let got = Arc::new(Mutex::new(0usize));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = got.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                *counter.lock().unwrap() += 1;
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hooks"), got)
}

#[tokio::test]
async fn no_log_line_of_a_full_flow_holds_an_iban_a_token_a_state_or_a_secret() {
    let captured = capture();
    let (hook_url, hooks) = webhook_receiver().await;
    let w = Bundle::start(
        SECRET,
        &[
            ("PAYMENT_POLL_SCHEDULE", "1:120".to_owned()),
            ("WEBHOOK_URL", hook_url),
            ("WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ],
    )
    .await;
    let mut forbidden = Forbidden::new();
    forbidden.add("JWT secret", SECRET);
    forbidden.add("webhook secret", WEBHOOK_SECRET);
    for (name, value) in infra::local_runtime::app::local_parameters() {
        if name.ends_with("Secret") {
            forbidden.add(format!("template parameter {name}"), &value);
        }
    }
    let token = w.token(USER);
    let other_token = w.token("bob-logs");
    forbidden.add_token("alice's bearer token", &token);
    forbidden.add_token("bob's bearer token", &other_token);

    // Link two banks (approved), a third denied: callbacks with their states.
    let mut connections = Vec::new();
    for (bank, decision) in [
        ("lt-alpha", "approve"),
        ("lv-baltija", "approve"),
        ("ee-pohja", "deny"),
    ] {
        let (status, created) = call(
            &w,
            &token,
            Method::POST,
            "/v1/connections",
            Some(&json!({"bankId": bank, "validDays": 90, "redirectUrl": APP})),
            &[],
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let callback = w.decide(&created, decision).await;
        for state in states(&callback) {
            forbidden.add(format!("SCA state of {bank}"), &state);
        }
        let (status, _) = w.follow(&callback).await;
        assert_eq!(status, 302);
        // A replayed state is refused (and must not be logged either).
        assert_eq!(w.follow(&callback).await.0, 409);
        connections.push(created["connectionId"].as_str().unwrap().to_owned());
    }
    // Refused tokens go through the authorizer's log too.
    let past = chrono::Utc::now().timestamp() - 3600;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": USER, "iss": "local", "iat": past - 600, "exp": past}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let foreign =
        infra::local_runtime::jwt::issue("another-key", USER, Duration::from_secs(60), None);
    forbidden.add_token("a refused token", &foreign);
    forbidden.add_token("an expired token", &expired);
    for bad in [&foreign, &expired] {
        let (status, _) = call(&w, bad, Method::GET, "/v1/connections", None, &[]).await;
        assert_eq!(status, 401);
    }
    let (status, _) = call(&w, &other_token, Method::GET, "/v1/connections", None, &[]).await;
    assert_eq!(status, 200);

    // Aggregated reads, fresh from the banks and from snapshots; every transaction page.
    for path in [
        "/v1/accounts?refresh=true",
        "/v1/accounts",
        "/v1/balances?baseCurrency=EUR&refresh=true",
        "/v1/balances?baseCurrency=USD",
        "/v1/insights/spending?baseCurrency=EUR",
    ] {
        let (status, answer) = call(&w, &token, Method::GET, path, None, &[]).await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert!(answer["errors"].as_array().unwrap().is_empty(), "{answer}");
    }
    let from = (chrono::Utc::now().date_naive() - chrono::Days::new(90)).to_string();
    let mut cursor: Option<String> = None;
    let mut transactions = 0;
    loop {
        let mut path = format!("/v1/transactions?dateFrom={from}&limit=100&refresh=true");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = call(&w, &token, Method::GET, &path, None, &[]).await;
        assert_eq!(status, 200, "{page}");
        transactions += page["transactions"].as_array().unwrap().len();
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(transactions > 50, "{transactions}");

    // The IBANs that appeared: the banks' own view of the accounts and counterparties.
    let mut ibans = BTreeSet::new();
    for bank in ["lt-alpha", "lv-baltija"] {
        ibans.extend(sandbox_ibans(&w, bank).await);
    }
    let debtor = ibans
        .iter()
        .find(|i| i.starts_with("LT"))
        .expect("an lt-alpha account")
        .clone();
    let creditor = "DE89370400440532013000".to_owned();
    ibans.insert(creditor.clone());
    ibans.insert(infra::sandbox::REJECTED_CREDITOR_IBAN.to_owned());

    // Payments with an Idempotency-Key: approved at SCA to ACSC (and replayed), and one
    // the bank rejects.
    let mut finals = Vec::new();
    for (key, creditor_iban) in [
        ("hygiene-pay-1", creditor.as_str()),
        ("hygiene-pay-2", infra::sandbox::REJECTED_CREDITOR_IBAN),
    ] {
        let body = json!({
            "bankId": "lt-alpha",
            "debtorAccount": {"iban": debtor},
            "instructedAmount": {"amount": "12.30", "currency": "EUR"},
            "creditorAccount": {"iban": creditor_iban},
            "creditorName": "Ona Onaite",
            "remittanceInformationUnstructured": "Invoice 2026-117",
            "redirectUrl": APP
        });
        let headers = [("idempotency-key", key)];
        let (status, created) = call(
            &w,
            &token,
            Method::POST,
            "/v1/payments",
            Some(&body),
            &headers,
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let (status, replay) = call(
            &w,
            &token,
            Method::POST,
            "/v1/payments",
            Some(&body),
            &headers,
        )
        .await;
        assert_eq!((status, &replay["paymentId"]), (201, &created["paymentId"]));
        let bank_payment = created["authUrl"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        let answer = w
            .sandbox
            .decide("lt-alpha", "payments", bank_payment, "approve")
            .await;
        let callback = answer["redirect"].as_str().unwrap().to_owned();
        for state in states(&callback) {
            forbidden.add("SCA state of a payment", &state);
        }
        assert_eq!(w.follow(&callback).await.0, 302);
        finals.push(created["paymentId"].as_str().unwrap().to_owned());
    }
    for (id, expected) in finals.iter().zip(["ACSC", "RJCT"]) {
        let started = Instant::now();
        loop {
            let (status, p) = call(
                &w,
                &token,
                Method::GET,
                &format!("/v1/payments/{id}"),
                None,
                &[],
            )
            .await;
            assert_eq!(status, 200, "{p}");
            if p["final"] == true {
                assert_eq!(p["status"], *expected, "{p}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(90), "{p}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let (status, _) = call(&w, &token, Method::GET, "/v1/payments", None, &[]).await;
    assert_eq!(status, 200);

    // Revoke one bank; the inbox; the webhooks of it all.
    let (status, _) = call(
        &w,
        &token,
        Method::DELETE,
        &format!("/v1/connections/{}", connections[1]),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 204);
    let (status, inbox) = call(&w, &token, Method::GET, "/v1/notifications", None, &[]).await;
    assert_eq!(status, 200);
    let kinds: BTreeSet<&str> = inbox["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "consent.valid",
        "consent.rejected",
        "consent.terminated_by_tpp",
        "payment.completed",
        "payment.rejected",
    ] {
        assert!(kinds.contains(kind), "{kinds:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while *hooks.lock().unwrap() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(*hooks.lock().unwrap() >= 3, "webhooks were sent");

    // Stop: the functions' last lines are pumped before the processes end.
    w.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for iban in &ibans {
        forbidden.add_iban(iban);
    }
    let lines = lines(captured);

    // Self-test with the real needles: a function line carrying a full IBAN is flagged.
    let planted =
        format!(r#"{{"level":"INFO","fields":{{"message":"payment","debtor":"{debtor}"}}}}"#);
    assert!(
        !forbidden.findings(&planted).is_empty(),
        "the checker missed a planted IBAN"
    );
    assert!(
        forbidden.findings(&debtor_masked(&debtor)).is_empty(),
        "the masked form is fine"
    );

    // ... and one that went the whole way: a function line carried in the runtime's
    // `function log` event, read back through the same capture and unescaping.
    let canary = Captured::default();
    let inner = json!({"level": "INFO", "message": "payment", "debtor": debtor}).to_string();
    let outer = json!({
        "target": "infra::local_runtime::lambda",
        "fields": {"message": "function log", "function": "Canary", "log": inner},
    });
    canary
        .0
        .lock()
        .unwrap()
        .extend(format!("{outer}\n").as_bytes());
    let canary_lines = self::lines(&canary);
    assert!(
        canary_lines
            .iter()
            .any(|l| l.source == "function Canary" && !forbidden.findings(&l.text).is_empty()),
        "the capture pipeline hides a function's IBAN"
    );
    // The capture holds what the functions wrote (their ids of this flow).
    assert!(
        lines
            .iter()
            .any(|l| l.source.starts_with("function ") && l.text.contains(&connections[0])),
        "the functions' lines of this flow were captured"
    );

    let function_lines = lines
        .iter()
        .filter(|l| l.source.starts_with("function "))
        .count();
    let functions: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.source.strip_prefix("function "))
        .collect();
    assert!(
        function_lines >= 30 && functions.len() >= 6,
        "function logs were captured: {function_lines} lines from {functions:?}"
    );
    // Every checked line, for a look after the run.
    let dump = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("log-hygiene-lines.txt");
    let listing: String = lines
        .iter()
        .map(|l| format!("[{}] {}\n", l.source, l.text))
        .collect();
    std::fs::write(&dump, listing).unwrap();
    println!("checked lines: {}", dump.display());
    let mut leaks = Vec::new();
    for line in &lines {
        let found = forbidden.findings(&line.text);
        if !found.is_empty() {
            leaks.push(format!("[{}] {found:?}: {}", line.source, line.text));
        }
    }
    println!(
        "log hygiene: {} lines checked ({} from {} functions, {} from the runtime and the sandbox) against {} forbidden values ({} IBANs)",
        lines.len(),
        function_lines,
        functions.len(),
        lines.len() - function_lines,
        forbidden.needles.len(),
        ibans.len()
    );
    assert!(
        leaks.is_empty(),
        "{} log lines leak:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

/// `LT12 **** **** 1000`.
fn debtor_masked(iban: &str) -> String {
    format!("{} **** **** {}", &iban[..4], &iban[iban.len() - 4..])
}
