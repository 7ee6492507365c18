//! Isolation matrix: every public route of docs/openapi.yaml, called the ways an attacker
//! would. Each route has one [`Case`] below; a route without a case (or a case without a
//! route) fails [`every_openapi_route_has_exactly_one_case`], so a new route cannot be
//! added without saying how it is isolated.
//!
//! Against the deployed functions (template.yaml) in the local runtime, local AWS and the
//! sandbox bank:
//! - every route that needs a token refuses a missing, expired, foreign-issuer,
//!   foreign-key, `alg: none`, HS512 and malformed token with a 401, and nothing reaches
//!   a bank;
//! - every route with a path id answers another user 404 (the same answer as an unknown
//!   id), and the owner's resource is unchanged (same state here, no call at the bank);
//! - no list or aggregated read of one user contains the other user's ids, even when the
//!   other user's account id or cursor is passed in;
//! - public routes answer without a token.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use integration_tests::Bundle;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "isolation-matrix-secret";
const APP: &str = "http://127.0.0.1:3000/app/done";
const A: &str = "alice-iso";
const B: &str = "bob-iso";

/// How to call one route. `call` and `body` may name the owner's resources: `{conn}`
/// (A's lt-alpha connection), `{pay}` (A's payment) and `{batch}` (A's payment batch).
struct Case {
    method: &'static str,
    /// The path exactly as in docs/openapi.yaml.
    route: &'static str,
    call: &'static str,
    body: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    /// What B (a valid token that does not own `{conn}`/`{pay}`) gets; for public routes
    /// what a caller without a token gets.
    expect: u16,
}

const LINK: &str =
    r#"{"bankId":"lt-alpha","validDays":90,"redirectUrl":"http://127.0.0.1:3000/app/done"}"#;
const PAY: &str = r#"{"bankId":"lt-alpha","debtorAccount":{"iban":"LT121000011101001000"},"instructedAmount":{"amount":"7.50","currency":"EUR"},"creditorAccount":{"iban":"DE89370400440532013000"},"creditorName":"Ona Onaite","redirectUrl":"http://127.0.0.1:3000/app/done"}"#;

const BATCH: &str = r#"{"bankId":"lt-alpha","debtorAccount":{"iban":"LT121000011101001000"},"payments":[{"instructedAmount":{"amount":"3.00","currency":"EUR"},"creditorAccount":{"iban":"DE89370400440532013000"},"creditorName":"Ona Onaite"}]}"#;

const CASES: &[Case] = &[
    Case {
        method: "POST",
        route: "/v1/payment-batches",
        call: "/v1/payment-batches",
        body: Some(BATCH),
        headers: &[("idempotency-key", "iso-matrix-batch-b")],
        expect: 202,
    },
    Case {
        method: "GET",
        route: "/v1/payment-batches/{id}",
        call: "/v1/payment-batches/{batch}",
        body: None,
        headers: &[],
        expect: 404,
    },
    Case {
        method: "GET",
        route: "/healthz",
        call: "/healthz",
        body: None,
        headers: &[],
        expect: 200,
    },
    Case {
        method: "GET",
        route: "/v1/banks",
        call: "/v1/banks",
        body: None,
        headers: &[],
        expect: 200,
    },
    Case {
        method: "GET",
        route: "/v1/callbacks/sca",
        call: "/v1/callbacks/sca?state=not-a-state",
        body: None,
        headers: &[],
        expect: 400,
    },
    Case {
        method: "GET",
        route: "/v1/notifications",
        call: "/v1/notifications",
        body: None,
        headers: &[],
        expect: 200,
    },
    Case {
        method: "POST",
        route: "/v1/connections",
        call: "/v1/connections",
        body: Some(LINK),
        headers: &[],
        expect: 201,
    },
    Case {
        method: "GET",
        route: "/v1/connections",
        call: "/v1/connections",
        body: None,
        headers: &[],
        expect: 200,
    },
    Case {
        method: "GET",
        route: "/v1/connections/{id}",
        call: "/v1/connections/{conn}",
        body: None,
        headers: &[],
        expect: 404,
    },
    Case {
        method: "DELETE",
        route: "/v1/connections/{id}",
        call: "/v1/connections/{conn}",
        body: None,
        headers: &[],
        expect: 404,
    },
    Case {
        method: "POST",
        route: "/v1/connections/{id}/renew",
        call: "/v1/connections/{conn}/renew",
        body: None,
        headers: &[],
        expect: 404,
    },
    Case {
        method: "GET",
        route: "/v1/accounts",
        call: "/v1/accounts",
        body: None,
        headers: &[],
        expect: 200,
    },
    Case {
        method: "GET",
        route: "/v1/balances",
        call: "/v1/balances?baseCurrency=EUR",
        body: None,
        headers: &[],
        expect: 200,
    },
    Case {
        method: "GET",
        route: "/v1/transactions",
        call: "/v1/transactions?limit=500",
        body: None,
        headers: &[],
        expect: 200,
    },
    Case {
        method: "GET",
        route: "/v1/insights/spending",
        call: "/v1/insights/spending?baseCurrency=EUR",
        body: None,
        headers: &[],
        expect: 200,
    },
    Case {
        method: "POST",
        route: "/v1/payments",
        call: "/v1/payments",
        body: Some(PAY),
        headers: &[("idempotency-key", "iso-matrix-b")],
        expect: 201,
    },
    Case {
        method: "GET",
        route: "/v1/payments",
        call: "/v1/payments",
        body: None,
        headers: &[],
        expect: 200,
    },
    Case {
        method: "GET",
        route: "/v1/payments/{id}",
        call: "/v1/payments/{pay}",
        body: None,
        headers: &[],
        expect: 404,
    },
];

