//! Malformed input gets INVALID_ARGUMENT with `BadRequest` field violations
//! naming every bad field, and changes nothing.

use base64::Engine as _;
use partnerhub_proto::account::v1 as pb;
use partnerhub_runtime::pagination::TokenSeal;
use partnerhub_tests::{Backend, TestApp, assert_refused, on_both_databases, violated_fields};
use prost_types::FieldMask;
use tonic::{Code, Status};

use crate::fixtures::{self, unique_number};

on_both_databases!(
    malformed_requests_name_every_bad_field_and_change_nothing,
    an_oversized_message_is_invalid_argument
);

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Status>, fields: &[&str]) {
    let status = match result {
        Ok(value) => panic!("expected INVALID_ARGUMENT on {fields:?}, got Ok({value:?})"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(partnerhub_tests::reason(&status), "INVALID_REQUEST", "{status:?}");
    assert_eq!(violated_fields(&status), fields, "{status:?}");
}

async fn malformed_requests_name_every_bad_field_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let partner = fixtures::partner(&app, "P", pb::PaymentProcessor::Stripe).await;
    let client = fixtures::client(&app, "C").await;
    let number = unique_number();
    let waba = fixtures::waba(&app, &client.client_id, &partner.partner_id, &[&number]).await;
    let mut support = app.account("support:s");
    let mut service = app.account("service:partner-change");

    // IDs: empty, too long, bad characters.
    assert_invalid(support.get_partner(pb::GetPartnerRequest { partner_id: String::new() }).await, &["partner_id"]);
    assert_invalid(support.get_partner(pb::GetPartnerRequest { partner_id: "p".repeat(65) }).await, &["partner_id"]);
    assert_invalid(support.get_waba(pb::GetWabaRequest { waba_id: "../etc/passwd".into() }).await, &["waba_id"]);

    // Every bad field at once; enums unspecified or unknown.
    assert_invalid(
        support
            .create_partner(pb::CreatePartnerRequest { display_name: " ".into(), payment_processor: 0, settings: None })
            .await,
        &["display_name", "payment_processor", "settings"],
    );
    assert_invalid(
        support.create_client(pb::CreateClientRequest { display_name: "x".repeat(201), payment_processor: 99 }).await,
        &["display_name", "payment_processor"],
    );
    assert_invalid(
        support
            .create_partner(pb::CreatePartnerRequest {
                display_name: "P".into(),
                payment_processor: pb::PaymentProcessor::Stripe.into(),
                settings: Some(pb::PartnerSettings { terms_version: String::new(), ..Default::default() }),
            })
            .await,
        &["settings.terms_version"],
    );

    // Phone numbers must be E.164; the WABA keeps the numbers it had.
    for bad in ["004915112345678", "+49 151 123", "+0123456789", "+1234567890123456", ""] {
        assert_invalid(
            support
                .add_phone_number(pb::AddPhoneNumberRequest { waba_id: waba.waba_id.clone(), phone_number: bad.into() })
                .await,
            &["phone_number"],
        );
    }
    let unchanged = support.get_waba(pb::GetWabaRequest { waba_id: waba.waba_id.clone() }).await.unwrap().into_inner();
    assert_eq!(unchanged.waba.unwrap().phone_numbers, [number]);

    // Pagination.
    let list = |page_size, page_token: &str| pb::ListWabasRequest {
        owner: Some(pb::list_wabas_request::Owner::ClientId(client.client_id.clone())),
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    };
    assert_invalid(support.list_wabas(list(-1, "")).await, &["page_size"]);
    assert_invalid(support.list_wabas(list(10, "garbage")).await, &["page_token"]);
    // A token for the right filters, made without the deployment's key, is refused:
    // sealed with another key, or in the unkeyed form the first releases issued.
    let scope = format!("client={}", client.client_id);
    let forged = TokenSeal::derived_from(&[0; 32]).next_page_token("waba-0", &scope);
    assert_invalid(support.list_wabas(list(10, &forged)).await, &["page_token"]);
    let fnv = scope
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    let unkeyed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("1{fnv:016x}waba-0"));
    assert_invalid(support.list_wabas(list(10, &unkeyed)).await, &["page_token"]);
    // The deployment's own seal opens: the same key on every replica.
    let sealed = TokenSeal::derived_from(&app.signing_secret()).next_page_token("waba-0", &scope);
    assert!(support.list_wabas(list(10, &sealed)).await.is_ok());
    assert_invalid(
        support.list_wabas(pb::ListWabasRequest { owner: None, page_size: 0, ..Default::default() }).await,
        &["owner"],
    );

    // Field masks: required, and only known paths.
    let update = |paths: Vec<String>| pb::UpdatePartnerSettingsRequest {
        partner_id: partner.partner_id.clone(),
        settings: Some(pb::PartnerSettings { auto_approve: true, ..Default::default() }),
        payment_processor: 0,
        update_mask: Some(FieldMask { paths }),
    };
    assert_invalid(support.update_partner_settings(update(vec![])).await, &["update_mask"]);
    assert_invalid(
        support.update_partner_settings(update(vec!["auto_approve".into(), "owner".into()])).await,
        &["update_mask"],
    );
    assert_invalid(
        support.update_partner_settings(update(vec!["payment_processor".into()])).await,
        &["payment_processor"],
    );
    let still = support.get_partner(pb::GetPartnerRequest { partner_id: partner.partner_id.clone() }).await.unwrap();
    assert_eq!(still.into_inner().partner.unwrap(), partner, "refused updates changed nothing");

    // Company info and payment methods.
    assert_invalid(
        support
            .update_company_info(pb::UpdateCompanyInfoRequest {
                client_id: client.client_id.clone(),
                company_info: Some(pb::CompanyInfo { country_code: "de".into(), ..Default::default() }),
            })
            .await,
        &["company_info.country_code"],
    );
    assert_invalid(
        support
            .add_payment_method(pb::AddPaymentMethodRequest {
                client_id: client.client_id.clone(),
                r#type: 0,
                last4: "42".into(),
            })
            .await,
        &["type", "last4"],
    );
    let still = support.get_client(pb::GetClientRequest { client_id: client.client_id.clone() }).await.unwrap();
    assert_eq!(still.into_inner().client.unwrap(), client, "refused updates changed nothing");

    // A transfer to where the WABA already is.
    assert_invalid(
        service
            .transfer_waba(pb::TransferWabaRequest {
                waba_id: waba.waba_id.clone(),
                from_partner_id: partner.partner_id.clone(),
                to_partner_id: partner.partner_id.clone(),
                partner_change_id: "pc-1".into(),
            })
            .await,
        &["to_partner_id"],
    );
}

async fn an_oversized_message_is_invalid_argument(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let huge = "x".repeat(app.settings.server.max_message_bytes + 1);
    let result = app
        .account("support:s")
        .create_client(pb::CreateClientRequest {
            display_name: huge,
            payment_processor: pb::PaymentProcessor::Stripe.into(),
        })
        .await;
    assert_refused(result, Code::InvalidArgument, "MESSAGE_TOO_LARGE");
}
