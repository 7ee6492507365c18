//! The bank port: what our services need from a bank (an ASPSP), in domain types.
//!
//! [`BankApi`] is implemented once for the Berlin Group NextGenPSD2 1.3 standard
//! ([`berlin_group::BerlinGroupConnector`]); each bank is one instance of it, configured by
//! its entry in the [`registry::BankRegistry`] (own base URL, credentials and quirks).

pub mod berlin_group;
pub mod registry;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::domain::{
    AccountId, BankConsentId, BankId, BankPaymentId, ConsentStatus, Currency, Iban, Money,
    RequestId, TransactionStatus,
};

/// Whether the user (PSU) takes part in this call. Berlin Group banks limit the number of
/// account reads *without* the PSU (`frequencyPerDay`); a call that carries the PSU's IP
/// address is a user-present access and is not counted against that limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PsuContext {
    /// `PSU-IP-Address`: set only when the user is actively asking.
    pub ip_address: Option<IpAddr>,
    /// `PSU-User-Agent`, forwarded when known.
    pub user_agent: Option<String>,
}

impl PsuContext {
    /// A background access (no user present).
    pub fn absent() -> Self {
        Self::default()
    }

    /// A user-present access from this IP address.
    pub fn present(ip_address: IpAddr) -> Self {
        Self {
            ip_address: Some(ip_address),
            user_agent: None,
        }
    }

    pub fn is_present(&self) -> bool {
        self.ip_address.is_some()
    }
}

/// Where the bank sends the browser back after SCA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectUris {
    /// `TPP-Redirect-URI`.
    pub ok: Url,
    /// `TPP-Nok-Redirect-URI` (the bank falls back to `ok` when absent).
    pub nok: Option<Url>,
}

/// A link the user must follow to authorise (Strong Customer Authentication).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "href", rename_all = "camelCase")]
pub enum ScaLink {
    /// `_links.scaRedirect`: the bank's SCA page.
    Redirect(Url),
    /// `_links.scaOAuth`: the bank's OAuth2 authorisation entry point.
    OAuth(Url),
}

impl ScaLink {
    pub fn href(&self) -> &Url {
        match self {
            ScaLink::Redirect(url) | ScaLink::OAuth(url) => url,
        }
    }
}

/// What a consent gives access to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ConsentAccess {
    /// `allPsd2: allAccounts`: accounts, balances and transactions of every account.
    AllAccounts,
    /// Accounts, balances and transactions of these accounts only.
    Accounts { ibans: Vec<Iban> },
}

/// A request to create an account-information consent.
#[derive(Clone, Debug)]
pub struct ConsentRequest {
    pub access: ConsentAccess,
    pub recurring: bool,
    pub valid_until: NaiveDate,
    pub frequency_per_day: u32,
    /// The PSU is always present when a consent is created (the spec requires the header).
    pub psu_ip: IpAddr,
    /// `PSU-ID`, for banks that need it up front.
    pub psu_id: Option<String>,
    pub redirect: RedirectUris,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentCreated {
    pub consent_id: BankConsentId,
    pub status: ConsentStatus,
    pub sca: Option<ScaLink>,
}

/// `GET /v1/consents/{consentId}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentDetails {
    pub status: ConsentStatus,
    pub valid_until: NaiveDate,
    pub frequency_per_day: u32,
    pub recurring: bool,
    pub last_action_date: Option<NaiveDate>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// The bank's `resourceId`, used in the account URLs.
    pub id: AccountId,
    pub iban: Option<Iban>,
    pub currency: Currency,
    pub name: Option<String>,
    pub product: Option<String>,
    /// ISO 20022 ExternalCashAccountType1Code, e.g. `CACC` (current), `SVGS` (savings).
    pub cash_account_type: Option<String>,
}

/// Berlin Group balance types. Unknown ones are kept, never guessed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BalanceType {
    ClosingBooked,
    Expected,
    OpeningBooked,
    InterimAvailable,
    InterimBooked,
    ForwardAvailable,
    NonInvoiced,
    Other(String),
}

