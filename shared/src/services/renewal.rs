//! The daily consent renewal job: every consent valid until within the next
//! `RENEWAL_WINDOW_DAYS` days (7 by default) gets exactly one renewal: a new consent with
//! the same bank, access and frequency, stored linked to the old one, and the user is
//! notified with its SCA link. When the renewal becomes valid (SCA callback) the old one is
//! superseded ([`Connections::sca_callback`]).
//!
//! Due consents are found through the sparse, sharded `ByValidUntil` index, one Query per
//! shard and day (no Scan): it holds every `valid` consent (the health job needs them all
//! to expire them), and the job keeps those whose renewal is not finished
//! (`renewalNotified` unset, [`ConsentRecord::renewal_outstanding`]), see
//! docs/data-model.md.
//!
//! # Exactly one renewal, even when runs overlap or crash
//!
//! The job and "renew now" ([`Connections::renew_now`]) run the same routine,
//! `Connections::carry_renewal`. It claims first and calls the bank last, and every step
//! is idempotent, so any number of concurrent runs, and the next run after a crash at any
//! point, end with one renewal at the bank and one notification:
//!
//! 1. **Renewal record.** Insert the renewal `R` (pending authorisation, `renewalOf` = the
//!    old consent, no bank consent yet). Its id is derived from the old consent's id
//!    ([`renewal_id_after`], UUID v5), so every runner inserts the same item and all but
//!    the first get "already exists" and continue with it. (After a renewal failed — the
//!    user refused it — the next one's id is derived from the failed one's.)
//! 2. **Link.** Set `renewedBy = R` on the old consent (versioned write; a lost race re-reads
//!    and decides again; an old consent no longer valid stops everything).
//! 3. **Lease.** A versioned write sets `leaseUntil = now + 2 min` on `R`, only while `R`
//!    has no bank consent and no live lease. A live lease or a lost race means another
//!    runner is creating the bank consent right now: skip it (`skipped_busy`).
//! 4. **Bank.** The lease holder creates the consent at the bank (our callback as TPP
//!    redirect with a signed, single-use `state`) and records the bank's id and SCA link on
//!    `R` (versioned).
//! 5. **Notify** `consent.renewal_required` (event id `consent:<old>:renewal:<R>`, stored
//!    once per event id).
//! 6. **Done.** Set `renewalNotified` on the old consent (versioned): it leaves the index.
//!
//! The old consent stays in the index until step 6, so whatever a crashed run left is
//! picked up by the next run: after 1 or 2 the record exists (insert finds it); after 3 the
//! lease runs out within two minutes; after 4 the bank consent is recorded (no second one);
//! after 5 the notification is not stored twice.
//!
//! **Accepted gap:** a crash between the bank's answer in step 4 and recording it leaves
//! one consent at the bank we do not know of. It was never authorised, so it only expires
//! unused (no data is read, no money moves); the next run creates the renewal again. A
//! failed *write* there (rather than a crash) deletes the bank's consent again.
//!
//! `PSU-IP-Address` is mandatory for consent creation (Berlin Group). The job, running
//! without the PSU, sends the IP recorded when the user created the renewed consent, or
//! [`FALLBACK_RENEWAL_PSU_IP`](super::connections::FALLBACK_RENEWAL_PSU_IP) (loopback)
//! for records from before that was stored.
//!
//! One failing renewal (bank down, throttled store) is counted and logged, and the run
//! goes on with the others; the next run (or the user's "renew now") resumes it. A bank
//! failure gives the lease up at once; a lease left by a crashed runner blocks for two
//! minutes, so the next daily run picks it up. A run carries up to [`RENEWAL_CONCURRENCY`]
//! renewals at a time.
//!
//! The signed SCA `state` of a renewal is accepted for
//! [`RENEWAL_STATE_TTL_DAYS`](super::connections::RENEWAL_STATE_TTL_DAYS) days (the user may
//! read the notification days later), not the 30 minutes of an interactive connect.
//! Revoking a connection ends its renewal too, including one a crash left half-made.

use std::sync::Arc;

use chrono::{Days, NaiveDate};
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::connections::{
    Connections, MAX_VALID_DAYS, RenewalProgress, connections_from_env, log_text, renewal_id_after,
};
use crate::store::ConsentRecord;

