//! The hourly consent health job: keeps our view of every valid consent in line with the
//! calendar and with the bank, and tells the user about every change.
//!
//! Each run does two passes, both through sparse indexes (no Scan, see
//! docs/data-model.md):
//!
//! 1. **Expiry.** The valid consents whose `validUntil` lies in the last
//!    [`EXPIRY_LOOKBACK_DAYS`] days before today (`validUntil` is the last valid day, so
//!    today's are still valid) are read from `ByValidUntil` (every valid consent is in it).
//!    Each becomes `expired` (`ConsentEvent::ValidUntilPassed`, a versioned write: a lost
//!    race re-reads and decides again) and the user is notified `consent.expired` (event id
//!    `consent:<id>:expired`, stored once).
//! 2. **Bank view.** The valid consents of this hour's `ByHealthHour` bucket (a stable hash
//!    of the consent id spreads them over the 24 hours) are looked up at their bank, one
//!    `GET /v1/consents/{id}/status` each. `revokedByPsu`, `terminatedByTpp` and `expired`
//!    (and `rejected`, which the state machine refuses for a valid consent) are mirrored
//!    (`ConsentEvent::BankReported`) and notified as `consent.<state>` with event id
//!    `consent:<id>:<state>`, the same ids the SCA callback uses, so one change is never
//!    announced twice. `valid` / `received` change nothing. A bank error is counted in
//!    `failed` and the run goes on; the consent is asked again the next day.
//!
//! **Frequency budget.** Every consent is asked about once a day, in its own hour, and
//! without the PSU (no PSU headers). The status endpoint is not an account access, so it
//! does not count against `frequencyPerDay` in the Berlin Group's terms; a bank that counts
//! it anyway sees one call a day, and every consent we hold allows at least one
//! (`frequencyPerDay` ≥ 1). The operator switch that checks all 24 hours at once (the
//! scheduled event's `detail.allHours = true`, [`Health::run_hours`]) asks every valid
//! consent a second time that day: an occasional manual tool, not a schedule.
//!
//! **Renewal of a consent that lapses.** A consent that expires (by date or at its bank)
//! with no renewal announced yet gets exactly one. The renewal is carried *before* the
//! consent is marked expired, through the renewal job's routine
//! ([`Connections::carry_renewal`], which only renews valid consents): until the expiry
//! is written the consent stays in the index, so a run that crashes halfway is resumed by
//! the next hour's run, and the routine's own steps make overlapping runs create one
//! renewal. When that routine refuses because the consent is no longer valid (another
//! writer expired it first), the job falls back to [`Connections::renew_lapsed`]: a fresh
//! consent at the same bank for the same user, `renewalOf` = the expired one, with the same
//! derived id and steps, so it is still one renewal. Either way the user is notified
//! `consent.renewal_required` once (event id `consent:<old>:renewal:<new>`).
//!
//! **Webhook sweep.** Every state change is written together with its notification (one
//! transaction, `crate::store::ConsentOutbox`); its webhook is queued right after, best
//! effort. A third pass re-queues the events whose webhook was never marked queued (the
//! queue failed, or the writer crashed after the commit) and that are older than
//! [`WEBHOOK_SWEEP_AGE`] (so a writer still at work is not raced), at most
//! [`WEBHOOK_SWEEP_LIMIT`] per run, read from the notifications table's sparse
//! `ByPendingWebhook` index (no Scan). Only when webhooks are configured.
//!
//! **Accepted gaps.** A consent is marked expired even when its renewal failed (bank down):
//! our state must not claim a validity the bank no longer grants; the user is told it
//! expired and can connect again (the failure is counted and logged).

use std::sync::Arc;

use chrono::{DateTime, Days, NaiveDate, Timelike, Utc};
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::connections::{Connections, RenewalProgress, connections_from_env, log_text};
use crate::domain::{ConsentEvent, ConsentState, ConsentStatus};
use crate::store::ConsentRecord;

/// How many days back the expiry pass looks: a consent whose `validUntil` passed while
/// the job did not run (an outage) is still expired within this many days.
pub const EXPIRY_LOOKBACK_DAYS: u64 = 7;
/// Consents one run handles at the same time (each waits mostly on its bank).
pub const HEALTH_CONCURRENCY: usize = 4;
/// How old an event whose webhook was not queued must be before the sweep queues it: the
/// writer queues it right after its commit, so younger ones are most likely in flight.
pub const WEBHOOK_SWEEP_AGE: chrono::Duration = chrono::Duration::minutes(2);
/// Most webhooks one run re-queues (the rest waits for the next run).
pub const WEBHOOK_SWEEP_LIMIT: usize = 1000;

