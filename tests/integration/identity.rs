//! Tokens from an identity provider: ES256, verified with the key of a JWK Set
//! file that the token's `kid` names, with the audience checked; keys rotate
//! without a restart (during the overlap both are accepted, a removed one is
//! refused, also for a token verified before). The deployment's own HS256 key
//! then speaks only for services, and the calls between the services go on.
//!
//! The same over HTTPS (`auth.jwks_url`), from a stand-in provider with a
//! generated certificate: an unknown `kid` fetches the set at once, requests
//! waiting on one fetch share it, made-up `kid`s cannot make us fetch more
//! than once per `auth.jwks_min_fetch_interval`, a removed key is refused
//! after the next refresh, and a provider that is down leaves the keys
//! fetched before in use and answers `UNAVAILABLE` for the ones it would have to fetch.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::{SecretKey, elliptic_curve::sec1::ToEncodedPoint, pkcs8::EncodePrivateKey};
use partnerhub_tests::{
    Backend, TestApp, eventually,
    http::{HttpServer, TestCertificate},
    raw::{PREVIEW, call, preview_of_a_missing_waba},
};
use tonic::Code;

const AUDIENCE: &str = "partnerhub-api";

/// A signing key of the stand-in identity provider.
struct ProviderKey {
    kid: &'static str,
    secret: SecretKey,
}

impl ProviderKey {
    fn generate(kid: &'static str) -> Self {
        let bytes = [*uuid::Uuid::new_v4().as_bytes(), *uuid::Uuid::new_v4().as_bytes()].concat();
        Self { kid, secret: SecretKey::from_slice(&bytes).unwrap() }
    }

    fn jwk(&self) -> serde_json::Value {
        let point = self.secret.public_key().to_encoded_point(false);
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        })
    }

    fn token(&self, subject: &str, audience: &str) -> String {
        self.token_naming(self.kid, subject, audience)
    }

    /// A token signed with this key whose header names `kid`.
    fn token_naming(&self, kid: &str, subject: &str, audience: &str) -> String {
        let pem = self.secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims =
            serde_json::json!({ "sub": subject, "iss": "partnerhub", "aud": audience, "iat": now, "exp": now + 600 });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()).unwrap()
    }
}

fn key_set(keys: &[&ProviderKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() }).to_string()
}

fn publish(path: &std::path::Path, keys: &[&ProviderKey]) {
    // Written whole, then renamed: a reader never sees half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, key_set(keys)).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

#[tokio::test]
async fn identity_provider_tokens_are_verified_by_kid_across_a_key_rotation() {
    let dir = std::env::temp_dir().join(format!("partnerhub-idp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    let (old, new) = (ProviderKey::generate("2026-11"), ProviderKey::generate("2026-12"));
    publish(&jwks, &[&old]);
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.auth.jwks_file = Some(jwks.clone());
        settings.auth.audience = Some(AUDIENCE.to_owned());
        settings.auth.jwks_check_interval = Duration::from_millis(100);
    })
    .await;
    let channel = app.channel_without_token();
    // A preview of a missing WABA: partner-change asks the account service
    // (a call signed with the deployment's HS256 key) and answers NOT_FOUND.
    let (preview, request) = (PREVIEW, preview_of_a_missing_waba());
    let answer = |token: String| {
        let (channel, request) = (channel.clone(), request.clone());
        async move { call(&channel, preview, &token, &[], request).await.code() }
    };

    let old_token = old.token("support:alice", AUDIENCE);
    assert_eq!(answer(old_token.clone()).await, Code::NotFound, "the provider's token, and the peer call behind it");
    assert_eq!(answer(old.token("support:alice", "another-api")).await, Code::Unauthenticated, "another audience");
    assert_eq!(
        answer(app.token("support:alice")).await,
        Code::Unauthenticated,
        "the shared key no longer speaks for people"
    );
    assert_eq!(answer(new.token("support:alice", AUDIENCE)).await, Code::Unauthenticated, "not published yet");

    // Rotation: both keys during the overlap (an unknown kid rereads the set at once)…
    publish(&jwks, &[&old, &new]);
    assert_eq!(answer(new.token("support:alice", AUDIENCE)).await, Code::NotFound);
    assert_eq!(answer(old_token.clone()).await, Code::NotFound);
    // …then the old one is gone, also for a token verified while it was there.
    publish(&jwks, &[&new]);
    eventually("the removed key to be refused", Duration::from_secs(10), || {
        let answer = answer(old_token.clone());
        async move { (answer.await == Code::Unauthenticated).then_some(()) }
    })
    .await;
    assert_eq!(answer(new.token("support:alice", AUDIENCE)).await, Code::NotFound);
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

type Pending<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// A stand-in identity provider serving its key set over HTTPS, optionally slowly.
struct ServedKeySet {
    server: HttpServer,
    document: Arc<Mutex<String>>,
    ca_file: std::path::PathBuf,
}

impl ServedKeySet {
    async fn start(keys: &[&ProviderKey], delay: Duration) -> Self {
        let certificate = TestCertificate::generate();
        let ca_file = std::env::temp_dir().join(format!("partnerhub-idp-ca-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&ca_file, &certificate.pem).unwrap();
        let document = Arc::new(Mutex::new(key_set(keys)));
        let server = HttpServer::start(Some(&certificate), {
            let document = document.clone();
            move |received| {
                let document = document.lock().unwrap().clone();
                async move {
                    tokio::time::sleep(delay).await;
                    match received.path.as_str() {
                        "/.well-known/jwks.json" => (http::StatusCode::OK, document),
                        _ => (http::StatusCode::NOT_FOUND, String::new()),
                    }
                }
            }
        })
        .await;
        Self { server, document, ca_file }
    }

    fn publish(&self, keys: &[&ProviderKey]) {
        *self.document.lock().unwrap() = key_set(keys);
    }

    fn url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.server.base_url)
    }

    async fn serve(
        &self,
        refresh: Duration,
        min_fetch_interval: Duration,
    ) -> (TestApp, impl Fn(String) -> Pending<tonic::Status> + use<>) {
        let (url, ca_file) = (self.url(), self.ca_file.clone());
        let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
            settings.auth.jwks_url = Some(url);
            settings.auth.jwks_ca_file = Some(ca_file);
            settings.auth.audience = Some(AUDIENCE.to_owned());
            settings.auth.jwks_refresh_interval = refresh;
            settings.auth.jwks_min_fetch_interval = min_fetch_interval;
        })
        .await;
        let channel = app.channel_without_token();
        let answer = move |token: String| {
            let channel = channel.clone();
            Box::pin(async move { call(&channel, PREVIEW, &token, &[], preview_of_a_missing_waba()).await })
                as Pending<tonic::Status>
        };
        (app, answer)
    }
}

