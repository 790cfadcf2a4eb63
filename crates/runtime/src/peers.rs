//! Calling another Partner Hub service: a lazily connected channel per peer,
//! and an interceptor that signs every outgoing call as this service and gives
//! it a deadline. Services reach each other only this way, even in one process.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Status, service::interceptor::InterceptedService, transport::Channel};

use crate::auth::{Subject, TokenKeys};

/// A channel to a peer service with this service's credentials and deadline.
pub type PeerChannel = InterceptedService<Channel, PeerCredentials>;

#[derive(Debug, thiserror::Error)]
#[error("invalid peer address {url:?}: {reason}")]
pub struct InvalidPeerUrl {
    url: String,
    reason: String,
}

/// Signs each outgoing call with a short-lived token for this service and sets
/// its deadline (`grpc-timeout`).
#[derive(Debug, Clone)]
pub struct PeerCredentials {
    keys: Arc<TokenKeys>,
    subject: Subject,
    call_timeout: Duration,
}

/// How long a token minted for one outgoing call stays valid; minting is one
/// HMAC, so every call gets a fresh one and none expires in flight.
const PEER_TOKEN_TTL: Duration = Duration::from_secs(300);

impl tonic::service::Interceptor for PeerCredentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let token = self.keys.mint(&self.subject, PEER_TOKEN_TTL).map_err(|err| {
            tracing::error!(error = %err, "cannot sign a call to a peer service");
            crate::error::internal()
        })?;
        let header = format!("Bearer {token}").parse().map_err(|_| crate::error::internal())?;
        request.metadata_mut().insert("authorization", header);
        request.set_timeout(self.call_timeout);
        Ok(request)
    }
}

/// A channel to `url` (e.g. `http://127.0.0.1:50051`), connected on first use,
/// whose calls carry `service:<service_name>` credentials and `call_timeout`.
pub fn connect(
    url: &str,
    keys: Arc<TokenKeys>,
    service_name: &str,
    call_timeout: Duration,
) -> Result<PeerChannel, InvalidPeerUrl> {
    let invalid = |reason: String| InvalidPeerUrl { url: url.to_owned(), reason };
    let channel = Channel::from_shared(url.to_owned())
        .map_err(|err| invalid(err.to_string()))?
        .connect_timeout(call_timeout)
        .timeout(call_timeout)
        .connect_lazy();
    let credentials = PeerCredentials { keys, subject: Subject::Service(service_name.to_owned()), call_timeout };
    Ok(InterceptedService::new(channel, credentials))
}

/// Whether a failed call to a peer may succeed if tried again later.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::ResourceExhausted
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}
