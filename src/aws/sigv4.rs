//! SigV4 for header-signed requests whose path is `/` (every DynamoDB call), with signing
//! keys derived once per secret, day, region and service instead of four HMACs per request.
//! The canonical form follows `aws-sigv4`'s own (the tests compare the two), which stays the
//! fallback for anything this does not cover.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::util::hex::hex;
use crate::util::sync::lock;

/// More distinct (secret, day, region, service) than a proxy meets in a day; past it the
/// cache starts again rather than grow.
const MAX_KEYS: usize = 4096;

/// Derived signing keys, by a digest of what derives them (the secret is not kept).
#[derive(Default)]
pub struct SigningKeys {
    keys: Mutex<HashMap<[u8; 32], [u8; 32]>>,
}

impl SigningKeys {
    /// `date` is the scope's `YYYYMMDD`.
    pub fn get(&self, secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
        let mut id = Sha256::new();
        for part in [secret, date, region, service] {
            id.update((part.len() as u64).to_be_bytes());
            id.update(part.as_bytes());
        }
        let id: [u8; 32] = id.finalize().into();
        if let Some(key) = lock(&self.keys).get(&id) {
            return *key;
        }
        let key = derive(secret, date, region, service);
        let mut keys = lock(&self.keys);
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(id, key);
        key
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length, so this never fails; were it to, the signature would
    // be wrong and refused, never accepted.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else { return [0u8; 32] };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn derive(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// SigV4's Trimall, as `aws-sigv4` applies it: spaces (only) trimmed at both ends, and runs
/// of spaces made one.
fn trim_all(value: &str) -> std::borrow::Cow<'_, str> {
    let value = value.trim_matches(' ');
    if !value.contains("  ") {
        return value.into();
    }
    let mut out = String::with_capacity(value.len());
    let mut last_space = false;
    for c in value.chars() {
        if !(c == ' ' && last_space) {
            out.push(c);
        }
        last_space = c == ' ';
    }
    out.into()
}

/// A request to sign or check: method, lower-case header names with their values (repeats
/// allowed, in the order sent), and the payload's SHA-256 in hex. The path is `/` with no
/// query.
pub struct Request<'a> {
    pub method: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
}

/// The canonical request and the SignedHeaders list.
pub fn canonical(request: &Request<'_>) -> (String, String) {
    let mut headers = request.headers.to_vec();
    // Stable: repeated names keep their order, and their values are joined with ','.
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let mut canonical = String::with_capacity(256);
    canonical.push_str(request.method);
    canonical.push_str("\n/\n\n");
    let mut signed = String::with_capacity(96);
    let mut previous: Option<&str> = None;
    for (name, value) in &headers {
        if previous == Some(name) {
            canonical.push(',');
        } else {
            if previous.is_some() {
                canonical.push('\n');
                signed.push(';');
            }
            canonical.push_str(name);
            canonical.push(':');
            signed.push_str(name);
            previous = Some(name);
        }
        canonical.push_str(&trim_all(value));
    }
    canonical.push_str("\n\n");
    canonical.push_str(&signed);
    canonical.push('\n');
    canonical.push_str(request.payload_sha256);
    (canonical, signed)
}

/// The hex signature of `canonical_request` at `amz_date` (`YYYYMMDDTHHMMSSZ`).
pub fn signature(key: &[u8; 32], amz_date: &str, region: &str, service: &str, canonical_request: &str) -> String {
    let date = amz_date.get(..8).unwrap_or_default();
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    hex(&hmac(key, string_to_sign.as_bytes()))
}

/// The Authorization header for a signature.
pub fn authorization(access_key_id: &str, amz_date: &str, region: &str, service: &str, signed_headers: &str, signature: &str) -> String {
    let date = amz_date.get(..8).unwrap_or_default();
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{date}/{region}/{service}/aws4_request, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_all_matches_sigv4s_rule() {
        assert_eq!(trim_all("  a  b   c "), "a b c");
        assert_eq!(trim_all("plain"), "plain");
        assert_eq!(trim_all("\ttab  kept\t"), "\ttab kept\t");
        assert_eq!(trim_all("   "), "");
    }

    #[test]
    fn keys_are_derived_once_and_differ_by_every_part() {
        let keys = SigningKeys::default();
        let a = keys.get("secret", "20261204", "us-east-1", "dynamodb");
        assert_eq!(a, derive("secret", "20261204", "us-east-1", "dynamodb"));
        assert_eq!(keys.get("secret", "20261204", "us-east-1", "dynamodb"), a);
        for other in [
            keys.get("secreT", "20261204", "us-east-1", "dynamodb"),
            keys.get("secret", "20261205", "us-east-1", "dynamodb"),
            keys.get("secret", "20261204", "us-east-2", "dynamodb"),
            keys.get("secret", "20261204", "us-east-1", "sts"),
        ] {
            assert_ne!(other, a);
        }
        assert_eq!(lock(&keys.keys).len(), 5);
    }

    /// AWS's published example key (the IAM documentation's "Deriving the signing key").
    #[test]
    fn the_derived_key_matches_awss_example() {
        let key = derive("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam");
        assert_eq!(hex(&key), "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
    }
}
