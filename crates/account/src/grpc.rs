//! The account service's gRPC boundary. Each RPC is thin: parse the request
//! into domain types, authorize the caller, call the store, map the result.
//! Only this file knows the protobuf types.

use partnerhub_proto::account::v1 as pb;
use partnerhub_runtime::{
    auth::{May, Policy, Subject, caller},
    error::{FieldViolation, permission_denied},
    pagination::{TokenSeal, page_size},
    rpc::record_resource_id,
    time::to_timestamp,
    validate::{MAX_NAME_LEN, Parsed, PhoneNumber, Validate, id, optional_text, required_enum, required_text},
};
use sea_orm::DatabaseConnection;
use tonic::{Request, Response, Status};

use crate::{
    domain::{
        Client, CompanyInfo, NewPartner, Partner, PartnerSettings, PartnerSettingsPatch, PaymentMethod,
        PaymentMethodType, PaymentProcessor, Transfer, Waba, WabaOwner,
    },
    error::AccountError,
    store,
};

/// The most numbers a `ListWabas` may filter by.
const MAX_LISTED_NUMBERS: usize = 1000;

/// The `AccountService` implementation: a handle on the database, nothing more.
#[derive(Debug, Clone)]
pub struct AccountApi {
    db: DatabaseConnection,
    /// Seals list page tokens.
    pages: TokenSeal,
}

impl AccountApi {
    pub fn new(db: DatabaseConnection, pages: TokenSeal) -> Self {
        Self { db, pages }
    }
}

/// Who may call each method at all, checked before the request is read;
/// each handler then checks which resources the caller may act on.
pub const POLICY: Policy = &[
    ("CreatePartner", &[May::Support]),
    ("GetPartner", &[May::Clients, May::Partners, May::Support, May::Services]),
    ("UpdatePartnerSettings", &[May::Partners, May::Support]),
    ("CreateClient", &[May::Support]),
    ("GetClient", &[May::Clients, May::Support, May::Services]),
    ("UpdateCompanyInfo", &[May::Clients, May::Support]),
    ("AddPaymentMethod", &[May::Clients, May::Support]),
    ("SetClientLegacy", &[May::Support]),
    ("CreateWaba", &[May::Support, May::Services]),
    ("AddPhoneNumber", &[May::Support, May::Services]),
    ("GetWaba", &[May::Clients, May::Partners, May::Support, May::Services]),
    ("ListWabas", &[May::Clients, May::Partners, May::Support, May::Services]),
    ("GetWabaContext", &[May::Support, May::Services]),
    // Moves a WABA between partners: the partner-change service's alone.
    ("TransferWaba", &[May::MigrationService]),
];

type RpcResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::account_service_server::AccountService for AccountApi {
    async fn create_partner(&self, request: Request<pb::CreatePartnerRequest>) -> RpcResult<pb::CreatePartnerResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (display_name, payment_processor, settings) = (
            required_text("display_name", &r.display_name, MAX_NAME_LEN),
            payment_processor("payment_processor", r.payment_processor),
            partner_settings(r.settings.as_ref()),
        )
            .validate()?;
        allow(caller.is_support())?;
        let partner = store::create_partner(&self.db, NewPartner { display_name, payment_processor, settings }).await?;
        Ok(Response::new(pb::CreatePartnerResponse { partner: Some(partner_to_proto(partner)) }))
    }

    async fn get_partner(&self, request: Request<pb::GetPartnerRequest>) -> RpcResult<pb::GetPartnerResponse> {
        let caller = caller(&request)?;
        let partner_id = id("partner_id", &request.get_ref().partner_id).validate()?;
        // Any client may read a partner's public profile (all a Partner holds);
        // a partner reads only itself.
        if matches!(caller, Subject::Partner(own) if *own != partner_id) {
            return Err(AccountError::PartnerNotFound(partner_id).into());
        }
        let partner = store::get_partner(&self.db, &partner_id).await?;
        Ok(Response::new(pb::GetPartnerResponse { partner: Some(partner_to_proto(partner)) }))
    }

    async fn update_partner_settings(
        &self,
        request: Request<pb::UpdatePartnerSettingsRequest>,
    ) -> RpcResult<pb::UpdatePartnerSettingsResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (partner_id, patch) = (id("partner_id", &r.partner_id), settings_patch(r)).validate()?;
        match caller {
            Subject::Support(_) => {}
            Subject::Partner(own) if *own == partner_id => {}
            Subject::Partner(_) => return Err(AccountError::PartnerNotFound(partner_id).into()),
            Subject::Client(_) | Subject::Service(_) => return Err(permission_denied()),
        }
        let partner = store::update_partner_settings(&self.db, &partner_id, patch).await?;
        Ok(Response::new(pb::UpdatePartnerSettingsResponse { partner: Some(partner_to_proto(partner)) }))
    }

    async fn create_client(&self, request: Request<pb::CreateClientRequest>) -> RpcResult<pb::CreateClientResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (display_name, payment_processor) = (
            required_text("display_name", &r.display_name, MAX_NAME_LEN),
            payment_processor("payment_processor", r.payment_processor),
        )
            .validate()?;
        allow(caller.is_support())?;
        let client = store::create_client(&self.db, display_name, payment_processor).await?;
        Ok(Response::new(pb::CreateClientResponse { client: Some(client_to_proto(client)) }))
    }

    async fn get_client(&self, request: Request<pb::GetClientRequest>) -> RpcResult<pb::GetClientResponse> {
        let caller = caller(&request)?;
        let client_id = id("client_id", &request.get_ref().client_id).validate()?;
        authorize_client(caller, &client_id, Operators::SupportAndServices)?;
        let client = store::get_client(&self.db, &client_id).await?;
        Ok(Response::new(pb::GetClientResponse { client: Some(client_to_proto(client)) }))
    }

    async fn update_company_info(
        &self,
        request: Request<pb::UpdateCompanyInfoRequest>,
    ) -> RpcResult<pb::UpdateCompanyInfoResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (client_id, info) = (id("client_id", &r.client_id), company_info(r.company_info.as_ref())).validate()?;
        authorize_client(caller, &client_id, Operators::SupportOnly)?;
        let client = store::update_company_info(&self.db, &client_id, info).await?;
        Ok(Response::new(pb::UpdateCompanyInfoResponse { client: Some(client_to_proto(client)) }))
    }

    async fn add_payment_method(
        &self,
        request: Request<pb::AddPaymentMethodRequest>,
    ) -> RpcResult<pb::AddPaymentMethodResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (client_id, kind, last4) =
            (id("client_id", &r.client_id), payment_method_type("type", r.r#type), last4(&r.last4)).validate()?;
        authorize_client(caller, &client_id, Operators::SupportOnly)?;
        let (method, client) = store::add_payment_method(&self.db, &client_id, kind, last4).await?;
        Ok(Response::new(pb::AddPaymentMethodResponse {
            payment_method: Some(payment_method_to_proto(method)),
            client: Some(client_to_proto(client)),
        }))
    }

    async fn set_client_legacy(
        &self,
        request: Request<pb::SetClientLegacyRequest>,
    ) -> RpcResult<pb::SetClientLegacyResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let client_id = id("client_id", &r.client_id).validate()?;
        allow(caller.is_support())?;
        let client = store::set_client_legacy(&self.db, &client_id, r.legacy).await?;
        Ok(Response::new(pb::SetClientLegacyResponse { client: Some(client_to_proto(client)) }))
    }

    async fn create_waba(&self, request: Request<pb::CreateWabaRequest>) -> RpcResult<pb::CreateWabaResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (client_id, partner_id, display_name) = (
            id("client_id", &r.client_id),
            id("partner_id", &r.partner_id),
            required_text("display_name", &r.display_name, MAX_NAME_LEN),
        )
            .validate()?;
        allow(caller.is_operator())?;
        let waba = store::create_waba(&self.db, &client_id, &partner_id, display_name).await?;
        Ok(Response::new(pb::CreateWabaResponse { waba: Some(waba_to_proto(waba)) }))
    }

    async fn add_phone_number(
        &self,
        request: Request<pb::AddPhoneNumberRequest>,
    ) -> RpcResult<pb::AddPhoneNumberResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (waba_id, number) =
            (id("waba_id", &r.waba_id), PhoneNumber::parse("phone_number", &r.phone_number)).validate()?;
        allow(caller.is_operator())?;
        let waba = store::add_phone_number(&self.db, &waba_id, number.as_str()).await?;
        Ok(Response::new(pb::AddPhoneNumberResponse { waba: Some(waba_to_proto(waba)) }))
    }

    async fn get_waba(&self, request: Request<pb::GetWabaRequest>) -> RpcResult<pb::GetWabaResponse> {
        let caller = caller(&request)?;
        let waba_id = id("waba_id", &request.get_ref().waba_id).validate()?;
        let waba = store::get_waba(&self.db, &waba_id).await?;
        let visible = match caller {
            Subject::Support(_) | Subject::Service(_) => true,
            Subject::Client(own) => *own == waba.client_id,
            Subject::Partner(own) => *own == waba.partner_id,
        };
        if !visible {
            return Err(AccountError::WabaNotFound(waba_id).into());
        }
        Ok(Response::new(pb::GetWabaResponse { waba: Some(waba_to_proto(waba)) }))
    }

    async fn list_wabas(&self, request: Request<pb::ListWabasRequest>) -> RpcResult<pb::ListWabasResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let named_owner = match &r.owner {
            None => Ok(None),
            Some(pb::list_wabas_request::Owner::ClientId(client_id)) => {
                id("client_id", client_id).map(|id| Some(WabaOwner::Client(id)))
            }
            Some(pb::list_wabas_request::Owner::PartnerId(partner_id)) => {
                id("partner_id", partner_id).map(|id| Some(WabaOwner::Partner(id)))
            }
        };
        let numbers = PhoneNumber::parse_list("phone_numbers", &r.phone_numbers, MAX_LISTED_NUMBERS);
        let (named_owner, size, numbers) = (named_owner, page_size(r.page_size), numbers).validate()?;
        let owner = list_owner(caller, named_owner)?;
        // A token continues only the list it came from: the same owner and numbers.
        let mut scope = owner.page_scope();
        if !numbers.is_empty() {
            let mut listed: Vec<&str> = numbers.iter().map(PhoneNumber::as_str).collect();
            listed.sort_unstable();
            scope = format!("{scope};numbers={}", listed.join(","));
        }
        let after = self.pages.page_token(&r.page_token, &scope).validate()?;
        let (wabas, more) = store::list_wabas(&self.db, &owner, &numbers, after.as_deref(), size).await?;
        let next_page_token = match wabas.last() {
            Some(last) if more => self.pages.next_page_token(&last.waba_id, &scope),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListWabasResponse {
            wabas: wabas.into_iter().map(waba_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn get_waba_context(
        &self,
        request: Request<pb::GetWabaContextRequest>,
    ) -> RpcResult<pb::GetWabaContextResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let waba_id = id("waba_id", &r.waba_id);
        let partner_id = if r.partner_id.is_empty() { Ok(None) } else { id("partner_id", &r.partner_id).map(Some) };
        let (waba_id, partner_id) = (waba_id, partner_id).validate()?;
        allow(caller.is_operator())?;
        let (waba, client, partner) = store::waba_context(&self.db, &waba_id, partner_id.as_deref()).await?;
        Ok(Response::new(pb::GetWabaContextResponse {
            waba: Some(waba_to_proto(waba)),
            client: Some(client_to_proto(client)),
            partner: partner.map(partner_to_proto),
        }))
    }

    async fn transfer_waba(&self, request: Request<pb::TransferWabaRequest>) -> RpcResult<pb::TransferWabaResponse> {
        let caller = caller(&request)?;
        let r = request.get_ref();
        let (waba_id, from_partner_id, to_partner_id, partner_change_id) = (
            id("waba_id", &r.waba_id),
            id("from_partner_id", &r.from_partner_id),
            id("to_partner_id", &r.to_partner_id),
            id("partner_change_id", &r.partner_change_id),
        )
            .validate()?;
        record_resource_id(&partner_change_id);
        if from_partner_id == to_partner_id {
            return Err(partnerhub_runtime::error::invalid_argument(&[FieldViolation::new(
                "to_partner_id",
                "must differ from from_partner_id",
            )]));
        }
        allow(caller.is_service())?;
        let transfer = Transfer { partner_change_id, waba_id, from_partner_id, to_partner_id };
        let outcome = store::transfer_waba(&self.db, &transfer).await?;
        Ok(Response::new(pb::TransferWabaResponse {
            waba: Some(waba_to_proto(outcome.waba)),
            already_applied: outcome.already_applied,
        }))
    }
}

fn allow(allowed: bool) -> Result<(), Status> {
    if allowed { Ok(()) } else { Err(permission_denied()) }
}

/// Which operators, besides the client itself, may act on a client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operators {
    SupportOnly,
    SupportAndServices,
}

