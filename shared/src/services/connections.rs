//! Bank connections: link a bank (an AIS consent authorised by SCA redirect), the SCA
//! callback, list/get, revoke and "renew now".
//!
//! A connection is one [`ConsentRecord`], keyed by user and consent id. Its lifecycle is the
//! consent state machine ([`ConsentState::apply`]); every change is a conditional write on
//! the record's `version`, retried once with a fresh read when another writer got there
//! first, so concurrent callbacks, revocations and renewals never double-apply anything.
//!
//! Decisions worth knowing:
//! - `connect` stores the record *before* calling the bank, so no consent ever exists at a
//!   bank without our record of it. When the bank then refuses, the record is moved to
//!   `terminated_by_tpp` (there is no delete in [`ConsentStore`], and `rejected` would claim
//!   the user refused): it never shows as pending, and the error is returned.
//! - The SCA `state` is verified, then its nonce is consumed, *then* the bank is asked.
//!   Consuming first closes replay races; if the bank then fails, the user is told to
//!   refresh from the app, and [`Connections::get`] asks the bank for the status of a
//!   connection that still waits for authorisation.
//! - We trust the bank's status over the callback's `outcome=nok` hint: a `nok` redirect
//!   with the bank still saying `received` stays pending.
//! - Only redirect-style SCA (`scaRedirect` / `scaOAuth` links) is supported: a bank that
//!   answers without an SCA link gets its consent deleted again and the call fails.
//! - A state change the user is told about (`consent.valid`, `.rejected`, `.expired`,
//!   `.revoked_by_psu`, `.terminated_by_tpp`) is written in one transaction with its
//!   notification ([`ConsentOutbox`]): a failed notification write fails the change (the
//!   callback answers "try again", the refresh or the next job run writes both). The
//!   webhook is queued after the commit; the health job's sweep queues what failed there.
//! - "Renew now" and the daily renewal job ([`super::renewal`]) share one routine
//!   (`Connections::carry_renewal`): claim first (a renewal record with an id derived from
//!   the renewed consent's id), then one lease holder creates the consent at the bank, then
//!   the user is notified. Concurrent or crashed runs create one renewal at the bank; the
//!   steps, and the one crash window that can leave an unused consent at a bank, are
//!   described in [`super::renewal`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use chrono::{DateTime, Days, Duration, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tracing::{error, info, warn};
use url::Url;
use uuid::Uuid;

use super::{Clock, ServiceError};
use crate::bank::registry::{BankConfig, BankRegistry};
use crate::bank::{BankApi, BankError, ConsentAccess, ConsentRequest, RedirectUris};
use crate::domain::error::echo;
use crate::domain::{
    BankId, ConsentEvent, ConsentId, ConsentState, ConsentStatus, NotificationId, UserId,
};
use crate::http::FieldError;
use crate::queue::Queue;
use crate::sca_state::{ScaState, StateError, StateSigner, StateSubject};
use crate::store::{
    BankDataStore, ConsentOutbox, ConsentRecord, ConsentStore, NonceStore, Notification,
    NotificationStore, StoreError,
};
use crate::webhook::Notifier;

/// Longest consent we ever ask for (PSD2 RTS: 180 days).
pub const MAX_VALID_DAYS: u32 = 180;
/// Most reads per day without the user we ever ask for.
pub const MAX_FREQUENCY_PER_DAY: u32 = 4;
/// Longest accepted `redirectUrl`, so the signed `state` stays well below its size cap.
pub const MAX_REDIRECT_URL_LEN: usize = 1024;

/// Environment variable: our SCA callback URL (`GET /v1/callbacks/sca`).
pub const CALLBACK_URL_ENV: &str = "CALLBACK_URL";
/// Environment variable: comma-separated origins a caller's `redirectUrl` may point to.
pub const REDIRECT_ALLOW_LIST_ENV: &str = "REDIRECT_ALLOW_LIST";
const DEFAULT_CALLBACK_URL: &str = "http://127.0.0.1:3000/v1/callbacks/sca";
const DEFAULT_REDIRECT_ALLOW_LIST: &str = "http://127.0.0.1:3000,http://localhost:3000";

const BODY_FIELDS: [&str; 4] = ["bankId", "validDays", "frequencyPerDay", "redirectUrl"];

/// Namespace of renewal ids: the first renewal of consent `X` is
/// `UUID v5(RENEWAL_ID_NAMESPACE, X)`; after a failed renewal `F`, the next one is
/// `UUID v5(RENEWAL_ID_NAMESPACE, F)`. Every runner derives the same id, so concurrent
/// runs meet on one record. Never change it: ids already stored were derived with it.
pub const RENEWAL_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2d8e_4b7a_5c39_9e02_a4d1_7b3f_c860);
/// How long one runner holds a renewal to create its consent at the bank: far longer than
/// a bank call may take (the connectors time out within seconds), so a live holder never
/// loses it; a holder that crashed blocks the renewal for at most this long.
pub const RENEWAL_LEASE_SECS: i64 = 120;
/// `PSU-IP-Address` the renewal job sends when the renewed consent has no recorded PSU IP
/// (records written before it was stored). The Berlin Group makes the header mandatory for
/// consent creation; without the PSU present there is no true value, and loopback says so
/// plainly rather than pretending to be the user.
pub const FALLBACK_RENEWAL_PSU_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How long the SCA `state` of a renewal is accepted. The user follows the link from a
/// notification, possibly days later (the job renews up to a week ahead), so the 30 minutes
/// of an interactive connect would expire first. Still signed and single-use.
pub const RENEWAL_STATE_TTL_DAYS: i64 = 14;
/// Rounds of re-reading the renewed consent after lost races before giving up (the next
/// run, or the user's retry, continues).
const RENEWAL_ROUNDS: usize = 4;

/// Settings of the connections service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionsConfig {
    /// Our `GET /v1/callbacks/sca`, e.g. `http://127.0.0.1:3000/v1/callbacks/sca`.
    pub callback_url: Url,
    /// Allowed origins for the caller's `redirectUrl` (scheme, host and port must equal
    /// those of one entry).
    pub redirect_allow_list: Vec<Url>,
    /// Consent length when the caller does not ask for one (then capped by the bank).
    pub default_valid_days: u32,
    /// How long an SCA `state` is accepted.
    pub state_ttl: Duration,
}

impl ConnectionsConfig {
    /// From `CALLBACK_URL` (default `http://127.0.0.1:3000/v1/callbacks/sca`) and
    /// `REDIRECT_ALLOW_LIST` (default `http://127.0.0.1:3000,http://localhost:3000`);
    /// 90 days by default, states live 30 minutes.
    ///
    /// # Errors
    /// A message naming the variable that is not usable.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`], with an explicit variable lookup (for tests).
    ///
    /// # Errors
    /// A message naming the variable that is not usable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let callback = lookup(CALLBACK_URL_ENV).unwrap_or_else(|| DEFAULT_CALLBACK_URL.into());
        let callback_url = Url::parse(callback.trim())
            .ok()
            .filter(|url| is_web_url(url) && url.fragment().is_none())
            .ok_or_else(|| format!("{CALLBACK_URL_ENV} must be an absolute http(s) URL"))?;
        let allow =
            lookup(REDIRECT_ALLOW_LIST_ENV).unwrap_or_else(|| DEFAULT_REDIRECT_ALLOW_LIST.into());
        let redirect_allow_list = allow
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let url = Url::parse(entry).ok().filter(|url| {
                    is_web_url(url)
                        && url.path() == "/"
                        && url.query().is_none()
                        && url.fragment().is_none()
                });
                url.map(|url| url.origin().ascii_serialization())
                    .and_then(|origin| Url::parse(&origin).ok())
                    .ok_or_else(|| {
                        format!(
                            "{REDIRECT_ALLOW_LIST_ENV}: {entry:?} is not an origin such as \
                             https://app.example or http://127.0.0.1:3000"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            callback_url,
            redirect_allow_list,
            default_valid_days: 90,
            state_ttl: Duration::minutes(30),
        })
    }

    /// Checks a caller's `redirectUrl`: an absolute http(s) URL without credentials, at
    /// most [`MAX_REDIRECT_URL_LEN`] characters, on the allow-list; else why not.
    pub(crate) fn redirect_url(&self, value: &Value) -> Result<Url, String> {
        let Value::String(text) = value else {
            return Err("must be a string".into());
        };
        if text.len() > MAX_REDIRECT_URL_LEN {
            return Err(format!("must be at most {MAX_REDIRECT_URL_LEN} characters"));
        }
        // A URL parser drops or encodes these silently; the caller sent something else.
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must not contain spaces or control characters".into());
        }
        match Url::parse(text) {
            Ok(url) if is_web_url(&url) => {
                if !url.username().is_empty() || url.password().is_some() {
                    Err("must not contain credentials".into())
                } else if self.allows(&url) {
                    Ok(url)
                } else {
                    Err("is not on the allow-list".into())
                }
            }
            _ => Err("must be an absolute http(s) URL".into()),
        }
    }

    fn allows(&self, url: &Url) -> bool {
        let origin = url.origin();
        origin.is_tuple()
            && self
                .redirect_allow_list
                .iter()
                .any(|allowed| allowed.origin() == origin)
    }
}

fn is_web_url(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && url.host().is_some()
}

/// Everything [`Connections`] works with.
pub struct ConnectionsDeps {
    pub consents: Arc<dyn ConsentStore>,
    /// Writes a consent's state change and its notification in one transaction (over the
    /// same consents and notifications as `consents` and `notifications`).
    pub outbox: Arc<dyn ConsentOutbox>,
    pub nonces: Arc<dyn NonceStore>,
    pub notifications: Arc<dyn NotificationStore>,
    /// The webhook queue: every new notification is also queued for the operator's
    /// webhook (`crate::webhook`). `None`: inbox only.
    pub webhooks: Option<Arc<dyn Queue>>,
    /// The cached bank data, purged when a connection is revoked (`None`: no cache).
    pub bank_data: Option<Arc<dyn BankDataStore>>,
    /// One connector per bank (usually [`BankRegistry::connectors`]).
    pub banks: HashMap<BankId, Arc<dyn BankApi>>,
    pub registry: BankRegistry,
    pub signer: StateSigner,
    pub config: ConnectionsConfig,
    pub clock: Arc<dyn Clock>,
}

/// The bank-connections use cases.
pub struct Connections {
    consents: Arc<dyn ConsentStore>,
    outbox: Arc<dyn ConsentOutbox>,
    nonces: Arc<dyn NonceStore>,
    notifier: Notifier,
    bank_data: Option<Arc<dyn BankDataStore>>,
    banks: HashMap<BankId, Arc<dyn BankApi>>,
    registry: BankRegistry,
    signer: StateSigner,
    config: ConnectionsConfig,
    clock: Arc<dyn Clock>,
}

/// Answer of `POST /v1/connections` and `POST /v1/connections/{id}/renew`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionCreated {
    pub connection_id: ConsentId,
    pub bank_id: BankId,
    /// `pending_authorization` for a new connection.
    pub status: ConsentState,
    /// The bank's SCA link. Always present for a new connection; absent only when an
    /// already requested renewal has been authorised meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_url: Option<String>,
    pub valid_until: NaiveDate,
}

/// One connection as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionView {
    pub connection_id: ConsentId,
    pub bank_id: BankId,
    pub status: ConsentState,
    pub valid_until: NaiveDate,
    /// Days after today (UTC) that the consent still covers: `validUntil` is the last valid
    /// day, so this is 0 on that day and stays 0 afterwards; 0 for a finished connection.
    pub days_left: u32,
    pub renewal: RenewalView,
    /// The bank's SCA link, only while the connection waits for authorisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Where a connection stands with its renewal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewalView {
    pub state: RenewalState,
    /// The renewing connection, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<ConsentId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RenewalState {
    /// No renewal in progress (never started, or the last one failed).
    None,
    /// A renewal was created and waits for the user's authorisation.
    Pending,
    /// The renewal is valid; this connection is replaced by it.
    Superseded,
}

/// What the SCA callback answers the browser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// `302` to the caller's `redirectUrl`, with `status` and `connectionId` added.
    Redirect { location: Url },
    /// A page for people (no `redirectUrl`, or an error).
    Page {
        status: u16,
        title: String,
        message: String,
    },
}

impl CallbackOutcome {
    pub fn page(status: u16, title: &str, message: &str) -> Self {
        CallbackOutcome::Page {
            status,
            title: title.to_owned(),
            message: message.to_owned(),
        }
    }

    pub fn invalid_link() -> Self {
        Self::page(
            400,
            "Invalid link",
            "This authorisation link is not valid. Please start again from the app.",
        )
    }
}

/// A validated `POST /v1/connections` body.
struct ConnectRequest<'a> {
    bank: &'a BankConfig,
    connector: Arc<dyn BankApi>,
    valid_days: u32,
    frequency_per_day: u32,
    redirect_url: Option<Url>,
}

/// Where a renewal stands after [`Connections::carry_renewal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RenewalProgress {
    /// The renewal exists at the bank and the user has been notified (or it is even valid
    /// already).
    Ready {
        renewal: Box<ConsentRecord>,
        /// This call inserted the renewal record (it started the renewal).
        started: bool,
        /// This call wrote anything at all; `false` when another runner had done everything.
        progressed: bool,
    },
    /// Another runner holds the renewal's lease: it is creating the consent at the bank.
    Busy {
        /// This call inserted the renewal record (it started the renewal).
        started: bool,
    },
    /// The consent is no longer valid (or gone): nothing to renew.
    NotRenewable,
}

