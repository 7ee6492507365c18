//! Small self-contained helpers: IBAN check digits, amount strings, stable hashing, masking.

use std::net::IpAddr;

/// Expected IBAN length for the countries the sandbox is likely to see. Countries not listed
/// are only checked for the generic shape and the mod-97 checksum.
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "LT" | "EE" | "AT" | "LU" | "KZ" => 20,
        "LV" | "CH" | "LI" => 21,
        "DE" | "GB" | "IE" | "BG" | "GE" => 22,
        "FI" | "NL" | "DK" | "FO" | "GL" => 18,
        "PL" | "HU" | "CY" => 28,
        "SE" | "ES" | "CZ" | "SK" | "RO" | "TN" => 24,
        "FR" | "IT" | "MC" | "SM" => 27,
        "BE" => 16,
        "NO" => 15,
        "PT" => 25,
        "SI" => 19,
        "HR" => 21,
        "GR" => 27,
        "MT" => 31,
        "IS" => 26,
        _ => return None,
    })
}

/// Remainder of the IBAN check-digit computation (ISO 13616 / ISO 7064 mod 97-10) over the
/// rearranged characters.
fn mod97<'a>(parts: impl IntoIterator<Item = &'a str>) -> u32 {
    let mut rem: u32 = 0;
    for part in parts {
        for c in part.chars() {
            let c = c.to_ascii_uppercase();
            if let Some(d) = c.to_digit(10) {
                rem = (rem * 10 + d) % 97;
            } else {
                let v = (c as u32).wrapping_sub('A' as u32) + 10;
                rem = (rem * 100 + v) % 97;
            }
        }
    }
    rem
}

/// True when `s` is a syntactically valid IBAN with correct check digits (no spaces allowed).
pub fn is_valid_iban(s: &str) -> bool {
    let b = s.as_bytes();
    if !(15..=34).contains(&b.len()) {
        return false;
    }
    if !b[0].is_ascii_uppercase()
        || !b[1].is_ascii_uppercase()
        || !b[2].is_ascii_digit()
        || !b[3].is_ascii_digit()
    {
        return false;
    }
    if !b[4..].iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    if let Some(len) = iban_length(&s[..2])
        && len != b.len()
    {
        return false;
    }
    mod97([&s[4..], &s[..4]]) == 1
}

/// Builds an IBAN from a country code and a BBAN, computing the check digits.
pub fn make_iban(country: &str, bban: &str) -> String {
    let check = 98 - mod97([bban, country, "00"]);
    format!("{country}{check:02}{bban}")
}

/// Normalises an IBAN for comparisons: no spaces, upper case.
pub fn normalise_iban(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Masks an IBAN for logs: country, check digits and the last four characters.
pub fn mask_iban(iban: &str) -> String {
    if iban.len() <= 8 {
        return "****".to_owned();
    }
    format!("{}…{}", &iban[..4], &iban[iban.len() - 4..])
}

/// Masks an identifier (consent id, payment id) for logs.
pub fn mask_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 8 {
        return "****".to_owned();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}…{tail}")
}

/// Number of minor-unit digits of a currency (ISO 4217). Unknown currencies get 2.
pub fn currency_decimals(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "ISK" | "CLP" | "VND" | "XOF" | "XAF" | "UGX" | "PYG" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
        _ => 2,
    }
}

/// True for a three-letter upper-case currency code.
pub fn is_currency_code(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// An amount string parsed exactly (no floating point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedAmount {
    /// The value in thousandths of the currency unit (sign included).
    pub thousandths: i128,
    /// Number of fraction digits written.
    pub decimals: u32,
}

/// Parses an amount with the Berlin Group pattern `^-?[0-9]{1,14}(\.[0-9]{1,3})?$`.
pub fn parse_amount(s: &str) -> Option<ParsedAmount> {
    let (negative, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    if int.is_empty() || int.len() > 14 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = match frac {
        Some(f) if f.is_empty() || f.len() > 3 || !f.bytes().all(|b| b.is_ascii_digit()) => {
            return None;
        }
        Some(f) => f,
        None => "",
    };
    let int_v: i128 = int.parse().ok()?;
    let mut frac_v: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..3 {
        frac_v *= 10;
    }
    let v = int_v * 1000 + frac_v;
    Some(ParsedAmount {
        thousandths: if negative { -v } else { v },
        decimals: frac.len() as u32,
    })
}

/// Formats an amount given in minor units (cents) with two decimals: `-1230` → `"-12.30"`.
pub fn fmt_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// Stable 64-bit FNV-1a hash over a list of parts (separated so ("ab","c") ≠ ("a","bc")).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    // Final avalanche (splitmix64) so that nearby inputs give unrelated seeds.
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Minimal HTML escaping for the SCA pages.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// True when `s` parses as an IPv4 or IPv6 address.
pub fn is_ip_address(s: &str) -> bool {
    s.trim().parse::<IpAddr>().is_ok()
}

/// A loose URI check for redirect headers: `scheme:rest` with no whitespace.
pub fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !s.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iban_checksums() {
        assert!(is_valid_iban("LT601010012345678901"));
        assert!(is_valid_iban("DE89370400440532013000"));
        assert!(is_valid_iban("GB29NWBK60161331926819"));
        assert!(is_valid_iban("LV80BANK0000435195001"));
        assert!(is_valid_iban("EE382200221020145685"));
        assert!(!is_valid_iban("LT611010012345678901"));
        assert!(!is_valid_iban("LT60101001234567890"));
        assert!(!is_valid_iban("lt601010012345678901"));
        assert!(!is_valid_iban("LT60 1010 0123 4567 8901"));
        assert!(!is_valid_iban(""));
    }

    #[test]
    fn iban_generation_round_trips() {
        for bban in ["1010012345678901", "BANK0000435195001", "2200221020145685"] {
            let country = match bban.len() {
                16 => "LT",
                17 => "LV",
                _ => "EE",
            };
            let iban = make_iban(country, bban);
            assert!(is_valid_iban(&iban), "{iban}");
        }
        assert_eq!(make_iban("LT", "1010012345678901"), "LT601010012345678901");
    }

    #[test]
    fn amounts() {
        assert_eq!(
            parse_amount("123.45"),
            Some(ParsedAmount {
                thousandths: 123_450,
                decimals: 2
            })
        );
        assert_eq!(parse_amount("-1.5").unwrap().thousandths, -1500);
        assert_eq!(parse_amount("1056").unwrap().decimals, 0);
        assert_eq!(parse_amount("0.001").unwrap().thousandths, 1);
        assert!(parse_amount("1.").is_none());
        assert!(parse_amount(".5").is_none());
        assert!(parse_amount("1.2345").is_none());
        assert!(parse_amount("1e3").is_none());
        assert!(parse_amount("123456789012345").is_none());
        assert!(parse_amount("+1").is_none());
        assert_eq!(fmt_cents(-1230), "-12.30");
        assert_eq!(fmt_cents(5), "0.05");
        assert_eq!(fmt_cents(123_456), "1234.56");
    }

    #[test]
    fn masking_and_misc() {
        assert_eq!(mask_iban("LT601010012345678901"), "LT60…8901");
        assert_eq!(mask_id("0d9b7c2e-1111-2222-3333-444455556666"), "0d9b…66");
        assert!(is_uri("https://tpp.example/cb?state=1"));
        assert!(is_uri("myapp://callback"));
        assert!(!is_uri("not a uri"));
        assert!(is_ip_address("192.168.8.78"));
        assert!(!is_ip_address("localhost"));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(html_escape("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
