//! Request bodies that must be a JSON object, with an answer that names the field where
//! one is to blame.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::ServiceError;
use crate::domain::error::echo;

/// The body as a JSON object, or one validation error:
/// - a number no JSON parser can hold (`1e400`) names its field (`instructedAmount.amount`,
///   `payments[3].instructedAmount.amount`): "is a number out of range";
/// - a body nested deeper than the parser goes (128 levels) is `body`: "is nested too deeply";
/// - anything else that is not a JSON object (not JSON, not UTF-8, an array, ...) is
///   `body`: "must be a JSON object".
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ServiceError> {
    let error = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => return Ok(map),
        Ok(_) => return Err(ServiceError::field("body", "must be a JSON object")),
        Err(error) => error.to_string(),
    };
    if error.starts_with("recursion limit exceeded") {
        return Err(ServiceError::field("body", "is nested too deeply"));
    }
    if error.starts_with("number out of range")
        && let Some(field) = out_of_range_field(body)
    {
        return Err(ServiceError::field(&field, "is a number out of range"));
    }
    Err(ServiceError::field("body", "must be a JSON object"))
}

/// The path of the number that stops the parser, for a body that is an object.
fn out_of_range_field(body: &[u8]) -> Option<String> {
    if !body.trim_ascii_start().starts_with(b"{") {
        return None;
    }
    let path = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(body);
    // The walk fails exactly where the parser does; the path is where it stood then.
    Probe(&path).deserialize(&mut de).err()?;
    let path = path.into_inner();
    if path.is_empty() {
        return None;
    }
    let mut field = String::new();
    for step in path {
        match step {
            Step::Key(key) if field.is_empty() => field.push_str(&echo(&key)),
            Step::Key(key) => {
                field.push('.');
                field.push_str(&echo(&key));
            }
            Step::Index(i) => field.push_str(&format!("[{i}]")),
        }
    }
    Some(field)
}

enum Step {
    Key(String),
    Index(usize),
}

/// Walks any JSON value, keeping the path of where it is in `.0`.
struct Probe<'a>(&'a RefCell<Vec<Step>>);

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for i in 0.. {
            self.0.borrow_mut().push(Step::Index(i));
            let more = seq.next_element_seed(Probe(self.0))?.is_some();
            self.0.borrow_mut().pop();
            if !more {
                break;
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            self.0.borrow_mut().push(Step::Key(key));
            map.next_value_seed(Probe(self.0))?;
            self.0.borrow_mut().pop();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(body: &[u8]) -> (String, String) {
        match json_object(body) {
            Err(ServiceError::Validation(errors)) if errors.len() == 1 => {
                (errors[0].field.clone(), errors[0].message.clone())
            }
            other => panic!("expected one field error, got {other:?}"),
        }
    }

    #[test]
    fn objects_pass() {
        let map = json_object(br#"{"a": 1, "b": [1e300, 99999999999999999999999]}"#).unwrap();
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn a_number_out_of_range_names_its_field() {
        for (body, field) in [
            (&br#"{"validDays": 1e400}"#[..], "validDays"),
            (br#"{"validDays": -1e400}"#, "validDays"),
            (
                br#"{"bankId": "x", "instructedAmount": {"currency": "EUR", "amount": 1e400}}"#,
                "instructedAmount.amount",
            ),
            (
                br#"{"payments": [{"a": 1}, {"instructedAmount": {"amount": 2e999}}]}"#,
                "payments[1].instructedAmount.amount",
            ),
            (br#"{"list": [1, 2, [3, 1e400]]}"#, "list[2][1]"),
        ] {
            assert_eq!(
                error(body),
                (field.to_owned(), "is a number out of range".to_owned()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_long_key_is_cut_in_the_field_name() {
        let key = "k".repeat(1000);
        let (field, _) = error(format!("{{\"{key}\": 1e400}}").as_bytes());
        assert!(field.chars().count() <= 70, "{field}");
    }

    #[test]
    fn deep_nesting_is_a_body_error() {
        for body in [
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)),
        ] {
            assert_eq!(
                error(body.as_bytes()),
                ("body".to_owned(), "is nested too deeply".to_owned())
            );
        }
    }

    #[test]
    fn anything_else_must_be_a_json_object() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"[1e400]",
            b"null",
            b"\xff\xfe",
            b"{\"bankId\":\"lt-\xff\"}",
            b"{\"a\":\"\\ud800\"}",
            b"bankId=lt-alpha",
        ] {
            assert_eq!(
                error(body),
                ("body".to_owned(), "must be a JSON object".to_owned()),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
