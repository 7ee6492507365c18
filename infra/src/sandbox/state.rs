//! In-memory state of the sandbox: consents, payments, access counters, request log, faults.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SandboxConfig;
use super::banks::BANKS;

/// Maximum number of Berlin Group requests kept for `GET /__admin/requests`.
pub const REQUEST_LOG_CAPACITY: usize = 1000;

/// Shared state of one sandbox instance. Cheap to clone.
#[derive(Clone)]
pub struct SandboxState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxState")
            .field("config", &self.inner.config)
            .field("public_base_url", &self.inner.public_base_url)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub config: SandboxConfig,
    pub public_base_url: Option<String>,
    store: Mutex<Store>,
}

impl SandboxState {
    pub fn new(config: SandboxConfig) -> Self {
        Self::build(config, None)
    }

    /// Like [`SandboxState::new`], but SCA links use `base_url` (e.g. "http://localhost:8080")
    /// instead of the Host header of the request that created the resource.
    pub fn with_public_base_url(config: SandboxConfig, base_url: impl Into<String>) -> Self {
        let url = base_url.into().trim_end_matches('/').to_owned();
        Self::build(config, Some(url))
    }

    fn build(config: SandboxConfig, public_base_url: Option<String>) -> Self {
        let store = Store::new(config.seed);
        Self {
            inner: Arc::new(Inner {
                config,
                public_base_url,
                store: Mutex::new(store),
            }),
        }
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Forgets all consents, payments, counters, recorded requests and faults.
    pub fn reset(&self) {
        *self.store() = Store::new(self.inner.config.seed);
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.inner
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentStatus {
    Received,
    Rejected,
    Valid,
    RevokedByPsu,
    Expired,
    TerminatedByTpp,
    PartiallyAuthorised,
}

impl ConsentStatus {
    pub const ALL: [ConsentStatus; 7] = [
        Self::Received,
        Self::Rejected,
        Self::Valid,
        Self::RevokedByPsu,
        Self::Expired,
        Self::TerminatedByTpp,
        Self::PartiallyAuthorised,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Rejected => "rejected",
            Self::Valid => "valid",
            Self::RevokedByPsu => "revokedByPsu",
            Self::Expired => "expired",
            Self::TerminatedByTpp => "terminatedByTpp",
            Self::PartiallyAuthorised => "partiallyAuthorised",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Progress of the (single) SCA of a consent or payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sca {
    Pending,
    Approved(Instant),
    Denied,
}

impl Sca {
    /// Berlin Group `scaStatus` of the authorisation sub-resource.
    pub fn sca_status(self) -> &'static str {
        match self {
            Sca::Pending => "received",
            Sca::Approved(_) => "finalised",
            Sca::Denied => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Consent {
    pub id: String,
    pub bank: &'static str,
    pub psu: String,
    pub access: Value,
    pub recurring_indicator: bool,
    pub valid_until: NaiveDate,
    pub frequency_per_day: u32,
    pub combined_service_indicator: bool,
    pub status: ConsentStatus,
    pub sca: Sca,
    pub last_action_date: NaiveDate,
    pub redirect_uri: String,
    pub nok_redirect_uri: Option<String>,
    pub authorisation_id: String,
}

impl Consent {
    /// The status as reported: a valid consent past its validUntil date is expired.
    pub fn effective_status(&self, today: NaiveDate) -> ConsentStatus {
        if self.status == ConsentStatus::Valid && self.valid_until < today {
            ConsentStatus::Expired
        } else {
            self.status
        }
    }
}

/// Sandbox rule deciding how an authorised payment ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectRule {
    /// ACTC → ACSP → ACSC.
    None,
    /// ACTC, then RJCT at the next step (creditor name contains "REJECT" or the blocked IBAN).
    AfterAcceptance,
    /// RJCT right after SCA (amount over 50 000.00).
    Immediate,
}

#[derive(Debug, Clone)]
pub struct Payment {
    pub id: String,
    pub product: String,
    pub psu: String,
    /// The payment as initiated (the fields the sandbox accepted), without transactionStatus.
    pub details: Value,
    pub rule: RejectRule,
    pub sca: Sca,
    pub redirect_uri: String,
    pub nok_redirect_uri: Option<String>,
    pub authorisation_id: String,
    /// The 201 body, replayed for a second initiation with the same X-Request-ID.
    pub initiation_response: Value,
}

impl Payment {
    /// The transaction status at `now`, derived from the SCA time and the step length.
    pub fn transaction_status(&self, now: Instant, step: Duration) -> &'static str {
        match self.sca {
            Sca::Pending => "RCVD",
            Sca::Denied => "RJCT",
            Sca::Approved(at) => {
                let elapsed = now.saturating_duration_since(at);
                match self.rule {
                    RejectRule::Immediate => "RJCT",
                    _ if elapsed < step => "ACTC",
                    RejectRule::AfterAcceptance => "RJCT",
                    RejectRule::None if elapsed < step * 2 => "ACSP",
                    RejectRule::None => "ACSC",
                }
            }
        }
    }
}

/// One recorded Berlin Group request.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub bank: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    pub status: u16,
    pub operation: String,
    pub timestamp: String,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub total: u64,
    pub by_bank: BTreeMap<String, u64>,
    pub by_operation: BTreeMap<String, u64>,
    pub payment_initiations: BTreeMap<String, u64>,
}

impl Counts {
    fn new() -> Self {
        let zeros: BTreeMap<String, u64> = BANKS.iter().map(|b| (b.id.to_owned(), 0)).collect();
        Self {
            total: 0,
            by_bank: zeros.clone(),
            by_operation: BTreeMap::new(),
            payment_initiations: zeros,
        }
    }
}

/// Fault settings (`PUT /__admin/faults`). Rates are probabilities in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FaultConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bank: Option<String>,
    pub latency_ms: u64,
    pub error_rate: f64,
    pub rate_limit_rate: f64,
    pub retry_after_secs: u64,
    pub hang_rate: f64,
    pub hang_ms: u64,
    /// 500 (INTERNAL_SERVER_ERROR, default) or 503 (SERVICE_UNAVAILABLE) for injected errors.
    pub error_status: u16,
    /// Only requests whose path contains this (e.g. one account's `/transactions`) are
    /// faulted; the others pass untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_contains: Option<String>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            bank: None,
            latency_ms: 0,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            hang_rate: 0.0,
            hang_ms: 30_000,
            error_status: 500,
            path_contains: None,
        }
    }
}

/// What the fault layer decided for one request.
#[derive(Debug, Default)]
pub struct FaultDecision {
    pub latency: Duration,
    pub error_status: Option<u16>,
    pub rate_limit_retry_after: Option<u64>,
    pub hang: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Faults {
    pub global: Option<FaultConfig>,
    pub per_bank: HashMap<String, FaultConfig>,
}

pub(crate) struct Store {
    /// Keyed by (bank, consent id).
    pub consents: HashMap<(String, String), Consent>,
    /// Keyed by (bank, payment id).
    pub payments: HashMap<(String, String), Payment>,
    /// (bank, X-Request-ID) → payment id, for de-duplication of initiations.
    pub payment_by_request_id: HashMap<(String, String), String>,
    /// (bank, consent id, resource, UTC day) → accesses without PSU involvement.
    pub access_counts: HashMap<(String, String, String, NaiveDate), u32>,
    pub counts: Counts,
    pub requests: VecDeque<RecordedRequest>,
    pub faults: Faults,
    fault_rng: StdRng,
}

impl Store {
    fn new(seed: u64) -> Self {
        Self {
            consents: HashMap::new(),
            payments: HashMap::new(),
            payment_by_request_id: HashMap::new(),
            access_counts: HashMap::new(),
            counts: Counts::new(),
            requests: VecDeque::new(),
            faults: Faults::default(),
            fault_rng: StdRng::seed_from_u64(seed ^ 0xfa17_fa17_fa17_fa17),
        }
    }

