//! RDS / Aurora / RDS Proxy IAM database auth tokens: a SigV4 query-string presign of
//! `GET https://host:port/?Action=connect&DBUser=user` for service `rds-db`, valid 15 minutes,
//! with the leading `https://` removed.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
use aws_sigv4::sign::v4;

/// RDS accepts tokens for at most 15 minutes.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot sign the RDS auth token: {0}")]
    Sign(String),
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn generate(
    host: &str,
    port: u16,
    db_user: &str,
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<String, TokenError> {
    let err = |e: &dyn std::fmt::Display| TokenError::Sign(e.to_string());
    let url = format!("https://{host}:{port}/?Action=connect&DBUser={}", encode(db_user));
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| err(&e))?
        .into();
    let request = SignableRequest::new("GET", url.clone(), std::iter::empty(), SignableBody::Bytes(&[])).map_err(|e| err(&e))?;
    let (instructions, _signature) = sign(request, &params).map_err(|e| err(&e))?.into_parts();
    let mut token = url.trim_start_matches("https://").to_string();
    for (name, value) in instructions.params() {
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.push_str(&encode(value));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn query(token: &str) -> BTreeMap<String, String> {
        let (_, query) = token.split_once("/?").unwrap_or_default();
        query.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn matches_the_aws_sdk_rds_test_vector() {
        let creds = Credentials::new("akid", "secret", None, None, "test");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_724_709_600);
        let token = generate("prod-instance.us-east-1.rds.amazonaws.com", 3306, "peccy", "us-east-1", &creds, now).unwrap();
        let expected = "prod-instance.us-east-1.rds.amazonaws.com:3306/?Action=connect&DBUser=peccy&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240826%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20240826T220000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=dd0cba843009474347af724090233265628ace491ea17ce3eb3da098b983ad89";
        assert!(token.starts_with("prod-instance.us-east-1.rds.amazonaws.com:3306/?"));
        assert_eq!(query(&token), query(expected));
        assert_eq!(token.len(), 329);
    }

    #[test]
    fn temporary_credentials_carry_their_session_token() {
        let creds = Credentials::new("ASIAEXAMPLE", "secret", Some("FwoG/session+token=".into()), None, "test");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_724_709_600);
        let token = generate("db.example", 5432, "app_user", "eu-west-1", &creds, now).unwrap();
        let q = query(&token);
        assert_eq!(q["X-Amz-Security-Token"], "FwoG%2Fsession%2Btoken%3D");
        assert_eq!(q["X-Amz-Credential"], "ASIAEXAMPLE%2F20240826%2Feu-west-1%2Frds-db%2Faws4_request");
        let without =
            generate("db.example", 5432, "app_user", "eu-west-1", &Credentials::new("ASIAEXAMPLE", "secret", None, None, "t"), now)
                .unwrap();
        // The session token is signed too, so the signatures differ.
        assert_ne!(q["X-Amz-Signature"], query(&without)["X-Amz-Signature"]);
    }
}
