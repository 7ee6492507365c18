//! Pure domain types and rules: no I/O, no clock, no AWS.
//!
//! * [`Money`] and [`Currency`]: exact decimal amounts with ISO 4217 minor
//!   units, (de)serialised as the Berlin Group `Amount` object.
//! * [`Iban`]: a validated IBAN whose `Display`/`Debug` are masked.
//! * Typed ids ([`UserId`], [`BankId`], [`ConsentId`], [`BankConsentId`],
//!   [`RequestId`], …), validated so that they are safe in URLs and keys.
//! * The consent lifecycle ([`ConsentStatus`] from the bank, our
//!   [`ConsentState`] and its transition table [`ConsentState::apply`]).
//! * Payment [`TransactionStatus`] and the forward-only rule [`advance`].
//!
//! Every fallible constructor returns a [`DomainError`]. Everything here is
//! re-exported at this level: use `shared::domain::Money`, not the submodules.

pub mod category;
pub mod consent;
pub mod error;
pub mod fx;
pub mod iban;
pub mod ids;
pub mod money;
pub mod payment;
pub mod polling;

pub use self::category::{Categoriser, Category, CategoryInput, Direction, RulesError};
pub use self::consent::{ConsentEvent, ConsentState, ConsentStatus, ConsentTransitionError};
pub use self::error::{DomainError, MAX_ECHO_CHARS};
pub use self::fx::{Converted, FxError, RateTable, sum_in};
pub use self::iban::Iban;
pub use self::ids::{
    AccountId, BankConsentId, BankId, BankPaymentId, BatchId, ConsentId, NotificationId, PaymentId,
    RequestId, UserId,
};
pub use self::money::{Currency, Money};
pub use self::payment::{StatusChange, TransactionStatus, advance};
