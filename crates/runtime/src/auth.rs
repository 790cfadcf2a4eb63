//! Who is calling: bearer tokens (HS256 JWTs) naming one [`Subject`].
//!
//! [`Authenticated`] runs in front of every Partner Hub service (not health or
//! reflection), before the request is read: it verifies the token, refuses a
//! kind of subject that may never call the method (the service's [`Policy`]),
//! so a stranger learns nothing of the method's rules, and puts the
//! [`Subject`] into the request's extensions, where handlers read it with
//! [`caller`]. Which resources a subject may act on is decided by each handler.

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
use tonic::{Request, Status};

use crate::{
    config::Settings,
    error::ErrorReason,
    jwks::{FetchSettings, JwksFile, JwksUrl, KeySet},
    pagination::TokenSeal,
};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// How far a token's times may be off (clock skew between hosts), in seconds.
const LEEWAY_SECONDS: u64 = 5;
/// The longest a token may be valid, unless configured (`auth.max_token_ttl`).
pub const DEFAULT_MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The key that signs and verifies every token of a deployment.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    /// A token whose expiry lies further ahead than this is refused (and none is minted).
    max_ttl: Duration,
    /// Page tokens and cursors are sealed with a key derived from this one.
    seal: TokenSeal,
    /// The identity provider's keys, when tokens come from one; then the HS256
    /// key only signs the calls between Partner Hub's own services.
    jwks: Option<Arc<KeySet>>,
    /// The `aud` an identity provider's token must name, when configured.
    audience: Option<String>,
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
    #[error(transparent)]
    Jwks(#[from] crate::jwks::JwksError),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot sign the token: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("a token may be valid for at most {max:?} (auth.max_token_ttl), not {ttl:?}")]
    TooLong { ttl: Duration, max: Duration },
}

/// RFC 7515 §4.1.11: a `crit` header names extensions the recipient must
/// understand, or refuse the token. We understand none.
fn refuse_critical_extensions(token: &str) -> Result<(), &'static str> {
    let header = token.split('.').next().unwrap_or_default();
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).map_err(|_| "its header is not base64url")?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| "its header is not a JSON object")?;
    if header.contains_key("crit") {
        return Err("its header names critical extensions (crit) this server does not understand");
    }
    Ok(())
}

const MIN_KEY_BYTES: usize = 32;