impl BalanceType {
    pub fn parse(code: &str) -> Self {
        match code {
            "closingBooked" => Self::ClosingBooked,
            "expected" => Self::Expected,
            "openingBooked" => Self::OpeningBooked,
            "interimAvailable" => Self::InterimAvailable,
            "interimBooked" => Self::InterimBooked,
            "forwardAvailable" => Self::ForwardAvailable,
            "nonInvoiced" => Self::NonInvoiced,
            other => Self::Other(other.to_owned()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    pub balance_type: BalanceType,
    pub amount: Money,
    pub reference_date: Option<NaiveDate>,
}

/// The `bookingStatus` query parameter of the transaction list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BookingStatus {
    Booked,
    Pending,
    Both,
}

impl BookingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BookingStatus::Booked => "booked",
            BookingStatus::Pending => "pending",
            BookingStatus::Both => "both",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionQuery {
    pub booking_status: BookingStatus,
    pub date_from: Option<NaiveDate>,
    pub date_to: Option<NaiveDate>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TransactionState {
    Booked,
    Pending,
}

/// One account transaction. `amount` is signed: negative for money leaving the account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    pub transaction_id: Option<String>,
    pub entry_reference: Option<String>,
    pub state: TransactionState,
    pub booking_date: Option<NaiveDate>,
    pub value_date: Option<NaiveDate>,
    pub amount: Money,
    pub creditor_name: Option<String>,
    pub creditor_iban: Option<Iban>,
    pub debtor_name: Option<String>,
    pub debtor_iban: Option<Iban>,
    pub remittance: Option<String>,
    /// ISO 18245 merchant category code, for card transactions.
    pub merchant_category_code: Option<String>,
    pub bank_transaction_code: Option<String>,
}

/// Berlin Group payment products we initiate (`/v1/payments/{payment-product}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaymentProduct {
    SepaCreditTransfers,
    InstantSepaCreditTransfers,
    Target2Payments,
    CrossBorderCreditTransfers,
}

impl PaymentProduct {
    pub const ALL: [PaymentProduct; 4] = [
        PaymentProduct::SepaCreditTransfers,
        PaymentProduct::InstantSepaCreditTransfers,
        PaymentProduct::Target2Payments,
        PaymentProduct::CrossBorderCreditTransfers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentProduct::SepaCreditTransfers => "sepa-credit-transfers",
            PaymentProduct::InstantSepaCreditTransfers => "instant-sepa-credit-transfers",
            PaymentProduct::Target2Payments => "target-2-payments",
            PaymentProduct::CrossBorderCreditTransfers => "cross-border-credit-transfers",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for PaymentProduct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A single credit transfer to initiate.
#[derive(Clone, Debug)]
pub struct PaymentInitiation {
    pub product: PaymentProduct,
    /// The `X-Request-ID` of the initiation: stable across retries of the same payment so a
    /// bank that de-duplicates sees one request.
    pub request_id: RequestId,
    pub debtor: Iban,
    pub creditor: Iban,
    pub creditor_name: String,
    pub amount: Money,
    pub remittance: Option<String>,
    pub end_to_end_id: Option<String>,
    pub psu_ip: IpAddr,
    pub redirect: RedirectUris,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentInitiated {
    pub payment_id: BankPaymentId,
    pub status: TransactionStatus,
    pub sca: Option<ScaLink>,
}

/// What can go wrong when talking to a bank, sorted by what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BankError {
    /// `CONSENT_EXPIRED`: the user must renew the consent.
    #[error("the consent has expired at the bank")]
    ConsentExpired,
    /// `CONSENT_INVALID`, `CONSENT_UNKNOWN`: the consent cannot be used (not authorised,
    /// revoked, unknown).
    #[error("the bank does not accept the consent ({code}): {message}")]
    ConsentInvalid { code: String, message: String },
    /// HTTP 429 (`ACCESS_EXCEEDED` and friends): too many calls; wait `retry_after`.
    #[error("the bank's access limit is exceeded{}", retry_hint(.retry_after))]
    AccessExceeded { retry_after: Option<Duration> },
    /// `RESOURCE_UNKNOWN` or 404: the account, payment or consent does not exist there.
    #[error("the bank does not know this resource: {message}")]
    ResourceUnknown { message: String },
    /// `FORMAT_ERROR` and other 400s: our request was refused as malformed. Never retried.
    #[error("the bank refused the request format ({code}): {message}")]
    FormatError { code: String, message: String },
    /// Other permanent refusals (e.g. `PRODUCT_INVALID`, `PAYMENT_FAILED`, 401/403 on
    /// certificates). Never retried.
    #[error("the bank refused the request with HTTP {status} ({code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// 5xx or connection failure: try again later.
    #[error("the bank is unavailable (HTTP {status:?}){}", retry_hint(.retry_after))]
    Unavailable {
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// No answer within the bank's deadline.
    #[error("the bank did not answer within {0:?}")]
    Timeout(Duration),
    /// The bank answered something we cannot understand under the Berlin Group spec.
    #[error("the bank's answer does not follow the Berlin Group spec: {0}")]
    Protocol(String),
    /// The connector is misconfigured (bad certificate file, bad URL).
    #[error("bank connector configuration error: {0}")]
    Config(String),
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!("; retry after {}s", d.as_secs()),
        None => String::new(),
    }
}

impl BankError {
    /// Whether the same call may succeed later without anything else changing.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BankError::AccessExceeded { .. }
                | BankError::Unavailable { .. }
                | BankError::Timeout(_)
        )
    }

