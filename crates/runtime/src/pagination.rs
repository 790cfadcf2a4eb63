//! AIP-158 pagination: page sizes with a default and a ceiling, and opaque
//! page tokens (and stream cursors) that are sealed and bound to the filters
//! they were issued for.
//!
//! A token holds the sort key of the last item served and an HMAC-SHA256 tag
//! over that key and the request's scope (every filter, spelled out by the
//! service). The tag's key is derived from the deployment's signing key, so
//! every replica accepts the tokens of every other, and a caller can neither
//! forge a token nor replay one under other filters.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{error::FieldViolation, validate::Parsed};

pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: u64 = 500;

/// The first byte of a sealed token.
const SEALED: u8 = b'2';
/// The tag's length in a token: 128 bits of HMAC-SHA256.
const TAG_BYTES: usize = 16;
/// The first byte of the unsealed tokens the first releases issued.
const LEGACY: u8 = b'1';

/// 0 → the default, above the ceiling → the ceiling, negative → refused.
pub fn page_size(raw: i32) -> Parsed<u64> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size < 0 => Err(FieldViolation::new("page_size", "must not be negative")),
        size => Ok((size as u64).min(MAX_PAGE_SIZE)),
    }
}

/// A page of at most `page_size` rows out of `rows`, read with a limit of
/// `page_size + 1`, and whether more follow.
pub fn split_page<T>(mut rows: Vec<T>, page_size: u64) -> (Vec<T>, bool) {
    let more = rows.len() as u64 > page_size;
    rows.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
    (rows, more)
}

/// Seals and opens page tokens and cursors.
#[derive(Clone)]
pub struct TokenSeal {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSeal(..)")
    }
}

impl TokenSeal {
    /// The seal derived from `secret` (the signing key): a key of its own,
    /// so a token's tag is never a signature valid anywhere else.
    pub fn derived_from(secret: &[u8]) -> Self {
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable_key());
        derive.update(b"partnerhub page tokens and cursors v2");
        let key = derive.finalize().into_bytes();
        Self { mac: <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable_key()) }
    }

    /// The sort key to continue after, if `token` is not empty. `scope`
    /// describes every filter of the request; it must match the one the
    /// token was issued with.
    pub fn page_token(&self, token: &str, scope: &str) -> Parsed<Option<String>> {
        self.open("page_token", token, scope)
    }

    /// The token that continues after `last_key` under the same `scope`.
    pub fn next_page_token(&self, last_key: &str, scope: &str) -> String {
        self.seal(last_key, scope)
    }

    /// The `next_page_token` of a page whose last item has `last_key`: empty
    /// when nothing follows.
    pub fn continuation(&self, last_key: Option<&str>, more: bool, scope: &str) -> String {
        match last_key {
            Some(last_key) if more => self.next_page_token(last_key, scope),
            _ => String::new(),
        }
    }

    /// An opaque token holding `key`, bound to `scope`.
    pub fn seal(&self, key: &str, scope: &str) -> String {
        let tag = self.mac_over(key, scope).finalize().into_bytes();
        let mut token = Vec::with_capacity(1 + TAG_BYTES + key.len());
        token.push(SEALED);
        token.extend_from_slice(&tag[..TAG_BYTES]);
        token.extend_from_slice(key.as_bytes());
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The key of a token from [`TokenSeal::seal`], if it was issued for
    /// `scope`; a violation of `field` otherwise. An empty token is `None`.
    pub fn open(&self, field: &str, token: &str, scope: &str) -> Parsed<Option<String>> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || FieldViolation::new(field, "is not a token issued for this request's filters");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let (&version, rest) = bytes.split_first().ok_or_else(invalid)?;
        if version != SEALED {
            return Err(invalid());
        }
        let (tag, key) = rest.split_at_checked(TAG_BYTES).ok_or_else(invalid)?;
        let key = std::str::from_utf8(key).map_err(|_| invalid())?;
        // A constant-time comparison of the tag's first TAG_BYTES.
        if key.is_empty() || self.mac_over(key, scope).verify_truncated_left(tag).is_err() {
            return Err(invalid());
        }
        Ok(Some(key.to_owned()))
    }

    /// The key of an unsealed token of the first releases (a version byte,
    /// an unkeyed 64-bit fingerprint of the scope in hex, the key), if it was
    /// issued for `scope`. Only for what callers store durably (stream
    /// cursors); page tokens are short-lived and are always sealed.
    pub fn open_legacy(field: &str, token: &str, scope: &str) -> Parsed<Option<String>> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || FieldViolation::new(field, "is not a token issued for this request's filters");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let rest = text.strip_prefix(char::from(LEGACY)).ok_or_else(invalid)?;
        let (fingerprint, key) = rest.split_at_checked(16).ok_or_else(invalid)?;
        if fingerprint != format!("{:016x}", legacy_fingerprint(scope)) || key.is_empty() {
            return Err(invalid());
        }
        Ok(Some(key.to_owned()))
    }

    /// The MAC over the scope and the key, each length-prefixed, so that no
    /// two (scope, key) pairs share an input.
    fn mac_over(&self, key: &str, scope: &str) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        for part in [scope, key] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }
}

/// HMAC-SHA256 takes a key of any length; this cannot happen.
fn unreachable_key() -> Hmac<Sha256> {
    unreachable!("HMAC accepts keys of every length")
}

/// FNV-1a, as the first releases fingerprinted scopes.
fn legacy_fingerprint(scope: &str) -> u64 {
    scope.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal() -> TokenSeal {
        TokenSeal::derived_from(&[7; 32])
    }

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(100_000).unwrap(), MAX_PAGE_SIZE);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn tokens_round_trip_only_under_the_same_filters() {
        let seal = seal();
        let token = seal.next_page_token("waba-0192", "client=c1");
        assert_eq!(seal.page_token(&token, "client=c1").unwrap().as_deref(), Some("waba-0192"));
        assert!(seal.page_token(&token, "client=c2").is_err());
        assert!(seal.page_token("not a token", "client=c1").is_err());
        assert_eq!(seal.page_token("", "client=c1").unwrap(), None);
    }

    #[test]
    fn a_token_cannot_be_forged_or_altered_without_the_key() {
        let seal = seal();
        let token = seal.next_page_token("waba-0192", "client=c1");
        // Another deployment's key (or a guess) does not open it.
        assert!(TokenSeal::derived_from(&[8; 32]).page_token(&token, "client=c1").is_err());
        // Changing the key inside the token breaks the tag.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        assert!(seal.page_token(&URL_SAFE_NO_PAD.encode(&bytes), "client=c1").is_err());
        // The unkeyed form the first releases issued is no page token any more,
        // even with a correct fingerprint.
        let legacy = URL_SAFE_NO_PAD.encode(format!("1{:016x}waba-0192", legacy_fingerprint("client=c1")));
        assert!(seal.page_token(&legacy, "client=c1").is_err());
        assert_eq!(TokenSeal::open_legacy("after_cursor", &legacy, "client=c1").unwrap().as_deref(), Some("waba-0192"));
        assert!(TokenSeal::open_legacy("after_cursor", &legacy, "client=c2").is_err());
    }
}
