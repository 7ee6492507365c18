//! Hostile input on every route of docs/openapi.yaml that takes input: oversized bodies,
//! 10,000-deep JSON, invalid UTF-8, huge numbers, injection-looking strings, path traversal
//! and other odd path ids, very long values and unicode oddities.
//!
//! Against the deployed functions (template.yaml) in the local runtime, local AWS and the
//! sandbox bank. Every case must be answered with a clean 4xx that the spec documents for
//! that operation and status (content type and body schema: problem+json from the
//! functions, API Gateway's own `{"message"}` for what it refuses itself), naming the bad
//! field where there is one; and together they must change nothing: no request reaches a
//! bank, and the caller's connections, payments, batches and inbox stay as they were.
//!
//! A route of the spec that takes parameters or a body but has no case here fails
//! [`every_route_with_input_has_hostile_cases`].

use std::collections::BTreeSet;

use integration_tests::Bundle;
use integration_tests::spec::Spec;
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "hostile-input-secret";
const USER: &str = "mallory-hostile";
const APP: &str = "http://127.0.0.1:3000/app/done";
const DEBTOR: &str = "LT121000011101001000";
const CREDITOR: &str = "DE89370400440532013000";

/// What a case must get.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// problem+json with this status; `Some(field)`: its `errors` name that field.
    Problem(u16, Option<&'static str>),
    /// API Gateway's own answer with this status (`{"message": ...}`).
    Gateway(u16),
    /// The SCA callback's error page (text/html) with this status.
    Page(u16),
}

struct Case {
    name: String,
    method: &'static str,
    /// The route as in docs/openapi.yaml (the case's path is checked to match it).
    route: &'static str,
    /// Path and query as sent (already percent-encoded where needed).
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    body: Option<Vec<u8>>,
    /// Sent with the caller's valid token (else only what `headers` says).
    token: bool,
    expect: Expect,
}

fn case(name: impl Into<String>, method: &'static str, route: &'static str) -> Case {
    Case {
        name: name.into(),
        method,
        route,
        path: route.to_owned(),
        headers: vec![],
        body: None,
        token: true,
        expect: Expect::Problem(400, None),
    }
}

impl Case {
    fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.headers
            .push(("content-type", b"application/json".to_vec()));
        self.body = Some(body.into());
        self
    }
    fn without_token(mut self) -> Self {
        self.token = false;
        self
    }
    fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }
}

fn payment(overrides: Value) -> Value {
    let mut body = json!({
        "bankId": "lt-alpha",
        "debtorAccount": {"iban": DEBTOR},
        "instructedAmount": {"amount": "1.00", "currency": "EUR"},
        "creditorAccount": {"iban": CREDITOR},
        "creditorName": "Ona Onaite",
        "redirectUrl": APP,
    });
    merge(&mut body, overrides);
    body
}

fn batch(item_overrides: Value, overrides: Value) -> Value {
    let mut item = json!({
        "instructedAmount": {"amount": "1.00", "currency": "EUR"},
        "creditorAccount": {"iban": CREDITOR},
        "creditorName": "Ona Onaite",
    });
    merge(&mut item, item_overrides);
    let mut body = json!({
        "bankId": "lt-alpha",
        "debtorAccount": {"iban": DEBTOR},
        "payments": [item],
    });
    merge(&mut body, overrides);
    body
}

/// Deep-merges `from` into `into` (objects only; other values replace).
fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (slot, other) => *slot = other,
    }
}

/// `text` with `"@HUGE@"` (a JSON string) replaced by a raw JSON number literal `number`.
fn with_number(text: Value, number: &str) -> Vec<u8> {
    text.to_string().replace("\"@HUGE@\"", number).into_bytes()
}

const INJECTIONS: &[&str] = &[
    "' OR 1=1 --",
    "\"; DROP TABLE payments; --",
    "{\"$gt\":\"\"}",
    "$where: '1 == 1'",
    "../../etc/passwd",
    "${jndi:ldap://127.0.0.1/a}",
    "<script>alert(1)</script>",
];