/// What one run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// Valid consents past their `validUntil` that this run marked expired.
    pub expired: u32,
    /// Consents whose end at the bank (revoked, terminated, expired) this run mirrored.
    pub mirrored: u32,
    /// Consents whose status the bank answered.
    pub checked: u32,
    /// Renewals this run started for consents that lapsed.
    pub renewals_started: u32,
    /// Webhooks of earlier state changes whose queueing had failed, queued by this run.
    pub webhooks_requeued: u32,
    /// Bank calls, renewals, writes or index reads that failed (the next run retries what
    /// is still due).
    pub failed: u32,
}

impl std::ops::AddAssign for HealthReport {
    fn add_assign(&mut self, other: HealthReport) {
        self.expired += other.expired;
        self.mirrored += other.mirrored;
        self.checked += other.checked;
        self.renewals_started += other.renewals_started;
        self.webhooks_requeued += other.webhooks_requeued;
        self.failed += other.failed;
    }
}

/// The health job.
pub struct Health {
    connections: Arc<Connections>,
}

impl Health {
    pub fn new(connections: Arc<Connections>) -> Self {
        Self { connections }
    }

    /// The scheduled run at `now`: the expiry pass, then the bank view of `now`'s hour.
    /// Never fails as a whole: failures are counted, logged and left to the next run.
    pub async fn run(&self, now: DateTime<Utc>) -> HealthReport {
        self.run_hours(now, [now.hour()]).await
    }

    /// As [`Self::run`], with the bank view of the given hours (`0..24`; others are
    /// ignored): the operator's "check everything now" passes `0..24`, and each consent's
    /// bank is asked once more that day.
    pub async fn run_hours(
        &self,
        now: DateTime<Utc>,
        hours: impl IntoIterator<Item = u32>,
    ) -> HealthReport {
        let today = now.date_naive();
        let mut report = HealthReport::default();
        let mut running = JoinSet::new();

        for back in (1..=EXPIRY_LOOKBACK_DAYS).rev() {
            let Some(day) = today.checked_sub_days(Days::new(back)) else {
                continue;
            };
            match self.connections.consent_store().valid_until_on(day).await {
                Ok(due) => {
                    for record in due {
                        limit(&mut running, &mut report).await;
                        running.spawn(expire(self.connections.clone(), record, today));
                    }
                }
                Err(e) => {
                    error!(day = %day, error = %e, "could not read the consents valid until a past day");
                    report.failed += 1;
                }
            }
        }
        drain(&mut running, &mut report).await;

        let mut hours: Vec<u32> = hours.into_iter().filter(|h| *h < 24).collect();
        hours.sort_unstable();
        hours.dedup();
        for hour in &hours {
            match self
                .connections
                .consent_store()
                .valid_for_health_hour(*hour)
                .await
            {
                Ok(valid) => {
                    for record in valid {
                        limit(&mut running, &mut report).await;
                        running.spawn(check(self.connections.clone(), record, today));
                    }
                }
                Err(e) => {
                    error!(hour, error = %e, "could not read the consents of a health hour");
                    report.failed += 1;
                }
            }
        }
        drain(&mut running, &mut report).await;

        match self
            .connections
            .requeue_pending_webhooks(now - WEBHOOK_SWEEP_AGE, WEBHOOK_SWEEP_LIMIT)
            .await
        {
            Ok((queued, failed)) => {
                report.webhooks_requeued += queued;
                report.failed += failed;
            }
            Err(e) => {
                error!(error = %e, "could not read the events awaiting their webhook");
                report.failed += 1;
            }
        }

        info!(
            now = %now,
            hours = ?hours,
            expired = report.expired,
            mirrored = report.mirrored,
            checked = report.checked,
            renewals_started = report.renewals_started,
            webhooks_requeued = report.webhooks_requeued,
            failed = report.failed,
            "health run finished"
        );
        report
    }
}

async fn limit(running: &mut JoinSet<HealthReport>, report: &mut HealthReport) {
    while running.len() >= HEALTH_CONCURRENCY {
        if let Some(done) = running.join_next().await {
            count(report, done);
        }
    }
}

