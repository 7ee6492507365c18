//! Consent status (as the bank reports it) and our consent lifecycle.
//!
//! [`ConsentStatus`] is the Berlin Group `consentStatus` exactly as it appears
//! on the wire. [`ConsentState`] is our own lifecycle, which adds
//! [`ConsentState::Superseded`] (replaced by a newer consent) and names the
//! bank's `received` [`ConsentState::PendingAuthorization`]. State changes go
//! through [`ConsentState::apply`], a total, explicit transition table:
//! anything not listed there is a [`ConsentTransitionError`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{DomainError, echo};

/// The Berlin Group `consentStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConsentStatus {
    /// `received`: created, not yet authorised by the PSU.
    Received,
    /// `partiallyAuthorised`: some, but not all, required authorisations done.
    PartiallyAuthorised,
    /// `valid`: authorised and usable.
    Valid,
    /// `rejected`: the PSU or bank refused it.
    Rejected,
    /// `revokedByPsu`: the PSU revoked it at the bank.
    RevokedByPsu,
    /// `expired`: past its `validUntil`.
    Expired,
    /// `terminatedByTpp`: we (the TPP) deleted it.
    TerminatedByTpp,
}

impl ConsentStatus {
    /// Every status, in declaration order.
    pub const ALL: [ConsentStatus; 7] = [
        ConsentStatus::Received,
        ConsentStatus::PartiallyAuthorised,
        ConsentStatus::Valid,
        ConsentStatus::Rejected,
        ConsentStatus::RevokedByPsu,
        ConsentStatus::Expired,
        ConsentStatus::TerminatedByTpp,
    ];

    /// The wire code, e.g. `"revokedByPsu"`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            ConsentStatus::Received => "received",
            ConsentStatus::PartiallyAuthorised => "partiallyAuthorised",
            ConsentStatus::Valid => "valid",
            ConsentStatus::Rejected => "rejected",
            ConsentStatus::RevokedByPsu => "revokedByPsu",
            ConsentStatus::Expired => "expired",
            ConsentStatus::TerminatedByTpp => "terminatedByTpp",
        }
    }

    /// Parses the exact wire code (case sensitive).
    ///
    /// # Errors
    /// [`DomainError::UnknownStatus`] with kind `"ConsentStatus"`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| DomainError::UnknownStatus {
                kind: "ConsentStatus",
                got: echo(s),
            })
    }

    /// Whether the bank will never change this status again
    /// (`rejected`, `revokedByPsu`, `expired`, `terminatedByTpp`).
    #[must_use]
    pub const fn is_final(&self) -> bool {
        match self {
            ConsentStatus::Received | ConsentStatus::PartiallyAuthorised | ConsentStatus::Valid => {
                false
            }
            ConsentStatus::Rejected
            | ConsentStatus::RevokedByPsu
            | ConsentStatus::Expired
            | ConsentStatus::TerminatedByTpp => true,
        }
    }
}

impl fmt::Display for ConsentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConsentStatus {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConsentStatus::parse(s)
    }
}

/// Our lifecycle state of a consent (stored, snake_case on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentState {
    /// Created at the bank, waiting for the PSU (bank status `received`).
    PendingAuthorization,
    /// Some but not all authorisations done.
    PartiallyAuthorised,
    /// Authorised: the only usable state.
    Valid,
    /// Refused by the PSU or the bank.
    Rejected,
    /// Revoked by the PSU at the bank.
    RevokedByPsu,
    /// Past its `validUntil`.
    Expired,
    /// Deleted by us.
    TerminatedByTpp,
    /// Replaced by a newer consent of the same user and bank.
    Superseded,
}

impl ConsentState {
    /// Every state, in declaration order.
    pub const ALL: [ConsentState; 8] = [
        ConsentState::PendingAuthorization,
        ConsentState::PartiallyAuthorised,
        ConsentState::Valid,
        ConsentState::Rejected,
        ConsentState::RevokedByPsu,
        ConsentState::Expired,
        ConsentState::TerminatedByTpp,
        ConsentState::Superseded,
    ];