/// (METHOD, path) → needs a token, for every operation of docs/openapi.yaml.
fn openapi_routes() -> Vec<(String, String, bool)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let global = doc["security"].as_sequence().is_some_and(|s| !s.is_empty());
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        for (method, op) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if !["get", "put", "post", "delete", "patch", "head", "options"].contains(&method) {
                continue;
            }
            let secured = match op.get("security") {
                Some(s) => s.as_sequence().is_some_and(|s| !s.is_empty()),
                None => global,
            };
            routes.push((
                method.to_uppercase(),
                path.as_str().unwrap().to_owned(),
                secured,
            ));
        }
    }
    routes
}

/// Fails naming the routes without a case and the cases without a route.
fn assert_cases_cover_openapi() -> Vec<(String, String, bool)> {
    let routes = openapi_routes();
    let documented: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    let mut cased = BTreeSet::new();
    for c in CASES {
        assert!(
            cased.insert((c.method.to_owned(), c.route.to_owned())),
            "two cases for {} {}",
            c.method,
            c.route
        );
        assert!(
            c.call.split('?').next().unwrap().split('/').count() == c.route.split('/').count(),
            "{} {}: the call {} does not have the route's shape",
            c.method,
            c.route,
            c.call
        );
    }
    let missing: Vec<_> = documented.difference(&cased).collect();
    let stale: Vec<_> = cased.difference(&documented).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/openapi.yaml routes without an isolation case: {missing:?}; cases naming no route: {stale:?}"
    );
    routes
}

#[test]
fn every_openapi_route_has_exactly_one_case() {
    let routes = assert_cases_cover_openapi();
    assert!(routes.len() >= 16, "{routes:?}");
    // The routes with a path id are the ones the cross-user check exercises.
    assert!(
        CASES
            .iter()
            .filter(|c| c.route.contains('{'))
            .all(|c| c.expect == 404)
    );
}

fn find(method: &str, route: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.method == method && c.route == route)
        .unwrap()
}

/// A's ids that the cases' calls name.
struct Ids {
    conn: String,
    pay: String,
    batch: String,
}

fn fill(template: &str, ids: &Ids) -> String {
    template
        .replace("{conn}", &ids.conn)
        .replace("{pay}", &ids.pay)
        .replace("{batch}", &ids.batch)
}

