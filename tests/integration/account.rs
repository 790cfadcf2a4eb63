//! The account RPCs through the real gRPC client, on both databases.

use partnerhub_proto::account::v1 as pb;
use partnerhub_tests::{Backend, ServiceSections, TestApp, assert_refused, on_both_databases, reason};
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::fixtures::{self, unique_number};

on_both_databases!(
    partners_are_created_read_and_updated_through_a_field_mask,
    concurrent_updates_of_different_settings_both_stick,
    clients_report_missing_company_info_and_keep_payment_methods,
    a_phone_number_belongs_to_one_waba_only,
    wabas_are_listed_oldest_first_in_pages,
    a_list_of_wabas_narrowed_to_phone_numbers_holds_only_the_wabas_with_them,
    a_waba_context_is_the_waba_its_client_and_the_partner_named,
    data_written_before_a_graceful_restart_is_there_after,
);

async fn partners_are_created_read_and_updated_through_a_field_mask(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let created = fixtures::partner(&app, "Acme BSP", pb::PaymentProcessor::Stripe).await;
    assert!(created.partner_id.starts_with("partner-"));

    let mut partner_client = app.account(&format!("partner:{}", created.partner_id));
    let read = partner_client
        .get_partner(pb::GetPartnerRequest { partner_id: created.partner_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .partner
        .unwrap();
    assert_eq!(read, created);

    let updated = partner_client
        .update_partner_settings(pb::UpdatePartnerSettingsRequest {
            partner_id: created.partner_id.clone(),
            settings: Some(pb::PartnerSettings {
                auto_approve: true,
                accepting_changes: false,
                terms_version: "2026-07".to_owned(),
                requires_payment_method: true,
            }),
            payment_processor: pb::PaymentProcessor::Adyen.into(),
            update_mask: Some(FieldMask { paths: vec!["auto_approve".into(), "terms_version".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .partner
        .unwrap();
    let settings = updated.settings.clone().unwrap();
    assert!(settings.auto_approve, "named in the mask");
    assert_eq!(settings.terms_version, "2026-07", "named in the mask");
    assert!(settings.accepting_changes, "not named in the mask: unchanged");
    assert!(!settings.requires_payment_method, "not named in the mask: unchanged");
    assert_eq!(updated.payment_processor(), pb::PaymentProcessor::Stripe, "not named in the mask: unchanged");
    let seconds_and_nanos = |partner: &pb::Partner| partner.update_time.map(|time| (time.seconds, time.nanos));
    assert!(seconds_and_nanos(&updated) > seconds_and_nanos(&created), "update_time moves forward");

    let processor_changed = partner_client
        .update_partner_settings(pb::UpdatePartnerSettingsRequest {
            partner_id: created.partner_id.clone(),
            settings: None,
            payment_processor: pb::PaymentProcessor::Adyen.into(),
            update_mask: Some(FieldMask { paths: vec!["payment_processor".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .partner
        .unwrap();
    assert_eq!(processor_changed.payment_processor(), pb::PaymentProcessor::Adyen);
    assert!(processor_changed.settings.unwrap().auto_approve, "earlier update kept");

    let missing =
        app.account("support:s").get_partner(pb::GetPartnerRequest { partner_id: "partner-nope".into() }).await;
    assert_refused(missing, Code::NotFound, "PARTNER_NOT_FOUND");
}

/// Two partners' tools (or a partner and support) patch different fields at
/// once: each patch writes only its own fields, so neither undoes the other.
async fn concurrent_updates_of_different_settings_both_stick(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| settings.partner_change().worker.enabled = false).await;
    let partner = fixtures::partner(&app, "Acme BSP", pb::PaymentProcessor::Stripe).await;
    let update = |settings: pb::PartnerSettings, path: &str| pb::UpdatePartnerSettingsRequest {
        partner_id: partner.partner_id.clone(),
        settings: Some(settings),
        payment_processor: pb::PaymentProcessor::Unspecified.into(),
        update_mask: Some(FieldMask { paths: vec![path.to_owned()] }),
    };
    for round in 0..30 {
        let auto_approve = round % 2 == 0;
        let terms_version = format!("v{round}");
        let flip = update(pb::PartnerSettings { auto_approve, ..Default::default() }, "auto_approve");
        let terms =
            update(pb::PartnerSettings { terms_version: terms_version.clone(), ..Default::default() }, "terms_version");
        let mut first = app.account("support:s");
        let mut second = app.account("support:s");
        let (flipped, termed) = tokio::join!(
            tokio::spawn(async move { first.update_partner_settings(flip).await }),
            tokio::spawn(async move { second.update_partner_settings(terms).await }),
        );
        flipped.unwrap().unwrap();
        termed.unwrap().unwrap();
        let now = app
            .account("support:s")
            .get_partner(pb::GetPartnerRequest { partner_id: partner.partner_id.clone() })
            .await
            .unwrap()
            .into_inner()
            .partner
            .unwrap();
        let processor = now.payment_processor();
        let settings = now.settings.unwrap();
        assert_eq!(
            (settings.auto_approve, settings.terms_version.as_str()),
            (auto_approve, terms_version.as_str()),
            "round {round}"
        );
        assert_eq!(processor, pb::PaymentProcessor::Stripe, "an unnamed field is untouched");
    }
}

async fn clients_report_missing_company_info_and_keep_payment_methods(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let client = fixtures::client(&app, "Bakery Ltd").await;
    assert_eq!(
        client.missing_company_info_fields,
        ["legal_name", "address_line", "city", "postal_code", "country_code", "tax_id"]
    );
    assert!(!client.legacy);

    let mut own = app.account(&format!("client:{}", client.client_id));
    let updated = own
        .update_company_info(pb::UpdateCompanyInfoRequest {
            client_id: client.client_id.clone(),
            company_info: Some(pb::CompanyInfo {
                legal_name: "Bakery Ltd".into(),
                address_line: "1 Flour St".into(),
                city: "Leeds".into(),
                postal_code: "LS1 1AA".into(),
                country_code: "GB".into(),
                tax_id: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap();
    assert_eq!(updated.missing_company_info_fields, ["tax_id"]);
    assert_eq!(updated.company_info.as_ref().unwrap().city, "Leeds");

    let added = own
        .add_payment_method(pb::AddPaymentMethodRequest {
            client_id: client.client_id.clone(),
            r#type: pb::PaymentMethodType::Card.into(),
            last4: "4242".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let method = added.payment_method.unwrap();
    assert_eq!(method.last4, "4242");
    assert_eq!(added.client.unwrap().payment_methods, std::slice::from_ref(&method));

    let legacy = app
        .account("support:s")
        .set_client_legacy(pb::SetClientLegacyRequest { client_id: client.client_id.clone(), legacy: true })
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap();
    assert!(legacy.legacy);

    let read = own.get_client(pb::GetClientRequest { client_id: client.client_id.clone() }).await.unwrap().into_inner();
    let read = read.client.unwrap();
    assert!(read.legacy);
    assert_eq!(read.payment_methods, [method]);
    assert_eq!(read.missing_company_info_fields, ["tax_id"]);
}

async fn a_phone_number_belongs_to_one_waba_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let partner = fixtures::partner(&app, "P", pb::PaymentProcessor::Stripe).await;
    let client = fixtures::client(&app, "C").await;
    let (first, second) = (unique_number(), unique_number());
    let waba = fixtures::waba(&app, &client.client_id, &partner.partner_id, &[&first, &second]).await;
    assert_eq!(waba.phone_numbers, [first.clone(), second.clone()], "in the order added");

    let mut support = app.account("support:s");
    let again = support
        .add_phone_number(pb::AddPhoneNumberRequest { waba_id: waba.waba_id.clone(), phone_number: first.clone() })
        .await
        .unwrap()
        .into_inner()
        .waba
        .unwrap();
    assert_eq!(again.phone_numbers, [first.clone(), second.clone()], "adding a number twice changes nothing");

    let other = fixtures::waba(&app, &client.client_id, &partner.partner_id, &[]).await;
    let taken = support
        .add_phone_number(pb::AddPhoneNumberRequest { waba_id: other.waba_id.clone(), phone_number: first })
        .await;
    assert_refused(taken, Code::AlreadyExists, "PHONE_NUMBER_TAKEN");
    let other =
        support.get_waba(pb::GetWabaRequest { waba_id: other.waba_id }).await.unwrap().into_inner().waba.unwrap();
    assert!(other.phone_numbers.is_empty(), "a refused call changes nothing");

    let no_waba = support
        .add_phone_number(pb::AddPhoneNumberRequest { waba_id: "waba-nope".into(), phone_number: unique_number() })
        .await;
    assert_refused(no_waba, Code::NotFound, "WABA_NOT_FOUND");
    let no_partner = support
        .create_waba(pb::CreateWabaRequest {
            client_id: client.client_id.clone(),
            partner_id: "partner-nope".into(),
            display_name: "x".into(),
        })
        .await;
    assert_refused(no_partner, Code::NotFound, "PARTNER_NOT_FOUND");
    let no_client = support
        .create_waba(pb::CreateWabaRequest {
            client_id: "client-nope".into(),
            partner_id: partner.partner_id.clone(),
            display_name: "x".into(),
        })
        .await;
    assert_refused(no_client, Code::NotFound, "CLIENT_NOT_FOUND");
}

async fn a_waba_context_is_the_waba_its_client_and_the_partner_named(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let source = fixtures::partner(&app, "Source", pb::PaymentProcessor::Stripe).await;
    let destination = fixtures::partner(&app, "Destination", pb::PaymentProcessor::Adyen).await;
    // Complete company info and a card on file.
    let client = fixtures::eligible_client(&app, "Bakery Ltd").await;
    let number = unique_number();
    let waba = fixtures::waba(&app, &client.client_id, &source.partner_id, &[&number]).await;
    let mut service = app.account("service:partner-change");
    let context = |partner_id: &str| pb::GetWabaContextRequest {
        waba_id: waba.waba_id.clone(),
        partner_id: partner_id.to_owned(),
    };

    let read = service.get_waba_context(context(&destination.partner_id)).await.unwrap().into_inner();
    let (read_waba, read_client, read_partner) = (read.waba.unwrap(), read.client.unwrap(), read.partner.unwrap());
    assert_eq!((read_waba.waba_id, read_waba.partner_id), (waba.waba_id.clone(), source.partner_id.clone()));
    assert_eq!(read_waba.phone_numbers, [number]);
    assert_eq!(read_client.client_id, client.client_id);
    assert_eq!(read_client.missing_company_info_fields, client.missing_company_info_fields);
    let methods: Vec<&str> = read_client.payment_methods.iter().map(|m| m.payment_method_id.as_str()).collect();
    assert_eq!(methods, [client.payment_methods[0].payment_method_id.as_str()]);
    assert_eq!(read_partner.partner_id, destination.partner_id);
    assert_eq!(read_partner.payment_processor(), pb::PaymentProcessor::Adyen);

    // A partner that does not exist, or none named, is left out; no error.
    let read = service.get_waba_context(context("partner-doesnotexist")).await.unwrap().into_inner();
    assert!(read.waba.is_some() && read.client.is_some() && read.partner.is_none());
    let read = service.get_waba_context(context("")).await.unwrap().into_inner();
    assert!(read.waba.is_some() && read.partner.is_none());

    // Every number in the order added, every payment method in its order; none is none.
    let numbers = [unique_number(), unique_number(), unique_number()];
    let larger =
        fixtures::waba(&app, &client.client_id, &source.partner_id, &[&numbers[0], &numbers[1], &numbers[2]]).await;
    let with_two_methods = app
        .account("support:s")
        .add_payment_method(pb::AddPaymentMethodRequest {
            client_id: client.client_id.clone(),
            r#type: pb::PaymentMethodType::Card.into(),
            last4: "0005".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap();
    let request =
        pb::GetWabaContextRequest { waba_id: larger.waba_id.clone(), partner_id: destination.partner_id.clone() };
    let read = service.get_waba_context(request).await.unwrap().into_inner();
    assert_eq!(read.waba.unwrap().phone_numbers, numbers);
    assert_eq!(read.client.unwrap().payment_methods, with_two_methods.payment_methods);
    assert_eq!(with_two_methods.payment_methods.len(), 2);
    assert!(read.partner.is_some());
    let bare = fixtures::client(&app, "No card").await;
    let empty = fixtures::waba(&app, &bare.client_id, &source.partner_id, &[]).await;
    let request = pb::GetWabaContextRequest { waba_id: empty.waba_id.clone(), partner_id: String::new() };
    let read = service.get_waba_context(request).await.unwrap().into_inner();
    assert_eq!((read.waba.unwrap().phone_numbers, read.client.unwrap()), (Vec::<String>::new(), bare));

    let missing = service
        .get_waba_context(pb::GetWabaContextRequest { waba_id: "waba-nope".into(), partner_id: String::new() })
        .await;
    assert_refused(missing, Code::NotFound, "WABA_NOT_FOUND");
    let malformed = service
        .get_waba_context(pb::GetWabaContextRequest { waba_id: String::new(), partner_id: "not an id!".into() })
        .await
        .unwrap_err();
    assert_eq!((malformed.code(), reason(&malformed)), (Code::InvalidArgument, "INVALID_REQUEST".to_owned()));
    let fields: Vec<String> =
        malformed.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["waba_id", "partner_id"], "every bad field named at once");
}

async fn wabas_are_listed_oldest_first_in_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let partner = fixtures::partner(&app, "P", pb::PaymentProcessor::Stripe).await;
    let other_partner = fixtures::partner(&app, "Q", pb::PaymentProcessor::Stripe).await;
    let client = fixtures::client(&app, "C").await;
    let mut created = Vec::new();
    for _ in 0..5 {
        let number = unique_number();
        created.push(fixtures::waba(&app, &client.client_id, &partner.partner_id, &[&number]).await);
    }
    fixtures::waba(&app, &client.client_id, &other_partner.partner_id, &[]).await;

    let mut as_partner = app.account(&format!("partner:{}", partner.partner_id));
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = as_partner
            .list_wabas(pb::ListWabasRequest {
                owner: None,
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.wabas.len() <= 2);
        seen.extend(page.wabas);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "all five, oldest first, each once, with their numbers");

    let first = as_partner
        .list_wabas(pb::ListWabasRequest { owner: None, page_size: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let replayed_elsewhere = app
        .account("support:s")
        .list_wabas(pb::ListWabasRequest {
            owner: Some(pb::list_wabas_request::Owner::ClientId(client.client_id.clone())),
            page_size: 2,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await;
    assert_refused(replayed_elsewhere, Code::InvalidArgument, "INVALID_REQUEST");

    let all_of_client = app
        .account(&format!("client:{}", client.client_id))
        .list_wabas(pb::ListWabasRequest { owner: None, page_size: 0, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all_of_client.wabas.len(), 6, "page_size 0 means the default, which holds all six");
    assert!(all_of_client.next_page_token.is_empty());
}

async fn data_written_before_a_graceful_restart_is_there_after(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let partner = fixtures::partner(&app, "Durable", pb::PaymentProcessor::Braintree).await;
    app.restart().await;
    let read = app
        .account("support:s")
        .get_partner(pb::GetPartnerRequest { partner_id: partner.partner_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .partner
        .unwrap();
    assert_eq!(read, partner);
}

async fn a_list_of_wabas_narrowed_to_phone_numbers_holds_only_the_wabas_with_them(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let partner = fixtures::partner(&app, "P", pb::PaymentProcessor::Stripe).await;
    let client = fixtures::client(&app, "C").await;
    let other_client = fixtures::client(&app, "D").await;
    let mut wabas = Vec::new();
    for _ in 0..4 {
        let numbers = [unique_number(), unique_number()];
        wabas.push(fixtures::waba(&app, &client.client_id, &partner.partner_id, &[&numbers[0], &numbers[1]]).await);
    }
    let elsewhere = fixtures::waba(&app, &other_client.client_id, &partner.partner_id, &[&unique_number()]).await;
    let list = |phone_numbers: Vec<String>, page_size, page_token: String| pb::ListWabasRequest {
        owner: Some(pb::list_wabas_request::Owner::ClientId(client.client_id.clone())),
        page_size,
        page_token,
        phone_numbers,
    };
    let mut support = app.account("support:s");

    // The fourth WABA's second number, the first WABA's first, a number nobody
    // has, and another client's: the first and the fourth, oldest first.
    let asked = vec![
        wabas[3].phone_numbers[1].clone(),
        wabas[0].phone_numbers[0].clone(),
        unique_number(),
        elsewhere.phone_numbers[0].clone(),
    ];
    let listed = support.list_wabas(list(asked.clone(), 0, String::new())).await.unwrap().into_inner();
    assert_eq!(listed.wabas, [wabas[0].clone(), wabas[3].clone()], "each with all its numbers");
    assert!(listed.next_page_token.is_empty());

    // In pages; a page token continues only the list of the same numbers.
    let first = support.list_wabas(list(asked.clone(), 1, String::new())).await.unwrap().into_inner();
    assert_eq!(first.wabas, [wabas[0].clone()]);
    let second = support.list_wabas(list(asked.clone(), 1, first.next_page_token.clone())).await.unwrap().into_inner();
    assert_eq!(second.wabas, [wabas[3].clone()]);
    let other_numbers = vec![wabas[1].phone_numbers[0].clone()];
    let replayed = support.list_wabas(list(other_numbers, 1, first.next_page_token.clone())).await;
    assert_refused(replayed, Code::InvalidArgument, "INVALID_REQUEST");
    let unfiltered = support.list_wabas(list(Vec::new(), 1, first.next_page_token)).await;
    assert_refused(unfiltered, Code::InvalidArgument, "INVALID_REQUEST");

    // A malformed number is named.
    let malformed =
        support.list_wabas(list(vec![asked[0].clone(), "12345".into()], 0, String::new())).await.unwrap_err();
    let fields: Vec<String> =
        malformed.get_details_bad_request().unwrap().field_violations.into_iter().map(|v| v.field).collect();
    assert_eq!(fields, ["phone_numbers[1]"]);
}