    /// The stored code, e.g. `"pending_authorization"`.
    #[must_use]
    pub const fn as_str(&self) -> &'static str {
        match self {
            ConsentState::PendingAuthorization => "pending_authorization",
            ConsentState::PartiallyAuthorised => "partially_authorised",
            ConsentState::Valid => "valid",
            ConsentState::Rejected => "rejected",
            ConsentState::RevokedByPsu => "revoked_by_psu",
            ConsentState::Expired => "expired",
            ConsentState::TerminatedByTpp => "terminated_by_tpp",
            ConsentState::Superseded => "superseded",
        }
    }

    /// Parses the stored code (exact, snake_case).
    ///
    /// # Errors
    /// [`DomainError::UnknownStatus`] with kind `"ConsentState"`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| DomainError::UnknownStatus {
                kind: "ConsentState",
                got: echo(s),
            })
    }

    /// Whether the consent is over: everything except
    /// `PendingAuthorization`, `PartiallyAuthorised` and `Valid`.
    #[must_use]
    pub const fn is_final(&self) -> bool {
        match self {
            ConsentState::PendingAuthorization
            | ConsentState::PartiallyAuthorised
            | ConsentState::Valid => false,
            ConsentState::Rejected
            | ConsentState::RevokedByPsu
            | ConsentState::Expired
            | ConsentState::TerminatedByTpp
            | ConsentState::Superseded => true,
        }
    }

    /// Whether the consent may be used for account access (only `Valid`).
    #[must_use]
    pub const fn is_usable(&self) -> bool {
        matches!(self, ConsentState::Valid)
    }

    /// The state that corresponds to a bank status (`received` → `PendingAuthorization`).
    #[must_use]
    pub const fn from_bank(status: ConsentStatus) -> ConsentState {
        match status {
            ConsentStatus::Received => ConsentState::PendingAuthorization,
            ConsentStatus::PartiallyAuthorised => ConsentState::PartiallyAuthorised,
            ConsentStatus::Valid => ConsentState::Valid,
            ConsentStatus::Rejected => ConsentState::Rejected,
            ConsentStatus::RevokedByPsu => ConsentState::RevokedByPsu,
            ConsentStatus::Expired => ConsentState::Expired,
            ConsentStatus::TerminatedByTpp => ConsentState::TerminatedByTpp,
        }
    }

    /// Applies an event. Every allowed transition is listed below; everything
    /// else is an error and the caller keeps the current state.
    ///
    /// | From | Event | To |
    /// |------|-------|----|
    /// | PendingAuthorization | bank `received` | PendingAuthorization |
    /// | PendingAuthorization | bank `partiallyAuthorised` / `valid` / `rejected` / `expired` | same-named state |
    /// | PendingAuthorization | `TerminatedByTpp` | TerminatedByTpp |
    /// | PartiallyAuthorised | bank `partiallyAuthorised` / `valid` / `rejected` / `expired` | same-named state |
    /// | PartiallyAuthorised | `TerminatedByTpp` | TerminatedByTpp |
    /// | Valid | bank `valid` | Valid |
    /// | Valid | bank `expired`, `ValidUntilPassed` | Expired |
    /// | Valid | bank `revokedByPsu` | RevokedByPsu |
    /// | Valid | bank `terminatedByTpp`, `TerminatedByTpp` | TerminatedByTpp |
    /// | Valid | `Superseded` | Superseded |
    /// | final state | an event that leads to that same state | unchanged (idempotent) |
    ///
    /// # Errors
    /// [`ConsentTransitionError`] for every other combination.
    pub fn apply(self, event: ConsentEvent) -> Result<ConsentState, ConsentTransitionError> {
        use ConsentEvent as E;
        use ConsentState as S;
        use ConsentStatus as B;

        match (self, event) {
            // Waiting for the PSU.
            (S::PendingAuthorization, E::BankReported(B::Received)) => Ok(S::PendingAuthorization),
            (S::PendingAuthorization, E::BankReported(B::PartiallyAuthorised)) => {
                Ok(S::PartiallyAuthorised)
            }
            (S::PendingAuthorization, E::BankReported(B::Valid)) => Ok(S::Valid),
            (S::PendingAuthorization, E::BankReported(B::Rejected)) => Ok(S::Rejected),
            (S::PendingAuthorization, E::BankReported(B::Expired)) => Ok(S::Expired),
            (S::PendingAuthorization, E::TerminatedByTpp) => Ok(S::TerminatedByTpp),

            // Some authorisations done.
            (S::PartiallyAuthorised, E::BankReported(B::PartiallyAuthorised)) => {
                Ok(S::PartiallyAuthorised)
            }
            (S::PartiallyAuthorised, E::BankReported(B::Valid)) => Ok(S::Valid),
            (S::PartiallyAuthorised, E::BankReported(B::Rejected)) => Ok(S::Rejected),
            (S::PartiallyAuthorised, E::BankReported(B::Expired)) => Ok(S::Expired),
            (S::PartiallyAuthorised, E::TerminatedByTpp) => Ok(S::TerminatedByTpp),

            // Usable.
            (S::Valid, E::BankReported(B::Valid)) => Ok(S::Valid),
            (S::Valid, E::BankReported(B::Expired)) => Ok(S::Expired),
            (S::Valid, E::ValidUntilPassed) => Ok(S::Expired),
            (S::Valid, E::BankReported(B::RevokedByPsu)) => Ok(S::RevokedByPsu),
            (S::Valid, E::BankReported(B::TerminatedByTpp)) => Ok(S::TerminatedByTpp),
            (S::Valid, E::TerminatedByTpp) => Ok(S::TerminatedByTpp),
            (S::Valid, E::Superseded) => Ok(S::Superseded),

            // Final states only accept repeats of what got them there.
            (S::Rejected, E::BankReported(B::Rejected)) => Ok(S::Rejected),
            (S::RevokedByPsu, E::BankReported(B::RevokedByPsu)) => Ok(S::RevokedByPsu),
            (S::Expired, E::BankReported(B::Expired)) => Ok(S::Expired),
            (S::Expired, E::ValidUntilPassed) => Ok(S::Expired),
            (S::TerminatedByTpp, E::BankReported(B::TerminatedByTpp)) => Ok(S::TerminatedByTpp),
            (S::TerminatedByTpp, E::TerminatedByTpp) => Ok(S::TerminatedByTpp),
            (S::Superseded, E::Superseded) => Ok(S::Superseded),

            // Everything else is refused.
            (from, event) => Err(ConsentTransitionError { from, event }),
        }
    }
}

