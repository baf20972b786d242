//! Verifies a client's SigV4 header signature, as AWS does for the credentials dbtape
//! issued its users. The canonical request is rebuilt by `aws-sigv4` itself from exactly the
//! headers the client says it signed, so the two sides cannot disagree about canonical form.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use sha2::Digest;

/// How far a request's `X-Amz-Date` may be from the proxy's clock, either way (AWS's own limit).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Why a request's signature was refused; each maps to the error AWS would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the request has no Authorization header")]
    Missing,
    #[error("the Authorization header is malformed: {0}")]
    Malformed(String),
    #[error("signature expired: X-Amz-Date {date} is more than 5 minutes from the proxy's clock")]
    Expired { date: String },
    #[error("the signature does not match the request")]
    Mismatch,
}

/// The parts of `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub access_key_id: &'a str,
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub signed_headers: Vec<&'a str>,
    pub signature: &'a str,
}

impl<'a> Authorization<'a> {
    pub fn parse(header: &'a str) -> Result<Self, VerifyError> {
        let malformed = |why: &str| VerifyError::Malformed(why.to_string());
        let rest = header.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| malformed("the algorithm is not AWS4-HMAC-SHA256"))?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            let (name, value) = part.split_once('=').ok_or_else(|| malformed("a component is not name=value"))?;
            let slot = match name {
                "Credential" => &mut credential,
                "SignedHeaders" => &mut signed,
                "Signature" => &mut signature,
                _ => return Err(malformed("unknown component")),
            };
            if slot.replace(value).is_some() {
                return Err(malformed("a component appears twice"));
            }
        }
        let credential = credential.ok_or_else(|| malformed("Credential is missing"))?;
        let signed = signed.ok_or_else(|| malformed("SignedHeaders is missing"))?;
        let signature = signature.ok_or_else(|| malformed("Signature is missing"))?;
        // Taken apart in place: this runs on every request.
        let mut scope = credential.split('/');
        let (Some(access_key_id), Some(date), Some(region), Some(service), Some(terminator), None) =
            (scope.next(), scope.next(), scope.next(), scope.next(), scope.next(), scope.next())
        else {
            return Err(malformed("Credential is not key/date/region/service/aws4_request"));
        };
        if terminator != "aws4_request" || access_key_id.is_empty() || date.len() != 8 || region.is_empty() {
            return Err(malformed("Credential is not key/date/region/service/aws4_request"));
        }
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("Signature is not 64 hex digits"));
        }
        let mut signed_headers = Vec::with_capacity(signed.bytes().filter(|b| *b == b';').count() + 1);
        signed_headers.extend(signed.split(';'));
        let sorted = signed_headers.windows(2).all(|w| w[0] < w[1]);
        let lower = signed_headers.iter().all(|h| !h.is_empty() && h.bytes().all(|b| !b.is_ascii_uppercase()));
        if !sorted || !lower {
            return Err(malformed("SignedHeaders is not a sorted list of lower-case names"));
        }
        if !signed_headers.contains(&"host") {
            return Err(malformed("SignedHeaders must include host"));
        }
        if !signed_headers.contains(&"x-amz-date") {
            return Err(malformed("SignedHeaders must include x-amz-date"));
        }
        Ok(Authorization { access_key_id, date, region, service, signed_headers, signature })
    }
}

/// One request as received: what the signature covers.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Path and query exactly as sent, e.g. `/` or `/?a=b`.
    pub path_and_query: &'a str,
    /// Every header as received (names in any case; repeated names allowed).
    pub headers: Vec<(&'a str, &'a str)>,
    /// The body's SHA-256 (hex), from `payload_sha256`: computed once per request, for this
    /// check and for signing the request anew.
    pub payload_sha256: &'a str,
}

/// The body's SHA-256 in hex, as SigV4's canonical request carries it.
pub fn payload_sha256(body: &[u8]) -> String {
    crate::util::hex::hex(&sha2::Sha256::digest(body))
}

/// Parses `X-Amz-Date` (`20261126T205342Z`).
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    super::sigv4::parse_amz_date(text)
}

