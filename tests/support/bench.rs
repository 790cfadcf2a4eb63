//! Set-up shared by the benchmarks (not measured).

use partnerhub_proto::account::v1::{self as acc, account_service_client::AccountServiceClient};

use crate::Authed;

/// A source partner, a destination that approves automatically, one client
/// that may change partner, and its WABAs at the source.
#[derive(Debug)]
pub struct AutoApproveWorld {
    pub source: acc::Partner,
    pub destination: acc::Partner,
    pub client: acc::Client,
    pub waba_ids: Vec<String>,
}

/// Builds an [`AutoApproveWorld`] with `wabas` WABAs of `numbers_per_waba`
/// numbers each, as support. The destination's terms version is `v1`.
pub async fn auto_approve_world(
    support: &mut AccountServiceClient<Authed>,
    wabas: usize,
    numbers_per_waba: usize,
) -> AutoApproveWorld {
    let partner = |name: &str, auto_approve| acc::CreatePartnerRequest {
        display_name: name.into(),
        payment_processor: acc::PaymentProcessor::Stripe.into(),
        settings: Some(acc::PartnerSettings {
            auto_approve,
            accepting_changes: true,
            terms_version: "v1".into(),
            requires_payment_method: false,
        }),
    };
    let source = support.create_partner(partner("Source", false)).await.unwrap().into_inner().partner.unwrap();
    let destination = support.create_partner(partner("Destination", true)).await.unwrap().into_inner().partner.unwrap();
    let client = support
        .create_client(acc::CreateClientRequest {
            display_name: "Client".into(),
            payment_processor: acc::PaymentProcessor::Stripe.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap();
    let info = acc::CompanyInfo {
        legal_name: "Client Ltd".into(),
        address_line: "1 Road".into(),
        city: "Town".into(),
        postal_code: "1000".into(),
        country_code: "DE".into(),
        tax_id: "DE1".into(),
    };
    support
        .update_company_info(acc::UpdateCompanyInfoRequest {
            client_id: client.client_id.clone(),
            company_info: Some(info),
        })
        .await
        .unwrap();
    let mut waba_ids = Vec::with_capacity(wabas);
    for index in 0..wabas {
        let waba = support
            .create_waba(acc::CreateWabaRequest {
                client_id: client.client_id.clone(),
                partner_id: source.partner_id.clone(),
                display_name: format!("WABA {index}"),
            })
            .await
            .unwrap()
            .into_inner()
            .waba
            .unwrap();
        for line in 0..numbers_per_waba {
            support
                .add_phone_number(acc::AddPhoneNumberRequest {
                    waba_id: waba.waba_id.clone(),
                    phone_number: format!("+49{line}{index:09}"),
                })
                .await
                .unwrap();
        }
        waba_ids.push(waba.waba_id);
    }
    AutoApproveWorld { source, destination, client, waba_ids }
}

/// A whole number from the environment variable `name`, else `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// A memory figure of process `pid` from `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// The `p`-th percentile (0 to 1) of `sorted` microseconds.
pub fn percentile(sorted: &[u64], p: f64) -> std::time::Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    std::time::Duration::from_micros(sorted.get(index).copied().unwrap_or(0))
}
