//! Calling another Partner Hub service. A [`Peer`] is every replica of one
//! service: calls go round-robin over the replicas that answer their health
//! check, and a call that finds its replica gone (`UNAVAILABLE`) is sent again
//! to the next one. Every call is signed as this service and has a deadline.
//! Services reach each other only this way, even in one process.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Request, Status, metadata::AsciiMetadataValue, service::interceptor::InterceptedService, transport::Channel,
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use tower_layer::Layer as _;

use crate::{
    auth::{Subject, TokenKeys},
    rpc::{ClientRpcLayer, Observed},
};

/// A channel to one replica of a peer, with this service's credentials and deadline.
pub type PeerChannel = InterceptedService<Observed<Channel>, PeerCredentials>;

#[derive(Debug, thiserror::Error)]
#[error("invalid peer address {url:?}: {reason}")]
pub struct InvalidPeerUrl {
    url: String,
    reason: String,
}

/// Signs each outgoing call with a short-lived token for this service and sets
/// its deadline (`grpc-timeout`). One token serves every call until shortly
/// before it expires, so the peer verifies it once and then finds it in its
/// cache of verified tokens.
#[derive(Debug, Clone)]
pub struct PeerCredentials {
    keys: Arc<TokenKeys>,
    subject: Subject,
    call_timeout: Duration,
    /// The current `authorization` header and when to mint the next one.
    /// Shared by every replica's channel; a std mutex, held only to copy or
    /// replace the header, never across `.await`.
    current: Arc<Mutex<Option<(AsciiMetadataValue, Instant)>>>,
}

/// How long a token minted for peer calls stays valid.
const PEER_TOKEN_TTL: Duration = Duration::from_secs(300);
/// A token is replaced this long before it expires, so that none expires in
/// flight (a call's deadline is far shorter).
const PEER_TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(60);

impl PeerCredentials {
    fn new(keys: Arc<TokenKeys>, subject: Subject, call_timeout: Duration) -> Self {
        Self { keys, subject, call_timeout, current: Arc::default() }
    }

    /// The header to send now: the current token, or a new one once it is due for renewal.
    fn header(&self) -> Result<AsciiMetadataValue, Status> {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((header, renew_at)) = current.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(header.clone());
        }
        let token = self.keys.mint(&self.subject, PEER_TOKEN_TTL).map_err(|err| {
            tracing::error!(error = %err, "cannot sign a call to a peer service");
            crate::error::internal()
        })?;
        let header: AsciiMetadataValue = format!("Bearer {token}").parse().map_err(|_| crate::error::internal())?;
        *current = Some((header.clone(), Instant::now() + (PEER_TOKEN_TTL - PEER_TOKEN_RENEW_BEFORE)));
        Ok(header)
    }
}

impl tonic::service::Interceptor for PeerCredentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.header()?);
        request.set_timeout(self.call_timeout);
        Ok(request)
    }
}

/// How a service reaches its peers.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    pub keys: Arc<TokenKeys>,
    /// The certificate authority `https://` peers are checked against.
    pub ca: Option<tonic::transport::Certificate>,
    /// The name this service's calls are signed with (`service:<name>`).
    pub caller: String,
    pub call_timeout: Duration,
}

/// Every replica of one peer service.
#[derive(Debug, Clone)]
pub struct Peer {
    replicas: Arc<[Replica]>,
    next: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Replica {
    url: String,
    channel: PeerChannel,
    /// Its last health check (or call) found it answering. Replicas that are
    /// down are tried last, not never: a check can be wrong, and a peer with
    /// every replica down should still be asked.
    up: AtomicBool,
}

impl Peer {
    /// Replicas at `urls` (e.g. `http://10.0.0.5:50051`), connected on first use.
    pub fn new(urls: &[String], options: &PeerOptions) -> Result<Self, InvalidPeerUrl> {
        let credentials =
            PeerCredentials::new(options.keys.clone(), Subject::Service(options.caller.clone()), options.call_timeout);
        let replicas = urls
            .iter()
            .map(|url| {
                let invalid = |reason: String| InvalidPeerUrl { url: url.clone(), reason };
                if url.is_empty() {
                    return Err(invalid("empty".to_owned()));
                }
                let mut endpoint = Channel::from_shared(url.clone()).map_err(|err| invalid(err.to_string()))?;
                if url.starts_with("https://") {
                    let ca = options.ca.clone().ok_or_else(|| {
                        invalid("an https peer needs peers.ca_file (or this server's own TLS certificate)".to_owned())
                    })?;
                    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca);
                    endpoint = endpoint.tls_config(tls).map_err(|err| invalid(err.to_string()))?;
                }
                let channel =
                    endpoint.connect_timeout(options.call_timeout).timeout(options.call_timeout).connect_lazy();
                let channel = InterceptedService::new(ClientRpcLayer.layer(channel), credentials.clone());
                Ok(Replica { url: url.clone(), channel, up: AtomicBool::new(true) })
            })
            .collect::<Result<Arc<[_]>, _>>()?;
        if replicas.is_empty() {
            return Err(InvalidPeerUrl { url: String::new(), reason: "no address given".to_owned() });
        }
        Ok(Self { replicas, next: Arc::new(AtomicUsize::new(0)) })
    }