/// Checks `request` was signed by `secret` (the secret of `auth.access_key_id`) within the
/// clock-skew window around `now`. `keys` keeps signing keys from request to request.
pub fn verify(
    auth: &Authorization<'_>,
    request: &SignedRequest<'_>,
    secret: &str,
    now: SystemTime,
    keys: &super::sigv4::SigningKeys,
) -> Result<(), VerifyError> {
    let header = |name: &str| request.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
    let date_text = header("x-amz-date").ok_or_else(|| VerifyError::Malformed("X-Amz-Date is missing".into()))?;
    let time = parse_amz_date(date_text).ok_or_else(|| VerifyError::Malformed("X-Amz-Date is not yyyymmddThhmmssZ".into()))?;
    if !date_text.starts_with(auth.date) {
        return Err(VerifyError::Malformed("the Credential date is not the X-Amz-Date's day".into()));
    }
    let skew = now.duration_since(time).or_else(|e| Ok::<_, ()>(e.duration())).unwrap_or_default();
    if skew > MAX_CLOCK_SKEW {
        return Err(VerifyError::Expired { date: date_text.to_string() });
    }
    let mut signed = signed_headers(auth, request)?;
    if request.path_and_query == "/" && verify_cached(auth, request, &signed, secret, date_text, keys) {
        return Ok(());
    }
    // aws-sigv4 adds x-amz-date itself, from `time`.
    signed.retain(|(name, _)| *name != "x-amz-date");
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    // The authority is unused: the host header (always signed) takes its place.
    let uri = format!("http://dbtape.invalid{}", request.path_and_query);
    let identity = Credentials::new(auth.access_key_id, secret, None, None, "dbtape-client").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(auth.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| VerifyError::Malformed(e.to_string()))?
        .into();
    let signable =
        SignableRequest::new(request.method, uri, signed.into_iter(), SignableBody::Precomputed(request.payload_sha256.to_string()))
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let output = sign(signable, &params).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if constant_time_eq_lowercased(output.signature().as_bytes(), auth.signature.as_bytes()) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// Exactly the headers the client signed, in every repetition, named as it signed them.
fn signed_headers<'a>(auth: &Authorization<'a>, request: &SignedRequest<'a>) -> Result<Vec<(&'a str, &'a str)>, VerifyError> {
    let mut signed = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let before = signed.len();
        signed.extend(request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| (*name, *v)));
        if signed.len() == before {
            return Err(VerifyError::Malformed(format!("signed header {name} is not in the request")));
        }
    }
    Ok(signed)
}

/// The common case (every DynamoDB call) with a cached signing key. A mismatch here is not
/// final: `aws-sigv4`'s own check decides then, so no difference of canonical form can
/// turn a good signature away.
fn verify_cached(
    auth: &Authorization<'_>,
    request: &SignedRequest<'_>,
    signed: &[(&str, &str)],
    secret: &str,
    amz_date: &str,
    keys: &super::sigv4::SigningKeys,
) -> bool {
    let (canonical, _) =
        super::sigv4::canonical(&super::sigv4::Request { method: request.method, headers: signed, payload_sha256: request.payload_sha256 });
    let key = keys.get(secret, auth.date, auth.region, auth.service);
    let signature = super::sigv4::signature(&key, amz_date, auth.region, auth.service, &canonical);
    constant_time_eq_lowercased(signature.as_bytes(), auth.signature.as_bytes())
}

