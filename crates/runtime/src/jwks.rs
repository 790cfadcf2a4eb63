//! An identity provider's public keys, chosen by `kid`: a JWK Set file
//! (`auth.jwks_file`) or one served over HTTPS (`auth.jwks_url`). Either is
//! read again when it may have changed, so keys rotate without a restart.
//! RS256, ES256 and EdDSA keys are used; any other key is skipped with a warning.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm},
};

/// A key of the set, and the one algorithm it verifies.
#[derive(Clone)]
pub struct VerifyingKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

/// The key set, as last read.
struct Loaded {
    keys: HashMap<String, VerifyingKey>,
    /// The file's modification time and length when read: a change to either rereads it.
    stamp: Option<(SystemTime, u64)>,
    /// Bumped at every reread, so that tokens verified with a removed key are checked again.
    generation: u64,
}

pub struct JwksFile {
    path: PathBuf,
    check_every: Duration,
    loaded: RwLock<Loaded>,
    checked_at: Mutex<Instant>,
}

impl std::fmt::Debug for JwksFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksFile").field("path", &self.path).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot use the JWK Set {origin}: {problem}")]
pub struct JwksError {
    origin: String,
    problem: String,
}

/// The identity provider's key set, wherever it is kept.
#[derive(Debug)]
pub enum KeySet {
    File(JwksFile),
    Url(Arc<JwksUrl>),
}

impl KeySet {
    /// The key named `kid`, as far as it is known now (see [`KeySet::learn`]).
    pub fn key(&self, kid: &str) -> Option<VerifyingKey> {
        match self {
            KeySet::File(file) => file.key(kid),
            KeySet::Url(url) => url.key(kid),
        }
    }

    /// Whether `kid` must be fetched before a token naming it can be verified.
    pub fn needs_fetch(&self, kid: &str) -> bool {
        matches!(self, KeySet::Url(url) if url.key(kid).is_none())
    }

    /// Changes whenever the set changed: a token verified before must be verified again.
    pub fn generation(&self) -> u64 {
        match self {
            KeySet::File(file) => file.generation(),
            KeySet::Url(url) => {
                JwksUrl::refresh_in_background_if_due(url);
                url.generation()
            }
        }
    }

    /// Makes sure the set is current enough to know `kid` if the provider has
    /// it; `Err` says why the provider could not be asked.
    pub async fn learn(&self, kid: &str) -> Result<(), String> {
        match self {
            // A file is reread at once by `key` for an unknown kid.
            KeySet::File(_) => Ok(()),
            KeySet::Url(url) => url.learn(kid).await,
        }
    }

    /// Fetches a served set once, so the first token does not wait for it.
    pub async fn warm_up(&self) {
        if let KeySet::Url(url) = self
            && let Err(problem) = url.learn("").await
        {
            tracing::warn!(url = %url.url, %problem, "cannot fetch the identity provider's key set yet; will try again when a token needs it");
        }
    }
}

impl JwksFile {
    /// Reads the set at `path`; it must be readable and hold at least one usable key.
    pub fn load(path: &Path, check_every: Duration) -> Result<Self, JwksError> {
        let error = |problem: String| JwksError { origin: path.display().to_string(), problem };
        let (keys, stamp) = read(path).map_err(error)?;
        if keys.is_empty() {
            return Err(error("it holds no RS256, ES256 or EdDSA key with a kid".to_owned()));
        }
        Ok(Self {
            path: path.to_owned(),
            check_every,
            loaded: RwLock::new(Loaded { keys, stamp, generation: 1 }),
            checked_at: Mutex::new(Instant::now()),
        })
    }

    /// The key named `kid`, after rereading the file if it changed (when a
    /// check is due, or at once for an unknown `kid`).
    pub fn key(&self, kid: &str) -> Option<VerifyingKey> {
        let known = self.loaded.read().unwrap_or_else(PoisonError::into_inner).keys.contains_key(kid);
        self.reread_if_changed(!known);
        self.loaded.read().unwrap_or_else(PoisonError::into_inner).keys.get(kid).cloned()
    }

