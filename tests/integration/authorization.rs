//! The authorization matrix: each kind of subject × each account RPC × its own
//! tenant or another's. Another tenant's resource answers NOT_FOUND exactly as
//! a missing one does; a subject kind that may not make a call at all gets
//! PERMISSION_DENIED.

use partnerhub_proto::account::v1 as pb;
use partnerhub_tests::{Backend, TestApp, on_both_databases, reason};
use prost_types::FieldMask;
use tonic::Code;

use crate::fixtures::{self, unique_number};

on_both_databases!(every_account_rpc_answers_each_subject_as_specified, another_tenants_resource_looks_missing);

#[derive(Debug, Clone, Copy)]
enum Rpc {
    CreatePartner,
    GetPartner,
    UpdatePartnerSettings,
    CreateClient,
    GetClient,
    UpdateCompanyInfo,
    AddPaymentMethod,
    SetClientLegacy,
    CreateWaba,
    AddPhoneNumber,
    GetWaba,
    ListWabas,
    GetWabaContext,
    TransferWaba,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// `client:<c1>`: its own tenant is c1, the other c2.
    Client,
    /// `partner:<p1>`: its own tenant is p1, the other p2.
    Partner,
    Service,
    Support,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Own,
    Other,
}

const OK: Code = Code::Ok;
const PD: Code = Code::PermissionDenied;
const NF: Code = Code::NotFound;

/// Columns: client on own, client on other, partner on own, partner on other, service, support.
const MATRIX: &[(Rpc, [Code; 6])] = &[
    (Rpc::CreatePartner, [PD, PD, PD, PD, PD, OK]),
    (Rpc::GetPartner, [OK, OK, OK, NF, OK, OK]),
    (Rpc::UpdatePartnerSettings, [PD, PD, OK, NF, PD, OK]),
    (Rpc::CreateClient, [PD, PD, PD, PD, PD, OK]),
    (Rpc::GetClient, [OK, NF, PD, PD, OK, OK]),
    (Rpc::UpdateCompanyInfo, [OK, NF, PD, PD, PD, OK]),
    (Rpc::AddPaymentMethod, [OK, NF, PD, PD, PD, OK]),
    (Rpc::SetClientLegacy, [PD, PD, PD, PD, PD, OK]),
    (Rpc::CreateWaba, [PD, PD, PD, PD, OK, OK]),
    (Rpc::AddPhoneNumber, [PD, PD, PD, PD, OK, OK]),
    (Rpc::GetWaba, [OK, NF, OK, NF, OK, OK]),
    (Rpc::ListWabas, [OK, NF, OK, NF, OK, OK]),
    (Rpc::GetWabaContext, [PD, PD, PD, PD, OK, OK]),
    (Rpc::TransferWaba, [PD, PD, PD, PD, OK, PD]),
];

const CASES: [(Who, Target); 6] = [
    (Who::Client, Target::Own),
    (Who::Client, Target::Other),
    (Who::Partner, Target::Own),
    (Who::Partner, Target::Other),
    (Who::Service, Target::Own),
    (Who::Support, Target::Own),
];

struct World {
    p1: pb::Partner,
    p2: pb::Partner,
    c1: pb::Client,
    c2: pb::Client,
    w1: pb::Waba,
    w2: pb::Waba,
}

impl World {
    async fn build(app: &TestApp) -> World {
        let p1 = fixtures::partner(app, "P1", pb::PaymentProcessor::Stripe).await;
        let p2 = fixtures::partner(app, "P2", pb::PaymentProcessor::Stripe).await;
        let c1 = fixtures::client(app, "C1").await;
        let c2 = fixtures::client(app, "C2").await;
        let w1 = fixtures::waba(app, &c1.client_id, &p1.partner_id, &[&unique_number()]).await;
        let w2 = fixtures::waba(app, &c2.client_id, &p2.partner_id, &[&unique_number()]).await;
        World { p1, p2, c1, c2, w1, w2 }
    }

    fn subject(&self, who: Who) -> String {
        match who {
            Who::Client => format!("client:{}", self.c1.client_id),
            Who::Partner => format!("partner:{}", self.p1.partner_id),
            Who::Service => "service:partner-change".to_owned(),
            Who::Support => "support:alice".to_owned(),
        }
    }

    fn partner(&self, target: Target) -> &str {
        if target == Target::Own { &self.p1.partner_id } else { &self.p2.partner_id }
    }

    fn client(&self, target: Target) -> &str {
        if target == Target::Own { &self.c1.client_id } else { &self.c2.client_id }
    }

    fn waba(&self, target: Target) -> &str {
        if target == Target::Own { &self.w1.waba_id } else { &self.w2.waba_id }
    }
}

