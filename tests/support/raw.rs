//! gRPC calls with bytes and headers chosen by the test, not by a generated
//! client: what a broken or hostile client sends.

use std::{future::poll_fn, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use tonic::{Status, body::Body, transport::Channel};
use tower_service::Service;

/// Every Partner Hub method's path (`/partnerhub.account.v1.AccountService/GetWaba`)
/// and its input message type, read from the descriptors the server serves.
pub fn partnerhub_methods() -> Vec<(String, prost_types::DescriptorProto)> {
    let set = prost_types::FileDescriptorSet::decode(partnerhub_proto::FILE_DESCRIPTOR_SET).unwrap();
    let messages: Vec<(String, prost_types::DescriptorProto)> = set
        .file
        .iter()
        .flat_map(|file| {
            file.message_type
                .iter()
                .map(move |message| (format!(".{}.{}", file.package(), message.name()), message.clone()))
        })
        .collect();
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                let input = messages.iter().find(|(name, _)| name == method.input_type()).unwrap().1.clone();
                methods.push((path, input));
            }
        }
    }
    methods
}

/// `message` in a gRPC frame: a compressed-flag byte, the length, the bytes.
pub fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut framed = vec![flag];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// Sends `body` to `path` with gRPC's headers, `token`, and `headers` on top
/// (a header given there replaces gRPC's), and returns the status the call
/// ended with (`OK` included).
pub async fn call(channel: &Channel, path: &str, token: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Status {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://partnerhub{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().unwrap().insert(name, value.parse().unwrap());
    }
    let request = request.body(Body::new(Full::new(Bytes::from(body)))).unwrap();
    let mut channel = channel.clone();
    poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), channel.call(request))
        .await
        .expect("the server answers within 10 s")
        .expect("the server answers the HTTP request");
    if let Some(status) = Status::from_header_map(response.headers()) {
        return status;
    }
    // A stream stays open: a message, or silence (an idle stream), says it was accepted.
    let mut body = response.into_body();
    loop {
        let frame = match tokio::time::timeout(Duration::from_secs(2), body.frame()).await {
            Ok(Some(frame)) => frame.expect("the response body is readable"),
            Ok(None) => panic!("a gRPC response ended without a grpc-status"),
            Err(_) => return Status::ok("the stream is open"),
        };
        match frame.into_trailers() {
            Ok(trailers) => return Status::from_header_map(&trailers).expect("the trailers carry a grpc-status"),
            Err(frame) if frame.is_data() => return Status::ok("a message arrived"),
            Err(_) => {}
        }
    }
}

/// A call that crosses services: partner-change's `PreviewPartnerChange` of a
/// WABA that does not exist, which it learns by asking the account service
/// (so `NOT_FOUND` means the call between the services went through).
pub const PREVIEW: &str = "/partnerhub.partnerchange.v1.PartnerChangeService/PreviewPartnerChange";

/// The request for [`PREVIEW`]: WABA `waba-not-there`, destination `partner-somebody`.
pub fn preview_of_a_missing_waba() -> Vec<u8> {
    framed(0, b"\x0a\x0ewaba-not-there\x12\x10partner-somebody")
}
