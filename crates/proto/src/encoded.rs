//! A message sent as the bytes it encodes to, made beforehand: what a server
//! sends many callers alike encodes once and shares (see
//! [`crate::partnerchange::v1::encoded`]).

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType},
};

/// The encoding of a message (`Message::encode_to_vec` of it), sent as is.
/// Cloning shares the bytes.
///
/// Only ever sent: it stands for a message type in a generated server, never
/// in a client, so nothing decodes into it. Were something to, it would read
/// the fields into nothing (an empty message) rather than guess at a type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedMessage(Bytes);

impl EncodedMessage {
    /// `message`, encoded.
    pub fn of(message: &impl Message) -> Self {
        Self(Bytes::from(message.encode_to_vec()))
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Message for EncodedMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::partnerchange::v1 as pc;

    #[test]
    fn sends_exactly_the_bytes_of_the_message_it_stands_for() {
        let message = pc::WatchPartnerChangeEventsResponse {
            kind: Some(pc::watch_partner_change_events_response::Kind::Heartbeat(pc::Heartbeat {
                time: Some(prost_types::Timestamp { seconds: 1_764_000_000, nanos: 5 }),
                cursor: "MTQwMmU3OGUyY2JmN2VjODE3".into(),
            })),
        };
        let encoded = EncodedMessage::of(&message);
        assert_eq!(encoded.encoded_len(), message.encoded_len());
        // Framed as the codec frames it, it decodes as the message itself.
        let framed = encoded.encode_to_vec();
        assert_eq!(framed, message.encode_to_vec());
        assert_eq!(pc::WatchPartnerChangeEventsResponse::decode(framed.as_slice()).unwrap(), message);
    }
}
