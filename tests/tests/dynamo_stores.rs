//! The DynamoDB stores against local AWS, on tables provisioned from template.yaml.

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{Days, NaiveDate, Utc};
use integration_tests::LocalStack;
use shared::bank::{ConsentAccess, PaymentProduct};
use shared::domain::{
    BankConsentId, BankId, BatchId, ConsentId, ConsentState, Currency, Iban, Money, PaymentId,
    RequestId, TransactionStatus, UserId,
};
use shared::store::{
    ConsentRecord, ConsentStore, DynamoConsentStore, DynamoPaymentStore, PaymentFailure,
    PaymentRecord, PaymentState, PaymentStore, StatusEntry, StoreError, health_hour,
};

fn consent(user: &UserId, bank: &str, valid_until: NaiveDate) -> ConsentRecord {
    let now = Utc::now();
    ConsentRecord {
        user_id: user.clone(),
        consent_id: ConsentId::new(),
        bank_id: BankId::parse(bank).unwrap(),
        bank_consent_id: None,
        state: ConsentState::PendingAuthorization,
        access: ConsentAccess::AllAccounts,
        valid_until,
        frequency_per_day: 4,
        recurring: true,
        renewal_of: None,
        renewed_by: None,
        renewal_notified: false,
        lease_until: None,
        psu_ip: Some("203.0.113.7".parse().unwrap()),
        sca_url: None,
        created_at: now,
        updated_at: now,
        version: 0,
    }
}

#[tokio::test]
async fn consent_store_round_trip_listing_and_versions() {
    let local = LocalStack::provision().await;
    let store = DynamoConsentStore::new(local.dynamodb(), local.resources.table("ConsentsTable"));
    let alice = UserId::parse("alice").unwrap();
    let bob = UserId::parse("auth0|bob").unwrap();
    let day = Utc::now().date_naive() + Days::new(90);

    let a1 = consent(&alice, "lt-alpha", day);
    let a2 = consent(&alice, "lv-baltija", day);
    let b1 = consent(&bob, "lt-alpha", day);
    for c in [&a1, &a2, &b1] {
        store.insert(c).await.unwrap();
    }
    assert!(matches!(
        store.insert(&a1).await,
        Err(StoreError::AlreadyExists)
    ));

    assert_eq!(
        store.get(&alice, &a1.consent_id).await.unwrap(),
        Some(a1.clone())
    );
    // Keyed by user AND consent: another user's id is simply not there.
    assert_eq!(store.get(&bob, &a1.consent_id).await.unwrap(), None);
    let mut listed: Vec<_> = store
        .list_for_user(&alice)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.consent_id)
        .collect();
    listed.sort();
    let mut expected = vec![a1.consent_id.clone(), a2.consent_id.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    let mut valid = a1.clone();
    valid.state = valid
        .state
        .apply(shared::domain::ConsentEvent::BankReported(
            shared::domain::ConsentStatus::Valid,
        ))
        .unwrap();
    valid.bank_consent_id = Some(BankConsentId::parse("bank-consent-1").unwrap());
    let written = store.update(&valid).await.unwrap();
    assert_eq!(written.version, 1);
    assert_eq!(
        store.get(&alice, &a1.consent_id).await.unwrap(),
        Some(written.clone())
    );

    // A writer still holding version 0 loses, and is told so.
    let mut stale = a1.clone();
    stale.state = ConsentState::Rejected;
    assert!(matches!(
        store.update(&stale).await,
        Err(StoreError::VersionConflict { expected: 0 })
    ));
    assert_eq!(
        store
            .get(&alice, &a1.consent_id)
            .await
            .unwrap()
            .unwrap()
            .state,
        ConsentState::Valid
    );

    // Updating something that was never stored is not silently an insert.
    let ghost = consent(&alice, "lt-alpha", day);
    assert!(matches!(
        store.update(&ghost).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.get(&alice, &ghost.consent_id).await.unwrap(), None);

    local.teardown().await;
}

#[tokio::test]
async fn concurrent_updates_from_one_version_have_exactly_one_winner() {
    let local = LocalStack::provision().await;
    let store = DynamoConsentStore::new(local.dynamodb(), local.resources.table("ConsentsTable"));
    let user = UserId::parse("carol").unwrap();
    let c = consent(&user, "ee-pohja", Utc::now().date_naive() + Days::new(10));
    store.insert(&c).await.unwrap();

    let attempts = (0..8).map(|i| {
        let store = store.clone();
        let mut mine = c.clone();
        mine.frequency_per_day = i + 1;
        tokio::spawn(async move { store.update(&mine).await })
    });
    let results = futures_join(attempts).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    let losers = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::VersionConflict { expected: 0 })))
        .count();
    assert_eq!((winners, losers), (1, 7), "{results:?}");
    let stored = store.get(&user, &c.consent_id).await.unwrap().unwrap();
    assert_eq!(stored.version, 1);
    let winner = results.into_iter().find_map(Result::ok).unwrap();
    assert_eq!(stored, winner);

    local.teardown().await;
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