/// A client acts on itself only; another client's ID answers NOT_FOUND, as a
/// missing one would. Partners never act on clients here.
fn authorize_client(caller: &Subject, client_id: &str, operators: Operators) -> Result<(), Status> {
    match caller {
        Subject::Support(_) => Ok(()),
        Subject::Service(_) if operators == Operators::SupportAndServices => Ok(()),
        Subject::Client(own) if own == client_id => Ok(()),
        Subject::Client(_) => Err(AccountError::ClientNotFound(client_id.to_owned()).into()),
        Subject::Service(_) | Subject::Partner(_) => Err(permission_denied()),
    }
}

/// Whose WABAs a list shows: a client or partner caller gets its own (naming
/// another tenant answers NOT_FOUND); support and services must name one.
fn list_owner(caller: &Subject, named: Option<WabaOwner>) -> Result<WabaOwner, Status> {
    match (caller, named) {
        (Subject::Support(_) | Subject::Service(_), Some(owner)) => Ok(owner),
        (Subject::Support(_) | Subject::Service(_), None) => {
            Err(partnerhub_runtime::error::invalid_argument(&[FieldViolation::new(
                "owner",
                "support and services must name a client_id or a partner_id",
            )]))
        }
        (Subject::Client(own), None) => Ok(WabaOwner::Client(own.clone())),
        (Subject::Client(own), Some(WabaOwner::Client(named))) if *own == named => Ok(WabaOwner::Client(named)),
        (Subject::Client(_), Some(WabaOwner::Client(named))) => Err(AccountError::ClientNotFound(named).into()),
        (Subject::Partner(own), None) => Ok(WabaOwner::Partner(own.clone())),
        (Subject::Partner(own), Some(WabaOwner::Partner(named))) if *own == named => Ok(WabaOwner::Partner(named)),
        (Subject::Partner(_), Some(WabaOwner::Partner(named))) => Err(AccountError::PartnerNotFound(named).into()),
        (Subject::Client(_), Some(WabaOwner::Partner(_))) | (Subject::Partner(_), Some(WabaOwner::Client(_))) => {
            Err(permission_denied())
        }
    }
}

