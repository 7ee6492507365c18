//! The single error type of the domain layer.
//!
//! Every constructor and parser in [`crate::domain`] fails with a [`DomainError`].
//! Messages are meant for humans (API error bodies, logs) and never contain
//! secrets: an invalid IBAN is described by *what* is wrong, not echoed back.
//! Fields that carry caller input (`code`, `input`, `got`) are cut to at most
//! [`MAX_ECHO_CHARS`] characters, and the messages escape control characters.

/// Longest piece of caller input that an error keeps (longer input is cut and
/// ends in `…`), so that a hostile multi-megabyte value does not end up in logs.
pub const MAX_ECHO_CHARS: usize = 64;

/// Why a domain value could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The text is not a valid IBAN; `reason` says why (e.g. "IBAN checksum is wrong").
    /// The IBAN itself is deliberately not part of the error.
    #[error("{reason}")]
    InvalidIban {
        /// What is wrong, without the IBAN itself.
        reason: String,
    },

    /// Not an ISO 4217 alphabetic code that we accept.
    #[error("unknown currency code '{}'", code.escape_debug())]
    UnknownCurrency {
        /// The rejected code, as given.
        code: String,
    },

    /// The amount has more significant decimals than the currency's minor unit.
    #[error("{currency} amounts have at most {max} decimals, got '{}'", got.escape_debug())]
    TooManyDecimals {
        /// ISO code of the currency.
        currency: String,
        /// The currency's minor units (ISO 4217 exponent).
        max: u32,
        /// The rejected amount.
        got: String,
    },

    /// Not a Berlin Group amount string (`^-?[0-9]{1,14}(\.[0-9]{1,3})?$`).
    #[error(
        "'{}' is not a valid amount: expected an optional '-', 1 to 14 digits and \
         optionally '.' followed by 1 to 3 digits, e.g. '12.30'",
        input.escape_debug()
    )]
    InvalidAmount {
        /// The rejected text.
        input: String,
    },

    /// An instructed amount must be greater than zero.
    #[error("amount must be greater than zero, got '{}'", got.escape_debug())]
    NonPositiveAmount {
        /// The rejected amount.
        got: String,
    },

    /// Two amounts in different currencies were combined.
    #[error("cannot combine amounts in {left} and {right}")]
    CurrencyMismatch {
        /// Currency of the left operand.
        left: String,
        /// Currency of the right operand.
        right: String,
    },

    /// The absolute value of the amount is 10^14 or more.
    #[error("amount '{}' is out of range: its absolute value must be below 10^14", got.escape_debug())]
    AmountOutOfRange {
        /// The rejected amount.
        got: String,
    },

    /// An identifier failed validation.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// Type name of the identifier, e.g. `"UserId"`.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// A status code that is not part of the enumeration.
    #[error("unknown {kind} '{}'", got.escape_debug())]
    UnknownStatus {
        /// Type name of the status, e.g. `"TransactionStatus"`.
        kind: &'static str,
        /// The rejected code.
        got: String,
    },
}

/// Copies caller input into an error, cut to [`MAX_ECHO_CHARS`] characters.
pub(crate) fn echo(input: &str) -> String {
    match input.char_indices().nth(MAX_ECHO_CHARS) {
        None => input.to_owned(),
        Some((cut, _)) => format!("{}…", &input[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_human_readable() {
        let cases = [
            (
                DomainError::InvalidIban {
                    reason: "IBAN checksum is wrong".into(),
                },
                "IBAN checksum is wrong",
            ),
            (
                DomainError::UnknownCurrency { code: "XYZ".into() },
                "unknown currency code 'XYZ'",
            ),
            (
                DomainError::TooManyDecimals {
                    currency: "EUR".into(),
                    max: 2,
                    got: "1.234".into(),
                },
                "EUR amounts have at most 2 decimals, got '1.234'",
            ),
            (
                DomainError::NonPositiveAmount { got: "0".into() },
                "amount must be greater than zero, got '0'",
            ),
            (
                DomainError::CurrencyMismatch {
                    left: "EUR".into(),
                    right: "USD".into(),
                },
                "cannot combine amounts in EUR and USD",
            ),
            (
                DomainError::AmountOutOfRange {
                    got: "100000000000000".into(),
                },
                "amount '100000000000000' is out of range: its absolute value must be below 10^14",
            ),
            (
                DomainError::InvalidId {
                    kind: "UserId",
                    reason: "must not be empty".into(),
                },
                "invalid UserId: must not be empty",
            ),
            (
                DomainError::UnknownStatus {
                    kind: "TransactionStatus",
                    got: "acsc".into(),
                },
                "unknown TransactionStatus 'acsc'",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn invalid_amount_message_explains_the_format() {
        let message = DomainError::InvalidAmount {
            input: "1e3".into(),
        }
        .to_string();
        assert!(
            message.starts_with("'1e3' is not a valid amount"),
            "{message}"
        );
        assert!(message.contains("12.30"), "{message}");
    }

    #[test]
    fn messages_escape_control_characters() {
        let error = DomainError::UnknownCurrency {
            code: "EU\nR".into(),
        };
        assert_eq!(error.to_string(), "unknown currency code 'EU\\nR'");
    }

    #[test]
    fn echo_cuts_long_input() {
        assert_eq!(echo("short"), "short");
        let exact = "a".repeat(MAX_ECHO_CHARS);
        assert_eq!(echo(&exact), exact);
        let long = "é".repeat(MAX_ECHO_CHARS + 10);
        let cut = echo(&long);
        assert_eq!(cut.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
