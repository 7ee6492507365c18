//! The real Berlin Group connector against the sandbox bank: every endpoint, the error
//! mapping (tppMessages, 429 + Retry-After, timeouts, 5xx) and payment de-duplication.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chrono::{Days, Utc};
use infra::sandbox::SandboxConfig;
use integration_tests::Sandbox;
use shared::bank::{
    BankApi, BankError, BookingStatus, ConsentAccess, ConsentRequest, PaymentInitiation,
    PaymentProduct, PsuContext, RedirectUris, ScaLink, TransactionQuery, TransactionState,
};
use shared::domain::{
    BankConsentId, ConsentStatus, Currency, Iban, Money, RequestId, TransactionStatus,
};

const PSU_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

fn redirect() -> RedirectUris {
    RedirectUris {
        ok: "https://tpp.example/v1/callbacks/sca?state=ok"
            .parse()
            .unwrap(),
        nok: Some(
            "https://tpp.example/v1/callbacks/sca?state=nok"
                .parse()
                .unwrap(),
        ),
    }
}

fn consent_request(days: u64, frequency: u32) -> ConsentRequest {
    ConsentRequest {
        access: ConsentAccess::AllAccounts,
        recurring: true,
        valid_until: Utc::now().date_naive() + Days::new(days),
        frequency_per_day: frequency,
        psu_ip: PSU_IP,
        psu_id: None,
        redirect: redirect(),
    }
}

fn config() -> SandboxConfig {
    SandboxConfig {
        payment_step: Duration::from_millis(100),
        page_size: 25,
        ..SandboxConfig::default()
    }
}

async fn valid_consent(sandbox: &Sandbox, bank_id: &str, frequency: u32) -> BankConsentId {
    let bank = sandbox.bank(bank_id);
    let created = bank
        .create_consent(&consent_request(90, frequency))
        .await
        .unwrap();
    sandbox
        .decide(bank_id, "consents", created.consent_id.as_str(), "approve")
        .await;
    created.consent_id
}

