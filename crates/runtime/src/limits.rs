//! Request size limits. Each service decodes at most `server.max_message_bytes`;
//! tonic refuses a larger message with `OUT_OF_RANGE` before any handler runs.
//! Partner Hub promises `INVALID_ARGUMENT` for malformed input, oversized
//! messages included, so this layer rewrites exactly that refusal.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Code, body::Body};

use crate::error::{ErrorReason, status};

/// Wraps the whole server; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct OversizedMessageLayer {
    pub max_message_bytes: usize,
}

impl<S> tower_layer::Layer<S> for OversizedMessageLayer {
    type Service = OversizedMessage<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizedMessage { inner, max_message_bytes: self.max_message_bytes }
    }
}

#[derive(Debug, Clone)]
pub struct OversizedMessage<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S, RequestBody> tower_service::Service<http::Request<RequestBody>> for OversizedMessage<S>
where
    S: tower_service::Service<http::Request<RequestBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let response = self.inner.call(request);
        let max_message_bytes = self.max_message_bytes;
        Box::pin(async move {
            let response = response.await?;
            if !is_oversized_refusal(&response) {
                return Ok(response);
            }
            let limit = max_message_bytes.to_string();
            let refusal = status(
                Code::InvalidArgument,
                ErrorReason::MessageTooLarge,
                format!("the request message is larger than the limit of {limit} bytes"),
                [("maxMessageBytes", limit.as_str())],
            );
            Ok(refusal.into_http())
        })
    }
}

/// tonic's own refusal of a message over the decoding limit: a trailers-only
/// `OUT_OF_RANGE` whose message says the length is too large.
fn is_oversized_refusal(response: &http::Response<Body>) -> bool {
    let header = |name| response.headers().get(name).and_then(|value| value.to_str().ok());
    header("grpc-status") == Some("11")
        && header("grpc-message").is_some_and(|message| {
            let message = message.replace("%20", " ");
            message.contains("message length too large")
        })
}
