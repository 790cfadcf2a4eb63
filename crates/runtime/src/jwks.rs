//! An identity provider's public keys: a JWK Set file (`auth.jwks_file`),
//! keys chosen by `kid`, re-read when the file changes (checked every
//! `auth.jwks_check_interval`, and at once for a `kid` it does not know), so
//! keys rotate without a restart. RS256, ES256 and EdDSA keys are used; any
//! other key is skipped with a warning.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError, RwLock},
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
#[error("cannot use the JWK Set {path}: {problem}")]
pub struct JwksError {
    path: PathBuf,
    problem: String,
}

impl JwksFile {
    /// Reads the set at `path`; it must be readable and hold at least one usable key.
    pub fn load(path: &Path, check_every: Duration) -> Result<Self, JwksError> {
        let error = |problem: String| JwksError { path: path.to_owned(), problem };
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

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

type Read = (HashMap<String, VerifyingKey>, Option<(SystemTime, u64)>);

fn read(path: &Path) -> Result<Read, String> {
    let stamp = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|err| err.to_string())?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|err| format!("not a JWK Set: {err}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::warn!(path = %path.display(), "skipping a JWK without a kid");
            continue;
        };
        match (algorithm_of(jwk), DecodingKey::from_jwk(jwk)) {
            (Some(algorithm), Ok(key)) => {
                keys.insert(kid, VerifyingKey { key, algorithm });
            }
            _ => {
                tracing::warn!(path = %path.display(), %kid, "skipping a JWK that is not an RS256, ES256 or EdDSA key")
            }
        }
    }
    Ok((keys, stamp))
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
            .with_identity_provider(jwks, Some("partnerhub-api".to_owned()));
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