impl fmt::Display for ConsentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConsentState {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConsentState::parse(s)
    }
}

/// Something that happened to a consent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsentEvent {
    /// The bank reported this `consentStatus` (status poll or callback).
    BankReported(ConsentStatus),
    /// Our clock passed the consent's `validUntil`.
    ValidUntilPassed,
    /// We deleted the consent at the bank.
    TerminatedByTpp,
    /// A newer consent for the same user and bank became valid.
    Superseded,
}

impl fmt::Display for ConsentEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsentEvent::BankReported(status) => write!(f, "bank reported {status}"),
            ConsentEvent::ValidUntilPassed => f.write_str("validUntil passed"),
            ConsentEvent::TerminatedByTpp => f.write_str("terminated by TPP"),
            ConsentEvent::Superseded => f.write_str("superseded"),
        }
    }
}

/// A refused consent transition; the consent keeps `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("consent in state {from} cannot take event {event}")]
pub struct ConsentTransitionError {
    /// The state the consent was (and stays) in.
    pub from: ConsentState,
    /// The refused event.
    pub event: ConsentEvent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use ConsentEvent as E;
    use ConsentState as S;
    use ConsentStatus as B;

    fn all_events() -> Vec<ConsentEvent> {
        let mut events: Vec<_> = ConsentStatus::ALL
            .into_iter()
            .map(E::BankReported)
            .collect();
        events.extend([E::ValidUntilPassed, E::TerminatedByTpp, E::Superseded]);
        events
    }