/// Outcome of the lease and bank steps of a renewal.
enum AtBank {
    /// The renewal now has its consent at the bank.
    Created(Box<ConsentRecord>),
    /// Another runner holds the lease.
    Busy,
    /// The renewal ended meanwhile (revoked with its connection): start over.
    Ended,
}

impl Connections {
    pub fn new(deps: ConnectionsDeps) -> Self {
        Self {
            consents: deps.consents,
            outbox: deps.outbox,
            nonces: deps.nonces,
            notifier: Notifier::new(deps.notifications, deps.webhooks, deps.clock.clone()),
            bank_data: deps.bank_data,
            banks: deps.banks,
            registry: deps.registry,
            signer: deps.signer,
            config: deps.config,
            clock: deps.clock,
        }
    }

    /// `POST /v1/connections`: body `{bankId, validDays?, frequencyPerDay?, redirectUrl?}`.
    ///
    /// # Errors
    /// [`ServiceError::Validation`] listing every bad field (nothing stored, nothing sent);
    /// [`ServiceError::Bank`] when the bank refuses (the record is then `terminated_by_tpp`);
    /// [`ServiceError::Store`].
    pub async fn connect(
        &self,
        user: &UserId,
        body: &[u8],
        psu_ip: IpAddr,
    ) -> Result<ConnectionCreated, ServiceError> {
        let request = self.validate_connect(body)?;
        let now = self.clock.now();
        let days = request
            .valid_days
            .min(request.bank.max_consent_days)
            .min(MAX_VALID_DAYS);
        let record = ConsentRecord {
            user_id: user.clone(),
            consent_id: ConsentId::new(),
            bank_id: request.bank.id.clone(),
            bank_consent_id: None,
            state: ConsentState::PendingAuthorization,
            access: ConsentAccess::AllAccounts,
            valid_until: now.date_naive() + Days::new(u64::from(days)),
            frequency_per_day: request.frequency_per_day,
            recurring: true,
            renewal_of: None,
            renewed_by: None,
            renewal_notified: false,
            lease_until: None,
            psu_ip: Some(psu_ip),
            sca_url: None,
            created_at: now,
            updated_at: now,
            version: 0,
        };
        self.consents.insert(&record).await?;
        info!(consent_id = %record.consent_id, bank_id = %record.bank_id, "connection requested");
        let record = self
            .start_authorisation(
                record,
                request.connector.as_ref(),
                psu_ip,
                request.redirect_url,
            )
            .await?;
        Ok(created(&record))
    }