/// Path ids that must all be an ordinary 404 (percent-encoded as a client would send them).
fn hostile_ids() -> Vec<(&'static str, String)> {
    vec![
        ("traversal", "..%2F..%2Fetc%2Fpasswd".to_owned()),
        ("dot-dot-semicolon", "..;".to_owned()),
        ("NUL", "%00".to_owned()),
        ("uuid with NUL", format!("{}%00", uuid::Uuid::nil())),
        ("very long", "a".repeat(8_000)),
        ("SQL injection", "%27%20OR%201%3D1%20--".to_owned()),
        ("NoSQL operator", "%7B%22%24gt%22%3A%22%22%7D".to_owned()),
        ("invalid UTF-8", "%FF%FE%FD".to_owned()),
        ("RTL override and emoji", "%E2%80%AE%F0%9F%92%A9".to_owned()),
        (
            "fullwidth uuid",
            // ０ (U+FF10) looks like 0.
            "%EF%BC%90".repeat(8) + "-0000-0000-0000-000000000000",
        ),
        ("blank", "%20".to_owned()),
        ("nil uuid", uuid::Uuid::nil().to_string()),
    ]
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let deep_arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let invalid_utf8 = b"{\"bankId\":\"lt-\xff\xfe-alpha\"}".to_vec();
    let over_gateway_limit = {
        let mut body = b"{\"bankId\":\"".to_vec();
        body.resize(11 * 1024 * 1024, b'a');
        body.extend_from_slice(b"\"}");
        body
    };
    let under_gateway_limit = {
        // 3 MiB: API Gateway passes it on; the function must refuse it cleanly.
        let mut body =
            b"{\"bankId\":\"lt-alpha\",\"redirectUrl\":\"http://127.0.0.1:3000/".to_vec();
        body.resize(3 * 1024 * 1024, b'a');
        body.extend_from_slice(b"\"}");
        body
    };

    // ---- bodies: every route that takes one -------------------------------------------
    for (route, key) in [
        ("/v1/connections", None),
        ("/v1/payments", Some("hostile-body")),
        ("/v1/payment-batches", Some("hostile-batch-body")),
    ] {
        let with_key = |c: Case| match key {
            Some(k) => c.header("idempotency-key", k),
            None => c,
        };
        let p = |name: &str| with_key(case(format!("POST {route}: {name}"), "POST", route));
        cases.push(
            p("11 MiB body")
                .json(over_gateway_limit.clone())
                .expect(Expect::Gateway(413)),
        );
        cases.push(
            p("3 MiB body")
                .json(under_gateway_limit.clone())
                .expect(Expect::Problem(400, None)),
        );
        cases.push(
            p("10,000-deep arrays")
                .json(deep_arrays.clone())
                .expect(Expect::Problem(400, Some("body"))),
        );
        cases.push(
            p("10,000-deep objects")
                .json(deep_objects.clone())
                .expect(Expect::Problem(400, Some("body"))),
        );
        cases.push(
            p("invalid UTF-8")
                .json(invalid_utf8.clone())
                .expect(Expect::Problem(400, Some("body"))),
        );
        cases.push(
            p("invalid UTF-8 as octet-stream")
                .header("content-type", "application/octet-stream")
                .expect(Expect::Problem(400, Some("body"))),
        );
        cases.last_mut().unwrap().body = Some(invalid_utf8.clone());
        cases.push(
            p("not JSON")
                .json("bankId=lt-alpha&x=1")
                .expect(Expect::Problem(400, Some("body"))),
        );
        cases.push(
            p("JSON array")
                .json("[{\"bankId\":\"lt-alpha\"}]")
                .expect(Expect::Problem(400, Some("body"))),
        );
        cases.push(
            p("lone surrogate escape")
                .json("{\"bankId\":\"lt-alpha\\ud800\"}")
                .expect(Expect::Problem(400, Some("body"))),
        );
        cases.push(
            p("NoSQL operator as bankId")
                .json(json!({"bankId": {"$gt": ""}}).to_string())
                .expect(Expect::Problem(400, Some("bankId"))),
        );
        cases.push(
            p("NoSQL operator as a field name")
                .json(json!({"bankId": "lt-alpha", "$where": "1 == 1"}).to_string())
                .expect(Expect::Problem(400, None)),
        );
        for injection in INJECTIONS {
            cases.push(
                p(&format!("bankId {injection:?}"))
                    .json(json!({"bankId": injection}).to_string())
                    .expect(Expect::Problem(400, Some("bankId"))),
            );
        }
        for odd in [
            "lt-alpha\u{0000}",
            "lt-alpha\u{202e}",
            "ＬＴ-alpha",
            "lt-alpha\u{200b}",
            "lt-alph\u{0430}",
        ] {
            cases.push(
                p(&format!("bankId {odd:?}"))
                    .json(json!({"bankId": odd}).to_string())
                    .expect(Expect::Problem(400, Some("bankId"))),
            );
        }
    }

    // ---- POST /v1/connections: numbers, URLs ------------------------------------------
    let conn = |name: &str| {
        case(
            format!("POST /v1/connections: {name}"),
            "POST",
            "/v1/connections",
        )
    };
    for (field, number) in [
        ("validDays", "1e400"),
        ("validDays", "-1e400"),
        ("validDays", "99999999999999999999999"),
        ("validDays", "1.5"),
        ("frequencyPerDay", "1e400"),
        ("frequencyPerDay", "18446744073709551616"),
    ] {
        let body = with_number(json!({"bankId": "lt-alpha", field: "@HUGE@"}), number);
        cases.push(
            conn(&format!("{field} {number}"))
                .json(body)
                .expect(Expect::Problem(400, Some(field))),
        );
    }
    for url in [
        "javascript:alert(1)",
        "http://evil.example/steal",
        "http://127.0.0.1:3000/../../etc/passwd\u{0000}",
        "' OR 1=1 --",
    ] {
        cases.push(
            conn(&format!("redirectUrl {url:?}"))
                .json(json!({"bankId": "lt-alpha", "redirectUrl": url}).to_string())
                .expect(Expect::Problem(400, Some("redirectUrl"))),
        );
    }

    // ---- POST /v1/payments: amounts, IBANs, names, keys --------------------------------
    let pay = |name: &str, key: &str| {
        case(format!("POST /v1/payments: {name}"), "POST", "/v1/payments")
            .header("idempotency-key", key.to_owned())
    };
    for (i, number) in ["1e400", "99999999999999999999999", "-1", "1e-400"]
        .iter()
        .enumerate()
    {
        let body = with_number(
            payment(json!({"instructedAmount": {"amount": "@HUGE@"}})),
            number,
        );
        cases.push(
            pay(
                &format!("amount as number {number}"),
                &format!("hostile-n{i}"),
            )
            .json(body)
            .expect(Expect::Problem(400, Some("instructedAmount.amount"))),
        );
    }
    for (i, amount) in [
        "99999999999999999999999",
        "1e400",
        "-5.00",
        "0.00",
        "1.001",
        "NaN",
        "Infinity",
        "１２.００",
        "12.00\u{0000}",
        "' OR 1=1 --",
    ]
    .iter()
    .enumerate()
    {
        cases.push(
            pay(&format!("amount {amount:?}"), &format!("hostile-a{i}"))
                .json(payment(json!({"instructedAmount": {"amount": amount}})).to_string())
                .expect(Expect::Problem(400, Some("instructedAmount.amount"))),
        );
    }
    for (i, injection) in INJECTIONS.iter().enumerate() {
        cases.push(
            pay(
                &format!("creditor IBAN {injection:?}"),
                &format!("hostile-i{i}"),
            )
            .json(payment(json!({"creditorAccount": {"iban": injection}})).to_string())
            .expect(Expect::Problem(400, Some("creditorAccount.iban"))),
        );
        cases.push(
            pay(&format!("currency {injection:?}"), &format!("hostile-c{i}"))
                .json(payment(json!({"instructedAmount": {"currency": injection}})).to_string())
                .expect(Expect::Problem(400, Some("instructedAmount.currency"))),
        );
        cases.push(
            pay(
                &format!("paymentProduct {injection:?}"),
                &format!("hostile-p{i}"),
            )
            .json(payment(json!({"paymentProduct": injection})).to_string())
            .expect(Expect::Problem(400, Some("paymentProduct"))),
        );
    }
    cases.push(
        pay("debtor IBAN as NoSQL operator", "hostile-d0")
            .json(payment(json!({"debtorAccount": {"iban": {"$ne": null}}})).to_string())
            .expect(Expect::Problem(400, Some("debtorAccount.iban"))),
    );
    cases.push(
        pay("creditorName 10,000 characters", "hostile-name-long")
            .json(payment(json!({"creditorName": "ö".repeat(10_000)})).to_string())
            .expect(Expect::Problem(400, Some("creditorName"))),
    );
    cases.push(
        pay("creditorName with control characters", "hostile-name-ctl")
            .json(payment(json!({"creditorName": "Ona\u{0000}\u{001b}[31m"})).to_string())
            .expect(Expect::Problem(400, Some("creditorName"))),
    );
    cases.push(
        pay("remittance 10,000 characters", "hostile-rem-long")
            .json(
                payment(json!({"remittanceInformationUnstructured": "x".repeat(10_000)}))
                    .to_string(),
            )
            .expect(Expect::Problem(
                400,
                Some("remittanceInformationUnstructured"),
            )),
    );
    // The key: too long, spaces, non-ASCII bytes, injection.
    for (name, key) in [
        (
            "Idempotency-Key 300 characters",
            "k".repeat(300).into_bytes(),
        ),
        ("Idempotency-Key with spaces", b"' OR 1=1 --".to_vec()),
        ("Idempotency-Key non-ASCII", b"key-\xc3\xa9\xff".to_vec()),
        (
            "Idempotency-Key with a tab",
            b"../../etc/passwd\tx".to_vec(),
        ),
    ] {
        cases.push(
            case(format!("POST /v1/payments: {name}"), "POST", "/v1/payments")
                .header("idempotency-key", key)
                .json(payment(json!({})).to_string())
                .expect(Expect::Problem(400, Some("Idempotency-Key"))),
        );
    }

    // ---- POST /v1/payment-batches ------------------------------------------------------
    let bat = |name: &str, key: &str| {
        case(
            format!("POST /v1/payment-batches: {name}"),
            "POST",
            "/v1/payment-batches",
        )
        .header("idempotency-key", key.to_owned())
    };
    for (i, number) in ["1e400", "99999999999999999999999"].iter().enumerate() {
        let body = with_number(
            batch(json!({"instructedAmount": {"amount": "@HUGE@"}}), json!({})),
            number,
        );
        cases.push(
            bat(
                &format!("amount as number {number}"),
                &format!("hostile-bn{i}"),
            )
            .json(body)
            .expect(Expect::Problem(
                400,
                Some("payments[0].instructedAmount.amount"),
            )),
        );
    }
    cases.push(
        bat("amount 99999999999999999999999", "hostile-ba0")
            .json(
                batch(
                    json!({"instructedAmount": {"amount": "99999999999999999999999"}}),
                    json!({}),
                )
                .to_string(),
            )
            .expect(Expect::Problem(
                400,
                Some("payments[0].instructedAmount.amount"),
            )),
    );
    cases.push(
        bat("creditor IBAN injection", "hostile-bi0")
            .json(
                batch(
                    json!({"creditorAccount": {"iban": "' OR 1=1 --"}}),
                    json!({}),
                )
                .to_string(),
            )
            .expect(Expect::Problem(
                400,
                Some("payments[0].creditorAccount.iban"),
            )),
    );
    cases.push(
        bat("payments as NoSQL operator", "hostile-bp0")
            .json(batch(json!({}), json!({"payments": {"$gt": ""}})).to_string())
            .expect(Expect::Problem(400, Some("payments"))),
    );
    cases.push(
        bat("1,001 payments", "hostile-b1001")
            .json({
                let mut body = batch(json!({}), json!({}));
                let item = body["payments"][0].clone();
                body["payments"] = Value::Array(vec![item; 1001]);
                body.to_string()
            })
            .expect(Expect::Problem(400, Some("payments"))),
    );
    cases.push(
        bat("Idempotency-Key 300 characters", &"k".repeat(300))
            .json(batch(json!({}), json!({})).to_string())
            .expect(Expect::Problem(400, Some("Idempotency-Key"))),
    );

    // ---- query parameters --------------------------------------------------------------
    let get = |route: &'static str, query: &str, field: &'static str| {
        case(format!("GET {route}?{query}"), "GET", route)
            .path(format!("{route}?{query}"))
            .expect(Expect::Problem(400, Some(field)))
    };
    for (route, field, values) in [
        (
            "/v1/transactions",
            "limit",
            &["1e400", "99999999999999999999999", "-1", "0", "NaN"][..],
        ),
        (
            "/v1/notifications",
            "limit",
            &["1e400", "99999999999999999999999", "-1"][..],
        ),
        (
            "/v1/payments",
            "limit",
            &["1e400", "99999999999999999999999", "0"][..],
        ),
        ("/v1/payment-batches/{id}", "limit", &["1e400", "0"][..]),
        (
            "/v1/transactions",
            "cursor",
            &[
                "%27%20OR%201%3D1%20--",
                "%7B%22%24gt%22%3A%22%22%7D",
                "..%2F..%2Fetc%2Fpasswd",
                "%00",
            ][..],
        ),
        (
            "/v1/payments",
            "cursor",
            &["%27%20OR%201%3D1%20--", "%7B%22%24gt%22%3A%22%22%7D"][..],
        ),
        (
            "/v1/payment-batches/{id}",
            "cursor",
            &["%27%20OR%201%3D1%20--"][..],
        ),
        (
            "/v1/payments",
            "status",
            &["%27%20OR%201%3D1%20--", "%7B%22%24ne%22%3Anull%7D", "%00"][..],
        ),
        (
            "/v1/transactions",
            "accountId",
            &["..%2F..%2Fetc%2Fpasswd", "%27%20OR%201%3D1%20--"][..],
        ),
        (
            "/v1/transactions",
            "bankId",
            &["%7B%22%24gt%22%3A%22%22%7D", "%00"][..],
        ),
        (
            "/v1/transactions",
            "category",
            &["%27%20OR%201%3D1%20--", "%FF%FE"][..],
        ),
        (
            "/v1/transactions",
            "dateFrom",
            &[
                "99999-01-01",
                "2026-02-30",
                "1e400",
                "%27%20OR%201%3D1%20--",
            ][..],
        ),
        (
            "/v1/insights/spending",
            "dateTo",
            &["2026-13-01", "0000-00-00"][..],
        ),
        (
            "/v1/insights/spending",
            "baseCurrency",
            &["%27%20OR%201%3D1%20--", "eur", "%00"][..],
        ),
        (
            "/v1/balances",
            "baseCurrency",
            &["%7B%22%24gt%22%3A%22%22%7D", "EURO"][..],
        ),
        ("/v1/balances", "refresh", &["1%20OR%201%3D1", "yes"][..]),
        ("/v1/accounts", "refresh", &["%00", "TRUE%27--"][..]),
    ] {
        for value in values {
            let mut c = get(route, &format!("{field}={value}"), field);
            if route.contains("{id}") {
                // A batch id that exists for nobody is a 404 before the query matters;
                // the owner's batch is filled in below.
                c.path = c.path.replace("{id}", "{batch}");
            }
            cases.push(c);
        }
    }

    // ---- path ids ----------------------------------------------------------------------
    for (name, id) in hostile_ids() {
        for (method, route) in [
            ("GET", "/v1/connections/{id}"),
            ("DELETE", "/v1/connections/{id}"),
            ("POST", "/v1/connections/{id}/renew"),
            ("GET", "/v1/payments/{id}"),
            ("GET", "/v1/payment-batches/{id}"),
        ] {
            cases.push(
                case(format!("{method} {route}: id {name}"), method, route)
                    .path(route.replace("{id}", &id))
                    .expect(Expect::Problem(404, None)),
            );
        }
    }

    // ---- the token itself: API Gateway's authorizer answers, as the spec documents -------
    for (method, route, path) in [
        ("POST", "/v1/connections", "/v1/connections".to_owned()),
        ("POST", "/v1/payments", "/v1/payments".to_owned()),
        (
            "POST",
            "/v1/payment-batches",
            "/v1/payment-batches".to_owned(),
        ),
        (
            "GET",
            "/v1/transactions",
            "/v1/transactions?limit=1".to_owned(),
        ),
        (
            "DELETE",
            "/v1/connections/{id}",
            format!("/v1/connections/{}", uuid::Uuid::nil()),
        ),
    ] {
        for (name, authorization) in [
            ("no token", None),
            (
                "SQL injection as token",
                Some("Bearer ' OR 1=1 --".to_owned()),
            ),
            (
                "NoSQL operator as token",
                Some("Bearer {\"$gt\":\"\"}".to_owned()),
            ),
            (
                "10,000-character token",
                Some(format!("Bearer {}", "a".repeat(10_000))),
            ),
        ] {
            let mut c = case(format!("{method} {route}: {name}"), method, route)
                .path(path.clone())
                .without_token()
                .expect(Expect::Gateway(401));
            if let Some(authorization) = authorization {
                c = c.header("authorization", authorization);
            }
            if method == "POST" {
                c = c
                    .header("idempotency-key", "hostile-no-token")
                    .json(payment(json!({})).to_string());
            }
            cases.push(c);
        }
    }

    // ---- the SCA callback's state ------------------------------------------------------
    for (name, state) in [
        ("traversal", "..%2F..%2Fetc%2Fpasswd".to_owned()),
        ("SQL injection", "%27%20OR%201%3D1%20--".to_owned()),
        ("NUL", "%00".to_owned()),
        ("2,000 characters", "s".repeat(2_000)),
        ("invalid UTF-8", "%FF%FE".to_owned()),
        (
            "a forged JSON state",
            "%7B%22consentId%22%3A%22x%22%7D.AAAA".to_owned(),
        ),
    ] {
        cases.push(
            case(
                format!("GET /v1/callbacks/sca: state {name}"),
                "GET",
                "/v1/callbacks/sca",
            )
            .path(format!("/v1/callbacks/sca?state={state}&outcome=ok"))
            .expect(Expect::Page(400)),
        );
    }
    cases
}