struct Answer {
    status: u16,
    content_type: String,
    www_authenticate: Option<String>,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// Sends `case` with `authorization` as the Authorization header (none if `None`).
async fn send(w: &Bundle, case: &Case, ids: &Ids, authorization: Option<&str>) -> Answer {
    let method = Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut request = w.http.request(method, w.rt.url(&fill(case.call, ids)));
    if let Some(auth) = authorization {
        request = request.header("authorization", auth);
    }
    for (k, v) in case.headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = case.body {
        request = request
            .header("content-type", "application/json")
            .body(fill(body, ids));
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    let content_type = header("content-type").unwrap_or_default();
    let www_authenticate = header("www-authenticate");
    Answer {
        status: response.status().as_u16(),
        content_type,
        www_authenticate,
        text: response.text().await.unwrap(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(claims: &Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Authorization headers that must all be refused, each with its name. All of them name
/// A (the owner) as the subject.
fn bad_authorizations() -> Vec<(&'static str, Option<String>)> {
    let t = now();
    let claims = |iss: &str, exp: u64| json!({"sub": A, "iss": iss, "iat": t - 3600, "exp": exp, "scope": "openbank"});
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let valid_claims = claims("local", t + 600);
    vec![
        ("no token", None),
        (
            "expired",
            Some(sign(&claims("local", t - 120), SECRET, Algorithm::HS256)),
        ),
        (
            "another issuer",
            Some(sign(
                &claims("https://issuer.example", t + 600),
                SECRET,
                Algorithm::HS256,
            )),
        ),
        (
            "another key",
            Some(infra::local_runtime::jwt::issue(
                "some-other-signing-key",
                A,
                Duration::from_secs(600),
                None,
            )),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&valid_claims)
            )),
        ),
        (
            "HS512 with the right key",
            Some(sign(&valid_claims, SECRET, Algorithm::HS512)),
        ),
        ("malformed", Some("not.a-jwt".to_owned())),
    ]
    .into_iter()
    .map(|(name, token)| (name, token.map(|t| format!("Bearer {t}"))))
    .collect()
}

/// A 401 that tells nothing: RFC 9457 problem+json with status 401, or API Gateway's own
/// fixed authorizer answer (`{"message":"Unauthorized"}`, `WWW-Authenticate: Bearer`),
/// which is what an HTTP API JWT authorizer sends in AWS and the local runtime mimics.
fn assert_unauthorized(what: &str, answer: &Answer, authorization: Option<&str>) {
    assert_eq!(answer.status, 401, "{what}: {}", answer.text);
    if answer.text.is_empty() {
        return;
    }
    if answer.content_type.starts_with("application/problem+json") {
        let problem = answer.json();
        assert_eq!(problem["status"], 401, "{what}: {problem}");
    } else {
        assert!(
            answer.content_type.starts_with("application/json"),
            "{what}: content-type {}",
            answer.content_type
        );
        assert_eq!(answer.json(), json!({"message": "Unauthorized"}), "{what}");
        assert_eq!(answer.www_authenticate.as_deref(), Some("Bearer"), "{what}");
    }
    if let Some(auth) = authorization {
        let token = auth.trim_start_matches("Bearer ");
        assert!(!answer.text.contains(token), "{what}: the token came back");
    }
}

/// A 404 problem+json.
fn assert_not_found(what: &str, answer: &Answer) {
    assert_eq!(answer.status, 404, "{what}: {}", answer.text);
    assert!(
        answer.content_type.starts_with("application/problem+json"),
        "{what}: content-type {}",
        answer.content_type
    );
    assert_eq!(answer.json()["status"], 404, "{what}: {}", answer.text);
}

/// Approves a created connection at the bank and follows the redirect to our callback
/// (without a token: the callback is public).
async fn approve(w: &Bundle, created: &Value) {
    let (status, location) = w.follow(&w.decide(created, "approve").await).await;
    assert_eq!(status, 302);
    assert!(location.unwrap().contains("status=valid"));
}

/// `path` as `user`; asserts 200 and returns the raw body.
async fn read(w: &Bundle, user: &str, path: &str) -> String {
    let response = w
        .http
        .get(w.rt.url(path))
        .bearer_auth(w.token(user))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{user} {path}: {text}");
    text
}

/// The sandbox's request log entries with `method` whose path contains `fragment`.
async fn bank_calls(w: &Bundle, method: &str, fragment: &str) -> usize {
    let log = w.sandbox.get_json("requests").await;
    log.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == method && r["path"].as_str().unwrap().contains(fragment))
        .count()
}

fn bank_consent_id(created: &Value) -> String {
    created["authUrl"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

/// What must not change about a connection when someone else pokes at it.
fn connection_view(c: &Value) -> Value {
    json!({
        "connectionId": c["connectionId"], "bankId": c["bankId"], "status": c["status"],
        "validUntil": c["validUntil"], "renewal": c["renewal"], "createdAt": c["createdAt"],
    })
}

/// What must not change about a payment that nobody authorises.
fn payment_view(p: &Value) -> Value {
    json!({
        "paymentId": p["paymentId"], "state": p["state"], "status": p["status"],
        "final": p["final"], "instructedAmount": p["instructedAmount"],
        "history": p["statusHistory"].as_array().map(|h| h.len()),
    })
}

#[tokio::test]
async fn tokens_owners_and_lists_are_isolated_on_every_route() {
    let routes = assert_cases_cover_openapi();
    let w = Bundle::start(
        SECRET,
        &[("PAYMENT_POLL_SCHEDULE", "1:120,5:600".to_owned())],
    )
    .await;

    // A: two banks linked and approved, two payments (left unauthorised, so they stay put).
    let a_alpha = w
        .connect(
            A,
            json!({"bankId": "lt-alpha", "validDays": 90, "redirectUrl": APP}),
        )
        .await;
    approve(&w, &a_alpha).await;
    let a_baltija = w
        .connect(
            A,
            json!({"bankId": "lv-baltija", "validDays": 90, "redirectUrl": APP}),
        )
        .await;
    approve(&w, &a_baltija).await;
    let mut a_payments = Vec::new();
    for key in ["iso-a-1", "iso-a-2"] {
        let (status, created) = w.pay(A, Some(key), PAY).await;
        assert_eq!(status, 201, "{created}");
        a_payments.push(created["paymentId"].as_str().unwrap().to_owned());
    }
    let a_batch = w
        .http
        .post(w.rt.url("/v1/payment-batches"))
        .bearer_auth(w.token(A))
        .header("idempotency-key", "iso-a-batch")
        .header("content-type", "application/json")
        .body(BATCH)
        .send()
        .await
        .unwrap();
    assert_eq!(a_batch.status().as_u16(), 202);
    let a_batch: Value = a_batch.json().await.unwrap();
    let ids = Ids {
        conn: a_alpha["connectionId"].as_str().unwrap().to_owned(),
        pay: a_payments[0].clone(),
        batch: a_batch["batchId"].as_str().unwrap().to_owned(),
    };
    let a_conn_ids = [
        ids.conn.clone(),
        a_baltija["connectionId"].as_str().unwrap().to_owned(),
    ];

    // B: one bank (the same one as A's first) and one payment of their own.
    let b_alpha = w
        .connect(
            B,
            json!({"bankId": "lt-alpha", "validDays": 90, "redirectUrl": APP}),
        )
        .await;
    approve(&w, &b_alpha).await;
    let b_conn = b_alpha["connectionId"].as_str().unwrap().to_owned();
    let (status, b_payment) = w.pay(B, Some("iso-b-own"), PAY).await;
    assert_eq!(status, 201, "{b_payment}");
    let b_pay = b_payment["paymentId"].as_str().unwrap().to_owned();

    let a_conn_before = connection_view(&w.connection(A, &ids.conn).await);
    assert_eq!(a_conn_before["status"], "valid");
    let (_, p) = w
        .call(A, Method::GET, &format!("/v1/payments/{}", ids.pay), None)
        .await;
    let a_pay_before = payment_view(&p);
    assert_eq!(a_pay_before["state"], "awaiting_authorisation", "{p}");

    // A's batch items are initiated by the bulk worker in the background: wait for them,
    // so that the bank call counts below only move if a refused request reached a bank.
    let settled_by = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, view) = w
            .call(
                A,
                Method::GET,
                &format!("/v1/payment-batches/{}", ids.batch),
                None,
            )
            .await;
        assert_eq!(status, 200, "{view}");
        if view["counts"]["queued"] == 0 && view["counts"]["initiating"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < settled_by,
            "A's batch items not at the bank after 60 s: {}",
            view["counts"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // 1. Tokens: every route that needs one refuses every bad one, and no bank is called.
    let bank_calls_before = calls_but_status_polls(&w).await;
    let bad = bad_authorizations();
    let mut refused = 0;
    let mut public = 0;
    for (method, route, secured) in &routes {
        let case = find(method, route);
        if *secured {
            for (name, auth) in &bad {
                let answer = send(&w, case, &ids, auth.as_deref()).await;
                assert_unauthorized(
                    &format!("{method} {route} with {name}"),
                    &answer,
                    auth.as_deref(),
                );
                refused += 1;
            }
        } else {
            // Public: answers without a token (and a bad token changes nothing).
            for auth in [None, bad[1].1.as_deref()] {
                let answer = send(&w, case, &ids, auth).await;
                assert_eq!(
                    answer.status, case.expect,
                    "public {method} {route}: {}",
                    answer.text
                );
            }
            public += 1;
        }
    }
    assert_eq!(
        calls_but_status_polls(&w).await,
        bank_calls_before,
        "a refused request reached a bank"
    );
    println!(
        "{refused} refused calls on {} protected routes; {public} public routes answered without a token",
        routes.len() - public
    );

    // 2. Owners: B (a valid token) on every route. Routes with A's id answer 404, as an
    //    unknown id does; the others answer B normally.
    let alpha_consent = bank_consent_id(&a_alpha);
    let deletes_before = bank_calls(&w, "DELETE", &alpha_consent).await;
    let unknown = Ids {
        conn: uuid::Uuid::new_v4().to_string(),
        pay: uuid::Uuid::new_v4().to_string(),
        batch: uuid::Uuid::new_v4().to_string(),
    };
    let b_auth = format!("Bearer {}", w.token(B));
    let mut cross_user = 0;
    for (method, route, secured) in &routes {
        if !secured {
            continue;
        }
        let case = find(method, route);
        let consents_before = w.consent_creations("lt-alpha").await;
        let answer = send(&w, case, &ids, Some(&b_auth)).await;
        let what = format!("{B} {method} {}", fill(case.call, &ids));
        if route.contains('{') {
            assert_not_found(&what, &answer);
            assert_eq!(
                bank_calls(&w, "DELETE", &alpha_consent).await,
                deletes_before,
                "{what} deleted A's consent at the bank"
            );
            assert_eq!(
                w.consent_creations("lt-alpha").await,
                consents_before,
                "{what} created a consent at the bank"
            );
            let unknown_answer = send(&w, case, &unknown, Some(&b_auth)).await;
            assert_not_found(&format!("{method} {route} unknown id"), &unknown_answer);
            assert_eq!(
                answer.json(),
                unknown_answer.json(),
                "{what}: another user's id answers like an unknown one"
            );
            cross_user += 1;
        } else {
            assert_eq!(answer.status, case.expect, "{what}: {}", answer.text);
        }
    }
    assert!(cross_user >= 4, "{cross_user}");
    println!("{cross_user} routes with a path id answered 404 to another user");

    // A's things are as they were: same state here, nothing deleted or renewed at the bank.
    assert_eq!(
        connection_view(&w.connection(A, &ids.conn).await),
        a_conn_before
    );
    let (status, p) = w
        .call(A, Method::GET, &format!("/v1/payments/{}", ids.pay), None)
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(payment_view(&p), a_pay_before);
    assert_eq!(
        bank_calls(&w, "DELETE", &alpha_consent).await,
        deletes_before,
        "B's DELETE reached the bank"
    );
    let a_listed = w.connections(A).await;
    assert!(
        a_listed
            .iter()
            .any(|c| c["connectionId"] == ids.conn.as_str() && c["status"] == "valid"),
        "{a_listed:?}"
    );

    // 3. Lists: B's never contain A's ids (and do contain B's own), also when B passes
    //    A's account id, bank or cursor; and the other way round.
    let (_, a_accounts) = w.call(A, Method::GET, "/v1/accounts", None).await;
    let a_account = a_accounts["accounts"][0]["accountId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        a_conn_ids.iter().any(|c| a_account.contains(c.as_str())),
        "account ids name their connection: {a_account}"
    );
    let (_, a_page) = w.call(A, Method::GET, "/v1/payments?limit=1", None).await;
    let a_cursor = a_page["nextCursor"].as_str().expect("A has two payments");
    let a_inbox: Vec<String> = w
        .inbox(A)
        .await
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!a_inbox.is_empty());
    let mut a_ids: Vec<String> = a_conn_ids.to_vec();
    a_ids.extend(a_payments.iter().cloned());
    a_ids.extend(a_inbox.iter().cloned());

    let b_inbox: Vec<String> = w
        .inbox(B)
        .await
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!b_inbox.is_empty());
    let lists: Vec<(String, Vec<&str>)> = vec![
        ("/v1/connections".into(), vec![&b_conn]),
        ("/v1/payments".into(), vec![&b_pay]),
        (
            "/v1/payments?status=awaiting_authorisation".into(),
            vec![&b_pay],
        ),
        ("/v1/notifications".into(), vec![&b_inbox[0]]),
        ("/v1/accounts".into(), vec![&b_conn]),
        ("/v1/accounts?refresh=true".into(), vec![&b_conn]),
        ("/v1/balances?baseCurrency=EUR".into(), vec![&b_conn]),
        ("/v1/transactions?limit=500".into(), vec![&b_conn]),
        ("/v1/insights/spending?baseCurrency=EUR".into(), vec![]),
        (format!("/v1/transactions?accountId={a_account}"), vec![]),
        ("/v1/transactions?bankId=lv-baltija".into(), vec![]),
        (format!("/v1/payments?cursor={a_cursor}"), vec![]),
    ];
    let mut scanned = 0;
    for (path, own) in &lists {
        let response = w
            .http
            .get(w.rt.url(path))
            .bearer_auth(w.token(B))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(
            status == 200 || (path.contains('=') && status == 400),
            "{B} {path}: {status} {text}"
        );
        for id in &a_ids {
            assert!(
                !text.contains(id.as_str()),
                "{B} {path} shows A's {id}: {text}"
            );
        }
        assert!(
            !text.contains("lv-baltija") || path == "/v1/transactions?bankId=lv-baltija",
            "{B} {path} shows A's other bank: {text}"
        );
        for id in own {
            assert!(text.contains(id), "{B} {path} lacks B's own {id}: {text}");
        }
        scanned += 1;
    }
    let b_ids = [b_conn.clone(), b_pay.clone(), b_inbox[0].clone()];
    for path in [
        "/v1/connections",
        "/v1/payments",
        "/v1/notifications",
        "/v1/accounts",
        "/v1/transactions?limit=500",
    ] {
        let text = read(&w, A, path).await;
        for id in &b_ids {
            assert!(!text.contains(id.as_str()), "{A} {path} shows B's {id}");
        }
        let own = if path.contains("payments") {
            &ids.pay
        } else if path.contains("notifications") {
            &a_inbox[0]
        } else {
            &ids.conn
        };
        assert!(
            text.contains(own.as_str()),
            "{A} {path} lacks A's own {own}"
        );
        scanned += 1;
    }
    println!("{scanned} list reads checked for the other user's ids");

    // The checks above could have seen a change: A renewing creates a consent at the bank,
    // A deleting reaches the bank once.
    let consents_before = w.consent_creations("lt-alpha").await;
    let (status, renewal) = w
        .call(
            A,
            Method::POST,
            &format!("/v1/connections/{}/renew", ids.conn),
            None,
        )
        .await;
    assert_eq!(status, 201, "{renewal}");
    assert_eq!(w.consent_creations("lt-alpha").await, consents_before + 1);
    let (status, _) = w
        .call(
            A,
            Method::DELETE,
            &format!("/v1/connections/{}", ids.conn),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        bank_calls(&w, "DELETE", &alpha_consent).await,
        deletes_before + 1
    );

    w.stop().await;
}

/// The sandbox's calls, without the payment status polls that A's and B's payments' poll
/// chains make on their own schedule while the matrix runs (no API request makes one).
async fn calls_but_status_polls(w: &Bundle) -> u64 {
    let counts = w.sandbox.get_json("counts").await;
    counts["byOperation"]
        .as_object()
        .expect("byOperation")
        .iter()
        .filter(|(operation, _)| {
            !operation.ends_with("/status") || !operation.contains("/v1/payments/")
        })
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum()
}