fn payment_processor(field: &str, raw: i32) -> Parsed<PaymentProcessor> {
    Ok(match required_enum::<pb::PaymentProcessor>(field, raw)? {
        pb::PaymentProcessor::Stripe => PaymentProcessor::Stripe,
        pb::PaymentProcessor::Adyen => PaymentProcessor::Adyen,
        pb::PaymentProcessor::Braintree => PaymentProcessor::Braintree,
        pb::PaymentProcessor::Unspecified => return Err(FieldViolation::new(field, "is required")),
    })
}

fn payment_method_type(field: &str, raw: i32) -> Parsed<PaymentMethodType> {
    Ok(match required_enum::<pb::PaymentMethodType>(field, raw)? {
        pb::PaymentMethodType::Card => PaymentMethodType::Card,
        pb::PaymentMethodType::BankAccount => PaymentMethodType::BankAccount,
        pb::PaymentMethodType::Unspecified => {
            return Err(FieldViolation::new(field, "is required"));
        }
    })
}

const MAX_TERMS_VERSION_LEN: usize = 64;

fn terms_version(field: &str, value: &str) -> Parsed<String> {
    required_text(field, value, MAX_TERMS_VERSION_LEN)
}

fn partner_settings(settings: Option<&pb::PartnerSettings>) -> Parsed<PartnerSettings> {
    let settings = settings.ok_or_else(|| FieldViolation::new("settings", "is required"))?;
    Ok(PartnerSettings {
        auto_approve: settings.auto_approve,
        accepting_changes: settings.accepting_changes,
        terms_version: terms_version("settings.terms_version", &settings.terms_version)?,
        requires_payment_method: settings.requires_payment_method,
    })
}

fn settings_patch(r: &pb::UpdatePartnerSettingsRequest) -> Parsed<PartnerSettingsPatch> {
    let paths = r.update_mask.as_ref().map(|mask| mask.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        return Err(FieldViolation::new("update_mask", "must name at least one field"));
    }
    let settings = r.settings.clone().unwrap_or_default();
    let mut patch = PartnerSettingsPatch::default();
    for path in paths {
        match path.as_str() {
            "auto_approve" => patch.auto_approve = Some(settings.auto_approve),
            "accepting_changes" => patch.accepting_changes = Some(settings.accepting_changes),
            "requires_payment_method" => patch.requires_payment_method = Some(settings.requires_payment_method),
            "terms_version" => {
                patch.terms_version = Some(terms_version("settings.terms_version", &settings.terms_version)?)
            }
            "payment_processor" => {
                patch.payment_processor = Some(payment_processor("payment_processor", r.payment_processor)?)
            }
            other => {
                return Err(FieldViolation::new("update_mask", format!("unknown field {other:?}")));
            }
        }
    }
    Ok(patch)
}