async fn drain(running: &mut JoinSet<HealthReport>, report: &mut HealthReport) {
    while let Some(done) = running.join_next().await {
        count(report, done);
    }
}

fn count(report: &mut HealthReport, done: Result<HealthReport, tokio::task::JoinError>) {
    match done {
        Ok(one) => *report += one,
        Err(e) => {
            error!(error = %e, "a health task panicked");
            report.failed += 1;
        }
    }
}

/// The consent as stored now, if it is still valid (index reads are eventually
/// consistent, and other writers may have acted since).
async fn still_valid(
    connections: &Connections,
    record: &ConsentRecord,
    tally: &mut HealthReport,
) -> Option<ConsentRecord> {
    match connections
        .consent_store()
        .get(&record.user_id, &record.consent_id)
        .await
    {
        Ok(Some(fresh)) if fresh.state == ConsentState::Valid => Some(fresh),
        Ok(_) => None,
        Err(e) => {
            warn!(consent_id = %record.consent_id, error = %e, "could not read a consent");
            tally.failed += 1;
            None
        }
    }
}

/// Expiry pass: a valid consent whose last valid day is before `today`.
async fn expire(
    connections: Arc<Connections>,
    record: ConsentRecord,
    today: NaiveDate,
) -> HealthReport {
    let mut tally = HealthReport::default();
    let Some(fresh) = still_valid(&connections, &record, &mut tally).await else {
        return tally;
    };
    if fresh.valid_until >= today {
        return tally;
    }
    lapse(
        &connections,
        fresh,
        ConsentEvent::ValidUntilPassed,
        &mut tally,
    )
    .await;
    tally
}

/// Bank view: asks the bank about one valid consent and mirrors its end.
async fn check(
    connections: Arc<Connections>,
    record: ConsentRecord,
    today: NaiveDate,
) -> HealthReport {
    let mut tally = HealthReport::default();
    let Some(fresh) = still_valid(&connections, &record, &mut tally).await else {
        return tally;
    };
    let status = match connections.bank_status(&fresh).await {
        Ok(Some(status)) => status,
        Ok(None) => return tally,
        Err(e) => {
            warn!(consent_id = %fresh.consent_id, bank_id = %fresh.bank_id,
                error = log_text(&e), "the bank could not tell a consent's status");
            tally.failed += 1;
            return tally;
        }
    };
    tally.checked += 1;
    match status {
        ConsentStatus::Expired => {
            info!(consent_id = %fresh.consent_id, bank_id = %fresh.bank_id, %today,
                "the bank reports the consent expired");
            lapse(
                &connections,
                fresh,
                ConsentEvent::BankReported(status),
                &mut tally,
            )
            .await;
        }
        ConsentStatus::RevokedByPsu | ConsentStatus::TerminatedByTpp | ConsentStatus::Rejected => {
            match connections
                .apply_event(fresh, ConsentEvent::BankReported(status))
                .await
            {
                Ok((_, true)) => tally.mirrored += 1,
                Ok((saved, false)) => {
                    info!(consent_id = %saved.consent_id, state = %saved.state, %status,
                        "the bank's status does not change this consent");
                }
                Err(e) => {
                    warn!(consent_id = %record.consent_id, error = log_text(&e),
                        "could not record the bank's status");
                    tally.failed += 1;
                }
            }
        }
        ConsentStatus::Valid | ConsentStatus::Received | ConsentStatus::PartiallyAuthorised => {}
    }
    tally
}

