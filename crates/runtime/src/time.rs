//! Conversions between stored times (`chrono`) and wire times (`google.protobuf.Timestamp`).

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::{error::FieldViolation, validate::Parsed};

pub fn to_timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: time.timestamp(), nanos: time.timestamp_subsec_nanos() as i32 }
}

/// The first second a `google.protobuf.Timestamp` may name: 0001-01-01T00:00:00Z.
const MIN_SECONDS: i64 = -62_135_596_800;
/// The last: 9999-12-31T23:59:59Z.
const MAX_SECONDS: i64 = 253_402_300_799;

/// An optional wire time; one outside 0001-01-01…9999-12-31 (the range the
/// Timestamp type defines), or with nanos outside 0…999,999,999, is a
/// violation of `field`.
pub fn from_timestamp(field: &str, time: Option<&Timestamp>) -> Parsed<Option<DateTime<Utc>>> {
    let Some(time) = time else { return Ok(None) };
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&time.seconds) {
        return Err(FieldViolation::new(field, "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"));
    }
    u32::try_from(time.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(time.seconds, nanos))
        .map(Some)
        .ok_or_else(|| FieldViolation::new(field, "has nanos outside 0 to 999,999,999"))
}

/// Now, truncated to microseconds so that it survives a round trip through
/// PostgreSQL and SQLite unchanged.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_outside_the_years_1_to_9999_are_refused() {
        let at = |seconds, nanos| from_timestamp("t", Some(&Timestamp { seconds, nanos }));
        assert!(at(MIN_SECONDS, 0).unwrap().is_some());
        assert!(at(MAX_SECONDS, 999_999_999).unwrap().is_some());
        for (seconds, nanos) in [(MIN_SECONDS - 1, 0), (MAX_SECONDS + 1, 0), (0, -1), (0, 1_000_000_000), (i64::MAX, 0)]
        {
            assert_eq!(at(seconds, nanos).unwrap_err().field, "t", "{seconds}.{nanos}");
        }
        assert_eq!(from_timestamp("t", None).unwrap(), None);
    }
}
