//! Aggregation end to end: the deployed functions (template.yaml) in the local runtime,
//! local AWS and the sandbox bank's three banks (3 accounts each). Expected figures are
//! computed here independently, from the sandbox's raw Berlin Group answers and its ECB
//! feed, with our own decimal arithmetic.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use integration_tests::Bundle;
use reqwest::Method;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

const SECRET: &str = "aggregation-e2e-secret";
const APP: &str = "http://127.0.0.1:3000/app/connected";
const BANKS: [&str; 3] = ["lt-alpha", "lv-baltija", "ee-pohja"];

/// `user` links `bank` and approves it; returns the connection id.
async fn linked(w: &Bundle, user: &str, bank: &str) -> String {
    let created = w
        .connect(
            user,
            json!({"bankId": bank, "validDays": 90, "redirectUrl": APP}),
        )
        .await;
    let (status, location) = w.follow(&w.decide(&created, "approve").await).await;
    assert_eq!(status, 302);
    assert!(location.unwrap().contains("status=valid"));
    created["connectionId"].as_str().unwrap().to_owned()
}

/// The sandbox's own view, read directly over HTTP with a consent of our own (PSU
/// present, so nothing is counted against anyone's budget).
struct Truth {
    /// bank → [(resourceId, currency, interimAvailable or closingBooked amount)]
    balances: BTreeMap<String, Vec<(String, String, Decimal)>>,
    /// bank → every transaction id (booked and pending), all pages.
    transaction_ids: BTreeMap<String, HashSet<String>>,
    /// currency → units per EUR, from the ECB feed.
    rates: BTreeMap<String, Decimal>,
}

