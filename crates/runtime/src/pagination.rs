//! AIP-158 pagination: page sizes with a default and a ceiling, and opaque page
//! tokens that are bound to the filters they were issued for.
//!
//! A token holds the sort key of the last item served and a fingerprint of the
//! request's filters; a token replayed with other filters is refused.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::{error::FieldViolation, validate::Parsed};

pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: u64 = 500;

const TOKEN_VERSION: char = '1';

/// 0 → the default, above the ceiling → the ceiling, negative → refused.
pub fn page_size(raw: i32) -> Parsed<u64> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size < 0 => Err(FieldViolation::new("page_size", "must not be negative")),
        size => Ok((size as u64).min(MAX_PAGE_SIZE)),
    }
}

/// The sort key to continue after, if `token` is not empty. `scope` describes
/// every filter of the request; it must match the one the token was issued with.
pub fn page_token(token: &str, scope: &str) -> Parsed<Option<String>> {
    decode_token("page_token", token, scope)
}

/// The token that continues after `last_key` under the same `scope`.
pub fn next_page_token(last_key: &str, scope: &str) -> String {
    encode_token(last_key, scope)
}

/// An opaque token holding `key`, bound to `scope` (also used for stream cursors).
pub fn encode_token(key: &str, scope: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_VERSION}{:016x}{key}", fingerprint_of(scope)))
}

/// The key of a token from [`encode_token`], if it was issued for `scope`;
/// a violation of `field` otherwise. An empty token is `None`.
pub fn decode_token(field: &str, token: &str, scope: &str) -> Parsed<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || FieldViolation::new(field, "is not a token issued for this request's filters");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let rest = text.strip_prefix(TOKEN_VERSION).ok_or_else(invalid)?;
    let (fingerprint, key) = rest.split_at_checked(16).ok_or_else(invalid)?;
    if fingerprint != format!("{:016x}", fingerprint_of(scope)) || key.is_empty() {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// FNV-1a: stable across processes and releases, unlike `std`'s hasher.
fn fingerprint_of(scope: &str) -> u64 {
    scope.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(100_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn tokens_round_trip_only_under_the_same_filters() {
        let token = next_page_token("waba-0192", "client=c1");
        assert_eq!(page_token(&token, "client=c1").unwrap().as_deref(), Some("waba-0192"));
        assert!(page_token(&token, "client=c2").is_err());
        assert!(page_token("not a token", "client=c1").is_err());
        assert_eq!(page_token("", "client=c1").unwrap(), None);
    }
}