/// Compares our lower-case hex with the client's in constant time; a client may send its
/// hex in upper case.
fn constant_time_eq_lowercased(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y.to_ascii_lowercase())) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// Signs a DynamoDB request as an SDK would, with aws-sigv4's normal settings.
    fn signed(body: &[u8], time: SystemTime, secret: &str) -> (String, String) {
        let identity = Credentials::new("AKIDEXAMPLE", secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("dynamodb")
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers =
            [("host", "127.0.0.1:8000"), ("content-type", "application/x-amz-json-1.0"), ("x-amz-target", "DynamoDB_20120810.GetItem")];
        let signable = SignableRequest::new("POST", "http://127.0.0.1:8000/", headers.into_iter(), SignableBody::Bytes(body)).unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut auth = String::new();
        let mut date = String::new();
        for (name, value) in instructions.headers() {
            match name {
                "authorization" => auth = value.to_string(),
                "x-amz-date" => date = value.to_string(),
                _ => {}
            }
        }
        (auth, date)
    }

    fn check(auth: &str, date: &str, body: &[u8], now: SystemTime) -> Result<(), VerifyError> {
        let auth = Authorization::parse(auth)?;
        let request = SignedRequest {
            method: "POST",
            path_and_query: "/",
            headers: vec![
                ("Host", "127.0.0.1:8000"),
                ("Content-Type", "application/x-amz-json-1.0"),
                ("X-Amz-Target", "DynamoDB_20120810.GetItem"),
                ("X-Amz-Date", date),
                ("User-Agent", "not signed"),
            ],
            payload_sha256: &payload_sha256(body),
        };
        verify(&auth, &request, SECRET, now, &Default::default())
    }

    #[test]
    fn a_right_signature_passes_and_any_change_fails() {
        let now = SystemTime::now();
        let (auth, date) = signed(b"{\"TableName\":\"t\"}", now, SECRET);
        assert_eq!(check(&auth, &date, b"{\"TableName\":\"t\"}", now), Ok(()));
        assert_eq!(check(&auth, &date, b"{\"TableName\":\"u\"}", now), Err(VerifyError::Mismatch));
        let (wrong, date) = signed(b"{}", now, "another secret");
        assert_eq!(check(&wrong, &date, b"{}", now), Err(VerifyError::Mismatch));
    }

    /// A good signature passes on the cached path itself, not only by the fallback.
    #[test]
    fn the_cached_check_accepts_what_aws_sigv4_signed_and_refuses_changes() {
        let now = SystemTime::now();
        let body = b"{\"TableName\":\"t\"}";
        let (auth_text, date) = signed(body, now, SECRET);
        let auth = Authorization::parse(&auth_text).unwrap();
        let hash = payload_sha256(body);
        let request = |target: &'static str| SignedRequest {
            method: "POST",
            path_and_query: "/",
            headers: vec![
                ("Host", "127.0.0.1:8000"),
                ("Content-Type", "application/x-amz-json-1.0"),
                ("X-Amz-Target", target),
                ("X-Amz-Date", &date),
            ],
            payload_sha256: &hash,
        };
        let keys = crate::aws::sigv4::SigningKeys::default();
        let cached = |request: SignedRequest<'_>, secret: &str| {
            let signed = signed_headers(&auth, &request).unwrap();
            verify_cached(&auth, &request, &signed, secret, &date, &keys)
        };
        assert!(cached(request("DynamoDB_20120810.GetItem"), SECRET));
        assert!(!cached(request("DynamoDB_20120810.DeleteItem"), SECRET));
        assert!(!cached(request("DynamoDB_20120810.GetItem"), "another secret"));
    }

    #[test]
    fn old_signatures_expire() {
        let then = SystemTime::now() - Duration::from_secs(6 * 60);
        let (auth, date) = signed(b"{}", then, SECRET);
        assert!(matches!(check(&auth, &date, b"{}", SystemTime::now()), Err(VerifyError::Expired { .. })));
        assert_eq!(check(&auth, &date, b"{}", then + Duration::from_secs(290)), Ok(()));
    }

    #[test]
    fn malformed_headers_are_named() {
        for bad in [
            "AWS4-HMAC-SHA1 Credential=a/20260101/r/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20260101/r/dynamodb, SignedHeaders=host;x-amz-date, Signature=",
            "AWS4-HMAC-SHA256 Credential=a/20260101/r/dynamodb/aws4_request, SignedHeaders=x-amz-date, Signature=",
            "AWS4-HMAC-SHA256 Credential=a/20260101/r/dynamodb/aws4_request, SignedHeaders=x-amz-date;host, Signature=",
        ] {
            assert!(matches!(Authorization::parse(bad), Err(VerifyError::Malformed(_))), "{bad}");
        }
    }
}