/// Environment variable: how many days ahead of `validUntil` consents are renewed.
pub const RENEWAL_WINDOW_DAYS_ENV: &str = "RENEWAL_WINDOW_DAYS";
/// Default of [`RENEWAL_WINDOW_DAYS_ENV`].
pub const DEFAULT_RENEWAL_WINDOW_DAYS: u32 = 7;
/// Renewals one run carries at the same time (each waits mostly on its bank).
pub const RENEWAL_CONCURRENCY: usize = 4;

/// Settings of the renewal job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalConfig {
    /// Consents valid until today ..= today + this many days are renewed.
    pub window_days: u32,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        Self {
            window_days: DEFAULT_RENEWAL_WINDOW_DAYS,
        }
    }
}

impl RenewalConfig {
    /// From `RENEWAL_WINDOW_DAYS` (a whole number of days, 0 to 180; default 7).
    ///
    /// # Errors
    /// A message naming the variable when it is not usable.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`], with an explicit variable lookup (for tests).
    ///
    /// # Errors
    /// A message naming the variable when it is not usable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let window_days = match lookup(RENEWAL_WINDOW_DAYS_ENV) {
            None => DEFAULT_RENEWAL_WINDOW_DAYS,
            Some(text) => text
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|days| *days <= MAX_VALID_DAYS)
                .ok_or_else(|| {
                    format!(
                        "{RENEWAL_WINDOW_DAYS_ENV} must be a whole number of days between 0 and \
                         {MAX_VALID_DAYS}"
                    )
                })?,
        };
        Ok(Self { window_days })
    }
}

/// What one run did. Every consent read from the index counts in `considered`; at most one
/// of the other counters counts it too (none when another runner had finished it, or it
/// was no longer valid).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewalReport {
    /// Due consents read from the index.
    pub considered: u32,
    /// Renewals this run started (it inserted the renewal record, step 1): across any
    /// number of overlapping runs, each renewal is counted here once. Usually this run also
    /// carried it through; when another runner got the lease first, that one finishes it.
    pub started: u32,
    /// Renewals another run had started (an earlier one that crashed, or a concurrent one)
    /// that this run carried at least one step further.
    pub resumed: u32,
    /// Renewals another run had started and was creating at the bank at that moment (it
    /// finishes them, or its lease runs out and a later run does).
    pub skipped_busy: u32,
    /// Renewals that failed (bank or store); the next run resumes them. A day whose index
    /// query failed counts once as well.
    pub failed: u32,
}

/// The renewal job.
pub struct Renewals {
    connections: Arc<Connections>,
    config: RenewalConfig,
}

impl Renewals {
    pub fn new(connections: Arc<Connections>, config: RenewalConfig) -> Self {
        Self {
            connections,
            config,
        }
    }

    /// Renews every due consent: valid until `today ..= today + window` days, nearest day
    /// first. Never fails as a whole: failures are counted, logged and left to the next
    /// run.
    pub async fn run(&self, today: NaiveDate) -> RenewalReport {
        let mut report = RenewalReport::default();
        let mut running = JoinSet::new();
        for offset in 0..=self.config.window_days {
            let Some(day) = today.checked_add_days(Days::new(u64::from(offset))) else {
                break;
            };
            let due = match self.connections.consent_store().valid_until_on(day).await {
                // The index holds every valid consent of the day; only those whose renewal
                // is not finished are due (the routine re-checks each anyway).
                Ok(valid) => valid
                    .into_iter()
                    .filter(ConsentRecord::renewal_outstanding)
                    .collect::<Vec<_>>(),
                Err(e) => {
                    error!(day = %day, error = %e, "could not read the consents due for renewal");
                    report.failed += 1;
                    continue;
                }
            };
            for record in due {
                report.considered += 1;
                while running.len() >= RENEWAL_CONCURRENCY {
                    if let Some(done) = running.join_next().await {
                        count(&mut report, done);
                    }
                }
                running.spawn(renew(self.connections.clone(), record));
            }
        }
        while let Some(done) = running.join_next().await {
            count(&mut report, done);
        }
        info!(
            today = %today,
            window_days = self.config.window_days,
            considered = report.considered,
            started = report.started,
            resumed = report.resumed,
            skipped_busy = report.skipped_busy,
            failed = report.failed,
            "renewal run finished"
        );
        report
    }
}

