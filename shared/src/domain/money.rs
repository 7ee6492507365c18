//! Currencies and exact monetary amounts.
//!
//! Amounts are [`Decimal`]s (never binary floating point). A [`Money`] value
//! always satisfies the rules of a Berlin Group `Amount`:
//!
//! * no more significant decimals than the currency's ISO 4217 minor units
//!   (`1.230 EUR` is accepted and stored as `1.23`; `1.234 EUR` and `5.5 JPY` are not);
//! * absolute value below 10^14 (14 integer digits), except for the documented
//!   [`Money::round_from`];
//! * stored at exactly the currency's minor units, so `to_minor_string()` is
//!   `"12.30"`, never `"12.3"` or `"-0.00"`.
//!
//! On the wire, money is the Berlin Group `Amount` object
//! `{"amount":"12.30","currency":"EUR"}`; deserialising validates it fully.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{DomainError, echo};

/// Longest minor unit we accept: a Berlin Group amount has at most 3 decimals.
const MAX_MINOR_UNITS: u16 = 3;

/// Longest integer part of a Berlin Group amount.
const MAX_INTEGER_DIGITS: usize = 14;

/// An ISO 4217 currency that can appear in a Berlin Group amount.
///
/// Only currencies with a defined minor unit of 0 to 3 decimals are accepted.
/// This rejects the "special" codes without minor units (`XAU`, `XDR`, `XXX`, …)
/// and the two index units with 4 decimals (`CLF`, `UYW`), which a Berlin Group
/// amount (at most 3 decimals) cannot carry. Codes must be exact upper case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    /// Euro (2 decimals).
    pub const EUR: Currency = Currency(iso_currency::Currency::EUR);
    /// US dollar (2 decimals).
    pub const USD: Currency = Currency(iso_currency::Currency::USD);
    /// Pound sterling (2 decimals).
    pub const GBP: Currency = Currency(iso_currency::Currency::GBP);
    /// Swiss franc (2 decimals).
    pub const CHF: Currency = Currency(iso_currency::Currency::CHF);
    /// Swedish krona (2 decimals).
    pub const SEK: Currency = Currency(iso_currency::Currency::SEK);
    /// Polish złoty (2 decimals).
    pub const PLN: Currency = Currency(iso_currency::Currency::PLN);
    /// Japanese yen (0 decimals).
    pub const JPY: Currency = Currency(iso_currency::Currency::JPY);
    /// Bahraini dinar (3 decimals).
    pub const BHD: Currency = Currency(iso_currency::Currency::BHD);

    /// Parses an exact, upper-case ISO 4217 alphabetic code such as `"EUR"`.
    ///
    /// Nothing is trimmed and lower case is rejected.
    ///
    /// # Errors
    /// [`DomainError::UnknownCurrency`] for anything else, including currencies
    /// without a minor unit of 0 to 3 decimals (see the type's documentation).
    pub fn parse(code: &str) -> Result<Currency, DomainError> {
        let unknown = || DomainError::UnknownCurrency { code: echo(code) };
        // `from_code` is already case sensitive; being explicit keeps it so.
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(unknown());
        }
        let currency = iso_currency::Currency::from_code(code).ok_or_else(unknown)?;
        match currency.exponent() {
            Some(exponent) if exponent <= MAX_MINOR_UNITS => Ok(Currency(currency)),
            _ => Err(unknown()),
        }
    }

    /// The ISO 4217 alphabetic code, e.g. `"EUR"`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.0.code()
    }

    /// The ISO 4217 minor units (exponent): 2 for EUR, 0 for JPY, 3 for BHD.
    #[must_use]
    pub fn minor_units(&self) -> u32 {
        // Every `Currency` was checked to have an exponent of 0..=3.
        self.0.exponent().map_or(0, u32::from)
    }
}