async fn truth(w: &Bundle, date_from: &str) -> Truth {
    let http = reqwest::Client::new();
    let base = &w.sandbox.handle.base_url;
    let headers = |req: reqwest::RequestBuilder| {
        req.header("X-Request-ID", uuid::Uuid::new_v4().to_string())
            .header("PSU-IP-Address", "192.0.2.10")
    };
    let mut balances = BTreeMap::new();
    let mut transaction_ids = BTreeMap::new();
    for bank in BANKS {
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
        let accounts = get(format!("/{bank}/v1/accounts")).await;
        let mut list = Vec::new();
        let mut ids = HashSet::new();
        for account in accounts["accounts"].as_array().unwrap() {
            let id = account["resourceId"].as_str().unwrap().to_owned();
            let b = get(format!("/{bank}/v1/accounts/{id}/balances")).await;
            let pick = |kind: &str| {
                b["balances"].as_array().unwrap().iter().find_map(|x| {
                    (x["balanceType"] == kind).then(|| {
                        (
                            x["balanceAmount"]["currency"].as_str().unwrap().to_owned(),
                            Decimal::from_str(x["balanceAmount"]["amount"].as_str().unwrap())
                                .unwrap(),
                        )
                    })
                })
            };
            let (currency, amount) = pick("interimAvailable")
                .or_else(|| pick("closingBooked"))
                .unwrap();
            list.push((id.clone(), currency, amount));
            let mut next = Some(format!(
                "/{bank}/v1/accounts/{id}/transactions?bookingStatus=both&dateFrom={date_from}"
            ));
            while let Some(path) = next {
                let page = get(path).await;
                for kind in ["booked", "pending"] {
                    for t in page["transactions"][kind].as_array().into_iter().flatten() {
                        ids.insert(t["transactionId"].as_str().unwrap().to_owned());
                    }
                }
                next = page["transactions"]["_links"]["next"]["href"]
                    .as_str()
                    .map(str::to_owned);
            }
        }
        balances.insert(bank.to_owned(), list);
        transaction_ids.insert(bank.to_owned(), ids);
    }
    let feed = http
        .get(format!("{base}/ecb/eurofxref-daily.xml"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let re = regex::Regex::new(r"currency='([A-Z]{3})' rate='([0-9.]+)'").unwrap();
    let mut rates: BTreeMap<String, Decimal> = re
        .captures_iter(&feed)
        .map(|c| (c[1].to_owned(), Decimal::from_str(&c[2]).unwrap()))
        .collect();
    rates.insert("EUR".into(), Decimal::ONE);
    Truth {
        balances,
        transaction_ids,
        rates,
    }
}

fn cents(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn three_banks_aggregated_correct_to_the_cent_with_failures_isolated() {
    let w = Bundle::start(SECRET, &[]).await;
    let mut connections = BTreeMap::new();
    for bank in BANKS {
        connections.insert(bank, linked(&w, "alice", bank).await);
    }
    let bobs = linked(&w, "bob", "lt-alpha").await;

    // Accounts: 3 banks x 3 accounts, IBANs masked.
    let (status, accounts) = w.call("alice", Method::GET, "/v1/accounts", None).await;
    assert_eq!(status, 200, "{accounts}");
    let list = accounts["accounts"].as_array().unwrap();
    assert_eq!(list.len(), 9, "{accounts}");
    assert!(
        accounts["errors"].as_array().unwrap().is_empty(),
        "{accounts}"
    );
    for bank in BANKS {
        assert_eq!(list.iter().filter(|a| a["bankId"] == bank).count(), 3);
    }
    assert!(
        list.iter()
            .all(|a| a["iban"].as_str().unwrap().contains('*')
                || a["iban"].as_str().unwrap().len() < 15),
        "{list:?}"
    );

    // Balances in EUR, to the cent against the sandbox and the ECB feed.
    let today = chrono::Utc::now().date_naive();
    let from = (today - chrono::Days::new(30)).to_string();
    let t = truth(&w, &from).await;
    let (status, balances) = w
        .call("alice", Method::GET, "/v1/balances?baseCurrency=EUR", None)
        .await;
    assert_eq!(status, 200, "{balances}");
    assert!(
        balances["errors"].as_array().unwrap().is_empty(),
        "{balances}"
    );
    let mut expected_total = Decimal::ZERO;
    for (bank, accounts) in &t.balances {
        for (id, currency, amount) in accounts {
            let key = format!("{}:{id}", connections[bank.as_str()]);
            let shown = balances["accounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["accountId"] == key.as_str())
                .unwrap_or_else(|| panic!("{key} in {balances}"));
            assert_eq!(dec(&shown["balance"]["amount"]), *amount, "{shown}");
            assert_eq!(shown["balance"]["currency"], currency.as_str());
            let eur = cents(*amount / t.rates[currency]);
            assert_eq!(dec(&shown["converted"]["amount"]["amount"]), eur, "{shown}");
            expected_total += eur;
        }
    }
    assert_eq!(dec(&balances["total"]["amount"]["amount"]), expected_total);
    assert_eq!(balances["total"]["complete"], true);
    assert!(balances["total"]["ratesAsOf"].is_string());
    assert!(balances["rates"]["USD"].is_string() && balances["rates"]["SEK"].is_string());

    // Transactions: every page of every account, once each, newest first, categorised.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/transactions?dateFrom={from}&limit=500");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = w.call("alice", Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["transactions"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: usize = t.transaction_ids.values().map(HashSet::len).sum();
    assert!(expected > 150, "the sandbox pages (50 a page): {expected}");
    assert_eq!(seen.len(), expected, "every transaction, once");
    let ids: HashSet<String> = seen
        .iter()
        .map(|x| x["transactionId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), expected, "no duplicates");
    for bank in BANKS {
        assert!(
            t.transaction_ids[bank].iter().all(|id| ids.contains(id)),
            "{bank}"
        );
    }
    let dates: Vec<&str> = seen
        .iter()
        .map(|x| x["bookingDate"].as_str().unwrap())
        .collect();
    assert!(dates.windows(2).all(|d| d[0] >= d[1]), "newest first");
    assert!(seen.iter().any(|x| x["category"] == "groceries"));
    assert!(seen.iter().any(|x| x["category"] == "salary"));
    let (_, groceries) = w
        .call(
            "alice",
            Method::GET,
            &format!(
                "/v1/transactions?dateFrom={from}&category=groceries&bankId=lt-alpha&limit=500"
            ),
            None,
        )
        .await;
    let g = groceries["transactions"].as_array().unwrap();
    assert!(!g.is_empty());
    assert!(
        g.iter()
            .all(|x| x["category"] == "groceries" && x["bankId"] == "lt-alpha")
    );

    // Spending: per category, in EUR, consistent with the transactions.
    let (status, spending) = w
        .call(
            "alice",
            Method::GET,
            &format!("/v1/insights/spending?dateFrom={from}&baseCurrency=EUR"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{spending}");
    let listed: usize = spending["spending"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spending["income"].as_array().unwrap())
        .map(|c| c["count"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(listed, expected);
    let sum: Decimal = spending["spending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| dec(&c["total"]["amount"]))
        .sum();
    assert_eq!(sum, dec(&spending["totalSpending"]["amount"]));

    // A bank that fails, and one that answers 429: the others still come back.
    w.sandbox
        .set_faults(json!({"bank": "lv-baltija", "errorRate": 1.0}))
        .await;
    w.sandbox
        .set_faults(json!({"bank": "ee-pohja", "rateLimitRate": 1.0, "retryAfterSecs": 30}))
        .await;
    let (status, partial) = w
        .call(
            "alice",
            Method::GET,
            "/v1/balances?baseCurrency=EUR&refresh=true",
            None,
        )
        .await;
    assert_eq!(status, 200, "{partial}");
    let errors = partial["errors"].as_array().unwrap();
    let failed: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e["bankId"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert!(
        failed.contains(&("lv-baltija", "BANK_UNAVAILABLE")),
        "{partial}"
    );
    assert!(
        failed.contains(&("ee-pohja", "ACCESS_EXCEEDED")),
        "{partial}"
    );
    let limited = errors.iter().find(|e| e["bankId"] == "ee-pohja").unwrap();
    assert_eq!(limited["retryAfter"], 30);
    // lt-alpha fresh; the failing banks served from their snapshots, with their age.
    assert_eq!(
        partial["accounts"].as_array().unwrap().len(),
        9,
        "{partial}"
    );
    let sources = partial["sources"].as_array().unwrap();
    let source = |bank: &str| sources.iter().find(|s| s["bankId"] == bank).unwrap();
    assert_eq!(source("lt-alpha")["fromSnapshot"], false);
    assert_eq!(source("ee-pohja")["fromSnapshot"], true);
    assert!(source("ee-pohja")["ageSeconds"].is_number());
    w.sandbox.clear_faults().await;

    // Bad input names its field.
    for (path, field) in [
        (
            "/v1/transactions?dateFrom=2026-02-01&dateTo=2026-01-01",
            "dateFrom",
        ),
        ("/v1/balances?baseCurrency=XYZ", "baseCurrency"),
        ("/v1/transactions?limit=0", "limit"),
        ("/v1/transactions?limit=10000", "limit"),
        ("/v1/transactions?cursor=garbage!", "cursor"),
        ("/v1/insights/spending?baseCurrency=EURO", "baseCurrency"),
        ("/v1/transactions?category=nonsense", "category"),
    ] {
        let (status, problem) = w.call("alice", Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{path}: {problem}");
    }

    // Bob sees only his own bank.
    let (_, bob) = w.call("bob", Method::GET, "/v1/accounts", None).await;
    let bob_accounts = bob["accounts"].as_array().unwrap();
    assert_eq!(bob_accounts.len(), 3);
    assert!(
        bob_accounts
            .iter()
            .all(|a| a["connectionId"] == bobs.as_str())
    );

    // Revoking a connection purges its cached data: its metas beside its consent and its
    // partition of the bank data table (the access counters).
    let dynamodb = w.rt.local.dynamodb();
    let data_table = w.rt.local.resources.table("BankDataTable").to_owned();
    let consents_table = w.rt.local.resources.table("ConsentsTable").to_owned();
    let items = |consent: String| {
        let dynamodb = dynamodb.clone();
        let (data_table, consents_table) = (data_table.clone(), consents_table.clone());
        async move {
            use aws_sdk_dynamodb::types::AttributeValue::S;
            let data = dynamodb
                .query()
                .table_name(data_table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", S(format!("DATA#alice#{consent}")))
                .send()
                .await
                .unwrap()
                .count;
            let metas = dynamodb
                .query()
                .table_name(consents_table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :data)")
                .expression_attribute_values(":pk", S("USER#alice".into()))
                .expression_attribute_values(":data", S("DATA#".into()))
                .send()
                .await
                .unwrap()
                .items
                .unwrap_or_default()
                .iter()
                .filter(|item| item["sk"].as_s().unwrap().ends_with(&consent))
                .count();
            (data, metas)
        }
    };
    let alpha = connections["lt-alpha"].clone();
    let (counters, metas) = items(alpha.clone()).await;
    assert!(
        counters >= 3 && metas == 3,
        "a snapshot exists: {counters} {metas}"
    );
    let (status, _) = w
        .call(
            "alice",
            Method::DELETE,
            &format!("/v1/connections/{alpha}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        items(alpha).await,
        (0, 0),
        "the revoked connection's cached data is gone"
    );
    let (_, after) = w.call("alice", Method::GET, "/v1/accounts", None).await;
    assert_eq!(after["accounts"].as_array().unwrap().len(), 6);

    w.stop().await;
}

#[tokio::test]
async fn twenty_reads_stay_within_the_banks_daily_access_limit() {
    // Every read wants fresh data: only the budget stops it.
    let w = Bundle::start(SECRET, &[("SNAPSHOT_MAX_AGE_SECS", "0".to_owned())]).await;
    for bank in BANKS {
        linked(&w, "carol", bank).await;
    }
    for i in 0..20 {
        let path = if i % 2 == 0 {
            "/v1/balances"
        } else {
            "/v1/transactions?limit=5"
        };
        let (status, answer) = w.call("carol", Method::GET, path, None).await;
        assert_eq!(status, 200, "{answer}");
        assert!(
            !answer.to_string().contains("ACCESS_EXCEEDED"),
            "the bank never had to refuse: {answer}"
        );
    }
    // The sandbox's log: reads without PSU-IP-Address, per bank and resource.
    let log = w.sandbox.get_json("requests").await;
    let mut unattended: BTreeMap<(String, String), u32> = BTreeMap::new();
    for r in log.as_array().unwrap() {
        let path = r["path"].as_str().unwrap();
        if r["method"] != "GET" || !path.contains("/v1/accounts") {
            continue;
        }
        if r["headers"].get("psu-ip-address").is_some() {
            continue;
        }
        // Follow-up pages of a listing are not separate accesses (the bank does not
        // count them either).
        if r["query"]
            .as_str()
            .is_some_and(|q| q.contains("pageIndex=") && !q.contains("pageIndex=0"))
        {
            continue;
        }
        let resource = path.split("/v1/").nth(1).unwrap().to_owned();
        *unattended
            .entry((r["bank"].as_str().unwrap().to_owned(), resource))
            .or_default() += 1;
    }
    let limit = |bank: &str| if bank == "ee-pohja" { 2 } else { 4 };
    assert!(!unattended.is_empty());
    for ((bank, resource), n) in &unattended {
        assert!(*n <= limit(bank), "{bank} {resource}: {n} unattended reads");
    }
    // The budget was used up (20 reads wanted more), never exceeded.
    assert!(
        unattended
            .iter()
            .any(|((bank, r), n)| r == "accounts" && *n == limit(bank)),
        "{unattended:?}"
    );
    // The answers said why the data was not fresh.
    let (_, last) = w.call("carol", Method::GET, "/v1/balances", None).await;
    assert!(last.to_string().contains("ACCESS_LIMIT_REACHED"), "{last}");
    // A user-present refresh still works and is not counted.
    let (status, fresh) = w
        .call("carol", Method::GET, "/v1/balances?refresh=true", None)
        .await;
    assert_eq!(status, 200);
    assert!(fresh["errors"].as_array().unwrap().is_empty(), "{fresh}");
    w.stop().await;
}

/// A refresh in which one account's transactions fail at the bank: that account's stored
/// transactions are still shown, and still stored afterwards, while the others refresh.
#[tokio::test]
async fn a_failing_account_keeps_its_stored_transactions_while_the_others_refresh() {
    let w = Bundle::start(SECRET, &[]).await;
    linked(&w, "dave", "lt-alpha").await;
    let from = (chrono::Utc::now().date_naive() - chrono::Days::new(30)).to_string();
    let path = format!("/v1/transactions?dateFrom={from}&limit=500");
    let per_account = |page: &Value| {
        let mut counts: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for t in page["transactions"].as_array().unwrap() {
            counts
                .entry(t["accountId"].as_str().unwrap().to_owned())
                .or_default()
                .insert(t["transactionId"].as_str().unwrap().to_owned());
        }
        counts
    };

    let (status, first) = w.call("dave", Method::GET, &path, None).await;
    assert_eq!(status, 200, "{first}");
    assert!(first["errors"].as_array().unwrap().is_empty(), "{first}");
    assert!(
        first["nextCursor"].is_null(),
        "one page holds them: {first}"
    );
    let before = per_account(&first);
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.values().all(|ids| !ids.is_empty()), "{before:?}");

    // One account's transactions fail at the bank while the user refreshes.
    let victim = before.keys().next().unwrap().clone();
    let resource = victim.split_once(':').unwrap().1.to_owned();
    w.sandbox
        .set_faults(json!({
            "bank": "lt-alpha",
            "errorRate": 1.0,
            "pathContains": format!("/accounts/{resource}/transactions"),
        }))
        .await;
    let (status, refreshed) = w
        .call("dave", Method::GET, &format!("{path}&refresh=true"), None)
        .await;
    assert_eq!(status, 200, "{refreshed}");
    let errors = refreshed["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{refreshed}");
    assert_eq!(errors[0]["accountId"], victim.as_str(), "{refreshed}");
    assert_eq!(
        refreshed["sources"][0]["fromSnapshot"], false,
        "{refreshed}"
    );
    assert_eq!(
        per_account(&refreshed),
        before,
        "the victim's stored ones are shown"
    );
    w.sandbox.clear_faults().await;

    // From the snapshot written by that refresh: the victim's transactions were kept in it.
    let (status, later) = w.call("dave", Method::GET, &path, None).await;
    assert_eq!(status, 200, "{later}");
    assert!(later["errors"].as_array().unwrap().is_empty(), "{later}");
    assert_eq!(later["sources"][0]["fromSnapshot"], true, "{later}");
    assert_eq!(per_account(&later), before);
    w.stop().await;
}