fn company_info(info: Option<&pb::CompanyInfo>) -> Parsed<CompanyInfo> {
    let info = info.ok_or_else(|| FieldViolation::new("company_info", "is required"))?;
    let country_code = optional_text("company_info.country_code", &info.country_code, 2)?;
    let is_alpha2 = country_code.len() == 2 && country_code.bytes().all(|b| b.is_ascii_uppercase());
    if !country_code.is_empty() && !is_alpha2 {
        return Err(FieldViolation::new("company_info.country_code", "must be an ISO 3166-1 alpha-2 code such as DE"));
    }
    Ok(CompanyInfo {
        legal_name: optional_text("company_info.legal_name", &info.legal_name, 200)?,
        address_line: optional_text("company_info.address_line", &info.address_line, 200)?,
        city: optional_text("company_info.city", &info.city, 100)?,
        postal_code: optional_text("company_info.postal_code", &info.postal_code, 20)?,
        country_code,
        tax_id: optional_text("company_info.tax_id", &info.tax_id, 40)?,
    })
}

fn last4(value: &str) -> Parsed<String> {
    if value.len() == 4 && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(value.to_owned())
    } else {
        Err(FieldViolation::new("last4", "must be exactly four digits"))
    }
}

fn processor_to_proto(processor: PaymentProcessor) -> i32 {
    match processor {
        PaymentProcessor::Stripe => pb::PaymentProcessor::Stripe,
        PaymentProcessor::Adyen => pb::PaymentProcessor::Adyen,
        PaymentProcessor::Braintree => pb::PaymentProcessor::Braintree,
    }
    .into()
}

fn partner_to_proto(partner: Partner) -> pb::Partner {
    pb::Partner {
        partner_id: partner.partner_id,
        display_name: partner.display_name,
        payment_processor: processor_to_proto(partner.payment_processor),
        settings: Some(pb::PartnerSettings {
            auto_approve: partner.settings.auto_approve,
            accepting_changes: partner.settings.accepting_changes,
            terms_version: partner.settings.terms_version,
            requires_payment_method: partner.settings.requires_payment_method,
        }),
        create_time: Some(to_timestamp(partner.create_time)),
        update_time: Some(to_timestamp(partner.update_time)),
    }
}

fn payment_method_to_proto(method: PaymentMethod) -> pb::PaymentMethod {
    let kind = match method.kind {
        PaymentMethodType::Card => pb::PaymentMethodType::Card,
        PaymentMethodType::BankAccount => pb::PaymentMethodType::BankAccount,
    };
    pb::PaymentMethod {
        payment_method_id: method.payment_method_id,
        r#type: kind.into(),
        last4: method.last4,
        create_time: Some(to_timestamp(method.create_time)),
    }
}

fn client_to_proto(client: Client) -> pb::Client {
    let missing_company_info_fields = client.company_info.missing_fields().into_iter().map(str::to_owned).collect();
    let info = client.company_info;
    pb::Client {
        client_id: client.client_id,
        display_name: client.display_name,
        payment_processor: processor_to_proto(client.payment_processor),
        company_info: Some(pb::CompanyInfo {
            legal_name: info.legal_name,
            address_line: info.address_line,
            city: info.city,
            postal_code: info.postal_code,
            country_code: info.country_code,
            tax_id: info.tax_id,
        }),
        missing_company_info_fields,
        payment_methods: client.payment_methods.into_iter().map(payment_method_to_proto).collect(),
        legacy: client.legacy,
        create_time: Some(to_timestamp(client.create_time)),
        update_time: Some(to_timestamp(client.update_time)),
    }
}

fn waba_to_proto(waba: Waba) -> pb::Waba {
    pb::Waba {
        waba_id: waba.waba_id,
        client_id: waba.client_id,
        partner_id: waba.partner_id,
        display_name: waba.display_name,
        phone_numbers: waba.phone_numbers,
        create_time: Some(to_timestamp(waba.create_time)),
        update_time: Some(to_timestamp(waba.update_time)),
    }
}