impl FromStr for Currency {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// An exact amount of money in one currency.
///
/// See the [module documentation](self) for the invariants. Equality compares
/// the amount numerically and the currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "AmountWire", into = "AmountWire")]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

fn amount_limit() -> Decimal {
    Decimal::from(100_000_000_000_000_i64)
}

impl Money {
    /// Builds money from a decimal amount.
    ///
    /// Trailing zeros are ignored (`1.230 EUR` is `1.23 EUR`).
    ///
    /// # Errors
    /// * [`DomainError::TooManyDecimals`] if the amount has more significant
    ///   decimals than the currency's minor units (`1.234 EUR`, `5.5 JPY`);
    /// * [`DomainError::AmountOutOfRange`] if `|amount| >= 10^14`.
    pub fn new(amount: Decimal, currency: Currency) -> Result<Money, DomainError> {
        Self::checked(amount, currency, || amount.to_string())
    }

    /// Parses a Berlin Group amount string (`^-?[0-9]{1,14}(\.[0-9]{1,3})?$`)
    /// and applies the rules of [`Money::new`].
    ///
    /// Rejects `"+1"`, `"1e3"`, `" 1"`, `"1,00"`, `""`, `".5"` and `"1."`.
    ///
    /// # Errors
    /// [`DomainError::InvalidAmount`] if the text does not match the pattern,
    /// otherwise the errors of [`Money::new`].
    pub fn parse(amount: &str, currency: Currency) -> Result<Money, DomainError> {
        if !is_berlin_group_amount(amount) {
            return Err(DomainError::InvalidAmount {
                input: echo(amount),
            });
        }
        let value = Decimal::from_str_exact(amount).map_err(|_| DomainError::InvalidAmount {
            input: echo(amount),
        })?;
        Self::checked(value, currency, || amount.to_owned())
    }

    /// Like [`Money::parse`], for an amount that a payment instructs to move:
    /// it must also be greater than zero.
    ///
    /// # Errors
    /// The errors of [`Money::parse`], and [`DomainError::NonPositiveAmount`]
    /// for zero and negative amounts.
    pub fn parse_instructed(amount: &str, currency: Currency) -> Result<Money, DomainError> {
        let money = Self::parse(amount, currency)?;
        if money.is_positive() {
            Ok(money)
        } else {
            Err(DomainError::NonPositiveAmount { got: echo(amount) })
        }
    }

    /// Zero in the given currency.
    #[must_use]
    pub fn zero(currency: Currency) -> Money {
        Self::canonical(Decimal::ZERO, currency)
    }

    /// Rounds an arbitrary decimal to the currency's minor units, midpoints
    /// away from zero (`0.125 EUR` → `0.13`, `-0.125 EUR` → `-0.13`). Meant for
    /// the results of FX conversions and similar calculations.
    ///
    /// This does **not** apply the 10^14 range limit of [`Money::new`] (it cannot
    /// fail). Results of converting in-range amounts at realistic rates stay far
    /// below it; if the input may be arbitrary, pass the result through
    /// `Money::new(m.amount(), m.currency())` to enforce the limit.
    /// [`Money::checked_add`] and [`Money::checked_sub`] do enforce it.
    #[must_use]
    pub fn round_from(amount: Decimal, currency: Currency) -> Money {
        let rounded = amount.round_dp_with_strategy(
            currency.minor_units(),
            RoundingStrategy::MidpointAwayFromZero,
        );
        Self::canonical(rounded, currency)
    }

    /// The amount, at exactly the currency's minor units (scale).
    #[must_use]
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    #[must_use]
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The amount with exactly the currency's minor units: `"12.30"`,
    /// `"1200"` (JPY), `"-0.50"`, `"0.00"` (never `"-0.00"`). This is the
    /// Berlin Group `amount` string.
    #[must_use]
    pub fn to_minor_string(&self) -> String {
        let mut amount = self.amount.normalize(); // also turns -0 into 0
        amount.rescale(self.currency.minor_units());
        amount.to_string()
    }