impl TokenKeys {
    pub fn from_secret(secret: &[u8], issuer: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            max_ttl: DEFAULT_MAX_TOKEN_TTL,
            seal: TokenSeal::derived_from(secret),
            jwks: None,
            audience: None,
        }
    }

    /// Also accepts the identity provider's tokens: RS256, ES256 or EdDSA,
    /// verified with the key of `jwks` their `kid` names, naming `audience`
    /// when one is given. HS256 tokens then speak only for services.
    pub fn with_identity_provider(mut self, jwks: KeySet, audience: Option<String>) -> Self {
        self.jwks = Some(Arc::new(jwks));
        self.audience = audience;
        self
    }

    /// Changes when the identity provider's keys change: a token verified
    /// before must be verified again (its key may be gone).
    fn generation(&self) -> u64 {
        self.jwks.as_ref().map_or(0, |jwks| jwks.generation())
    }

    /// The key and the rules a token with `header` is verified with.
    fn verifier(&self, header: &Header) -> Result<(DecodingKey, Validation), &'static str> {
        match (header.alg, &self.jwks) {
            (Algorithm::HS256, _) => Ok((self.decoding.clone(), self.validation.clone())),
            (Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA, Some(jwks)) => {
                let kid = header.kid.as_deref().ok_or("it names no key (kid)")?;
                let key = jwks.key(kid).ok_or("its key (kid) is not in the identity provider's key set")?;
                if key.algorithm != header.alg {
                    return Err("its algorithm is not its key's");
                }
                let mut validation = self.validation.clone();
                validation.algorithms = vec![key.algorithm];
                match &self.audience {
                    Some(audience) => validation.set_audience(&[audience]),
                    None => validation.validate_aud = false,
                }
                Ok((key.key, validation))
            }
            _ => Err("its algorithm is not accepted here"),
        }
    }

    /// Refuses tokens valid for longer than `max_ttl` from now.
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl;
        self
    }

    /// The seal of this deployment's page tokens and cursors.
    pub fn token_seal(&self) -> &TokenSeal {
        &self.seal
    }

    /// The configured key: `auth.signing_key`, else the key file, else (embedded
    /// database only) a new key written to `<data_dir>/signing.key`.
    /// With `auth.jwks_file` or `auth.jwks_url`, the identity provider's keys
    /// too (a served set is fetched later, see [`TokenKeys::warm_up`]).
    pub fn load_or_generate(settings: &Settings) -> Result<Self, KeyError> {
        let keys = Self::load_secret(settings)?.with_max_ttl(settings.auth.max_token_ttl);
        let auth = &settings.auth;
        let jwks = match (&auth.jwks_file, &auth.jwks_url) {
            (Some(path), _) => KeySet::File(JwksFile::load(path, auth.jwks_check_interval)?),
            (None, Some(url)) => {
                let ca_pem = match &auth.jwks_ca_file {
                    Some(path) => {
                        Some(std::fs::read(path).map_err(|source| KeyError::Read { path: path.clone(), source })?)
                    }
                    None => None,
                };
                let fetch = FetchSettings {
                    refresh_every: auth.jwks_refresh_interval,
                    min_fetch_interval: auth.jwks_min_fetch_interval,
                    ca_pem,
                };
                KeySet::Url(Arc::new(JwksUrl::new(url, fetch)?))
            }
            (None, None) => return Ok(keys),
        };
        Ok(keys.with_identity_provider(jwks, auth.audience.clone()))
    }

    /// Fetches the identity provider's served key set, if there is one, so
    /// the first token does not wait for it. A provider that cannot be
    /// reached is only logged: the services' own calls need none.
    pub async fn warm_up(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.warm_up().await;
        }
    }

    /// The identity provider's key set and the `kid` to fetch it for, when
    /// `token` names a key of a served set that is not known yet.
    fn key_to_fetch(&self, token: &str) -> Option<(Arc<KeySet>, String)> {
        let jwks = self.jwks.as_ref()?;
        let header = jsonwebtoken::decode_header(token).ok()?;
        // Only the provider's algorithms: a symmetric token never makes us fetch.
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA) {
            return None;
        }
        let kid = header.kid?;
        jwks.needs_fetch(&kid).then(|| (jwks.clone(), kid))
    }

    fn load_secret(settings: &Settings) -> Result<Self, KeyError> {
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

    /// A token for `subject`, valid for `ttl` (at most the longest a token may be valid).
    pub fn mint(&self, subject: &Subject, ttl: Duration) -> Result<String, TokenError> {
        if ttl > self.max_ttl {
            return Err(TokenError::TooLong { ttl, max: self.max_ttl });
        }
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: subject.to_string(),
            iss: self.issuer.clone(),
            iat: Some(now),
            exp: now + ttl.as_secs(),
            nbf: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(TokenError::Sign)
    }

    /// The subject of a valid token, or the reason it is not one.
    pub fn verify(&self, token: &str) -> Result<Subject, Status> {
        self.verify_until(token).map(|(subject, _)| subject)
    }

    /// The subject of a valid token and when it expires (seconds since the epoch).
    fn verify_until(&self, token: &str) -> Result<(Subject, u64), Status> {
        let invalid = |why: &str| unauthenticated(ErrorReason::InvalidToken, &format!("the token is not valid: {why}"));
        refuse_critical_extensions(token).map_err(invalid)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("it is not a JWT"))?;
        let (key, validation) = self.verifier(&header).map_err(invalid)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|err| match err.kind() {
            ErrorKind::ExpiredSignature => unauthenticated(ErrorReason::TokenExpired, "the token has expired"),
            ErrorKind::ImmatureSignature => invalid("it is not valid yet (nbf)"),
            ErrorKind::InvalidAudience => invalid("it is meant for another audience (aud)"),
            _ => unauthenticated(ErrorReason::InvalidToken, "the token is not valid"),
        })?;
        let now = jsonwebtoken::get_current_timestamp();
        if data.claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECONDS) {
            return Err(invalid("it was issued in the future (iat)"));
        }
        if data.claims.exp > now + self.max_ttl.as_secs() + LEEWAY_SECONDS {
            return Err(invalid("it is valid for longer than this deployment allows (exp)"));
        }
        let subject = data
            .claims
            .sub
            .parse()
            .map_err(|_| unauthenticated(ErrorReason::InvalidToken, "the token's subject is not valid"))?;
        if header.alg == Algorithm::HS256 && self.jwks.is_some() && !matches!(subject, Subject::Service(_)) {
            return Err(invalid(
                "people and tenants sign in with the identity provider; the shared key is for services",
            ));
        }
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

