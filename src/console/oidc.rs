//! Reviewer login through the company's OpenID Connect provider: the authorization code
//! flow with PKCE, a state bound to the browser by a cookie, a nonce bound to the ID token,
//! and the ID token's signature checked against the keys the provider publishes. The
//! provider says who someone is; `[review.oidc]` and the reviewers file say what they may see.
//!
//! A login under way is kept in the browser's own cookie (state, nonce and PKCE verifier),
//! not in the console: strangers starting logins in a loop cost it nothing. The cookie is
//! `__Host-` and `HttpOnly`, so another site can neither set nor read it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::OidcSection;

/// The most the console reads of any answer from the provider.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys are fetched again for an unknown key id at most this often (rotation).
const KEYS_REFETCH_AFTER: Duration = Duration::from_secs(30);
/// Clock difference tolerated between the console and the provider.
const CLOCK_SKEW_S: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("{url}: {reason}")]
    Provider { url: String, reason: String },
    #[error("the ID token is not valid: {0}")]
    Token(String),
    #[error("the login expired or was not started in this browser")]
    UnknownState,
    #[error("the provider refused the login: {0}")]
    Refused(String),
    #[error("[review.oidc] {0}")]
    Config(String),
}

/// The provider's endpoints, from its discovery document.
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
}

/// Who the provider says logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    /// The `name_claim`'s value, empty if the provider sent none.
    pub name: String,
    pub groups: Vec<String>,
}

pub struct Oidc {
    pub settings: OidcSection,
    client_secret: String,
    metadata: Metadata,
    tls: Arc<rustls::ClientConfig>,
    keys: tokio::sync::Mutex<(Vec<Value>, Instant)>,
}

impl Oidc {
    /// Reads the provider's discovery document and keys. The issuer it states must be the
    /// configured one, character for character.
    pub async fn discover(settings: OidcSection) -> Result<Oidc, OidcError> {
        let client_secret = settings.client_secret.read().map_err(|e| OidcError::Config(format!("client_secret: {e}")))?;
        let tls_settings = crate::config::UpstreamTlsConfig {
            mode: crate::config::UpstreamTlsMode::VerifyFull,
            ca: settings.ca_file.clone(),
            server_name: None,
        };
        let tls = crate::proxy::tls::client_config(&tls_settings)
            .map_err(|e| OidcError::Config(format!("ca_file: {e}")))?
            .ok_or_else(|| OidcError::Config("no TLS client configuration".into()))?;
        let url = format!("{}/.well-known/openid-configuration", settings.issuer.trim_end_matches('/'));
        let document = get_json(&tls, &url, None).await?;
        let text = |key: &str| document.get(key).and_then(Value::as_str).map(str::to_string);
        let required = |key: &str| {
            text(key).ok_or_else(|| OidcError::Provider { url: url.clone(), reason: format!("the discovery document has no {key}") })
        };
        let metadata = Metadata {
            issuer: required("issuer")?,
            authorization_endpoint: required("authorization_endpoint")?,
            token_endpoint: required("token_endpoint")?,
            jwks_uri: required("jwks_uri")?,
            userinfo_endpoint: text("userinfo_endpoint"),
        };
        if metadata.issuer != settings.issuer {
            return Err(OidcError::Config(format!(
                "issuer is {:?} but the provider calls itself {:?}; set issuer to the provider's exact value",
                settings.issuer, metadata.issuer
            )));
        }
        for endpoint in [&metadata.authorization_endpoint, &metadata.token_endpoint, &metadata.jwks_uri] {
            if !endpoint.starts_with("https://") {
                return Err(OidcError::Provider { url, reason: format!("endpoint {endpoint:?} is not https") });
            }
        }
        let keys = fetch_keys(&tls, &metadata.jwks_uri).await?;
        Ok(Oidc { settings, client_secret, metadata, tls, keys: tokio::sync::Mutex::new((keys, Instant::now())) })
    }