/// What happened to one due consent.
enum Outcome {
    Started,
    Resumed,
    Busy,
    Nothing,
    Failed,
}

async fn renew(connections: Arc<Connections>, record: ConsentRecord) -> Outcome {
    match connections
        .carry_renewal(&record.user_id, &record.consent_id, None)
        .await
    {
        // The run that inserted the renewal record started it, even when another runner got
        // the lease first and is finishing it: exactly one run counts each renewal here.
        Ok(
            RenewalProgress::Ready { started: true, .. } | RenewalProgress::Busy { started: true },
        ) => Outcome::Started,
        Ok(RenewalProgress::Ready {
            progressed: true, ..
        }) => Outcome::Resumed,
        Ok(RenewalProgress::Ready { .. } | RenewalProgress::NotRenewable) => Outcome::Nothing,
        Ok(RenewalProgress::Busy { started: false }) => {
            info!(consent_id = %record.consent_id,
                renewal_id = %renewal_id_after(&record.consent_id),
                "another run is creating this renewal at the bank");
            Outcome::Busy
        }
        Err(e) => {
            warn!(consent_id = %record.consent_id, bank_id = %record.bank_id,
                error = log_text(&e), "renewal failed; the next run resumes it");
            Outcome::Failed
        }
    }
}

fn count(report: &mut RenewalReport, done: Result<Outcome, tokio::task::JoinError>) {
    match done {
        Ok(Outcome::Started) => report.started += 1,
        Ok(Outcome::Resumed) => report.resumed += 1,
        Ok(Outcome::Busy) => report.skipped_busy += 1,
        Ok(Outcome::Nothing) => {}
        Ok(Outcome::Failed) => report.failed += 1,
        Err(e) => {
            error!(error = %e, "a renewal task panicked");
            report.failed += 1;
        }
    }
}

