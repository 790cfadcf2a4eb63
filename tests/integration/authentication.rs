//! No token, a bad token, an expired token: UNAUTHENTICATED. Health needs none.

use partnerhub_proto::account::v1 as pb;
use partnerhub_proto::account::v1::account_service_client::AccountServiceClient;
use partnerhub_tests::{Backend, TestApp, assert_refused, on_both_databases};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

on_both_databases!(calls_without_a_valid_token_are_unauthenticated, health_needs_no_token);

async fn calls_without_a_valid_token_are_unauthenticated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = || pb::GetPartnerRequest { partner_id: "partner-x".into() };

    let anonymous = AccountServiceClient::new(app.channel_without_token()).get_partner(request()).await;
    assert_refused(anonymous, Code::Unauthenticated, "MISSING_CREDENTIALS");

    let garbage = AccountServiceClient::new(app.channel_with_token("not-a-jwt")).get_partner(request()).await;
    assert_refused(garbage, Code::Unauthenticated, "INVALID_TOKEN");

    let foreign_key = {
        let claims = serde_json::json!({"sub": "support:x", "iss": "partnerhub", "iat": now(), "exp": now() + 600});
        sign(&claims, b"a different key of thirty-two bytes!")
    };
    let foreign = AccountServiceClient::new(app.channel_with_token(&foreign_key)).get_partner(request()).await;
    assert_refused(foreign, Code::Unauthenticated, "INVALID_TOKEN");

    let expired = {
        let claims =
            serde_json::json!({"sub": "support:x", "iss": "partnerhub", "iat": now() - 7200, "exp": now() - 3600});
        sign(&claims, &app.signing_secret())
    };
    let expired = AccountServiceClient::new(app.channel_with_token(&expired)).get_partner(request()).await;
    assert_refused(expired, Code::Unauthenticated, "TOKEN_EXPIRED");

    let bad_subject = {
        let claims = serde_json::json!({"sub": "admin:root", "iss": "partnerhub", "iat": now(), "exp": now() + 600});
        sign(&claims, &app.signing_secret())
    };
    let bad_subject = AccountServiceClient::new(app.channel_with_token(&bad_subject)).get_partner(request()).await;
    assert_refused(bad_subject, Code::Unauthenticated, "INVALID_TOKEN");

    // The same key and claims, properly signed, get through to the service.
    let valid = AccountServiceClient::new(app.channel_with_token(&app.token("support:x"))).get_partner(request()).await;
    assert_refused(valid, Code::NotFound, "PARTNER_NOT_FOUND");
}

async fn health_needs_no_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut health = HealthClient::new(app.channel_without_token());
    for service in ["", "partnerhub.account.v1.AccountService"] {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
}
