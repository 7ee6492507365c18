//! Use cases: plain async functions over the ports (stores, banks, clock), so they run the
//! same in a Lambda, in the local runtime and in unit tests with in-memory doubles.
//!
//! - [`aggregation`]: accounts, balances, transactions and spending across all banks.
//! - [`body`]: request bodies that must be a JSON object (errors name the field).
//! - [`connections`]: link a bank, the SCA callback, list/get, revoke, renew now.
//! - [`renewal`]: the daily renewal job (exactly one renewal per due consent).
//! - [`health`]: the hourly health job (expiry, the bank's view, renewal of lapsed ones).
//! - [`payments`]: idempotent payment initiation, the payment SCA callback, status polling.
//!
//! Every service fails with a [`ServiceError`]; [`ServiceError::into_problem`] turns it into
//! the RFC 9457 answer of the public API without leaking internals.

pub mod aggregation;
pub mod body;
pub mod connections;
pub mod health;
pub mod payments;
pub mod rate_pool;
pub mod renewal;
#[cfg(test)]
pub(crate) mod testing;

use chrono::{DateTime, Utc};

pub use connections::log_text;

use crate::bank::BankError;
use crate::http::{FieldError, Problem};
use crate::store::StoreError;

/// The current time. Services never read the system clock directly, so tests can fix it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Why a use case failed, sorted by what the API answers.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is invalid; every offending field is listed.
    #[error("invalid request: {} field error(s)", .0.len())]
    Validation(Vec<FieldError>),
    /// No such resource for this user (also: it belongs to someone else).
    #[error("not found")]
    NotFound,
    /// The resource is not in a state that allows the operation.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The bank refused or failed.
    #[error("bank error: {0}")]
    Bank(#[from] BankError),
    /// Our storage failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
}

impl From<Vec<FieldError>> for ServiceError {
    fn from(errors: Vec<FieldError>) -> Self {
        ServiceError::Validation(errors)
    }
}

impl ServiceError {
    /// One invalid field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ServiceError::Validation(vec![FieldError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    /// The problem document for the API. Details are fixed texts (plus the bank's error
    /// code and a retry delay): never a bank's message, a storage error, or an id other
    /// than what the caller sent.
    pub fn into_problem(self) -> Problem {
        match self {
            ServiceError::Validation(errors) => {
                let mut problem = Problem::new(
                    400,
                    "validation",
                    "Invalid request",
                    "One or more fields are invalid; see errors.",
                );
                problem.errors = errors;
                problem
            }
            ServiceError::NotFound => Problem::not_found(),
            ServiceError::Conflict(detail) => Problem::new(409, "conflict", "Conflict", detail),
            ServiceError::Bank(error) => bank_problem(&error),
            ServiceError::Store(StoreError::VersionConflict { .. }) => Problem::new(
                409,
                "concurrent-update",
                "Conflict",
                "The resource changed while this request was processed; try again.",
            ),
            ServiceError::Store(_) => Problem::new(
                500,
                "internal",
                "Internal Server Error",
                "Something went wrong on our side; try again later.",
            ),
        }
    }
}

