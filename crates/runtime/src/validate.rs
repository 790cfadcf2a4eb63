//! Parsing at the boundary: each function turns one raw request field into a
//! value the domain can trust, or a [`FieldViolation`]. [`Validate`] runs a
//! tuple of them and reports every violation at once as `INVALID_ARGUMENT`.

use std::fmt;

use tonic::Status;

use crate::error::{FieldViolation, invalid_argument};

/// A parsed field, or why it is not acceptable.
pub type Parsed<T> = Result<T, FieldViolation>;

/// The longest resource ID accepted anywhere.
pub const MAX_ID_LEN: usize = 64;
/// The longest display name accepted anywhere.
pub const MAX_NAME_LEN: usize = 200;

/// A resource ID: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn id(field: &str, value: &str) -> Parsed<String> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(FieldViolation::new(field, format!("must be at most {MAX_ID_LEN} characters")));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(FieldViolation::new(field, "may contain only letters, digits, '-' and '_'"));
    }
    Ok(value.to_owned())
}

/// An ID that may be left empty.
pub fn optional_id(field: &str, value: &str) -> Parsed<Option<String>> {
    if value.is_empty() { Ok(None) } else { id(field, value).map(Some) }
}

/// Free text that must be present: 1 to `max` characters, no control characters.
pub fn required_text(field: &str, value: &str, max: usize) -> Parsed<String> {
    if value.trim().is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    optional_text(field, value, max)
}

/// Free text that may be empty: at most `max` characters, no control characters.
pub fn optional_text(field: &str, value: &str, max: usize) -> Parsed<String> {
    if value.chars().count() > max {
        return Err(FieldViolation::new(field, format!("must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldViolation::new(field, "must not contain control characters"));
    }
    Ok(value.trim().to_owned())
}

/// A proto enum value that must be known and not `…_UNSPECIFIED` (0).
pub fn required_enum<E: TryFrom<i32>>(field: &str, raw: i32) -> Parsed<E> {
    if raw == 0 {
        return Err(FieldViolation::new(field, "is required"));
    }
    E::try_from(raw).map_err(|_| FieldViolation::new(field, format!("unknown value {raw}")))
}

/// A phone number in E.164: `+`, then 8 to 15 digits, the first not 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(field: &str, value: &str) -> Parsed<Self> {
        let digits = value.strip_prefix('+').unwrap_or("");
        let valid =
            (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        if valid {
            Ok(Self(value.to_owned()))
        } else {
            Err(FieldViolation::new(field, "must be an E.164 phone number such as +4915112345678"))
        }
    }

    /// A list of numbers: each valid, none repeated, at most `max`.
    pub fn parse_list(field: &str, values: &[String], max: usize) -> Parsed<Vec<Self>> {
        if values.len() > max {
            return Err(FieldViolation::new(field, format!("must hold at most {max} numbers")));
        }
        let mut numbers = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let number = Self::parse(&format!("{field}[{index}]"), value)?;
            if numbers.contains(&number) {
                return Err(FieldViolation::new(format!("{field}[{index}]"), "is repeated"));
            }
            numbers.push(number);
        }
        Ok(numbers)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs several field parsers and reports all their violations together.
pub trait Validate {
    type Output;
    fn validate(self) -> Result<Self::Output, Status>;
}

impl<T> Validate for Parsed<T> {
    type Output = T;
    fn validate(self) -> Result<T, Status> {
        self.map_err(|violation| invalid_argument(&[violation]))
    }
}

macro_rules! validate_tuple {
    ($($name:ident: $ty:ident),+) => {
        impl<$($ty),+> Validate for ($(Parsed<$ty>,)+) {
            type Output = ($($ty,)+);
            fn validate(self) -> Result<Self::Output, Status> {
                let ($($name,)+) = self;
                let violations: Vec<FieldViolation> =
                    [$($name.as_ref().err().cloned()),+].into_iter().flatten().collect();
                match ($($name,)+) {
                    ($(Ok($name),)+) => Ok(($($name,)+)),
                    _ => Err(invalid_argument(&violations)),
                }
            }
        }
    };
}

validate_tuple!(a: A, b: B);
validate_tuple!(a: A, b: B, c: C);
validate_tuple!(a: A, b: B, c: C, d: D);
validate_tuple!(a: A, b: B, c: C, d: D, e: E);
validate_tuple!(a: A, b: B, c: C, d: D, e: E, f: F);
validate_tuple!(a: A, b: B, c: C, d: D, e: E, f: F, g: G);
validate_tuple!(a: A, b: B, c: C, d: D, e: E, f: F, g: G, h: H);

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn ids_are_checked_for_presence_length_and_characters() {
        assert!(id("x", "waba-0192_ab").is_ok());
        assert_eq!(id("x", "").unwrap_err().description, "is required");
        assert!(id("x", &"a".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(id("x", "a b").is_err());
        assert!(id("x", "a/b").is_err());
        assert_eq!(optional_id("x", "").unwrap(), None);
    }

    #[test]
    fn phone_numbers_must_be_e164() {
        for good in ["+4915112345678", "+12025550123", "+33123456789"] {
            assert!(PhoneNumber::parse("n", good).is_ok(), "{good}");
        }
        for bad in ["4915112345678", "+0123456789", "+1234567", "+1234567890123456", "+49 151 1234", "", "+"] {
            assert!(PhoneNumber::parse("n", bad).is_err(), "{bad}");
        }
        let repeated = ["+4915112345678".to_owned(), "+4915112345678".to_owned()];
        assert_eq!(PhoneNumber::parse_list("n", &repeated, 10).unwrap_err().field, "n[1]");
    }

    #[test]
    fn a_tuple_reports_every_violation() {
        let status = (id("a", ""), id("b", "ok"), required_text("c", " ", 10)).validate().unwrap_err();
        let fields: Vec<String> =
            status.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["a", "c"]);
        assert_eq!((id("a", "x"), id("b", "y")).validate().unwrap(), ("x".to_owned(), "y".to_owned()));
    }

    #[test]
    fn unknown_and_unspecified_enum_values_are_refused() {
        #[derive(Debug)]
        struct Small;
        impl TryFrom<i32> for Small {
            type Error = ();
            fn try_from(value: i32) -> Result<Self, ()> {
                if value == 1 { Ok(Small) } else { Err(()) }
            }
        }
        assert!(required_enum::<Small>("e", 1).is_ok());
        assert_eq!(required_enum::<Small>("e", 0).unwrap_err().description, "is required");
        assert_eq!(required_enum::<Small>("e", 9).unwrap_err().description, "unknown value 9");
    }
}