/// A valid consent ends by `event` (its date passed, or the bank says it expired): renew
/// it first while it is still valid (so a crash leaves it in the index for the next run),
/// then record the end and notify, then, if it lapsed before the renewal could start,
/// renew the expired consent.
async fn lapse(
    connections: &Connections,
    record: ConsentRecord,
    event: ConsentEvent,
    tally: &mut HealthReport,
) {
    let user = record.user_id.clone();
    let id = record.consent_id.clone();
    let mut renewal_failed = false;
    if record.renewal_outstanding() {
        match connections.carry_renewal(&user, &id, None).await {
            Ok(progress) => tally.renewals_started += u32::from(started(&progress)),
            Err(e) => {
                warn!(consent_id = %id, bank_id = %record.bank_id, error = log_text(&e),
                    "could not renew a lapsing consent");
                tally.failed += 1;
                renewal_failed = true;
            }
        }
    }
    // The renewal wrote on the consent: decide on a fresh read.
    let current = match connections.consent_store().get(&user, &id).await {
        Ok(Some(current)) => current,
        Ok(None) => return,
        Err(e) => {
            warn!(consent_id = %id, error = %e, "could not read a consent");
            tally.failed += 1;
            return;
        }
    };
    let saved = match connections.apply_event(current, event).await {
        Ok((saved, changed)) => {
            if changed {
                match event {
                    ConsentEvent::ValidUntilPassed => tally.expired += 1,
                    _ => tally.mirrored += 1,
                }
            }
            saved
        }
        Err(e) => {
            warn!(consent_id = %id, error = log_text(&e), %event, "could not record a consent's end");
            tally.failed += 1;
            return;
        }
    };
    if saved.state == ConsentState::Expired && !saved.renewal_notified && !renewal_failed {
        match connections.renew_lapsed(&user, &id).await {
            Ok(progress) => tally.renewals_started += u32::from(started(&progress)),
            Err(e) => {
                warn!(consent_id = %id, bank_id = %saved.bank_id, error = log_text(&e),
                    "could not renew an expired consent");
                tally.failed += 1;
            }
        }
    }
}

fn started(progress: &RenewalProgress) -> bool {
    matches!(
        progress,
        RenewalProgress::Ready { started: true, .. } | RenewalProgress::Busy { started: true }
    )
}

