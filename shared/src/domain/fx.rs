//! Currency conversion with reference rates quoted against the euro (the ECB's way).
//!
//! A [`RateTable`] holds, for one reference date, how many units of each currency buy
//! one euro (`USD 1.0823` means 1 EUR = 1.0823 USD). EUR itself is always 1.
//!
//! Decisions:
//!
//! * **Cross rates go through EUR**, as the ECB publishes no others: `from → to` is
//!   `rate(to) / rate(from)` (USD → GBP = GBP per EUR ÷ USD per EUR).
//! * **One rounding, at the end.** [`RateTable::convert`] computes
//!   `amount × rate(to) ÷ rate(from)` in [`Decimal`] (28 significant digits; the
//!   multiplication is exact for amounts and rates of realistic size) and rounds the
//!   result once to the target currency's minor units (0 for JPY, 3 for BHD). Rounding
//!   to cents on the way through EUR would be wrong by a cent now and then (50.01 USD →
//!   39.60 GBP directly, but 39.61 GBP via 46.21 EUR).
//! * **Midpoints round away from zero** (`0.125 → 0.13`, `-0.125 → -0.13`, `80.5 JPY →
//!   81`): the rule of the euro conversion regulation (EC 1103/97, art. 5) and of
//!   [`Money::round_from`], so one amount never rounds two ways in this code base.
//!   Banker's rounding would only pay off when many rounded values are summed; totals
//!   here are sums of the lines the user sees (see [`RateTable::total_in`]).
//! * **Checked all the way**: a missing rate is [`FxError::MissingRate`] (never a rate of
//!   zero), an arithmetic overflow or a result of 10^14 or more is
//!   [`FxError::OutOfRange`] (the result goes through [`Money::new`], not the unbounded
//!   [`Money::round_from`]). Nothing here panics.
//!
//! [`FxError`] also carries the failures of a rate source (`Feed`, `Unavailable`,
//! `Config`), so the port [`crate::fx::RateSource`] and this module share one error type.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use super::error::DomainError;
use super::money::{Currency, Money};

/// The rounding of every conversion result (see the module documentation).
pub const FX_ROUNDING: RoundingStrategy = RoundingStrategy::MidpointAwayFromZero;

/// Why a rate table could not be built or used, or a rate source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FxError {
    /// The table has no rate for this currency.
    #[error("no exchange rate for {currency}")]
    MissingRate {
        /// The currency without a rate.
        currency: Currency,
    },

    /// A rate is zero, negative, or (for EUR) not exactly 1.
    #[error("invalid exchange rate for {currency}: {reason}")]
    InvalidRate {
        /// ISO code of the currency.
        currency: Currency,
        /// What is wrong, e.g. "must be greater than zero, got 0".
        reason: String,
    },

    /// The same currency was given twice.
    #[error("exchange rate for {currency} given twice")]
    DuplicateRate {
        /// ISO code of the currency.
        currency: Currency,
    },

    /// The result does not fit: arithmetic overflow, or an absolute value of 10^14 or
    /// more in the target currency.
    #[error("converting {amount} to {to} is out of range")]
    OutOfRange {
        /// The amount being converted (or summed), rendered.
        amount: String,
        /// The target currency.
        to: Currency,
    },

    /// An amount in another currency was added to a total.
    #[error("cannot add an amount in {got} to a total in {expected}")]
    CurrencyMismatch {
        /// The currency of the total.
        expected: Currency,
        /// The currency of the offending amount.
        got: Currency,
    },

    /// The rate feed answered, but not with a usable rate table (malformed XML, a missing
    /// date, an unparseable or non-positive rate, rates too old).
    #[error("exchange rate feed: {0}")]
    Feed(String),

    /// The rate feed could not be reached (connection, timeout, HTTP error status).
    #[error("exchange rate feed unavailable: {0}")]
    Unavailable(String),

    /// The rate source is misconfigured (bad URL or setting).
    #[error("exchange rate source configuration: {0}")]
    Config(String),
}