async fn attempt(app: &TestApp, world: &World, rpc: Rpc, who: Who, target: Target) -> Code {
    let mut account = app.account(&world.subject(who));
    let result = match rpc {
        Rpc::CreatePartner => account
            .create_partner(pb::CreatePartnerRequest {
                display_name: "New".into(),
                payment_processor: pb::PaymentProcessor::Stripe.into(),
                settings: Some(pb::PartnerSettings { terms_version: "v1".into(), ..Default::default() }),
            })
            .await
            .map(drop),
        Rpc::GetPartner => {
            account.get_partner(pb::GetPartnerRequest { partner_id: world.partner(target).into() }).await.map(drop)
        }
        Rpc::UpdatePartnerSettings => account
            .update_partner_settings(pb::UpdatePartnerSettingsRequest {
                partner_id: world.partner(target).into(),
                settings: Some(pb::PartnerSettings { terms_version: "v2".into(), ..Default::default() }),
                payment_processor: 0,
                update_mask: Some(FieldMask { paths: vec!["terms_version".into()] }),
            })
            .await
            .map(drop),
        Rpc::CreateClient => account
            .create_client(pb::CreateClientRequest {
                display_name: "New".into(),
                payment_processor: pb::PaymentProcessor::Stripe.into(),
            })
            .await
            .map(drop),
        Rpc::GetClient => {
            account.get_client(pb::GetClientRequest { client_id: world.client(target).into() }).await.map(drop)
        }
        Rpc::UpdateCompanyInfo => account
            .update_company_info(pb::UpdateCompanyInfoRequest {
                client_id: world.client(target).into(),
                company_info: Some(pb::CompanyInfo { legal_name: "Changed".into(), ..Default::default() }),
            })
            .await
            .map(drop),
        Rpc::AddPaymentMethod => account
            .add_payment_method(pb::AddPaymentMethodRequest {
                client_id: world.client(target).into(),
                r#type: pb::PaymentMethodType::Card.into(),
                last4: "1111".into(),
            })
            .await
            .map(drop),
        Rpc::SetClientLegacy => account
            .set_client_legacy(pb::SetClientLegacyRequest { client_id: world.client(target).into(), legacy: true })
            .await
            .map(drop),
        Rpc::CreateWaba => account
            .create_waba(pb::CreateWabaRequest {
                client_id: world.client(target).into(),
                partner_id: world.partner(target).into(),
                display_name: "New".into(),
            })
            .await
            .map(drop),
        Rpc::AddPhoneNumber => account
            .add_phone_number(pb::AddPhoneNumberRequest {
                waba_id: world.waba(target).into(),
                phone_number: unique_number(),
            })
            .await
            .map(drop),
        Rpc::GetWaba => account.get_waba(pb::GetWabaRequest { waba_id: world.waba(target).into() }).await.map(drop),
        Rpc::ListWabas => {
            use pb::list_wabas_request::Owner;
            let owner = match who {
                Who::Partner => Owner::PartnerId(world.partner(target).into()),
                _ => Owner::ClientId(world.client(target).into()),
            };
            account
                .list_wabas(pb::ListWabasRequest { owner: Some(owner), page_size: 0, ..Default::default() })
                .await
                .map(drop)
        }
        Rpc::GetWabaContext => account
            .get_waba_context(pb::GetWabaContextRequest {
                waba_id: world.waba(target).into(),
                partner_id: world.partner(target).into(),
            })
            .await
            .map(drop),
        Rpc::TransferWaba => {
            // A WABA of its own per attempt, so that an allowed transfer does not disturb the next.
            let waba = fixtures::waba(app, world.client(target), world.partner(target), &[]).await;
            account
                .transfer_waba(pb::TransferWabaRequest {
                    waba_id: waba.waba_id,
                    from_partner_id: world.partner(target).into(),
                    to_partner_id: world
                        .partner(if target == Target::Own { Target::Other } else { Target::Own })
                        .into(),
                    partner_change_id: format!("pc-{}", uuid::Uuid::new_v4().simple()),
                })
                .await
                .map(drop)
        }
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn every_account_rpc_answers_each_subject_as_specified(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = World::build(&app).await;
    let mut mismatches = Vec::new();
    for (rpc, expected) in MATRIX {
        for ((who, target), expected) in CASES.into_iter().zip(expected) {
            let actual = attempt(&app, &world, *rpc, who, target).await;
            if actual != *expected {
                mismatches.push(format!("{rpc:?} as {who:?} on {target:?}: expected {expected:?}, got {actual:?}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "authorization mismatches:\n{}", mismatches.join("\n"));

    // Nothing aimed at the other tenant changed it.
    let mut support = app.account("support:check");
    let c2 = support.get_client(pb::GetClientRequest { client_id: world.c2.client_id.clone() }).await.unwrap();
    assert_eq!(c2.into_inner().client.unwrap(), world.c2);
    let p2 = support.get_partner(pb::GetPartnerRequest { partner_id: world.p2.partner_id.clone() }).await.unwrap();
    assert_eq!(p2.into_inner().partner.unwrap(), world.p2);
    let w2 = support.get_waba(pb::GetWabaRequest { waba_id: world.w2.waba_id.clone() }).await.unwrap();
    assert_eq!(w2.into_inner().waba.unwrap(), world.w2);
}

async fn another_tenants_resource_looks_missing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let world = World::build(&app).await;
    let mut as_c1 = app.account(&world.subject(Who::Client));

    let foreign = as_c1.get_waba(pb::GetWabaRequest { waba_id: world.w2.waba_id.clone() }).await.unwrap_err();
    let missing = as_c1.get_waba(pb::GetWabaRequest { waba_id: "waba-doesnotexist".into() }).await.unwrap_err();
    assert_eq!(foreign.code(), missing.code());
    assert_eq!(reason(&foreign), reason(&missing));
    assert_eq!(
        foreign.message().replace(&world.w2.waba_id, "ID"),
        missing.message().replace("waba-doesnotexist", "ID"),
        "the wording reveals nothing but the ID the caller sent"
    );

    let foreign = as_c1.get_client(pb::GetClientRequest { client_id: world.c2.client_id.clone() }).await.unwrap_err();
    let missing = as_c1.get_client(pb::GetClientRequest { client_id: "client-doesnotexist".into() }).await.unwrap_err();
    assert_eq!((foreign.code(), reason(&foreign)), (missing.code(), reason(&missing)));
}