    /// `GET /v1/connections`: the caller's connections, newest first.
    ///
    /// # Errors
    /// [`ServiceError::Store`].
    pub async fn list(&self, user: &UserId) -> Result<Vec<ConnectionView>, ServiceError> {
        let mut records = self.consents.list_for_user(user).await?;
        records.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.consent_id.cmp(&b.consent_id))
        });
        let by_id: HashMap<&ConsentId, &ConsentRecord> =
            records.iter().map(|r| (&r.consent_id, r)).collect();
        let today = self.clock.now().date_naive();
        Ok(records
            .iter()
            .map(|record| {
                let renewal = record
                    .renewed_by
                    .as_ref()
                    .and_then(|id| by_id.get(id).copied());
                view(record, renewal, today)
            })
            .collect())
    }

    /// `GET /v1/connections/{id}`. A connection still waiting for authorisation is first
    /// refreshed from the bank (so a user whose callback failed can see the outcome); a
    /// bank error there is logged and the stored view returned.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`] for a malformed id, an unknown id or another user's
    /// connection; [`ServiceError::Store`].
    pub async fn get(&self, user: &UserId, id: &str) -> Result<ConnectionView, ServiceError> {
        let mut record = self.load(user, id).await?;
        if matches!(
            record.state,
            ConsentState::PendingAuthorization | ConsentState::PartiallyAuthorised
        ) {
            let stored = record.clone();
            record = match self.refresh_from_bank(record).await {
                Ok(record) => record,
                Err(e) => {
                    warn!(
                        consent_id = %stored.consent_id,
                        bank_id = %stored.bank_id,
                        error = log_text(&e),
                        "could not refresh a pending connection from the bank"
                    );
                    stored
                }
            };
        }
        let renewal = match &record.renewed_by {
            Some(renewal_id) => self.consents.get(user, renewal_id).await?,
            None => None,
        };
        Ok(view(
            &record,
            renewal.as_ref(),
            self.clock.now().date_naive(),
        ))
    }

    /// `DELETE /v1/connections/{id}`: deletes the consent at the bank and marks ours
    /// `terminated_by_tpp`; a renewal still waiting for authorisation is terminated too.
    /// Idempotent: an already finished connection answers `Ok` without calling the bank.
    ///
    /// # Errors
    /// [`ServiceError::NotFound`] (also for another user's connection);
    /// [`ServiceError::Bank`] when the bank could not be reached (nothing changed);
    /// [`ServiceError::Store`].
    pub async fn revoke(&self, user: &UserId, id: &str) -> Result<(), ServiceError> {
        let record = self.load(user, id).await?;
        let consent_id = record.consent_id.clone();
        let was_final = record.state.is_final();
        self.terminate(record, true).await?;
        // The connection's cached bank data goes with it (again on a repeated DELETE, so
        // a purge that failed once is finished by the retry).
        if let Some(data) = &self.bank_data {
            let purged = data.purge(user, &consent_id).await?;
            info!(consent_id = %consent_id, items = purged, "cached bank data purged");
        }
        if was_final {
            return Ok(());
        }
        // Its renewal, if one was started. Read after our write, so a renewal recorded
        // concurrently is seen too (a renewal run acting later finds this consent no longer
        // valid and stops). The first renewal's id is derived, so one whose run crashed
        // before recording it here is found as well.
        let mut renewals = vec![renewal_id_after(&consent_id)];
        match self.consents.get(user, &consent_id).await {
            Ok(Some(fresh)) => {
                if let Some(id) = fresh.renewed_by.filter(|id| !renewals.contains(id)) {
                    renewals.insert(0, id);
                }
            }
            Ok(None) => {}
            Err(e) => {
                warn!(consent_id = %consent_id, error = %e, "could not re-read a revoked consent")
            }
        }
        for renewal_id in renewals {
            match self.consents.get(user, &renewal_id).await {
                Ok(Some(renewal))
                    if !renewal.state.is_final()
                        && renewal.renewal_of.as_ref() == Some(&consent_id) =>
                {
                    if let Err(e) = self.terminate(renewal, false).await {
                        warn!(
                            consent_id = %renewal_id,
                            error = log_text(&e),
                            "could not terminate the pending renewal of a revoked connection"
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(consent_id = %renewal_id, error = %e, "could not load a renewal"),
            }
        }
        Ok(())
    }

    /// `POST /v1/connections/{id}/renew`: starts a renewal now (same bank, access and
    /// frequency; the bank's longest validity), through the same routine as the renewal
    /// job ([`super::renewal`]), with the caller's IP as `PSU-IP-Address`. Idempotent:
    /// while a renewal is in progress it is returned again (and the user notified once).
    ///
    /// # Errors
    /// [`ServiceError::NotFound`]; [`ServiceError::Conflict`] unless the connection is
    /// valid, or while another run is creating the renewal at the bank right now (retry in a
    /// moment); [`ServiceError::Bank`]; [`ServiceError::Store`].
    pub async fn renew_now(
        &self,
        user: &UserId,
        id: &str,
        psu_ip: IpAddr,
    ) -> Result<ConnectionCreated, ServiceError> {
        let old = self.load(user, id).await?;
        if old.state != ConsentState::Valid {
            return Err(not_renewable());
        }
        match self
            .carry_renewal(user, &old.consent_id, Some(psu_ip))
            .await?
        {
            RenewalProgress::Ready { renewal, .. } => Ok(created(&renewal)),
            RenewalProgress::Busy { .. } => Err(ServiceError::Conflict(
                "the renewal of this connection is being prepared; try again in a moment".into(),
            )),
            RenewalProgress::NotRenewable => Err(not_renewable()),
        }
    }

    /// `GET /v1/callbacks/sca?state=…[&outcome=nok]` for a consent: the bank sends the
    /// browser back here. (The API function dispatches payment states to the payments
    /// service after [`Self::verify_callback`].)
    pub async fn sca_callback(&self, query: &HashMap<String, String>) -> CallbackOutcome {
        match self.verify_callback(query).await {
            Ok(state) => self.consent_callback(state).await,
            Err(outcome) => outcome,
        }
    }

    /// Verifies the callback's signed `state` and consumes its nonce (single use): the
    /// state to act on, or the page to show. A consumed state is never accepted again.
    pub async fn verify_callback(
        &self,
        query: &HashMap<String, String>,
    ) -> Result<ScaState, CallbackOutcome> {
        let now = self.clock.now();
        let Some(token) = query.get("state") else {
            return Err(CallbackOutcome::invalid_link());
        };
        let state = match self.signer.verify(token, now) {
            Ok(state) => state,
            Err(StateError::Expired) => {
                info!("SCA callback with an expired state");
                return Err(CallbackOutcome::page(
                    400,
                    "Link expired",
                    "This authorisation link has expired. Please start again from the app.",
                ));
            }
            Err(e) => {
                info!(reason = %e, "SCA callback with an invalid state");
                return Err(CallbackOutcome::invalid_link());
            }
        };
        match self.nonces.consume(&state.nonce, state.expires_at).await {
            Ok(true) => Ok(state),
            Ok(false) => {
                info!("SCA callback state replayed");
                Err(CallbackOutcome::page(
                    409,
                    "Link already used",
                    "This authorisation link was already used. You can check its status in \
                     the app.",
                ))
            }
            Err(e) => {
                error!(error = %e, "nonce store failed");
                Err(try_again_page())
            }
        }
    }

    /// The consent half of the SCA callback, for a verified and consumed `state`.
    pub async fn consent_callback(&self, state: ScaState) -> CallbackOutcome {
        let (user, consent_id) = match &state.subject {
            StateSubject::Consent { user, consent } => (user, consent),
            StateSubject::Payment { .. } => {
                warn!("payment state handed to the consent callback");
                return CallbackOutcome::invalid_link();
            }
        };
        let record = match self.consents.get(user, consent_id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                warn!(consent_id = %consent_id, "SCA callback for an unknown consent");
                return CallbackOutcome::page(
                    404,
                    "Connection not found",
                    "This bank connection no longer exists.",
                );
            }
            Err(e) => {
                error!(consent_id = %consent_id, error = %e, "consent store failed");
                return try_again_page();
            }
        };
        let bank_id = record.bank_id.clone();
        let record = match self.refresh_from_bank(record).await {
            Ok(record) => record,
            Err(ServiceError::Bank(e)) => {
                warn!(consent_id = %consent_id, bank_id = %bank_id, code = e.code(),
                    "the bank could not confirm an authorisation");
                return CallbackOutcome::page(
                    502,
                    "Bank not reachable",
                    "We could not confirm the authorisation with your bank. You can refresh \
                     the connection's status from the app in a moment.",
                );
            }
            Err(e) => {
                error!(consent_id = %consent_id, error = log_text(&e),
                    "could not record an authorisation");
                return try_again_page();
            }
        };
        info!(consent_id = %consent_id, bank_id = %bank_id, state = %record.state,
            "SCA callback handled");

        let status = callback_status(record.state);
        match state.redirect_url {
            Some(mut location) => {
                location
                    .query_pairs_mut()
                    .append_pair("status", status)
                    .append_pair("connectionId", record.consent_id.as_str());
                CallbackOutcome::Redirect { location }
            }
            None => {
                let bank = self.bank_name(&record.bank_id);
                let (title, message) = match record.state {
                    ConsentState::Valid => (
                        "Bank connected",
                        format!("Your connection to {bank} is active. You can close this window."),
                    ),
                    ConsentState::PendingAuthorization | ConsentState::PartiallyAuthorised => (
                        "Authorisation pending",
                        format!(
                            "{bank} has not confirmed the authorisation yet. You can close this \
                             window and refresh the connection's status from the app."
                        ),
                    ),
                    _ => (
                        "Bank not connected",
                        format!(
                            "The connection to {bank} was not authorised. You can close this \
                             window and try again from the app."
                        ),
                    ),
                };
                CallbackOutcome::Page {
                    status: 200,
                    title: title.to_owned(),
                    message,
                }
            }
        }
    }

    // ---- renewal (shared by "renew now" and the renewal job) ---------------------------

    /// The consent store (the renewal job reads its index).
    pub(crate) fn consent_store(&self) -> &dyn ConsentStore {
        self.consents.as_ref()
    }

    // ---- health (the hourly job in `super::health`) -------------------------------------

    /// The bank's status of a consent (one `GET /v1/consents/{id}/status`, without the
    /// PSU); `None` when it has no bank consent or its bank has no connector any more.
    pub(crate) async fn bank_status(
        &self,
        record: &ConsentRecord,
    ) -> Result<Option<ConsentStatus>, ServiceError> {
        let Some(bank_consent) = &record.bank_consent_id else {
            return Ok(None);
        };
        let Some(connector) = self.banks.get(&record.bank_id) else {
            warn!(consent_id = %record.consent_id, bank_id = %record.bank_id,
                "no connector for this bank");
            return Ok(None);
        };
        Ok(Some(connector.consent_status(bank_consent).await?))
    }

    /// Applies `event` (versioned write; a lost race re-reads and decides again) and, when
    /// the state changed, notifies the user exactly as the SCA callback does (event id
    /// `consent:<id>:<state>`, stored once, in the same transaction as the state change).
    /// `true` when this call changed the state.
    pub(crate) async fn apply_event(
        &self,
        record: ConsentRecord,
        event: ConsentEvent,
    ) -> Result<(ConsentRecord, bool), ServiceError> {
        let (saved, changed) = self.transition(record, event, true).await?;
        if changed {
            info!(consent_id = %saved.consent_id, bank_id = %saved.bank_id, state = %saved.state,
                event = %event, "consent state changed");
            self.after_change(&saved).await;
        }
        Ok((saved, changed))
    }

    /// Carries the renewal of `user`'s consent `old_id` as far as it goes: claim, lease,
    /// consent at the bank, notification (steps 1 to 6 of [`super::renewal`]). Safe to run
    /// any number of times, concurrently, and after a crash at any point: it continues what
    /// an earlier run left. `psu_ip` is the caller's IP when the user asks; the job passes
    /// `None`, and the PSU IP recorded with the consent is sent instead.
    pub(crate) async fn carry_renewal(
        &self,
        user: &UserId,
        old_id: &ConsentId,
        psu_ip: Option<IpAddr>,
    ) -> Result<RenewalProgress, ServiceError> {
        self.carry_renewal_of(user, old_id, psu_ip, ConsentState::Valid)
            .await
    }

    /// The renewal of a consent that has already expired (the health job, when a valid
    /// consent lapsed before it was renewed): a fresh consent at the same bank for the
    /// same user, stored as a new connection with `renewalOf` = the expired one, created at
    /// the bank as a renewal is (our callback, a signed single-use `state`, the PSU IP
    /// recorded with the consent) and announced once (`consent.renewal_required`, event id
    /// `consent:<old>:renewal:<new>`). The same steps, ids and guarantees as
    /// [`Self::carry_renewal`]: however many runs overlap or crash, one renewal. Only
    /// consents in state `expired` qualify (a revoked, rejected or removed one is not
    /// renewed behind the user's back).
    pub(crate) async fn renew_lapsed(
        &self,
        user: &UserId,
        old_id: &ConsentId,
    ) -> Result<RenewalProgress, ServiceError> {
        self.carry_renewal_of(user, old_id, None, ConsentState::Expired)
            .await
    }

    /// [`Self::carry_renewal`] for a consent in state `expected` (`valid`, or `expired`
    /// for [`Self::renew_lapsed`]).
    async fn carry_renewal_of(
        &self,
        user: &UserId,
        old_id: &ConsentId,
        psu_ip: Option<IpAddr>,
        expected: ConsentState,
    ) -> Result<RenewalProgress, ServiceError> {
        let mut started = false;
        let mut progressed = false;
        // The record this call inserted: dropped if the consent turns out to be renewed by
        // another record (only a writer predating derived ids can cause that).
        let mut inserted: Option<ConsentId> = None;
        for _ in 0..RENEWAL_ROUNDS {
            let Some(old) = self.consents.get(user, old_id).await? else {
                return Ok(RenewalProgress::NotRenewable);
            };
            if old.state != expected {
                return Ok(RenewalProgress::NotRenewable);
            }
            // Which renewal: the one recorded on the consent, unless that one failed; then
            // the next one of the derived chain.
            let (renewal_id, recorded) = match &old.renewed_by {
                None => (renewal_id_after(&old.consent_id), None),
                Some(id) => match self.consents.get(user, id).await? {
                    Some(renewal) if renewal.state.is_final() => (renewal_id_after(id), None),
                    recorded => (id.clone(), recorded),
                },
            };

            // Step 1: the renewal record. Whoever inserts it first, everyone continues with it.
            let renewal = match recorded {
                Some(renewal) => renewal,
                None => {
                    let fresh = self.renewal_record(&old, &renewal_id, psu_ip)?;
                    match self.consents.insert(&fresh).await {
                        Ok(()) => {
                            info!(consent_id = %old.consent_id, renewal_id = %renewal_id,
                                bank_id = %old.bank_id, "renewal started");
                            started = true;
                            progressed = true;
                            inserted = Some(renewal_id.clone());
                            fresh
                        }
                        Err(StoreError::AlreadyExists) => self
                            .consents
                            .get(user, &renewal_id)
                            .await?
                            .ok_or(StoreError::NotFound)?,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if renewal.renewal_of.as_ref() != Some(&old.consent_id) {
                return Err(StoreError::Corrupt(format!(
                    "consent {} is recorded as the renewal of {} but does not renew it",
                    renewal.consent_id, old.consent_id
                ))
                .into());
            }

            // Step 2: the renewed consent points at it (and stays in the index until step 6).
            let old = if old.renewed_by.as_ref() == Some(&renewal.consent_id) {
                old
            } else {
                let mut updated = old.clone();
                updated.renewed_by = Some(renewal.consent_id.clone());
                updated.renewal_notified = false;
                updated.updated_at = self.clock.now();
                match self.consents.update(&updated).await {
                    Ok(saved) => {
                        progressed = true;
                        saved
                    }
                    // Someone else wrote it: read again and decide again.
                    Err(StoreError::VersionConflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            if let Some(mine) = inserted.take_if(|mine| *mine != renewal.consent_id) {
                self.drop_orphan(user, &mine).await;
            }
            if renewal.state.is_final() {
                // A failed renewal, now recorded: the next round starts the next one.
                continue;
            }
            if renewal.state == ConsentState::Valid {
                // Authorised already (the user followed the link "renew now" answered): the
                // renewed consent is superseded, and there is nothing left to announce. An
                // expired one cannot be superseded: it is marked done instead.
                if expected == ConsentState::Valid {
                    self.supersede(user, &old.consent_id).await;
                } else {
                    progressed |= self
                        .mark_renewal_notified(old, &renewal.consent_id, expected)
                        .await?;
                }
                return Ok(RenewalProgress::Ready {
                    renewal: Box::new(renewal),
                    started,
                    progressed,
                });
            }

            // Steps 3 and 4: one lease holder creates the consent at the bank.
            let renewal = if renewal.bank_consent_id.is_some() {
                renewal
            } else {
                let ip = psu_ip
                    .or(renewal.psu_ip)
                    .or(old.psu_ip)
                    .unwrap_or(FALLBACK_RENEWAL_PSU_IP);
                match self.renewal_at_bank(renewal, ip).await? {
                    AtBank::Created(renewal) => {
                        progressed = true;
                        *renewal
                    }
                    AtBank::Busy => return Ok(RenewalProgress::Busy { started }),
                    AtBank::Ended => continue,
                }
            };

            // Steps 5 and 6: notify, then take the consent out of the index. Read it again
            // first: a connection revoked meanwhile is not announced (revoking it ended its
            // renewal too).
            let Some(old) = self.consents.get(user, old_id).await? else {
                return Ok(RenewalProgress::NotRenewable);
            };
            if old.state != expected {
                return Ok(RenewalProgress::NotRenewable);
            }
            if old.renewed_by.as_ref() != Some(&renewal.consent_id) {
                continue;
            }
            if !old.renewal_notified {
                progressed |= self.notify_renewal(&old, &renewal).await?;
                progressed |= self
                    .mark_renewal_notified(old, &renewal.consent_id, expected)
                    .await?;
            }
            return Ok(RenewalProgress::Ready {
                renewal: Box::new(renewal),
                started,
                progressed,
            });
        }
        Err(ServiceError::Conflict(
            "the connection kept changing while its renewal was prepared; try again".into(),
        ))
    }

    /// The renewal record of `old` (step 1): same user, bank, access and frequency; valid
    /// for the bank's longest period (at most [`MAX_VALID_DAYS`]) from today.
    fn renewal_record(
        &self,
        old: &ConsentRecord,
        id: &ConsentId,
        psu_ip: Option<IpAddr>,
    ) -> Result<ConsentRecord, ServiceError> {
        let bank = self
            .registry
            .get(&old.bank_id)
            .filter(|_| self.banks.contains_key(&old.bank_id))
            .ok_or_else(no_longer_supported)?;
        let now = self.clock.now();
        let days = bank.max_consent_days.min(MAX_VALID_DAYS);
        Ok(ConsentRecord {
            user_id: old.user_id.clone(),
            consent_id: id.clone(),
            bank_id: old.bank_id.clone(),
            bank_consent_id: None,
            state: ConsentState::PendingAuthorization,
            access: old.access.clone(),
            valid_until: now.date_naive() + Days::new(u64::from(days)),
            frequency_per_day: old.frequency_per_day,
            recurring: old.recurring,
            renewal_of: Some(old.consent_id.clone()),
            renewed_by: None,
            renewal_notified: false,
            lease_until: None,
            psu_ip: psu_ip.or(old.psu_ip),
            sca_url: None,
            created_at: now,
            updated_at: now,
            version: 0,
        })
    }

    /// Steps 3 and 4: takes the lease on a renewal without a bank consent (a versioned
    /// write; a live lease or a lost race means another runner is on it), creates the
    /// consent at the bank and records it. A bank failure releases the lease so the next
    /// run (or the user's retry) can try again at once.
    async fn renewal_at_bank(
        &self,
        renewal: ConsentRecord,
        psu_ip: IpAddr,
    ) -> Result<AtBank, ServiceError> {
        let now = self.clock.now();
        if renewal.lease_until.is_some_and(|until| until > now) {
            return Ok(AtBank::Busy);
        }
        let connector = self
            .banks
            .get(&renewal.bank_id)
            .cloned()
            .ok_or_else(no_longer_supported)?;
        let mut leased = renewal;
        leased.lease_until = Some(now + Duration::seconds(RENEWAL_LEASE_SECS));
        leased.updated_at = now;
        let leased = match self.consents.update(&leased).await {
            Ok(saved) => saved,
            Err(StoreError::VersionConflict { .. }) => return Ok(AtBank::Busy),
            Err(e) => return Err(e.into()),
        };

        let request = self.consent_request(
            &leased,
            psu_ip,
            now + Duration::days(RENEWAL_STATE_TTL_DAYS),
            None,
        );
        let (bank_consent_id, sca) =
            match create_at_bank(connector.as_ref(), &leased, &request).await {
                Ok(created) => created,
                Err(e) => {
                    self.release_lease(leased).await;
                    return Err(e.into());
                }
            };

        // Only a crash from here until the write below leaves the bank's consent unknown
        // to us (an orphan that expires unused; see the module notes of `renewal`).
        crate::chaos::crash_point("renewal_after_bank_call");
        let mut current = leased;
        for _ in 0..RENEWAL_ROUNDS {
            let mut recorded = current.clone();
            recorded.bank_consent_id = Some(bank_consent_id.clone());
            recorded.sca_url = Some(sca.href().to_string());
            recorded.lease_until = None;
            recorded.updated_at = self.clock.now();
            let error = match self.consents.update(&recorded).await {
                Ok(saved) => {
                    info!(consent_id = %saved.consent_id, bank_id = %saved.bank_id,
                        "renewal consent created at the bank");
                    return Ok(AtBank::Created(Box::new(saved)));
                }
                Err(StoreError::VersionConflict { .. }) => {
                    match self
                        .consents
                        .get(&current.user_id, &current.consent_id)
                        .await
                    {
                        // Still ours to record (an unrelated write): again on the fresh one.
                        Ok(Some(fresh))
                            if !fresh.state.is_final() && fresh.bank_consent_id.is_none() =>
                        {
                            current = fresh;
                            continue;
                        }
                        // A runner that took over after our lease ran out recorded its
                        // consent first: that one stays, ours goes.
                        Ok(Some(fresh)) if !fresh.state.is_final() => {
                            best_effort_delete(connector.as_ref(), &fresh, &bank_consent_id).await;
                            return Ok(AtBank::Created(Box::new(fresh)));
                        }
                        // Ended meanwhile (its connection was revoked).
                        Ok(_) => {
                            best_effort_delete(connector.as_ref(), &current, &bank_consent_id)
                                .await;
                            return Ok(AtBank::Ended);
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            error!(consent_id = %current.consent_id, bank_id = %current.bank_id, error = %error,
                "could not record the bank's renewal consent; deleting it at the bank");
            best_effort_delete(connector.as_ref(), &current, &bank_consent_id).await;
            return Err(error.into());
        }
        best_effort_delete(connector.as_ref(), &current, &bank_consent_id).await;
        Err(ServiceError::Conflict(
            "the renewal kept changing while it was recorded; try again".into(),
        ))
    }

    /// Gives a lease up early (after a bank failure); failures are logged (it runs out).
    async fn release_lease(&self, mut leased: ConsentRecord) {
        leased.lease_until = None;
        leased.updated_at = self.clock.now();
        if let Err(e) = self.consents.update(&leased).await {
            warn!(consent_id = %leased.consent_id, error = %e, "could not release a renewal lease");
        }
    }

    /// Step 5: the user's `consent.renewal_required` notification, once per renewal.
    async fn notify_renewal(
        &self,
        old: &ConsentRecord,
        renewal: &ConsentRecord,
    ) -> Result<bool, StoreError> {
        self.notify_checked(
            old,
            format!("consent:{}:renewal:{}", old.consent_id, renewal.consent_id),
            "consent.renewal_required",
            "Renew your bank connection",
            if old.state == ConsentState::Valid {
                format!(
                    "Your connection to {} is valid until {}. Authorise its renewal at your \
                     bank to keep your accounts up to date.",
                    self.bank_name(&old.bank_id),
                    old.valid_until
                )
            } else {
                format!(
                    "Your connection to {} has expired. Authorise its renewal at your bank \
                     to keep your accounts up to date.",
                    self.bank_name(&old.bank_id)
                )
            },
            json!({
                "connectionId": old.consent_id,
                "newConnectionId": renewal.consent_id,
                "bankId": old.bank_id,
                "authUrl": renewal.sca_url,
                "validUntil": old.valid_until,
            }),
        )
        .await
    }

    /// Step 6: the renewed consent is marked notified (and so leaves the renewal index).
    /// `true` when this call wrote it.
    async fn mark_renewal_notified(
        &self,
        mut old: ConsentRecord,
        renewal_id: &ConsentId,
        expected: ConsentState,
    ) -> Result<bool, ServiceError> {
        for _ in 0..RENEWAL_ROUNDS {
            if old.state != expected
                || old.renewed_by.as_ref() != Some(renewal_id)
                || old.renewal_notified
            {
                return Ok(false);
            }
            let mut updated = old.clone();
            updated.renewal_notified = true;
            updated.updated_at = self.clock.now();
            match self.consents.update(&updated).await {
                Ok(_) => return Ok(true),
                Err(StoreError::VersionConflict { .. }) => {
                    match self.consents.get(&old.user_id, &old.consent_id).await? {
                        Some(fresh) => old = fresh,
                        None => return Ok(false),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Conflict(
            "the connection kept changing while its renewal was recorded; try again".into(),
        ))
    }

    /// Terminates a renewal record this call inserted but that the renewed consent does not
    /// point at (it never reached a bank); failures are logged.
    async fn drop_orphan(&self, user: &UserId, id: &ConsentId) {
        match self.consents.get(user, id).await {
            Ok(Some(orphan)) if orphan.bank_consent_id.is_none() && !orphan.state.is_final() => {
                info!(consent_id = %id, "dropping a renewal record that lost to another renewal");
                self.abandon(orphan).await;
            }
            Ok(_) => {}
            Err(e) => warn!(consent_id = %id, error = %e, "could not load a renewal record"),
        }
    }

    // ---- steps -----------------------------------------------------------------------

    /// Checks the whole body and reports every bad field at once.
    fn validate_connect(&self, body: &[u8]) -> Result<ConnectRequest<'_>, ServiceError> {
        let body = super::body::json_object(body)?;
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| {
            errors.push(FieldError {
                field: field.to_owned(),
                message,
            });
        };

        let bank = match present(&body, "bankId") {
            None => {
                fail("bankId", "is required".into());
                None
            }
            Some(Value::String(text)) => {
                let found = BankId::parse(text)
                    .ok()
                    .and_then(|id| self.registry.get(&id).zip(self.banks.get(&id).cloned()));
                if found.is_none() {
                    fail("bankId", "unknown bank".into());
                }
                found
            }
            Some(_) => {
                fail("bankId", "must be a string".into());
                None
            }
        };

        let valid_days = match present(&body, "validDays") {
            None => None,
            Some(value) => match value.as_u64() {
                Some(days) if (1..=u64::from(MAX_VALID_DAYS)).contains(&days) => {
                    u32::try_from(days).ok()
                }
                _ => {
                    fail(
                        "validDays",
                        format!("must be a whole number between 1 and {MAX_VALID_DAYS}"),
                    );
                    None
                }
            },
        };

        let max_frequency = bank.as_ref().map_or(MAX_FREQUENCY_PER_DAY, |(config, _)| {
            config.frequency_per_day.min(MAX_FREQUENCY_PER_DAY)
        });
        let frequency = match present(&body, "frequencyPerDay") {
            None => None,
            Some(value) => match value.as_u64() {
                Some(n) if (1..=u64::from(max_frequency)).contains(&n) => u32::try_from(n).ok(),
                _ => {
                    let at_bank = if bank.is_some() { " for this bank" } else { "" };
                    fail(
                        "frequencyPerDay",
                        format!("must be a whole number between 1 and {max_frequency}{at_bank}"),
                    );
                    None
                }
            },
        };

        let redirect_url = match present(&body, "redirectUrl") {
            None => None,
            Some(value) => match self.config.redirect_url(value) {
                Ok(url) => Some(url),
                Err(message) => {
                    fail("redirectUrl", message);
                    None
                }
            },
        };

        for key in body.keys() {
            if !BODY_FIELDS.contains(&key.as_str()) {
                fail(&echo(key), "unknown field".into());
            }
        }

        match bank {
            Some((config, connector)) if errors.is_empty() => Ok(ConnectRequest {
                bank: config,
                connector,
                valid_days: valid_days.unwrap_or(self.config.default_valid_days),
                frequency_per_day: frequency.unwrap_or(max_frequency),
                redirect_url,
            }),
            _ => Err(ServiceError::Validation(errors)),
        }
    }

    /// Creates the consent at the bank for a freshly inserted record and stores the bank's
    /// id and SCA link. On failure the record is terminated (see the module notes).
    async fn start_authorisation(
        &self,
        record: ConsentRecord,
        connector: &dyn BankApi,
        psu_ip: IpAddr,
        redirect_url: Option<Url>,
    ) -> Result<ConsentRecord, ServiceError> {
        let now = self.clock.now();
        let request =
            self.consent_request(&record, psu_ip, now + self.config.state_ttl, redirect_url);
        let (bank_consent_id, sca) = match create_at_bank(connector, &record, &request).await {
            Ok(created) => created,
            Err(e) => {
                self.abandon(record).await;
                return Err(e.into());
            }
        };
        let mut updated = record.clone();
        updated.bank_consent_id = Some(bank_consent_id.clone());
        updated.sca_url = Some(sca.href().to_string());
        updated.updated_at = now;
        match self.consents.update(&updated).await {
            Ok(saved) => {
                info!(consent_id = %saved.consent_id, bank_id = %saved.bank_id,
                    "consent created at the bank");
                Ok(saved)
            }
            Err(e) => {
                error!(consent_id = %record.consent_id, bank_id = %record.bank_id, error = %e,
                    "could not record the bank's consent; deleting it at the bank");
                best_effort_delete(connector, &record, &bank_consent_id).await;
                self.abandon(record).await;
                Err(e.into())
            }
        }
    }

    /// The bank request creating `record`'s consent: our callback as TPP redirect, with a
    /// signed `state` naming the record (valid until `state_expires`).
    fn consent_request(
        &self,
        record: &ConsentRecord,
        psu_ip: IpAddr,
        state_expires: DateTime<Utc>,
        redirect_url: Option<Url>,
    ) -> ConsentRequest {
        let state = ScaState::new(
            StateSubject::Consent {
                user: record.user_id.clone(),
                consent: record.consent_id.clone(),
            },
            state_expires,
            redirect_url,
        );
        let token = self.signer.sign(&state);
        let mut ok = self.config.callback_url.clone();
        ok.query_pairs_mut().append_pair("state", &token);
        let mut nok = ok.clone();
        nok.query_pairs_mut().append_pair("outcome", "nok");
        ConsentRequest {
            access: record.access.clone(),
            recurring: record.recurring,
            valid_until: record.valid_until,
            frequency_per_day: record.frequency_per_day,
            psu_ip,
            psu_id: None,
            redirect: RedirectUris { ok, nok: Some(nok) },
        }
    }

    /// Marks a record that never became usable `terminated_by_tpp`; failures are logged.
    async fn abandon(&self, record: ConsentRecord) {
        let id = record.consent_id.clone();
        if let Err(e) = self
            .transition(record, ConsentEvent::TerminatedByTpp, false)
            .await
        {
            error!(consent_id = %id, error = log_text(&e), "could not mark an abandoned consent");
        }
    }

    /// Deletes at the bank (when there is a bank consent) and terminates here. `Ok` without
    /// any call when the record is already final.
    async fn terminate(&self, record: ConsentRecord, notify: bool) -> Result<(), ServiceError> {
        if record.state.is_final() {
            return Ok(());
        }
        if let Some(bank_consent) = &record.bank_consent_id {
            match self.banks.get(&record.bank_id) {
                Some(connector) => match connector.delete_consent(bank_consent).await {
                    Ok(())
                    | Err(
                        BankError::ResourceUnknown { .. }
                        | BankError::ConsentInvalid { .. }
                        | BankError::ConsentExpired,
                    ) => {}
                    Err(e) => {
                        warn!(consent_id = %record.consent_id, bank_id = %record.bank_id,
                            code = e.code(), "the bank could not delete a consent");
                        return Err(e.into());
                    }
                },
                None => warn!(consent_id = %record.consent_id, bank_id = %record.bank_id,
                    "no connector for this bank; terminating the consent here only"),
            }
        }
        let (saved, changed) = self
            .transition(record, ConsentEvent::TerminatedByTpp, notify)
            .await?;
        if changed {
            info!(consent_id = %saved.consent_id, bank_id = %saved.bank_id, "connection revoked");
        }
        Ok(())
    }

    /// Asks the bank for the status of an open consent and applies it. Final records and
    /// records without a bank consent are returned unchanged.
    async fn refresh_from_bank(
        &self,
        record: ConsentRecord,
    ) -> Result<ConsentRecord, ServiceError> {
        if record.state.is_final() {
            return Ok(record);
        }
        let Some(bank_consent) = record.bank_consent_id.clone() else {
            return Ok(record);
        };
        let Some(connector) = self.banks.get(&record.bank_id) else {
            warn!(consent_id = %record.consent_id, bank_id = %record.bank_id,
                "no connector for this bank");
            return Ok(record);
        };
        let status = connector.consent_status(&bank_consent).await?;
        let (saved, changed) = self
            .transition(record, ConsentEvent::BankReported(status), true)
            .await?;
        if changed {
            self.after_change(&saved).await;
        }
        Ok(saved)
    }

    /// Applies `event` with a versioned write; on a lost race re-reads and tries once more.
    /// A refused transition (e.g. the consent is already final) is "no change".
    ///
    /// With `notify`, the new state's notification (event id `consent:<id>:<state>`) is
    /// written in the same transaction as the state (the outbox, [`ConsentOutbox`]): both
    /// or neither, so a failed notification write fails the change and its retry applies
    /// both. Its webhook is queued after the commit, best effort: what fails there is
    /// queued by the health job's sweep ([`Self::requeue_pending_webhooks`]).
    async fn transition(
        &self,
        mut record: ConsentRecord,
        event: ConsentEvent,
        notify: bool,
    ) -> Result<(ConsentRecord, bool), ServiceError> {
        let mut retried = false;
        loop {
            let next = match record.state.apply(event) {
                Ok(next) if next != record.state => next,
                _ => return Ok((record, false)),
            };
            let mut updated = record.clone();
            updated.state = next;
            updated.updated_at = self.clock.now();
            let notification = if notify {
                self.state_notification(&updated)
            } else {
                None
            };
            let written = match &notification {
                Some(notification) => {
                    self.outbox
                        .update_with_event(&updated, notification, self.notifier.has_webhooks())
                        .await
                }
                None => self
                    .consents
                    .update(&updated)
                    .await
                    .map(|saved| (saved, false)),
            };
            match written {
                Ok((saved, new)) => {
                    if let Some(notification) = &notification {
                        self.queue_webhook(&saved, notification, new).await;
                    }
                    return Ok((saved, true));
                }
                Err(StoreError::VersionConflict { .. }) if !retried => {
                    retried = true;
                    record = self
                        .consents
                        .get(&record.user_id, &record.consent_id)
                        .await?
                        .ok_or(ServiceError::NotFound)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The notification announcing that `record` reached its state, if that state is
    /// announced (event id `consent:<id>:<state>`: one per consent and state).
    fn state_notification(&self, record: &ConsentRecord) -> Option<Notification> {
        let bank = self.bank_name(&record.bank_id);
        let (title, message) = match record.state {
            ConsentState::Valid => (
                "Bank connected",
                format!(
                    "Your connection to {bank} is active until {}.",
                    record.valid_until
                ),
            ),
            ConsentState::Rejected => (
                "Bank connection not authorised",
                format!("The authorisation at {bank} was refused or cancelled."),
            ),
            ConsentState::Expired => (
                "Bank connection expired",
                format!("Your connection to {bank} has expired."),
            ),
            ConsentState::RevokedByPsu => (
                "Bank connection revoked",
                format!("Your connection to {bank} was revoked at the bank."),
            ),
            ConsentState::TerminatedByTpp => (
                "Bank connection removed",
                format!("Your connection to {bank} has been removed."),
            ),
            ConsentState::PendingAuthorization
            | ConsentState::PartiallyAuthorised
            | ConsentState::Superseded => return None,
        };
        Some(Notification {
            user_id: record.user_id.clone(),
            notification_id: NotificationId::new(),
            event_id: format!("consent:{}:{}", record.consent_id, record.state.as_str()),
            kind: format!("consent.{}", record.state.as_str()),
            title: title.to_owned(),
            message,
            data: json!({
                "connectionId": record.consent_id,
                "bankId": record.bank_id,
                "status": record.state,
            }),
            created_at: self.clock.now(),
        })
    }

    /// After a state change and its notification committed: queues the webhook; a failure
    /// is logged and left to the sweep (the event stays in the pending-webhook index).
    async fn queue_webhook(&self, record: &ConsentRecord, notification: &Notification, new: bool) {
        if new {
            info!(consent_id = %record.consent_id, kind = %notification.kind, "user notified");
        }
        if let Err(e) = self.notifier.enqueue(notification, new).await {
            warn!(consent_id = %record.consent_id, kind = %notification.kind, error = %e,
                "could not queue a webhook; the health job's sweep queues it later");
        }
    }

    /// Queues the webhooks of stored state-change events whose queueing failed (written
    /// with the pending-webhook mark, not marked queued, created before `created_before`),
    /// at most `limit`; nothing without a webhook queue. Each event is re-read
    /// (consistently) and queued only while its `webhookQueuedAt` is unset. Returns how
    /// many were queued and how many failed (left for the next sweep).
    ///
    /// # Errors
    /// The index could not be read.
    pub(crate) async fn requeue_pending_webhooks(
        &self,
        created_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<(u32, u32), StoreError> {
        if !self.notifier.has_webhooks() {
            return Ok((0, 0));
        }
        let pending = self.outbox.pending_webhooks(created_before, limit).await?;
        let (mut queued, mut failed) = (0, 0);
        for notification in pending {
            match self.notifier.enqueue(&notification, false).await {
                Ok(true) => {
                    info!(event_id = %notification.event_id, kind = %notification.kind,
                        "webhook queued by the sweep");
                    queued += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(event_id = %notification.event_id, error = %e,
                        "the sweep could not queue a webhook");
                    failed += 1;
                }
            }
        }
        Ok((queued, failed))
    }

    /// After a state change was written: supersedes the renewed consent when a renewal
    /// became valid (its notification was written with the change).
    async fn after_change(&self, record: &ConsentRecord) {
        if record.state == ConsentState::Valid
            && let Some(old_id) = &record.renewal_of
        {
            self.supersede(&record.user_id, old_id).await;
        }
    }

    /// The renewed consent is replaced by its now valid renewal.
    async fn supersede(&self, user: &UserId, old_id: &ConsentId) {
        let result = match self.consents.get(user, old_id).await {
            Ok(Some(old)) => self.transition(old, ConsentEvent::Superseded, false).await,
            Ok(None) => return,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok((_, true)) => info!(consent_id = %old_id, "connection superseded by its renewal"),
            Ok((_, false)) => {}
            Err(e) => {
                error!(consent_id = %old_id, error = log_text(&e), "could not supersede a consent")
            }
        }
    }

    /// Stores one inbox notification once per event id and queues its webhook (see
    /// [`Notifier`]); `true` when it was new.
    async fn notify_checked(
        &self,
        record: &ConsentRecord,
        event_id: String,
        kind: &str,
        title: &str,
        message: String,
        data: Value,
    ) -> Result<bool, StoreError> {
        let notification = Notification {
            user_id: record.user_id.clone(),
            notification_id: NotificationId::new(),
            event_id,
            kind: kind.to_owned(),
            title: title.to_owned(),
            message,
            data,
            created_at: self.clock.now(),
        };
        // Stored once per event id and queued for the webhook; a failed enqueue is an
        // error here, so the caller's invocation fails and its retry queues it.
        let stored = self.notifier.notify(&notification).await?;
        if stored {
            info!(consent_id = %record.consent_id, kind, "user notified");
        }
        Ok(stored)
    }

    /// The caller's record, or `NotFound` (malformed id, unknown id, another user's id).
    async fn load(&self, user: &UserId, id: &str) -> Result<ConsentRecord, ServiceError> {
        let id = ConsentId::parse(id).map_err(|_| ServiceError::NotFound)?;
        self.consents
            .get(user, &id)
            .await?
            .ok_or(ServiceError::NotFound)
    }

    fn bank_name(&self, id: &BankId) -> String {
        self.registry
            .get(id)
            .map_or_else(|| id.to_string(), |bank| bank.name.clone())
    }
}

/// A body field, with JSON `null` treated as absent.
fn present<'a>(body: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    body.get(field).filter(|value| !value.is_null())
}

/// What a log line says about a failure: the bank's error code only (bank messages are
/// free text we do not control), our own errors in full.
pub fn log_text(error: &ServiceError) -> String {
    match error {
        ServiceError::Bank(e) => format!("bank error {}", e.code()),
        other => other.to_string(),
    }
}

fn not_renewable() -> ServiceError {
    ServiceError::Conflict("only a valid connection can be renewed".into())
}

fn no_longer_supported() -> ServiceError {
    ServiceError::Conflict("this bank is no longer supported".into())
}

/// The id of the renewal that follows `previous`: the renewed consent for the first
/// renewal, the failed renewal for the next one (see [`RENEWAL_ID_NAMESPACE`]).
pub fn renewal_id_after(previous: &ConsentId) -> ConsentId {
    let id = Uuid::new_v5(&RENEWAL_ID_NAMESPACE, previous.as_str().as_bytes());
    ConsentId::parse(&id.hyphenated().to_string()).expect("a UUID is a valid consent id")
}

pub(crate) fn try_again_page() -> CallbackOutcome {
    CallbackOutcome::page(
        500,
        "Something went wrong",
        "We could not complete the authorisation just now. You can refresh the connection's \
         status from the app in a moment.",
    )
}

/// The `status` we report to the caller's `redirectUrl`: `valid`, `rejected`,
/// `pending_authorization`, or the final state's own code in the rare other cases.
fn callback_status(state: ConsentState) -> &'static str {
    match state {
        ConsentState::PendingAuthorization | ConsentState::PartiallyAuthorised => {
            ConsentState::PendingAuthorization.as_str()
        }
        other => other.as_str(),
    }
}

/// Creates `record`'s consent at the bank and returns the bank's id and SCA link. A
/// consent without an SCA link is deleted again (only redirect SCA is supported); the
/// caller cleans up its own record on any error.
async fn create_at_bank(
    connector: &dyn BankApi,
    record: &ConsentRecord,
    request: &ConsentRequest,
) -> Result<(crate::domain::BankConsentId, crate::bank::ScaLink), BankError> {
    let created = connector.create_consent(request).await.inspect_err(|e| {
        warn!(consent_id = %record.consent_id, bank_id = %record.bank_id, code = e.code(),
            renewal = record.renewal_of.is_some(), "the bank refused to create a consent");
    })?;
    match created.sca {
        Some(sca) => Ok((created.consent_id, sca)),
        None => {
            warn!(consent_id = %record.consent_id, bank_id = %record.bank_id,
                "the bank returned no SCA redirect link; deleting its consent");
            best_effort_delete(connector, record, &created.consent_id).await;
            Err(BankError::Protocol(
                "the consent has no SCA redirect link".into(),
            ))
        }
    }
}

async fn best_effort_delete(
    connector: &dyn BankApi,
    record: &ConsentRecord,
    bank_consent: &crate::domain::BankConsentId,
) {
    if let Err(e) = connector.delete_consent(bank_consent).await {
        warn!(consent_id = %record.consent_id, bank_id = %record.bank_id, code = e.code(),
            "could not delete a consent at the bank");
    }
}

fn created(record: &ConsentRecord) -> ConnectionCreated {
    ConnectionCreated {
        connection_id: record.consent_id.clone(),
        bank_id: record.bank_id.clone(),
        status: record.state,
        auth_url: awaiting_sca(record.state)
            .then(|| record.sca_url.clone())
            .flatten(),
        valid_until: record.valid_until,
    }
}

fn awaiting_sca(state: ConsentState) -> bool {
    matches!(
        state,
        ConsentState::PendingAuthorization | ConsentState::PartiallyAuthorised
    )
}

fn view(
    record: &ConsentRecord,
    renewal: Option<&ConsentRecord>,
    today: NaiveDate,
) -> ConnectionView {
    let days_left = if record.state.is_final() {
        0
    } else {
        u32::try_from((record.valid_until - today).num_days().max(0)).unwrap_or(u32::MAX)
    };
    let renewal = match (record.state, renewal) {
        (ConsentState::Superseded, _) => RenewalView {
            state: RenewalState::Superseded,
            connection_id: record.renewed_by.clone(),
        },
        (_, Some(r)) if r.state == ConsentState::Valid => RenewalView {
            state: RenewalState::Superseded,
            connection_id: Some(r.consent_id.clone()),
        },
        (_, Some(r)) if !r.state.is_final() => RenewalView {
            state: RenewalState::Pending,
            connection_id: Some(r.consent_id.clone()),
        },
        _ => RenewalView {
            state: RenewalState::None,
            connection_id: None,
        },
    };
    ConnectionView {
        connection_id: record.consent_id.clone(),
        bank_id: record.bank_id.clone(),
        status: record.state,
        valid_until: record.valid_until,
        days_left,
        renewal,
        auth_url: awaiting_sca(record.state)
            .then(|| record.sca_url.clone())
            .flatten(),
        created_at: record.created_at,
    }
}

/// Builds the service as the Lambda functions run it: DynamoDB stores named by
/// `CONSENTS_TABLE` / `NOTIFICATIONS_TABLE`, connectors from the bank registry
/// (`BANK_REGISTRY_PATH`), the state secret from `SCA_STATE_SECRET` (≥ 32 bytes) and
/// [`ConnectionsConfig::from_env`]. Called once per cold start.
///
/// # Errors
/// A message naming what is missing or invalid.
pub async fn connections_from_env(sdk: &aws_config::SdkConfig) -> Result<Connections, String> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let consents_table = var("CONSENTS_TABLE")?;
    let notifications_table = var("NOTIFICATIONS_TABLE")?;
    let registry = BankRegistry::from_env().map_err(|e| e.to_string())?;
    let banks = registry.connectors().map_err(|e| e.to_string())?;
    let signer = StateSigner::new(var("SCA_STATE_SECRET")?.as_bytes())
        .map_err(|e| format!("SCA_STATE_SECRET: {e}"))?;
    Ok(Connections::new(ConnectionsDeps {
        consents: Arc::new(crate::store::DynamoConsentStore::new(
            dynamodb.clone(),
            consents_table.clone(),
        )),
        nonces: Arc::new(crate::store::DynamoNonceStore::new(
            dynamodb.clone(),
            consents_table.clone(),
        )),
        outbox: Arc::new(crate::store::DynamoConsentOutbox::new(
            dynamodb.clone(),
            consents_table.clone(),
            notifications_table.clone(),
        )),
        notifications: Arc::new(crate::store::DynamoNotificationStore::new(
            dynamodb.clone(),
            notifications_table,
        )),
        bank_data: std::env::var("BANK_DATA_TABLE")
            .ok()
            .filter(|t| !t.is_empty())
            .map(|table| {
                Arc::new(crate::store::DynamoBankDataStore::new(
                    dynamodb,
                    table,
                    consents_table,
                )) as Arc<dyn BankDataStore>
            }),
        webhooks: std::env::var(crate::webhook::QUEUE_URL_ENV)
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| {
                Arc::new(crate::queue::SqsQueue::new(
                    aws_sdk_sqs::Client::new(sdk),
                    url,
                )) as Arc<dyn Queue>
            }),
        banks,
        registry,
        signer,
        config: ConnectionsConfig::from_env()?,
        clock: Arc::new(super::SystemClock),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use crate::domain::{BankConsentId, ConsentStatus};
    use crate::services::testing::*;

    fn fields(error: ServiceError) -> Vec<(String, String)> {
        match error {
            ServiceError::Validation(errors) => {
                errors.into_iter().map(|e| (e.field, e.message)).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn page_status(outcome: &CallbackOutcome) -> u16 {
        match outcome {
            CallbackOutcome::Page { status, .. } => *status,
            CallbackOutcome::Redirect { location } => panic!("expected a page, got {location}"),
        }
    }

    fn page_message(outcome: &CallbackOutcome) -> String {
        match outcome {
            CallbackOutcome::Page { title, message, .. } => format!("{title}: {message}"),
            CallbackOutcome::Redirect { location } => panic!("expected a page, got {location}"),
        }
    }

    fn location(outcome: CallbackOutcome) -> Url {
        match outcome {
            CallbackOutcome::Redirect { location } => location,
            CallbackOutcome::Page {
                status, message, ..
            } => {
                panic!("expected a redirect, got {status} {message}")
            }
        }
    }

    impl Harness {
        async fn connect(&self, user: &UserId, body: Value) -> ConnectionCreated {
            self.svc
                .connect(user, body.to_string().as_bytes(), ip())
                .await
                .unwrap()
        }

        /// Alice links lt-alpha and authorises it.
        async fn valid_connection(&self) -> ConnectionCreated {
            let created = self.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
            self.alpha.answer_status(Ok(ConsentStatus::Valid));
            let outcome = self.svc.sca_callback(&ok_query(&self.alpha)).await;
            assert_eq!(page_status(&outcome), 200, "{}", page_message(&outcome));
            created
        }

        fn nothing_happened(&self) {
            assert!(self.consents.all().is_empty(), "{:?}", self.consents.all());
            assert!(self.alpha.calls().is_empty());
            assert!(self.beta.calls().is_empty());
            assert!(self.notes.all().is_empty());
        }
    }

    #[test]
    fn the_service_and_its_futures_can_cross_threads() {
        fn shareable<T: Send + Sync>() {}
        fn sendable<F: std::future::Future + Send>(_: F) {}
        shareable::<Connections>();
        let h = harness();
        let (user, query) = (alice(), HashMap::new());
        sendable(h.svc.connect(&user, b"{}", ip()));
        sendable(h.svc.list(&user));
        sendable(h.svc.get(&user, "x"));
        sendable(h.svc.revoke(&user, "x"));
        sendable(h.svc.renew_now(&user, "x", ip()));
        sendable(h.svc.sca_callback(&query));
    }

    // ---- configuration -----------------------------------------------------------------

    #[test]
    fn config_defaults_and_parsing() {
        let config = ConnectionsConfig::from_lookup(|_| None).unwrap();
        assert_eq!(
            config.callback_url.as_str(),
            "http://127.0.0.1:3000/v1/callbacks/sca"
        );
        assert_eq!(
            config
                .redirect_allow_list
                .iter()
                .map(Url::as_str)
                .collect::<Vec<_>>(),
            ["http://127.0.0.1:3000/", "http://localhost:3000/"]
        );
        assert_eq!(config.default_valid_days, 90);
        assert_eq!(config.state_ttl, Duration::minutes(30));

        for bad in [
            "app.example",
            "ftp://app.example",
            "https://app.example/path",
            "https://app.example/?q=1",
        ] {
            let error = ConnectionsConfig::from_lookup(|name| {
                (name == REDIRECT_ALLOW_LIST_ENV).then(|| bad.to_owned())
            })
            .unwrap_err();
            assert!(error.contains(REDIRECT_ALLOW_LIST_ENV), "{error}");
        }
        assert!(
            ConnectionsConfig::from_lookup(|name| (name == CALLBACK_URL_ENV).then(|| "nope".into()))
                .is_err()
        );
        let empty = ConnectionsConfig::from_lookup(|name| {
            (name == REDIRECT_ALLOW_LIST_ENV).then(String::new)
        })
        .unwrap();
        assert!(empty.redirect_allow_list.is_empty());
    }

    #[test]
    fn allow_list_compares_whole_origins() {
        let config = config();
        for ok in [
            "https://app.example/done",
            "https://APP.example:443/x?y=1#z",
            "http://127.0.0.1:3000/cb",
        ] {
            assert!(config.allows(&Url::parse(ok).unwrap()), "{ok}");
        }
        for bad in [
            "http://app.example/done",
            "https://app.example:8443/",
            "https://app.example.evil.test/",
            "https://evil.test/?u=https://app.example",
            "http://127.0.0.1:3001/",
            "http://localhost:3000/",
            "javascript:alert(1)",
            "data:text/html,hi",
        ] {
            assert!(!config.allows(&Url::parse(bad).unwrap()), "{bad}");
        }
    }

    // ---- connect: validation -----------------------------------------------------------

    #[tokio::test]
    async fn unknown_banks_are_refused() {
        let h = harness();
        for bank in ["nope", "ee-gamma", "Not A Bank", ""] {
            let error = h
                .svc
                .connect(
                    &alice(),
                    json!({"bankId": bank}).to_string().as_bytes(),
                    ip(),
                )
                .await
                .unwrap_err();
            assert_eq!(
                fields(error),
                [("bankId".to_owned(), "unknown bank".to_owned())],
                "{bank}"
            );
        }
        for body in [json!({}), json!({"bankId": null}), json!({"bankId": 7})] {
            let errors = fields(
                h.svc
                    .connect(&alice(), body.to_string().as_bytes(), ip())
                    .await
                    .unwrap_err(),
            );
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].0, "bankId");
        }
        h.nothing_happened();
    }

    #[tokio::test]
    async fn valid_days_must_be_1_to_180() {
        let h = harness();
        for days in [
            json!(0),
            json!(1000),
            json!(181),
            json!(-5),
            json!(1.5),
            json!("30"),
        ] {
            let body = json!({"bankId": "lt-alpha", "validDays": days});
            let errors = fields(
                h.svc
                    .connect(&alice(), body.to_string().as_bytes(), ip())
                    .await
                    .unwrap_err(),
            );
            assert_eq!(errors.len(), 1, "{days}");
            assert_eq!(errors[0].0, "validDays", "{days}");
        }
        h.nothing_happened();
    }

    #[tokio::test]
    async fn frequency_per_day_must_fit_us_and_the_bank() {
        let h = harness();
        for (bank, frequency) in [
            ("lt-alpha", 9),
            ("lt-alpha", 0),
            ("lt-alpha", 5),
            ("lv-beta", 3),
        ] {
            let body = json!({"bankId": bank, "frequencyPerDay": frequency});
            let errors = fields(
                h.svc
                    .connect(&alice(), body.to_string().as_bytes(), ip())
                    .await
                    .unwrap_err(),
            );
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].0, "frequencyPerDay", "{bank} {frequency}");
        }
        let errors = fields(
            h.svc
                .connect(
                    &alice(),
                    json!({"bankId": "lv-beta", "frequencyPerDay": 9})
                        .to_string()
                        .as_bytes(),
                    ip(),
                )
                .await
                .unwrap_err(),
        );
        assert!(errors[0].1.contains("between 1 and 2"), "{errors:?}");
        h.nothing_happened();
    }

    #[tokio::test]
    async fn redirect_url_must_be_on_the_allow_list() {
        let h = harness();
        for url in [
            json!("https://evil.example/x"),
            json!("http://app.example/x"),
            json!("javascript:alert(1)"),
            json!("/relative"),
            json!("not a url"),
            json!(42),
            json!("https://user:pw@app.example/"),
            json!("https://app.example/done\u{0000}"),
            json!("https://app.example/done\n"),
            json!(" https://app.example/done"),
            json!("https://app.example/do\tne"),
            json!(format!(
                "https://app.example/{}",
                "a".repeat(MAX_REDIRECT_URL_LEN)
            )),
        ] {
            let body = json!({"bankId": "lt-alpha", "redirectUrl": url});
            let errors = fields(
                h.svc
                    .connect(&alice(), body.to_string().as_bytes(), ip())
                    .await
                    .unwrap_err(),
            );
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].0, "redirectUrl", "{url}");
        }
        h.nothing_happened();
    }

    #[tokio::test]
    async fn malformed_json_is_a_body_error() {
        let h = harness();
        for body in [
            &b"{"[..],
            b"",
            b"[]",
            b"\"lt-alpha\"",
            b"null",
            b"{\"bankId\":\"lt-alpha\"",
            b"\xff\xfe",
        ] {
            let errors = fields(h.svc.connect(&alice(), body, ip()).await.unwrap_err());
            assert_eq!(
                errors,
                [("body".to_owned(), "must be a JSON object".to_owned())]
            );
        }
        h.nothing_happened();
    }

    #[tokio::test]
    async fn every_field_error_is_reported_at_once() {
        let h = harness();
        let body = json!({
            "bankId": "lt-alpha",
            "validDays": 0,
            "frequencyPerDay": 9,
            "redirectUrl": "https://evil.example/",
            "colour": "red",
            "validdays": 3,
        });
        let errors = fields(
            h.svc
                .connect(&alice(), body.to_string().as_bytes(), ip())
                .await
                .unwrap_err(),
        );
        let names: HashSet<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            HashSet::from([
                "validDays",
                "frequencyPerDay",
                "redirectUrl",
                "colour",
                "validdays"
            ])
        );
        assert!(
            errors
                .iter()
                .any(|(f, m)| f == "colour" && m == "unknown field")
        );

        // A hostile field name is cut in the answer.
        let long = "x".repeat(500);
        let errors = fields(
            h.svc
                .connect(
                    &alice(),
                    json!({"bankId": "lt-alpha", long: 1})
                        .to_string()
                        .as_bytes(),
                    ip(),
                )
                .await
                .unwrap_err(),
        );
        assert!(errors[0].0.chars().count() <= 65, "{}", errors[0].0.len());
        h.nothing_happened();
    }

    // ---- connect and callback ----------------------------------------------------------

    #[tokio::test]
    async fn connect_creates_a_pending_consent_and_calls_the_bank() {
        let h = harness();
        let created = h
            .connect(
                &alice(),
                json!({"bankId": "lt-alpha", "validDays": 120, "redirectUrl": "https://app.example/done?tab=banks"}),
            )
            .await;
        assert_eq!(created.status, ConsentState::PendingAuthorization);
        assert_eq!(created.bank_id.as_str(), "lt-alpha");
        assert_eq!(
            created.auth_url.as_deref(),
            Some("https://lt-alpha.bank.example/sca/1")
        );
        // min(120 requested, 90 bank max)
        assert_eq!(
            created.valid_until,
            NaiveDate::from_ymd_opt(2025, 6, 8).unwrap()
        );
        let answer = serde_json::to_value(&created).unwrap();
        assert_eq!(answer["status"], "pending_authorization");
        assert_eq!(answer["validUntil"], "2025-06-08");
        assert_eq!(answer["connectionId"], created.connection_id.as_str());

        let request = &h.alpha.creates()[0];
        assert_eq!(request.psu_ip, ip());
        assert!(request.recurring);
        assert_eq!(request.access, ConsentAccess::AllAccounts);
        assert_eq!(request.frequency_per_day, 4);
        assert_eq!(request.valid_until, created.valid_until);
        let ok = &request.redirect.ok;
        assert!(
            ok.as_str()
                .starts_with("http://127.0.0.1:3000/v1/callbacks/sca?state=")
        );
        let nok = request.redirect.nok.as_ref().unwrap();
        assert_eq!(query_of(nok)["state"], query_of(ok)["state"]);
        assert_eq!(query_of(nok)["outcome"], "nok");
        assert!(
            !ok.as_str().contains("app.example"),
            "the redirect URL travels signed only"
        );

        let stored = h.consents.one(&created.connection_id);
        assert_eq!(stored.user_id, alice());
        assert_eq!(stored.state, ConsentState::PendingAuthorization);
        assert_eq!(stored.bank_consent_id.unwrap().as_str(), "lt-alpha-bc-1");
        assert_eq!(stored.sca_url, created.auth_url);
        assert_eq!(stored.version, 1);
        assert!(h.notes.all().is_empty());
    }

    #[tokio::test]
    async fn defaults_follow_the_bank() {
        let h = harness();
        let created = h
            .connect(&alice(), json!({"bankId": "lv-beta", "validDays": null}))
            .await;
        assert_eq!(created.valid_until, start().date_naive() + Days::new(90));
        assert_eq!(h.beta.creates()[0].frequency_per_day, 2);
        let created = h
            .connect(&alice(), json!({"bankId": "lv-beta", "validDays": 180}))
            .await;
        assert_eq!(created.valid_until, start().date_naive() + Days::new(180));
        let created = h
            .connect(
                &alice(),
                json!({"bankId": "lt-alpha", "validDays": 1, "frequencyPerDay": 1}),
            )
            .await;
        assert_eq!(created.valid_until, start().date_naive() + Days::new(1));
        assert_eq!(h.alpha.creates()[0].frequency_per_day, 1);
    }

    #[tokio::test]
    async fn approved_callback_makes_it_valid_and_notifies_once() {
        let h = harness();
        let created = h
            .connect(
                &alice(),
                json!({"bankId": "lt-alpha", "redirectUrl": "https://app.example/done?tab=banks"}),
            )
            .await;
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        let query = ok_query(&h.alpha);

        let target = location(h.svc.sca_callback(&query).await);
        assert_eq!(target.host_str(), Some("app.example"));
        assert_eq!(target.path(), "/done");
        let params = query_of(&target);
        assert_eq!(params["tab"], "banks");
        assert_eq!(params["status"], "valid");
        assert_eq!(params["connectionId"], created.connection_id.as_str());

        assert_eq!(
            h.consents.one(&created.connection_id).state,
            ConsentState::Valid
        );
        assert_eq!(h.alpha.status_ids()[0].as_str(), "lt-alpha-bc-1");
        let notes = h.notes.all();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].user_id, alice());
        assert_eq!(notes[0].kind, "consent.valid");
        assert_eq!(
            notes[0].event_id,
            format!("consent:{}:valid", created.connection_id)
        );
        assert!(
            notes[0].message.contains("Alpha Bank"),
            "{}",
            notes[0].message
        );
        assert_eq!(
            notes[0].data["connectionId"],
            created.connection_id.as_str()
        );

        // Replay: refused, no bank call, nothing new.
        let before = h.consents.all();
        let status_calls = h.alpha.status_calls();
        let replay = h.svc.sca_callback(&query).await;
        assert_eq!(page_status(&replay), 409);
        assert!(page_message(&replay).contains("already used"));
        assert_eq!(h.consents.all(), before);
        assert_eq!(h.alpha.status_calls(), status_calls);
        assert_eq!(h.notes.all().len(), 1);

        let view = h
            .svc
            .get(&alice(), created.connection_id.as_str())
            .await
            .unwrap();
        assert_eq!(view.status, ConsentState::Valid);
        assert_eq!(view.auth_url, None);
        assert_eq!(view.days_left, 90);
    }

    #[tokio::test]
    async fn denied_callback_makes_it_rejected() {
        let h = harness();
        let created = h
            .connect(
                &alice(),
                json!({"bankId": "lt-alpha", "redirectUrl": "http://127.0.0.1:3000/app"}),
            )
            .await;
        h.alpha.answer_status(Ok(ConsentStatus::Rejected));
        let target = location(h.svc.sca_callback(&nok_query(&h.alpha)).await);
        assert_eq!(query_of(&target)["status"], "rejected");
        assert_eq!(
            h.consents.one(&created.connection_id).state,
            ConsentState::Rejected
        );
        let notes = h.notes.all();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].kind, "consent.rejected");
        assert_eq!(
            notes[0].event_id,
            format!("consent:{}:rejected", created.connection_id)
        );
    }

    #[tokio::test]
    async fn nok_with_the_bank_still_waiting_stays_pending() {
        let h = harness();
        let created = h
            .connect(
                &alice(),
                json!({"bankId": "lt-alpha", "redirectUrl": "https://app.example/"}),
            )
            .await;
        let target = location(h.svc.sca_callback(&nok_query(&h.alpha)).await);
        assert_eq!(query_of(&target)["status"], "pending_authorization");
        let stored = h.consents.one(&created.connection_id);
        assert_eq!(stored.state, ConsentState::PendingAuthorization);
        assert_eq!(stored.version, 1, "no write for no change");
        assert!(h.notes.all().is_empty());
    }

    #[tokio::test]
    async fn without_a_redirect_url_the_callback_answers_a_page() {
        let h = harness();
        h.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        let outcome = h.svc.sca_callback(&ok_query(&h.alpha)).await;
        assert_eq!(page_status(&outcome), 200);
        assert!(page_message(&outcome).contains("Alpha Bank"));
    }

    #[tokio::test]
    async fn bad_states_change_nothing() {
        let h = harness();
        let created = h
            .connect(
                &alice(),
                json!({"bankId": "lt-alpha", "redirectUrl": "https://app.example/"}),
            )
            .await;
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        let good = ok_query(&h.alpha);
        let token = good["state"].clone();
        let before = h.consents.all();

        let mut tampered = token.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        let forged = ScaState::new(
            StateSubject::Consent {
                user: alice(),
                consent: created.connection_id.clone(),
            },
            start() + Duration::minutes(30),
            Some(Url::parse("https://evil.example/").unwrap()),
        );
        let wrong_key = StateSigner::new(b"some other secret of thirty-two bytes+")
            .unwrap()
            .sign(&forged);
        for query in [
            HashMap::new(),
            HashMap::from([("state".to_owned(), String::new())]),
            HashMap::from([("state".to_owned(), String::from_utf8(tampered).unwrap())]),
            HashMap::from([("state".to_owned(), wrong_key)]),
            HashMap::from([("state".to_owned(), format!("{token}x"))]),
            HashMap::from([("state".to_owned(), "x".repeat(5000))]),
        ] {
            let outcome = h.svc.sca_callback(&query).await;
            assert_eq!(page_status(&outcome), 400);
            assert!(page_message(&outcome).contains("not valid"));
        }

        // Expired: refused too.
        h.clock.advance(Duration::minutes(31));
        let outcome = h.svc.sca_callback(&good).await;
        assert_eq!(page_status(&outcome), 400);
        assert!(page_message(&outcome).contains("expired"));

        assert_eq!(h.consents.all(), before);
        assert_eq!(h.alpha.status_calls(), 0);
        assert!(h.notes.all().is_empty());
        assert!(h.nonces.0.lock().unwrap().is_empty(), "no nonce was burnt");

        // The genuine link still works within its lifetime.
        h.clock.advance(Duration::minutes(-2));
        let target = location(h.svc.sca_callback(&good).await);
        assert_eq!(query_of(&target)["status"], "valid");
    }

    #[tokio::test]
    async fn a_bank_error_in_the_callback_changes_nothing_but_burns_the_link() {
        let h = harness();
        let created = h.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
        h.alpha.answer_status(Err(BankError::Unavailable {
            status: Some(503),
            retry_after: None,
        }));
        let query = ok_query(&h.alpha);
        let outcome = h.svc.sca_callback(&query).await;
        assert_eq!(page_status(&outcome), 502);
        assert!(page_message(&outcome).contains("refresh"));
        assert_eq!(
            h.consents.one(&created.connection_id).state,
            ConsentState::PendingAuthorization
        );
        assert_eq!(page_status(&h.svc.sca_callback(&query).await), 409);

        // The app's refresh (GET) asks the bank again.
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        let view = h
            .svc
            .get(&alice(), created.connection_id.as_str())
            .await
            .unwrap();
        assert_eq!(view.status, ConsentState::Valid);
        assert_eq!(h.notes.all().len(), 1);
        // and a failing refresh just shows what is stored
        let pending = h.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
        h.alpha
            .answer_status(Err(BankError::Timeout(std::time::Duration::from_secs(10))));
        let view = h
            .svc
            .get(&alice(), pending.connection_id.as_str())
            .await
            .unwrap();
        assert_eq!(view.status, ConsentState::PendingAuthorization);
        assert_eq!(view.auth_url, pending.auth_url);
    }

    #[tokio::test]
    async fn a_bank_refusal_at_creation_leaves_nothing_pending() {
        let h = harness();
        *h.alpha.create_error.lock().unwrap() = Some(BankError::Unavailable {
            status: Some(500),
            retry_after: None,
        });
        let error = h
            .svc
            .connect(
                &alice(),
                json!({"bankId": "lt-alpha"}).to_string().as_bytes(),
                ip(),
            )
            .await
            .unwrap_err();
        assert!(matches!(
            error,
            ServiceError::Bank(BankError::Unavailable { .. })
        ));
        assert_eq!(error.into_problem().status, 503);
        let all = h.consents.all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, ConsentState::TerminatedByTpp);
        assert_eq!(all[0].bank_consent_id, None);
        let views = h.svc.list(&alice()).await.unwrap();
        assert_eq!(views[0].status, ConsentState::TerminatedByTpp);
        assert_eq!(views[0].auth_url, None);
        assert_eq!(views[0].days_left, 0);
    }

    // ---- isolation ---------------------------------------------------------------------

    #[tokio::test]
    async fn another_user_sees_nothing() {
        let h = harness();
        let created = h.valid_connection().await;
        let id = created.connection_id.as_str();
        let before = h.consents.all();
        let calls = h.alpha.calls().len();

        assert!(matches!(
            h.svc.get(&bob(), id).await,
            Err(ServiceError::NotFound)
        ));
        assert!(matches!(
            h.svc.revoke(&bob(), id).await,
            Err(ServiceError::NotFound)
        ));
        assert!(matches!(
            h.svc.renew_now(&bob(), id, ip()).await,
            Err(ServiceError::NotFound)
        ));
        assert!(h.svc.list(&bob()).await.unwrap().is_empty());
        for bad in ["", "nope", "../x", &id.to_uppercase().replace('-', "")] {
            assert!(
                matches!(h.svc.get(&alice(), bad).await, Err(ServiceError::NotFound)),
                "{bad}"
            );
            assert!(matches!(
                h.svc.revoke(&alice(), bad).await,
                Err(ServiceError::NotFound)
            ));
            assert!(matches!(
                h.svc.renew_now(&alice(), bad, ip()).await,
                Err(ServiceError::NotFound)
            ));
        }
        assert_eq!(h.consents.all(), before);
        assert_eq!(h.alpha.calls().len(), calls);
        assert_eq!(ServiceError::NotFound.into_problem().status, 404);
    }

    #[tokio::test]
    async fn list_shows_only_the_callers_connections_newest_first() {
        let h = harness();
        let a1 = h.valid_connection().await;
        h.clock.advance(Duration::minutes(1));
        let a2 = h
            .connect(&alice(), json!({"bankId": "lv-beta", "validDays": 30}))
            .await;
        let b1 = h.connect(&bob(), json!({"bankId": "lt-alpha"})).await;
        h.clock.advance(Duration::days(10));

        let views = h.svc.list(&alice()).await.unwrap();
        assert_eq!(
            views.iter().map(|v| &v.connection_id).collect::<Vec<_>>(),
            [&a2.connection_id, &a1.connection_id]
        );
        assert_eq!(views[0].status, ConsentState::PendingAuthorization);
        assert_eq!(views[0].auth_url, a2.auth_url);
        assert_eq!(views[0].days_left, 20);
        assert_eq!(views[1].status, ConsentState::Valid);
        assert_eq!(views[1].auth_url, None);
        assert_eq!(views[1].days_left, 80);
        assert_eq!(views[1].renewal.state, RenewalState::None);
        let json = serde_json::to_value(&views[1]).unwrap();
        assert_eq!(json["daysLeft"], 80);
        assert_eq!(json["renewal"], json!({"state": "none"}));
        assert_eq!(json["status"], "valid");
        assert!(json.get("authUrl").is_none());

        let bobs = h.svc.list(&bob()).await.unwrap();
        assert_eq!(bobs.len(), 1);
        assert_eq!(bobs[0].connection_id, b1.connection_id);

        // Past validUntil: never negative.
        h.clock.advance(Duration::days(200));
        let views = h.svc.list(&alice()).await.unwrap();
        assert!(views.iter().all(|v| v.days_left == 0));
    }

    // ---- revoke ------------------------------------------------------------------------

    #[tokio::test]
    async fn revoke_deletes_at_the_bank_once_and_is_idempotent() {
        let h = harness();
        let created = h.valid_connection().await;
        let id = created.connection_id.as_str();
        h.svc.revoke(&alice(), id).await.unwrap();
        assert_eq!(h.alpha.deletes().len(), 1);
        assert_eq!(h.alpha.deletes()[0].as_str(), "lt-alpha-bc-1");
        let stored = h.consents.one(&created.connection_id);
        assert_eq!(stored.state, ConsentState::TerminatedByTpp);
        let terminated: Vec<_> = h
            .notes
            .all()
            .into_iter()
            .filter(|n| n.kind == "consent.terminated_by_tpp")
            .collect();
        assert_eq!(terminated.len(), 1);
        assert_eq!(
            terminated[0].event_id,
            format!("consent:{id}:terminated_by_tpp")
        );

        h.svc.revoke(&alice(), id).await.unwrap();
        assert_eq!(h.alpha.deletes().len(), 1, "no second bank call");
        assert_eq!(h.consents.one(&created.connection_id), stored);
        assert_eq!(h.notes.all().len(), 2, "valid + terminated, nothing more");
    }

    #[tokio::test]
    async fn revoke_tolerates_a_bank_that_already_forgot() {
        for answer in [
            BankError::ResourceUnknown {
                message: "gone".into(),
            },
            BankError::ConsentInvalid {
                code: "CONSENT_UNKNOWN".into(),
                message: "gone".into(),
            },
            BankError::ConsentExpired,
        ] {
            let h = harness();
            let created = h.valid_connection().await;
            *h.alpha.delete_result.lock().unwrap() = Err(answer);
            h.svc
                .revoke(&alice(), created.connection_id.as_str())
                .await
                .unwrap();
            assert_eq!(
                h.consents.one(&created.connection_id).state,
                ConsentState::TerminatedByTpp
            );
        }
    }

    #[tokio::test]
    async fn revoke_with_the_bank_down_changes_nothing() {
        let h = harness();
        let created = h.valid_connection().await;
        let before = h.consents.all();
        *h.alpha.delete_result.lock().unwrap() =
            Err(BankError::Timeout(std::time::Duration::from_secs(10)));
        let error = h
            .svc
            .revoke(&alice(), created.connection_id.as_str())
            .await
            .unwrap_err();
        assert!(matches!(error, ServiceError::Bank(BankError::Timeout(_))));
        assert_eq!(h.consents.all(), before);
        assert_eq!(h.notes.all().len(), 1);
    }

    #[tokio::test]
    async fn revoke_of_a_finished_connection_keeps_its_state() {
        let h = harness();
        let created = h.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
        h.alpha.answer_status(Ok(ConsentStatus::Rejected));
        h.svc.sca_callback(&ok_query(&h.alpha)).await;
        let before = h.consents.all();
        h.svc
            .revoke(&alice(), created.connection_id.as_str())
            .await
            .unwrap();
        assert_eq!(h.consents.all(), before);
        assert!(h.alpha.deletes().is_empty());
    }

    #[tokio::test]
    async fn revoke_of_a_pending_connection_deletes_it_at_the_bank() {
        let h = harness();
        let created = h.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
        h.svc
            .revoke(&alice(), created.connection_id.as_str())
            .await
            .unwrap();
        assert_eq!(h.alpha.deletes().len(), 1);
        assert_eq!(
            h.consents.one(&created.connection_id).state,
            ConsentState::TerminatedByTpp
        );
        // The link the user still holds now leads nowhere new.
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        let outcome = h.svc.sca_callback(&ok_query(&h.alpha)).await;
        assert_eq!(page_status(&outcome), 200);
        assert!(page_message(&outcome).contains("not authorised"));
        assert_eq!(
            h.consents.one(&created.connection_id).state,
            ConsentState::TerminatedByTpp
        );
    }

    // ---- renew now ---------------------------------------------------------------------

    #[tokio::test]
    async fn only_valid_connections_can_be_renewed() {
        let h = harness();
        let created = h.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
        let error = h
            .svc
            .renew_now(&alice(), created.connection_id.as_str(), ip())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ServiceError::Conflict(m) if m == "only a valid connection can be renewed")
        );
        assert_eq!(error.into_problem().status, 409);
        assert_eq!(h.alpha.creates().len(), 1);
    }

    #[tokio::test]
    async fn renew_now_is_idempotent_and_the_renewal_supersedes() {
        let h = harness();
        let old = h.valid_connection().await;
        let old_id = old.connection_id.clone();
        h.clock.advance(Duration::days(85));
        h.alpha.answer_status(Ok(ConsentStatus::Received));

        let renewal = h
            .svc
            .renew_now(&alice(), old_id.as_str(), ip())
            .await
            .unwrap();
        assert_eq!(renewal.connection_id, renewal_id_after(&old_id));
        assert_ne!(renewal.connection_id, old_id);
        assert_eq!(renewal.status, ConsentState::PendingAuthorization);
        assert_eq!(
            renewal.auth_url.as_deref(),
            Some("https://lt-alpha.bank.example/sca/2")
        );
        assert_eq!(
            renewal.valid_until,
            (start() + Duration::days(85)).date_naive() + Days::new(90)
        );
        let request = h.alpha.creates().last().unwrap().clone();
        assert_eq!(request.access, ConsentAccess::AllAccounts);
        assert_eq!(request.frequency_per_day, 4);
        assert_eq!(request.psu_ip, ip());

        let stored_old = h.consents.one(&old_id);
        assert_eq!(stored_old.renewed_by.as_ref(), Some(&renewal.connection_id));
        assert_eq!(stored_old.state, ConsentState::Valid);
        assert!(stored_old.renewal_notified);
        assert!(
            !stored_old.renewal_outstanding(),
            "out of the renewal index"
        );
        let stored_new = h.consents.one(&renewal.connection_id);
        assert_eq!(stored_new.renewal_of.as_ref(), Some(&old_id));
        assert_eq!(stored_new.psu_ip, Some(ip()));
        assert_eq!(
            stored_new.lease_until, None,
            "the lease ends with the bank's answer"
        );
        assert_eq!(
            stored_new
                .bank_consent_id
                .as_ref()
                .map(BankConsentId::as_str),
            Some("lt-alpha-bc-2")
        );
        let notes: Vec<_> = h
            .notes
            .all()
            .into_iter()
            .filter(|n| n.kind == "consent.renewal_required")
            .collect();
        assert_eq!(notes.len(), 1);
        assert_eq!(
            notes[0].event_id,
            format!("consent:{old_id}:renewal:{}", renewal.connection_id)
        );
        assert_eq!(
            notes[0].data,
            json!({
                "connectionId": old_id,
                "newConnectionId": renewal.connection_id,
                "bankId": "lt-alpha",
                "authUrl": "https://lt-alpha.bank.example/sca/2",
                "validUntil": stored_old.valid_until,
            })
        );

        // Again: the same renewal, no new consent at the bank, no new notification.
        let again = h
            .svc
            .renew_now(&alice(), old_id.as_str(), ip())
            .await
            .unwrap();
        assert_eq!(again, renewal);
        assert_eq!(h.alpha.creates().len(), 2);
        assert_eq!(h.notes.all().len(), 2);

        let view = h.svc.get(&alice(), old_id.as_str()).await.unwrap();
        assert_eq!(view.renewal.state, RenewalState::Pending);
        assert_eq!(
            view.renewal.connection_id.as_ref(),
            Some(&renewal.connection_id)
        );
        assert_eq!(view.days_left, 5);

        // The user authorises the renewal: it becomes valid, the old one superseded.
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        let outcome = h.svc.sca_callback(&ok_query(&h.alpha)).await;
        assert_eq!(page_status(&outcome), 200);
        assert_eq!(
            h.consents.one(&renewal.connection_id).state,
            ConsentState::Valid
        );
        assert_eq!(h.consents.one(&old_id).state, ConsentState::Superseded);
        let view = h.svc.get(&alice(), old_id.as_str()).await.unwrap();
        assert_eq!(view.status, ConsentState::Superseded);
        assert_eq!(view.renewal.state, RenewalState::Superseded);
        assert_eq!(
            view.renewal.connection_id.as_ref(),
            Some(&renewal.connection_id)
        );
        assert!(matches!(
            h.svc.renew_now(&alice(), old_id.as_str(), ip()).await,
            Err(ServiceError::Conflict(_))
        ));
    }

    #[tokio::test]
    async fn a_failed_renewal_does_not_block_the_next_one() {
        let h = harness();
        let old = h.valid_connection().await;
        let first = h
            .svc
            .renew_now(&alice(), old.connection_id.as_str(), ip())
            .await
            .unwrap();
        h.alpha.answer_status(Ok(ConsentStatus::Rejected));
        h.svc.sca_callback(&ok_query(&h.alpha)).await;
        assert_eq!(
            h.consents.one(&first.connection_id).state,
            ConsentState::Rejected
        );
        let view = h
            .svc
            .get(&alice(), old.connection_id.as_str())
            .await
            .unwrap();
        assert_eq!(view.renewal.state, RenewalState::None);

        let second = h
            .svc
            .renew_now(&alice(), old.connection_id.as_str(), ip())
            .await
            .unwrap();
        assert_ne!(second.connection_id, first.connection_id);
        assert_eq!(second.connection_id, renewal_id_after(&first.connection_id));
        let stored_old = h.consents.one(&old.connection_id);
        assert_eq!(stored_old.renewed_by.as_ref(), Some(&second.connection_id));
        assert!(stored_old.renewal_notified);
        assert_eq!(h.alpha.creates().len(), 3);
        assert_eq!(h.notes.of_kind("consent.renewal_required").len(), 2);
    }

    #[tokio::test]
    async fn the_first_recorded_renewal_wins_a_race() {
        let h = harness();
        let old = h.valid_connection().await;
        let old_id = old.connection_id.clone();

        // A writer predating derived renewal ids (a Lambda of the previous release, during
        // a deployment) records its renewal between our read and our write.
        let winner = ConsentRecord {
            consent_id: ConsentId::new(),
            state: ConsentState::PendingAuthorization,
            bank_consent_id: Some(BankConsentId::parse("lt-alpha-bc-99").unwrap()),
            sca_url: Some("https://lt-alpha.bank.example/sca/99".into()),
            renewal_of: Some(old_id.clone()),
            version: 1,
            ..h.consents.one(&old_id)
        };
        let winner_id = winner.consent_id.clone();
        let key_old = (alice(), old_id.clone());
        h.consents.before_update_of(&old_id, move |items| {
            let stored = items.get_mut(&key_old).unwrap();
            stored.renewed_by = Some(winner.consent_id.clone());
            stored.version += 1;
            items.insert((winner.user_id.clone(), winner.consent_id.clone()), winner);
        });

        let answer = h
            .svc
            .renew_now(&alice(), old_id.as_str(), ip())
            .await
            .unwrap();
        assert_eq!(answer.connection_id, winner_id);
        assert_eq!(
            answer.auth_url.as_deref(),
            Some("https://lt-alpha.bank.example/sca/99")
        );
        assert_eq!(
            h.consents.one(&old_id).renewed_by.as_ref(),
            Some(&winner_id)
        );

        // Ours (claimed first, under the derived id) never reached the bank: it is
        // terminated here, and the winner is carried on and announced once.
        let ours = h.consents.one(&renewal_id_after(&old_id));
        assert_eq!(ours.renewal_of.as_ref(), Some(&old_id));
        assert_eq!(ours.state, ConsentState::TerminatedByTpp);
        assert_eq!(ours.bank_consent_id, None);
        assert_eq!(h.alpha.creates().len(), 1, "only the original connect");
        assert!(h.alpha.deletes().is_empty());
        let notes = h.notes.of_kind("consent.renewal_required");
        assert_eq!(notes.len(), 1);
        assert_eq!(
            notes[0].event_id,
            format!("consent:{old_id}:renewal:{winner_id}")
        );
        assert!(h.consents.one(&old_id).renewal_notified);
    }

    #[tokio::test]
    async fn an_unrelated_write_during_renewal_is_retried() {
        let h = harness();
        let old = h.valid_connection().await;
        let old_id = old.connection_id.clone();
        let key_old = (alice(), old_id.clone());
        h.consents.before_update_of(&old_id, move |items| {
            items.get_mut(&key_old).unwrap().version += 1;
        });
        let renewal = h
            .svc
            .renew_now(&alice(), old_id.as_str(), ip())
            .await
            .unwrap();
        assert_eq!(
            h.consents.one(&old_id).renewed_by.as_ref(),
            Some(&renewal.connection_id)
        );
        assert!(h.alpha.deletes().is_empty());
    }

    #[tokio::test]
    async fn revoking_a_renewed_connection_also_stops_its_pending_renewal() {
        let h = harness();
        let old = h.valid_connection().await;
        let renewal = h
            .svc
            .renew_now(&alice(), old.connection_id.as_str(), ip())
            .await
            .unwrap();
        h.svc
            .revoke(&alice(), old.connection_id.as_str())
            .await
            .unwrap();
        assert_eq!(
            h.consents.one(&old.connection_id).state,
            ConsentState::TerminatedByTpp
        );
        assert_eq!(
            h.consents.one(&renewal.connection_id).state,
            ConsentState::TerminatedByTpp
        );
        assert_eq!(h.alpha.deletes().len(), 2);
        let terminated = h
            .notes
            .all()
            .into_iter()
            .filter(|n| n.kind == "consent.terminated_by_tpp")
            .count();
        assert_eq!(terminated, 1);
    }

    // ---- outbox: a state change and its notification commit together ----------------

    #[tokio::test]
    async fn a_failed_notification_write_fails_the_callback_and_the_retry_applies_both_once() {
        let h = harness();
        let created = h.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
        let id = created.connection_id.clone();
        let pending = h.consents.one(&id);
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        h.notes.fail_next_put();

        let outcome = h.svc.sca_callback(&ok_query(&h.alpha)).await;
        assert_eq!(page_status(&outcome), 500, "{}", page_message(&outcome));
        // Nothing half-applied: the state is unchanged, no notification, no webhook.
        assert_eq!(h.consents.one(&id), pending);
        assert!(h.notes.all().is_empty());
        assert!(h.webhooks.event_ids().is_empty());

        // The app refreshes the connection: the bank is asked again, both are written.
        let view = h.svc.get(&alice(), id.as_str()).await.unwrap();
        assert_eq!(view.status, ConsentState::Valid);
        let stored = h.consents.one(&id);
        assert_eq!(stored.state, ConsentState::Valid);
        assert_eq!(stored.version, pending.version + 1);
        let event = format!("consent:{id}:valid");
        let events: Vec<_> = h.notes.all().into_iter().map(|n| n.event_id).collect();
        assert_eq!(events, std::slice::from_ref(&event));
        assert_eq!(h.webhooks.event_ids(), [event]);

        // Once: another refresh finds nothing to change.
        h.svc.get(&alice(), id.as_str()).await.unwrap();
        assert_eq!(h.consents.one(&id), stored);
        assert_eq!(h.notes.all().len(), 1);
        assert_eq!(h.webhooks.event_ids().len(), 1);
    }

    #[tokio::test]
    async fn a_failed_notification_write_fails_the_revocation_and_its_retry_applies_both() {
        let h = harness();
        let created = h.valid_connection().await;
        let id = created.connection_id.as_str();
        let valid = h.consents.one(&created.connection_id);
        h.notes.fail_next_put();
        let error = h.svc.revoke(&alice(), id).await.unwrap_err();
        assert!(matches!(error, ServiceError::Store(_)), "{error:?}");
        assert_eq!(h.consents.one(&created.connection_id), valid);
        assert!(h.notes.of_kind("consent.terminated_by_tpp").is_empty());

        h.svc.revoke(&alice(), id).await.unwrap();
        assert_eq!(
            h.consents.one(&created.connection_id).state,
            ConsentState::TerminatedByTpp
        );
        assert_eq!(h.notes.of_kind("consent.terminated_by_tpp").len(), 1);
        assert_eq!(
            h.webhooks.event_ids(),
            [
                format!("consent:{id}:valid"),
                format!("consent:{id}:terminated_by_tpp")
            ]
        );
    }

    #[tokio::test]
    async fn an_event_stored_already_is_kept_and_the_state_change_still_applies() {
        let h = harness();
        let created = h.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
        let id = created.connection_id.clone();
        // An earlier attempt (or the pre-outbox path) stored the event, and its webhook
        // was never queued.
        let earlier = Notification {
            user_id: alice(),
            notification_id: NotificationId::new(),
            event_id: format!("consent:{id}:valid"),
            kind: "consent.valid".into(),
            title: "Bank connected".into(),
            message: "stored earlier".into(),
            data: json!({"connectionId": id}),
            created_at: h.clock.now(),
        };
        assert!(h.notes.put(&earlier).await.unwrap());
        h.alpha.answer_status(Ok(ConsentStatus::Valid));

        let outcome = h.svc.sca_callback(&ok_query(&h.alpha)).await;
        assert_eq!(page_status(&outcome), 200, "{}", page_message(&outcome));
        assert_eq!(h.consents.one(&id).state, ConsentState::Valid);
        assert_eq!(
            h.notes.all(),
            std::slice::from_ref(&earlier),
            "no second notification"
        );
        // Its webhook is queued now, once, for the stored notification.
        let sent = h.webhooks.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        let message: crate::webhook::WebhookMessage = serde_json::from_str(&sent[0]).unwrap();
        assert_eq!(message.notification_id, earlier.notification_id);
    }

    #[tokio::test]
    async fn a_lost_race_in_the_outbox_writes_no_notification() {
        let h = harness();
        let created = h.connect(&alice(), json!({"bankId": "lt-alpha"})).await;
        let id = created.connection_id.clone();
        // Just before our transaction, another writer removes the connection: the version
        // check fails, the fresh read finds it final, so there is nothing to announce.
        let (user, key) = (alice(), id.clone());
        h.consents.before_update_of(&id, move |items| {
            let stored = items.get_mut(&(user, key)).unwrap();
            stored.state = ConsentState::TerminatedByTpp;
            stored.version += 1;
        });
        h.alpha.answer_status(Ok(ConsentStatus::Valid));
        h.svc.sca_callback(&ok_query(&h.alpha)).await;
        assert_eq!(h.consents.one(&id).state, ConsentState::TerminatedByTpp);
        assert!(h.notes.all().is_empty(), "{:?}", h.notes.all());
        assert!(h.webhooks.event_ids().is_empty());
    }
}
