//! The facts the partner change rules need, asked of the account service.

use partnerhub_proto::account::v1::{
    GetClientRequest, GetPartnerRequest, GetWabaRequest, TransferWabaRequest, TransferWabaResponse,
    account_service_client::AccountServiceClient,
};
use partnerhub_runtime::peers::PeerChannel;
use tonic::{Code, Status};

use crate::domain::{ClientFacts, PartnerFacts};

/// A WABA and the client and destination partner around it, as they are now.
#[derive(Debug, Clone)]
pub struct World {
    pub waba_id: String,
    pub client_id: String,
    pub current_partner_id: String,
    pub phone_numbers: Vec<String>,
    pub client: ClientFacts,
    /// `None` when no partner has the destination ID.
    pub destination: Option<PartnerFacts>,
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("WABA {0} not found")]
    WabaNotFound(String),
    #[error(transparent)]
    Peer(#[from] Status),
}

/// The account service, as the partner-change service calls it.
#[derive(Debug, Clone)]
pub struct Accounts {
    client: AccountServiceClient<PeerChannel>,
}

impl Accounts {
    pub fn new(channel: PeerChannel) -> Self {
        Self { client: AccountServiceClient::new(channel) }
    }

    /// The WABA, its client, and the destination partner (if it exists).
    pub async fn world(&self, waba_id: &str, destination_partner_id: &str) -> Result<World, FactsError> {
        let mut account = self.client.clone();
        let waba = match account.get_waba(GetWabaRequest { waba_id: waba_id.to_owned() }).await {
            Ok(response) => response.into_inner().waba.ok_or_else(|| Status::internal("GetWaba returned no WABA"))?,
            Err(status) if status.code() == Code::NotFound => return Err(FactsError::WabaNotFound(waba_id.to_owned())),
            Err(status) => return Err(status.into()),
        };
        let client = account
            .get_client(GetClientRequest { client_id: waba.client_id.clone() })
            .await?
            .into_inner()
            .client
            .ok_or_else(|| Status::internal("GetClient returned no client"))?;
        let destination =
            match account.get_partner(GetPartnerRequest { partner_id: destination_partner_id.to_owned() }).await {
                Ok(response) => response.into_inner().partner,
                Err(status) if status.code() == Code::NotFound => None,
                Err(status) => return Err(status.into()),
            };
        Ok(World {
            waba_id: waba.waba_id,
            client_id: waba.client_id,
            current_partner_id: waba.partner_id,
            phone_numbers: waba.phone_numbers,
            client: ClientFacts {
                legacy: client.legacy,
                payment_processor: client.payment_processor().as_str_name().to_owned(),
                missing_company_info_fields: client.missing_company_info_fields,
                has_payment_method: !client.payment_methods.is_empty(),
            },
            destination: destination.map(|partner| {
                let settings = partner.settings.clone().unwrap_or_default();
                PartnerFacts {
                    payment_processor: partner.payment_processor().as_str_name().to_owned(),
                    partner_id: partner.partner_id,
                    accepting_changes: settings.accepting_changes,
                    terms_version: settings.terms_version,
                    requires_payment_method: settings.requires_payment_method,
                    auto_approve: settings.auto_approve,
                }
            }),
        })
    }

    /// The WABA's numbers now.
    pub async fn phone_numbers(&self, waba_id: &str) -> Result<Vec<String>, Status> {
        let waba = self.client.clone().get_waba(GetWabaRequest { waba_id: waba_id.to_owned() }).await?.into_inner();
        Ok(waba.waba.map(|waba| waba.phone_numbers).unwrap_or_default())
    }

    pub async fn transfer(&self, request: TransferWabaRequest) -> Result<TransferWabaResponse, Status> {
        Ok(self.client.clone().transfer_waba(request).await?.into_inner())
    }
}