    /// `self + other`.
    ///
    /// # Errors
    /// [`DomainError::CurrencyMismatch`] if the currencies differ,
    /// [`DomainError::AmountOutOfRange`] if the sum reaches 10^14 in absolute value.
    pub fn checked_add(&self, other: &Money) -> Result<Money, DomainError> {
        self.combine(other, Decimal::checked_add, '+')
    }

    /// `self - other`.
    ///
    /// # Errors
    /// As [`Money::checked_add`].
    pub fn checked_sub(&self, other: &Money) -> Result<Money, DomainError> {
        self.combine(other, Decimal::checked_sub, '-')
    }

    /// The same amount with the opposite sign (zero stays zero).
    #[must_use]
    pub fn neg(&self) -> Money {
        Self::canonical(-self.amount, self.currency)
    }

    /// The absolute value.
    #[must_use]
    pub fn abs(&self) -> Money {
        Self::canonical(self.amount.abs(), self.currency)
    }

    /// `amount < 0`.
    #[must_use]
    pub fn is_negative(&self) -> bool {
        self.amount < Decimal::ZERO
    }

    /// `amount > 0`.
    #[must_use]
    pub fn is_positive(&self) -> bool {
        self.amount > Decimal::ZERO
    }

    /// `amount == 0`.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    fn combine(
        &self,
        other: &Money,
        op: fn(Decimal, Decimal) -> Option<Decimal>,
        symbol: char,
    ) -> Result<Money, DomainError> {
        if self.currency != other.currency {
            return Err(DomainError::CurrencyMismatch {
                left: self.currency.code().to_owned(),
                right: other.currency.code().to_owned(),
            });
        }
        let result =
            op(self.amount, other.amount).ok_or_else(|| DomainError::AmountOutOfRange {
                got: format!("{} {symbol} {}", self.amount, other.amount),
            })?;
        Self::checked(result, self.currency, || result.to_string())
    }

    /// Validates decimals and range; `shown` renders the amount for errors.
    fn checked(
        amount: Decimal,
        currency: Currency,
        shown: impl Fn() -> String,
    ) -> Result<Money, DomainError> {
        let max = currency.minor_units();
        if amount.normalize().scale() > max {
            return Err(DomainError::TooManyDecimals {
                currency: currency.code().to_owned(),
                max,
                got: echo(&shown()),
            });
        }
        if amount.abs() >= amount_limit() {
            return Err(DomainError::AmountOutOfRange {
                got: echo(&shown()),
            });
        }
        Ok(Self::canonical(amount, currency))
    }

    /// Stores `amount` at exactly the currency's minor units, without sign on
    /// zero. The caller guarantees that no significant decimal is lost.
    fn canonical(amount: Decimal, currency: Currency) -> Money {
        let mut amount = amount.normalize();
        amount.rescale(currency.minor_units());
        Money { amount, currency }
    }
}

/// `^-?[0-9]{1,14}(\.[0-9]{1,3})?$`, checked by hand.
fn is_berlin_group_amount(s: &str) -> bool {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (integer, fraction) = match unsigned.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |part: &str, max: usize| {
        (1..=max).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
    };
    digits(integer, MAX_INTEGER_DIGITS)
        && fraction.is_none_or(|f| digits(f, MAX_MINOR_UNITS.into()))
}

impl fmt::Display for Money {
    /// `"12.30 EUR"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_minor_string(), self.currency)
    }
}

/// The Berlin Group `Amount` object as it travels.
#[derive(Serialize, Deserialize)]
struct AmountWire {
    amount: String,
    currency: String,
}

impl From<Money> for AmountWire {
    fn from(money: Money) -> Self {
        AmountWire {
            amount: money.to_minor_string(),
            currency: money.currency.code().to_owned(),
        }
    }
}

impl TryFrom<AmountWire> for Money {
    type Error = DomainError;

