//! Conversions between stored times (`chrono`) and wire times (`google.protobuf.Timestamp`).

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::{error::FieldViolation, validate::Parsed};

pub fn to_timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: time.timestamp(), nanos: time.timestamp_subsec_nanos() as i32 }
}

/// An optional wire time; an out-of-range one is a violation of `field`.
pub fn from_timestamp(field: &str, time: Option<&Timestamp>) -> Parsed<Option<DateTime<Utc>>> {
    let Some(time) = time else { return Ok(None) };
    u32::try_from(time.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(time.seconds, nanos))
        .map(Some)
        .ok_or_else(|| FieldViolation::new(field, "is not a valid timestamp"))
}

/// Now, truncated to microseconds so that it survives a round trip through
/// PostgreSQL and SQLite unchanged.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}
