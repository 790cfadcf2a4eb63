//! The codec of every generated client and server (the one hand-written part
//! of this crate): prost's, except for a message that does not decode. tonic's
//! prost codec answers that with `INTERNAL`, but undecodable request bytes are
//! the caller's mistake, so here they are `INVALID_ARGUMENT` with the details
//! every Partner Hub refusal of malformed input carries: `ErrorInfo` with
//! reason `INVALID_REQUEST`, and a `BadRequest` naming the field when prost
//! knows it (its error records the path of message fields it was decoding).
//!
//! The status keeps the [`prost::DecodeError`] as its source. A client that
//! fails to decode a peer's *response* gets the same status, but from its own
//! decoder rather than from the peer; [`is_undecodable`] tells the two apart.

use std::{collections::HashMap, marker::PhantomData, sync::Arc};

use prost::{DecodeError, Message};
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Partner Hub error.
pub const ERROR_DOMAIN: &str = "partnerhub";
/// The `ErrorInfo.reason` of malformed input.
pub const INVALID_REQUEST: &str = "INVALID_REQUEST";

/// prost's codec with undecodable messages refused as `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct PartnerhubCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for PartnerhubCodec<T, U> {
    fn default() -> Self {
        Self { inner: ProstCodec::default() }
    }
}

impl<T, U> Codec for PartnerhubCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder { _message: PhantomData }
    }
}

/// Decodes `U`, refusing bytes that are not one as `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct MessageDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(undecodable)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The refusal of a message that does not decode.
pub fn undecodable(error: DecodeError) -> Status {
    let (field, problem) = field_and_problem(&error);
    let message = match &field {
        Some(field) => format!("{field}: {problem}"),
        None => format!("the request message does not decode: {problem}"),
    };
    let mut details = ErrorDetails::with_error_info(INVALID_REQUEST, ERROR_DOMAIN, HashMap::new());
    if let Some(field) = &field {
        details.add_bad_request_violation(field, format!("does not decode: {problem}"));
    }
    let mut status = Status::with_error_details(tonic::Code::InvalidArgument, message, details);
    status.set_source(Arc::new(error));
    status
}

/// True when `status` came from this side's own decoder (a peer's response
/// that did not decode), not from the peer.
pub fn is_undecodable(status: &Status) -> bool {
    std::error::Error::source(status).is_some_and(|source| source.is::<DecodeError>())
}

/// The path of the field prost was decoding (`settings.terms_version`), if it
/// knows one, and what was wrong. prost records the fields innermost first and
/// shows each as `Message.field: ` before the problem; that is the only way it
/// tells them.
fn field_and_problem(error: &DecodeError) -> (Option<String>, String) {
    let text = error.to_string();
    let rest = text.strip_prefix("failed to decode Protobuf message: ").unwrap_or(&text);
    let mut fields = Vec::new();
    let mut problem = rest;
    while let Some((segment, after)) = problem.split_once(": ") {
        let Some((message, field)) = segment.split_once('.') else { break };
        if !is_identifier(message) || !is_identifier(field) {
            break;
        }
        fields.push(field);
        problem = after;
    }
    fields.reverse();
    let field = (!fields.is_empty()).then(|| fields.join("."));
    (field, problem.to_owned())
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::v1::{PartnerSettings, UpdatePartnerSettingsRequest};

    #[test]
    fn an_undecodable_nested_field_is_named_by_its_path() {
        // settings (field 2) holding terms_version (field 3) with invalid UTF-8.
        let bytes = [0x12, 0x04, 0x1a, 0x02, 0xff, 0xfe];
        let error = UpdatePartnerSettingsRequest::decode(&bytes[..]).unwrap_err();
        let status = undecodable(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = status.get_error_details();
        assert_eq!(details.error_info().map(|info| info.reason.as_str()), Some(INVALID_REQUEST));
        let fields: Vec<String> = details
            .bad_request()
            .map(|bad| bad.field_violations.iter().map(|violation| violation.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["settings.terms_version"], "{status:?}");
        assert!(is_undecodable(&status));
        assert!(!is_undecodable(&Status::invalid_argument("from a peer")));
        // A well-formed message still decodes.
        let good = UpdatePartnerSettingsRequest {
            settings: Some(PartnerSettings { terms_version: "v1".to_owned(), ..Default::default() }),
            ..Default::default()
        };
        assert!(UpdatePartnerSettingsRequest::decode(good.encode_to_vec().as_slice()).is_ok());
    }

    #[test]
    fn bytes_that_are_no_message_at_all_are_refused_without_a_field() {
        let error = UpdatePartnerSettingsRequest::decode(&[0xff, 0xff, 0xff][..]).unwrap_err();
        let status = undecodable(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.get_error_details().bad_request().is_none(), "{status:?}");
        assert!(status.message().starts_with("the request message does not decode"), "{}", status.message());
    }
}