    fn try_from(wire: AmountWire) -> Result<Self, Self::Error> {
        let currency = Currency::parse(&wire.currency)?;
        Money::parse(&wire.amount, currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn eur(s: &str) -> Money {
        Money::parse(s, Currency::EUR).unwrap()
    }

    // ---- Currency ----------------------------------------------------------

    #[test]
    fn currency_parses_exact_upper_case_codes() {
        assert_eq!(Currency::parse("EUR"), Ok(Currency::EUR));
        assert_eq!(Currency::parse("USD"), Ok(Currency::USD));
        assert_eq!(Currency::parse("GBP"), Ok(Currency::GBP));
        assert_eq!(Currency::parse("JPY"), Ok(Currency::JPY));
        assert_eq!(Currency::parse("BHD"), Ok(Currency::BHD));
        assert_eq!("SEK".parse::<Currency>(), Ok(Currency::SEK));
    }

    #[test]
    fn currency_rejects_unknown_and_malformed_codes() {
        for code in [
            "XYZ", "eur", "Eur", "EUR ", " EUR", "EU", "EURO", "", "E1R", "€", "ÉUR",
        ] {
            assert_eq!(
                Currency::parse(code),
                Err(DomainError::UnknownCurrency { code: code.into() }),
                "{code:?}"
            );
        }
        assert_eq!(
            Currency::parse("XYZ").unwrap_err().to_string(),
            "unknown currency code 'XYZ'"
        );
    }

    #[test]
    fn currency_rejects_codes_without_usable_minor_units() {
        // No minor unit defined (precious metals, SDR, testing, "no currency").
        for code in ["XAU", "XAG", "XDR", "XTS", "XXX"] {
            assert!(
                matches!(
                    Currency::parse(code),
                    Err(DomainError::UnknownCurrency { .. })
                ),
                "{code}"
            );
        }
        // Four decimals cannot be carried by a Berlin Group amount.
        for code in ["CLF", "UYW"] {
            assert!(
                matches!(
                    Currency::parse(code),
                    Err(DomainError::UnknownCurrency { .. })
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn currency_code_minor_units_and_display() {
        assert_eq!(Currency::EUR.code(), "EUR");
        assert_eq!(Currency::EUR.minor_units(), 2);
        assert_eq!(Currency::JPY.minor_units(), 0);
        assert_eq!(Currency::BHD.minor_units(), 3);
        assert_eq!(Currency::parse("KWD").unwrap().minor_units(), 3);
        assert_eq!(Currency::parse("XOF").unwrap().minor_units(), 0);
        assert_eq!(Currency::EUR.to_string(), "EUR");
        assert_eq!(format!("{:?}", Currency::EUR), "Currency(EUR)");
    }

    #[test]
    fn associated_constants_are_what_they_say() {
        for (constant, code) in [
            (Currency::EUR, "EUR"),
            (Currency::USD, "USD"),
            (Currency::GBP, "GBP"),
            (Currency::CHF, "CHF"),
            (Currency::SEK, "SEK"),
            (Currency::PLN, "PLN"),
            (Currency::JPY, "JPY"),
            (Currency::BHD, "BHD"),
        ] {
            assert_eq!(Currency::parse(code), Ok(constant));
        }
    }

    #[test]
    fn currency_serde_is_the_plain_code() {
        assert_eq!(serde_json::to_string(&Currency::EUR).unwrap(), r#""EUR""#);
        assert_eq!(
            serde_json::from_str::<Currency>(r#""GBP""#).unwrap(),
            Currency::GBP
        );
        let error = serde_json::from_str::<Currency>(r#""eur""#).unwrap_err();
        assert!(
            error.to_string().contains("unknown currency code 'eur'"),
            "{error}"
        );
        assert!(serde_json::from_str::<Currency>("978").is_err());
    }

    // ---- Money::new --------------------------------------------------------

    #[test]
    fn new_accepts_up_to_the_minor_units_and_normalises_trailing_zeros() {
        let money = Money::new(dec("1.230"), Currency::EUR).unwrap();
        assert_eq!(money.amount(), dec("1.23"));
        assert_eq!(money.amount().scale(), 2);
        assert_eq!(money.to_minor_string(), "1.23");
        assert_eq!(money.currency(), Currency::EUR);

        let whole = Money::new(dec("5.000"), Currency::JPY).unwrap();
        assert_eq!(whole.to_minor_string(), "5");

        let bhd = Money::new(dec("1.234"), Currency::BHD).unwrap();
        assert_eq!(bhd.to_minor_string(), "1.234");
    }

    #[test]
    fn new_rejects_too_many_decimals() {
        assert_eq!(
            Money::new(dec("1.234"), Currency::EUR),
            Err(DomainError::TooManyDecimals {
                currency: "EUR".into(),
                max: 2,
                got: "1.234".into(),
            })
        );
        assert_eq!(
            Money::new(dec("5.5"), Currency::JPY),
            Err(DomainError::TooManyDecimals {
                currency: "JPY".into(),
                max: 0,
                got: "5.5".into(),
            })
        );
        assert!(matches!(
            Money::new(dec("0.0001"), Currency::BHD),
            Err(DomainError::TooManyDecimals { max: 3, .. })
        ));
        assert_eq!(
            Money::new(dec("1.234"), Currency::EUR)
                .unwrap_err()
                .to_string(),
            "EUR amounts have at most 2 decimals, got '1.234'"
        );
    }

    #[test]
    fn new_rejects_amounts_of_ten_to_the_fourteen_or_more() {
        let limit = dec("100000000000000");
        assert_eq!(
            Money::new(limit, Currency::EUR),
            Err(DomainError::AmountOutOfRange {
                got: "100000000000000".into()
            })
        );
        assert!(matches!(
            Money::new(-limit, Currency::EUR),
            Err(DomainError::AmountOutOfRange { .. })
        ));
        assert!(Money::new(dec("99999999999999.99"), Currency::EUR).is_ok());
        assert!(Money::new(dec("-99999999999999.99"), Currency::EUR).is_ok());
    }

    #[test]
    fn zero_is_never_negative() {
        let negative_zero = Money::new(dec("-0.00"), Currency::EUR).unwrap();
        assert_eq!(negative_zero.to_minor_string(), "0.00");
        assert!(negative_zero.is_zero());
        assert!(!negative_zero.is_negative());
        assert_eq!(eur("-0").to_minor_string(), "0.00");
        assert_eq!(Money::zero(Currency::EUR).neg().to_minor_string(), "0.00");
        assert_eq!(Money::zero(Currency::EUR), negative_zero);
        assert_eq!(Money::zero(Currency::JPY).to_minor_string(), "0");
        assert_eq!(Money::zero(Currency::BHD).to_minor_string(), "0.000");
        assert_eq!(
            Money::round_from(dec("-0.001"), Currency::EUR).to_minor_string(),
            "0.00"
        );
    }

    // ---- Money::parse ------------------------------------------------------

    #[test]
    fn parse_accepts_berlin_group_amounts() {
        assert_eq!(eur("12.3").to_minor_string(), "12.30");
        assert_eq!(eur("12.30").to_minor_string(), "12.30");
        assert_eq!(eur("12.300").to_minor_string(), "12.30");
        assert_eq!(eur("12").to_minor_string(), "12.00");
        assert_eq!(eur("-0.5").to_minor_string(), "-0.50");
        assert_eq!(eur("007").to_minor_string(), "7.00");
        assert_eq!(
            eur("99999999999999.99").to_minor_string(),
            "99999999999999.99"
        );
        assert_eq!(
            Money::parse("1200", Currency::JPY)
                .unwrap()
                .to_minor_string(),
            "1200"
        );
        assert_eq!(
            Money::parse("1.5", Currency::BHD)
                .unwrap()
                .to_minor_string(),
            "1.500"
        );
    }

    #[test]
    fn parse_rejects_everything_that_is_not_the_pattern() {
        for input in [
            "+1",
            "1e3",
            " 1",
            "1 ",
            "1,00",
            "",
            ".5",
            "1.",
            "-",
            "-.5",
            "--1",
            "1.2.3",
            "1.2345",
            "123456789012345",
            "NaN",
            "inf",
            "０",
            "1_000",
            "0x10",
        ] {
            assert_eq!(
                Money::parse(input, Currency::EUR),
                Err(DomainError::InvalidAmount {
                    input: input.into()
                }),
                "{input:?}"
            );
        }
    }

    #[test]
    fn parse_applies_the_decimal_rules_of_the_currency() {
        assert_eq!(
            Money::parse("1.234", Currency::EUR),
            Err(DomainError::TooManyDecimals {
                currency: "EUR".into(),
                max: 2,
                got: "1.234".into(),
            })
        );
        assert!(Money::parse("1.230", Currency::EUR).is_ok());
        assert_eq!(
            Money::parse("5.5", Currency::JPY),
            Err(DomainError::TooManyDecimals {
                currency: "JPY".into(),
                max: 0,
                got: "5.5".into(),
            })
        );
        assert!(Money::parse("5.0", Currency::JPY).is_ok());
        assert!(Money::parse("5.125", Currency::BHD).is_ok());
    }

    #[test]
    fn parse_instructed_requires_a_positive_amount() {
        assert_eq!(
            Money::parse_instructed("0.01", Currency::EUR).unwrap(),
            eur("0.01")
        );
        for input in ["0", "0.00", "-0", "-1", "-0.01"] {
            assert_eq!(
                Money::parse_instructed(input, Currency::EUR),
                Err(DomainError::NonPositiveAmount { got: input.into() }),
                "{input}"
            );
        }
        assert!(matches!(
            Money::parse_instructed("abc", Currency::EUR),
            Err(DomainError::InvalidAmount { .. })
        ));
        assert!(matches!(
            Money::parse_instructed("1.001", Currency::EUR),
            Err(DomainError::TooManyDecimals { .. })
        ));
    }

    #[test]
    fn long_input_is_cut_in_errors() {
        let input = "1".repeat(10_000);
        let Err(DomainError::InvalidAmount { input: echoed }) = Money::parse(&input, Currency::EUR)
        else {
            panic!("expected InvalidAmount");
        };
        assert!(echoed.len() < 100);
    }

    // ---- rounding ----------------------------------------------------------

    #[test]
    fn round_from_rounds_midpoints_away_from_zero() {
        let cases = [
            ("0.125", Currency::EUR, "0.13"),
            ("-0.125", Currency::EUR, "-0.13"),
            ("0.124999", Currency::EUR, "0.12"),
            ("2.5", Currency::JPY, "3"),
            ("-2.5", Currency::JPY, "-3"),
            ("2.4", Currency::JPY, "2"),
            ("1.0005", Currency::BHD, "1.001"),
            ("1.1", Currency::EUR, "1.10"),
            ("1", Currency::BHD, "1.000"),
        ];
        for (input, currency, expected) in cases {
            let money = Money::round_from(dec(input), currency);
            assert_eq!(money.to_minor_string(), expected, "{input} {currency}");
            assert_eq!(money.amount().scale(), currency.minor_units());
        }
    }

    // ---- arithmetic --------------------------------------------------------

    #[test]
    fn add_and_sub() {
        assert_eq!(eur("1.10").checked_add(&eur("2.25")), Ok(eur("3.35")));
        assert_eq!(eur("1.10").checked_sub(&eur("2.25")), Ok(eur("-1.15")));
        assert_eq!(
            eur("1.10")
                .checked_sub(&eur("1.1"))
                .unwrap()
                .to_minor_string(),
            "0.00"
        );
    }

    #[test]
    fn arithmetic_rejects_mixed_currencies() {
        let usd = Money::parse("1", Currency::USD).unwrap();
        let expected = Err(DomainError::CurrencyMismatch {
            left: "EUR".into(),
            right: "USD".into(),
        });
        assert_eq!(eur("1").checked_add(&usd), expected);
        assert_eq!(eur("1").checked_sub(&usd), expected);
    }

    #[test]
    fn arithmetic_rejects_results_out_of_range() {
        let big = eur("99999999999999.99");
        assert!(matches!(
            big.checked_add(&eur("0.01")),
            Err(DomainError::AmountOutOfRange { .. })
        ));
        assert!(matches!(
            big.neg().checked_sub(&eur("0.01")),
            Err(DomainError::AmountOutOfRange { .. })
        ));
        assert_eq!(big.checked_sub(&eur("0.01")), Ok(eur("99999999999999.98")));
    }

    #[test]
    fn sign_helpers() {
        let minus = eur("-1.50");
        assert!(minus.is_negative());
        assert!(!minus.is_positive());
        assert!(!minus.is_zero());
        assert_eq!(minus.abs(), eur("1.5"));
        assert_eq!(minus.neg(), eur("1.5"));
        assert_eq!(minus.neg().neg(), minus);
        assert!(eur("1").is_positive());
        assert!(Money::zero(Currency::EUR).is_zero());
        assert!(!Money::zero(Currency::EUR).is_positive());
        assert!(!Money::zero(Currency::EUR).is_negative());
    }

    #[test]
    fn equal_values_hash_equally() {
        let set: HashSet<Money> = [
            eur("1.2"),
            eur("1.20"),
            Money::new(dec("1.200"), Currency::EUR).unwrap(),
        ]
        .into_iter()
        .collect();
        assert_eq!(set.len(), 1);
        assert_ne!(eur("1"), Money::parse("1", Currency::USD).unwrap());
    }

    // ---- rendering and serde -----------------------------------------------

    #[test]
    fn display_and_minor_string() {
        assert_eq!(eur("12.3").to_string(), "12.30 EUR");
        assert_eq!(eur("-0.5").to_string(), "-0.50 EUR");
        assert_eq!(
            Money::parse("1200", Currency::JPY).unwrap().to_string(),
            "1200 JPY"
        );
        assert_eq!(
            Money::parse("0.1", Currency::BHD).unwrap().to_string(),
            "0.100 BHD"
        );
    }

    #[test]
    fn serde_uses_the_berlin_group_amount_object() {
        let json = serde_json::to_string(&eur("12.3")).unwrap();
        assert_eq!(json, r#"{"amount":"12.30","currency":"EUR"}"#);
        let back: Money = serde_json::from_str(&json).unwrap();
        assert_eq!(back, eur("12.30"));

        let jpy: Money = serde_json::from_str(r#"{"currency":"JPY","amount":"1200"}"#).unwrap();
        assert_eq!(jpy, Money::parse("1200", Currency::JPY).unwrap());
        assert_eq!(
            serde_json::to_value(jpy).unwrap(),
            serde_json::json!({"amount": "1200", "currency": "JPY"})
        );
    }

    #[test]
    fn deserialisation_validates() {
        for (json, needle) in [
            (
                r#"{"amount":"1.234","currency":"EUR"}"#,
                "at most 2 decimals",
            ),
            (
                r#"{"amount":"1","currency":"XYZ"}"#,
                "unknown currency code",
            ),
            (r#"{"amount":"1e3","currency":"EUR"}"#, "not a valid amount"),
            (r#"{"amount":"5.5","currency":"JPY"}"#, "at most 0 decimals"),
            (r#"{"amount":12.3,"currency":"EUR"}"#, "invalid type"),
            (r#"{"amount":"12.30"}"#, "missing field"),
        ] {
            let error = serde_json::from_str::<Money>(json).unwrap_err().to_string();
            assert!(error.contains(needle), "{json}: {error}");
        }
    }

    // ---- properties --------------------------------------------------------

    /// A currency and an amount in minor units (cents, yen, fils) below 10^14 major units.
    fn currency_and_minor() -> impl Strategy<Value = (Currency, i64)> {
        prop_oneof![
            Just(Currency::EUR),
            Just(Currency::JPY),
            Just(Currency::BHD)
        ]
        .prop_flat_map(|currency| {
            let bound = 100_000_000_000_000_i64 * 10_i64.pow(currency.minor_units());
            (Just(currency), -bound + 1..bound)
        })
    }

    fn small_eur() -> impl Strategy<Value = Money> {
        // |x| < 10^13 so that sums of three values stay in range.
        (-1_000_000_000_000_000_i64..1_000_000_000_000_000)
            .prop_map(|cents| Money::new(Decimal::new(cents, 2), Currency::EUR).unwrap())
    }

    proptest! {
        #[test]
        fn parse_and_render_round_trip((currency, minor) in currency_and_minor()) {
            let amount = Decimal::new(minor, currency.minor_units());
            let money = Money::new(amount, currency).unwrap();
            let rendered = money.to_minor_string();

            let decimals = rendered.split_once('.').map_or(0, |(_, f)| f.len());
            prop_assert_eq!(decimals as u32, currency.minor_units());
            prop_assert_eq!(rendered.starts_with('-'), money.is_negative());

            let parsed = Money::parse(&rendered, currency).unwrap();
            prop_assert_eq!(parsed, money);
            prop_assert_eq!(parsed.to_minor_string(), rendered);
            prop_assert_eq!(parsed.amount(), amount);

            let json = serde_json::to_string(&money).unwrap();
            prop_assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), money);
        }

        #[test]
        fn checked_add_is_commutative(a in small_eur(), b in small_eur()) {
            let ab = a.checked_add(&b).unwrap();
            prop_assert_eq!(ab, b.checked_add(&a).unwrap());
            prop_assert_eq!(ab.currency(), Currency::EUR);
            prop_assert_eq!(ab.checked_sub(&b).unwrap(), a);
        }

        #[test]
        fn checked_add_is_associative(a in small_eur(), b in small_eur(), c in small_eur()) {
            let left = a.checked_add(&b).unwrap().checked_add(&c).unwrap();
            let right = a.checked_add(&b.checked_add(&c).unwrap()).unwrap();
            prop_assert_eq!(left, right);
            prop_assert_eq!(left.currency(), Currency::EUR);
            prop_assert_eq!(left.amount().scale(), 2);
        }

        #[test]
        fn checked_add_never_changes_currency(
            (currency, x) in currency_and_minor(),
            (other, y) in currency_and_minor(),
        ) {
            let a = Money::new(Decimal::new(x, currency.minor_units()), currency).unwrap();
            let b = Money::new(Decimal::new(y, other.minor_units()), other).unwrap();
            match a.checked_add(&b) {
                Ok(sum) => {
                    prop_assert_eq!(currency, other);
                    prop_assert_eq!(sum.currency(), currency);
                    prop_assert_eq!(sum.amount(), a.amount() + b.amount());
                }
                Err(DomainError::CurrencyMismatch { left, right }) => {
                    prop_assert_ne!(currency, other);
                    prop_assert_eq!(left, currency.code());
                    prop_assert_eq!(right, other.code());
                }
                Err(DomainError::AmountOutOfRange { .. }) => {
                    prop_assert_eq!(currency, other);
                    prop_assert!((a.amount() + b.amount()).abs() >= amount_limit());
                }
                Err(other_error) => prop_assert!(false, "unexpected error {other_error}"),
            }
        }
    }
}
