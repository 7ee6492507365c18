//! A validated IBAN that does not leak into logs.
//!
//! [`Iban`] checks the ISO 13616 checksum and the country's BBAN format
//! (via the `iban_validate` crate). Its [`Display`](fmt::Display) and
//! [`Debug`](fmt::Debug) output is masked (`LT12 **** **** 1000`), so an IBAN
//! inside a struct that is logged with `{:?}` stays private. The full value is
//! only available through [`Iban::expose`] and through serde serialisation
//! (needed for the bank API and storage; never serialise an IBAN into a log line).

use std::fmt;
use std::str::FromStr;

use ::iban::{IbanLike, ParseBaseIbanError, ParseIbanError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::DomainError;

/// A validated IBAN, held in electronic format (`LT121000011101001000`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Iban(::iban::Iban);

fn invalid(reason: impl Into<String>) -> DomainError {
    DomainError::InvalidIban {
        reason: reason.into(),
    }
}

impl Iban {
    /// Parses an IBAN in electronic (`LT121000011101001000`) or print format
    /// (`LT12 1000 0111 0100 1000`; spaces anywhere are ignored).
    ///
    /// Letters must be upper case: `lt12…` is rejected rather than guessed.
    ///
    /// # Errors
    /// [`DomainError::InvalidIban`] whose reason says what is wrong (empty,
    /// bad characters, checksum, length/format for the country, unknown
    /// country). The reason never contains the IBAN.
    pub fn parse(s: &str) -> Result<Iban, DomainError> {
        let compact: String = s.chars().filter(|&c| c != ' ').collect();
        if compact.is_empty() {
            return Err(invalid("IBAN is empty"));
        }
        if compact.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(invalid("IBAN must be written in upper case"));
        }
        if !compact
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(invalid(
                "IBAN may only contain the letters A-Z, digits and spaces",
            ));
        }
        match compact.parse::<::iban::Iban>() {
            Ok(iban) => Ok(Iban(iban)),
            Err(ParseIbanError::InvalidBaseIban {
                source: ParseBaseIbanError::InvalidChecksum,
            }) => Err(invalid("IBAN checksum is wrong")),
            Err(ParseIbanError::InvalidBaseIban {
                source: ParseBaseIbanError::InvalidFormat,
            }) => Err(invalid(
                "IBAN must start with a two-letter country code and two check digits \
                 and have at most 34 characters",
            )),
            Err(ParseIbanError::InvalidBban(base)) => Err(invalid(format!(
                "IBAN has the wrong length or format for country {}",
                base.country_code()
            ))),
            Err(ParseIbanError::UnknownCountry(base)) => Err(invalid(format!(
                "IBAN country code {} is unknown",
                base.country_code()
            ))),
        }
    }

    /// The full IBAN in electronic format. This is the only way to read the
    /// whole value: use it for the bank API and storage, never for logs.
    #[must_use]
    pub fn expose(&self) -> &str {
        self.0.electronic_str()
    }

    /// The ISO 3166 country code, e.g. `"LT"`.
    #[must_use]
    pub fn country_code(&self) -> &str {
        self.0.country_code()
    }

    /// The last four characters, e.g. `"1000"`.
    #[must_use]
    pub fn last4(&self) -> &str {
        let electronic = self.expose();
        // An IBAN is ASCII and has at least 15 characters.
        &electronic[electronic.len() - 4..]
    }

    /// The masked form: country code and check digits, two `****` groups and
    /// the last four characters, e.g. `"LT12 **** **** 1000"`. The shape does
    /// not depend on the IBAN's length.
    #[must_use]
    pub fn masked(&self) -> String {
        format!("{} **** **** {}", &self.expose()[..4], self.last4())
    }
}

impl FromStr for Iban {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Iban::parse(s)
    }
}

impl fmt::Display for Iban {
    /// The masked form (see [`Iban::masked`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for Iban {
    /// `Iban(LT12 **** **** 1000)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iban({})", self.masked())
    }
}