/// Builds the job as its Lambda function runs it: the connections service of
/// [`connections_from_env`] plus [`RenewalConfig::from_env`]. Called once per cold start.
///
/// # Errors
/// A message naming what is missing or invalid.
pub async fn renewals_from_env(sdk: &aws_config::SdkConfig) -> Result<Renewals, String> {
    let config = RenewalConfig::from_env()?;
    let connections = connections_from_env(sdk).await?;
    Ok(Renewals::new(Arc::new(connections), config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde_json::json;

    use crate::bank::BankError;
    use crate::domain::{BankConsentId, ConsentId, ConsentState, ConsentStatus, UserId};
    use crate::services::ServiceError;
    use crate::services::connections::FALLBACK_RENEWAL_PSU_IP;
    use crate::services::testing::*;

    const RENEWAL_REQUIRED: &str = "consent.renewal_required";

    fn job(h: &Harness) -> Renewals {
        Renewals::new(h.svc.clone(), RenewalConfig::default())
    }

    fn today() -> NaiveDate {
        start().date_naive()
    }

    fn report(
        considered: u32,
        started: u32,
        resumed: u32,
        busy: u32,
        failed: u32,
    ) -> RenewalReport {
        RenewalReport {
            considered,
            started,
            resumed,
            skipped_busy: busy,
            failed,
        }
    }

    impl Harness {
        fn bank(&self, bank: &str) -> &FakeBank {
            if bank == "lt-alpha" {
                &self.alpha
            } else {
                &self.beta
            }
        }

        /// `user` links `bank` for `days` days and authorises it.
        async fn linked(&self, user: &UserId, bank: &str, days: u32) -> ConsentId {
            let body = json!({"bankId": bank, "validDays": days}).to_string();
            let created = self.svc.connect(user, body.as_bytes(), ip()).await.unwrap();
            let fake = self.bank(bank);
            fake.answer_status(Ok(ConsentStatus::Valid));
            self.svc.sca_callback(&ok_query(fake)).await;
            fake.answer_status(Ok(ConsentStatus::Received));
            assert_eq!(
                self.consents.one(&created.connection_id).state,
                ConsentState::Valid
            );
            created.connection_id
        }

        fn creates(&self) -> usize {
            self.alpha.creates().len() + self.beta.creates().len()
        }

        fn renewal_of(&self, old: &ConsentId) -> ConsentRecord {
            self.consents.one(&renewal_id_after(old))
        }

        /// The renewal of `old` is at the bank, `old` points at it and is out of the
        /// index, and the user got exactly one notification for it.
        fn assert_renewed_once(&self, old: &ConsentId) {
            let renewal = self.renewal_of(old);
            assert_eq!(renewal.renewal_of.as_ref(), Some(old));
            assert_eq!(renewal.state, ConsentState::PendingAuthorization);
            assert!(renewal.bank_consent_id.is_some(), "{renewal:?}");
            assert!(renewal.sca_url.is_some());
            assert_eq!(renewal.lease_until, None);
            let stored = self.consents.one(old);
            assert_eq!(stored.renewed_by.as_ref(), Some(&renewal.consent_id));
            assert!(stored.renewal_notified);
            assert!(!stored.renewal_outstanding());
            let notes: Vec<_> = self
                .notes
                .of_kind(RENEWAL_REQUIRED)
                .into_iter()
                .filter(|n| n.data["connectionId"] == old.as_str())
                .collect();
            assert_eq!(notes.len(), 1, "{notes:?}");
            assert_eq!(
                notes[0].event_id,
                format!("consent:{old}:renewal:{}", renewal.consent_id)
            );
            assert_eq!(
                notes[0].data["newConnectionId"],
                renewal.consent_id.as_str()
            );
            assert_eq!(
                notes[0].data["authUrl"],
                renewal.sca_url.as_deref().unwrap()
            );
            let renewals = self
                .consents
                .all()
                .into_iter()
                .filter(|r| r.renewal_of.as_ref() == Some(old))
                .count();
            assert_eq!(renewals, 1, "one renewal record");
        }
    }

    // ---- configuration -----------------------------------------------------------------

    #[test]
    fn window_configuration() {
        assert_eq!(RenewalConfig::from_lookup(|_| None).unwrap().window_days, 7);
        let with = |value: &str| {
            RenewalConfig::from_lookup(|name| {
                (name == RENEWAL_WINDOW_DAYS_ENV).then(|| value.to_owned())
            })
        };
        assert_eq!(with(" 3 ").unwrap().window_days, 3);
        assert_eq!(with("0").unwrap().window_days, 0);
        assert_eq!(with("180").unwrap().window_days, 180);
        for bad in ["", "x", "-1", "181", "2.5"] {
            assert!(
                with(bad).unwrap_err().contains(RENEWAL_WINDOW_DAYS_ENV),
                "{bad}"
            );
        }
    }

    #[test]
    fn renewal_ids_are_derived_and_stable() {
        let old = ConsentId::parse("3f2b8c1e-6a4d-4e8b-9c1f-2a3b4c5d6e7f").unwrap();
        let first = renewal_id_after(&old);
        assert_eq!(first, renewal_id_after(&old));
        // Pinned: runs of different releases must derive the same id.
        assert_eq!(first.as_str(), "7e1ee1b4-88d4-54ce-a9b9-9500a6e97842");
        let next = renewal_id_after(&first);
        assert_ne!(next, first);
        assert_ne!(next, old);
        assert_ne!(renewal_id_after(&ConsentId::new()), first);
    }

    #[test]
    fn the_job_and_its_futures_can_cross_threads() {
        fn shareable<T: Send + Sync>() {}
        fn sendable<F: std::future::Future + Send>(_: F) {}
        shareable::<Renewals>();
        let h = harness();
        sendable(job(&h).run(today()));
    }

    // ---- the window --------------------------------------------------------------------

    #[tokio::test]
    async fn due_consents_are_renewed_once_and_the_others_are_untouched() {
        let h = harness();
        let due_alpha = h.linked(&alice(), "lt-alpha", 6).await;
        let due_beta = h.linked(&bob(), "lv-beta", 7).await; // the window's last day
        let later = h.linked(&alice(), "lv-beta", 8).await;
        let long = h.linked(&alice(), "lt-alpha", 90).await;
        let pending = h
            .svc
            .connect(
                &alice(),
                json!({"bankId": "lt-alpha", "validDays": 3})
                    .to_string()
                    .as_bytes(),
                ip(),
            )
            .await
            .unwrap()
            .connection_id;
        let untouched: Vec<_> = [&later, &long, &pending]
            .into_iter()
            .map(|id| h.consents.one(id))
            .collect();
        let creates = h.creates();

        let done = job(&h).run(today()).await;
        assert_eq!(done, report(2, 2, 0, 0, 0));
        assert_eq!(h.creates(), creates + 2);
        h.assert_renewed_once(&due_alpha);
        h.assert_renewed_once(&due_beta);

        // Same bank, access and frequency; the bank's longest validity from today; the
        // PSU IP recorded when the user linked the bank.
        let alpha = h.renewal_of(&due_alpha);
        assert_eq!(alpha.user_id, alice());
        assert_eq!(alpha.bank_id.as_str(), "lt-alpha");
        assert_eq!(alpha.valid_until, today() + Days::new(90));
        assert_eq!(alpha.frequency_per_day, 4);
        assert_eq!(alpha.psu_ip, Some(ip()));
        let request = h.alpha.creates().last().unwrap().clone();
        assert_eq!(request.valid_until, alpha.valid_until);
        assert_eq!(request.psu_ip, ip());
        assert!(request.recurring);
        assert_eq!(
            request.access,
            h.consents.one(&due_alpha).access,
            "the same access"
        );
        let beta = h.renewal_of(&due_beta);
        assert_eq!(beta.user_id, bob());
        assert_eq!(beta.valid_until, today() + Days::new(180));
        assert_eq!(beta.frequency_per_day, 2);
        let note = &h.notes.of_kind(RENEWAL_REQUIRED)[0];
        assert_eq!(note.user_id, alice());
        assert_eq!(
            note.data["validUntil"],
            json!(h.consents.one(&due_alpha).valid_until)
        );

        for record in &untouched {
            assert_eq!(&h.consents.one(&record.consent_id), record);
        }

        // Again: nothing left to do.
        let notes = h.notes.all().len();
        assert_eq!(job(&h).run(today()).await, RenewalReport::default());
        assert_eq!(h.creates(), creates + 2);
        assert_eq!(h.notes.all().len(), notes);

        // A day later the 8-day one is due.
        assert_eq!(
            job(&h).run(today() + Days::new(1)).await,
            report(1, 1, 0, 0, 0)
        );
        h.assert_renewed_once(&later);
        assert_eq!(h.consents.one(&long), untouched[1]);
    }

    #[tokio::test]
    async fn the_users_link_works_days_later_and_the_renewal_supersedes() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 5).await;
        job(&h).run(today()).await;
        let renewal = h.renewal_of(&old);

        // The user reads the notification three days later and authorises.
        h.clock.advance(Duration::days(3));
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        let outcome = h.svc.sca_callback(&ok_query(&h.alpha)).await;
        assert!(
            matches!(
                &outcome,
                crate::services::connections::CallbackOutcome::Page { status: 200, .. }
            ),
            "{outcome:?}"
        );
        assert_eq!(
            h.consents.one(&renewal.consent_id).state,
            ConsentState::Valid
        );
        assert_eq!(h.consents.one(&old).state, ConsentState::Superseded);
        let view = h.svc.get(&alice(), old.as_str()).await.unwrap();
        assert_eq!(view.status, ConsentState::Superseded);
        assert_eq!(
            view.renewal.connection_id.as_ref(),
            Some(&renewal.consent_id)
        );

        // The renewal is itself renewed when its time comes, the superseded one never.
        let its_day = h.consents.one(&renewal.consent_id).valid_until;
        assert!(h.consents.one(&renewal.consent_id).renewal_outstanding());
        assert_eq!(
            job(&h).run(its_day - Days::new(2)).await,
            report(1, 1, 0, 0, 0)
        );
        h.assert_renewed_once(&renewal.consent_id);
    }

    // ---- concurrency -------------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_concurrent_runs_create_one_renewal_and_one_notification() {
        for _ in 0..25 {
            let h = harness();
            let due = [
                h.linked(&alice(), "lt-alpha", 6).await,
                h.linked(&bob(), "lt-alpha", 2).await,
                h.linked(&alice(), "lv-beta", 4).await,
            ];
            let creates = h.creates();
            let job = Arc::new(job(&h));
            let (a, b) = tokio::join!(
                tokio::spawn({
                    let job = job.clone();
                    async move { job.run(today()).await }
                }),
                tokio::spawn({
                    let job = job.clone();
                    async move { job.run(today()).await }
                }),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_eq!(a.started + b.started, 3, "{a:?} {b:?}");
            assert_eq!(a.failed + b.failed, 0, "{a:?} {b:?}");
            assert_eq!(h.creates(), creates + 3, "one bank consent each");
            assert_eq!(h.notes.of_kind(RENEWAL_REQUIRED).len(), 3);
            for old in &due {
                h.assert_renewed_once(old);
            }
            assert_eq!(job.run(today()).await, RenewalReport::default());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_job_and_renew_now_at_once_create_one_renewal() {
        for _ in 0..25 {
            let h = harness();
            let old = h.linked(&alice(), "lt-alpha", 6).await;
            let creates = h.creates();
            let job = Arc::new(job(&h));
            let svc = h.svc.clone();
            let id = old.clone();
            let (run, now) = tokio::join!(
                tokio::spawn({
                    let job = job.clone();
                    async move { job.run(today()).await }
                }),
                tokio::spawn(async move { svc.renew_now(&alice(), id.as_str(), ip()).await }),
            );
            assert_eq!(run.unwrap().failed, 0);
            match now.unwrap() {
                Ok(created) => {
                    assert_eq!(created.connection_id, renewal_id_after(&old));
                    assert!(created.auth_url.is_some());
                }
                Err(ServiceError::Conflict(message)) => {
                    assert!(message.contains("being prepared"), "{message}");
                }
                Err(other) => panic!("{other:?}"),
            }
            assert_eq!(h.creates(), creates + 1);
            h.assert_renewed_once(&old);
        }
    }

    // ---- crashes -----------------------------------------------------------------------

    #[tokio::test]
    async fn a_crash_after_the_renewal_record_is_resumed() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        let creates = h.creates();
        h.consents.fail_next_update_of(&old); // step 2
        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 0, 1));
        let renewal = h.renewal_of(&old);
        assert_eq!(renewal.bank_consent_id, None);
        assert_eq!(h.consents.one(&old).renewed_by, None);
        assert!(h.consents.one(&old).renewal_outstanding(), "still indexed");
        assert_eq!(h.creates(), creates);

        assert_eq!(job(&h).run(today()).await, report(1, 0, 1, 0, 0));
        assert_eq!(h.creates(), creates + 1);
        h.assert_renewed_once(&old);
    }

    #[tokio::test]
    async fn a_store_failure_at_the_claim_leaves_it_for_the_next_run() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        let creates = h.creates();
        h.consents.fail_next_insert(); // step 1
        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 0, 1));
        assert!(h.consents.all().iter().all(|r| r.renewal_of.is_none()));
        assert_eq!(h.creates(), creates);
        assert_eq!(job(&h).run(today()).await, report(1, 1, 0, 0, 0));
        h.assert_renewed_once(&old);
    }

    #[tokio::test]
    async fn a_crash_after_linking_is_resumed() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        let creates = h.creates();
        h.consents.fail_next_update_of(&renewal_id_after(&old)); // step 3
        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 0, 1));
        assert_eq!(
            h.consents.one(&old).renewed_by,
            Some(renewal_id_after(&old))
        );
        assert!(h.consents.one(&old).renewal_outstanding());
        assert_eq!(h.renewal_of(&old).lease_until, None);
        assert_eq!(h.creates(), creates);

        assert_eq!(job(&h).run(today()).await, report(1, 0, 1, 0, 0));
        assert_eq!(h.creates(), creates + 1);
        h.assert_renewed_once(&old);
    }

    #[tokio::test]
    async fn a_lease_left_by_a_crashed_run_blocks_until_it_runs_out() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        let creates = h.creates();
        h.consents.fail_next_update_of(&renewal_id_after(&old));
        job(&h).run(today()).await;
        // A runner took the lease, then died before (or while) calling the bank.
        let mut leased = h.renewal_of(&old);
        leased.lease_until = Some(start() + Duration::minutes(2));
        leased.version += 1;
        h.consents.put(leased);

        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 1, 0));
        assert!(matches!(
            h.svc.renew_now(&alice(), old.as_str(), ip()).await,
            Err(ServiceError::Conflict(m)) if m.contains("being prepared")
        ));
        assert_eq!(h.creates(), creates);
        assert!(h.consents.one(&old).renewal_outstanding());

        h.clock.advance(Duration::minutes(3));
        assert_eq!(job(&h).run(today()).await, report(1, 0, 1, 0, 0));
        assert_eq!(h.creates(), creates + 1);
        h.assert_renewed_once(&old);
    }

    #[tokio::test]
    async fn a_crash_after_the_bank_consent_is_recorded_creates_no_second_one() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        let creates = h.creates();
        h.notes.fail_next_put(); // step 5
        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 0, 1));
        assert!(h.renewal_of(&old).bank_consent_id.is_some());
        assert!(h.consents.one(&old).renewal_outstanding());
        assert!(h.notes.of_kind(RENEWAL_REQUIRED).is_empty());
        assert_eq!(h.creates(), creates + 1);

        // And a crash after notifying (step 6 fails): no second notification either.
        h.consents.fail_next_update_of(&old);
        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 0, 1));
        assert_eq!(h.notes.of_kind(RENEWAL_REQUIRED).len(), 1);
        assert!(h.consents.one(&old).renewal_outstanding());

        assert_eq!(job(&h).run(today()).await, report(1, 0, 1, 0, 0));
        assert_eq!(h.creates(), creates + 1, "no second consent at the bank");
        h.assert_renewed_once(&old);
        assert_eq!(job(&h).run(today()).await, RenewalReport::default());
    }

    #[tokio::test]
    async fn a_failed_webhook_enqueue_is_retried_by_the_next_run_and_queued_once() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        let queued_before = h.webhooks.event_ids().len();
        *h.webhooks.failing.lock().unwrap() = 1; // step 5: stored, but not queued
        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 0, 1));
        assert_eq!(h.notes.of_kind(RENEWAL_REQUIRED).len(), 1);
        assert!(h.consents.one(&old).renewal_outstanding());

        assert_eq!(job(&h).run(today()).await, report(1, 0, 1, 0, 0));
        assert_eq!(job(&h).run(today()).await, RenewalReport::default());
        h.assert_renewed_once(&old);
        let queued = h.webhooks.event_ids()[queued_before..].to_vec();
        let event = h.notes.of_kind(RENEWAL_REQUIRED)[0].event_id.clone();
        assert_eq!(queued, [event], "queued exactly once, by the retry");
    }

    #[tokio::test]
    async fn a_failed_write_of_the_bank_consent_deletes_it_and_a_later_run_retries() {
        // The documented window: between the bank's answer and recording it. A failed
        // write deletes the bank's consent again; a crash there would leave it orphaned
        // (never authorised, it expires unused). Either way the next run creates another.
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        let creates = h.creates();
        h.consents.fail_update_of(&renewal_id_after(&old), 1); // the lease succeeds
        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 0, 1));
        assert_eq!(h.creates(), creates + 1);
        let orphan = h.alpha.creates().len();
        assert_eq!(
            h.alpha.deletes(),
            [BankConsentId::parse(&format!("lt-alpha-bc-{orphan}")).unwrap()]
        );
        assert_eq!(h.renewal_of(&old).bank_consent_id, None);

        // The failed runner's lease still holds (the store was failing: not released).
        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 1, 0));
        h.clock.advance(Duration::minutes(3));
        assert_eq!(job(&h).run(today()).await, report(1, 0, 1, 0, 0));
        assert_eq!(h.creates(), creates + 2);
        assert_eq!(h.alpha.deletes().len(), 1);
        h.assert_renewed_once(&old);
    }

    // ---- failures ----------------------------------------------------------------------

    #[tokio::test]
    async fn a_bank_that_is_down_does_not_stop_the_others() {
        let h = harness();
        let at_alpha = h.linked(&alice(), "lt-alpha", 6).await;
        let at_beta = h.linked(&bob(), "lv-beta", 5).await;
        let creates = h.creates();
        *h.alpha.create_error.lock().unwrap() = Some(BankError::Unavailable {
            status: Some(503),
            retry_after: None,
        });
        assert_eq!(job(&h).run(today()).await, report(2, 1, 0, 0, 1));
        h.assert_renewed_once(&at_beta);
        let waiting = h.renewal_of(&at_alpha);
        assert_eq!(waiting.bank_consent_id, None);
        assert_eq!(waiting.lease_until, None, "released for the next try");
        assert_eq!(waiting.state, ConsentState::PendingAuthorization);

        *h.alpha.create_error.lock().unwrap() = None;
        assert_eq!(job(&h).run(today()).await, report(1, 0, 1, 0, 0));
        assert_eq!(
            h.creates(),
            creates + 1 + 2,
            "one failed call, two consents"
        );
        h.assert_renewed_once(&at_alpha);
    }

    #[tokio::test]
    async fn a_day_that_cannot_be_read_does_not_stop_the_others() {
        let h = harness();
        let in_two = h.linked(&alice(), "lt-alpha", 2).await;
        let in_four = h.linked(&alice(), "lv-beta", 4).await;
        h.consents.fail_next_query_of(today() + Days::new(2));
        assert_eq!(job(&h).run(today()).await, report(1, 1, 0, 0, 1));
        h.assert_renewed_once(&in_four);
        assert_eq!(h.consents.one(&in_two).renewed_by, None);
        assert_eq!(job(&h).run(today()).await, report(1, 1, 0, 0, 0));
        h.assert_renewed_once(&in_two);
    }

    #[tokio::test]
    async fn a_consent_without_a_recorded_psu_ip_is_renewed_with_the_fallback() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        let mut legacy = h.consents.one(&old);
        legacy.psu_ip = None;
        h.consents.put(legacy);
        assert_eq!(job(&h).run(today()).await, report(1, 1, 0, 0, 0));
        assert_eq!(
            h.alpha.creates().last().unwrap().psu_ip,
            FALLBACK_RENEWAL_PSU_IP
        );
        assert_eq!(FALLBACK_RENEWAL_PSU_IP.to_string(), "127.0.0.1");
        assert_eq!(h.renewal_of(&old).psu_ip, None);
    }

    #[tokio::test]
    async fn renew_now_continues_what_a_crashed_run_left_with_the_callers_ip() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        let creates = h.creates();
        h.consents.fail_next_update_of(&renewal_id_after(&old));
        job(&h).run(today()).await;
        let caller: std::net::IpAddr = "198.51.100.23".parse().unwrap();
        let created = h
            .svc
            .renew_now(&alice(), old.as_str(), caller)
            .await
            .unwrap();
        assert_eq!(created.connection_id, renewal_id_after(&old));
        assert_eq!(h.alpha.creates().last().unwrap().psu_ip, caller);
        assert_eq!(h.creates(), creates + 1);
        h.assert_renewed_once(&old);
        assert_eq!(job(&h).run(today()).await, RenewalReport::default());
    }

    #[tokio::test]
    async fn revoking_after_a_crash_ends_the_half_made_renewal() {
        // Crashed after step 1: the renewal exists but the old consent does not point at it.
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        h.consents.fail_next_update_of(&old);
        job(&h).run(today()).await;
        h.svc.revoke(&alice(), old.as_str()).await.unwrap();
        assert_eq!(h.renewal_of(&old).state, ConsentState::TerminatedByTpp);
        let creates = h.creates();
        assert_eq!(job(&h).run(today()).await, RenewalReport::default());
        assert_eq!(h.creates(), creates);

        // Crashed after step 4: the renewal's bank consent is deleted with it.
        let old = h.linked(&bob(), "lt-alpha", 6).await;
        h.notes.fail_next_put();
        job(&h).run(today()).await;
        let at_bank = h.renewal_of(&old).bank_consent_id.unwrap();
        h.svc.revoke(&bob(), old.as_str()).await.unwrap();
        assert_eq!(h.renewal_of(&old).state, ConsentState::TerminatedByTpp);
        assert!(h.alpha.deletes().contains(&at_bank));
        assert_eq!(job(&h).run(today()).await, RenewalReport::default());
        assert!(h.notes.of_kind(RENEWAL_REQUIRED).is_empty());
    }

    #[tokio::test]
    async fn an_authorised_renewal_found_by_the_job_supersedes_the_old_one() {
        let h = harness();
        let old = h.linked(&alice(), "lt-alpha", 6).await;
        h.svc.renew_now(&alice(), old.as_str(), ip()).await.unwrap();
        // The renewal became valid, but superseding the old one failed, and the old one
        // went back into the index (e.g. step 6 never happened).
        let mut renewal = h.renewal_of(&old);
        renewal.state = ConsentState::Valid;
        h.consents.put(renewal);
        let mut stale = h.consents.one(&old);
        stale.renewal_notified = false;
        h.consents.put(stale);
        assert_eq!(job(&h).run(today()).await, report(1, 0, 0, 0, 0));
        assert_eq!(h.consents.one(&old).state, ConsentState::Superseded);
    }
}