    /// Changes whenever the set was reread.
    pub fn generation(&self) -> u64 {
        self.reread_if_changed(false);
        self.loaded.read().unwrap_or_else(PoisonError::into_inner).generation
    }

    fn reread_if_changed(&self, now: bool) {
        {
            let mut checked_at = self.checked_at.lock().unwrap_or_else(PoisonError::into_inner);
            if !now && checked_at.elapsed() < self.check_every {
                return;
            }
            *checked_at = Instant::now();
        }
        let current = stamp(&self.path);
        if current == self.loaded.read().unwrap_or_else(PoisonError::into_inner).stamp {
            return;
        }
        match read(&self.path) {
            Ok((keys, stamp)) => {
                let mut loaded = self.loaded.write().unwrap_or_else(PoisonError::into_inner);
                tracing::info!(path = %self.path.display(), keys = keys.len(), "reread the JWK Set");
                *loaded = Loaded { keys, stamp, generation: loaded.generation + 1 };
            }
            // Keep the keys we have: a half-written file must not lock everybody out.
            Err(problem) => {
                tracing::warn!(path = %self.path.display(), %problem, "cannot reread the JWK Set; keeping the keys read before")
            }
        }
    }
}

/// The longest JWK Set document fetched; real ones are a few kilobytes.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// An identity provider's key set served at `auth.jwks_url`. A token naming
/// a `kid` not yet known fetches it at once, but the set is fetched at most
/// once per `auth.jwks_min_fetch_interval` for that (so made-up `kid`s cannot
/// turn us into a flood on the provider), and requests waiting meanwhile
/// share one fetch. Every `auth.jwks_refresh_interval` it is fetched again in
/// the background, so a removed key stops verifying. A failed fetch keeps the
/// keys fetched before.
pub struct JwksUrl {
    url: reqwest::Url,
    client: reqwest::Client,
    refresh_every: Duration,
    min_fetch_interval: Duration,
    state: RwLock<Fetched>,
    /// Held while fetching.
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// Fetches finished: a request that waited for the lock skips its own
    /// fetch when one finished meanwhile.
    fetches: AtomicU64,
}

struct Fetched {
    keys: HashMap<String, VerifyingKey>,
    /// The document the keys came from: an identical one changes nothing.
    document: Vec<u8>,
    generation: u64,
    attempted_at: Option<Instant>,
    /// Why the last fetch failed, if it did.
    failure: Option<String>,
}

impl std::fmt::Debug for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksUrl").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

/// How a served key set is fetched and kept current.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub refresh_every: Duration,
    pub min_fetch_interval: Duration,
    /// Trusted besides the system's roots (a private identity provider's CA), PEM.
    pub ca_pem: Option<Vec<u8>>,
}

/// How long one fetch of a key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

impl JwksUrl {
    /// A key set to be fetched from `url` (`https://` only); nothing is fetched yet.
    pub fn new(url: &str, settings: FetchSettings) -> Result<Self, JwksError> {
        let error = |problem: String| JwksError { origin: url.to_owned(), problem };
        let parsed = reqwest::Url::parse(url).map_err(|err| error(err.to_string()))?;
        if parsed.scheme() != "https" {
            return Err(error("it must be an https:// URL".to_owned()));
        }
        let mut client = reqwest::Client::builder()
            .https_only(true)
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("partnerhub/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            let ca = reqwest::Certificate::from_pem(pem).map_err(|err| error(format!("its CA: {err}")))?;
            client = client.add_root_certificate(ca);
        }
        let client = client.build().map_err(|err| error(err.to_string()))?;
        Ok(Self {
            url: parsed,
            client,
            refresh_every: settings.refresh_every,
            min_fetch_interval: settings.min_fetch_interval,
            state: RwLock::new(Fetched {
                keys: HashMap::new(),
                document: Vec::new(),
                generation: 1,
                attempted_at: None,
                failure: None,
            }),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            fetches: AtomicU64::new(0),
        })
    }

    fn key(&self, kid: &str) -> Option<VerifyingKey> {
        self.state.read().unwrap_or_else(PoisonError::into_inner).keys.get(kid).cloned()
    }

