//! The account service's own types and rules. No I/O and no protobuf here:
//! `grpc` parses into these types, `store` persists them.

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentProcessor {
    Stripe,
    Adyen,
    Braintree,
}

impl PaymentProcessor {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentProcessor::Stripe => "STRIPE",
            PaymentProcessor::Adyen => "ADYEN",
            PaymentProcessor::Braintree => "BRAINTREE",
        }
    }

    pub fn from_stored(name: &str) -> Option<Self> {
        [PaymentProcessor::Stripe, PaymentProcessor::Adyen, PaymentProcessor::Braintree]
            .into_iter()
            .find(|processor| processor.as_str() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentMethodType {
    Card,
    BankAccount,
}

impl PaymentMethodType {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethodType::Card => "CARD",
            PaymentMethodType::BankAccount => "BANK_ACCOUNT",
        }
    }

    pub fn from_stored(name: &str) -> Option<Self> {
        [PaymentMethodType::Card, PaymentMethodType::BankAccount].into_iter().find(|kind| kind.as_str() == name)
    }
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

impl PartnerSettingsPatch {
    pub fn apply(self, partner: &mut Partner) {
        let settings = &mut partner.settings;
        if let Some(auto_approve) = self.auto_approve {
            settings.auto_approve = auto_approve;
        }
        if let Some(accepting_changes) = self.accepting_changes {
            settings.accepting_changes = accepting_changes;
        }
        if let Some(terms_version) = self.terms_version {
            settings.terms_version = terms_version;
        }
        if let Some(requires_payment_method) = self.requires_payment_method {
            settings.requires_payment_method = requires_payment_method;
        }
        if let Some(payment_processor) = self.payment_processor {
            partner.payment_processor = payment_processor;
        }
    }
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

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let time = DateTime::<Utc>::UNIX_EPOCH;
        let mut partner = Partner {
            partner_id: "p".into(),
            display_name: "P".into(),
            payment_processor: PaymentProcessor::Stripe,
            settings: PartnerSettings {
                auto_approve: false,
                accepting_changes: true,
                terms_version: "v1".into(),
                requires_payment_method: false,
            },
            create_time: time,
            update_time: time,
        };
        PartnerSettingsPatch {
            auto_approve: Some(true),
            payment_processor: Some(PaymentProcessor::Adyen),
            ..PartnerSettingsPatch::default()
        }
        .apply(&mut partner);
        assert!(partner.settings.auto_approve);
        assert!(partner.settings.accepting_changes);
        assert_eq!(partner.settings.terms_version, "v1");
        assert_eq!(partner.payment_processor, PaymentProcessor::Adyen);
    }
}
