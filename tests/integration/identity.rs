//! Tokens from an identity provider: ES256, verified with the key of a JWK Set
//! file that the token's `kid` names, with the audience checked; keys rotate
//! without a restart (during the overlap both are accepted, a removed one is
//! refused, also for a token verified before). The deployment's own HS256 key
//! then speaks only for services, and the calls between the services go on.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::{SecretKey, elliptic_curve::sec1::ToEncodedPoint, pkcs8::EncodePrivateKey};
use partnerhub_tests::{
    Backend, TestApp, eventually,
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
        let pem = self.secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let claims =
            serde_json::json!({ "sub": subject, "iss": "partnerhub", "aud": audience, "iat": now, "exp": now + 600 });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()).unwrap()
    }
}

fn publish(path: &std::path::Path, keys: &[&ProviderKey]) {
    let set = serde_json::json!({ "keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>() });
    // Written whole, then renamed: a reader never sees half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, set.to_string()).unwrap();
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
