//! Who is calling: bearer tokens (HS256 JWTs) naming one [`Subject`].
//!
//! The [`Authenticator`] interceptor runs in front of every Partner Hub service
//! (not health or reflection): it verifies the token and puts the [`Subject`]
//! into the request's extensions, where handlers read it with [`caller`].
//! What each subject may do is decided by each service, RPC by RPC.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tonic::{Request, Status, metadata::MetadataMap};

use crate::{config::Settings, error::ErrorReason, pagination::TokenSeal};

/// The one party a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Client(String),
    Partner(String),
    /// An internal service, by name (e.g. `partner-change`).
    Service(String),
    /// A support engineer, by user name; may act for any client.
    Support(String),
}

impl Subject {
    pub fn is_support(&self) -> bool {
        matches!(self, Subject::Support(_))
    }

    pub fn is_service(&self) -> bool {
        matches!(self, Subject::Service(_))
    }

    /// Support and internal services see every tenant.
    pub fn is_operator(&self) -> bool {
        self.is_support() || self.is_service()
    }

    pub fn is_client(&self, client_id: &str) -> bool {
        matches!(self, Subject::Client(id) if id == client_id)
    }

    pub fn is_partner(&self, partner_id: &str) -> bool {
        matches!(self, Subject::Partner(id) if id == partner_id)
    }

    fn kind(&self) -> &'static str {
        match self {
            Subject::Client(_) => "client",
            Subject::Partner(_) => "partner",
            Subject::Service(_) => "service",
            Subject::Support(_) => "support",
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Subject::Client(id) | Subject::Partner(id) | Subject::Service(id) | Subject::Support(id)) = self;
        write!(f, "{}:{id}", self.kind())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a subject is `client:<id>`, `partner:<id>`, `service:<name>` or `support:<user>` (got {0:?})")]
pub struct InvalidSubject(String);

impl FromStr for Subject {
    type Err = InvalidSubject;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidSubject(text.to_owned());
        let (kind, id) = text.split_once(':').ok_or_else(invalid)?;
        let id_ok =
            !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
        if !id_ok {
            return Err(invalid());
        }
        let id = id.to_owned();
        match kind {
            "client" => Ok(Subject::Client(id)),
            "partner" => Ok(Subject::Partner(id)),
            "service" => Ok(Subject::Service(id)),
            "support" => Ok(Subject::Support(id)),
            _ => Err(invalid()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    iat: u64,
    exp: u64,
}

/// The key that signs and verifies every token of a deployment.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    /// Page tokens and cursors are sealed with a key derived from this one.
    seal: TokenSeal,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the signing key file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the signing key {origin} is not valid base64 of at least 32 bytes")]
    Malformed { origin: String },
    #[error(
        "no signing key: set auth.signing_key or auth.signing_key_file (a key is generated \
         only for the embedded SQLite database; replicas on PostgreSQL must share one key)"
    )]
    Missing,
    #[error("cannot generate a signing key: {0}")]
    Random(getrandom::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

const MIN_KEY_BYTES: usize = 32;

impl TokenKeys {
    pub fn from_secret(secret: &[u8], issuer: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            seal: TokenSeal::derived_from(secret),
        }
    }

    /// The seal of this deployment's page tokens and cursors.
    pub fn token_seal(&self) -> &TokenSeal {
        &self.seal
    }

    /// The configured key: `auth.signing_key`, else the key file, else (embedded
    /// database only) a new key written to `<data_dir>/signing.key`.
    pub fn load_or_generate(settings: &Settings) -> Result<Self, KeyError> {
        let issuer = &settings.auth.issuer;
        if let Some(key) = &settings.auth.signing_key {
            return Ok(Self::from_secret(&decode_key(key.expose_secret(), "auth.signing_key")?, issuer));
        }
        let path = match &settings.auth.signing_key_file {
            Some(path) => path.clone(),
            None => settings.data_dir.join("signing.key"),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Self::from_secret(&decode_key(text.trim(), &path.display().to_string())?, issuer)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if settings.auth.signing_key_file.is_some() || !settings.uses_embedded_database() {
                    return Err(KeyError::Missing);
                }
                let secret = generate_key_file(&path)?;
                tracing::info!(path = %path.display(), "generated a new token signing key");
                Ok(Self::from_secret(&secret, issuer))
            }
            Err(source) => Err(KeyError::Read { path, source }),
        }
    }

