//! The stored form of the request snapshot each event carries: versioned JSON
//! with explicit names, decoupled from the domain types, so that a field can be
//! added (with a default) and a Rust type or variant renamed without breaking
//! the decoding of events already stored.
//!
//! - Version 2 (written now): `{"v": 2, …}`, states and saga steps by their
//!   stored names (`PENDING_APPROVAL`, `TRANSFER`), every field but the IDs
//!   and the state optional with a default.
//! - Version 1 (no `v`; what the first releases wrote): the serde shape of the
//!   domain type then, states and steps by Rust variant names. Still read; the
//!   names it used are frozen here. `fixtures/snapshot_v1.json` is such a row.

use chrono::{DateTime, Utc};
use sea_orm::ActiveEnum;
use serde::{Deserialize, Serialize};

use crate::domain::{PartnerChange, SagaStep, State};

const VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// Absent in version 1.
    #[serde(default)]
    v: u32,
    partner_change_id: String,
    #[serde(default)]
    request_id: String,
    waba_id: String,
    client_id: String,
    source_partner_id: String,
    destination_partner_id: String,
    state: String,
    #[serde(default)]
    phone_numbers: Vec<String>,
    #[serde(default)]
    grant_phone_numbers: Vec<String>,
    #[serde(default)]
    skipped_grant_phone_numbers: Vec<String>,
    #[serde(default)]
    accepted_terms_version: String,
    #[serde(default)]
    migrate_after: Option<DateTime<Utc>>,
    #[serde(default)]
    failure_reason: String,
    #[serde(default)]
    saga_step: Option<String>,
    #[serde(default)]
    version: i64,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    expire_time: DateTime<Utc>,
}

/// A stored snapshot that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable stored snapshot: {0}")]
pub struct UnreadableSnapshot(String);

/// The JSON stored with an event for `change` (the request right after it).
pub fn encode(change: &PartnerChange) -> Result<String, serde_json::Error> {
    let stored = Stored {
        v: VERSION,
        partner_change_id: change.partner_change_id.clone(),
        request_id: change.request_id.clone(),
        waba_id: change.waba_id.clone(),
        client_id: change.client_id.clone(),
        source_partner_id: change.source_partner_id.clone(),
        destination_partner_id: change.destination_partner_id.clone(),
        state: change.state.to_string(),
        phone_numbers: change.phone_numbers.clone(),
        grant_phone_numbers: change.grant_phone_numbers.clone(),
        skipped_grant_phone_numbers: change.skipped_grant_phone_numbers.clone(),
        accepted_terms_version: change.accepted_terms_version.clone(),
        migrate_after: change.migrate_after,
        failure_reason: change.failure_reason.clone(),
        saga_step: Some(change.saga_step.to_string()),
        version: change.version,
        create_time: change.create_time,
        update_time: change.update_time,
        expire_time: change.expire_time,
    };
    serde_json::to_string(&stored)
}

/// The request a stored snapshot describes, whichever version wrote it.
pub fn decode(json: &str) -> Result<PartnerChange, UnreadableSnapshot> {
    let stored: Stored = serde_json::from_str(json).map_err(|err| UnreadableSnapshot(err.to_string()))?;
    let legacy = stored.v < 2;
    let state = if legacy { legacy_state(&stored.state) } else { State::try_from_value(&stored.state).ok() }
        .ok_or_else(|| UnreadableSnapshot(format!("unknown state {:?}", stored.state)))?;
    let saga_step = match stored.saga_step.as_deref() {
        None => SagaStep::Transfer,
        Some(step) => if legacy { legacy_saga_step(step) } else { SagaStep::try_from_value(&step.to_owned()).ok() }
            .ok_or_else(|| UnreadableSnapshot(format!("unknown saga step {step:?}")))?,
    };
    Ok(PartnerChange {
        partner_change_id: stored.partner_change_id,
        request_id: stored.request_id,
        waba_id: stored.waba_id,
        client_id: stored.client_id,
        source_partner_id: stored.source_partner_id,
        destination_partner_id: stored.destination_partner_id,
        state,
        phone_numbers: stored.phone_numbers,
        grant_phone_numbers: stored.grant_phone_numbers,
        skipped_grant_phone_numbers: stored.skipped_grant_phone_numbers,
        accepted_terms_version: stored.accepted_terms_version,
        migrate_after: stored.migrate_after,
        failure_reason: stored.failure_reason,
        saga_step,
        version: stored.version,
        create_time: stored.create_time,
        update_time: stored.update_time,
        expire_time: stored.expire_time,
        trace_parent: None,
    })
}

/// Version 1 stored states by the Rust variant names of its time; frozen here.
fn legacy_state(name: &str) -> Option<State> {
    Some(match name {
        "PendingApproval" => State::PendingApproval,
        "Approved" => State::Approved,
        "Migrating" => State::Migrating,
        "Completed" => State::Completed,
        "Rejected" => State::Rejected,
        "Cancelled" => State::Cancelled,
        "Expired" => State::Expired,
        "Failed" => State::Failed,
        _ => return None,
    })
}

fn legacy_saga_step(name: &str) -> Option<SagaStep> {
    Some(match name {
        "Transfer" => SagaStep::Transfer,
        "Permissions" => SagaStep::Permissions,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_snapshot_as_first_stored_still_decodes() {
        let change = decode(include_str!("fixtures/snapshot_v1.json")).unwrap();
        assert_eq!(change.partner_change_id, "pc-0192f1d2-7c4a-7b1e-9d3f-2a6b8c0d1e2f");
        assert_eq!(change.state, State::Migrating);
        assert_eq!(change.saga_step, SagaStep::Permissions);
        assert_eq!(change.phone_numbers, ["+4915112345678", "+4915187654321"]);
        assert_eq!(change.grant_phone_numbers, ["+4915112345678"]);
        assert_eq!(change.version, 4);
        assert_eq!(change.update_time.to_rfc3339(), "2026-11-26T10:15:30.123456+00:00");
        // Fields that did not exist then get their defaults.
        assert!(change.skipped_grant_phone_numbers.is_empty());
        assert_eq!(change.migrate_after, None);
    }

    #[test]
    fn the_current_version_round_trips_with_stored_names() {
        let mut change = decode(include_str!("fixtures/snapshot_v1.json")).unwrap();
        change.migrate_after = Some(change.update_time);
        change.skipped_grant_phone_numbers = vec!["+4915187654321".to_owned()];
        let json = encode(&change).unwrap();
        assert!(json.contains(r#""v":2"#) && json.contains(r#""state":"MIGRATING""#), "{json}");
        assert!(json.contains(r#""saga_step":"PERMISSIONS""#), "{json}");
        assert_eq!(decode(&json).unwrap(), change);
    }

    #[test]
    fn unknown_names_are_refused_not_guessed() {
        let json = include_str!("fixtures/snapshot_v1.json").replace("\"Migrating\"", "\"Moving\"");
        assert!(decode(&json).is_err());
    }
}