#[tokio::test]
async fn consent_lifecycle_and_account_information() {
    let sandbox = Sandbox::start(config()).await;
    let bank = sandbox.bank("lt-alpha");

    let created = bank.create_consent(&consent_request(90, 4)).await.unwrap();
    assert_eq!(created.status, ConsentStatus::Received);
    let Some(ScaLink::Redirect(sca)) = &created.sca else {
        panic!("lt-alpha answers with scaRedirect: {:?}", created.sca)
    };
    assert!(sca.as_str().starts_with(&sandbox.handle.base_url), "{sca}");

    // Not yet authorised: the bank refuses account access with a typed error.
    let err = bank
        .accounts(&created.consent_id, &PsuContext::present(PSU_IP))
        .await
        .unwrap_err();
    assert!(matches!(err, BankError::ConsentInvalid { .. }), "{err:?}");

    let decided = sandbox
        .decide(
            "lt-alpha",
            "consents",
            created.consent_id.as_str(),
            "approve",
        )
        .await;
    assert_eq!(
        decided["redirect"],
        "https://tpp.example/v1/callbacks/sca?state=ok"
    );
    assert_eq!(
        bank.consent_status(&created.consent_id).await.unwrap(),
        ConsentStatus::Valid
    );
    let details = bank.get_consent(&created.consent_id).await.unwrap();
    assert_eq!(details.status, ConsentStatus::Valid);
    assert_eq!(details.frequency_per_day, 4);
    assert!(details.recurring);
    assert_eq!(details.valid_until, Utc::now().date_naive() + Days::new(90));

    let psu = PsuContext::present(PSU_IP);
    let accounts = bank.accounts(&created.consent_id, &psu).await.unwrap();
    let currencies: HashSet<&str> = accounts.iter().map(|a| a.currency.code()).collect();
    assert!(accounts.len() >= 3, "{accounts:?}");
    assert!(
        currencies.contains("EUR") && currencies.contains("USD"),
        "{currencies:?}"
    );
    assert!(
        accounts
            .iter()
            .all(|a| a.iban.as_ref().is_some_and(|i| i.country_code() == "LT"))
    );

    let eur = accounts
        .iter()
        .find(|a| a.currency.code() == "EUR")
        .unwrap();
    let balances = bank
        .balances(&created.consent_id, &eur.id, &psu)
        .await
        .unwrap();
    assert!(
        balances
            .iter()
            .any(|b| b.balance_type == shared::bank::BalanceType::InterimAvailable)
    );
    assert!(
        balances
            .iter()
            .any(|b| b.balance_type == shared::bank::BalanceType::ClosingBooked)
    );
    assert!(balances.iter().all(|b| b.amount.currency().code() == "EUR"));

    // Months of transactions at 25 per page: the connector must follow every page.
    sandbox
        .http
        .delete(sandbox.admin("requests"))
        .send()
        .await
        .unwrap();
    let query = TransactionQuery {
        booking_status: BookingStatus::Both,
        date_from: Some(Utc::now().date_naive() - Days::new(120)),
        date_to: None,
    };
    let txs = bank
        .transactions(&created.consent_id, &eur.id, &query, &psu)
        .await
        .unwrap();
    let pages = sandbox
        .get_json("requests?bank=lt-alpha")
        .await
        .as_array()
        .unwrap()
        .len();
    assert!(pages >= 2, "expected several pages, saw {pages} requests");
    assert!(
        txs.len() > 25 * (pages - 1),
        "{} transactions over {pages} pages",
        txs.len()
    );
    let ids: HashSet<_> = txs
        .iter()
        .filter_map(|t| t.transaction_id.clone())
        .collect();
    assert_eq!(
        ids.len(),
        txs.len(),
        "every transaction once, each with an id"
    );
    assert!(txs.iter().any(|t| t.state == TransactionState::Pending));
    assert!(
        txs.iter().any(|t| t.amount.is_negative()) && txs.iter().any(|t| t.amount.is_positive())
    );
    assert!(txs.iter().any(|t| t.merchant_category_code.is_some()));
    let from = query.date_from.unwrap();
    assert!(txs.iter().filter_map(|t| t.booking_date).all(|d| d >= from));

    let booked_only = TransactionQuery {
        booking_status: BookingStatus::Booked,
        ..query
    };
    let booked = bank
        .transactions(&created.consent_id, &eur.id, &booked_only, &psu)
        .await
        .unwrap();
    assert!(booked.iter().all(|t| t.state == TransactionState::Booked));
    assert!(booked.len() < txs.len());

    bank.delete_consent(&created.consent_id).await.unwrap();
    assert_eq!(
        bank.consent_status(&created.consent_id).await.unwrap(),
        ConsentStatus::TerminatedByTpp
    );
}

#[tokio::test]
async fn sca_oauth_links_are_understood() {
    let sandbox = Sandbox::start(config()).await;
    let created = sandbox
        .bank("ee-pohja")
        .create_consent(&consent_request(30, 2))
        .await
        .unwrap();
    assert!(
        matches!(created.sca, Some(ScaLink::OAuth(_))),
        "{:?}",
        created.sca
    );
}