/// Which index keys the stored item carries (both indexes are sparse): (`gsi1pk`, `gsi2pk`).
async fn index_keys(
    local: &LocalStack,
    record: &ConsentRecord,
) -> (Option<String>, Option<String>) {
    let item = local
        .dynamodb()
        .get_item()
        .table_name(local.resources.table("ConsentsTable"))
        .key(
            "pk",
            AttributeValue::S(format!("USER#{}", record.user_id.as_str())),
        )
        .key(
            "sk",
            AttributeValue::S(format!("CONSENT#{}", record.consent_id.as_str())),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("stored");
    let key = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    (key("gsi1pk"), key("gsi2pk"))
}

/// Whether the stored item is in both indexes (`true`) or in neither (`false`).
async fn indexed(local: &LocalStack, record: &ConsentRecord) -> bool {
    match index_keys(local, record).await {
        (Some(_), Some(health)) => {
            assert!(
                health.starts_with(&format!("HEALTH#{:02}#", health_hour(&record.consent_id))),
                "{health}"
            );
            true
        }
        (None, None) => false,
        other => panic!("in one index only: {other:?}"),
    }
}

#[tokio::test]
async fn valid_until_index_holds_exactly_the_valid_consents_of_the_day() {
    let local = LocalStack::provision().await;
    let store = DynamoConsentStore::new(local.dynamodb(), local.resources.table("ConsentsTable"));
    let day = NaiveDate::from_ymd_opt(2027, 3, 1).unwrap();
    let user = UserId::parse("dave").unwrap();

    let mut valid_records = Vec::new();
    for i in 0..20 {
        let mut c = consent(
            &UserId::parse(&format!("user-{i}")).unwrap(),
            "lt-alpha",
            day,
        );
        c.state = ConsentState::Valid;
        store.insert(&c).await.unwrap();
        valid_records.push(c);
    }
    valid_records.sort_by(|a, b| a.consent_id.cmp(&b.consent_id));
    let pending = consent(&user, "lt-alpha", day); // not valid yet: not indexed
    store.insert(&pending).await.unwrap();
    let mut other_day = consent(&user, "lt-alpha", day + Days::new(1));
    other_day.state = ConsentState::Valid;
    store.insert(&other_day).await.unwrap();
    // Renewal finished: still valid, so still indexed (the health job must expire it).
    let mut notified = consent(&user, "ee-pohja", day);
    notified.state = ConsentState::Valid;
    notified.renewed_by = Some(ConsentId::new());
    notified.renewal_notified = true;
    store.insert(&notified).await.unwrap();
    let mut expired = consent(&user, "lv-baltija", day);
    expired.state = ConsentState::Expired;
    store.insert(&expired).await.unwrap();
    assert!(!indexed(&local, &pending).await);
    assert!(!indexed(&local, &expired).await);
    assert!(indexed(&local, &notified).await);
    assert!(indexed(&local, &other_day).await);
    valid_records.push(notified.clone());
    valid_records.sort_by(|a, b| a.consent_id.cmp(&b.consent_id));
    let valid: Vec<ConsentId> = valid_records.iter().map(|c| c.consent_id.clone()).collect();

    let found = |store: DynamoConsentStore| async move {
        let mut found: Vec<_> = store
            .valid_until_on(day)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.consent_id)
            .collect();
        found.sort();
        found
    };
    assert_eq!(found(store.clone()).await, valid);

    // Any write keeps a valid consent in the index, with its current attributes ...
    let mut renewing = valid_records[1].clone();
    renewing.renewed_by = Some(ConsentId::new());
    let renewing = store.update(&renewing).await.unwrap();
    assert!(indexed(&local, &renewing).await);
    let listed = store.valid_until_on(day).await.unwrap();
    assert!(
        listed.contains(&renewing),
        "the index projects every attribute"
    );
    assert_eq!(found(store.clone()).await, valid);

    // ... and leaving `valid` takes it out of both indexes.
    let mut superseded = valid_records[0].clone();
    superseded.state = ConsentState::Superseded;
    let superseded = store.update(&superseded).await.unwrap();
    assert!(!indexed(&local, &superseded).await);
    assert_eq!(found(store.clone()).await, valid[1..].to_vec());

    // The health index: every valid consent in its hour's bucket, over all shards.
    let mut by_hour = std::collections::BTreeMap::<u32, Vec<ConsentId>>::new();
    for c in valid_records[1..].iter().chain([&other_day]) {
        by_hour
            .entry(health_hour(&c.consent_id))
            .or_default()
            .push(c.consent_id.clone());
    }
    for hour in 0..24 {
        let mut found: Vec<ConsentId> = store
            .valid_for_health_hour(hour)
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.user_id == user || c.user_id.as_str().starts_with("user-"))
            .map(|c| c.consent_id)
            .collect();
        found.sort();
        let mut expected = by_hour.remove(&hour).unwrap_or_default();
        expected.sort();
        assert_eq!(found, expected, "hour {hour}");
    }

    local.teardown().await;
}