    /// A token for `subject`, valid for `ttl`.
    pub fn mint(&self, subject: &Subject, ttl: Duration) -> Result<String, TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims { sub: subject.to_string(), iss: self.issuer.clone(), iat: now, exp: now + ttl.as_secs() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(TokenError::Sign)
    }

    /// The subject of a valid token, or the reason it is not one.
    pub fn verify(&self, token: &str) -> Result<Subject, Status> {
        self.verify_until(token).map(|(subject, _)| subject)
    }

    /// The subject of a valid token and when it expires (seconds since the epoch).
    fn verify_until(&self, token: &str) -> Result<(Subject, u64), Status> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|err| match err
            .kind()
        {
            ErrorKind::ExpiredSignature => unauthenticated(ErrorReason::TokenExpired, "the token has expired"),
            _ => unauthenticated(ErrorReason::InvalidToken, "the token is not valid"),
        })?;
        let subject = data
            .claims
            .sub
            .parse()
            .map_err(|_| unauthenticated(ErrorReason::InvalidToken, "the token's subject is not valid"))?;
        Ok((subject, data.claims.exp))
    }
}

/// A new random key, written (base64, owner-only permissions) to `path`.
pub fn generate_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut secret = vec![0u8; MIN_KEY_BYTES];
    getrandom::fill(&mut secret).map_err(KeyError::Random)?;
    let write_err = |source| KeyError::Write { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write_err)?;
    std::io::Write::write_all(&mut file, BASE64.encode(&secret).as_bytes()).map_err(write_err)?;
    Ok(secret)
}

fn decode_key(text: &str, origin: &str) -> Result<Vec<u8>, KeyError> {
    match BASE64.decode(text.trim()) {
        Ok(secret) if secret.len() >= MIN_KEY_BYTES => Ok(secret),
        _ => Err(KeyError::Malformed { origin: origin.to_owned() }),
    }
}

fn unauthenticated(reason: ErrorReason, message: &str) -> Status {
    crate::error::status(tonic::Code::Unauthenticated, reason, message, [])
}

/// The interceptor in front of every Partner Hub service: no valid bearer
/// token, no call.
///
/// Services call with the same token many times (`CheckPermission` on every
/// message sent), so verified tokens are remembered until they expire: a
/// repeat costs a hash lookup instead of a signature check.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<TokenKeys>,
    /// Token → its subject and expiry (seconds since the epoch). Bounded, with
    /// S3-FIFO eviction (`quick_cache`): a burst of tokens seen once does not
    /// push out the ones callers keep sending. An entry past its expiry is
    /// never used, and is dropped when next looked up.
    verified: Arc<quick_cache::sync::Cache<String, (Subject, u64)>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("verified", &self.verified.len()).finish_non_exhaustive()
    }
}

/// How many verified tokens an authenticator remembers.
const VERIFIED_TOKENS: usize = 10_000;

impl Authenticator {
    pub fn new(keys: Arc<TokenKeys>) -> Self {
        Self { keys, verified: Arc::new(quick_cache::sync::Cache::new(VERIFIED_TOKENS)) }
    }

    fn authenticate(&self, metadata: &MetadataMap) -> Result<Subject, Status> {
        let missing = || unauthenticated(ErrorReason::MissingCredentials, "send `authorization: Bearer <token>`");
        let header = metadata.get("authorization").ok_or_else(missing)?;
        let token = header.to_str().ok().and_then(|value| value.strip_prefix("Bearer ")).ok_or_else(missing)?.trim();
        let now = jsonwebtoken::get_current_timestamp();
        match self.verified.get(token) {
            Some((subject, expires)) if expires > now => return Ok(subject),
            Some(_) => {
                self.verified.remove(token);
            }
            None => {}
        }
        let (subject, expires) = self.keys.verify_until(token)?;
        self.verified.insert(token.to_owned(), (subject.clone(), expires));
        Ok(subject)
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let subject = self.authenticate(request.metadata())?;
        request.extensions_mut().insert(subject);
        Ok(request)
    }
}

