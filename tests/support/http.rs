//! A small HTTP/1.1 server standing in for the web servers Partner Hub calls:
//! an identity provider serving its key set (over HTTPS with a generated
//! certificate), a partner's webhook receiver. Every request is counted and
//! answered by the test's handler; dropping the server closes its port.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};

/// A request as the handler sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: http::Method,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// What the handler answers: a status and a body. A redirection (3xx) is
/// answered with the body as its `location` instead.
pub type Answer = (http::StatusCode, String);

type Handler = Arc<dyn Fn(Received) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// A certificate for `localhost` and `127.0.0.1`, made for one test.
#[derive(Clone)]
pub struct TestCertificate {
    /// PEM, to be trusted by the client.
    pub pem: String,
    der: CertificateDer<'static>,
    key: Vec<u8>,
}

impl TestCertificate {
    pub fn generate() -> Self {
        let certified = rcgen::generate_simple_self_signed(["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        Self { pem: certified.cert.pem(), der: certified.cert.der().clone(), key: certified.key_pair.serialize_der() }
    }
}

pub struct HttpServer {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:<port>` or `http://…`, without a trailing slash.
    pub base_url: String,
    requests: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Serves plain HTTP, or HTTPS with `certificate`, answering with `handler`.
    pub async fn start<F, Fut>(certificate: Option<&TestCertificate>, handler: F) -> Self
    where
        F: Fn(Received) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        Self::start_on("127.0.0.1:0", certificate, handler).await
    }

    /// Like [`HttpServer::start`], on `addr` (a port that was down, come back).
    pub async fn start_on<F, Fut>(addr: &str, certificate: Option<&TestCertificate>, handler: F) -> Self
    where
        F: Fn(Received) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |received| Box::pin(handler(received)));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = certificate.map(|certificate| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![certificate.der.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certificate.key.clone())),
                )
                .unwrap();
            TlsAcceptor::from(Arc::new(config))
        });
        let base_url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
        let requests = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let requests = requests.clone();
            async move {
                // Connections end with the server: dropping the set aborts them.
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (handler, requests, tls) = (handler.clone(), requests.clone(), tls.clone());
                    connections.spawn(async move {
                        let service =
                            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                                let (handler, requests) = (handler.clone(), requests.clone());
                                async move {
                                    requests.fetch_add(1, Ordering::SeqCst);
                                    let (parts, body) = request.into_parts();
                                    let body = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                                    let received = Received {
                                        method: parts.method,
                                        path: parts.uri.path().to_owned(),
                                        headers: parts.headers,
                                        body,
                                    };
                                    let (status, body) = handler(received).await;
                                    let mut response = if status.is_redirection() {
                                        let mut response = http::Response::new(Full::new(Bytes::new()));
                                        if let Ok(location) = http::HeaderValue::from_str(&body) {
                                            response.headers_mut().insert(http::header::LOCATION, location);
                                        }
                                        response
                                    } else {
                                        http::Response::new(Full::new(Bytes::from(body)))
                                    };
                                    *response.status_mut() = status;
                                    Ok::<_, std::convert::Infallible>(response)
                                }
                            });
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                                }
                            }
                            None => {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    });
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        Self { addr, base_url, requests, accept }
    }

    /// How many requests arrived so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
