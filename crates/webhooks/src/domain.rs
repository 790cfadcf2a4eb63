//! The webhooks service's types and the body it sends, no I/O.

use std::sync::OnceLock;

use partnerhub_proto::partnerchange::v1::{PartnerChangeEvent, PartnerChangeEventType};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use sea_orm::{DeriveActiveEnum, EnumIter, sea_query::StringLen};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum DeliveryState {
    #[sea_orm(string_value = "PENDING")]
    Pending,
    #[sea_orm(string_value = "DELIVERED")]
    Delivered,
    #[sea_orm(string_value = "FAILED")]
    Failed,
}

/// Whose events an endpoint receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Partner(String),
    Client(String),
}

impl Owner {
    /// Whether the owner sees `event`: a partner those of requests to or
    /// from it, a client its own.
    pub fn sees(&self, event: &PartnerChangeEvent) -> bool {
        let Some(change) = &event.partner_change else { return false };
        match self {
            Owner::Partner(id) => change.source_partner_id == *id || change.destination_partner_id == *id,
            Owner::Client(id) => change.client_id == *id,
        }
    }
}

/// `partner_change.approved` for `PARTNER_CHANGE_EVENT_TYPE_APPROVED`.
pub fn event_type_name(event_type: PartnerChangeEventType) -> String {
    let name = event_type.as_str_name();
    let suffix = name.strip_prefix("PARTNER_CHANGE_EVENT_TYPE_").unwrap_or(name);
    format!("partner_change.{}", suffix.to_ascii_lowercase())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the webhook body: {0}")]
pub struct BodyError(String);

/// The JSON POSTed for `event`: `{"type", "timestamp", "data"}`, `data`
/// being the event in the protobuf JSON mapping (proto field names).
pub fn webhook_body(event: &PartnerChangeEvent) -> Result<String, BodyError> {
    let descriptor = event_descriptor().map_err(|err| BodyError(err.to_owned()))?;
    let message = DynamicMessage::decode(descriptor, event.encode_to_vec().as_slice())
        .map_err(|err| BodyError(err.to_string()))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let data = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|err| BodyError(err.to_string()))?;
    let timestamp = event
        .time
        .as_ref()
        .and_then(|time| chrono::DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0)))
        .unwrap_or_else(chrono::Utc::now);
    let body = serde_json::json!({
        "type": event_type_name(event.r#type()),
        "timestamp": timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    });
    Ok(body.to_string())
}

fn event_descriptor() -> Result<prost_reflect::MessageDescriptor, &'static str> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(partnerhub_proto::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
        .and_then(|pool| pool.get_message_by_name("partnerhub.partnerchange.v1.PartnerChangeEvent"))
        .ok_or("the event's descriptor is missing")
}

#[cfg(test)]
mod tests {
    use partnerhub_proto::partnerchange::v1::{PartnerChange, PartnerChangeState};

    use super::*;

    #[test]
    fn the_body_is_the_event_in_protobuf_json_with_its_type_and_time() {
        let event = PartnerChangeEvent {
            cursor: "c-1".to_owned(),
            r#type: PartnerChangeEventType::Approved as i32,
            partner_change: Some(PartnerChange {
                partner_change_id: "pc-1".to_owned(),
                client_id: "client-1".to_owned(),
                source_partner_id: "partner-a".to_owned(),
                destination_partner_id: "partner-b".to_owned(),
                state: PartnerChangeState::Approved as i32,
                ..PartnerChange::default()
            }),
            actor: "partner:partner-b".to_owned(),
            time: Some(prost_types::Timestamp { seconds: 1_764_806_400, nanos: 0 }),
            reason: String::new(),
        };
        let body: serde_json::Value = serde_json::from_str(&webhook_body(&event).unwrap()).unwrap();
        assert_eq!(body["type"], "partner_change.approved");
        assert_eq!(body["timestamp"], "2025-12-04T00:00:00.000Z");
        assert_eq!(body["data"]["cursor"], "c-1");
        assert_eq!(body["data"]["type"], "PARTNER_CHANGE_EVENT_TYPE_APPROVED");
        assert_eq!(body["data"]["partner_change"]["partner_change_id"], "pc-1");
        assert_eq!(body["data"]["partner_change"]["state"], "PARTNER_CHANGE_STATE_APPROVED");
        assert_eq!(body["data"]["time"], "2025-12-04T00:00:00Z");
        assert_eq!(body["data"]["actor"], "partner:partner-b");

        assert!(Owner::Partner("partner-a".into()).sees(&event));
        assert!(Owner::Partner("partner-b".into()).sees(&event));
        assert!(!Owner::Partner("partner-c".into()).sees(&event));
        assert!(Owner::Client("client-1".into()).sees(&event));
        assert!(!Owner::Client("client-2".into()).sees(&event));
    }
}