/// Verifies bearer tokens: no valid token, no call.
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
    /// The third part is the key set's generation the token was verified under.
    verified: Arc<quick_cache::sync::Cache<String, (Subject, u64, u64)>>,
    /// The one identity that may make the migration calls ([`May::MigrationService`]).
    migration_service: Arc<Subject>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("verified", &self.verified.len()).finish_non_exhaustive()
    }
}

/// How many verified tokens an authenticator remembers.
const VERIFIED_TOKENS: usize = 10_000;

impl Authenticator {
    /// `migration_service`: the one identity that may make the migration calls.
    pub fn new(keys: Arc<TokenKeys>, migration_service: Subject) -> Self {
        Self {
            keys,
            verified: Arc::new(quick_cache::sync::Cache::new(VERIFIED_TOKENS)),
            migration_service: Arc::new(migration_service),
        }
    }

    fn authenticate(&self, headers: &http::HeaderMap) -> Result<Subject, Status> {
        let missing = || unauthenticated(ErrorReason::MissingCredentials, "send `authorization: Bearer <token>`");
        let token = bearer_token(headers).ok_or_else(missing)?;
        let now = jsonwebtoken::get_current_timestamp();
        let generation = self.keys.generation();
        match self.verified.get(token) {
            Some((subject, expires, verified_under)) if expires > now && verified_under == generation => {
                return Ok(subject);
            }
            Some(_) => {
                self.verified.remove(token);
            }
            None => {}
        }
        let (subject, expires) = self.keys.verify_until(token)?;
        self.verified.insert(token.to_owned(), (subject.clone(), expires, generation));
        Ok(subject)
    }
}

/// The token of an `authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim()
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

impl Authenticator {
    /// What must be fetched before the request's token can be verified: the
    /// identity provider's key set, when the token names a key of it that is
    /// not known yet (and the token was not verified before).
    fn key_to_fetch(&self, headers: &http::HeaderMap) -> Option<(Arc<KeySet>, String)> {
        if !matches!(self.keys.jwks.as_deref(), Some(KeySet::Url(_))) {
            return None;
        }
        let token = bearer_token(headers)?;
        if self.verified.contains_key(token) {
            return None;
        }
        self.keys.key_to_fetch(token)
    }
}

/// Who may call a method at all: a kind of subject, or the one service
/// identity entrusted with the migration calls (`auth.migration_service`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum May {
    Clients,
    Partners,
    Support,
    /// Every `service:<name>`.
    Services,
    /// Only the configured migration service.
    MigrationService,
}

/// A service's methods (by name, e.g. `GetWaba`) and who may call each. A
/// method missing from it may be called by nobody.
pub type Policy = &'static [(&'static str, &'static [May])];

impl Authenticator {
    fn may_call(&self, subject: &Subject, allowed: &[May]) -> bool {
        allowed.iter().any(|may| match may {
            May::Clients => matches!(subject, Subject::Client(_)),
            May::Partners => matches!(subject, Subject::Partner(_)),
            May::Support => subject.is_support(),
            May::Services => subject.is_service(),
            May::MigrationService => subject == self.migration_service.as_ref(),
        })
    }
}

/// A call through [`Authenticated`] as it is answered.
type BoxedCall<E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

/// A generated server behind the authenticator and its policy.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Authenticator,
    policy: Policy,
}

impl<S> Authenticated<S> {
    pub fn new(inner: S, authenticator: Authenticator, policy: Policy) -> Self {
        Self { inner, authenticator, policy }
    }