/// (METHOD, route) of every operation of docs/openapi.yaml with parameters or a body.
fn routes_with_input() -> BTreeSet<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        let shared = item.get("parameters").is_some();
        for (method, op) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if !["get", "put", "post", "delete", "patch"].contains(&method) {
                continue;
            }
            if shared || op.get("parameters").is_some() || op.get("requestBody").is_some() {
                routes.insert((method.to_uppercase(), path.as_str().unwrap().to_owned()));
            }
        }
    }
    routes
}

#[test]
fn every_route_with_input_has_hostile_cases() {
    let covered: BTreeSet<(String, String)> = cases()
        .iter()
        .map(|c| (c.method.to_owned(), c.route.to_owned()))
        .collect();
    let missing: Vec<_> = routes_with_input().difference(&covered).cloned().collect();
    assert!(
        missing.is_empty(),
        "routes without hostile cases: {missing:?}"
    );
    let stale: Vec<_> = covered.difference(&routes_with_input()).cloned().collect();
    assert!(
        stale.is_empty(),
        "cases naming no route with input: {stale:?}"
    );
}

/// What must not change, as the owner sees it.
async fn snapshot(w: &Bundle, batch: &str) -> Value {
    let mut seen = serde_json::Map::new();
    for path in [
        "/v1/connections".to_owned(),
        "/v1/payments".to_owned(),
        "/v1/notifications".to_owned(),
        format!("/v1/payment-batches/{batch}"),
    ] {
        let (status, mut body) = w.call(USER, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        // daysLeft and the like do not move within the test; the batch's worker may still
        // be finishing, so only its identity and total are compared.
        if path.contains("payment-batches") {
            body = json!({"batchId": body["batchId"], "total": body["total"]});
        }
        seen.insert(path, body);
    }
    Value::Object(seen)
}

#[tokio::test]
async fn hostile_input_is_refused_cleanly_and_changes_nothing() {
    let spec = Spec::openapi();
    let w = Bundle::start(SECRET, &[("PAYMENT_POLL_SCHEDULE", "900:1800".to_owned())]).await;

    // The caller owns a valid connection, a payment and a batch, so hostile input meets
    // real state.
    let created = w
        .connect(
            USER,
            json!({"bankId": "lt-alpha", "validDays": 90, "redirectUrl": APP}),
        )
        .await;
    let (status, location) = w.follow(&w.decide(&created, "approve").await).await;
    assert_eq!(status, 302);
    assert!(location.unwrap().contains("status=valid"));
    let (status, paid) = w
        .pay(USER, Some("hostile-own"), &payment(json!({})).to_string())
        .await;
    assert_eq!(status, 201, "{paid}");
    let response = w
        .http
        .post(w.rt.url("/v1/payment-batches"))
        .bearer_auth(w.token(USER))
        .header("idempotency-key", "hostile-own-batch")
        .header("content-type", "application/json")
        .body(batch(json!({}), json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let batch_id = response.json::<Value>().await.unwrap()["batchId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Let the batch's single item reach the bank before counting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, b) = w
            .call(
                USER,
                Method::GET,
                &format!("/v1/payment-batches/{batch_id}"),
                None,
            )
            .await;
        if b["counts"]["queued"].as_u64().unwrap_or(0) == 0
            && b["counts"]["initiating"].as_u64().unwrap_or(0) == 0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch did not start: {b}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let before = snapshot(&w, &batch_id).await;
    let bank_before = w.sandbox.get_json("counts").await["total"].clone();

    let token = w.token(USER);
    let mut failures = Vec::new();
    let all = cases();
    for c in &all {
        let path = c.path.replace("{batch}", &batch_id);
        let method = Method::from_bytes(c.method.as_bytes()).unwrap();
        let mut request = w.http.request(method, w.rt.url(&path));
        if c.token {
            request = request.bearer_auth(&token);
        }
        for (name, value) in &c.headers {
            let value = reqwest::header::HeaderValue::from_bytes(value).unwrap();
            request = request.header(*name, value);
        }
        if let Some(body) = &c.body {
            request = request.body(body.clone());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: no answer ({e})", c.name));
                continue;
            }
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
        let bare_path = path.split('?').next().unwrap();

        let (want, kind) = match c.expect {
            Expect::Problem(s, _) => (s, "application/problem+json"),
            Expect::Gateway(s) => (s, "application/json"),
            Expect::Page(s) => (s, "text/html"),
        };
        if status != want || !content_type.as_deref().unwrap_or("").starts_with(kind) {
            failures.push(format!(
                "{}: {status} {content_type:?}, want {want} {kind}: {text}",
                c.name
            ));
            continue;
        }
        for problem in
            spec.check_response(c.method, bare_path, status, content_type.as_deref(), &bytes)
        {
            failures.push(format!("{}: {problem}", c.name));
        }
        if let Expect::Problem(_, field) = c.expect {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if body["status"] != json!(status) {
                failures.push(format!(
                    "{}: problem status {} != {status}",
                    c.name, body["status"]
                ));
            }
            if let Some(field) = field {
                let named = body["errors"]
                    .as_array()
                    .is_some_and(|errors| errors.iter().any(|e| e["field"] == field));
                if !named {
                    failures.push(format!(
                        "{}: the errors do not name {field}: {text}",
                        c.name
                    ));
                }
            }
        }
        if let Expect::Gateway(_) = c.expect {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if !body["message"].is_string() {
                failures.push(format!("{}: not API Gateway's message: {text}", c.name));
            }
        }
    }

    let bank_after = w.sandbox.get_json("counts").await["total"].clone();
    let after = snapshot(&w, &batch_id).await;
    println!(
        "{} hostile requests, {} not answered as expected",
        all.len(),
        failures.len()
    );
    w.stop().await;

    assert!(
        failures.is_empty(),
        "{} of {} hostile requests were not refused cleanly:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
    assert_eq!(bank_after, bank_before, "a hostile request reached a bank");
    assert_eq!(
        after, before,
        "a hostile request changed the caller's state"
    );
}