    /// Starts a login: returns the browser's cookie (`state.nonce.verifier`, kept for ten
    /// minutes) and where to send it.
    pub fn begin(&self) -> Result<(String, String), OidcError> {
        let (state, nonce, verifier) = (random_text()?, random_text()?, random_text()?);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let cookie = format!("{state}.{nonce}.{verifier}");
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", self.settings.client_id.as_str()),
            ("redirect_uri", self.settings.redirect_url.as_str()),
            ("scope", &self.settings.scopes.join(" ")),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .map_err(|e| OidcError::Config(e.to_string()))?;
        let endpoint = &self.metadata.authorization_endpoint;
        let separator = if endpoint.contains('?') { '&' } else { '?' };
        Ok((cookie, format!("{endpoint}{separator}{query}")))
    }

    /// Finishes a login the browser came back from: `state` must be the one its cookie
    /// holds (the console clears the cookie, so it is good once).
    pub async fn finish(&self, state: &str, cookie: &str, code: &str) -> Result<Identity, OidcError> {
        let mut parts = cookie.split('.');
        let (Some(cookie_state), Some(nonce), Some(verifier), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(OidcError::UnknownState);
        };
        if state.is_empty() || state != cookie_state || nonce.is_empty() || verifier.is_empty() {
            return Err(OidcError::UnknownState);
        }
        let form = serde_urlencoded::to_string([
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_url.as_str()),
            ("code_verifier", verifier),
        ])
        .map_err(|e| OidcError::Config(e.to_string()))?;
        // RFC 6749 2.3.1: both halves are form-encoded before they are joined.
        let encode = |s: &str| serde_urlencoded::to_string([("", s)]).unwrap_or_default().trim_start_matches('=').to_string();
        let basic = STANDARD.encode(format!("{}:{}", encode(&self.settings.client_id), encode(&self.client_secret)));
        let answer = send(
            &self.tls,
            Request::post(&self.metadata.token_endpoint)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", format!("Basic {basic}"))
                .header("accept", "application/json")
                .body(Full::new(Bytes::from(form))),
        )
        .await?;
        let id_token =
            answer.get("id_token").and_then(Value::as_str).ok_or_else(|| OidcError::Token("the token endpoint sent no id_token".into()))?;
        let claims = self.verified_claims(id_token, nonce).await?;
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
        if subject.is_empty() {
            return Err(OidcError::Token("no sub claim".into()));
        }
        // Providers that follow the core spec to the letter put profile claims only in
        // userinfo when an access token was issued; ask there for what the token lacks.
        let mut claims = claims;
        let lacks = |claims: &Value| claims.get(&self.settings.name_claim).is_none();
        if lacks(&claims) {
            if let (Some(endpoint), Some(access)) = (&self.metadata.userinfo_endpoint, answer.get("access_token").and_then(Value::as_str)) {
                let info = get_json(&self.tls, endpoint, Some(access)).await?;
                if info.get("sub").and_then(Value::as_str) != Some(subject.as_str()) {
                    return Err(OidcError::Token("userinfo is about another subject".into()));
                }
                if let (Some(target), Value::Object(extra)) = (claims.as_object_mut(), info) {
                    for (key, value) in extra {
                        target.entry(key).or_insert(value);
                    }
                }
            }
        }
        identity(&claims, &self.settings, subject)
    }

    async fn verified_claims(&self, token: &str, nonce: &str) -> Result<Value, OidcError> {
        let mut keys = self.keys.lock().await;
        let claims = match verify_jwt(token, &keys.0) {
            Err(JwtError::NoKey) if keys.1.elapsed() >= KEYS_REFETCH_AFTER => {
                *keys = (fetch_keys(&self.tls, &self.metadata.jwks_uri).await?, Instant::now());
                verify_jwt(token, &keys.0)
            }
            other => other,
        }
        .map_err(|e| OidcError::Token(e.to_string()))?;
        drop(keys);
        check_claims(&claims, &self.metadata.issuer, &self.settings.client_id, nonce, chrono::Utc::now().timestamp())?;
        Ok(claims)
    }
}

fn identity(claims: &Value, settings: &OidcSection, subject: String) -> Result<Identity, OidcError> {
    if settings.name_claim == "email" && claims.get("email_verified").and_then(Value::as_bool) == Some(false) {
        return Err(OidcError::Refused("the provider has not verified this email address".into()));
    }
    let name = claims.get(&settings.name_claim).and_then(Value::as_str).unwrap_or_default().to_string();
    let groups = match claims.get(&settings.groups_claim) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    Ok(Identity { subject, name, groups })
}

