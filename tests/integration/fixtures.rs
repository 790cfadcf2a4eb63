//! Small builders for the resources most tests need, created as support.

use partnerhub_proto::account::v1 as pb;
use partnerhub_tests::TestApp;

pub async fn partner(app: &TestApp, name: &str, processor: pb::PaymentProcessor) -> pb::Partner {
    app.account("support:fixtures")
        .create_partner(pb::CreatePartnerRequest {
            display_name: name.to_owned(),
            payment_processor: processor.into(),
            settings: Some(pb::PartnerSettings {
                auto_approve: false,
                accepting_changes: true,
                terms_version: "2026-01".to_owned(),
                requires_payment_method: false,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .partner
        .unwrap()
}

pub async fn client(app: &TestApp, name: &str) -> pb::Client {
    app.account("support:fixtures")
        .create_client(pb::CreateClientRequest {
            display_name: name.to_owned(),
            payment_processor: pb::PaymentProcessor::Stripe.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap()
}

pub async fn waba(app: &TestApp, client_id: &str, partner_id: &str, numbers: &[&str]) -> pb::Waba {
    let mut account = app.account("support:fixtures");
    let mut waba = account
        .create_waba(pb::CreateWabaRequest {
            client_id: client_id.to_owned(),
            partner_id: partner_id.to_owned(),
            display_name: "Main line".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .waba
        .unwrap();
    for number in numbers {
        waba = account
            .add_phone_number(pb::AddPhoneNumberRequest {
                waba_id: waba.waba_id.clone(),
                phone_number: (*number).to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .waba
            .unwrap();
    }
    waba
}

/// A fresh, valid E.164 number (unique across tests and runs).
pub fn unique_number() -> String {
    let digits = uuid::Uuid::new_v4().as_u128() % 10_000_000_000;
    format!("+49{digits:010}")
}
