//! The bank registry: which banks we talk to and how. Read from a JSON file chosen by
//! `BANK_REGISTRY_PATH` (default `infra/banks.json`), so an operator adds a bank without
//! rebuilding. String values may use `${VAR}` or `${VAR:-default}` to take a value from
//! the environment (base URLs per environment, certificate paths).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use url::Url;

use super::berlin_group::BerlinGroupConnector;
use super::{BankApi, BankError, PaymentProduct};
use crate::domain::{BankId, Currency};

/// Environment variable naming the registry file.
pub const REGISTRY_PATH_ENV: &str = "BANK_REGISTRY_PATH";
/// Used when [`REGISTRY_PATH_ENV`] is not set (relative to the working directory).
pub const DEFAULT_REGISTRY_PATH: &str = "infra/banks.json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the bank registry {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bank registry is not valid: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BankConfig {
    pub id: BankId,
    pub name: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// Everything before `/v1/...`, e.g. `https://bank.example/xs2a/berlin/1.3`.
    pub base_url: Url,
    /// The longest consent the bank grants (we never ask for more than 180 days).
    #[serde(default = "default_max_consent_days")]
    pub max_consent_days: u32,
    /// Reads per day without the PSU that the bank allows (the consent's maximum).
    #[serde(default = "default_frequency_per_day")]
    pub frequency_per_day: u32,
    pub payment_products: Vec<PaymentProduct>,
    /// Currencies the bank accepts for payments.
    #[serde(default = "default_currencies")]
    pub payment_currencies: Vec<Currency>,
    /// Deadline for one HTTP call to the bank.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Payment initiations per second we allow ourselves towards this bank.
    #[serde(default = "default_rate")]
    pub max_payments_per_second: u32,
    #[serde(default)]
    pub quirks: BankQuirks,
    /// mTLS client identity (QWAC), when the bank requires one.
    #[serde(default)]
    pub credentials: Option<ClientCredentials>,
}

fn default_max_consent_days() -> u32 {
    180
}
fn default_frequency_per_day() -> u32 {
    4
}
fn default_currencies() -> Vec<Currency> {
    vec![Currency::parse("EUR").expect("EUR is an ISO 4217 currency")]
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_rate() -> u32 {
    10
}

/// Per-bank deviations from the plain standard, as data (no per-bank code).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BankQuirks {
    /// Query parameters added to every call (e.g. a `tenant`).
    #[serde(default)]
    pub extra_query: BTreeMap<String, String>,
    /// Headers added to every call.
    #[serde(default)]
    pub extra_headers: BTreeMap<String, String>,
    /// Renamed standard headers, e.g. `{"PSU-IP-Address": "PSU-IP"}`.
    #[serde(default)]
    pub header_names: BTreeMap<String, String>,
    /// Fetch the pages of a transaction listing concurrently when the first page's
    /// `_links` give `next` (`pageIndex=1`) and `last` (`pageIndex=N`) hrefs that differ
    /// only in `pageIndex`: pages 1..=N are requested together (at most 8 at a time) and
    /// kept in order. Only for banks whose paging is by `pageIndex` on a stable listing;
    /// otherwise, and by default, `next` is followed one page at a time.
    #[serde(default)]
    pub parallel_pages: bool,
    /// The bank answers `GET /v1/accounts?withBalance=true` with each account's balances:
    /// an aggregated balances read that needs the account list too makes one round trip
    /// instead of two (and one call instead of 1 + one per account). Accounts the bank
    /// sends without balances are read one by one as without the quirk.
    #[serde(default)]
    pub with_balance: bool,
}

/// Where the QWAC certificate and key come from: PEM files, or PEM in environment
/// variables (for secrets injected at deploy time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCredentials {
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_env: Option<String>,
    #[serde(default)]
    pub key_env: Option<String>,
}