#[tokio::test]
async fn tpp_messages_become_typed_errors() {
    let sandbox = Sandbox::start(config()).await;
    let bank = sandbox.bank("lv-baltija");

    // A consent the PSU revoked and one that expired.
    let revoked = valid_consent(&sandbox, "lv-baltija", 4).await;
    let expired = valid_consent(&sandbox, "lv-baltija", 4).await;
    for (id, status) in [(&revoked, "revokedByPsu"), (&expired, "expired")] {
        sandbox
            .http
            .post(sandbox.admin(&format!("consents/lv-baltija/{id}/status")))
            .json(&serde_json::json!({ "consentStatus": status }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
    let psu = PsuContext::present(PSU_IP);
    assert_eq!(
        bank.consent_status(&revoked).await.unwrap(),
        ConsentStatus::RevokedByPsu
    );
    assert!(matches!(
        bank.accounts(&revoked, &psu).await,
        Err(BankError::ConsentInvalid { .. })
    ));
    assert_eq!(
        bank.accounts(&expired, &psu).await.unwrap_err(),
        BankError::ConsentExpired
    );

    let unknown = BankConsentId::parse("no-such-consent").unwrap();
    let err = bank.consent_status(&unknown).await.unwrap_err();
    assert!(
        matches!(err, BankError::ConsentInvalid { ref code, .. } if code == "CONSENT_UNKNOWN"),
        "{err:?}"
    );

    // validUntil in the past is a format error the bank explains.
    let err = bank
        .create_consent(&ConsentRequest {
            valid_until: Utc::now().date_naive() - Days::new(1),
            ..consent_request(1, 4)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, BankError::FormatError { .. }), "{err:?}");
    assert!(!err.is_transient());

    // An account outside the consent.
    let valid = valid_consent(&sandbox, "lv-baltija", 4).await;
    let err = bank
        .balances(
            &valid,
            &shared::domain::AccountId::parse("not-an-account").unwrap(),
            &psu,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BankError::ResourceUnknown { .. }), "{err:?}");
}

#[tokio::test]
async fn frequency_limit_without_the_user_is_access_exceeded() {
    let sandbox = Sandbox::start(config()).await;
    let bank = sandbox.bank("lt-alpha");
    let consent = valid_consent(&sandbox, "lt-alpha", 2).await;
    let background = PsuContext::absent();
    bank.accounts(&consent, &background).await.unwrap();
    bank.accounts(&consent, &background).await.unwrap();
    let err = bank.accounts(&consent, &background).await.unwrap_err();
    assert!(matches!(err, BankError::AccessExceeded { .. }), "{err:?}");
    assert!(err.is_transient());
    // With the user present the limit does not apply.
    bank.accounts(&consent, &PsuContext::present(PSU_IP))
        .await
        .unwrap();
}

#[tokio::test]
async fn rate_limits_server_errors_and_timeouts() {
    let sandbox = Sandbox::start_with(config(), |b| b.timeout_ms = 400).await;
    let bank = sandbox.bank("lt-alpha");
    let consent = valid_consent(&sandbox, "lt-alpha", 4).await;
    let psu = PsuContext::present(PSU_IP);

    sandbox
        .set_faults(
            serde_json::json!({"bank": "lt-alpha", "rateLimitRate": 1.0, "retryAfterSecs": 3}),
        )
        .await;
    let err = bank.accounts(&consent, &psu).await.unwrap_err();
    assert_eq!(
        err,
        BankError::AccessExceeded {
            retry_after: Some(Duration::from_secs(3))
        }
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));

    sandbox
        .set_faults(serde_json::json!({"bank": "lt-alpha", "errorRate": 1.0}))
        .await;
    let err = bank.consent_status(&consent).await.unwrap_err();
    assert!(
        matches!(
            err,
            BankError::Unavailable {
                status: Some(500..=599),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());

    sandbox
        .set_faults(serde_json::json!({"bank": "lt-alpha", "hangRate": 1.0, "hangMs": 5000}))
        .await;
    let started = std::time::Instant::now();
    let err = bank.consent_status(&consent).await.unwrap_err();
    assert_eq!(err, BankError::Timeout(Duration::from_millis(400)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up at the deadline, not at the hang"
    );

    // Faults for one bank leave the others alone.
    let other = valid_consent(&sandbox, "lv-baltija", 4).await;
    sandbox
        .bank("lv-baltija")
        .accounts(&other, &psu)
        .await
        .unwrap();

    sandbox.clear_faults().await;
    bank.accounts(&consent, &psu).await.unwrap();
}

fn payment(creditor: &str, name: &str, amount: &str, request_id: RequestId) -> PaymentInitiation {
    PaymentInitiation {
        product: PaymentProduct::SepaCreditTransfers,
        request_id,
        debtor: Iban::parse("LT121000011101001000").unwrap(),
        creditor: Iban::parse(creditor).unwrap(),
        creditor_name: name.into(),
        amount: Money::parse_instructed(amount, Currency::parse("EUR").unwrap()).unwrap(),
        remittance: Some("Invoice 2026-117".into()),
        end_to_end_id: None,
        psu_ip: PSU_IP,
        redirect: redirect(),
    }
}

async fn wait_for_final(
    bank: &dyn BankApi,
    id: &shared::domain::BankPaymentId,
) -> Vec<TransactionStatus> {
    let mut seen = vec![];
    for _ in 0..100 {
        let status = bank
            .payment_status(PaymentProduct::SepaCreditTransfers, id)
            .await
            .unwrap();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status.is_final() {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("payment never reached a final status: {seen:?}");
}

#[tokio::test]
async fn payment_initiation_is_deduplicated_and_reaches_a_final_status() {
    let sandbox = Sandbox::start(config()).await;
    let bank = sandbox.bank("lt-alpha");
    let request_id = RequestId::new();
    let p = payment(
        "DE89370400440532013000",
        "Jonas Jonaitis",
        "125.50",
        request_id,
    );

    let first = bank.initiate_payment(&p).await.unwrap();
    assert_eq!(first.status, TransactionStatus::Rcvd);
    assert!(first.sca.is_some());
    // A retry after a crash: same X-Request-ID, the bank answers with the same payment.
    let again = bank.initiate_payment(&p).await.unwrap();
    assert_eq!(again.payment_id, first.payment_id);
    let counts = sandbox.get_json("counts").await;
    assert_eq!(counts["paymentInitiations"]["lt-alpha"], 1, "{counts}");

    sandbox
        .decide("lt-alpha", "payments", first.payment_id.as_str(), "approve")
        .await;
    let seen = wait_for_final(bank.as_ref(), &first.payment_id).await;
    assert_eq!(seen.last(), Some(&TransactionStatus::Acsc), "{seen:?}");

    // A different request id is a different payment.
    let other = bank
        .initiate_payment(&payment(
            "DE89370400440532013000",
            "Jonas Jonaitis",
            "125.50",
            RequestId::new(),
        ))
        .await
        .unwrap();
    assert_ne!(other.payment_id, first.payment_id);
}

#[tokio::test]
async fn rejected_creditor_and_denied_sca_end_rejected() {
    let sandbox = Sandbox::start(config()).await;
    let bank = sandbox.bank("lt-alpha");

    let rejected = bank
        .initiate_payment(&payment(
            "LT601010012345678901",
            "Blocked Creditor UAB",
            "10.00",
            RequestId::new(),
        ))
        .await
        .unwrap();
    sandbox
        .decide(
            "lt-alpha",
            "payments",
            rejected.payment_id.as_str(),
            "approve",
        )
        .await;
    assert_eq!(
        wait_for_final(bank.as_ref(), &rejected.payment_id)
            .await
            .last(),
        Some(&TransactionStatus::Rjct)
    );

    let denied = bank
        .initiate_payment(&payment(
            "DE89370400440532013000",
            "Jonas Jonaitis",
            "1.00",
            RequestId::new(),
        ))
        .await
        .unwrap();
    sandbox
        .decide("lt-alpha", "payments", denied.payment_id.as_str(), "deny")
        .await;
    let status = bank
        .payment_status(PaymentProduct::SepaCreditTransfers, &denied.payment_id)
        .await
        .unwrap();
    assert!(status.is_rejected(), "{status:?}");

    let unknown = shared::domain::BankPaymentId::parse("nope").unwrap();
    assert!(matches!(
        bank.payment_status(PaymentProduct::SepaCreditTransfers, &unknown)
            .await,
        Err(BankError::ResourceUnknown { .. })
    ));
}

/// The `parallelPages` quirk: the same transactions, in the same order, as following
/// `_links.next` one page at a time, but the bank's latency counts about twice (the first
/// page, then all the others together) instead of once per page. The time the same
/// listing takes without latency (the sandbox's and the parsing's CPU time, large in
/// debug builds) is measured and taken out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_pages_return_exactly_what_sequential_paging_returns_in_two_round_trips() {
    const LATENCY_MS: u64 = 500;
    let sandbox = Sandbox::start(config()).await;
    let consent = valid_consent(&sandbox, "lt-alpha", 4).await;
    let bank_config = |parallel: bool| {
        let mut bank = sandbox
            .registry
            .get(&shared::domain::BankId::parse("lt-alpha").unwrap())
            .unwrap()
            .clone();
        bank.quirks.parallel_pages = parallel;
        bank
    };
    let sequential =
        shared::bank::berlin_group::BerlinGroupConnector::new(bank_config(false)).unwrap();
    let parallel =
        shared::bank::berlin_group::BerlinGroupConnector::new(bank_config(true)).unwrap();
    let psu = PsuContext::present(PSU_IP);
    let accounts = sequential.accounts(&consent, &psu).await.unwrap();
    let query = TransactionQuery {
        booking_status: BookingStatus::Both,
        date_from: Some(Utc::now().date_naive() - Days::new(120)),
        date_to: None,
    };
    let requests = || async {
        sandbox.get_json("counts").await["byBank"]["lt-alpha"]
            .as_u64()
            .unwrap()
    };
    // (transactions, bank calls, wall time) of one listing.
    let list = async |connector: &shared::bank::berlin_group::BerlinGroupConnector,
                      account: &shared::domain::AccountId| {
        let before = requests().await;
        let started = std::time::Instant::now();
        let txs = connector
            .transactions(&consent, account, &query, &psu)
            .await
            .unwrap();
        let elapsed = started.elapsed();
        (txs, requests().await - before, elapsed)
    };

    // Every account (one page or several): the same list, the same pages.
    let mut longest = None;
    for account in &accounts {
        let (one_by_one, pages, _) = list(&sequential, &account.id).await;
        let (together, parallel_pages, _) = list(&parallel, &account.id).await;
        assert_eq!(together, one_by_one, "same transactions in the same order");
        assert_eq!(parallel_pages, pages, "every page fetched once");
        if longest.as_ref().is_none_or(|(_, p, _)| pages > *p) {
            longest = Some((account.id.clone(), pages, one_by_one));
        }
    }
    let (account, pages, expected) = longest.unwrap();
    assert!(pages >= 4, "a listing of several pages: {pages}");

    // The longest listing with latency: round trips the latency added.
    let mut base = Vec::new();
    for connector in [&sequential, &parallel] {
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..3 {
            times.push(list(connector, &account).await.2);
        }
        times.sort();
        base.push(times[1]);
    }
    sandbox
        .set_faults(serde_json::json!({ "latencyMs": LATENCY_MS }))
        .await;
    let round_trips = |with: Duration, without: Duration| {
        with.saturating_sub(without).as_secs_f64() * 1000.0 / LATENCY_MS as f64
    };
    let (txs, _, sequential_time) = list(&sequential, &account).await;
    assert_eq!(txs, expected);
    let sequential_trips = round_trips(sequential_time, base[0]);
    let (txs, _, parallel_time) = list(&parallel, &account).await;
    assert_eq!(txs, expected);
    let parallel_trips = round_trips(parallel_time, base[1]);
    assert!(
        sequential_trips > pages as f64 - 0.5,
        "{pages} pages one by one: {sequential_trips:.2} round trips"
    );
    assert!(
        (1.5..2.6).contains(&parallel_trips),
        "{pages} pages with parallelPages: {parallel_trips:.2} round trips \
         ({parallel_time:?}; {:?} without latency)",
        base[1]
    );
}

/// The `withBalance` quirk: one call returns the account list with every account's
/// balances, equal to the per-account balance reads; without the quirk the list comes
/// without balances (and `withBalance` is not sent: the same single call).
#[tokio::test]
async fn accounts_with_balances_in_one_call_equal_the_per_account_reads() {
    let sandbox = Sandbox::start(config()).await;
    let consent = valid_consent(&sandbox, "lv-baltija", 4).await;
    let connector = |with_balance: bool| {
        let mut bank = sandbox
            .registry
            .get(&shared::domain::BankId::parse("lv-baltija").unwrap())
            .unwrap()
            .clone();
        bank.quirks.with_balance = with_balance;
        shared::bank::berlin_group::BerlinGroupConnector::new(bank).unwrap()
    };
    let calls = || async {
        sandbox.get_json("counts").await["byBank"]["lv-baltija"]
            .as_u64()
            .unwrap()
    };
    let psu = PsuContext::present(PSU_IP);

    let with = connector(true);
    let before = calls().await;
    let listed = with.accounts_with_balances(&consent, &psu).await.unwrap();
    assert_eq!(
        calls().await - before,
        1,
        "one call for the list and balances"
    );
    assert_eq!(listed.len(), 3);
    for (account, balances) in &listed {
        let balances = balances.as_ref().expect("balances came with the list");
        assert!(!balances.is_empty());
        assert_eq!(
            balances,
            &with.balances(&consent, &account.id, &psu).await.unwrap(),
            "{:?}",
            account.id
        );
    }
    let plain: Vec<_> = listed.iter().map(|(a, _)| a.clone()).collect();
    assert_eq!(with.accounts(&consent, &psu).await.unwrap(), plain);

    let without = connector(false);
    let before = calls().await;
    let listed = without
        .accounts_with_balances(&consent, &psu)
        .await
        .unwrap();
    assert_eq!(calls().await - before, 1);
    assert!(listed.iter().all(|(_, b)| b.is_none()));
    assert_eq!(
        listed.into_iter().map(|(a, _)| a).collect::<Vec<_>>(),
        plain
    );
}