    /// Makes `call` with `request` on one replica. When that replica is
    /// unreachable (`UNAVAILABLE`, or the connection failed or closed under
    /// the call), it is marked down and the call is made again on the next
    /// one, until every replica has been tried once.
    ///
    /// So a call may reach more than one replica: only idempotent calls may go
    /// through here, and every call between Partner Hub services is.
    pub async fn call<R, T, F, Fut>(&self, request: R, mut call: F) -> Result<T, Status>
    where
        R: Clone,
        F: FnMut(PeerChannel, R) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last_error = None;
        for replica in self.in_call_order() {
            match call(replica.channel.clone(), request.clone()).await {
                Err(status) if unreachable(&status) => {
                    if replica.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(peer = %replica.url, error = %status.message(), "peer replica unreachable; trying the next");
                    }
                    last_error = Some(status);
                }
                // Our own decoder refused the peer's answer: not the peer
                // refusing the call, which may well have taken effect.
                Err(status) if partnerhub_proto::codec::is_undecodable(&status) => {
                    tracing::error!(peer = %replica.url, error = %status.message(), "a peer's response did not decode");
                    return Err(Status::unknown(format!("the peer's response did not decode: {}", status.message())));
                }
                outcome => {
                    replica.up.store(true, Ordering::Relaxed);
                    return outcome;
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Status::unavailable("no peer replica")))
    }

    /// Round-robin from the next replica, those that are up first.
    fn in_call_order(&self) -> impl Iterator<Item = &Replica> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.replicas.len();
        let rotated = (0..count).map(move |offset| &self.replicas[(start + offset) % count]);
        let (up, down): (Vec<_>, Vec<_>) = rotated.partition(|replica| replica.up.load(Ordering::Relaxed));
        up.into_iter().chain(down)
    }

    /// Checks every replica's health each `interval` until `shutdown`: one that
    /// fails (or reports NOT_SERVING while it drains) is tried last until it
    /// answers again. A single replica needs no checks.
    pub async fn watch_health(self, interval: Duration, shutdown: CancellationToken) {
        if self.replicas.len() < 2 {
            return;
        }
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            for replica in self.replicas.iter() {
                let serving = is_serving(replica.channel.clone(), interval).await;
                let was_up = replica.up.swap(serving, Ordering::Relaxed);
                match (was_up, serving) {
                    (true, false) => tracing::warn!(peer = %replica.url, "peer replica failed its health check"),
                    (false, true) => tracing::info!(peer = %replica.url, "peer replica is back"),
                    _ => {}
                }
            }
        }
    }
}

/// Whether a call got no answer from its replica: refused as unavailable, or
/// failed in the transport (a replica that stops closes its connections, and
/// calls on them end as `CANCELLED`).
fn unreachable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || std::error::Error::source(status).is_some_and(|source| source.is::<tonic::transport::Error>())
}

async fn is_serving(channel: PeerChannel, timeout: Duration) -> bool {
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest { service: String::new() });
    matches!(
        tokio::time::timeout(timeout, check).await,
        Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PeerOptions {
        PeerOptions {
            keys: Arc::new(TokenKeys::from_secret(&[7; 32], "test")),
            ca: None,
            caller: "test".to_owned(),
            call_timeout: Duration::from_secs(1),
        }
    }

    fn peer(count: usize) -> Peer {
        let urls: Vec<String> = (0..count).map(|port| format!("http://127.0.0.1:{}", 1000 + port)).collect();
        Peer::new(&urls, &options()).unwrap()
    }

    fn order(peer: &Peer) -> Vec<&str> {
        peer.in_call_order().map(|replica| replica.url.as_str()).collect()
    }

    #[tokio::test]
    async fn calls_go_round_robin_and_replicas_that_are_down_come_last() {
        let peer = peer(3);
        let firsts: Vec<String> = (0..6).map(|_| order(&peer)[0].to_owned()).collect();
        assert_eq!(
            firsts,
            ["http://127.0.0.1:1000", "http://127.0.0.1:1001", "http://127.0.0.1:1002"].repeat(2),
            "each call starts at the next replica"
        );

        peer.replicas[1].up.store(false, Ordering::Relaxed);
        for _ in 0..3 {
            let order = order(&peer);
            assert_eq!(order.len(), 3, "a replica that is down is still tried, last");
            assert_eq!(order[2], "http://127.0.0.1:1001");
        }
    }

    #[tokio::test]
    async fn a_peer_needs_valid_addresses() {
        assert!(Peer::new(&[], &options()).is_err());
        assert!(Peer::new(&[String::new()], &options()).is_err());
        assert!(Peer::new(&["not a url".to_owned()], &options()).is_err());
    }

    #[test]
    fn a_replica_is_unreachable_when_unavailable_or_failed_in_transport() {
        assert!(unreachable(&Status::unavailable("gone")));
        assert!(!unreachable(&Status::cancelled("by the caller")));
        assert!(!unreachable(&Status::not_found("no such WABA")));
    }

    #[test]
    fn one_token_serves_every_call_until_it_is_due_for_renewal() {
        let keys = Arc::new(TokenKeys::from_secret(&[7u8; 32], "partnerhub"));
        let credentials =
            PeerCredentials::new(keys.clone(), Subject::Service("partner-change".to_owned()), Duration::from_secs(5));
        let first = credentials.header().unwrap();
        assert_eq!(credentials.clone().header().unwrap(), first, "clones share the token");
        let token = first.to_str().unwrap().strip_prefix("Bearer ").unwrap();
        assert_eq!(keys.verify(token).unwrap(), Subject::Service("partner-change".to_owned()));
        // Due for renewal: a new token is minted, to be reused until its own renewal time.
        let due = Instant::now();
        credentials.current.lock().unwrap().as_mut().unwrap().1 = due;
        credentials.header().unwrap();
        let renew_at = credentials.current.lock().unwrap().as_ref().unwrap().1;
        assert!(renew_at >= due + (PEER_TOKEN_TTL - PEER_TOKEN_RENEW_BEFORE), "a new token was minted");
    }
}
