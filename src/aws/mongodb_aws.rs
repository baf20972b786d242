//! MONGODB-AWS (the MongoDB auth spec's SASL mechanism, used by Amazon DocumentDB): the
//! client proves its AWS identity with a SigV4-signed STS `GetCallerIdentity` request that
//! the server, not the client, sends to STS.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use bson::spec::BinarySubtype;
use bson::{rawdoc, Binary, RawDocumentBuf};

pub const MECHANISM: &str = "MONGODB-AWS";
pub const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// gs2-cb-flag `n`: no channel binding.
const GS2_FLAG: i32 = 110;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MongoAwsError {
    #[error("malformed server-first message: {0}")]
    ServerFirst(String),
    #[error("the server nonce does not extend the client's")]
    Nonce,
    #[error("STS host {0:?} is not a valid host name")]
    Host(String),
    #[error("cannot sign the GetCallerIdentity request: {0}")]
    Sign(String),
}

/// `{r: <32-byte nonce>, p: 110}`.
pub fn client_first(nonce: &[u8; 32]) -> RawDocumentBuf {
    rawdoc! { "r": Binary { subtype: BinarySubtype::Generic, bytes: nonce.to_vec() }, "p": GS2_FLAG }
}

/// The STS region a host names, per the spec: `sts.amazonaws.com` and hosts without a dot
/// are us-east-1, others are their second label.
pub fn region_from_host(host: &str) -> Result<String, MongoAwsError> {
    let bad = || MongoAwsError::Host(host.to_string());
    if host.is_empty() || host.len() > 255 || host.split('.').any(str::is_empty) {
        return Err(bad());
    }
    if host == "sts.amazonaws.com" || !host.contains('.') {
        return Ok("us-east-1".into());
    }
    host.split('.').nth(1).map(str::to_string).ok_or_else(bad)
}

/// What the server said first: its 64-byte nonce and the STS host to sign for.
pub struct ServerFirst {
    pub nonce: Vec<u8>,
    pub host: String,
}

pub fn parse_server_first(payload: &[u8], client_nonce: &[u8; 32]) -> Result<ServerFirst, MongoAwsError> {
    let doc = bson::RawDocument::from_bytes(payload).map_err(|e| MongoAwsError::ServerFirst(e.to_string()))?;
    let nonce = match doc.get("s") {
        Ok(Some(bson::RawBsonRef::Binary(b))) => b.bytes.to_vec(),
        _ => return Err(MongoAwsError::ServerFirst("no binary s".into())),
    };
    let host = match doc.get("h") {
        Ok(Some(bson::RawBsonRef::String(h))) => h.to_string(),
        _ => return Err(MongoAwsError::ServerFirst("no string h".into())),
    };
    if nonce.len() != 64 || nonce[..32] != client_nonce[..] {
        return Err(MongoAwsError::Nonce);
    }
    region_from_host(&host)?;
    Ok(ServerFirst { nonce, host })
}

/// The signed request's headers as the client sends them: `{a: Authorization, d: X-Amz-Date[, t: token]}`.
pub fn client_final(server: &ServerFirst, credentials: &Credentials, now: SystemTime) -> Result<RawDocumentBuf, MongoAwsError> {
    let err = |e: &dyn std::fmt::Display| MongoAwsError::Sign(e.to_string());
    let region = region_from_host(&server.host)?;
    let nonce_b64 = base64::engine::general_purpose::STANDARD.encode(&server.nonce);
    let length = STS_BODY.len().to_string();
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", length.as_str()),
        ("host", server.host.as_str()),
        ("x-mongodb-server-nonce", nonce_b64.as_str()),
        ("x-mongodb-gs2-cb-flag", "n"),
    ];
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name("sts")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| err(&e))?
        .into();
    let url = format!("https://{}/", server.host);
    let request =
        SignableRequest::new("POST", url, headers.iter().copied(), SignableBody::Bytes(STS_BODY.as_bytes())).map_err(|e| err(&e))?;
    let (instructions, _) = sign(request, &params).map_err(|e| err(&e))?.into_parts();
    let mut authorization = None;
    let mut date = None;
    for (name, value) in instructions.headers() {
        match name {
            "authorization" => authorization = Some(value.to_string()),
            "x-amz-date" => date = Some(value.to_string()),
            _ => {}
        }
    }
    let (Some(a), Some(d)) = (authorization, date) else { return Err(MongoAwsError::Sign("no Authorization or X-Amz-Date".into())) };
    let mut out = rawdoc! { "a": a, "d": d };
    if let Some(token) = credentials.session_token() {
        out.append("t", token);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_first_matches_the_spec_bytes() {
        let nonce = [0xabu8; 32];
        let bytes = client_first(&nonce).into_bytes();
        assert_eq!(bytes.len(), 52);
        assert_eq!(&bytes[4..7], &[0x05, b'r', 0]);
        assert_eq!(&bytes[7..12], &[32, 0, 0, 0, 0]);
        assert_eq!(&bytes[12..44], &nonce);
        assert_eq!(&bytes[44..51], &[0x10, b'p', 0, 110, 0, 0, 0]);
    }

    #[test]
    fn regions_follow_the_spec_table() {
        for (host, region) in [
            ("sts.amazonaws.com", "us-east-1"),
            ("sts.us-west-2.amazonaws.com", "us-west-2"),
            ("sts.us-west-2.amazonaws.com.ch", "us-west-2"),
            ("example.com", "com"),
            ("localhost", "us-east-1"),
        ] {
            assert_eq!(region_from_host(host).as_deref(), Ok(region), "{host}");
        }
        for bad in ["sts..com", ".amazonaws.com", "sts.amazonaws.", ""] {
            assert!(region_from_host(bad).is_err(), "{bad}");
        }
        assert!(region_from_host(&"a".repeat(256)).is_err());
    }

    #[test]
    fn the_signed_request_names_the_mongodb_headers() {
        let client_nonce = [1u8; 32];
        let mut nonce = client_nonce.to_vec();
        nonce.extend_from_slice(&[2u8; 32]);
        let server = ServerFirst { nonce, host: "sts.amazonaws.com".into() };
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "test");
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let doc = client_final(&server, &creds, now).unwrap();
        let a = doc.get_str("a").unwrap();
        assert!(a.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/sts/aws4_request"), "{a}");
        assert!(a.contains("x-mongodb-gs2-cb-flag;x-mongodb-server-nonce"), "{a}");
        assert_eq!(doc.get_str("d").unwrap(), "20231114T221320Z");
        assert_eq!(doc.get_str("t").unwrap(), "tok");
    }
}