fn bank_problem(error: &BankError) -> Problem {
    let code = error.code();
    match error {
        BankError::ConsentExpired => Problem::new(
            409,
            "consent-expired",
            "Consent expired",
            "The bank reports that the consent has expired; renew the connection.",
        ),
        BankError::ConsentInvalid { .. } => Problem::new(
            409,
            "consent-invalid",
            "Consent not usable",
            "The bank does not accept the consent (it may have been revoked or never \
             authorised); connect the bank again.",
        ),
        BankError::AccessExceeded { retry_after } => {
            let wait = match retry_after {
                Some(delay) => format!("retry after {} seconds", delay.as_secs().max(1)),
                None => "try again later".to_owned(),
            };
            Problem::new(
                429,
                "bank-access-exceeded",
                "Too Many Requests",
                format!("The bank's access limit is exceeded; {wait}."),
            )
        }
        BankError::Unavailable { retry_after, .. } => {
            let wait = match retry_after {
                Some(delay) => format!("retry after {} seconds", delay.as_secs().max(1)),
                None => "try again later".to_owned(),
            };
            Problem::new(
                503,
                "bank-unavailable",
                "Bank unavailable",
                format!("The bank is not available right now; {wait}."),
            )
        }
        BankError::Timeout(_) => Problem::new(
            503,
            "bank-unavailable",
            "Bank unavailable",
            "The bank did not answer in time; try again later.",
        ),
        BankError::FormatError { .. } | BankError::Rejected { .. } => Problem::new(
            502,
            "bank-rejected",
            "Bank refused the request",
            format!("The bank refused the request ({code})."),
        ),
        BankError::ResourceUnknown { .. } | BankError::Protocol(_) | BankError::Config(_) => {
            Problem::new(
                502,
                "bank-error",
                "Bank error",
                format!("The bank's answer could not be used ({code})."),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn validation_lists_every_field() {
        let problem = ServiceError::Validation(vec![
            FieldError {
                field: "bankId".into(),
                message: "unknown bank".into(),
            },
            FieldError {
                field: "validDays".into(),
                message: "must be between 1 and 180".into(),
            },
        ])
        .into_problem();
        assert_eq!(problem.status, 400);
        assert_eq!(problem.errors.len(), 2);
        assert_eq!(problem.errors[0].field, "bankId");
    }

    #[test]
    fn status_codes() {
        let status = |e: ServiceError| e.into_problem().status;
        assert_eq!(status(ServiceError::NotFound), 404);
        assert_eq!(status(ServiceError::Conflict("x".into())), 409);
        assert_eq!(status(BankError::ConsentExpired.into()), 409);
        assert_eq!(
            status(
                BankError::ConsentInvalid {
                    code: "CONSENT_UNKNOWN".into(),
                    message: "m".into()
                }
                .into()
            ),
            409
        );
        assert_eq!(
            status(
                BankError::AccessExceeded {
                    retry_after: Some(Duration::from_secs(30))
                }
                .into()
            ),
            429
        );
        assert_eq!(
            status(
                BankError::Unavailable {
                    status: Some(500),
                    retry_after: None
                }
                .into()
            ),
            503
        );
        assert_eq!(
            status(BankError::Timeout(Duration::from_secs(10)).into()),
            503
        );
        assert_eq!(
            status(
                BankError::FormatError {
                    code: "FORMAT_ERROR".into(),
                    message: "m".into()
                }
                .into()
            ),
            502
        );
        assert_eq!(status(BankError::Protocol("p".into()).into()), 502);
        assert_eq!(status(StoreError::Backend("b".into()).into()), 500);
        assert_eq!(
            status(StoreError::VersionConflict { expected: 3 }.into()),
            409
        );
    }

    #[test]
    fn retry_after_is_in_the_detail() {
        let problem = ServiceError::from(BankError::AccessExceeded {
            retry_after: Some(Duration::from_secs(120)),
        })
        .into_problem();
        assert!(problem.detail.contains("120 seconds"), "{}", problem.detail);
    }

    #[test]
    fn internals_do_not_leak() {
        let secret_bits = "arn:aws:dynamodb:eu-west-1:123:table/Consents user=bob";
        let problem = ServiceError::from(StoreError::Backend(secret_bits.into())).into_problem();
        assert!(!problem.detail.contains("dynamodb"), "{}", problem.detail);
        let problem = ServiceError::from(BankError::Rejected {
            status: 403,
            code: "CERTIFICATE_INVALID".into(),
            message: "client cert CN=acme serial 42".into(),
        })
        .into_problem();
        assert!(!problem.detail.contains("CN=acme"), "{}", problem.detail);
        let problem = ServiceError::from(BankError::ConsentInvalid {
            code: "CONSENT_INVALID".into(),
            message: "consent 1234-abc of PSU 998877".into(),
        })
        .into_problem();
        assert!(!problem.detail.contains("998877"), "{}", problem.detail);
    }
}