fn payment(user: &UserId) -> PaymentRecord {
    let now = Utc::now();
    PaymentRecord {
        user_id: user.clone(),
        payment_id: PaymentId::new(),
        bank_id: BankId::parse("lt-alpha").unwrap(),
        product: PaymentProduct::SepaCreditTransfers,
        request_id: RequestId::new(),
        debtor: Iban::parse("LT121000011101001000").unwrap(),
        creditor: Iban::parse("DE89370400440532013000").unwrap(),
        creditor_name: "Ona Onaitė".into(),
        amount: Money::parse_instructed("1234.50", Currency::parse("EUR").unwrap()).unwrap(),
        remittance: None,
        bank_payment_id: None,
        status: None,
        sca_url: None,
        history: vec![],
        psu_ip: None,
        redirect_url: None,
        lease_until: None,
        failure: None,
        sca_returned: false,
        poll: Default::default(),
        outcome_notified: false,
        batch_id: None,
        batch_index: None,
        queued: false,
        end_to_end_id: None,
        created_at: now,
        updated_at: now,
        version: 0,
    }
}

#[tokio::test]
async fn payment_store_round_trip_and_conflicts() {
    let local = LocalStack::provision().await;
    let store = DynamoPaymentStore::new(local.dynamodb(), local.resources.table("PaymentsTable"));
    let user = UserId::parse("erin").unwrap();
    let now = Utc::now();
    let p = payment(&user);
    store.insert(&p).await.unwrap();
    assert!(matches!(
        store.insert(&p).await,
        Err(StoreError::AlreadyExists)
    ));
    let loaded = store.get(&user, &p.payment_id).await.unwrap().unwrap();
    assert_eq!(loaded, p);
    assert_eq!(
        loaded.amount.to_minor_string(),
        "1234.50",
        "money survives storage exactly"
    );

    let mut accepted = loaded.clone();
    accepted.status = Some(TransactionStatus::Rcvd);
    accepted.history.push(StatusEntry {
        status: TransactionStatus::Rcvd,
        at: now,
    });
    let v1 = store.update(&accepted).await.unwrap();
    assert!(matches!(
        store.update(&accepted).await,
        Err(StoreError::VersionConflict { expected: 0 })
    ));
    assert_eq!(
        store.get(&user, &p.payment_id).await.unwrap(),
        Some(v1.clone())
    );
    assert_eq!(store.list_for_user(&user).await.unwrap(), vec![v1]);
    assert!(
        store
            .list_for_user(&UserId::parse("mallory").unwrap())
            .await
            .unwrap()
            .is_empty()
    );

    local.teardown().await;
}