    /// The allowed transitions, written out independently of `apply`.
    const ALLOWED: &[(ConsentState, ConsentEvent, ConsentState)] = &[
        (
            S::PendingAuthorization,
            E::BankReported(B::Received),
            S::PendingAuthorization,
        ),
        (
            S::PendingAuthorization,
            E::BankReported(B::PartiallyAuthorised),
            S::PartiallyAuthorised,
        ),
        (S::PendingAuthorization, E::BankReported(B::Valid), S::Valid),
        (
            S::PendingAuthorization,
            E::BankReported(B::Rejected),
            S::Rejected,
        ),
        (
            S::PendingAuthorization,
            E::BankReported(B::Expired),
            S::Expired,
        ),
        (
            S::PendingAuthorization,
            E::TerminatedByTpp,
            S::TerminatedByTpp,
        ),
        (
            S::PartiallyAuthorised,
            E::BankReported(B::PartiallyAuthorised),
            S::PartiallyAuthorised,
        ),
        (S::PartiallyAuthorised, E::BankReported(B::Valid), S::Valid),
        (
            S::PartiallyAuthorised,
            E::BankReported(B::Rejected),
            S::Rejected,
        ),
        (
            S::PartiallyAuthorised,
            E::BankReported(B::Expired),
            S::Expired,
        ),
        (
            S::PartiallyAuthorised,
            E::TerminatedByTpp,
            S::TerminatedByTpp,
        ),
        (S::Valid, E::BankReported(B::Valid), S::Valid),
        (S::Valid, E::BankReported(B::Expired), S::Expired),
        (S::Valid, E::ValidUntilPassed, S::Expired),
        (S::Valid, E::BankReported(B::RevokedByPsu), S::RevokedByPsu),
        (
            S::Valid,
            E::BankReported(B::TerminatedByTpp),
            S::TerminatedByTpp,
        ),
        (S::Valid, E::TerminatedByTpp, S::TerminatedByTpp),
        (S::Valid, E::Superseded, S::Superseded),
        (S::Rejected, E::BankReported(B::Rejected), S::Rejected),
        (
            S::RevokedByPsu,
            E::BankReported(B::RevokedByPsu),
            S::RevokedByPsu,
        ),
        (S::Expired, E::BankReported(B::Expired), S::Expired),
        (S::Expired, E::ValidUntilPassed, S::Expired),
        (
            S::TerminatedByTpp,
            E::BankReported(B::TerminatedByTpp),
            S::TerminatedByTpp,
        ),
        (S::TerminatedByTpp, E::TerminatedByTpp, S::TerminatedByTpp),
        (S::Superseded, E::Superseded, S::Superseded),
    ];

    fn expected(from: ConsentState, event: ConsentEvent) -> Option<ConsentState> {
        ALLOWED
            .iter()
            .find(|(f, e, _)| *f == from && *e == event)
            .map(|(_, _, to)| *to)
    }

    #[test]
    fn every_pair_follows_the_table() {
        let mut allowed = 0;
        for from in ConsentState::ALL {
            for event in all_events() {
                match (from.apply(event), expected(from, event)) {
                    (Ok(to), Some(want)) => {
                        assert_eq!(to, want, "{from} + {event}");
                        allowed += 1;
                    }
                    (Err(error), None) => {
                        assert_eq!(error, ConsentTransitionError { from, event });
                    }
                    (got, want) => panic!("{from} + {event}: got {got:?}, table says {want:?}"),
                }
            }
        }
        assert_eq!(allowed, ALLOWED.len());
        assert_eq!(ConsentState::ALL.len() * all_events().len(), 80);
    }

    #[test]
    fn final_states_never_become_something_else() {
        for from in ConsentState::ALL.into_iter().filter(ConsentState::is_final) {
            for event in all_events() {
                if let Ok(to) = from.apply(event) {
                    assert_eq!(to, from, "{from} + {event}");
                }
            }
        }
    }

    #[test]
    fn transition_error_message() {
        let error = S::Valid.apply(E::BankReported(B::Received)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "consent in state valid cannot take event bank reported received"
        );
        assert_eq!(
            S::Rejected
                .apply(E::ValidUntilPassed)
                .unwrap_err()
                .to_string(),
            "consent in state rejected cannot take event validUntil passed"
        );
        assert_eq!(
            S::Superseded
                .apply(E::TerminatedByTpp)
                .unwrap_err()
                .to_string(),
            "consent in state superseded cannot take event terminated by TPP"
        );
        assert_eq!(
            S::PendingAuthorization
                .apply(E::Superseded)
                .unwrap_err()
                .to_string(),
            "consent in state pending_authorization cannot take event superseded"
        );
    }