/// Reference rates of one day: units of each currency per 1 EUR.
///
/// Built only through [`RateTable::new`], so every rate is greater than zero and EUR is 1.
#[derive(Clone, PartialEq, Eq)]
pub struct RateTable {
    as_of: NaiveDate,
    /// By ISO code, so that iteration and `Debug` are in a stable order. EUR is not stored.
    rates: BTreeMap<&'static str, (Currency, Decimal)>,
}

impl fmt::Debug for RateTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateTable")
            .field("as_of", &self.as_of)
            .field(
                "rates",
                &self
                    .rates
                    .iter()
                    .map(|(code, (_, rate))| (*code, rate.to_string()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The result of one conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Converted {
    /// The converted amount, in the target currency, rounded once to its minor units.
    pub amount: Money,
    /// The effective `from → to` rate: units of the target currency per unit of the
    /// source currency (1 for the same currency). Informational: the amount was computed
    /// from the two EUR rates directly, so `source × rate` can differ in the 28th digit.
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    /// Reference date of the rates used.
    pub as_of: NaiveDate,
}

impl RateTable {
    /// Builds a table from `(currency, units per 1 EUR)` pairs.
    ///
    /// EUR may be listed only with the rate 1 (it is implied anyway).
    ///
    /// # Errors
    /// [`FxError::InvalidRate`] for a rate that is not greater than zero (or EUR ≠ 1),
    /// [`FxError::DuplicateRate`] for a currency listed twice.
    pub fn new(
        as_of: NaiveDate,
        rates: impl IntoIterator<Item = (Currency, Decimal)>,
    ) -> Result<RateTable, FxError> {
        let mut table = BTreeMap::new();
        let mut eur_seen = false;
        for (currency, rate) in rates {
            if rate <= Decimal::ZERO {
                return Err(FxError::InvalidRate {
                    currency,
                    reason: format!("must be greater than zero, got {rate}"),
                });
            }
            if currency == Currency::EUR {
                if rate != Decimal::ONE {
                    return Err(FxError::InvalidRate {
                        currency,
                        reason: format!("EUR per EUR must be 1, got {rate}"),
                    });
                }
                if std::mem::replace(&mut eur_seen, true) {
                    return Err(FxError::DuplicateRate { currency });
                }
                continue;
            }
            if table.insert(currency.code(), (currency, rate)).is_some() {
                return Err(FxError::DuplicateRate { currency });
            }
        }
        Ok(RateTable {
            as_of,
            rates: table,
        })
    }

    /// The reference date of the rates.
    #[must_use]
    pub fn as_of(&self) -> NaiveDate {
        self.as_of
    }

    /// Units of `currency` per 1 EUR (1 for EUR), if the table has it.
    #[must_use]
    pub fn rate(&self, currency: Currency) -> Option<Decimal> {
        if currency == Currency::EUR {
            return Some(Decimal::ONE);
        }
        self.rates.get(currency.code()).map(|(_, rate)| *rate)
    }

    /// The currencies with a rate, EUR first, then by ISO code.
    pub fn currencies(&self) -> impl Iterator<Item = Currency> + '_ {
        std::iter::once(Currency::EUR).chain(self.rates.values().map(|(currency, _)| *currency))
    }

    /// The effective rate `from → to` (units of `to` per unit of `from`), 28 digits.
    ///
    /// # Errors
    /// [`FxError::MissingRate`] if either currency has no rate.
    pub fn cross_rate(&self, from: Currency, to: Currency) -> Result<Decimal, FxError> {
        if from == to {
            return Ok(Decimal::ONE);
        }
        let (from_rate, to_rate) = self.pair(from, to)?;
        // Both rates are > 0; the quotient of two positive 96-bit decimals can still
        // overflow (a tiny `from` rate), so it stays checked.
        to_rate
            .checked_div(from_rate)
            .ok_or_else(|| FxError::OutOfRange {
                amount: format!("1 {from}"),
                to,
            })
    }

    /// Converts `amount` to `to`, rounding once to `to`'s minor units (see the module
    /// documentation). The same currency is the identity with rate 1.
    ///
    /// # Errors
    /// [`FxError::MissingRate`] if either currency has no rate; [`FxError::OutOfRange`]
    /// if the computation overflows or the result is 10^14 or more in absolute value.
    pub fn convert(&self, amount: &Money, to: Currency) -> Result<Converted, FxError> {
        let from = amount.currency();
        if from == to {
            return Ok(Converted {
                amount: *amount,
                rate: Decimal::ONE,
                as_of: self.as_of,
            });
        }
        let (from_rate, to_rate) = self.pair(from, to)?;
        let out_of_range = || FxError::OutOfRange {
            amount: amount.to_string(),
            to,
        };
        // Multiply first: exact for any in-range amount and any rate of up to ~12
        // significant digits; the one division then keeps 28 significant digits.
        let exact = amount
            .amount()
            .checked_mul(to_rate)
            .and_then(|product| product.checked_div(from_rate))
            .ok_or_else(out_of_range)?;
        let rounded = exact.round_dp_with_strategy(to.minor_units(), FX_ROUNDING);
        let money = Money::new(rounded, to).map_err(|_| out_of_range())?;
        let rate = self.cross_rate(from, to)?;
        Ok(Converted {
            amount: money,
            rate,
            as_of: self.as_of,
        })
    }

    /// Converts every amount to `to` (each rounded once, as [`RateTable::convert`]) and
    /// adds the converted amounts exactly, so the total is the sum of the lines a user
    /// sees. It can differ from converting the exact sum by at most half a minor unit
    /// per amount (plus half for the final rounding).
    ///
    /// # Errors
    /// The errors of [`RateTable::convert`] for the first amount that fails, and
    /// [`FxError::OutOfRange`] if the total reaches 10^14.
    pub fn total_in<'a>(
        &self,
        amounts: impl IntoIterator<Item = &'a Money>,
        to: Currency,
    ) -> Result<Money, FxError> {
        let mut total = Money::zero(to);
        for amount in amounts {
            let converted = self.convert(amount, to)?;
            total = add(&total, &converted.amount)?;
        }
        Ok(total)
    }

    fn pair(&self, from: Currency, to: Currency) -> Result<(Decimal, Decimal), FxError> {
        let from_rate = self
            .rate(from)
            .ok_or(FxError::MissingRate { currency: from })?;
        let to_rate = self.rate(to).ok_or(FxError::MissingRate { currency: to })?;
        Ok((from_rate, to_rate))
    }
}

/// Adds amounts that are all in `currency` exactly (decimal, no rounding), e.g. the
/// [`Converted::amount`]s of several balances.
///
/// # Errors
/// [`FxError::CurrencyMismatch`] for an amount in another currency,
/// [`FxError::OutOfRange`] if the sum reaches 10^14 in absolute value.
pub fn sum_in<'a>(
    currency: Currency,
    amounts: impl IntoIterator<Item = &'a Money>,
) -> Result<Money, FxError> {
    amounts
        .into_iter()
        .try_fold(Money::zero(currency), |total, amount| add(&total, amount))
}

