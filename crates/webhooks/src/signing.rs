//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>`
//! over `<webhook-id>.<webhook-timestamp>.<body>`, keyed with the bytes of a
//! `whsec_<base64>` secret. Several signatures are separated by spaces (a
//! secret's rotation overlap), and a receiver accepts any that verifies.

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";
/// 32 random bytes: the key length HMAC-SHA256 is built for.
const SECRET_BYTES: usize = 32;

/// A new `whsec_…` secret.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{PREFIX}{}", BASE64.encode(bytes)))
}

/// The `webhook-signature` value for `message_id`, `timestamp` (seconds) and
/// `body`, signed with each of `secrets` (`whsec_…`) that decodes.
pub fn sign(secrets: &[&str], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let signatures: Vec<String> = secrets
        .iter()
        .filter_map(|secret| BASE64.decode(secret.strip_prefix(PREFIX).unwrap_or(secret)).ok())
        .filter_map(|key| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
            mac.update(message_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
        })
        .collect();
    signatures.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_the_specification_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn every_secret_signs_and_new_secrets_differ() {
        let (a, b) = (generate_secret().unwrap(), generate_secret().unwrap());
        assert!(a.starts_with("whsec_") && a != b);
        let both = sign(&[&a, &b], "msg_1", 1, b"{}");
        assert_eq!(both.split(' ').count(), 2);
        assert!(both.split(' ').all(|signature| signature.starts_with("v1,")));
    }
}