/// The checks of OpenID Connect Core 3.1.3.7 that the signature does not make.
fn check_claims(claims: &Value, issuer: &str, client_id: &str, nonce: &str, now_s: i64) -> Result<(), OidcError> {
    let fail = |why: &str| Err(OidcError::Token(why.into()));
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return fail("issued by another issuer");
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&client_id) {
        return fail("issued to another client");
    }
    if audiences.len() > 1 && claims.get("azp").and_then(Value::as_str) != Some(client_id) {
        return fail("several audiences and this console is not the authorized party");
    }
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp + CLOCK_SKEW_S > now_s => {}
        _ => return fail("expired, or no exp"),
    }
    if claims.get("iat").and_then(Value::as_i64).is_some_and(|iat| iat > now_s + CLOCK_SKEW_S) {
        return fail("issued in the future");
    }
    if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return fail("its nonce is not this login's");
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a signed JWT")]
    Malformed,
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("no published key fits it")]
    NoKey,
    #[error("its signature does not verify")]
    Signature,
}

/// The claims of a JWS-signed token whose signature one of `keys` (a JWKS's `keys`)
/// verifies. Only asymmetric algorithms: `none` and the HMAC ones (whose key would be the
/// client secret, known to the console) are refused.
pub fn verify_jwt(token: &str, keys: &[Value]) -> Result<Value, JwtError> {
    use aws_lc_rs::signature as sig;
    let mut parts = token.split('.');
    let (Some(header64), Some(payload64), Some(signature64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed);
    let header: Value = serde_json::from_slice(&decode(header64)?).map_err(|_| JwtError::Malformed)?;
    let signature = decode(signature64)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or_default();
    let kty = match alg {
        "RS256" | "PS256" => "RSA",
        "ES256" => "EC",
        "EdDSA" => "OKP",
        other => return Err(JwtError::Algorithm(other.to_string())),
    };
    let kid = header.get("kid").and_then(Value::as_str);
    let signed = &token.as_bytes()[..header64.len() + 1 + payload64.len()];
    let field = |key: &Value, name: &str| key.get(name).and_then(Value::as_str).and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
    let candidates = keys.iter().filter(|key| {
        key.get("kty").and_then(Value::as_str) == Some(kty)
            && key.get("use").and_then(Value::as_str).is_none_or(|u| u == "sig")
            && key.get("alg").and_then(Value::as_str).is_none_or(|a| a == alg)
            && (kid.is_none() || key.get("kid").and_then(Value::as_str) == kid)
    });
    let mut tried = false;
    for key in candidates {
        let verified = match alg {
            "RS256" | "PS256" => {
                let (Some(n), Some(e)) = (field(key, "n"), field(key, "e")) else { continue };
                let scheme: &sig::RsaParameters =
                    if alg == "RS256" { &sig::RSA_PKCS1_2048_8192_SHA256 } else { &sig::RSA_PSS_2048_8192_SHA256 };
                sig::RsaPublicKeyComponents { n: &n, e: &e }.verify(scheme, signed, &signature).is_ok()
            }
            "ES256" => {
                let (Some(x), Some(y)) = (field(key, "x"), field(key, "y")) else { continue };
                if key.get("crv").and_then(Value::as_str) != Some("P-256") {
                    continue;
                }
                let point = [&[4u8][..], &x, &y].concat();
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point).verify(signed, &signature).is_ok()
            }
            _ => {
                let Some(x) = field(key, "x") else { continue };
                if key.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                    continue;
                }
                sig::UnparsedPublicKey::new(&sig::ED25519, x).verify(signed, &signature).is_ok()
            }
        };
        if verified {
            return serde_json::from_slice(&decode(payload64)?).map_err(|_| JwtError::Malformed);
        }
        tried = true;
    }
    Err(if tried { JwtError::Signature } else { JwtError::NoKey })
}