    /// The subject, if it may call the method at `path`.
    fn admit(&self, path: &str, headers: &http::HeaderMap) -> Result<Subject, Status> {
        let subject = self.authenticator.authenticate(headers)?;
        let method = path.rsplit('/').next().unwrap_or_default();
        let allowed = self.policy.iter().find(|(name, _)| *name == method).map_or(&[][..], |(_, may)| *may);
        if self.authenticator.may_call(&subject, allowed) {
            Ok(subject)
        } else {
            Err(crate::error::permission_denied())
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for Authenticated<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxedCall<S::Error>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some((jwks, kid)) = self.authenticator.key_to_fetch(request.headers()) {
            // Rare (a new key of the identity provider): wait for its key set,
            // then admit as below. The ready service goes along; a clone stays.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            let mut this = Self { inner, authenticator: self.authenticator.clone(), policy: self.policy };
            return Box::pin(async move {
                if let Err(problem) = jwks.learn(&kid).await {
                    let message = format!(
                        "cannot verify the token now: the identity provider's keys cannot be fetched ({problem})"
                    );
                    return Ok(crate::error::status(tonic::Code::Unavailable, ErrorReason::Unavailable, message, [])
                        .into_http());
                }
                this.admit_and_call(request).await
            });
        }
        self.admit_and_call(request)
    }
}

impl<S> Authenticated<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    fn admit_and_call(&mut self, mut request: http::Request<tonic::body::Body>) -> BoxedCall<S::Error> {
        match self.admit(request.uri().path(), request.headers()) {
            Ok(subject) => {
                request.extensions_mut().insert(subject);
                Box::pin(self.inner.call(request))
            }
            Err(refusal) => Box::pin(std::future::ready(Ok(refusal.into_http()))),
        }
    }
}

