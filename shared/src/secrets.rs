//! Secrets: values encrypted at rest with AES-256-GCM under `ORRERY_SECRETS_KEY`, and redaction of their values
//! wherever a run could echo them.
//!
//! - A key is 64 hex characters (32 random bytes: `openssl rand -hex 32`). Its id, stored with each row, is the
//!   first 16 hex characters of its SHA-256, so a rotation knows which key sealed which row.
//! - The owner and name are the associated data: a ciphertext copied to another row does not open.
//! - Rotation: make a new key `ORRERY_SECRETS_KEY` and move the old one to `ORRERY_SECRETS_OLD_KEYS`
//!   (comma-separated), restart, call `POST /secrets/reencrypt` (admin), then drop the old key.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Secret values shorter than this are refused: redacting a two-character value would mangle every output.
pub const MIN_VALUE_CHARS: usize = 4;
/// The longest accepted value.
pub const MAX_VALUE_BYTES: usize = 65_536;

#[derive(Clone)]
struct Key {
    id: String,
    bytes: [u8; 32],
}

impl Key {
    fn parse(hex_text: &str) -> Result<Key, String> {
        let text = hex_text.trim();
        let raw = hex::decode(text)
            .map_err(|_| "must be 64 hexadecimal characters (openssl rand -hex 32)".to_string())?;
        let bytes: [u8; 32] = raw
            .try_into()
            .map_err(|_| "must be 64 hexadecimal characters (32 bytes)".to_string())?;
        let id = hex::encode(Sha256::digest(bytes))[..16].to_string();
        Ok(Key { id, bytes })
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.bytes).expect("a 32-byte key"))
    }
}

/// A sealed secret as stored.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_id: String,
}

/// The current key (seals and opens) and earlier ones (open only).
#[derive(Clone)]
pub struct Keyring {
    current: Key,
    old: Vec<Key>,
}

/// Shows key ids only, never key material.
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("old", &self.old.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

fn aad(owner: Uuid, name: &str) -> Vec<u8> {
    let mut a = owner.as_bytes().to_vec();
    a.extend_from_slice(name.as_bytes());
    a
}

impl Keyring {
    /// Checks a comma-separated list of keys (the format of both variables).
    pub fn parse_keys(text: &str) -> Result<usize, String> {
        let mut n = 0;
        for k in text.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            Key::parse(k)?;
            n += 1;
        }
        Ok(n)
    }

    pub fn new(current: &str, old: &str) -> Result<Keyring, String> {
        Ok(Keyring {
            current: Key::parse(current)?,
            old: old
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(Key::parse)
                .collect::<Result<_, _>>()?,
        })
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    pub fn seal(&self, owner: Uuid, name: &str, value: &str) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's random source");
        let mut buf = value.as_bytes().to_vec();
        self.current
            .aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(owner, name)),
                &mut buf,
            )
            .expect("sealing cannot fail for in-memory buffers");
        Sealed {
            ciphertext: buf,
            nonce: nonce.to_vec(),
            key_id: self.current.id.clone(),
        }
    }

    pub fn open(&self, owner: Uuid, name: &str, sealed: &Sealed) -> Result<String, String> {
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == sealed.key_id)
            .ok_or_else(|| {
                format!(
                    "secret {name} was sealed with key {} which is neither ORRERY_SECRETS_KEY nor one of \
                     ORRERY_SECRETS_OLD_KEYS",
                    sealed.key_id
                )
            })?;
        let nonce: [u8; NONCE_LEN] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| format!("secret {name} has a malformed nonce"))?;
        let mut buf = sealed.ciphertext.clone();
        let plain = key
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(owner, name)),
                &mut buf,
            )
            .map_err(|_| format!("secret {name} does not decrypt (tampered, or another row's)"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| format!("secret {name} is not UTF-8"))
    }
}