/// The authenticated caller of a request that went through [`Authenticator`].
pub fn caller<T>(request: &Request<T>) -> Result<&Subject, Status> {
    request.extensions().get::<Subject>().ok_or_else(|| {
        tracing::error!("a request reached a handler without passing the authenticator");
        crate::error::internal()
    })
}

/// Attaches a bearer token to outgoing calls (service-to-service clients).
#[derive(Clone)]
pub struct BearerToken {
    header: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// `None` when the token cannot be a header value (it is not printable ASCII).
    pub fn new(token: &str) -> Option<Self> {
        format!("Bearer {token}").parse().ok().map(|header| Self { header })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.header.clone());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::from_secret(&[7u8; 32], "partnerhub")
    }

    #[test]
    fn subjects_round_trip_and_bad_ones_are_refused() {
        for text in ["client:acme", "partner:p-1", "service:partner-change", "support:alice@example.com"] {
            let subject: Subject = text.parse().unwrap();
            assert_eq!(subject.to_string(), text);
        }
        for text in ["client:", "client", "admin:x", "client:a b", ""] {
            assert!(text.parse::<Subject>().is_err(), "{text:?} must be refused");
        }
    }

    #[test]
    fn a_minted_token_verifies_and_a_tampered_one_does_not() {
        let keys = keys();
        let token = keys.mint(&Subject::Client("acme".into()), Duration::from_secs(60)).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), Subject::Client("acme".into()));

        let other = TokenKeys::from_secret(&[8u8; 32], "partnerhub");
        assert_eq!(other.verify(&token).unwrap_err().code(), tonic::Code::Unauthenticated);
        let wrong_issuer = TokenKeys::from_secret(&[7u8; 32], "someone-else");
        assert_eq!(wrong_issuer.verify(&token).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_authenticator_remembers_a_token_only_until_it_expires() {
        let keys = Arc::new(keys());
        let authenticator = Authenticator::new(keys.clone());
        let token = keys.mint(&Subject::Service("messaging".into()), Duration::from_secs(60)).unwrap();
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(authenticator.authenticate(&metadata).unwrap(), Subject::Service("messaging".into()));
        assert_eq!(authenticator.verified.len(), 1, "remembered");
        assert_eq!(authenticator.authenticate(&metadata).unwrap(), Subject::Service("messaging".into()));

        // A remembered token past its expiry is checked again, and refused.
        authenticator.verified.insert(token.clone(), (Subject::Service("messaging".into()), 1));
        let claims = Claims { sub: "service:messaging".into(), iss: "partnerhub".into(), iat: 1, exp: 2 };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        authenticator.verified.insert(expired.clone(), (Subject::Service("messaging".into()), 2));
        let mut expired_metadata = MetadataMap::new();
        expired_metadata.insert("authorization", format!("Bearer {expired}").parse().unwrap());
        assert_eq!(authenticator.authenticate(&expired_metadata).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(authenticator.verified.get(&expired), None, "an expired entry is dropped, not kept");
    }

    #[test]
    fn a_burst_of_tokens_seen_once_does_not_evict_the_ones_in_use() {
        let keys = Arc::new(keys());
        let authenticator = Authenticator::new(keys.clone());
        let metadata_for = |token: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
            metadata
        };
        let hot = keys.mint(&Subject::Service("messaging".into()), Duration::from_secs(600)).unwrap();
        for _ in 0..3 {
            authenticator.authenticate(&metadata_for(&hot)).unwrap();
        }
        for index in 0..VERIFIED_TOKENS * 2 {
            let once = keys.mint(&Subject::Client(format!("c{index}")), Duration::from_secs(600)).unwrap();
            authenticator.authenticate(&metadata_for(&once)).unwrap();
            authenticator.authenticate(&metadata_for(&hot)).unwrap();
        }
        assert!(authenticator.verified.len() <= VERIFIED_TOKENS, "bounded: {}", authenticator.verified.len());
        assert!(authenticator.verified.get(&hot).is_some(), "the token in use stays remembered");
    }

    #[test]
    fn an_expired_token_is_unauthenticated() {
        let keys = keys();
        let claims = Claims { sub: "client:acme".into(), iss: "partnerhub".into(), iat: 1, exp: 2 };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        let status = keys.verify(&token).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("expired"), "{}", status.message());
    }
}