fn random_text() -> Result<String, OidcError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|_| OidcError::Config("no random numbers from the operating system".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

async fn fetch_keys(tls: &Arc<rustls::ClientConfig>, url: &str) -> Result<Vec<Value>, OidcError> {
    match get_json(tls, url, None).await?.get_mut("keys").map(Value::take) {
        Some(Value::Array(keys)) => Ok(keys),
        _ => Err(OidcError::Provider { url: url.into(), reason: "no keys in the key set".into() }),
    }
}

async fn get_json(tls: &Arc<rustls::ClientConfig>, url: &str, bearer: Option<&str>) -> Result<Value, OidcError> {
    let mut request = Request::get(url).header("accept", "application/json");
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(tls, request.body(Full::new(Bytes::new()))).await
}

/// One request to the provider over TLS, its JSON answer bounded in size and time.
async fn send(tls: &Arc<rustls::ClientConfig>, request: Result<Request<Full<Bytes>>, hyper::http::Error>) -> Result<Value, OidcError> {
    let mut request = request.map_err(|e| OidcError::Config(e.to_string()))?;
    let url = request.uri().to_string();
    let fail = |reason: String| OidcError::Provider { url: url.clone(), reason };
    let uri = request.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(fail("not https".into()));
    }
    let host = uri.host().ok_or_else(|| fail("no host".into()))?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(443);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| fail(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| fail(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| fail(e.to_string()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| fail(e.to_string()))?;
        tokio::spawn(connection);
        *request.uri_mut() = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse().map_err(|_| fail("bad path".into()))?;
        request.headers_mut().insert("host", authority.parse().map_err(|_| fail("bad host".into()))?);
        let response = sender.send_request(request).await.map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|_| fail(format!("answer larger than {MAX_RESPONSE_BYTES} bytes or cut short")))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&body).map_err(|_| fail(format!("HTTP {status}, not JSON")))?;
        if !status.is_success() {
            let error = value.get("error").and_then(Value::as_str).unwrap_or("unknown");
            return Err(OidcError::Refused(format!("{url}: HTTP {status}: {}", super::text::visible(error))));
        }
        Ok(value)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| fail("no answer in 10 s".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn es256_key() -> (EcdsaKeyPair, Value) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])});
        (pair, jwk)
    }

    fn sign(pair: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signed = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = pair.sign(&rng, signed.as_bytes()).unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    #[test]
    fn a_token_verifies_only_with_its_key_and_an_asymmetric_algorithm() {
        let (pair, jwk) = es256_key();
        let (_, other) = es256_key();
        let claims = serde_json::json!({"sub": "olga", "nonce": "n"});
        let token = sign(&pair, &serde_json::json!({"alg": "ES256", "kid": "k1"}), &claims);
        assert_eq!(verify_jwt(&token, std::slice::from_ref(&jwk)).unwrap(), claims);
        assert_eq!(verify_jwt(&token, &[other]), Err(JwtError::Signature));
        assert_eq!(verify_jwt(&token, &[]), Err(JwtError::NoKey));
        // A changed claim breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(r#"{"sub":"ana","nonce":"n"}"#);
        assert_eq!(verify_jwt(&parts.join("."), std::slice::from_ref(&jwk)), Err(JwtError::Signature));
        // alg none and HMAC are refused whatever the key set holds.
        for alg in ["none", "HS256"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let forged = format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()));
            assert_eq!(verify_jwt(&forged, std::slice::from_ref(&jwk)), Err(JwtError::Algorithm(alg.into())));
        }
        assert_eq!(verify_jwt("a.b", std::slice::from_ref(&jwk)), Err(JwtError::Malformed));
    }

    #[test]
    fn claims_must_name_this_issuer_client_and_login() {
        let good = serde_json::json!({"iss": "https://idp", "aud": "console", "exp": 1000, "iat": 900, "nonce": "n"});
        assert!(check_claims(&good, "https://idp", "console", "n", 950).is_ok());
        let cases = [
            ("iss", serde_json::json!("https://evil")),
            ("aud", serde_json::json!("other")),
            ("aud", serde_json::json!(["console", "other"])),
            ("exp", serde_json::json!(800)),
            ("iat", serde_json::json!(2000)),
            ("nonce", serde_json::json!("replayed")),
        ];
        for (key, value) in cases {
            let mut claims = good.clone();
            claims[key] = value;
            assert!(check_claims(&claims, "https://idp", "console", "n", 950).is_err(), "{key}");
        }
        let mut shared = good.clone();
        shared["aud"] = serde_json::json!(["console", "other"]);
        shared["azp"] = serde_json::json!("console");
        assert!(check_claims(&shared, "https://idp", "console", "n", 950).is_ok());
    }
}
