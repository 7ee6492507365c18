//! Payment transaction status (ISO 20022 codes as used by Berlin Group) and
//! the rule for moving a stored status forward.
//!
//! Banks report statuses by polling and callbacks, which can arrive late,
//! repeated or out of order. [`advance`] decides whether a reported status
//! replaces the stored one, so that a payment's status only moves forward and
//! a final status is never overwritten.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{DomainError, echo};

/// A Berlin Group / ISO 20022 payment `transactionStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TransactionStatus {
    /// `ACCC` AcceptedSettlementCompletedCreditor.
    Accc,
    /// `ACCP` AcceptedCustomerProfile.
    Accp,
    /// `ACSC` AcceptedSettlementCompleted.
    Acsc,
    /// `ACSP` AcceptedSettlementInProcess.
    Acsp,
    /// `ACTC` AcceptedTechnicalValidation.
    Actc,
    /// `ACWC` AcceptedWithChange.
    Acwc,
    /// `ACWP` AcceptedWithoutPosting.
    Acwp,
    /// `RCVD` Received.
    Rcvd,
    /// `PDNG` Pending.
    Pdng,
    /// `RJCT` Rejected.
    Rjct,
    /// `CANC` Cancelled.
    Canc,
    /// `ACFC` AcceptedFundsChecked.
    Acfc,
    /// `PATC` PartiallyAcceptedTechnicalCorrect.
    Patc,
    /// `PART` PartiallyAccepted.
    Part,
}

impl TransactionStatus {
    /// Every status, in declaration order.
    pub const ALL: [TransactionStatus; 14] = [
        TransactionStatus::Accc,
        TransactionStatus::Accp,
        TransactionStatus::Acsc,
        TransactionStatus::Acsp,
        TransactionStatus::Actc,
        TransactionStatus::Acwc,
        TransactionStatus::Acwp,
        TransactionStatus::Rcvd,
        TransactionStatus::Pdng,
        TransactionStatus::Rjct,
        TransactionStatus::Canc,
        TransactionStatus::Acfc,
        TransactionStatus::Patc,
        TransactionStatus::Part,
    ];

    /// The four-letter code, e.g. `"ACSC"`.
    #[must_use]
    pub const fn code(&self) -> &'static str {
        match self {
            TransactionStatus::Accc => "ACCC",
            TransactionStatus::Accp => "ACCP",
            TransactionStatus::Acsc => "ACSC",
            TransactionStatus::Acsp => "ACSP",
            TransactionStatus::Actc => "ACTC",
            TransactionStatus::Acwc => "ACWC",
            TransactionStatus::Acwp => "ACWP",
            TransactionStatus::Rcvd => "RCVD",
            TransactionStatus::Pdng => "PDNG",
            TransactionStatus::Rjct => "RJCT",
            TransactionStatus::Canc => "CANC",
            TransactionStatus::Acfc => "ACFC",
            TransactionStatus::Patc => "PATC",
            TransactionStatus::Part => "PART",
        }
    }

    /// Parses the exact upper-case code.
    ///
    /// # Errors
    /// [`DomainError::UnknownStatus`] with kind `"TransactionStatus"`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|status| status.code() == s)
            .ok_or_else(|| DomainError::UnknownStatus {
                kind: "TransactionStatus",
                got: echo(s),
            })
    }

    /// The ISO 20022 meaning.
    #[must_use]
    pub const fn description(&self) -> &'static str {
        match self {
            TransactionStatus::Accc => {
                "Accepted settlement completed: the creditor's account has been credited."
            }
            TransactionStatus::Accp => {
                "Accepted customer profile: technical validation and the customer profile \
                 check were successful."
            }
            TransactionStatus::Acsc => {
                "Accepted settlement completed: the debtor's account has been debited."
            }
            TransactionStatus::Acsp => {
                "Accepted settlement in process: all preceding checks were successful and \
                 the payment was accepted for execution."
            }
            TransactionStatus::Actc => {
                "Accepted technical validation: authentication and syntactical and semantic \
                 validation were successful."
            }
            TransactionStatus::Acwc => {
                "Accepted with change: the instruction is accepted, but a change will be \
                 made, such as the date or remittance not sent."
            }
            TransactionStatus::Acwp => {
                "Accepted without posting: the instruction is accepted without being posted \
                 to the creditor's account."
            }
            TransactionStatus::Rcvd => {
                "Received: the payment initiation has been received by the bank."
            }
            TransactionStatus::Pdng => "Pending: further checks and a status update will follow.",
            TransactionStatus::Rjct => "Rejected: the payment initiation has been rejected.",
            TransactionStatus::Canc => {
                "Cancelled: the payment initiation was cancelled before execution."
            }
            TransactionStatus::Acfc => {
                "Accepted funds checked: technical validation and the customer profile check \
                 were successful and the funds check was positive."
            }
            TransactionStatus::Patc => {
                "Partially accepted technical correct: the payment needs several \
                 authorisations and some, but not all, have been given."
            }
            TransactionStatus::Part => {
                "Partially accepted: some transactions of the bulk have been accepted, \
                 others have not yet reached an accepted status."
            }
        }
    }

    /// Whether the status is final: `ACSC`, `ACCC`, `RJCT`, `CANC`.
    #[must_use]
    pub const fn is_final(&self) -> bool {
        matches!(
            self,
            TransactionStatus::Acsc
                | TransactionStatus::Accc
                | TransactionStatus::Rjct
                | TransactionStatus::Canc
        )
    }

    /// Whether the payment failed: `RJCT` or `CANC`.
    #[must_use]
    pub const fn is_rejected(&self) -> bool {
        matches!(self, TransactionStatus::Rjct | TransactionStatus::Canc)
    }

    /// Position in the usual progress of a payment, used by [`advance`]:
    /// RCVD 0, PDNG 1, PATC 2, ACTC 3, ACFC 4, ACCP 5, ACWC/ACWP/PART 6,
    /// ACSP 7, ACSC 8, ACCC 9, RJCT/CANC 10. Every final status ranks above
    /// every non-final one.
    #[must_use]
    pub const fn rank(&self) -> u8 {
        match self {
            TransactionStatus::Rcvd => 0,
            TransactionStatus::Pdng => 1,
            TransactionStatus::Patc => 2,
            TransactionStatus::Actc => 3,
            TransactionStatus::Acfc => 4,
            TransactionStatus::Accp => 5,
            TransactionStatus::Acwc | TransactionStatus::Acwp | TransactionStatus::Part => 6,
            TransactionStatus::Acsp => 7,
            TransactionStatus::Acsc => 8,
            TransactionStatus::Accc => 9,
            TransactionStatus::Rjct | TransactionStatus::Canc => 10,
        }
    }
}

