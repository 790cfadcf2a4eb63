//! The request's framing, checked before tonic sees it. Every Partner Hub
//! RPC takes exactly one request message, so for the Partner Hub services
//! (not health or reflection, which stream) this layer reads the whole request
//! body — at most `server.max_message_bytes` plus the 5-byte frame header —
//! and refuses, as `INVALID_ARGUMENT` with an `ErrorInfo`, what is the
//! caller's mistake and what tonic would otherwise answer `INTERNAL` or
//! `OUT_OF_RANGE`:
//!
//! - a `content-type` that is not gRPC's;
//! - no message, a message cut short, or a second message;
//! - a compressed-flag without a `grpc-encoding`, or a flag that is neither 0 nor 1;
//! - a message longer than the limit (`MESSAGE_TOO_LARGE`, as soon as its
//!   header says so, without reading it).
//!
//! A message whose bytes do not decode is refused by the generated code's
//! codec (`partnerhub_proto::codec`), which knows the message type.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tonic::{Code, Status, body::Body};

use crate::error::{ErrorReason, FieldViolation, invalid_argument, status};

/// The paths this layer checks: the Partner Hub services' methods.
const CHECKED_PATHS: &str = "/partnerhub.";
/// gRPC's frame header: a compressed-flag byte and a 4-byte big-endian length.
const FRAME_HEADER_BYTES: usize = 5;

/// Wraps the whole server; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct RequestFramingLayer {
    pub max_message_bytes: usize,
}

impl<S> tower_layer::Layer<S> for RequestFramingLayer {
    type Service = RequestFraming<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestFraming { inner, max_message_bytes: self.max_message_bytes }
    }
}

#[derive(Debug, Clone)]
pub struct RequestFraming<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S> tower_service::Service<http::Request<Body>> for RequestFraming<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !request.uri().path().starts_with(CHECKED_PATHS) {
            return Box::pin(self.inner.call(request));
        }
        // The clone is the one that was made ready; keep it, leave a fresh one (tower's idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max_message_bytes = self.max_message_bytes;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let compressed_allowed = parts.headers.contains_key("grpc-encoding");
            let checked = match grpc_content_type(&parts.headers) {
                Err(refusal) => Err(refusal),
                Ok(()) => read_one_message(body, max_message_bytes, compressed_allowed).await,
            };
            match checked {
                Ok(message) => {
                    inner.call(http::Request::from_parts(parts, Body::new(http_body_util::Full::new(message)))).await
                }
                Err(refusal) => Ok(refusal.into_http()),
            }
        })
    }
}

/// `application/grpc`, with or without a `+proto` (or other) suffix.
fn grpc_content_type(headers: &http::HeaderMap) -> Result<(), Status> {
    let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence == "application/grpc" || essence.starts_with("application/grpc+") {
        Ok(())
    } else {
        Err(invalid_argument(&[FieldViolation::new(
            "content-type",
            format!("must be application/grpc, not {content_type:?}"),
        )]))
    }
}

/// The request body, if it is exactly one well-framed message no longer than
/// `max_message_bytes`.
async fn read_one_message(mut body: Body, max_message_bytes: usize, compressed_allowed: bool) -> Result<Bytes, Status> {
    let mut received = Received::default();
    let mut expected: Option<usize> = None;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|status| malformed(format!("the request body could not be read: {}", status.message())))?;
        let Ok(data) = frame.into_data() else { continue }; // trailers: nothing to check
        received.push(data);
        let bytes = received.as_slice();
        if expected.is_none() && bytes.len() >= FRAME_HEADER_BYTES {
            expected = Some(FRAME_HEADER_BYTES + message_length(bytes, max_message_bytes, compressed_allowed)?);
        }
        if let Some(expected) = expected
            && bytes.len() > expected
        {
            return Err(malformed("the request has more than one message; this call takes exactly one"));
        }
    }
    let length = received.as_slice().len();
    match expected {
        None if length == 0 => Err(malformed("the request has no message")),
        None => Err(malformed("the request's frame header is cut short")),
        Some(expected) if length < expected => Err(malformed(format!(
            "the request message is cut short: {} of {} bytes",
            length - FRAME_HEADER_BYTES,
            expected - FRAME_HEADER_BYTES
        ))),
        Some(_) => Ok(received.into_bytes()),
    }
}