impl Serialize for Iban {
    /// The full electronic value (wire and storage format). Logs must use
    /// `Display`/`Debug`, which mask it.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Iban {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Iban::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: [&str; 5] = [
        "LT121000011101001000",
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "LV80BANK0000435195001",
        "EE382200221020145685",
    ];

    fn reason(result: Result<Iban, DomainError>) -> String {
        match result {
            Err(DomainError::InvalidIban { reason }) => reason,
            other => panic!("expected InvalidIban, got {other:?}"),
        }
    }

    #[test]
    fn parses_valid_electronic_ibans() {
        for text in VALID {
            let iban = Iban::parse(text).unwrap();
            assert_eq!(iban.expose(), text);
            assert_eq!(iban.country_code(), &text[..2]);
            assert_eq!(iban.last4(), &text[text.len() - 4..]);
            assert_eq!(text.parse::<Iban>().unwrap(), iban);
        }
    }

    #[test]
    fn parses_print_format() {
        let iban = Iban::parse("DE89 3704 0044 0532 0130 00").unwrap();
        assert_eq!(iban.expose(), "DE89370400440532013000");
        assert_eq!(
            Iban::parse("GB82 WEST 1234 5698 7654 32").unwrap().expose(),
            "GB82WEST12345698765432"
        );
        // Irregular spacing is tolerated too.
        assert_eq!(
            Iban::parse(" LT12 100001110100 1000 ").unwrap().expose(),
            "LT121000011101001000"
        );
    }

    #[test]
    fn rejects_a_wrong_checksum() {
        assert_eq!(
            reason(Iban::parse("LT121000011101001001")),
            "IBAN checksum is wrong"
        );
        assert_eq!(
            reason(Iban::parse("DE88370400440532013000")),
            "IBAN checksum is wrong"
        );
        assert_eq!(
            Iban::parse("DE88370400440532013000")
                .unwrap_err()
                .to_string(),
            "IBAN checksum is wrong"
        );
    }

    #[test]
    fn rejects_lower_case() {
        for text in [
            "lt121000011101001000",
            "GB82west12345698765432",
            "gb82WEST12345698765432",
        ] {
            assert_eq!(
                reason(Iban::parse(text)),
                "IBAN must be written in upper case"
            );
        }
    }

    #[test]
    fn rejects_bad_characters_and_empty_input() {
        assert_eq!(reason(Iban::parse("")), "IBAN is empty");
        assert_eq!(reason(Iban::parse("   ")), "IBAN is empty");
        for text in [
            "LT12-1000-0111-0100-1000",
            "LT12\t1000011101001000",
            "LT12\u{a0}1000011101001000",
            "ĹT121000011101001000",
        ] {
            assert!(
                reason(Iban::parse(text)).contains("only contain"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn rejects_bad_structure() {
        for text in [
            "1234567890",
            "LTXX1000011101001000",
            "LT",
            &format!("LT12{}", "1".repeat(40)),
        ] {
            assert!(
                reason(Iban::parse(text)).contains("two-letter country code"),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_wrong_length_for_the_country() {
        // Valid checksum, but a German IBAN has 22 characters.
        let short = with_check_digits("DE", "3704004405320130");
        assert_eq!(
            reason(Iban::parse(&short)),
            "IBAN has the wrong length or format for country DE"
        );
    }

    #[test]
    fn rejects_unknown_countries() {
        let unknown = with_check_digits("ZZ", "1234567890123456");
        assert_eq!(
            reason(Iban::parse(&unknown)),
            "IBAN country code ZZ is unknown"
        );
    }

    #[test]
    fn error_reasons_never_contain_the_iban() {
        for text in ["LT121000011101001001", "lt121000011101001000", "LT12-1000"] {
            let message = Iban::parse(text).unwrap_err().to_string();
            assert!(!message.contains("1000011101001"), "{message}");
        }
    }

    #[test]
    fn display_and_debug_are_masked() {
        let iban = Iban::parse("LT121000011101001000").unwrap();
        assert_eq!(iban.masked(), "LT12 **** **** 1000");
        assert_eq!(iban.to_string(), "LT12 **** **** 1000");
        assert_eq!(format!("{iban:?}"), "Iban(LT12 **** **** 1000)");
        assert_eq!(format!("{iban:#?}"), "Iban(LT12 **** **** 1000)");
        let gb = Iban::parse("GB82WEST12345698765432").unwrap();
        assert_eq!(gb.masked(), "GB82 **** **** 5432");
    }

    #[test]
    fn structs_containing_an_iban_do_not_leak_it() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Payment {
            debtor: Iban,
            creditor: Option<Iban>,
        }
        for text in VALID {
            let iban = Iban::parse(text).unwrap();
            let payment = Payment {
                debtor: iban.clone(),
                creditor: Some(iban.clone()),
            };
            for rendered in [
                format!("{payment:?}"),
                format!("{payment:#?}"),
                format!("{iban}"),
                format!("{iban:?}"),
                iban.to_string(),
            ] {
                assert!(!rendered.contains(text), "{rendered}");
                assert!(!rendered.contains(&text[4..text.len() - 4]), "{rendered}");
            }
        }
    }

    #[test]
    fn serde_writes_the_full_value_and_validates_on_read() {
        let iban = Iban::parse("LV80BANK0000435195001").unwrap();
        let json = serde_json::to_string(&iban).unwrap();
        assert_eq!(json, r#""LV80BANK0000435195001""#);
        assert_eq!(serde_json::from_str::<Iban>(&json).unwrap(), iban);
        assert_eq!(
            serde_json::from_str::<Iban>(r#""LV80 BANK 0000 4351 9500 1""#).unwrap(),
            iban
        );
        let error = serde_json::from_str::<Iban>(r#""LV81BANK0000435195001""#).unwrap_err();
        assert!(
            error.to_string().contains("IBAN checksum is wrong"),
            "{error}"
        );
    }

    /// Appends the ISO 7064 MOD 97-10 check digits, computed independently of
    /// the crate under test.
    fn with_check_digits(country: &str, bban: &str) -> String {
        let rearranged = format!("{bban}{country}00");
        let remainder = rearranged.chars().fold(0_u32, |acc, c| {
            let value = c.to_digit(36).expect("alphanumeric");
            if value < 10 {
                (acc * 10 + value) % 97
            } else {
                (acc * 100 + value) % 97
            }
        });
        format!("{country}{:02}{bban}", 98 - remainder)
    }

    #[test]
    fn check_digit_helper_reproduces_the_examples() {
        for text in VALID {
            assert_eq!(with_check_digits(&text[..2], &text[4..]), text);
        }
    }

    /// (country, BBAN shape): `n` digit, `a` upper-case letter, `c` either.
    const TEMPLATES: [(&str, &str); 6] = [
        ("LT", "nnnnnnnnnnnnnnnn"),
        ("DE", "nnnnnnnnnnnnnnnnnn"),
        ("GB", "aaaannnnnnnnnnnnnn"),
        ("LV", "aaaaccccccccccccc"),
        ("EE", "nnnnnnnnnnnnnnnn"),
        ("NL", "aaaannnnnnnnnn"),
    ];

    fn bban_char(kind: char) -> BoxedStrategy<char> {
        let digits = prop::sample::select(('0'..='9').collect::<Vec<_>>());
        let letters = prop::sample::select(('A'..='Z').collect::<Vec<_>>());
        match kind {
            'n' => digits.boxed(),
            'a' => letters.boxed(),
            _ => prop_oneof![digits, letters].boxed(),
        }
    }

    fn random_iban() -> impl Strategy<Value = String> {
        prop::sample::select(TEMPLATES.to_vec()).prop_flat_map(|(country, shape)| {
            let chars: Vec<_> = shape.chars().map(bban_char).collect();
            chars.prop_map(move |bban| {
                with_check_digits(country, &bban.into_iter().collect::<String>())
            })
        })
    }

    proptest! {
        #[test]
        fn generated_ibans_parse_and_a_changed_digit_fails(
            text in random_iban(),
            position in any::<prop::sample::Index>(),
            delta in 1_u32..10,
        ) {
            let iban = Iban::parse(&text).unwrap();
            prop_assert_eq!(iban.expose(), text.as_str());
            let debug = format!("{iban:?}");
            prop_assert!(!debug.contains(&text));

            // Change one digit (check digits included) to another digit.
            let digit_positions: Vec<usize> = text
                .char_indices()
                .filter(|&(i, c)| i >= 2 && c.is_ascii_digit())
                .map(|(i, _)| i)
                .collect();
            let at = digit_positions[position.index(digit_positions.len())];
            let old = text.as_bytes()[at] - b'0';
            let new = (u32::from(old) + delta) % 10;
            let mut changed = text.clone();
            changed.replace_range(at..=at, &new.to_string());
            prop_assert_ne!(&changed, &text);

            let error = Iban::parse(&changed).unwrap_err();
            let reason = match &error {
                DomainError::InvalidIban { reason } => reason.clone(),
                other => panic!("unexpected {other:?}"),
            };
            // MOD 97-10 detects every single-character substitution (check digits
            // "00" and "01" are reported as a wrong checksum as well).
            prop_assert!(
                reason == "IBAN checksum is wrong",
                "{} -> {}: {}", text, changed, reason
            );
        }
    }
}