    fn generation(&self) -> u64 {
        self.state.read().unwrap_or_else(PoisonError::into_inner).generation
    }

    async fn learn(&self, kid: &str) -> Result<(), String> {
        if self.key(kid).is_some() {
            return Ok(());
        }
        let fetches_before = self.fetches.load(Ordering::Acquire);
        let _fetching = self.fetching.lock().await;
        let fetched_meanwhile = self.fetches.load(Ordering::Acquire) != fetches_before;
        let recently = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .attempted_at
            .is_some_and(|at| at.elapsed() < self.min_fetch_interval);
        if self.key(kid).is_none() && !fetched_meanwhile && !recently {
            self.fetch().await;
        }
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        match &state.failure {
            Some(problem) if !state.keys.contains_key(kid) => Err(problem.clone()),
            _ => Ok(()),
        }
    }

    /// Starts a background fetch when the last one is older than the refresh
    /// interval and none is running.
    fn refresh_in_background_if_due(this: &Arc<Self>) {
        let due = this
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .attempted_at
            .is_some_and(|at| at.elapsed() >= this.refresh_every);
        if !due {
            return;
        }
        let (Ok(runtime), Ok(fetching)) =
            (tokio::runtime::Handle::try_current(), this.fetching.clone().try_lock_owned())
        else {
            return;
        };
        let this = this.clone();
        runtime.spawn(async move {
            this.fetch().await;
            drop(fetching);
        });
    }

    /// Fetches the set and keeps it, or records why it could not. The caller
    /// holds `fetching`.
    async fn fetch(&self) {
        self.state.write().unwrap_or_else(PoisonError::into_inner).attempted_at = Some(Instant::now());
        let fetched = self.download().await.and_then(|document| Ok((parse(&document, self.url.as_str())?, document)));
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            match fetched {
                Ok((keys, _)) if keys.is_empty() => {
                    state.failure = Some("it holds no RS256, ES256 or EdDSA key with a kid".to_owned());
                }
                Ok((keys, document)) => {
                    if document != state.document {
                        tracing::info!(url = %self.url, keys = keys.len(), "fetched the identity provider's key set");
                        state.generation += 1;
                        state.keys = keys;
                        state.document = document;
                    }
                    state.failure = None;
                }
                Err(problem) => state.failure = Some(problem),
            }
            if let Some(problem) = &state.failure {
                tracing::warn!(url = %self.url, %problem, "cannot fetch the identity provider's key set; keeping the keys fetched before");
            }
        }
        self.fetches.fetch_add(1, Ordering::AcqRel);
    }

    async fn download(&self) -> Result<Vec<u8>, String> {
        let failed = |err: reqwest::Error| crate::error::with_causes(&err);
        let mut response = self.client.get(self.url.clone()).send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(format!("it answered HTTP {}", response.status()));
        }
        let mut document = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if document.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("it is larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
            document.extend_from_slice(&chunk);
        }
        Ok(document)
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

type Read = (HashMap<String, VerifyingKey>, Option<(SystemTime, u64)>);

fn read(path: &Path) -> Result<Read, String> {
    let stamp = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|err| err.to_string())?;
    Ok((parse(text.as_bytes(), &path.display().to_string())?, stamp))
}

/// The usable keys of a JWK Set document; `origin` names it in warnings.
fn parse(document: &[u8], origin: &str) -> Result<HashMap<String, VerifyingKey>, String> {
    let set: JwkSet = serde_json::from_slice(document).map_err(|err| format!("not a JWK Set: {err}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::warn!(%origin, "skipping a JWK without a kid");
            continue;
        };
        match (algorithm_of(jwk), DecodingKey::from_jwk(jwk)) {
            (Some(algorithm), Ok(key)) => {
                keys.insert(kid, VerifyingKey { key, algorithm });
            }
            _ => tracing::warn!(%origin, %kid, "skipping a JWK that is not an RS256, ES256 or EdDSA key"),
        }
    }
    Ok(keys)
}