impl ClientCredentials {
    /// The certificate chain and private key as one PEM bundle.
    pub fn load_pem(&self) -> Result<Vec<u8>, BankError> {
        let part = |file: &Option<PathBuf>,
                    env: &Option<String>,
                    what: &str|
         -> Result<Vec<u8>, BankError> {
            match (file, env) {
                (Some(path), _) => std::fs::read(path).map_err(|e| {
                    BankError::Config(format!(
                        "cannot read the client {what} {}: {e}",
                        path.display()
                    ))
                }),
                (None, Some(var)) => std::env::var(var).map(String::into_bytes).map_err(|_| {
                    BankError::Config(format!(
                        "environment variable {var} (client {what}) is not set"
                    ))
                }),
                (None, None) => Err(BankError::Config(format!("no client {what} configured"))),
            }
        };
        let mut pem = part(&self.cert_file, &self.cert_env, "certificate")?;
        pem.push(b'\n');
        pem.extend(part(&self.key_file, &self.key_env, "key")?);
        Ok(pem)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    banks: Vec<BankConfig>,
}

/// All configured banks, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankRegistry {
    banks: Vec<BankConfig>,
}

impl BankRegistry {
    /// Loads the file named by `BANK_REGISTRY_PATH`, or `infra/banks.json`.
    pub fn from_env() -> Result<Self, RegistryError> {
        let path = std::env::var_os(REGISTRY_PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRY_PATH));
        Self::from_file(&path)
    }

    pub fn from_file(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses a registry document, expanding `${VAR}` / `${VAR:-default}` from the
    /// process environment.
    pub fn from_json(text: &str) -> Result<Self, RegistryError> {
        Self::from_json_with(text, |name| std::env::var(name).ok())
    }

    /// As [`Self::from_json`], with an explicit variable lookup (for tests).
    pub fn from_json_with(
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, RegistryError> {
        let mut doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        expand_strings(&mut doc, &lookup)?;
        let file: RegistryFile =
            serde_json::from_value(doc).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        Self::new(file.banks)
    }

    pub fn new(banks: Vec<BankConfig>) -> Result<Self, RegistryError> {
        let mut seen = std::collections::HashSet::new();
        for bank in &banks {
            if !seen.insert(bank.id.clone()) {
                return Err(RegistryError::Invalid(format!(
                    "bank id {} appears twice",
                    bank.id
                )));
            }
            if bank.payment_products.is_empty() {
                return Err(RegistryError::Invalid(format!(
                    "bank {} lists no payment product",
                    bank.id
                )));
            }
            if !(1..=180).contains(&bank.max_consent_days) {
                return Err(RegistryError::Invalid(format!(
                    "bank {}: maxConsentDays must be between 1 and 180",
                    bank.id
                )));
            }
            if bank.frequency_per_day == 0 {
                return Err(RegistryError::Invalid(format!(
                    "bank {}: frequencyPerDay must be at least 1",
                    bank.id
                )));
            }
            if !matches!(bank.base_url.scheme(), "http" | "https") {
                return Err(RegistryError::Invalid(format!(
                    "bank {}: baseUrl must be http(s)",
                    bank.id
                )));
            }
        }
        Ok(Self { banks })
    }

    pub fn banks(&self) -> &[BankConfig] {
        &self.banks
    }

    pub fn get(&self, id: &BankId) -> Option<&BankConfig> {
        self.banks.iter().find(|b| &b.id == id)
    }

    /// One connector per bank, built once (at cold start) and shared.
    pub fn connectors(&self) -> Result<HashMap<BankId, Arc<dyn BankApi>>, BankError> {
        self.banks
            .iter()
            .map(|config| {
                let connector: Arc<dyn BankApi> =
                    Arc::new(BerlinGroupConnector::new(config.clone())?);
                Ok((config.id.clone(), connector))
            })
            .collect()
    }
}

fn expand_strings(
    value: &mut serde_json::Value,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), RegistryError> {
    match value {
        serde_json::Value::String(s) => *s = expand_vars(s, lookup)?,
        serde_json::Value::Array(items) => {
            for item in items {
                expand_strings(item, lookup)?;
            }
        }
        serde_json::Value::Object(map) => {
            for item in map.values_mut() {
                expand_strings(item, lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${NAME}` and `${NAME:-default}`; an unset variable without default is an error.
fn expand_vars(
    input: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<String, RegistryError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| RegistryError::Invalid(format!("unclosed ${{ in {input:?}")))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        let value = match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_owned(),
            (None, None) => {
                return Err(RegistryError::Invalid(format!(
                    "environment variable {name} is not set (used in {input:?})"
                )));
            }
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"banks":[{"id":"lt-alpha","name":"Alpha","country":"LT",
        "baseUrl":"${SANDBOX_URL:-http://127.0.0.1:8080}/lt-alpha",
        "paymentProducts":["sepa-credit-transfers","instant-sepa-credit-transfers"],
        "quirks":{"extraQuery":{"tenant":"${TENANT}"}}}]}"#;

    #[test]
    fn defaults_and_expansion() {
        let reg = BankRegistry::from_json_with(DOC, |n| (n == "TENANT").then(|| "t1".to_owned()))
            .unwrap();
        let bank = &reg.banks()[0];
        assert_eq!(bank.base_url.as_str(), "http://127.0.0.1:8080/lt-alpha");
        assert_eq!(bank.max_consent_days, 180);
        assert_eq!(bank.frequency_per_day, 4);
        assert_eq!(bank.quirks.extra_query["tenant"], "t1");
        assert!(
            !bank.quirks.parallel_pages,
            "pages one at a time by default"
        );
        assert!(
            !bank.quirks.with_balance,
            "balances one account at a time by default"
        );
        assert_eq!(bank.payment_currencies[0].code(), "EUR");
        assert!(reg.get(&BankId::parse("lt-alpha").unwrap()).is_some());
        assert!(reg.get(&BankId::parse("lv-other").unwrap()).is_none());
    }

    #[test]
    fn env_value_wins_over_default() {
        let reg = BankRegistry::from_json_with(DOC, |n| match n {
            "SANDBOX_URL" => Some("http://10.1.2.3:9".to_owned()),
            "TENANT" => Some("x".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            reg.banks()[0].base_url.as_str(),
            "http://10.1.2.3:9/lt-alpha"
        );
    }

    #[test]
    fn missing_variable_is_an_error() {
        let err = BankRegistry::from_json_with(DOC, |_| None).unwrap_err();
        assert!(err.to_string().contains("TENANT"), "{err}");
    }

    #[test]
    fn rejects_bad_documents() {
        let dup = r#"{"banks":[
            {"id":"a","name":"A","country":"LT","baseUrl":"http://x","paymentProducts":["sepa-credit-transfers"]},
            {"id":"a","name":"B","country":"LT","baseUrl":"http://y","paymentProducts":["sepa-credit-transfers"]}]}"#;
        assert!(
            BankRegistry::from_json(dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let unknown_field = r#"{"banks":[{"id":"a","name":"A","country":"LT","baseUrl":"http://x",
            "paymentProducts":["sepa-credit-transfers"],"colour":"red"}]}"#;
        assert!(BankRegistry::from_json(unknown_field).is_err());
        let bad_product = r#"{"banks":[{"id":"a","name":"A","country":"LT","baseUrl":"http://x","paymentProducts":["cash"]}]}"#;
        assert!(BankRegistry::from_json(bad_product).is_err());
        let long_consent = r#"{"banks":[{"id":"a","name":"A","country":"LT","baseUrl":"http://x",
            "paymentProducts":["sepa-credit-transfers"],"maxConsentDays":365}]}"#;
        assert!(
            BankRegistry::from_json(long_consent)
                .unwrap_err()
                .to_string()
                .contains("180")
        );
        let bad_id = r#"{"banks":[{"id":"A B","name":"A","country":"LT","baseUrl":"http://x","paymentProducts":["sepa-credit-transfers"]}]}"#;
        assert!(BankRegistry::from_json(bad_id).is_err());
    }

    #[test]
    fn the_shipped_registry_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/banks.json");
        let reg = BankRegistry::from_json_with(&std::fs::read_to_string(path).unwrap(), |_| None)
            .unwrap();
        assert!(reg.banks().len() >= 3);
        assert!(reg.connectors().unwrap().len() == reg.banks().len());
    }
}
