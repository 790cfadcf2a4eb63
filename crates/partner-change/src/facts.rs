//! The facts the partner change rules need, asked of the account service.

use partnerhub_proto::account::v1::{
    GetWabaContextRequest, GetWabaRequest, GetWabaResponse, TransferWabaRequest, TransferWabaResponse,
    account_service_client::AccountServiceClient,
};
use partnerhub_runtime::{
    error::{Reason as _, reason_of},
    peers::Peer,
};
use tonic::{Code, Response, Status};

use crate::{
    domain::{ClientFacts, PartnerFacts},
    error::PartnerChangeReason,
};

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
    peer: Peer,
}

impl Accounts {
    pub fn new(peer: Peer) -> Self {
        Self { peer }
    }

    async fn get_waba(&self, waba_id: &str) -> Result<GetWabaResponse, Status> {
        let request = GetWabaRequest { waba_id: waba_id.to_owned() };
        self.peer
            .call(request, |channel, request| async move { AccountServiceClient::new(channel).get_waba(request).await })
            .await
            .map(Response::into_inner)
    }

    /// The WABA, its client, and the destination partner (if it exists), in one call.
    pub async fn world(&self, waba_id: &str, destination_partner_id: &str) -> Result<World, FactsError> {
        let request =
            GetWabaContextRequest { waba_id: waba_id.to_owned(), partner_id: destination_partner_id.to_owned() };
        let context = match self
            .peer
            .call(request, |channel, request| async move {
                AccountServiceClient::new(channel).get_waba_context(request).await
            })
            .await
        {
            Ok(response) => response.into_inner(),
            // Only the WABA itself missing is the answer "no such WABA"; any
            // other NOT_FOUND (its client, which cannot go missing) is not.
            Err(status) if status.code() == Code::NotFound && waba_missing(&status) => {
                return Err(FactsError::WabaNotFound(waba_id.to_owned()));
            }
            Err(status) => return Err(status.into()),
        };
        let waba = context.waba.ok_or_else(|| Status::internal("GetWabaContext returned no WABA"))?;
        let client = context.client.ok_or_else(|| Status::internal("GetWabaContext returned no client"))?;
        let destination = context.partner;
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
        let waba = self.get_waba(waba_id).await?;
        Ok(waba.waba.map(|waba| waba.phone_numbers).unwrap_or_default())
    }

    pub async fn transfer(&self, request: TransferWabaRequest) -> Result<TransferWabaResponse, Status> {
        // Idempotent per partner change, so safe to send to another replica.
        let transferred = self.peer.call(request, |channel, request| async move {
            AccountServiceClient::new(channel).transfer_waba(request).await
        });
        Ok(transferred.await?.into_inner())
    }
}

/// Whether a NOT_FOUND from the account service is about the WABA (its reason,
/// the same in every service, or a bare status that names none).
fn waba_missing(status: &Status) -> bool {
    reason_of(status).is_none_or(|reason| reason == PartnerChangeReason::WabaNotFound.as_str())
}