/// The algorithm a key verifies: as its `alg` says, else as its type implies.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(implied),
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) if implied == Algorithm::EdDSA => Some(Algorithm::EdDSA),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;
    use crate::auth::{Subject, TokenKeys};

    /// Test keys, made with `openssl genpkey` for these tests only.
    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCkEYlLvw3PRyzA
dNhlYSFFDKP9+KweWReXeRlvGmyPOnFVTJVKxg0UicdriYW+/eya86khFISDCc87
CnmaPZebF9ZQ+QLk/dKINxVCEqExAdor/qvBGx8xeD3vuEEHwXdR3/uSoOUJHptQ
cTJaJr53DeGYxZEYxvbkELEBcuLqE56OfcgAgBXJNS8a6Q12rtSYAwX/ZorImHjv
zwU057z/wwPjIgomYQr/KDSgYcsEd94BeGljFji6yZeJYu71zg5GSCshmiwWShio
cwU8s29s9K2IbSsXM7c8cUU8hAvWKV5T1gJaKJ1tUkbMTypH0GyHHx/9s6Za6HOv
k6BVLSb1AgMBAAECggEAC2n/ko92FyeCdi6AJ31nDSC1//iJhjWjLdyKPRp/gZoK
lxPphvbZo3DPuNbWa9Uf3XUkx7JfuFC5uV0fMfB7Au/Y7xqDwwk4LlXMBXlk/BMp
lHShNPaoEuRPRXAcxhIFimKkuSy3AmK+DLid93ueizXMrg4rQVKw4ROa3NjwmbbV
uUZyZRsl5jH8EmsHPJI0NooXZv7p/TUkOJ6WZ63AEInytMPCHm9OYV2F1P+fPBXg
25EzRljFnOeOEg5J+W0SEkqbGdwogm3poR3tn33Q8VT5eSA9KT8j5hMggxDFOQa0
mS9oDO5xDhrMkUF9UxmmEEaaprPSWciWYfBXTENTwQKBgQDhnpfg3XBMJ0zNqshZ
fjpMLNuQjEFjKB76OS8TFSaA1LMNfrFaDd24H3gQhBZ+U+hrAKvwLX5D4E/sW2cx
s4cT4N+VBFWSFIRhHSdC8rVRYpZopk9a28GWFLHDGlZ3hpPPd17KJfAzCnftUoWL
epZGIvL7KZVK2QmEZgPUfZ6gyQKBgQC6KTKLo9E4GEaCDnE9S4L5pa5n4Cr589kN
8WxOdGsK7awsN66zfcMszgaBU0aIVfyC+v5S1ERMIF7stUf8wpyTpITYMZkQ0lv3
m6Qri0TNfxZHYrZ743Z7cuRiOvYNCqzcsHHo3aYrBRfQK7NQwm3tr3x/HfIz9qUE
e2GJB1w2zQKBgQDhilK1fWfHGPpUFseVfvP0Nlt/UlYDM5ZT+Vovr1MAMqCTevT7
2ySr7PlvOTvrKSIL5W37+N5iKBh9ZJnyO09q9b9MDjskftIe6q/W4x2SsAU/tBFb
+Ja62xEgwnFxptyX5vKhDe/idjKQ0Y+icPdMQZ+4qEcPvYsgCYMGplUu0QKBgQCE
w6rTodItMkreqBQkhbzz9DAsztd3iWvMINiAH1DT62r14gRK6C8QviIvi0drJf+/
HefRBKdsr01jfWnInrZyKUvAr6adM5j5PtvXXiyEbdVitci1FCTEp8yvLaOa63ka
rw+d5q2CUtCH2xK4TuF9OMEOGzpHyugnCSMnScN/JQKBgB0GgXgwwTkmkCEj4OVq
V+YZ72Wk4LOVDsoYQaQNmqaksgP8IQKx7Re9EIGcEPaOa73juIOAt8bQ1qDOmOQt
LenUunZCpsY1odH1YDYZJzpBc2iOV71uOgJxBpS5X4gtEqjXfZh3925d4GqI+T7i
+gMxEY9sD+t9Z3rmfW2IHAtg
-----END PRIVATE KEY-----";
    const RSA_N: &str = "pBGJS78Nz0cswHTYZWEhRQyj_fisHlkXl3kZbxpsjzpxVUyVSsYNFInHa4mFvv3smvOpIRSEgwnPOwp5mj2XmxfWUPkC5P3SiDcVQhKhMQHaK_6rwRsfMXg977hBB8F3Ud_7kqDlCR6bUHEyWia-dw3hmMWRGMb25BCxAXLi6hOejn3IAIAVyTUvGukNdq7UmAMF_2aKyJh4788FNOe8_8MD4yIKJmEK_yg0oGHLBHfeAXhpYxY4usmXiWLu9c4ORkgrIZosFkoYqHMFPLNvbPStiG0rFzO3PHFFPIQL1ileU9YCWiidbVJGzE8qR9Bshx8f_bOmWuhzr5OgVS0m9Q";
    const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIA79bVJF99yZUOAmiNIruYNaxQxRgzqJtIVe6Kxb0PSt
