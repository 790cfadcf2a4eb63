//! The account service's own types and rules. No I/O and no protobuf here:
//! `grpc` parses into these types, `store` persists them.

use chrono::{DateTime, Utc};
use sea_orm::{DeriveActiveEnum, EnumIter, sea_query::StringLen};

// The enums below are stored by name; the derives hold each one's stored
// names (the one table of them), and a name no variant has fails to decode.

#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum PaymentProcessor {
    #[sea_orm(string_value = "STRIPE")]
    Stripe,
    #[sea_orm(string_value = "ADYEN")]
    Adyen,
    #[sea_orm(string_value = "BRAINTREE")]
    Braintree,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum PaymentMethodType {
    #[sea_orm(string_value = "CARD")]
    Card,
    #[sea_orm(string_value = "BANK_ACCOUNT")]
    BankAccount,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerSettings {
    pub auto_approve: bool,
    pub accepting_changes: bool,
    pub terms_version: String,
    pub requires_payment_method: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    pub partner_id: String,
    pub display_name: String,
    pub payment_processor: PaymentProcessor,
    pub settings: PartnerSettings,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewPartner {
    pub display_name: String,
    pub payment_processor: PaymentProcessor,
    pub settings: PartnerSettings,
}

/// The fields an `UpdatePartnerSettings` call changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartnerSettingsPatch {
    pub auto_approve: Option<bool>,
    pub accepting_changes: Option<bool>,
    pub terms_version: Option<String>,
    pub requires_payment_method: Option<bool>,
    pub payment_processor: Option<PaymentProcessor>,
}

/// A client's company information; every field is required before a partner change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompanyInfo {
    pub legal_name: String,
    pub address_line: String,
    pub city: String,
    pub postal_code: String,
    pub country_code: String,
    pub tax_id: String,
}

impl CompanyInfo {
    /// The names (as in the API) of the fields still empty, in API order.
    pub fn missing_fields(&self) -> Vec<&'static str> {
        [
            ("legal_name", &self.legal_name),
            ("address_line", &self.address_line),
            ("city", &self.city),
            ("postal_code", &self.postal_code),
            ("country_code", &self.country_code),
            ("tax_id", &self.tax_id),
        ]
        .into_iter()
        .filter(|(_, value)| value.is_empty())
        .map(|(name, _)| name)
        .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentMethod {
    pub payment_method_id: String,
    pub kind: PaymentMethodType,
    pub last4: String,
    pub create_time: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub client_id: String,
    pub display_name: String,
    pub payment_processor: PaymentProcessor,
    pub company_info: CompanyInfo,
    pub payment_methods: Vec<PaymentMethod>,
    pub legacy: bool,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waba {
    pub waba_id: String,
    pub client_id: String,
    pub partner_id: String,
    pub display_name: String,
    /// E.164 numbers in the order they were added.
    pub phone_numbers: Vec<String>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// Whose WABAs a list names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WabaOwner {
    Client(String),
    Partner(String),
}

impl WabaOwner {
    /// Binds page tokens to the owner they were issued for.
    pub fn page_scope(&self) -> String {
        match self {
            WabaOwner::Client(id) => format!("client={id}"),
            WabaOwner::Partner(id) => format!("partner={id}"),
        }
    }
}

/// A move of one WABA between partners, carried out for one partner change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub partner_change_id: String,
    pub waba_id: String,
    pub from_partner_id: String,
    pub to_partner_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOutcome {
    pub waba: Waba,
    /// This partner change had moved the WABA before; nothing changed now.
    pub already_applied: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_are_listed_in_api_order() {
        let info = CompanyInfo { legal_name: "Acme GmbH".into(), city: "Berlin".into(), ..CompanyInfo::default() };
        assert_eq!(info.missing_fields(), ["address_line", "postal_code", "country_code", "tax_id"]);
    }
}
