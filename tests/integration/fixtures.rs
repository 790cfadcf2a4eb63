//! Small builders for the resources most tests need, created as support.

use partnerhub_proto::account::v1 as pb;
use partnerhub_tests::Deployment;

pub async fn partner(app: &impl Deployment, name: &str, processor: pb::PaymentProcessor) -> pb::Partner {
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

pub async fn client(app: &impl Deployment, name: &str) -> pb::Client {
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

/// `count` WABAs of the client at the partner, two new numbers each.
pub async fn wabas(app: &impl Deployment, client_id: &str, partner_id: &str, count: usize) -> Vec<pb::Waba> {
    let mut wabas = Vec::with_capacity(count);
    for _ in 0..count {
        let numbers = [unique_number(), unique_number()];
        let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
        wabas.push(waba(app, client_id, partner_id, &numbers).await);
    }
    wabas
}

pub async fn waba(app: &impl Deployment, client_id: &str, partner_id: &str, numbers: &[&str]) -> pb::Waba {
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

use partnerhub_proto::partnerchange::v1 as pc;
use std::time::Duration;

pub const TERMS: &str = "2026-01";

pub async fn partner_with(
    app: &impl Deployment,
    name: &str,
    processor: pb::PaymentProcessor,
    settings: pb::PartnerSettings,
) -> pb::Partner {
    app.account("support:fixtures")
        .create_partner(pb::CreatePartnerRequest {
            display_name: name.to_owned(),
            payment_processor: processor.into(),
            settings: Some(settings),
        })
        .await
        .unwrap()
        .into_inner()
        .partner
        .unwrap()
}

pub fn settings(auto_approve: bool) -> pb::PartnerSettings {
    pb::PartnerSettings {
        auto_approve,
        accepting_changes: true,
        terms_version: TERMS.to_owned(),
        requires_payment_method: false,
    }
}

pub fn complete_company_info() -> pb::CompanyInfo {
    pb::CompanyInfo {
        legal_name: "Bakery Ltd".into(),
        address_line: "1 Flour St".into(),
        city: "Leeds".into(),
        postal_code: "LS1 1AA".into(),
        country_code: "GB".into(),
        tax_id: "GB123456789".into(),
    }
}

/// A client that may change partner: complete company info and a card on file.
pub async fn eligible_client(app: &impl Deployment, name: &str) -> pb::Client {
    let created = client(app, name).await;
    let mut support = app.account("support:fixtures");
    support
        .update_company_info(pb::UpdateCompanyInfoRequest {
            client_id: created.client_id.clone(),
            company_info: Some(complete_company_info()),
        })
        .await
        .unwrap();
    support
        .add_payment_method(pb::AddPaymentMethodRequest {
            client_id: created.client_id.clone(),
            r#type: pb::PaymentMethodType::Card.into(),
            last4: "4242".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap()
}

/// A client whose WABA (two numbers) is with `source` and may move to `destination`.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub source: pb::Partner,
    pub destination: pb::Partner,
    pub client: pb::Client,
    pub waba: pb::Waba,
}

pub async fn scenario(app: &impl Deployment, destination_auto_approves: bool) -> Scenario {
    let source = partner_with(app, "Source BSP", pb::PaymentProcessor::Stripe, settings(false)).await;
    let destination =
        partner_with(app, "Destination BSP", pb::PaymentProcessor::Stripe, settings(destination_auto_approves)).await;
    let client = eligible_client(app, "Bakery Ltd").await;
    let waba = waba(app, &client.client_id, &source.partner_id, &[&unique_number(), &unique_number()]).await;
    Scenario { source, destination, client, waba }
}

impl Scenario {
    /// The same client and partners with another WABA (`numbers` new numbers) at the source.
    pub async fn another_waba(&self, app: &impl Deployment, numbers: usize) -> Scenario {
        let numbers: Vec<String> = (0..numbers).map(|_| unique_number()).collect();
        let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
        let waba = waba(app, &self.client.client_id, &self.source.partner_id, &numbers).await;
        Scenario { waba, ..self.clone() }
    }

    pub fn client_subject(&self) -> String {
        format!("client:{}", self.client.client_id)
    }

    pub fn source_subject(&self) -> String {
        format!("partner:{}", self.source.partner_id)
    }

    pub fn destination_subject(&self) -> String {
        format!("partner:{}", self.destination.partner_id)
    }

    pub fn submit_request(&self, request_id: &str) -> pc::SubmitPartnerChangeRequest {
        pc::SubmitPartnerChangeRequest {
            request_id: request_id.to_owned(),
            waba_id: self.waba.waba_id.clone(),
            destination_partner_id: self.destination.partner_id.clone(),
            accepted_terms_version: TERMS.to_owned(),
            grant_phone_numbers: Vec::new(),
            migrate_after: None,
        }
    }

    /// Submits as the client and returns the stored request.
    pub async fn submit(&self, app: &impl Deployment, request_id: &str) -> pc::PartnerChange {
        app.partner_change(&self.client_subject())
            .submit_partner_change(self.submit_request(request_id))
            .await
            .unwrap()
            .into_inner()
            .partner_change
            .unwrap()
    }

    pub async fn approve(&self, app: &impl Deployment, partner_change_id: &str) -> pc::PartnerChange {
        app.partner_change(&self.destination_subject())
            .approve_partner_change(pc::ApprovePartnerChangeRequest { partner_change_id: partner_change_id.to_owned() })
            .await
            .unwrap()
            .into_inner()
            .partner_change
            .unwrap()
    }

    /// The client cancels the request, giving `reason`.
    pub async fn cancel(&self, app: &impl Deployment, partner_change_id: &str, reason: &str) -> pc::PartnerChange {
        app.partner_change(&self.client_subject())
            .cancel_partner_change(pc::CancelPartnerChangeRequest {
                partner_change_id: partner_change_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .partner_change
            .unwrap()
    }

    /// Every request of the scenario's client, newest first.
    pub async fn client_changes(&self, app: &impl Deployment) -> Vec<pc::PartnerChange> {
        app.partner_change(&self.client_subject())
            .list_partner_changes(pc::ListPartnerChangesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .partner_changes
    }

    /// Grants `partner_id` exactly `numbers`, as the client.
    pub async fn grant(&self, app: &impl Deployment, partner_id: &str, numbers: &[String]) {
        app.permissions(&self.client_subject())
            .set_partner_permissions(partnerhub_proto::permissions::v1::SetPartnerPermissionsRequest {
                client_id: self.client.client_id.clone(),
                partner_id: partner_id.to_owned(),
                phone_numbers: numbers.to_vec(),
            })
            .await
            .unwrap();
    }

    pub async fn waba_now(&self, app: &impl Deployment) -> pb::Waba {
        app.account("support:fixtures")
            .get_waba(pb::GetWabaRequest { waba_id: self.waba.waba_id.clone() })
            .await
            .unwrap()
            .into_inner()
            .waba
            .unwrap()
    }
}

pub async fn get_change(app: &impl Deployment, partner_change_id: &str) -> pc::PartnerChange {
    app.partner_change("support:fixtures")
        .get_partner_change(pc::GetPartnerChangeRequest { partner_change_id: partner_change_id.to_owned() })
        .await
        .unwrap()
        .into_inner()
        .partner_change
        .unwrap()
}

/// Waits (up to ten seconds) until the request is in `state`.
pub async fn wait_for_state(
    app: &impl Deployment,
    partner_change_id: &str,
    state: pc::PartnerChangeState,
) -> pc::PartnerChange {
    partnerhub_tests::eventually(&format!("{partner_change_id} to be {state:?}"), Duration::from_secs(10), || async {
        let change = get_change(app, partner_change_id).await;
        (change.state() == state).then_some(change)
    })
    .await
}

pub async fn history(app: &impl Deployment, partner_change_id: &str) -> Vec<pc::HistoryEntry> {
    app.partner_change("support:fixtures")
        .get_partner_change_history(pc::GetPartnerChangeHistoryRequest {
            partner_change_id: partner_change_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .entries
}

/// The event types of a request's history, in order.
pub async fn history_types(app: &impl Deployment, partner_change_id: &str) -> Vec<pc::PartnerChangeEventType> {
    history(app, partner_change_id).await.iter().map(pc::HistoryEntry::event_type).collect()
}

/// Whether the permissions service lets `partner_id` manage `number`.
pub async fn allowed(app: &impl Deployment, partner_id: &str, number: &str) -> bool {
    app.permissions("service:messaging")
        .check_permission(partnerhub_proto::permissions::v1::CheckPermissionRequest {
            partner_id: partner_id.to_owned(),
            phone_number: number.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .allowed
}