/// The names a payload reads as `secrets.NAME` (in templates and conditions), sorted and unique.
pub fn referenced_names(payload: &Value) -> Vec<String> {
    let text = payload.to_string();
    let mut names: Vec<String> = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("secrets.") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "secrets.".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names.sort();
    names
}

/// Replaces every occurrence of each secret value (and of its JSON-escaped form) with `[redacted:NAME]`.
pub fn redact_str(text: &str, secrets: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in secrets {
        if value.is_empty() {
            continue;
        }
        let mark = format!("[redacted:{name}]");
        out = out.replace(value.as_str(), &mark);
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped.trim_matches('"');
        if escaped != value {
            out = out.replace(escaped, &mark);
        }
    }
    out
}

/// [`redact_str`] on every string (and object key) inside a JSON value.
pub fn redact_value(value: &mut Value, secrets: &[(String, String)]) {
    if secrets.is_empty() {
        return;
    }
    match value {
        Value::String(s) => *s = redact_str(s, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, secrets)),
        Value::Object(map) => {
            let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            for (k, mut v) in entries {
                redact_value(&mut v, secrets);
                map.insert(redact_str(&k, secrets), v);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn sealed_values_open_only_for_their_row_and_under_a_known_key() {
        let ring = Keyring::new(K1, "").unwrap();
        let owner = Uuid::new_v4();
        let sealed = ring.seal(owner, "API_TOKEN", "s3cr3t-value");
        assert!(!sealed.ciphertext.windows(5).any(|w| w == b"s3cr3"));
        assert_eq!(
            ring.open(owner, "API_TOKEN", &sealed).unwrap(),
            "s3cr3t-value"
        );
        assert!(
            ring.open(owner, "OTHER", &sealed).is_err(),
            "bound to its name"
        );
        assert!(
            ring.open(Uuid::new_v4(), "API_TOKEN", &sealed).is_err(),
            "and to its owner"
        );
        let rotated = Keyring::new(K2, K1).unwrap();
        assert_eq!(
            rotated.open(owner, "API_TOKEN", &sealed).unwrap(),
            "s3cr3t-value"
        );
        let resealed = rotated.seal(owner, "API_TOKEN", "s3cr3t-value");
        assert_eq!(resealed.key_id, rotated.current_id());
        assert!(Keyring::new(K1, "")
            .unwrap()
            .open(owner, "API_TOKEN", &resealed)
            .is_err());
        assert!(Keyring::new(K2, "")
            .unwrap()
            .open(owner, "API_TOKEN", &sealed)
            .is_err());
    }

    #[test]
    fn keys_are_64_hex_characters() {
        assert!(Keyring::parse_keys("abc").is_err());
        assert!(Keyring::parse_keys(&"zz".repeat(32)).is_err());
        assert_eq!(Keyring::parse_keys(&format!("{K1}, {K2}")).unwrap(), 2);
    }

    #[test]
    fn references_are_found_in_templates_and_conditions() {
        let payload = json!({"pipeline": [
            {"id": "a", "uses": "http.request", "if": "secrets.FLAG",
             "with": {"url": "https://x/${secrets.API_TOKEN}", "headers": {"Authorization": "Bearer ${secrets.API_TOKEN}"}}},
            {"id": "b", "uses": "noop", "with": {"x": "${params.secrets.NOT_ONE}", "y": "mysecrets.NOPE"}}
        ]});
        assert_eq!(referenced_names(&payload), ["API_TOKEN", "FLAG"]);
    }

    #[test]
    fn every_echo_of_a_value_is_redacted() {
        let secrets = vec![("TOKEN".to_string(), "hunter2-\"quoted\"".to_string())];
        let mut v = json!({"body": {"echo": "Bearer hunter2-\"quoted\"", "raw": "{\"k\":\"hunter2-\\\"quoted\\\"\"}"},
                           "hunter2-\"quoted\"": 1});
        redact_value(&mut v, &secrets);
        let text = v.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("[redacted:TOKEN]"));
    }
}