fn add(total: &Money, amount: &Money) -> Result<Money, FxError> {
    total.checked_add(amount).map_err(|e| match e {
        DomainError::CurrencyMismatch { .. } => FxError::CurrencyMismatch {
            expected: total.currency(),
            got: amount.currency(),
        },
        _ => FxError::OutOfRange {
            amount: format!("{total} + {amount}"),
            to: total.currency(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn money(amount: &str, currency: Currency) -> Money {
        Money::parse(amount, currency).unwrap()
    }

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 3, 14).unwrap()
    }

    /// Rates as the ECB publishes them (plus BHD, which the ECB does not, for 3 decimals).
    fn table() -> RateTable {
        RateTable::new(
            date(),
            [
                (Currency::USD, dec("1.0823")),
                (Currency::GBP, dec("0.85710")),
                (Currency::JPY, dec("161.23")),
                (Currency::BHD, dec("0.40805")),
            ],
        )
        .unwrap()
    }

    fn convert(amount: &str, from: Currency, to: Currency) -> String {
        table()
            .convert(&money(amount, from), to)
            .unwrap()
            .amount
            .to_minor_string()
    }

    // ---- construction ------------------------------------------------------

    #[test]
    fn new_rejects_non_positive_rates() {
        for rate in ["0", "-1.0823", "0.0000"] {
            let error = RateTable::new(date(), [(Currency::USD, dec(rate))]).unwrap_err();
            assert!(
                matches!(error, FxError::InvalidRate { currency, .. } if currency == Currency::USD),
                "{rate}: {error}"
            );
        }
        let message = RateTable::new(date(), [(Currency::USD, dec("0"))])
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "invalid exchange rate for USD: must be greater than zero, got 0"
        );
    }

    #[test]
    fn new_rejects_duplicates_and_a_eur_rate_other_than_one() {
        assert_eq!(
            RateTable::new(
                date(),
                [(Currency::USD, dec("1.08")), (Currency::USD, dec("1.09"))]
            ),
            Err(FxError::DuplicateRate {
                currency: Currency::USD
            })
        );
        assert!(matches!(
            RateTable::new(date(), [(Currency::EUR, dec("1.01"))]),
            Err(FxError::InvalidRate { .. })
        ));
        let with_eur = RateTable::new(
            date(),
            [(Currency::EUR, dec("1.000")), (Currency::USD, dec("1.08"))],
        )
        .unwrap();
        assert_eq!(with_eur.rate(Currency::EUR), Some(Decimal::ONE));
        assert_eq!(
            with_eur.currencies().collect::<Vec<_>>(),
            [Currency::EUR, Currency::USD]
        );
    }

    #[test]
    fn table_exposes_date_rates_and_currencies() {
        let table = table();
        assert_eq!(table.as_of(), date());
        assert_eq!(table.rate(Currency::USD), Some(dec("1.0823")));
        assert_eq!(table.rate(Currency::EUR), Some(Decimal::ONE));
        assert_eq!(table.rate(Currency::CHF), None);
        let codes: Vec<_> = table.currencies().map(|c| c.code()).collect();
        assert_eq!(codes, ["EUR", "BHD", "GBP", "JPY", "USD"]);
    }

    // ---- conversions (expected values worked out by hand) -------------------

    #[test]
    fn eur_to_other_multiplies_by_the_published_rate() {
        // 100.00 × 1.0823 = 108.23 exactly.
        assert_eq!(convert("100", Currency::EUR, Currency::USD), "108.23");
        let converted = table()
            .convert(&money("100", Currency::EUR), Currency::USD)
            .unwrap();
        assert_eq!(converted.rate, dec("1.0823"));
        assert_eq!(converted.as_of, date());
        assert_eq!(converted.amount.currency(), Currency::USD);
    }

    #[test]
    fn other_to_eur_divides_by_the_published_rate() {
        // 100 / 1.0823 = 92.3958237…
        assert_eq!(convert("100", Currency::USD, Currency::EUR), "92.40");
        // -100 / 1.0823: the sign is kept.
        assert_eq!(convert("-100", Currency::USD, Currency::EUR), "-92.40");
    }

    #[test]
    fn cross_rates_go_through_eur_and_round_once() {
        // 100 × 0.85710 / 1.0823 = 85.710 / 1.0823 = 79.1924605…
        assert_eq!(convert("100", Currency::USD, Currency::GBP), "79.19");
        // 50.01 × 0.85710 = 42.863571; / 1.0823 = 39.6041494… → 39.60.
        // Rounding through EUR would give 50.01 / 1.0823 = 46.2071… → 46.21 EUR,
        // × 0.85710 = 39.606591 → 39.61: one cent off.
        assert_eq!(convert("50.01", Currency::USD, Currency::GBP), "39.60");
        // 1000 JPY × 1.0823 / 161.23 = 1082.3 / 161.23 = 6.71277…
        assert_eq!(convert("1000", Currency::JPY, Currency::USD), "6.71");
        let rate = table().cross_rate(Currency::USD, Currency::GBP).unwrap();
        // 0.85710 / 1.0823 = 0.791924605…
        assert!(rate > dec("0.7919246") && rate < dec("0.7919247"), "{rate}");
    }

    #[test]
    fn zero_decimal_currencies_round_to_whole_units() {
        // 12.34 × 161.23 = 1989.5782 → 1990; 10 × 161.23 = 1612.3 → 1612.
        assert_eq!(convert("12.34", Currency::EUR, Currency::JPY), "1990");
        assert_eq!(convert("10", Currency::EUR, Currency::JPY), "1612");
        let converted = table()
            .convert(&money("10", Currency::EUR), Currency::JPY)
            .unwrap();
        assert_eq!(converted.amount.amount().scale(), 0);
    }

    #[test]
    fn three_decimal_currencies_keep_three_decimals() {
        // 1.23 × 0.40805 = 0.5019015 → 0.502; 10 × 0.40805 = 4.0805 → 4.081 (midpoint).
        assert_eq!(convert("1.23", Currency::EUR, Currency::BHD), "0.502");
        assert_eq!(convert("10", Currency::EUR, Currency::BHD), "4.081");
    }

    #[test]
    fn midpoints_round_away_from_zero() {
        let table = RateTable::new(
            date(),
            [(Currency::USD, dec("1.25")), (Currency::JPY, dec("161"))],
        )
        .unwrap();
        let cases = [
            // 0.10 × 1.25 = 0.125: banker's rounding would give 0.12.
            ("0.10", Currency::EUR, Currency::USD, "0.13"),
            ("-0.10", Currency::EUR, Currency::USD, "-0.13"),
            // 0.50 × 161 = 80.5: banker's rounding would give 80.
            ("0.50", Currency::EUR, Currency::JPY, "81"),
            ("-0.50", Currency::EUR, Currency::JPY, "-81"),
            // 1.50 × 161 = 241.5: banker's rounding would give 242 too (control).
            ("1.50", Currency::EUR, Currency::JPY, "242"),
        ];
        for (amount, from, to, expected) in cases {
            let got = table.convert(&money(amount, from), to).unwrap().amount;
            assert_eq!(got.to_minor_string(), expected, "{amount} {from} → {to}");
        }
    }

    #[test]
    fn same_currency_is_the_identity_even_without_a_rate() {
        let chf = money("12.34", Currency::CHF);
        let converted = table().convert(&chf, Currency::CHF).unwrap();
        assert_eq!(converted.amount, chf);
        assert_eq!(converted.rate, Decimal::ONE);
        assert_eq!(converted.as_of, date());
        assert_eq!(
            table().cross_rate(Currency::CHF, Currency::CHF),
            Ok(Decimal::ONE)
        );
    }

    #[test]
    fn a_missing_rate_is_an_error_never_zero() {
        let chf = money("10", Currency::CHF);
        assert_eq!(
            table().convert(&chf, Currency::EUR),
            Err(FxError::MissingRate {
                currency: Currency::CHF
            })
        );
        assert_eq!(
            table().convert(&money("10", Currency::EUR), Currency::SEK),
            Err(FxError::MissingRate {
                currency: Currency::SEK
            })
        );
        assert_eq!(
            FxError::MissingRate {
                currency: Currency::SEK
            }
            .to_string(),
            "no exchange rate for SEK"
        );
    }

    #[test]
    fn results_of_ten_to_the_fourteen_or_more_are_errors() {
        let big = money("99999999999999.99", Currency::EUR);
        assert_eq!(
            table().convert(&big, Currency::JPY),
            Err(FxError::OutOfRange {
                amount: "99999999999999.99 EUR".into(),
                to: Currency::JPY
            })
        );
        // Extreme rates overflow Decimal itself: still an error, not a panic.
        let extreme = RateTable::new(
            date(),
            [
                (Currency::USD, Decimal::MAX),
                (Currency::JPY, Decimal::new(1, 28)),
            ],
        )
        .unwrap();
        assert!(matches!(
            extreme.convert(&big, Currency::USD),
            Err(FxError::OutOfRange { .. })
        ));
        assert!(matches!(
            extreme.convert(&money("1", Currency::JPY), Currency::USD),
            Err(FxError::OutOfRange { .. })
        ));
        assert!(matches!(
            extreme.cross_rate(Currency::JPY, Currency::USD),
            Err(FxError::OutOfRange { .. })
        ));
    }

    #[test]
    fn converted_serialises_amount_rate_and_date() {
        let converted = table()
            .convert(&money("100", Currency::EUR), Currency::USD)
            .unwrap();
        assert_eq!(
            serde_json::to_value(converted).unwrap(),
            serde_json::json!({
                "amount": {"amount": "108.23", "currency": "USD"},
                "rate": "1.0823",
                "asOf": "2025-03-14",
            })
        );
    }

    // ---- sums ----------------------------------------------------------------

    #[test]
    fn total_in_is_the_exact_sum_of_the_rounded_lines() {
        let amounts = [
            money("100", Currency::USD),  // 92.40 EUR
            money("1000", Currency::JPY), // 1000 / 161.23 = 6.2023… → 6.20 EUR
            money("10.50", Currency::EUR),
        ];
        let total = table().total_in(&amounts, Currency::EUR).unwrap();
        assert_eq!(total.to_minor_string(), "109.10");
        assert_eq!(total.currency(), Currency::EUR);
        assert_eq!(
            table().total_in(&[money("1", Currency::CHF)], Currency::EUR),
            Err(FxError::MissingRate {
                currency: Currency::CHF
            })
        );
        assert_eq!(
            table().total_in(&[], Currency::JPY),
            Ok(Money::zero(Currency::JPY))
        );
    }

    #[test]
    fn sum_in_adds_exactly_and_rejects_other_currencies() {
        let lines = [money("0.10", Currency::EUR), money("0.20", Currency::EUR)];
        assert_eq!(
            sum_in(Currency::EUR, &lines).unwrap().to_minor_string(),
            "0.30"
        );
        assert_eq!(
            sum_in(Currency::EUR, &[money("1", Currency::USD)]),
            Err(FxError::CurrencyMismatch {
                expected: Currency::EUR,
                got: Currency::USD
            })
        );
        let big = money("99999999999999.99", Currency::EUR);
        assert!(matches!(
            sum_in(Currency::EUR, &[big, money("0.01", Currency::EUR)]),
            Err(FxError::OutOfRange { .. })
        ));
    }

    // ---- properties ------------------------------------------------------------

    /// Currencies of different minor units with realistic ECB-style rates.
    fn currency_and_rate() -> impl Strategy<Value = (Currency, Decimal)> {
        (
            prop_oneof![
                Just(Currency::USD),
                Just(Currency::GBP),
                Just(Currency::JPY),
                Just(Currency::BHD),
                Just(Currency::SEK),
            ],
            // 0.00001 to 100 000.00000, 5 decimals as the ECB publishes at most.
            1_i64..10_000_000_000,
        )
            .prop_map(|(currency, units)| (currency, Decimal::new(units, 5)))
    }

    /// A EUR amount below ±10^7, so that sums of up to 12 of them converted at the rates
    /// above stay below 10^14.
    fn eur_amount() -> impl Strategy<Value = Money> {
        (-1_000_000_000_i64..1_000_000_000)
            .prop_map(|cents| Money::new(Decimal::new(cents, 2), Currency::EUR).unwrap())
    }

    fn minor_unit(currency: Currency) -> Decimal {
        Decimal::new(1, currency.minor_units())
    }

    proptest! {
        #[test]
        fn round_trip_through_another_currency_stays_within_its_precision(
            amount in eur_amount(),
            (currency, rate) in currency_and_rate(),
        ) {
            let table = RateTable::new(date(), [(currency, rate)]).unwrap();
            let there = table.convert(&amount, currency).unwrap();
            let back = table.convert(&there.amount, Currency::EUR).unwrap();
            // Rounding in X loses at most half of X's minor unit, worth (½ minor unit) / rate
            // in EUR; rounding back to cents adds at most half a cent.
            // Checked as error × 2 × rate ≤ unit(X) + cent × rate, which is exact (no division).
            let error = (back.amount.amount() - amount.amount()).abs();
            prop_assert!(
                error * Decimal::TWO * rate <= minor_unit(currency) + minor_unit(Currency::EUR) * rate,
                "{amount} → {} → {}: off by {error}", there.amount, back.amount
            );
        }

        #[test]
        fn conversion_never_panics_and_results_are_valid_money(
            units in any::<i64>(),
            from_index in 0_usize..4,
            from_rate_bits in (any::<u32>(), any::<u32>(), any::<u32>(), 0_u32..=28),
            to_rate_bits in (any::<u32>(), any::<u32>(), any::<u32>(), 0_u32..=28),
        ) {
            let rate = |(lo, mid, hi, scale): (u32, u32, u32, u32)| {
                let r = Decimal::from_parts(lo, mid, hi, false, scale);
                if r.is_zero() { Decimal::ONE } else { r }
            };
            let from = [Currency::JPY, Currency::USD, Currency::USD, Currency::BHD][from_index];
            let amount = Decimal::new(units % 100_000_000_000_000, from.minor_units());
            let Ok(amount) = Money::new(amount, from) else { return Ok(()) };
            let table = RateTable::new(
                date(),
                [(from, rate(from_rate_bits)), (Currency::GBP, rate(to_rate_bits))],
            ).unwrap();
            for to in [Currency::GBP, Currency::EUR, Currency::JPY] {
                match table.convert(&amount, to) {
                    Ok(converted) => {
                        prop_assert_eq!(converted.amount.currency(), to);
                        prop_assert_eq!(converted.amount.amount().scale(), to.minor_units());
                        prop_assert!(converted.amount.amount().abs() < Decimal::from(100_000_000_000_000_i64));
                    }
                    Err(FxError::OutOfRange { .. }) => {}
                    Err(FxError::MissingRate { currency }) => prop_assert_eq!(currency, Currency::JPY),
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }
        }

        #[test]
        fn conversion_preserves_the_sign(
            amount in eur_amount(),
            (currency, rate) in currency_and_rate(),
        ) {
            let table = RateTable::new(date(), [(currency, rate)]).unwrap();
            let converted = table.convert(&amount, currency).unwrap().amount;
            // A tiny amount may round to zero, but never to the other side of it.
            prop_assert!(!(amount.is_positive() && converted.is_negative()));
            prop_assert!(!(amount.is_negative() && converted.is_positive()));
            if amount.is_zero() {
                prop_assert!(converted.is_zero());
            }
            let back = table.convert(&amount.neg(), currency).unwrap().amount;
            prop_assert_eq!(back, converted.neg(), "rounding is symmetric around zero");
        }

        #[test]
        fn converting_a_sum_matches_the_sum_of_conversions(
            amounts in proptest::collection::vec(eur_amount(), 1..12),
            (currency, rate) in currency_and_rate(),
        ) {
            let table = RateTable::new(date(), [(currency, rate)]).unwrap();
            let exact_sum = sum_in(Currency::EUR, &amounts).unwrap();
            let of_sum = table.convert(&exact_sum, currency).unwrap().amount;
            let sum_of = table.total_in(&amounts, currency).unwrap();
            let lines: Vec<Money> = amounts
                .iter()
                .map(|a| table.convert(a, currency).unwrap().amount)
                .collect();
            prop_assert_eq!(sum_of, sum_in(currency, &lines).unwrap());
            // Each of the n + 1 roundings moves by at most half a minor unit, and both
            // sides are whole minor units: at most ⌊(n + 1) / 2⌋ minor units apart.
            let n = i64::try_from(amounts.len()).unwrap();
            let bound = minor_unit(currency) * Decimal::from((n + 1) / 2);
            let difference = (of_sum.amount() - sum_of.amount()).abs();
            prop_assert!(difference <= bound, "{of_sum} vs {sum_of}: {difference} > {bound}");
        }
    }
}