    /// How long the bank asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BankError::AccessExceeded { retry_after }
            | BankError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A stable machine-readable code for API answers and logs.
    pub fn code(&self) -> &'static str {
        match self {
            BankError::ConsentExpired => "CONSENT_EXPIRED",
            BankError::ConsentInvalid { .. } => "CONSENT_INVALID",
            BankError::AccessExceeded { .. } => "ACCESS_EXCEEDED",
            BankError::ResourceUnknown { .. } => "RESOURCE_UNKNOWN",
            BankError::FormatError { .. } => "FORMAT_ERROR",
            BankError::Rejected { .. } => "REJECTED",
            BankError::Unavailable { .. } => "BANK_UNAVAILABLE",
            BankError::Timeout(_) => "BANK_TIMEOUT",
            BankError::Protocol(_) => "BANK_PROTOCOL_ERROR",
            BankError::Config(_) => "BANK_CONFIG_ERROR",
        }
    }
}

/// One bank, in domain terms. Implementations are stateless apart from their HTTP client.
/// An account of the list and its balances when the bank sent them along
/// ([`BankApi::accounts_with_balances`]).
pub type ListedAccount = (Account, Option<Vec<Balance>>);

#[async_trait]
pub trait BankApi: Send + Sync {
    fn bank_id(&self) -> &BankId;

    /// `POST /v1/consents`.
    async fn create_consent(&self, request: &ConsentRequest) -> Result<ConsentCreated, BankError>;
    /// `GET /v1/consents/{consentId}`.
    async fn get_consent(&self, consent: &BankConsentId) -> Result<ConsentDetails, BankError>;
    /// `GET /v1/consents/{consentId}/status`.
    async fn consent_status(&self, consent: &BankConsentId) -> Result<ConsentStatus, BankError>;
    /// `DELETE /v1/consents/{consentId}`.
    async fn delete_consent(&self, consent: &BankConsentId) -> Result<(), BankError>;

    /// `GET /v1/accounts`.
    async fn accounts(
        &self,
        consent: &BankConsentId,
        psu: &PsuContext,
    ) -> Result<Vec<Account>, BankError>;
    /// The account list with each account's balances in the same call
    /// (`GET /v1/accounts?withBalance=true`) where the bank offers it; `None` for an
    /// account whose balances did not come with it (the caller reads them one by one).
    /// By default the plain list, without balances.
    async fn accounts_with_balances(
        &self,
        consent: &BankConsentId,
        psu: &PsuContext,
    ) -> Result<Vec<ListedAccount>, BankError> {
        Ok(self
            .accounts(consent, psu)
            .await?
            .into_iter()
            .map(|a| (a, None))
            .collect())
    }
    /// `GET /v1/accounts/{account-id}/balances`.
    async fn balances(
        &self,
        consent: &BankConsentId,
        account: &AccountId,
        psu: &PsuContext,
    ) -> Result<Vec<Balance>, BankError>;
    /// `GET /v1/accounts/{account-id}/transactions`, following every `_links.next` page.
    async fn transactions(
        &self,
        consent: &BankConsentId,
        account: &AccountId,
        query: &TransactionQuery,
        psu: &PsuContext,
    ) -> Result<Vec<Transaction>, BankError>;

    /// `POST /v1/payments/{payment-product}`.
    async fn initiate_payment(
        &self,
        payment: &PaymentInitiation,
    ) -> Result<PaymentInitiated, BankError>;
    /// `GET /v1/payments/{payment-product}/{paymentId}/status`.
    async fn payment_status(
        &self,
        product: PaymentProduct,
        payment: &BankPaymentId,
    ) -> Result<TransactionStatus, BankError>;
}