#[tokio::test]
async fn rate_slots_in_bulk_never_exceed_the_limit() {
    let local = LocalStack::provision().await;
    let store = DynamoPaymentStore::new(local.dynamodb(), local.resources.table("PaymentsTable"));
    let bank = BankId::parse("lt-alpha").unwrap();
    let second = Utc::now().timestamp();
    assert_eq!(
        store.take_rate_slots(&bank, second, 30, 50).await.unwrap(),
        30
    );
    assert_eq!(
        store.take_rate_slots(&bank, second, 30, 50).await.unwrap(),
        20,
        "what is left"
    );
    assert_eq!(
        store.take_rate_slots(&bank, second, 5, 50).await.unwrap(),
        0
    );
    assert!(!store.take_rate_slot(&bank, second, 50).await.unwrap());
    // Concurrent takers asking for more than the limit in all never get more than it (a
    // taker that keeps losing races may come away short: never over).
    let takers = (0..8).map(|_| store.take_rate_slots(&bank, second + 1, 7, 50));
    let got: u32 = futures::future::join_all(takers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert!((43..=50).contains(&got), "{got}");
    assert_eq!(
        store
            .take_rate_slots(&bank, second + 1, 50, 50)
            .await
            .unwrap(),
        50 - got,
        "the rest, and not one more"
    );
    local.teardown().await;
}

/// The batch counts against the items themselves: every move between states shows once,
/// a stale or losing write moves nothing, and the items page in index order.
#[tokio::test]
async fn batch_counts_follow_every_move_and_items_page_in_order() {
    let local = LocalStack::provision().await;
    let store = DynamoPaymentStore::new(local.dynamodb(), local.resources.table("PaymentsTable"));
    let user = UserId::parse("frank").unwrap();
    let batch = BatchId::new();
    let items: Vec<PaymentRecord> = (0..30u32)
        .map(|i| PaymentRecord {
            batch_id: Some(batch.clone()),
            batch_index: Some(i),
            queued: true,
            ..payment(&user)
        })
        .collect();
    assert!(store.insert_many(&items).await.unwrap().iter().all(|s| *s));
    assert!(
        store.batch_counts(&user, &batch).await.unwrap().is_empty(),
        "all queued"
    );

    async fn all_items(
        store: &DynamoPaymentStore,
        user: &UserId,
        batch: &BatchId,
    ) -> Vec<PaymentRecord> {
        let (mut all, mut from) = (Vec::new(), 0);
        loop {
            let (page, more) = store.batch_items_page(user, batch, from, 7).await.unwrap();
            assert!(page.len() <= 7);
            if more {
                assert_eq!(page.len(), 7, "a full page before more");
            }
            from = page.last().map_or(from, |p| p.batch_index.unwrap() + 1);
            all.extend(page);
            if !more {
                return all;
            }
        }
    }
    async fn truth(
        store: &DynamoPaymentStore,
        user: &UserId,
        batch: &BatchId,
    ) -> std::collections::BTreeMap<PaymentState, u32> {
        let mut counts = std::collections::BTreeMap::new();
        for p in all_items(store, user, batch).await {
            if p.state() != PaymentState::Queued {
                *counts.entry(p.state()).or_default() += 1;
            }
        }
        counts
    }

    // Claims: queued → initiating.
    let mut current = Vec::new();
    for item in &items[..12] {
        let mut claimed = item.clone();
        claimed.queued = false;
        current.push(store.update(&claimed).await.unwrap());
    }
    // The bank: awaiting SCA, completed, rejected for good, failed transiently (queued).
    let rcvd = |p: &PaymentRecord| {
        let mut next = p.clone();
        next.status = Some(TransactionStatus::Rcvd);
        next.sca_url = Some("https://bank.example/sca".into());
        next
    };
    for p in current.iter_mut().take(5) {
        *p = store.update(&rcvd(p)).await.unwrap();
    }
    for p in current.iter_mut().skip(5).take(3) {
        let mut next = p.clone();
        next.status = Some(TransactionStatus::Acsc);
        *p = store.update(&next).await.unwrap();
    }
    for (p, retryable) in current.iter_mut().skip(8).take(2).zip([false, true]) {
        let mut next = p.clone();
        next.failure = Some(PaymentFailure {
            code: "FORMAT_ERROR".into(),
            retryable,
            at: Utc::now(),
        });
        *p = store.update(&next).await.unwrap();
    }
    // A write that changes no state moves nothing.
    let mut polled = current[0].clone();
    polled.poll.generation += 1;
    current[0] = store.update(&polled).await.unwrap();
    // A stale write is refused and moves nothing.
    let stale = rcvd(&items[0]);
    assert!(matches!(
        store.update(&stale).await,
        Err(StoreError::VersionConflict { .. })
    ));
    // Two writers from one version: one wins, and only its move is counted.
    let mut done = current[1].clone();
    done.status = Some(TransactionStatus::Acsc);
    let mut rejected = current[1].clone();
    rejected.status = Some(TransactionStatus::Rjct);
    let (a, b) = tokio::join!(store.update(&done), store.update(&rejected));
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
    let counts = store.batch_counts(&user, &batch).await.unwrap();
    assert_eq!(counts, truth(&store, &user, &batch).await);
    let count = |s: PaymentState| counts.get(&s).copied().unwrap_or(0);
    assert_eq!(count(PaymentState::AwaitingAuthorisation), 4);
    assert_eq!(
        count(PaymentState::Completed) + count(PaymentState::Rejected),
        4
    );
    assert_eq!(count(PaymentState::Failed), 1);
    assert_eq!(count(PaymentState::InProgress), 0);
    assert_eq!(count(PaymentState::Initiating), 2);
    assert_eq!(
        counts.values().sum::<u32>(),
        11,
        "18 never claimed and one back in the queue"
    );
    let all = all_items(&store, &user, &batch).await;
    assert_eq!(
        all.iter()
            .map(|p| p.batch_index.unwrap())
            .collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    assert!(
        store
            .batch_counts(&UserId::parse("mallory").unwrap(), &batch)
            .await
            .unwrap()
            .is_empty(),
        "another user sees nothing"
    );
    local.teardown().await;
}

/// The bank data snapshots of many connections read together (`read_snapshots`: the metas
/// in one BatchGetItem, holding small transaction sets packed; large sets in parts the meta
/// lists; items from before packing by a Query) equal what was written, leave the access
/// counters out, never mix connections or users, and a listed part that is missing is an
/// error. A new set replaces the old one and deletes its parts.
#[tokio::test]
async fn bank_data_snapshots_read_together_equal_what_was_written() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use shared::bank::{Account, Balance, BalanceType, Transaction, TransactionState};
    use shared::domain::AccountId;
    use shared::store::{
        AccessKind, AccountsSnapshot, BalancesSnapshot, BankDataStore, DynamoBankDataStore,
        Snapshot, StoredTransaction, TransactionsMeta,
    };
    use std::collections::BTreeMap;

    let local = LocalStack::provision().await;
    let table = local.resources.table("BankDataTable").to_owned();
    let consents_table = local.resources.table("ConsentsTable").to_owned();
    let dynamodb = local.dynamodb();
    let store = DynamoBankDataStore::new(dynamodb.clone(), table.clone(), consents_table.clone());
    let consent_store = DynamoConsentStore::new(dynamodb.clone(), consents_table.clone());
    let alice = UserId::parse("alice").unwrap();
    let bob = UserId::parse("bob").unwrap();
    let eur = Currency::parse("EUR").unwrap();
    let now = Utc::now();
    let today = now.date_naive();
    let covered_from = today - Days::new(90);
    let account = |n: usize| Account {
        id: AccountId::parse(&format!("acc-{n}")).unwrap(),
        iban: None,
        currency: eur,
        name: Some(format!("Account {n}")),
        product: None,
        cash_account_type: Some("CACC".into()),
    };
    // `noise` makes a transaction's text hard to compress (large sets need parts).
    let stored = |n: usize, account: &AccountId, noise: bool| StoredTransaction {
        id: format!("tx-{n}"),
        account_id: account.clone(),
        tx: Transaction {
            transaction_id: Some(format!("tx-{n}")),
            entry_reference: None,
            state: TransactionState::Booked,
            booking_date: Some(today - Days::new(n as u64 % 60)),
            value_date: None,
            amount: Money::parse(&format!("-{n}.25"), eur).unwrap(),
            creditor_name: Some("RIMI".into()),
            creditor_iban: None,
            debtor_name: None,
            debtor_iban: None,
            remittance: noise.then(|| {
                (0..4)
                    .map(|_| uuid::Uuid::new_v4().simple().to_string())
                    .collect::<String>()
            }),
            merchant_category_code: None,
            bank_transaction_code: None,
        },
    };
    let sorted = |mut list: Vec<StoredTransaction>| {
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    };
    let items_of = |pk: String| {
        let dynamodb = dynamodb.clone();
        let table = table.clone();
        async move {
            let out = dynamodb
                .query()
                .table_name(&table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(pk))
                .send()
                .await
                .unwrap();
            out.items
                .unwrap_or_default()
                .into_iter()
                .map(|item| item["sk"].as_s().unwrap().clone())
                .collect::<Vec<String>>()
        }
    };

    // 40 connections of alice (more than one BatchGetItem holds): accounts for all,
    // balances for every other one, transactions and access counters for some; one
    // connection's transactions too large for its meta.
    let mut consents = Vec::new();
    let mut written: BTreeMap<ConsentId, Vec<StoredTransaction>> = BTreeMap::new();
    for n in 0..40 {
        let mut record = consent(&alice, "lt-alpha", today + Days::new(90));
        record.state = ConsentState::Valid;
        record.bank_consent_id = Some(BankConsentId::parse(&format!("bank-{n}")).unwrap());
        consent_store.insert(&record).await.unwrap();
        let consent = record.consent_id;
        let acc = account(n);
        store
            .put_accounts(
                &alice,
                &consent,
                &AccountsSnapshot {
                    accounts: vec![acc.clone()],
                    fetched_at: now,
                },
            )
            .await
            .unwrap();
        if n % 2 == 0 {
            let balance = Balance {
                balance_type: BalanceType::InterimAvailable,
                amount: Money::parse(&format!("{n}.50"), eur).unwrap(),
                reference_date: Some(today),
            };
            store
                .put_balances(
                    &alice,
                    &consent,
                    &BalancesSnapshot {
                        balances: BTreeMap::from([(acc.id.as_str().to_owned(), vec![balance])]),
                        fetched_at: now,
                    },
                )
                .await
                .unwrap();
        }
        if n % 5 == 0 {
            let large = n == 10;
            let count = if large { 6_000 } else { 120 };
            let mut all: Vec<StoredTransaction> =
                (0..count).map(|i| stored(i, &acc.id, large)).collect();
            all.push(StoredTransaction {
                id: "pending-1".into(),
                ..stored(999_999, &acc.id, false)
            });
            store
                .put_transactions(&alice, &consent, now, covered_from, &all, None)
                .await
                .unwrap();
            written.insert(consent.clone(), all);
            for kind in [AccessKind::Accounts, AccessKind::Transactions] {
                assert!(
                    store
                        .claim_access(&alice, &consent, kind, today, 4)
                        .await
                        .unwrap()
                );
            }
        }
        consents.push(consent);
    }
    let meta_key = |letter: &str, consent: &ConsentId| {
        (
            AttributeValue::S("USER#alice".into()),
            AttributeValue::S(format!("DATA#{letter}#{}", consent.as_str())),
        )
    };
    let delete_meta = |letter: &'static str, consent: ConsentId| {
        let (dynamodb, consents_table) = (dynamodb.clone(), consents_table.clone());
        let (pk, sk) = meta_key(letter, &consent);
        async move {
            dynamodb
                .delete_item()
                .table_name(consents_table)
                .key("pk", pk)
                .key("sk", sk)
                .send()
                .await
                .unwrap();
        }
    };
    // A connection stored before packing, by an earlier release: JSON items by account and
    // month, a meta without a list, in the bank data table (none beside the consent).
    let legacy = consents[35].clone();
    delete_meta("T", legacy.clone()).await;
    let legacy_pk = format!("DATA#alice#{}", legacy.as_str());
    let legacy_tx: Vec<StoredTransaction> =
        (0..3).map(|i| stored(i, &account(35).id, false)).collect();
    for (sk, data) in [
        (
            "META#TRANSACTIONS".to_owned(),
            serde_json::json!({"fetchedAt": now, "coveredFrom": covered_from}).to_string(),
        ),
        (
            "TX#acc-35#2026-11#000".to_owned(),
            serde_json::to_string(&legacy_tx[..2]).unwrap(),
        ),
        (
            "TX#acc-35#PENDING".to_owned(),
            serde_json::to_string(&legacy_tx[2..]).unwrap(),
        ),
    ] {
        dynamodb
            .put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S(legacy_pk.clone()))
            .item("sk", AttributeValue::S(sk))
            .item("data", AttributeValue::S(data))
            .send()
            .await
            .unwrap();
    }
    // A crash after a new generation's parts but before its meta: the parts are not
    // listed, so the Query of the old items leaves them out.
    dynamodb
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S(legacy_pk.clone()))
        .item("sk", AttributeValue::S("PART#1#0000".into()))
        .item(
            "txz",
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                shared::store::bank_data::pack(&[stored(500, &account(35).id, false)]).unwrap(),
            )),
        )
        .send()
        .await
        .unwrap();
    written.insert(legacy.clone(), legacy_tx);
    // A connection whose account list an earlier release stored (in the bank data table)
    // and whose balances both places hold: the list is found there, the balances beside
    // the consent win.
    let moved = consents[36].clone();
    delete_meta("A", moved.clone()).await;
    let old_balance = Balance {
        balance_type: BalanceType::ClosingBooked,
        amount: Money::parse("1.00", eur).unwrap(),
        reference_date: Some(today),
    };
    for (sk, data) in [
        (
            "META#ACCOUNTS",
            serde_json::to_string(&AccountsSnapshot {
                accounts: vec![account(36)],
                fetched_at: now,
            })
            .unwrap(),
        ),
        (
            "META#BALANCES",
            serde_json::to_string(&BalancesSnapshot {
                balances: BTreeMap::from([("acc-36".to_owned(), vec![old_balance])]),
                fetched_at: now,
            })
            .unwrap(),
        ),
    ] {
        dynamodb
            .put_item()
            .table_name(&table)
            .item(
                "pk",
                AttributeValue::S(format!("DATA#alice#{}", moved.as_str())),
            )
            .item("sk", AttributeValue::S(sk.into()))
            .item("data", AttributeValue::S(data))
            .send()
            .await
            .unwrap();
    }
    // Bob's connection with the same id as one of alice's: never read for alice.
    store
        .put_accounts(
            &bob,
            &consents[3],
            &AccountsSnapshot {
                accounts: vec![account(77)],
                fetched_at: now,
            },
        )
        .await
        .unwrap();
    let nothing = ConsentId::new();
    let mut asked = consents.clone();
    asked.push(nothing.clone());

    let with_tx = store.read_snapshots(&alice, &asked, true).await.unwrap();
    let metas_only = store.read_snapshots(&alice, &asked, false).await.unwrap();
    assert_eq!(with_tx.len(), 41);
    assert_eq!(metas_only.len(), 41);
    for consent in &asked {
        let Snapshot { meta, transactions } = with_tx[consent].clone();
        let without = &metas_only[consent];
        assert_eq!(
            (&meta.accounts, &meta.balances),
            (&without.meta.accounts, &without.meta.balances),
            "{consent:?}"
        );
        assert_eq!(
            (&without.meta.transactions, &without.transactions),
            (&None, &None)
        );
        assert_eq!(
            sorted(transactions.expect("asked for")),
            sorted(written.get(consent).cloned().unwrap_or_default()),
            "{consent:?}: what was written, without the access counters"
        );
        assert_eq!(
            store.read_snapshot(&alice, consent, true).await.unwrap(),
            with_tx[consent],
            "one connection alone reads the same"
        );
    }
    assert_eq!(with_tx[&nothing].meta, Default::default());
    assert_eq!(
        with_tx[&moved].meta.accounts.as_ref().unwrap().accounts,
        vec![account(36)],
        "an account list stored by an earlier release is read"
    );
    assert_eq!(
        with_tx[&moved].meta.balances.as_ref().unwrap().balances["acc-36"][0].amount,
        Money::parse("36.50", eur).unwrap(),
        "the balances beside the consent win over the earlier release's"
    );

    // The user's consents and snapshots in one read: the same snapshots, and a pending
    // consent without data among the consents; the metas never pass for consents.
    let pending = consent(&alice, "lv-baltija", today + Days::new(90));
    consent_store.insert(&pending).await.unwrap();
    // An expired connection whose snapshot stays until its TTL: listed, its data not read.
    let mut expired = consent(&alice, "ee-pohja", today);
    expired.state = ConsentState::Expired;
    expired.bank_consent_id = Some(BankConsentId::parse("bank-expired").unwrap());
    consent_store.insert(&expired).await.unwrap();
    store
        .put_transactions(
            &alice,
            &expired.consent_id,
            now,
            covered_from,
            &[stored(1, &account(99).id, false)],
            None,
        )
        .await
        .unwrap();
    for (transactions, expected) in [(true, &with_tx), (false, &metas_only)] {
        let read = store.read_user(&alice, transactions).await.unwrap();
        let mut ids: Vec<ConsentId> = read.consents.iter().map(|c| c.consent_id.clone()).collect();
        ids.sort();
        let mut all = consents.clone();
        all.extend([pending.consent_id.clone(), expired.consent_id.clone()]);
        all.sort();
        assert_eq!(ids, all);
        for consent in &consents {
            assert_eq!(read.snapshots[consent], expected[consent], "{consent:?}");
        }
        assert_eq!(read.snapshots.len(), consents.len(), "the valid ones only");
    }
    assert_eq!(consent_store.list_for_user(&alice).await.unwrap().len(), 42);
    let bobs = store.read_user(&bob, true).await.unwrap();
    assert!(
        bobs.consents.is_empty() && bobs.snapshots.is_empty(),
        "bob's metas without his consent are not read: {bobs:?}"
    );
    assert_eq!(
        with_tx[&consents[3]]
            .meta
            .accounts
            .as_ref()
            .unwrap()
            .accounts,
        vec![account(3)]
    );
    assert!(with_tx[&consents[2]].meta.balances.is_some());
    assert!(with_tx[&consents[3]].meta.balances.is_none());
    let meta0 = with_tx[&consents[0]].meta.transactions.clone().unwrap();
    assert_eq!((meta0.fetched_at, meta0.covered_from), (now, covered_from));
    assert!(meta0.items.is_empty(), "a small set is inside its meta");

    // The large set: in parts its meta lists.
    let large = consents[10].clone();
    let large_pk = format!("DATA#alice#{}", large.as_str());
    let large_meta = with_tx[&large].meta.transactions.clone().unwrap();
    assert!(large_meta.items.len() >= 2, "{:?}", large_meta.items);
    assert!(
        large_meta.items.iter().all(|k| k.starts_with("PART#")),
        "parts stay apart from the items written before packing: {:?}",
        large_meta.items
    );
    // A listed part that is missing is an error, not a silently shorter history.
    let removed = large_meta.items[0].clone();
    let part = dynamodb
        .delete_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(large_pk.clone()))
        .key("sk", AttributeValue::S(removed.clone()))
        .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    assert!(matches!(
        store
            .read_snapshots(&alice, std::slice::from_ref(&large), true)
            .await,
        Err(StoreError::Corrupt(_))
    ));
    dynamodb
        .put_item()
        .table_name(&table)
        .set_item(Some(part))
        .send()
        .await
        .unwrap();

    // A new large set replaces the parts with a new generation; a small one then moves
    // into the meta; the old parts are deleted each time.
    let later = now + chrono::Duration::seconds(1);
    let replacement: Vec<StoredTransaction> = (0..5_000)
        .map(|i| stored(i, &account(10).id, true))
        .collect();
    let replace = |set: Vec<StoredTransaction>, previous: TransactionsMeta| {
        let (store, alice, large) = (&store, &alice, &large);
        async move {
            store
                .put_transactions(alice, large, later, covered_from, &set, Some(&previous))
                .await
                .unwrap();
            store.read_snapshot(alice, large, true).await.unwrap()
        }
    };
    let again = replace(replacement.clone(), large_meta.clone()).await;
    let again_meta = again.meta.transactions.clone().unwrap();
    assert!(
        again_meta
            .items
            .iter()
            .all(|k| !large_meta.items.contains(k))
    );
    assert_eq!(sorted(again.transactions.unwrap()), sorted(replacement));
    let keys = items_of(large_pk.clone()).await;
    assert!(
        large_meta.items.iter().all(|k| !keys.contains(k)),
        "the old generation is deleted: {keys:?}"
    );
    let small: Vec<StoredTransaction> = (0..3).map(|i| stored(i, &account(10).id, false)).collect();
    let now_small = replace(small.clone(), again_meta).await;
    assert!(now_small.meta.transactions.unwrap().items.is_empty());
    assert_eq!(sorted(now_small.transactions.unwrap()), sorted(small));
    assert!(
        !items_of(large_pk)
            .await
            .iter()
            .any(|k| k.starts_with("PART#") || k.starts_with("TX#")),
        "no parts left"
    );

    assert!(
        store
            .read_snapshots(&alice, &[], true)
            .await
            .unwrap()
            .is_empty()
    );
    local.teardown().await;
}
