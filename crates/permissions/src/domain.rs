//! The permissions service's types. No I/O and no protobuf here.

use chrono::{DateTime, Utc};

/// A partner may manage one phone number of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub client_id: String,
    pub partner_id: String,
    pub phone_number: String,
    pub grant_time: DateTime<Utc>,
}

/// What one change appended to the permission log: whether each number of
/// one partner is allowed from now on, at consecutive positions ending at `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub partner_id: String,
    /// Each number, and whether it is allowed now, in log order.
    pub entries: Vec<(String, bool)>,
    /// The entries' time, as logged.
    pub time: DateTime<Utc>,
    /// The position of the last entry.
    pub last: i64,
}

impl Logged {
    /// The log position just before its entries.
    pub fn follows(&self) -> Option<i64> {
        i64::try_from(self.entries.len()).ok().and_then(|count| self.last.checked_sub(count))
    }
}

/// Which grants a list shows; `None` means any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantFilter {
    pub client_id: Option<String>,
    pub partner_id: Option<String>,
}

impl GrantFilter {
    /// Binds page tokens to the filter they were issued for.
    pub fn page_scope(&self) -> String {
        format!(
            "client={};partner={}",
            self.client_id.as_deref().unwrap_or(""),
            self.partner_id.as_deref().unwrap_or("")
        )
    }
}

/// The page token key of a grant: its (partner, number) sort key.
pub fn page_key(grant: &Grant) -> String {
    format!("{}|{}", grant.partner_id, grant.phone_number)
}

/// The (partner, number) sort key a page token holds.
pub fn parse_page_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('|')
}
