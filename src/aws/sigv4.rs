//! SigV4 for header-signed requests whose path is `/` (every DynamoDB call), with signing
//! keys derived once per secret, day, region and service instead of four HMACs per request.
//! The canonical form follows `aws-sigv4`'s own (the tests compare the two), which stays the
//! fallback for anything this does not cover.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

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
    // Sized once: a session token alone is often longer than a kilobyte.
    let size =
        request.method.len() + request.payload_sha256.len() + 8 + headers.iter().map(|(n, v)| 2 * n.len() + v.len() + 2).sum::<usize>();
    let mut canonical = String::with_capacity(size);
    canonical.push_str(request.method);
    canonical.push_str("\n/\n\n");
    let mut signed = String::with_capacity(headers.iter().map(|(n, _)| n.len() + 1).sum());
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

/// The hex signature of `canonical_request` at `amz_date` (`YYYYMMDDTHHMMSSZ`). The string
/// to sign goes into the HMAC in pieces: this runs twice per DynamoDB request.
pub fn signature(key: &[u8; 32], amz_date: &str, region: &str, service: &str, canonical_request: &str) -> String {
    let date = amz_date.get(..8).unwrap_or_default();
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else { return String::new() };
    for piece in ["AWS4-HMAC-SHA256\n", amz_date, "\n", date, "/", region, "/", service, "/aws4_request\n"] {
        mac.update(piece.as_bytes());
    }
    let digest = Sha256::digest(canonical_request.as_bytes());
    let mut digest_hex = [0u8; 64];
    hex_into(&digest, &mut digest_hex);
    mac.update(&digest_hex);
    let mut signature = [0u8; 64];
    hex_into(&mac.finalize().into_bytes(), &mut signature);
    String::from_utf8_lossy(&signature).into_owned()
}

/// Lower-case hex of 32 bytes, without allocating.
fn hex_into(bytes: &[u8], out: &mut [u8; 64]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&crate::util::hex::hex_byte(b));
    }
}

/// The Authorization header for a signature.
pub fn authorization(access_key_id: &str, amz_date: &str, region: &str, service: &str, signed_headers: &str, signature: &str) -> String {
    let date = amz_date.get(..8).unwrap_or_default();
    let pieces = [
        "AWS4-HMAC-SHA256 Credential=",
        access_key_id,
        "/",
        date,
        "/",
        region,
        "/",
        service,
        "/aws4_request, SignedHeaders=",
        signed_headers,
        ", Signature=",
        signature,
    ];
    let mut out = String::with_capacity(pieces.iter().map(|p| p.len()).sum());
    pieces.iter().for_each(|p| out.push_str(p));
    out
}

/// `X-Amz-Date`'s form of `time`: `YYYYMMDDTHHMMSSZ`, UTC, taken from the events' own
/// RFC 3339 writer (`2026-11-26T20:53:42.000Z`).
pub fn amz_date(time: SystemTime) -> String {
    let ms = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut rfc3339 = [0u8; 24];
    crate::audit::time::write_time(ms, &mut rfc3339);
    let mut out = Vec::with_capacity(16);
    for range in [0..4, 5..7, 8..10, 10..11, 11..13, 14..16, 17..19] {
        out.extend_from_slice(&rfc3339[range]);
    }
    out.push(b'Z');
    // Digits and separators only: never invalid, and no second copy.
    String::from_utf8(out).unwrap_or_default()
}

/// Parses `X-Amz-Date` (`20261126T205342Z`): a real UTC date and time in exactly that form.
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).ok()?);
    // A day past its month's end (20260230) comes back as another date: refused.
    (amz_date(time) == text).then_some(time)
}

/// Howard Hinnant's civil-to-days: days from 1970-01-01 to a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::hex::hex;

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

    #[test]
    fn amz_dates_round_trip_and_impossible_ones_are_refused() {
        use chrono::{DateTime, Utc};
        for secs in [0u64, 59, 86_399, 951_782_400, 1_796_000_123, 4_102_444_799] {
            let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let text = amz_date(time);
            assert_eq!(text, DateTime::<Utc>::from(time).format("%Y%m%dT%H%M%SZ").to_string());
            assert_eq!(parse_amz_date(&text), Some(time), "{text}");
        }
        for bad in [
            "20260230T000000Z",
            "20261301T000000Z",
            "20261204T240000Z",
            "20261204T236000Z",
            "20261204T000060Z",
            "2026120 T000000Z",
            "20261204 000000Z",
            "20261204T000000",
            "20261204T000000z",
            "+2026120T000000Z",
            "20261204T00000Z",
            "",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
        assert!(parse_amz_date("20240229T235959Z").is_some());
    }

    /// AWS's published example key (the IAM documentation's "Deriving the signing key").
    #[test]
    fn the_derived_key_matches_awss_example() {
        let key = derive("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam");
        assert_eq!(hex(&key), "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
    }
}