/// The body's bytes so far: the first chunk as it came (a small request
/// arrives in one, and is passed on without a copy), joined only once a
/// second one arrives.
#[derive(Default)]
struct Received {
    first: Bytes,
    joined: Option<BytesMut>,
}

impl Received {
    fn push(&mut self, data: Bytes) {
        match &mut self.joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if self.first.is_empty() => self.first = data,
            None => {
                let mut joined = BytesMut::from(&self.first[..]);
                joined.extend_from_slice(&data);
                self.joined = Some(joined);
            }
        }
    }

    fn as_slice(&self) -> &[u8] {
        self.joined.as_deref().unwrap_or(&self.first)
    }

    fn into_bytes(self) -> Bytes {
        self.joined.map_or(self.first, BytesMut::freeze)
    }
}

/// The message length a frame header declares, if the header is acceptable.
fn message_length(header: &[u8], max_message_bytes: usize, compressed_allowed: bool) -> Result<usize, Status> {
    let mut header = &header[..FRAME_HEADER_BYTES];
    match header.get_u8() {
        0 => {}
        1 if compressed_allowed => {}
        1 => return Err(malformed("the message is flagged compressed, but the request names no grpc-encoding")),
        flag => return Err(malformed(format!("the message's compressed-flag is {flag}; it must be 0 or 1"))),
    }
    let length = header.get_u32() as usize;
    if length > max_message_bytes {
        let limit = max_message_bytes.to_string();
        return Err(status(
            Code::InvalidArgument,
            ErrorReason::MessageTooLarge,
            format!("the request message is {length} bytes, more than the limit of {limit} bytes"),
            [("maxMessageBytes", limit.as_str())],
        ));
    }
    Ok(length)
}

/// A framing error: the request as a whole is not acceptable.
fn malformed(problem: impl Into<String>) -> Status {
    status(Code::InvalidArgument, ErrorReason::InvalidRequest, problem, [])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &[u8]) -> Body {
        Body::new(http_body_util::Full::new(Bytes::copy_from_slice(bytes)))
    }

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut framed = vec![flag];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        framed
    }

    async fn check(bytes: &[u8], compressed_allowed: bool) -> Result<Bytes, Status> {
        read_one_message(body(bytes), 1024, compressed_allowed).await
    }

    #[tokio::test]
    async fn exactly_one_whole_message_passes() {
        let request = framed(0, b"\x0a\x03abc");
        assert_eq!(check(&request, false).await.unwrap(), Bytes::from(request.clone()));
        assert!(check(&framed(0, b""), false).await.is_ok(), "an empty message is a message");
        assert!(check(&framed(1, b"xyz"), true).await.is_ok(), "compressed, with an encoding: tonic decides");
    }

    #[tokio::test]
    async fn every_framing_mistake_is_invalid_argument() {
        let mut two = framed(0, b"a");
        two.extend(framed(0, b"b"));
        let mut cut = framed(0, b"abcdef");
        cut.truncate(8);
        let cases: [(&str, Vec<u8>, bool); 6] = [
            ("no message", Vec::new(), false),
            ("header cut short", vec![0, 0], false),
            ("message cut short", cut, false),
            ("two messages", two, false),
            ("compressed without an encoding", framed(1, b"abc"), false),
            ("an unknown flag", framed(7, b"abc"), true),
        ];
        for (what, bytes, compressed_allowed) in cases {
            let refused = check(&bytes, compressed_allowed).await.expect_err(what);
            assert_eq!(refused.code(), Code::InvalidArgument, "{what}");
            assert_eq!(crate::error::reason_of(&refused).as_deref(), Some("INVALID_REQUEST"), "{what}");
        }
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_from_its_header() {
        let mut header = vec![0];
        header.extend_from_slice(&2048_u32.to_be_bytes());
        let refused = check(&header, false).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(crate::error::reason_of(&refused).as_deref(), Some("MESSAGE_TOO_LARGE"));
    }

    #[test]
    fn only_grpc_content_types_pass() {
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            grpc_content_type(&headers)
        };
        assert!(with("application/grpc").is_ok());
        assert!(with("application/grpc+proto").is_ok());
        assert!(with("application/json").is_err());
        assert!(grpc_content_type(&http::HeaderMap::new()).is_err());
    }
}