/// The authenticated caller of a request that went through [`Authenticated`].
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
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as URL_SAFE;

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
        let authenticator = Authenticator::new(keys.clone(), Subject::Service("migrator".into()));
        let token = keys.mint(&Subject::Service("messaging".into()), Duration::from_secs(60)).unwrap();
        let mut metadata = http::HeaderMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(authenticator.authenticate(&metadata).unwrap(), Subject::Service("messaging".into()));
        assert_eq!(authenticator.verified.len(), 1, "remembered");
        assert_eq!(authenticator.authenticate(&metadata).unwrap(), Subject::Service("messaging".into()));

        // A remembered token past its expiry is checked again, and refused.
        authenticator.verified.insert(token.clone(), (Subject::Service("messaging".into()), 1, 0));
        let claims =
            Claims { sub: "service:messaging".into(), iss: "partnerhub".into(), iat: Some(1), exp: 2, nbf: None };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        authenticator.verified.insert(expired.clone(), (Subject::Service("messaging".into()), 2, 0));
        let mut expired_metadata = http::HeaderMap::new();
        expired_metadata.insert("authorization", format!("Bearer {expired}").parse().unwrap());
        assert_eq!(authenticator.authenticate(&expired_metadata).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(authenticator.verified.get(&expired), None, "an expired entry is dropped, not kept");
    }

    #[test]
    fn a_burst_of_tokens_seen_once_does_not_evict_the_ones_in_use() {
        let keys = Arc::new(keys());
        let authenticator = Authenticator::new(keys.clone(), Subject::Service("migrator".into()));
        let metadata_for = |token: &str| {
            let mut metadata = http::HeaderMap::new();
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

    /// A token signed with the right key, but with these claims and header.
    fn signed(keys: &TokenKeys, header: &Header, iat: u64, exp: u64, nbf: Option<u64>) -> String {
        let claims = Claims { sub: "client:acme".into(), iss: "partnerhub".into(), iat: Some(iat), exp, nbf };
        jsonwebtoken::encode(header, &claims, &keys.encoding).unwrap()
    }

    #[test]
    fn tokens_not_yet_valid_issued_in_the_future_too_long_lived_or_with_critical_extensions_are_refused() {
        let keys = keys();
        let now = jsonwebtoken::get_current_timestamp();
        let hs256 = Header::new(Algorithm::HS256);
        assert!(keys.verify(&signed(&keys, &hs256, now, now + 60, None)).is_ok());
        assert!(keys.verify(&signed(&keys, &hs256, now, now + 60, Some(now + 1))).is_ok(), "within the leeway");
        let refusals = [
            ("nbf", signed(&keys, &hs256, now, now + 600, Some(now + 300))),
            ("iat", signed(&keys, &hs256, now + 300, now + 600, None)),
            ("exp", signed(&keys, &hs256, now, now + 25 * 3600, None)),
        ];
        for (claim, token) in refusals {
            let status = keys.verify(&token).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{claim}");
            assert!(status.message().contains(&format!("({claim})")), "{claim}: {}", status.message());
        }
        // A shorter configured maximum refuses what the default allows.
        let strict = TokenKeys::from_secret(&[7u8; 32], "partnerhub").with_max_ttl(Duration::from_secs(600));
        assert!(strict.verify(&signed(&strict, &hs256, now, now + 3600, None)).is_err());
        assert!(matches!(
            strict.mint(&Subject::Client("acme".into()), Duration::from_secs(3600)),
            Err(TokenError::TooLong { .. })
        ));

        // jsonwebtoken's Header has no `crit`: write the header by hand.
        let header = URL_SAFE.encode(r#"{"alg":"HS256","typ":"JWT","crit":["exp"]}"#);
        let good = signed(&keys, &hs256, now, now + 60, None);
        let payload = good.split('.').nth(1).unwrap();
        let message = format!("{header}.{payload}");
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &keys.encoding, Algorithm::HS256).unwrap();
        let critical = format!("{message}.{signature}");
        let status = keys.verify(&critical).unwrap_err();
        assert!(status.message().contains("crit"), "{}", status.message());
    }

    #[test]
    fn the_policy_admits_only_the_kinds_it_names_and_the_migration_calls_only_the_migration_service() {
        let keys = Arc::new(keys());
        let authenticator = Authenticator::new(keys.clone(), Subject::Service("migrator".into()));
        const POLICY: Policy = &[("Read", &[May::Clients, May::Services]), ("Move", &[May::MigrationService])];
        let gate = Authenticated::new((), authenticator, POLICY);
        let headers_for = |subject: &str| {
            let token = keys.mint(&subject.parse().unwrap(), Duration::from_secs(60)).unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            headers
        };
        let admitted =
            |path: &str, subject: &str| gate.admit(path, &headers_for(subject)).map_err(|status| status.code());
        assert!(admitted("/x.v1.S/Read", "client:acme").is_ok());
        assert!(admitted("/x.v1.S/Read", "service:other").is_ok());
        assert_eq!(admitted("/x.v1.S/Read", "partner:p1"), Err(tonic::Code::PermissionDenied));
        assert!(admitted("/x.v1.S/Move", "service:migrator").is_ok());
        assert_eq!(admitted("/x.v1.S/Move", "service:other"), Err(tonic::Code::PermissionDenied));
        assert_eq!(admitted("/x.v1.S/Move", "support:alice"), Err(tonic::Code::PermissionDenied));
        assert_eq!(admitted("/x.v1.S/Unlisted", "support:alice"), Err(tonic::Code::PermissionDenied), "fail closed");
        assert_eq!(
            gate.admit("/x.v1.S/Read", &http::HeaderMap::new()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let keys = Arc::new(keys());
        let authenticator = Authenticator::new(keys.clone(), Subject::Service("migrator".into()));
        let token = keys.mint(&Subject::Client("acme".into()), Duration::from_secs(60)).unwrap();
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let mut metadata = http::HeaderMap::new();
            metadata.insert("authorization", format!("{scheme} {token}").parse().unwrap());
            assert_eq!(authenticator.authenticate(&metadata).unwrap(), Subject::Client("acme".into()), "{scheme}");
        }
        let mut metadata = http::HeaderMap::new();
        metadata.insert("authorization", format!("Basic {token}").parse().unwrap());
        assert_eq!(authenticator.authenticate(&metadata).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn an_expired_token_is_unauthenticated() {
        let keys = keys();
        let claims = Claims { sub: "client:acme".into(), iss: "partnerhub".into(), iat: Some(1), exp: 2, nbf: None };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        let status = keys.verify(&token).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("expired"), "{}", status.message());
    }
}