-----END PRIVATE KEY-----";
    const ED25519_X: &str = "ke6PfXICQYpBkSE_FNvTp7U_OhqDlPkZz6mnhJnsxpg";

    fn write_set(path: &Path, keys: &[serde_json::Value]) {
        std::fs::write(path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
    }

    fn token(algorithm: Algorithm, kid: &str, key: &EncodingKey, subject: &str, audience: &str) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims =
            serde_json::json!({ "sub": subject, "iss": "partnerhub", "aud": audience, "iat": now, "exp": now + 60 });
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    #[test]
    fn rs256_and_eddsa_tokens_verify_with_the_key_their_kid_names() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("partnerhub-jwks"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        write_set(
            &path,
            &[
                serde_json::json!({ "kty": "RSA", "kid": "rsa-1", "use": "sig", "n": RSA_N, "e": "AQAB" }),
                serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": ED25519_X }),
                serde_json::json!({ "kty": "oct", "kid": "shared", "k": "c2VjcmV0" }),
            ],
        );
        let jwks = JwksFile::load(&path, Duration::from_secs(60)).unwrap();
        let keys = TokenKeys::from_secret(&[7; 32], "partnerhub")
            .with_identity_provider(KeySet::File(jwks), Some("partnerhub-api".to_owned()));
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let ed = EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap();

        let alice = Subject::Support("alice".into());
        assert_eq!(
            keys.verify(&token(Algorithm::RS256, "rsa-1", &rsa, "support:alice", "partnerhub-api")).unwrap(),
            alice
        );
        assert_eq!(
            keys.verify(&token(Algorithm::EdDSA, "ed-1", &ed, "support:alice", "partnerhub-api")).unwrap(),
            alice
        );
        let refusals = [
            ("another audience", token(Algorithm::RS256, "rsa-1", &rsa, "support:alice", "someone-else")),
            (
                "a key of the wrong type for its kid",
                token(Algorithm::EdDSA, "rsa-1", &ed, "support:alice", "partnerhub-api"),
            ),
            ("an unknown kid", token(Algorithm::RS256, "rsa-2", &rsa, "support:alice", "partnerhub-api")),
            (
                "a symmetric key is never the provider's",
                token(
                    Algorithm::HS256,
                    "shared",
                    &EncodingKey::from_secret(b"secret"),
                    "support:alice",
                    "partnerhub-api",
                ),
            ),
        ];
        for (what, token) in refusals {
            assert_eq!(keys.verify(&token).unwrap_err().code(), tonic::Code::Unauthenticated, "{what}");
        }
        // The deployment's own HS256 key now speaks only for services.
        let own = TokenKeys::from_secret(&[7; 32], "partnerhub");
        let service = own.mint(&Subject::Service("partner-change".into()), Duration::from_secs(60)).unwrap();
        assert!(keys.verify(&service).is_ok());
        let support = own.mint(&alice, Duration::from_secs(60)).unwrap();
        assert!(keys.verify(&support).unwrap_err().message().contains("identity provider"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