/// Builds the job as its Lambda function runs it (the connections service of
/// [`connections_from_env`]). Called once per cold start.
///
/// # Errors
/// A message naming what is missing or invalid.
pub async fn health_from_env(sdk: &aws_config::SdkConfig) -> Result<Health, String> {
    let connections = connections_from_env(sdk).await?;
    Ok(Health::new(Arc::new(connections)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use serde_json::json;

    use crate::bank::BankError;
    use crate::domain::{ConsentId, UserId};
    use crate::services::Clock;
    use crate::services::connections::renewal_id_after;
    use crate::services::testing::*;
    use crate::store::health_hour;

    const ALL: std::ops::Range<u32> = 0..24;

    fn job(h: &Harness) -> Health {
        Health::new(h.svc.clone())
    }

    fn bank<'a>(h: &'a Harness, id: &str) -> &'a FakeBank {
        if id == "lt-alpha" { &h.alpha } else { &h.beta }
    }

    /// `user` links `bank_id` for `days` days and authorises it.
    async fn linked(h: &Harness, user: &UserId, bank_id: &str, days: u32) -> ConsentId {
        let body = json!({"bankId": bank_id, "validDays": days}).to_string();
        let created = h.svc.connect(user, body.as_bytes(), ip()).await.unwrap();
        let fake = bank(h, bank_id);
        fake.answer_status(Ok(ConsentStatus::Valid));
        h.svc.sca_callback(&ok_query(fake)).await;
        fake.answer_status(Ok(ConsentStatus::Received));
        assert_eq!(
            h.consents.one(&created.connection_id).state,
            ConsentState::Valid
        );
        created.connection_id
    }

    fn notes_for(h: &Harness, kind: &str, id: &ConsentId) -> Vec<crate::store::Notification> {
        h.notes
            .of_kind(kind)
            .into_iter()
            .filter(|n| n.data["connectionId"] == id.as_str())
            .collect()
    }

    fn creates(h: &Harness) -> usize {
        h.alpha.creates().len() + h.beta.creates().len()
    }

    #[tokio::test]
    async fn a_consent_past_valid_until_expires_is_renewed_and_notified_once() {
        let h = harness();
        let old = linked(&h, &alice(), "lt-alpha", 6).await;
        let today_ok = linked(&h, &alice(), "lv-beta", 9).await;
        // The last valid day is still valid.
        h.clock.advance(Duration::days(6));
        assert_eq!(
            job(&h).run_hours(h.clock.now(), []).await,
            HealthReport::default()
        );
        h.clock.advance(Duration::days(1));
        let before = creates(&h);
        let report = job(&h).run_hours(h.clock.now(), []).await;
        assert_eq!(
            report,
            HealthReport {
                expired: 1,
                renewals_started: 1,
                ..HealthReport::default()
            }
        );
        let stored = h.consents.one(&old);
        assert_eq!(stored.state, ConsentState::Expired);
        let notes = notes_for(&h, "consent.expired", &old);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].event_id, format!("consent:{old}:expired"));
        let renewal = h.consents.one(&renewal_id_after(&old));
        assert_eq!(renewal.renewal_of.as_ref(), Some(&old));
        assert_eq!(renewal.state, ConsentState::PendingAuthorization);
        assert!(renewal.bank_consent_id.is_some());
        assert_eq!(creates(&h), before + 1);
        let renewal_notes = notes_for(&h, "consent.renewal_required", &old);
        assert_eq!(renewal_notes.len(), 1);
        assert_eq!(
            renewal_notes[0].event_id,
            format!("consent:{old}:renewal:{}", renewal.consent_id)
        );
        assert_eq!(h.consents.one(&today_ok).state, ConsentState::Valid);

        // Run again (and a day later): nothing more.
        let notes_before = h.notes.all().len();
        assert_eq!(
            job(&h).run_hours(h.clock.now(), []).await,
            HealthReport::default()
        );
        h.clock.advance(Duration::days(1));
        assert_eq!(
            job(&h).run_hours(h.clock.now(), []).await,
            HealthReport::default()
        );
        assert_eq!(h.consents.one(&old).version, stored.version);
        assert_eq!(creates(&h), before + 1);
        assert_eq!(h.notes.all().len(), notes_before);
    }

    #[tokio::test]
    async fn a_consent_with_an_announced_renewal_expires_without_a_second_one() {
        let h = harness();
        let old = linked(&h, &alice(), "lt-alpha", 6).await;
        h.svc.renew_now(&alice(), old.as_str(), ip()).await.unwrap();
        let before = creates(&h);
        h.clock.advance(Duration::days(7));
        let report = job(&h).run_hours(h.clock.now(), []).await;
        assert_eq!(report.expired, 1);
        assert_eq!(report.renewals_started, 0);
        assert_eq!(creates(&h), before);
        assert_eq!(h.consents.one(&old).state, ConsentState::Expired);
        assert_eq!(notes_for(&h, "consent.renewal_required", &old).len(), 1);
    }

    #[tokio::test]
    async fn a_consent_expired_by_another_writer_mid_run_still_gets_exactly_one_renewal() {
        let h = harness();
        let old = linked(&h, &alice(), "lt-alpha", 6).await;
        h.clock.advance(Duration::days(7));
        // Just as the job links the renewal to it, another writer expires the consent:
        // the renewal routine for valid consents refuses, the fallback renews the expired one.
        let (user, id) = (alice(), old.clone());
        h.consents.before_update_of(&old, move |items| {
            let stored = items.get_mut(&(user, id)).unwrap();
            stored.state = ConsentState::Expired;
            stored.version += 1;
        });
        let before = creates(&h);
        let report = job(&h).run_hours(h.clock.now(), []).await;
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(creates(&h), before + 1);
        let stored = h.consents.one(&old);
        assert_eq!(stored.state, ConsentState::Expired);
        assert_eq!(stored.renewed_by, Some(renewal_id_after(&old)));
        assert!(stored.renewal_notified);
        let renewal = h.consents.one(&renewal_id_after(&old));
        assert!(renewal.bank_consent_id.is_some());
        assert_eq!(notes_for(&h, "consent.renewal_required", &old).len(), 1);
    }

    #[tokio::test]
    async fn renew_lapsed_creates_one_fresh_consent_for_an_expired_one() {
        let h = harness();
        let old = linked(&h, &alice(), "lt-alpha", 6).await;
        let mut expired = h.consents.one(&old);
        expired.state = ConsentState::Expired;
        h.consents.put(expired);
        let before = creates(&h);
        for _ in 0..2 {
            h.svc.renew_lapsed(&alice(), &old).await.unwrap();
        }
        assert_eq!(creates(&h), before + 1);
        let renewal = h.consents.one(&renewal_id_after(&old));
        assert_eq!(renewal.renewal_of.as_ref(), Some(&old));
        assert_eq!(renewal.bank_id, h.consents.one(&old).bank_id);
        assert_eq!(renewal.user_id, alice());
        let notes = notes_for(&h, "consent.renewal_required", &old);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].message.contains("has expired"),
            "{}",
            notes[0].message
        );

        // A consent the user revoked is not renewed behind their back.
        let revoked = linked(&h, &bob(), "lt-alpha", 6).await;
        h.svc.revoke(&bob(), revoked.as_str()).await.unwrap();
        let before = creates(&h);
        h.svc.renew_lapsed(&bob(), &revoked).await.unwrap();
        assert_eq!(creates(&h), before);
    }

    #[tokio::test]
    async fn revoked_at_the_bank_is_mirrored_and_notified_once() {
        let h = harness();
        let id = linked(&h, &alice(), "lt-alpha", 90).await;
        h.alpha.answer_status(Ok(ConsentStatus::RevokedByPsu));
        let report = job(&h).run_hours(h.clock.now(), ALL).await;
        assert_eq!(
            report,
            HealthReport {
                mirrored: 1,
                checked: 1,
                ..HealthReport::default()
            }
        );
        assert_eq!(h.consents.one(&id).state, ConsentState::RevokedByPsu);
        let notes = notes_for(&h, "consent.revoked_by_psu", &id);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].event_id, format!("consent:{id}:revoked_by_psu"));
        let calls = h.alpha.status_calls();
        assert_eq!(
            job(&h).run_hours(h.clock.now(), ALL).await,
            HealthReport::default()
        );
        assert_eq!(h.alpha.status_calls(), calls, "no longer valid: not asked");
        assert_eq!(notes_for(&h, "consent.revoked_by_psu", &id).len(), 1);
        assert!(h.consents.all().iter().all(|c| c.renewal_of.is_none()));
    }

    #[tokio::test]
    async fn expired_at_the_bank_is_mirrored_and_renewed_once() {
        let h = harness();
        let id = linked(&h, &alice(), "lt-alpha", 90).await;
        h.alpha.answer_status(Ok(ConsentStatus::Expired));
        let report = job(&h).run_hours(h.clock.now(), ALL).await;
        assert_eq!((report.mirrored, report.renewals_started), (1, 1));
        assert_eq!(h.consents.one(&id).state, ConsentState::Expired);
        assert_eq!(notes_for(&h, "consent.expired", &id).len(), 1);
        assert_eq!(notes_for(&h, "consent.renewal_required", &id).len(), 1);
    }

    #[tokio::test]
    async fn a_consent_valid_at_the_bank_is_unchanged() {
        let h = harness();
        let id = linked(&h, &alice(), "lt-alpha", 90).await;
        let before = h.consents.one(&id);
        let notes = h.notes.all().len();
        for status in [ConsentStatus::Valid, ConsentStatus::Received] {
            h.alpha.answer_status(Ok(status));
            let report = job(&h).run_hours(h.clock.now(), ALL).await;
            assert_eq!(
                report,
                HealthReport {
                    checked: 1,
                    ..HealthReport::default()
                }
            );
        }
        assert_eq!(h.consents.one(&id), before);
        assert_eq!(h.notes.all().len(), notes);
    }

    #[tokio::test]
    async fn each_consent_is_asked_in_its_own_hour_only() {
        let h = harness();
        let id = linked(&h, &alice(), "lt-alpha", 90).await;
        let hour = health_hour(&id);
        let day = h.clock.now().date_naive();
        let at = |hour: u32| day.and_hms_opt(hour, 5, 0).unwrap().and_utc();
        let report = job(&h).run(at((hour + 1) % 24)).await;
        assert_eq!(report.checked, 0);
        assert_eq!(h.alpha.status_calls(), 1, "only the SCA callback asked");
        let report = job(&h).run(at(hour)).await;
        assert_eq!(report.checked, 1);
        assert_eq!(
            h.alpha.status_ids().last(),
            h.consents.one(&id).bank_consent_id.as_ref()
        );
    }

    #[tokio::test]
    async fn a_bank_that_is_down_is_counted_and_the_others_are_still_checked() {
        let h = harness();
        let at_alpha = linked(&h, &alice(), "lt-alpha", 90).await;
        let at_beta = linked(&h, &bob(), "lv-beta", 90).await;
        h.alpha.answer_status(Err(BankError::Unavailable {
            status: Some(503),
            retry_after: None,
        }));
        h.beta.answer_status(Ok(ConsentStatus::TerminatedByTpp));
        let report = job(&h).run_hours(h.clock.now(), ALL).await;
        assert_eq!(
            report,
            HealthReport {
                mirrored: 1,
                checked: 1,
                failed: 1,
                ..HealthReport::default()
            }
        );
        assert_eq!(h.consents.one(&at_alpha).state, ConsentState::Valid);
        assert_eq!(
            h.consents.one(&at_beta).state,
            ConsentState::TerminatedByTpp
        );
        assert_eq!(
            notes_for(&h, "consent.terminated_by_tpp", &at_beta).len(),
            1
        );
    }

    #[tokio::test]
    async fn a_webhook_whose_queueing_failed_is_queued_by_the_sweep_exactly_once() {
        let h = harness();
        let fine = linked(&h, &alice(), "lt-alpha", 90).await;
        // The queue fails right after the commit of the next state change.
        let body = json!({"bankId": "lv-beta", "validDays": 90}).to_string();
        let created = h.svc.connect(&bob(), body.as_bytes(), ip()).await.unwrap();
        let id = created.connection_id;
        h.beta.answer_status(Ok(ConsentStatus::Valid));
        *h.webhooks.failing.lock().unwrap() = 1;
        h.svc.sca_callback(&ok_query(&h.beta)).await;
        h.beta.answer_status(Ok(ConsentStatus::Received));
        assert_eq!(h.consents.one(&id).state, ConsentState::Valid);
        let event = format!("consent:{id}:valid");
        assert_eq!(notes_for(&h, "consent.valid", &id).len(), 1);
        let fine_event = format!("consent:{fine}:valid");
        assert_eq!(h.webhooks.event_ids(), std::slice::from_ref(&fine_event));

        // Too young: the writer may still be at work.
        h.clock.advance(Duration::minutes(1));
        assert_eq!(
            job(&h).run_hours(h.clock.now(), []).await,
            HealthReport::default()
        );
        assert_eq!(h.webhooks.event_ids().len(), 1);

        h.clock.advance(Duration::minutes(2));
        let report = job(&h).run_hours(h.clock.now(), []).await;
        assert_eq!(
            report,
            HealthReport {
                webhooks_requeued: 1,
                ..HealthReport::default()
            }
        );
        assert_eq!(h.webhooks.event_ids(), [fine_event.clone(), event.clone()]);

        // Exactly once: later runs find nothing pending.
        h.clock.advance(Duration::hours(1));
        assert_eq!(
            job(&h).run_hours(h.clock.now(), []).await,
            HealthReport::default()
        );
        assert_eq!(h.webhooks.event_ids(), [fine_event, event]);
        assert_eq!(notes_for(&h, "consent.valid", &id).len(), 1);
    }

    #[tokio::test]
    async fn a_sweep_whose_send_fails_counts_it_and_the_next_one_queues_it() {
        let h = harness();
        let body = json!({"bankId": "lt-alpha", "validDays": 90}).to_string();
        let created = h
            .svc
            .connect(&alice(), body.as_bytes(), ip())
            .await
            .unwrap();
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        *h.webhooks.failing.lock().unwrap() = 2;
        h.svc.sca_callback(&ok_query(&h.alpha)).await;
        h.alpha.answer_status(Ok(ConsentStatus::Received));
        h.clock.advance(Duration::minutes(5));
        let report = job(&h).run_hours(h.clock.now(), []).await;
        assert_eq!((report.webhooks_requeued, report.failed), (0, 1));
        let report = job(&h).run_hours(h.clock.now(), []).await;
        assert_eq!((report.webhooks_requeued, report.failed), (1, 0));
        assert_eq!(
            h.webhooks.event_ids(),
            [format!("consent:{}:valid", created.connection_id)]
        );
    }

    #[tokio::test]
    async fn a_failed_notification_write_leaves_the_consent_for_the_next_run() {
        let h = harness();
        let id = linked(&h, &alice(), "lt-alpha", 90).await;
        let valid = h.consents.one(&id);
        h.alpha.answer_status(Ok(ConsentStatus::RevokedByPsu));
        h.notes.fail_next_put();
        let report = job(&h).run_hours(h.clock.now(), ALL).await;
        assert_eq!((report.mirrored, report.failed), (0, 1), "{report:?}");
        assert_eq!(h.consents.one(&id), valid, "nothing half-applied");
        assert!(notes_for(&h, "consent.revoked_by_psu", &id).is_empty());

        let report = job(&h).run_hours(h.clock.now(), ALL).await;
        assert_eq!((report.mirrored, report.failed), (1, 0), "{report:?}");
        assert_eq!(h.consents.one(&id).state, ConsentState::RevokedByPsu);
        assert_eq!(notes_for(&h, "consent.revoked_by_psu", &id).len(), 1);
        assert_eq!(
            h.webhooks.event_ids().last(),
            Some(&format!("consent:{id}:revoked_by_psu"))
        );
    }
}