    #[test]
    fn status_codes_and_serde() {
        let codes = [
            "received",
            "partiallyAuthorised",
            "valid",
            "rejected",
            "revokedByPsu",
            "expired",
            "terminatedByTpp",
        ];
        for (status, code) in ConsentStatus::ALL.into_iter().zip(codes) {
            assert_eq!(status.as_str(), code);
            assert_eq!(status.to_string(), code);
            assert_eq!(ConsentStatus::parse(code), Ok(status));
            assert_eq!(code.parse::<ConsentStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{code}\"")
            );
            assert_eq!(
                serde_json::from_str::<ConsentStatus>(&format!("\"{code}\"")).unwrap(),
                status
            );
        }
        for bad in [
            "Valid",
            "VALID",
            "revokedByPSU",
            "terminated_by_tpp",
            "",
            " valid",
        ] {
            assert_eq!(
                ConsentStatus::parse(bad),
                Err(DomainError::UnknownStatus {
                    kind: "ConsentStatus",
                    got: bad.into()
                })
            );
            assert!(serde_json::from_str::<ConsentStatus>(&format!("\"{bad}\"")).is_err());
        }
    }

    #[test]
    fn status_finality() {
        let finals: Vec<_> = ConsentStatus::ALL
            .into_iter()
            .filter(ConsentStatus::is_final)
            .collect();
        assert_eq!(
            finals,
            [B::Rejected, B::RevokedByPsu, B::Expired, B::TerminatedByTpp]
        );
    }

    #[test]
    fn state_codes_and_serde() {
        let codes = [
            "pending_authorization",
            "partially_authorised",
            "valid",
            "rejected",
            "revoked_by_psu",
            "expired",
            "terminated_by_tpp",
            "superseded",
        ];
        for (state, code) in ConsentState::ALL.into_iter().zip(codes) {
            assert_eq!(state.as_str(), code);
            assert_eq!(state.to_string(), code);
            assert_eq!(ConsentState::parse(code), Ok(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{code}\"")
            );
            assert_eq!(
                serde_json::from_str::<ConsentState>(&format!("\"{code}\"")).unwrap(),
                state
            );
        }
        assert_eq!(
            ConsentState::parse("pendingAuthorization"),
            Err(DomainError::UnknownStatus {
                kind: "ConsentState",
                got: "pendingAuthorization".into()
            })
        );
    }

    #[test]
    fn state_predicates() {
        for state in ConsentState::ALL {
            let open = matches!(
                state,
                S::PendingAuthorization | S::PartiallyAuthorised | S::Valid
            );
            assert_eq!(state.is_final(), !open, "{state}");
            assert_eq!(state.is_usable(), state == S::Valid, "{state}");
        }
    }

    #[test]
    fn from_bank_maps_every_status() {
        let mapped: Vec<_> = ConsentStatus::ALL
            .into_iter()
            .map(ConsentState::from_bank)
            .collect();
        assert_eq!(
            mapped,
            [
                S::PendingAuthorization,
                S::PartiallyAuthorised,
                S::Valid,
                S::Rejected,
                S::RevokedByPsu,
                S::Expired,
                S::TerminatedByTpp,
            ]
        );
        for status in ConsentStatus::ALL {
            assert_eq!(
                ConsentState::from_bank(status).is_final(),
                status.is_final()
            );
        }
    }

    fn any_event() -> impl Strategy<Value = ConsentEvent> {
        prop::sample::select(all_events())
    }

    proptest! {
        #[test]
        fn random_event_sequences_follow_the_table(
            events in prop::collection::vec(any_event(), 0..30),
        ) {
            let mut state = S::PendingAuthorization;
            for event in events {
                match state.apply(event) {
                    Ok(next) => {
                        prop_assert_eq!(Some(next), expected(state, event));
                        if state.is_final() {
                            prop_assert_eq!(next, state);
                        }
                        state = next;
                    }
                    Err(error) => {
                        prop_assert_eq!(expected(state, event), None);
                        prop_assert_eq!(error.from, state);
                        prop_assert_eq!(error.event, event);
                    }
                }
            }
        }
    }
}