impl Drop for ServedKeySet {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

#[tokio::test]
async fn a_served_key_set_is_fetched_for_an_unknown_kid_once_for_all_who_wait_and_outlives_its_provider() {
    let (old, new, newest) =
        (ProviderKey::generate("2026-11"), ProviderKey::generate("2026-12"), ProviderKey::generate("2027-01"));
    let provider = ServedKeySet::start(&[&old], Duration::from_millis(300)).await;
    // No background refresh during the test: every fetch below is one a token asked for.
    let (app, answer) = provider.serve(Duration::from_secs(3600), Duration::from_millis(1)).await;
    assert_eq!(provider.server.requests(), 1, "the set is fetched at start");

    assert_eq!(answer(old.token("support:alice", AUDIENCE)).await.code(), Code::NotFound);
    assert_eq!(answer(old.token("support:alice", "another-api")).await.code(), Code::Unauthenticated);
    assert_eq!(
        answer(app.token("support:alice")).await.code(),
        Code::Unauthenticated,
        "the shared key is for services"
    );
    assert_eq!(provider.server.requests(), 1, "a known kid fetches nothing");

    // Twenty callers present a key not published yet at the same moment,
    // while the provider takes 300 ms to answer: one fetch serves them all.
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..20 {
        calls.spawn(answer(new.token(&format!("support:user-{n}"), AUDIENCE)));
    }
    let answers = calls.join_all().await;
    assert!(answers.iter().all(|status| status.code() == Code::Unauthenticated), "{answers:?}");
    let fetches = provider.server.requests() - 1;
    assert!((1..=2).contains(&fetches), "20 waiting requests made {fetches} fetches");

    // Published: the next token naming it fetches the set at once.
    provider.publish(&[&old, &new]);
    let before = provider.server.requests();
    assert_eq!(answer(new.token("support:alice", AUDIENCE)).await.code(), Code::NotFound);
    assert_eq!(provider.server.requests(), before + 1);
    assert_eq!(answer(old.token("support:alice", AUDIENCE)).await.code(), Code::NotFound, "both keys in the overlap");

    // The provider goes down: the keys fetched before still verify; a key
    // that would have to be fetched cannot be checked now, which is not the caller's fault.
    let port = provider.server.addr;
    drop(provider);
    assert!(tokio::net::TcpStream::connect(port).await.is_err(), "the provider is down");
    assert_eq!(answer(new.token("support:bob", AUDIENCE)).await.code(), Code::NotFound);
    let unreachable = answer(newest.token("support:alice", AUDIENCE)).await;
    assert_eq!(unreachable.code(), Code::Unavailable, "{unreachable:?}");
    assert_eq!(partnerhub_tests::reason(&unreachable), "UNAVAILABLE");
    assert!(unreachable.message().contains("identity provider"), "{}", unreachable.message());
}

#[tokio::test]
async fn made_up_kids_do_not_flood_the_provider_and_a_removed_key_is_refused_after_a_refresh() {
    let (old, new) = (ProviderKey::generate("2026-11"), ProviderKey::generate("2026-12"));
    let provider = ServedKeySet::start(&[&old, &new], Duration::ZERO).await;
    let (_app, answer) = provider.serve(Duration::from_millis(300), Duration::from_secs(3600)).await;
    let old_token = old.token("support:alice", AUDIENCE);
    assert_eq!(answer(old_token.clone()).await.code(), Code::NotFound);

    let before = provider.server.requests();
    let mallory = ProviderKey::generate("made-up");
    for n in 0..20 {
        let token = mallory.token_naming(&format!("made-up-{n}"), "support:mallory", AUDIENCE);
        assert_eq!(answer(token).await.code(), Code::Unauthenticated);
    }
    // At most the one background refresh that may fall into this window.
    let fetches = provider.server.requests() - before;
    assert!(fetches <= 1, "20 made-up kids made {fetches} fetches");

    provider.publish(&[&new]);
    eventually("the removed key to be refused", Duration::from_secs(10), || {
        let answer = answer(old_token.clone());
        async move { (answer.await.code() == Code::Unauthenticated).then_some(()) }
    })
    .await;
    assert_eq!(answer(new.token("support:alice", AUDIENCE)).await.code(), Code::NotFound);
}
