//! Berlin Group wire types and their mapping to domain types — the one place where the
//! bank's JSON meets our model. Unknown or ambiguous statuses map to "pending", never to
//! success.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::bank::{
    Account, Balance, BalanceType, BankError, ConsentAccess, ConsentCreated, ConsentDetails,
    ConsentRequest, PaymentInitiated, PaymentInitiation, ScaLink, Transaction, TransactionState,
};
use crate::domain::{
    AccountId, BankConsentId, BankPaymentId, ConsentStatus, Currency, Iban, Money,
    TransactionStatus,
};

// ---------------------------------------------------------------- requests

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConsentsBody {
    access: AccessBody,
    recurring_indicator: bool,
    valid_until: String,
    frequency_per_day: u32,
    combined_service_indicator: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AccessBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    all_psd2: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accounts: Option<Vec<AccountReferenceBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    balances: Option<Vec<AccountReferenceBody>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transactions: Option<Vec<AccountReferenceBody>>,
}

#[derive(Serialize, Clone)]
pub(crate) struct AccountReferenceBody {
    iban: String,
}

impl AccountReferenceBody {
    fn of(iban: &Iban) -> Self {
        Self {
            iban: iban.expose().to_owned(),
        }
    }
}

impl ConsentsBody {
    pub(crate) fn from_request(request: &ConsentRequest) -> Self {
        let access = match &request.access {
            ConsentAccess::AllAccounts => AccessBody {
                all_psd2: Some("allAccounts"),
                accounts: None,
                balances: None,
                transactions: None,
            },
            ConsentAccess::Accounts { ibans } => {
                let refs: Vec<_> = ibans.iter().map(AccountReferenceBody::of).collect();
                AccessBody {
                    all_psd2: None,
                    accounts: Some(refs.clone()),
                    balances: Some(refs.clone()),
                    transactions: Some(refs),
                }
            }
        };
        Self {
            access,
            recurring_indicator: request.recurring,
            valid_until: request.valid_until.format("%Y-%m-%d").to_string(),
            frequency_per_day: request.frequency_per_day,
            combined_service_indicator: false,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PaymentBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    end_to_end_identification: Option<String>,
    debtor_account: AccountReferenceBody,
    instructed_amount: AmountBody,
    creditor_account: AccountReferenceBody,
    creditor_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    remittance_information_unstructured: Option<String>,
}

impl PaymentBody {
    pub(crate) fn from_initiation(p: &PaymentInitiation) -> Self {
        Self {
            end_to_end_identification: p.end_to_end_id.clone(),
            debtor_account: AccountReferenceBody::of(&p.debtor),
            instructed_amount: AmountBody {
                currency: p.amount.currency().code().to_owned(),
                amount: p.amount.to_minor_string(),
            },
            creditor_account: AccountReferenceBody::of(&p.creditor),
            creditor_name: p.creditor_name.clone(),
            remittance_information_unstructured: p.remittance.clone(),
        }
    }
}

// ---------------------------------------------------------------- responses

#[derive(Deserialize, Serialize, Clone, Debug)]
pub(crate) struct AmountBody {
    currency: String,
    amount: String,
}

impl AmountBody {
    fn to_money(&self) -> Result<Money, BankError> {
        let currency = Currency::parse(&self.currency)
            .map_err(|e| BankError::Protocol(format!("amount currency: {e}")))?;
        Money::parse(&self.amount, currency)
            .map_err(|e| BankError::Protocol(format!("amount: {e}")))
    }
}

#[derive(Deserialize, Debug, Default)]
pub(crate) struct HrefBody {
    pub href: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LinksBody {
    #[serde(default)]
    pub sca_redirect: Option<HrefBody>,
    #[serde(default, rename = "scaOAuth")]
    pub sca_oauth: Option<HrefBody>,
    #[serde(default)]
    pub next: Option<HrefBody>,
    /// Paged transaction reports: the last page.
    #[serde(default)]
    pub last: Option<HrefBody>,
}

impl LinksBody {
    /// `scaRedirect` wins over `scaOAuth` when a bank sends both.
    fn sca(
        &self,
        resolve: &dyn Fn(&str) -> Result<Url, BankError>,
    ) -> Result<Option<ScaLink>, BankError> {
        if let Some(link) = &self.sca_redirect {
            return Ok(Some(ScaLink::Redirect(resolve(&link.href)?)));
        }
        if let Some(link) = &self.sca_oauth {
            return Ok(Some(ScaLink::OAuth(resolve(&link.href)?)));
        }
        Ok(None)
    }
}

/// Unknown consent statuses are treated as "received" (still pending), never as valid.
pub(crate) fn consent_status(code: &str) -> ConsentStatus {
    ConsentStatus::parse(code).unwrap_or(ConsentStatus::Received)
}

/// Unknown transaction statuses are treated as "PDNG" (pending), never as settled.
pub(crate) fn transaction_status(code: &str) -> TransactionStatus {
    TransactionStatus::parse(code).unwrap_or(TransactionStatus::Pdng)
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConsentsResponse {
    consent_status: String,
    consent_id: String,
    #[serde(default, rename = "_links")]
    links: LinksBody,
}

impl ConsentsResponse {
    pub(crate) fn into_domain(
        self,
        resolve: &dyn Fn(&str) -> Result<Url, BankError>,
    ) -> Result<ConsentCreated, BankError> {
        Ok(ConsentCreated {
            consent_id: BankConsentId::parse(&self.consent_id)
                .map_err(|e| BankError::Protocol(format!("consentId: {e}")))?,
            status: consent_status(&self.consent_status),
            sca: self.links.sca(resolve)?,
        })
    }
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConsentInformationResponse {
    consent_status: String,
    valid_until: String,
    frequency_per_day: u32,
    recurring_indicator: bool,
    #[serde(default)]
    last_action_date: Option<String>,
}

fn date(field: &str, value: &str) -> Result<NaiveDate, BankError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| BankError::Protocol(format!("{field} is not an ISO date: {value:?}")))
}

fn opt_date(field: &str, value: &Option<String>) -> Result<Option<NaiveDate>, BankError> {
    value.as_deref().map(|v| date(field, v)).transpose()
}

impl ConsentInformationResponse {
    pub(crate) fn into_domain(self) -> Result<ConsentDetails, BankError> {
        Ok(ConsentDetails {
            status: consent_status(&self.consent_status),
            valid_until: date("validUntil", &self.valid_until)?,
            frequency_per_day: self.frequency_per_day,
            recurring: self.recurring_indicator,
            last_action_date: opt_date("lastActionDate", &self.last_action_date)?,
        })
    }
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConsentStatusResponse {
    pub consent_status: String,
}

#[derive(Deserialize, Debug)]
pub(crate) struct AccountListResponse {
    accounts: Vec<AccountBody>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct AccountBody {
    resource_id: Option<String>,
    iban: Option<String>,
    currency: String,
    name: Option<String>,
    product: Option<String>,
    cash_account_type: Option<String>,
    /// With `withBalance=true`, where the bank includes them.
    #[serde(default)]
    balances: Option<Vec<BalanceBody>>,
}

impl AccountListResponse {
    /// The accounts, each with its balances when the bank sent them along.
    pub(crate) fn into_domain(self) -> Result<Vec<crate::bank::ListedAccount>, BankError> {
        self.accounts
            .into_iter()
            .map(|a| {
                let id = a
                    .resource_id
                    .ok_or_else(|| BankError::Protocol("account without resourceId".into()))?;
                let balances = a
                    .balances
                    .map(|list| BalancesResponse { balances: list }.into_domain())
                    .transpose()?;
                let account = Account {
                    id: AccountId::parse(&id)
                        .map_err(|e| BankError::Protocol(format!("resourceId: {e}")))?,
                    iban: a
                        .iban
                        .as_deref()
                        .map(Iban::parse)
                        .transpose()
                        .map_err(|e| BankError::Protocol(format!("account iban: {e}")))?,
                    currency: Currency::parse(&a.currency)
                        .map_err(|e| BankError::Protocol(format!("account currency: {e}")))?,
                    name: a.name,
                    product: a.product,
                    cash_account_type: a.cash_account_type,
                };
                Ok((account, balances))
            })
            .collect()
    }
}

#[derive(Deserialize, Debug)]
pub(crate) struct BalancesResponse {
    balances: Vec<BalanceBody>,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct BalanceBody {
    balance_amount: AmountBody,
    balance_type: String,
    reference_date: Option<String>,
}

impl BalancesResponse {
    pub(crate) fn into_domain(self) -> Result<Vec<Balance>, BankError> {
        self.balances
            .into_iter()
            .map(|b| {
                Ok(Balance {
                    balance_type: BalanceType::parse(&b.balance_type),
                    amount: b.balance_amount.to_money()?,
                    reference_date: opt_date("referenceDate", &b.reference_date)?,
                })
            })
            .collect()
    }
}

#[derive(Deserialize, Debug)]
pub(crate) struct TransactionsResponse {
    #[serde(default)]
    pub transactions: Option<AccountReportBody>,
}

#[derive(Deserialize, Debug, Default)]
pub(crate) struct AccountReportBody {
    #[serde(default)]
    booked: Vec<TransactionBody>,
    #[serde(default)]
    pending: Vec<TransactionBody>,
    #[serde(default, rename = "_links")]
    pub links: LinksBody,
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct TransactionBody {
    transaction_id: Option<String>,
    entry_reference: Option<String>,
    booking_date: Option<String>,
    value_date: Option<String>,
    transaction_amount: AmountBody,
    creditor_name: Option<String>,
    creditor_account: Option<OptionalIbanBody>,
    debtor_name: Option<String>,
    debtor_account: Option<OptionalIbanBody>,
    remittance_information_unstructured: Option<String>,
    merchant_category_code: Option<String>,
    bank_transaction_code: Option<String>,
}

#[derive(Deserialize, Debug)]
struct OptionalIbanBody {
    iban: Option<String>,
}

impl OptionalIbanBody {
    /// Counterparty IBANs are informative; one we cannot validate is dropped, not fatal.
    fn iban(opt: &Option<OptionalIbanBody>) -> Option<Iban> {
        opt.as_ref()?
            .iban
            .as_deref()
            .and_then(|s| Iban::parse(s).ok())
    }
}

impl TransactionBody {
    fn into_domain(self, state: TransactionState) -> Result<Transaction, BankError> {
        Ok(Transaction {
            amount: self.transaction_amount.to_money()?,
            booking_date: opt_date("bookingDate", &self.booking_date)?,
            value_date: opt_date("valueDate", &self.value_date)?,
            creditor_iban: OptionalIbanBody::iban(&self.creditor_account),
            debtor_iban: OptionalIbanBody::iban(&self.debtor_account),
            transaction_id: self.transaction_id,
            entry_reference: self.entry_reference,
            state,
            creditor_name: self.creditor_name,
            debtor_name: self.debtor_name,
            remittance: self.remittance_information_unstructured,
            merchant_category_code: self.merchant_category_code,
            bank_transaction_code: self.bank_transaction_code,
        })
    }
}

/// One page of a transaction report.
pub(crate) struct TransactionPage {
    /// Booked first, then pending.
    pub transactions: Vec<Transaction>,
    /// `_links.next`, absent on the last page.
    pub next: Option<String>,
    /// `_links.last`, when the bank gives it.
    pub last: Option<String>,
}

impl AccountReportBody {
    /// The page's transactions (booked first) and its `next` and `last` links.
    pub(crate) fn into_domain(self) -> Result<TransactionPage, BankError> {
        let mut out = Vec::with_capacity(self.booked.len() + self.pending.len());
        for t in self.booked {
            out.push(t.into_domain(TransactionState::Booked)?);
        }
        for t in self.pending {
            out.push(t.into_domain(TransactionState::Pending)?);
        }
        Ok(TransactionPage {
            transactions: out,
            next: self.links.next.map(|l| l.href),
            last: self.links.last.map(|l| l.href),
        })
    }
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PaymentInitiationResponse {
    transaction_status: String,
    payment_id: String,
    #[serde(default, rename = "_links")]
    links: LinksBody,
}

impl PaymentInitiationResponse {
    pub(crate) fn into_domain(
        self,
        resolve: &dyn Fn(&str) -> Result<Url, BankError>,
    ) -> Result<PaymentInitiated, BankError> {
        Ok(PaymentInitiated {
            payment_id: BankPaymentId::parse(&self.payment_id)
                .map_err(|e| BankError::Protocol(format!("paymentId: {e}")))?,
            status: transaction_status(&self.transaction_status),
            sca: self.links.sca(resolve)?,
        })
    }
}

#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PaymentStatusResponse {
    pub transaction_status: String,
}

// ---------------------------------------------------------------- errors

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorBody {
    #[serde(default)]
    tpp_messages: Vec<TppMessage>,
}

#[derive(Deserialize, Debug)]
struct TppMessage {
    #[serde(default)]
    category: Option<String>,
    code: String,
    #[serde(default)]
    text: Option<String>,
}

/// Maps a non-2xx answer (status, `tppMessages`, `Retry-After`) to a typed error.
pub(crate) fn error_from_response(
    status: u16,
    body: &[u8],
    retry_after: Option<std::time::Duration>,
) -> BankError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let first = parsed
        .tpp_messages
        .iter()
        .find(|m| m.category.as_deref() != Some("WARNING"))
        .or(parsed.tpp_messages.first());
    let code = first.map(|m| m.code.clone()).unwrap_or_default();
    let message = first
        .and_then(|m| m.text.clone())
        .unwrap_or_else(|| format!("HTTP {status}"));
    match (status, code.as_str()) {
        (_, "CONSENT_EXPIRED") => BankError::ConsentExpired,
        (_, "CONSENT_INVALID" | "CONSENT_UNKNOWN") => BankError::ConsentInvalid { code, message },
        (429, _) | (_, "ACCESS_EXCEEDED") => BankError::AccessExceeded { retry_after },
        (_, "RESOURCE_UNKNOWN" | "RESOURCE_EXPIRED") | (404, _) => {
            BankError::ResourceUnknown { message }
        }
        (500..=599, _) => BankError::Unavailable {
            status: Some(status),
            retry_after,
        },
        (400, _)
        | (
            _,
            "FORMAT_ERROR" | "PARAMETER_NOT_SUPPORTED" | "PERIOD_INVALID" | "TIMESTAMP_INVALID",
        ) => BankError::FormatError {
            code: if code.is_empty() {
                "FORMAT_ERROR".into()
            } else {
                code
            },
            message,
        },
        _ => BankError::Rejected {
            status,
            code: if code.is_empty() {
                format!("HTTP_{status}")
            } else {
                code
            },
            message,
        },
    }
}

/// `Retry-After` is either delta-seconds or an HTTP date.
pub(crate) fn parse_retry_after(
    value: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<std::time::Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tpp_messages_map_to_typed_errors() {
        let body = |code: &str| {
            format!(r#"{{"tppMessages":[{{"category":"ERROR","code":"{code}","text":"t"}}]}}"#)
        };
        assert_eq!(
            error_from_response(401, body("CONSENT_EXPIRED").as_bytes(), None),
            BankError::ConsentExpired
        );
        assert!(matches!(
            error_from_response(401, body("CONSENT_INVALID").as_bytes(), None),
            BankError::ConsentInvalid { .. }
        ));
        assert!(matches!(
            error_from_response(403, body("CONSENT_UNKNOWN").as_bytes(), None),
            BankError::ConsentInvalid { .. }
        ));
        assert_eq!(
            error_from_response(
                429,
                body("ACCESS_EXCEEDED").as_bytes(),
                Some(Duration::from_secs(3))
            ),
            BankError::AccessExceeded {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            error_from_response(403, body("RESOURCE_UNKNOWN").as_bytes(), None),
            BankError::ResourceUnknown { .. }
        ));
        assert!(matches!(
            error_from_response(400, body("FORMAT_ERROR").as_bytes(), None),
            BankError::FormatError { .. }
        ));
        assert!(matches!(
            error_from_response(503, b"not json", None),
            BankError::Unavailable {
                status: Some(503),
                ..
            }
        ));
        assert!(matches!(
            error_from_response(400, body("PRODUCT_UNKNOWN").as_bytes(), None),
            BankError::FormatError { .. }
        ));
        assert!(matches!(
            error_from_response(403, body("PRODUCT_INVALID").as_bytes(), None),
            BankError::Rejected { status: 403, .. }
        ));
        assert!(matches!(
            error_from_response(404, b"", None),
            BankError::ResourceUnknown { .. }
        ));
    }

    #[test]
    fn error_text_is_kept_for_people() {
        let err = error_from_response(
            400,
            br#"{"tppMessages":[{"category":"ERROR","code":"FORMAT_ERROR","path":"validUntil","text":"validUntil is in the past"}]}"#,
            None,
        );
        assert!(
            err.to_string().contains("validUntil is in the past"),
            "{err}"
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn unknown_statuses_are_pending_never_success() {
        assert_eq!(consent_status("somethingNew"), ConsentStatus::Received);
        assert_eq!(transaction_status("ACXX"), TransactionStatus::Pdng);
        assert_eq!(transaction_status("ACSC"), TransactionStatus::Acsc);
    }
}