    /// Counts one Berlin Group call.
    pub fn count_call(&mut self, bank: &str, operation: &str) {
        self.counts.total += 1;
        *self.counts.by_bank.entry(bank.to_owned()).or_default() += 1;
        *self
            .counts
            .by_operation
            .entry(format!("{bank} {operation}"))
            .or_default() += 1;
    }

    pub fn record(&mut self, request: RecordedRequest) {
        if self.requests.len() >= REQUEST_LOG_CAPACITY {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    pub fn set_faults(&mut self, config: FaultConfig) {
        match config.bank.clone() {
            Some(bank) => {
                self.faults.per_bank.insert(bank, config);
            }
            None => {
                self.faults.per_bank.clear();
                self.faults.global = Some(config);
            }
        }
    }

    /// Draws the faults for one request to `path` at `bank` with the seeded RNG.
    pub fn draw_faults(&mut self, bank: &str, path: &str) -> FaultDecision {
        let Some(cfg) = self
            .faults
            .per_bank
            .get(bank)
            .or(self.faults.global.as_ref())
            .filter(|cfg| cfg.path_contains.as_ref().is_none_or(|p| path.contains(p)))
            .cloned()
        else {
            return FaultDecision::default();
        };
        let rng = &mut self.fault_rng;
        let mut hit = |rate: f64| rate > 0.0 && rng.random::<f64>() < rate;
        FaultDecision {
            latency: Duration::from_millis(cfg.latency_ms),
            hang: hit(cfg.hang_rate).then(|| Duration::from_millis(cfg.hang_ms)),
            error_status: hit(cfg.error_rate).then_some(cfg.error_status),
            rate_limit_retry_after: hit(cfg.rate_limit_rate).then_some(cfg.retry_after_secs),
        }
    }

    /// Registers one access without PSU involvement; false when the daily limit is used up.
    pub fn register_access(
        &mut self,
        bank: &str,
        consent_id: &str,
        resource: &str,
        limit: u32,
    ) -> bool {
        let today = Utc::now().date_naive();
        let key = (
            bank.to_owned(),
            consent_id.to_owned(),
            resource.to_owned(),
            today,
        );
        let used = self.access_counts.entry(key).or_default();
        if *used >= limit {
            return false;
        }
        *used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(rule: RejectRule, sca: Sca) -> Payment {
        Payment {
            id: "p".into(),
            product: "sepa-credit-transfers".into(),
            psu: "demo".into(),
            details: Value::Null,
            rule,
            sca,
            redirect_uri: "https://tpp/ok".into(),
            nok_redirect_uri: None,
            authorisation_id: "a".into(),
            initiation_response: Value::Null,
        }
    }

    #[test]
    fn payment_lifecycle() {
        let step = Duration::from_secs(2);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ok = payment(RejectRule::None, Sca::Approved(t0));
        assert_eq!(ok.transaction_status(at(0), step), "ACTC");
        assert_eq!(ok.transaction_status(at(1999), step), "ACTC");
        assert_eq!(ok.transaction_status(at(2000), step), "ACSP");
        assert_eq!(ok.transaction_status(at(4000), step), "ACSC");
        let late = payment(RejectRule::AfterAcceptance, Sca::Approved(t0));
        assert_eq!(late.transaction_status(at(10), step), "ACTC");
        assert_eq!(late.transaction_status(at(2500), step), "RJCT");
        assert_eq!(late.transaction_status(at(9000), step), "RJCT");
        let big = payment(RejectRule::Immediate, Sca::Approved(t0));
        assert_eq!(big.transaction_status(at(0), step), "RJCT");
        assert_eq!(
            payment(RejectRule::None, Sca::Pending).transaction_status(at(0), step),
            "RCVD"
        );
        assert_eq!(
            payment(RejectRule::None, Sca::Denied).transaction_status(at(0), step),
            "RJCT"
        );
    }

    #[test]
    fn faults_at_rate_one_always_fire() {
        let mut store = Store::new(1);
        store.set_faults(FaultConfig {
            error_rate: 1.0,
            rate_limit_rate: 1.0,
            ..FaultConfig::default()
        });
        for _ in 0..100 {
            let d = store.draw_faults("lt-alpha", "/lt-alpha/v1/accounts");
            assert_eq!(d.error_status, Some(500));
            assert_eq!(d.rate_limit_retry_after, Some(1));
            assert!(d.hang.is_none());
        }
        store.set_faults(FaultConfig {
            bank: Some("lv-baltija".into()),
            ..FaultConfig::default()
        });
        assert!(
            store
                .draw_faults("lv-baltija", "/lv-baltija/v1/accounts")
                .error_status
                .is_none()
        );
        assert!(
            store
                .draw_faults("lt-alpha", "/lt-alpha/v1/accounts")
                .error_status
                .is_some()
        );
        // A fault for one path leaves the others alone.
        store.set_faults(FaultConfig {
            error_rate: 1.0,
            path_contains: Some("/accounts/a1/transactions".into()),
            ..FaultConfig::default()
        });
        let path = "/lt-alpha/v1/accounts/a1/transactions";
        assert_eq!(store.draw_faults("lt-alpha", path).error_status, Some(500));
        let other = "/lt-alpha/v1/accounts/a2/transactions";
        assert!(store.draw_faults("lt-alpha", other).error_status.is_none());
    }

    #[test]
    fn access_limit() {
        let mut store = Store::new(1);
        assert!(store.register_access("b", "c", "accounts", 2));
        assert!(store.register_access("b", "c", "accounts", 2));
        assert!(!store.register_access("b", "c", "accounts", 2));
        assert!(store.register_access("b", "c", "balances/x", 2));
    }
}
