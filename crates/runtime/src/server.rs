//! The gRPC host every process runs: the services it was given, plus the
//! standard health service and reflection (v1 and v1alpha, so every grpcurl
//! version works), served until the shutdown token is cancelled.

use std::net::SocketAddr;

use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, service::RoutesBuilder};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::ServerSettings,
    connections::{ConnectionLimits, GuardedIncoming},
    framing::RequestFramingLayer,
    rpc::ServerRpcLayer,
};

/// Routes under construction, with the health reporter that tracks them.
pub struct Host {
    routes: RoutesBuilder,
    settings: ServerSettings,
    /// The certificate and key, when the host serves TLS.
    tls: Option<tonic::transport::ServerTlsConfig>,
    health: HealthReporter,
    service_names: Vec<&'static str>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("service_names", &self.service_names).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot read {path}: {source}")]
    Tls { path: std::path::PathBuf, source: std::io::Error },
}

/// Reads a PEM file named in the settings.
pub fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::Tls { path: path.to_owned(), source })
}

impl Host {
    /// Health and reflection, with no Partner Hub service yet. Services added
    /// later must limit their decoding to `settings.max_message_bytes` too.
    pub fn new(settings: &ServerSettings) -> Result<Self, ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // Besides our APIs: health, reflection itself, and google.rpc error
        // details, so that grpcurl can decode every message it is sent.
        let descriptor_sets = [
            partnerhub_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            tonic_types::pb::FILE_DESCRIPTOR_SET,
        ];
        let reflection = || {
            descriptor_sets.iter().fold(tonic_reflection::server::Builder::configure(), |builder, set| {
                builder.register_encoded_file_descriptor_set(set)
            })
        };
        let mut routes = RoutesBuilder::default();
        routes
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
        let tls = match (&settings.tls.cert_file, &settings.tls.key_file) {
            (Some(cert), Some(key)) => {
                let identity = tonic::transport::Identity::from_pem(read_pem(cert)?, read_pem(key)?);
                Some(tonic::transport::ServerTlsConfig::new().identity(identity))
            }
            _ => None,
        };
        Ok(Self { routes, settings: settings.clone(), tls, health, service_names: Vec::new() })
    }

    /// Adds a service; it reports SERVING once the host serves.
    pub fn add_service<S: Servable>(&mut self, service: S) -> &mut Self {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Serves on `listener` until `shutdown` is cancelled, then stops accepting,
    /// reports NOT_SERVING and lets in-flight calls finish. While `ready` is
    /// false (the database does not answer), every served service reports
    /// NOT_SERVING and the whole server ("", for liveness) still SERVING.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
        mut ready: watch::Receiver<bool>,
    ) -> Result<(), ServeError> {
        let Host { routes, settings, tls, health, service_names } = self;
        health.set_service_status("", ServingStatus::Serving).await;
        let initially = serving_if(*ready.borrow_and_update());
        set_services_status(&health, &service_names, initially).await;
        let drained = {
            let health = health.clone();
            let service_names = service_names.clone();
            async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        changed = ready.changed() => match changed {
                            Ok(()) => {
                                let is_ready = *ready.borrow_and_update();
                                let status = serving_if(is_ready);
                                tracing::info!(?status, "the served services' readiness changed");
                                set_services_status(&health, &service_names, status).await;
                            }
                            // Nobody reports readiness any more: keep the last status until shutdown.
                            Err(_) => {
                                shutdown.cancelled().await;
                                break;
                            }
                        },
                    }
                }
                health.set_service_status("", ServingStatus::NotServing).await;
                set_services_status(&health, &service_names, ServingStatus::NotServing).await;
            }
        };
        let limits = ConnectionLimits {
            max_connections: settings.max_connections,
            preface_timeout: settings.preface_timeout,
            tcp_keepalive: settings.tcp_keepalive,
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        builder
            .max_concurrent_streams(settings.max_concurrent_streams)
            .http2_keepalive_interval(Some(settings.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(settings.http2_keepalive_timeout))
            // gRPC-Web from browsers comes over HTTP/1.1; gRPC needs HTTP/2 and gets it.
            .accept_http1(true)
            // No origins, no CORS handling at all (nothing for browsers to be told).
            .layer(tower::util::option_layer(
                (!settings.grpc_web_cors_origins.0.is_empty()).then(|| cors(&settings.grpc_web_cors_origins.0)),
            ))
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(ServerRpcLayer)
            .layer(RequestFramingLayer { max_message_bytes: settings.max_message_bytes })
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(GuardedIncoming::new(listener, limits), drained)
            .await?;
        Ok(())
    }
}

/// Which web pages' scripts may call (CORS, for gRPC-Web from browsers): the
/// configured origins, with the headers gRPC-Web sends and reads.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use http::{HeaderName, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<http::HeaderValue> = origins.iter().filter_map(|origin| origin.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// What the host can serve: a generated server (behind its gate), named for
/// routing and health.
pub trait Servable:
    tower_service::Service<
        http::Request<tonic::body::Body>,
        Error = std::convert::Infallible,
        Response: axum::response::IntoResponse,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Servable for S where
    S: tower_service::Service<
            http::Request<tonic::body::Body>,
            Error = std::convert::Infallible,
            Response: axum::response::IntoResponse,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// Each served service's status ("" is the whole server, set apart: it is the
/// liveness that a database outage does not change).
async fn set_services_status(health: &HealthReporter, service_names: &[&str], status: ServingStatus) {
    for name in service_names {
        health.set_service_status(*name, status).await;
    }
}

fn serving_if(ready: bool) -> ServingStatus {
    if ready { ServingStatus::Serving } else { ServingStatus::NotServing }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