impl fmt::Display for TransactionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for TransactionStatus {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TransactionStatus::parse(s)
    }
}

/// What to do with a reported status, decided by [`advance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusChange {
    /// Store this status: it moves the payment forward.
    Advanced(TransactionStatus),
    /// The reported status is the one already stored.
    Unchanged,
    /// The report is older than (or contradicts) what we know: ignore it.
    Stale,
}

/// Decides whether `reported` replaces the stored `current` status.
///
/// In order:
/// 1. `reported == current` → [`StatusChange::Unchanged`];
/// 2. `current` is final → [`StatusChange::Stale`] (a final status is never overwritten,
///    not even by another final status such as `ACCC` after `ACSC`);
/// 3. `reported` is final → [`StatusChange::Advanced`];
/// 4. `reported.rank() > current.rank()` → [`StatusChange::Advanced`];
/// 5. otherwise (same or lower rank, e.g. a late `PDNG` after `ACTC`, or `ACWP`
///    after `ACWC`) → [`StatusChange::Stale`].
///
/// Applying the result repeatedly therefore never lowers the rank, and nothing
/// changes once a final status is stored.
#[must_use]
pub fn advance(current: TransactionStatus, reported: TransactionStatus) -> StatusChange {
    if reported == current {
        StatusChange::Unchanged
    } else if current.is_final() {
        StatusChange::Stale
    } else if reported.is_final() || reported.rank() > current.rank() {
        StatusChange::Advanced(reported)
    } else {
        StatusChange::Stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use StatusChange::{Advanced, Stale, Unchanged};
    use TransactionStatus as T;

    #[test]
    fn codes_parse_display_and_serde() {
        let codes = [
            "ACCC", "ACCP", "ACSC", "ACSP", "ACTC", "ACWC", "ACWP", "RCVD", "PDNG", "RJCT", "CANC",
            "ACFC", "PATC", "PART",
        ];
        for (status, code) in T::ALL.into_iter().zip(codes) {
            assert_eq!(status.code(), code);
            assert_eq!(status.to_string(), code);
            assert_eq!(T::parse(code), Ok(status));
            assert_eq!(code.parse::<T>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{code}\"")
            );
            assert_eq!(
                serde_json::from_str::<T>(&format!("\"{code}\"")).unwrap(),
                status
            );
            assert!(!status.description().is_empty());
        }
    }

    #[test]
    fn parse_rejects_unknown_codes() {
        for bad in [
            "acsc", "Acsc", "ACSC ", "", "ACSCX", "ACC", "PDNG\n", "RJCTD",
        ] {
            assert_eq!(
                T::parse(bad),
                Err(DomainError::UnknownStatus {
                    kind: "TransactionStatus",
                    got: bad.into()
                }),
                "{bad:?}"
            );
            assert!(serde_json::from_str::<T>(&format!("{bad:?}")).is_err());
        }
        assert_eq!(
            T::parse("acsc").unwrap_err().to_string(),
            "unknown TransactionStatus 'acsc'"
        );
    }

    #[test]
    fn descriptions_follow_iso_20022() {
        assert!(
            T::Acsc
                .description()
                .contains("debtor's account has been debited")
        );
        assert!(
            T::Accc
                .description()
                .contains("creditor's account has been credited")
        );
        assert!(T::Rjct.description().starts_with("Rejected"));
        assert!(T::Canc.description().starts_with("Cancelled"));
        assert!(T::Patc.description().contains("authorisations"));
    }

    #[test]
    fn finality_and_rejection() {
        let finals: Vec<_> = T::ALL.into_iter().filter(T::is_final).collect();
        assert_eq!(finals, [T::Accc, T::Acsc, T::Rjct, T::Canc]);
        let rejected: Vec<_> = T::ALL.into_iter().filter(T::is_rejected).collect();
        assert_eq!(rejected, [T::Rjct, T::Canc]);
    }

    #[test]
    fn ranks() {
        let expected = [
            (T::Rcvd, 0),
            (T::Pdng, 1),
            (T::Patc, 2),
            (T::Actc, 3),
            (T::Acfc, 4),
            (T::Accp, 5),
            (T::Acwc, 6),
            (T::Acwp, 6),
            (T::Part, 6),
            (T::Acsp, 7),
            (T::Acsc, 8),
            (T::Accc, 9),
            (T::Rjct, 10),
            (T::Canc, 10),
        ];
        assert_eq!(expected.len(), T::ALL.len());
        for (status, rank) in expected {
            assert_eq!(status.rank(), rank, "{status}");
        }
        let lowest_final = T::ALL
            .into_iter()
            .filter(T::is_final)
            .map(|s| s.rank())
            .min();
        let highest_open = T::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .map(|s| s.rank())
            .max();
        assert!(lowest_final > highest_open);
    }

    #[test]
    fn advance_rules() {
        // 1. same status
        for status in T::ALL {
            assert_eq!(advance(status, status), Unchanged);
        }
        // 2. a final status is never overwritten
        assert_eq!(advance(T::Acsc, T::Accc), Stale);
        assert_eq!(advance(T::Acsc, T::Rjct), Stale);
        assert_eq!(advance(T::Rjct, T::Acsc), Stale);
        assert_eq!(advance(T::Canc, T::Rcvd), Stale);
        assert_eq!(advance(T::Accc, T::Pdng), Stale);
        // 3. a final report always wins over an open status
        assert_eq!(advance(T::Rcvd, T::Rjct), Advanced(T::Rjct));
        assert_eq!(advance(T::Acsp, T::Acsc), Advanced(T::Acsc));
        assert_eq!(advance(T::Pdng, T::Canc), Advanced(T::Canc));
        // 4. forward progress
        assert_eq!(advance(T::Rcvd, T::Pdng), Advanced(T::Pdng));
        assert_eq!(advance(T::Rcvd, T::Acsp), Advanced(T::Acsp));
        assert_eq!(advance(T::Actc, T::Acfc), Advanced(T::Acfc));
        assert_eq!(advance(T::Accp, T::Part), Advanced(T::Part));
        // 5. late or sideways reports are stale
        assert_eq!(advance(T::Actc, T::Pdng), Stale);
        assert_eq!(advance(T::Acsp, T::Rcvd), Stale);
        assert_eq!(advance(T::Acwc, T::Acwp), Stale);
        assert_eq!(advance(T::Part, T::Acwc), Stale);
    }

    #[test]
    fn advance_on_every_pair() {
        for current in T::ALL {
            for reported in T::ALL {
                let change = advance(current, reported);
                let want = if current == reported {
                    Unchanged
                } else if current.is_final() {
                    Stale
                } else if reported.is_final() || reported.rank() > current.rank() {
                    Advanced(reported)
                } else {
                    Stale
                };
                assert_eq!(change, want, "{current} <- {reported}");
            }
        }
    }

    fn any_status() -> impl Strategy<Value = TransactionStatus> {
        prop::sample::select(T::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn applying_reports_never_goes_backwards(
            start in any_status(),
            reports in prop::collection::vec(any_status(), 0..40),
        ) {
            let mut current = start;
            let mut final_reached = current.is_final();
            for reported in reports {
                let before = current;
                match advance(current, reported) {
                    Advanced(next) => {
                        prop_assert_eq!(next, reported);
                        current = next;
                    }
                    Unchanged => prop_assert_eq!(reported, current),
                    Stale => {}
                }
                prop_assert!(current.rank() >= before.rank(), "{} -> {}", before, current);
                if final_reached {
                    prop_assert_eq!(current, before, "changed after final status");
                }
                final_reached |= current.is_final();
            }
        }
    }
}
