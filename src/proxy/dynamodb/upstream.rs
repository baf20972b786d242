//! The DynamoDB endpoint: one HTTP/1.1 connection per client connection, opened on first use
//! and again after the endpoint closes it, and each request re-signed with the role's
//! credentials and written out in one piece.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use crate::aws::sigv4::{self, SigningKeys};
use crate::proxy::http1::{self, visible, RequestHead, ResponseHead, Wire, WireError};
use crate::proxy::net::{connect_tcp, tls_connect};
use crate::proxy::stream::Stream;

/// How long the endpoint may go quiet in the middle of an answer before it is given up on.
pub const ENDPOINT_STALL: Duration = Duration::from_secs(120);
/// A request body up to this size leaves in the same write as its head.
const ONE_WRITE: usize = 64 * 1024;

/// Where DynamoDB is: the configured `upstream`, or the region's public endpoint.
pub struct Endpoint {
    /// `https://dynamodb.us-east-1.amazonaws.com`, as events name it.
    pub uri: String,
    pub host: String,
    pub port: u16,
    /// The Host header: the host, with the port unless it is the scheme's default.
    host_header: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub server_name: String,
    pub region: String,
}

impl Endpoint {
    /// `upstream` is `http(s)://host[:port]` or empty for the region's endpoint.
    pub fn parse(upstream: &str, region: &str, tls: Option<Arc<rustls::ClientConfig>>, server_name: Option<&str>) -> Option<Endpoint> {
        let uri = if upstream.is_empty() {
            format!("https://dynamodb.{region}.amazonaws.com")
        } else {
            upstream.trim_end_matches('/').to_string()
        };
        let (https, authority) = match uri.split_once("://")? {
            ("https", rest) => (true, rest),
            ("http", rest) => (false, rest),
            _ => return None,
        };
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) || !authority.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = crate::proxy::net::host_port(authority, default_port)?;
        let tls = if https { Some(tls?) } else { None };
        let server_name = server_name.map_or_else(|| host.clone(), str::to_string);
        let host_header = if port == default_port { host.clone() } else { authority.to_string() };
        Some(Endpoint { uri, host, port, host_header, tls, server_name, region: region.to_string() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS with {0}")]
    Tls(String),
    #[error("HTTP with the endpoint: {0}")]
    Http(#[from] WireError),
    #[error("signing the request: {0}")]
    Sign(String),
}

/// A client connection's line to the endpoint, driven by the client connection's own task:
/// a request costs no hand-off to another task and back.
#[derive(Default)]
pub struct Line {
    wire: Option<Wire<Stream>>,
}

impl Line {
    /// Sends a request (its head, then `body`) and reads the head of the answer; its body is
    /// then read from `wire()`.
    pub async fn send(&mut self, endpoint: &Endpoint, mut request: Vec<u8>, body: &[u8]) -> Result<ResponseHead, UpstreamError> {
        // A connection the endpoint closed while idle is found here, before anything is
        // sent on it, so opening another cannot send the request twice: one read that does
        // not wait sees the end of stream the kernel already holds.
        if self.wire.as_mut().is_some_and(|w| w.closed_while_idle()) {
            self.wire = None;
        }
        let wire = match &mut self.wire {
            Some(wire) => wire,
            // Boxed: opened once per client connection, and its TLS handshake's future is
            // large.
            None => self.wire.insert(Box::pin(connect(endpoint)).await?),
        };
        let exchanged = async {
            if body.len() <= ONE_WRITE {
                request.extend_from_slice(body);
                wire.write_all(&request).await?;
            } else {
                wire.write_all(&request).await?;
                wire.write_all(body).await?;
            }
            wire.read_response_head(ENDPOINT_STALL).await
        };
        match exchanged.await {
            Ok(head) => Ok(head),
            Err(e) => {
                self.wire = None;
                Err(e.into())
            }
        }
    }

    /// The connection the last answer is being read from.
    pub fn wire(&mut self) -> Option<&mut Wire<Stream>> {
        self.wire.as_mut()
    }

    /// Drops the connection: the endpoint closes it after this answer, or the answer broke
    /// off part way.
    pub fn discard(&mut self) {
        self.wire = None;
    }
}

async fn connect(endpoint: &Endpoint) -> Result<Wire<Stream>, UpstreamError> {
    let tcp = connect_tcp(&endpoint.host, endpoint.port).await.map_err(|(addr, source)| UpstreamError::Connect { addr, source })?;
    let stream = match &endpoint.tls {
        Some(config) => tls_connect(config, &endpoint.server_name, tcp)
            .await
            .map_err(|e| UpstreamError::Tls(format!("{}: {e}", endpoint.server_name)))?,
        None => Stream::Plain(tcp),
    };
    Ok(Wire::new(stream))
}

/// Headers that describe one connection, not the message.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client headers never forwarded besides the hop-by-hop ones: the client's signature, and
/// what dbtape sets itself for the endpoint.
const DROPPED: &[&str] =
    &["authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "host", "content-length", "expect"];

/// A header dbtape adds for the endpoint: its name, and its value (borrowed where it can be).
type Added<'a> = (&'static str, Cow<'a, str>);

/// The head of the client's request for the endpoint, signed with `credentials`; the body
/// follows it unchanged.
pub fn resign(
    endpoint: &Endpoint,
    head: &RequestHead,
    body_len: usize,
    payload_sha256: &str,
    credentials: &Credentials,
    keys: &SigningKeys,
) -> Result<Vec<u8>, UpstreamError> {
    let time = SystemTime::now();
    let length = body_len.to_string();
    let mut headers = forwarded(head);
    headers.push(("host", &endpoint.host_header));
    headers.push(("content-length", &length));
    let target = head.target();
    let added = if target == "/" {
        sign_cached(&headers, head.method(), &endpoint.region, payload_sha256, credentials, keys, time)?
    } else {
        sign_with_aws_sigv4(&headers, endpoint, head.method(), target, payload_sha256, credentials, time)?
    };
    let size = head.method().len() + target.len() + 16;
    let size = size
        + headers.iter().copied().chain(added.iter().map(|(n, v)| (*n, v.as_ref()))).map(|(n, v)| n.len() + v.len() + 4).sum::<usize>();
    let mut out = Vec::with_capacity(size + 2 + body_len.min(ONE_WRITE));
    out.extend_from_slice(head.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers.iter().copied().chain(added.iter().map(|(n, v)| (*n, v.as_ref()))) {
        // What dbtape adds comes from STS and the signer: checked like what the client sent,
        // so nothing can end a line early.
        if visible(value.as_bytes()).is_none() {
            return Err(UpstreamError::Sign(format!("the {name} header is not visible text")));
        }
        http1::header(&mut out, name, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// The client's headers the endpoint gets, before dbtape adds its own.
fn forwarded(head: &RequestHead) -> Vec<(&str, &str)> {
    let mut headers = Vec::with_capacity(head.fields.len() + 6);
    for (name, value) in head.fields.iter_text() {
        // A value that is not visible ASCII cannot be signed, so it is not sent either.
        let dropped = DROPPED.contains(&name) || HOP_BY_HOP.contains(&name);
        if let (false, Some(value)) = (dropped, value) {
            headers.push((name, value));
        }
    }
    headers
}

/// Headers `aws-sigv4` leaves unsigned by default, left unsigned here too: proxies change them.
const UNSIGNED: &[&str] = &["user-agent", "x-amzn-trace-id"];

/// Signs a request to `/` with a cached signing key: the same canonical form `aws-sigv4`
/// writes (the tests compare them), without deriving the key again.
fn sign_cached<'c>(
    headers: &[(&str, &str)],
    method: &str,
    region: &str,
    payload_sha256: &str,
    credentials: &'c Credentials,
    keys: &SigningKeys,
    time: SystemTime,
) -> Result<Vec<Added<'c>>, UpstreamError> {
    let amz_date = sigv4::amz_date(time);
    let token = credentials.session_token();
    let mut signed: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 2);
    signed.extend(headers.iter().copied().filter(|(n, _)| !UNSIGNED.contains(n)));
    signed.push(("x-amz-date", &amz_date));
    if let Some(token) = token {
        signed.push(("x-amz-security-token", token));
    }
    let request = sigv4::Request { method, headers: &signed, payload_sha256 };
    let (canonical, signed_headers) = sigv4::canonical(&request);
    let key = keys.get(credentials.secret_access_key(), &amz_date[..8], region, "dynamodb");
    let signature = sigv4::signature(&key, &amz_date, region, "dynamodb", &canonical);
    let authorization = sigv4::authorization(credentials.access_key_id(), &amz_date, region, "dynamodb", &signed_headers, &signature);
    let mut added = Vec::with_capacity(3);
    added.push(("x-amz-date", Cow::Owned(amz_date)));
    if let Some(token) = token {
        added.push(("x-amz-security-token", Cow::Borrowed(token)));
    }
    added.push(("authorization", Cow::Owned(authorization)));
    Ok(added)
}

/// For the fuzz target: the cached signer and `aws-sigv4` must sign any request to `/` as
/// the proxy would forward it with the same Authorization header.
#[cfg(feature = "fuzzing")]
pub(super) fn assert_signers_agree(client: &[u8], payload_sha256: &str) {
    let Ok(Some(head)) = crate::proxy::http1::head::parse_request(&mut bytes::BytesMut::from(client)) else { return };
    let Some(endpoint) = Endpoint::parse("http://127.0.0.1:8000", "eu-west-1", None, None) else { return };
    let mut headers = forwarded(&head);
    headers.push(("host", "127.0.0.1:8000"));
    let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_123);
    let credentials = Credentials::new("AKIDFUZZ", "fuzz/secret+key", Some("fuzz-token".into()), None, "fuzz");
    let keys = SigningKeys::default();
    // aws-sigv4 refuses some values (it re-parses each after trimming); those are not compared.
    let Ok(reference) = sign_with_aws_sigv4(&headers, &endpoint, "POST", "/", payload_sha256, &credentials, time) else { return };
    let Ok(cached) = sign_cached(&headers, "POST", "eu-west-1", payload_sha256, &credentials, &keys, time) else { return };
    let authorization = |added: &[Added<'_>]| added.iter().find(|(n, _)| *n == "authorization").map(|(_, v)| v.to_string());
    assert_eq!(authorization(&cached), authorization(&reference), "the two signers disagree");
}

/// Any other path: `aws-sigv4` itself, which also normalizes paths and queries.
fn sign_with_aws_sigv4(
    headers: &[(&str, &str)],
    endpoint: &Endpoint,
    method: &str,
    path_and_query: &str,
    payload_sha256: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<Vec<Added<'static>>, UpstreamError> {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&endpoint.region)
        .name("dynamodb")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| UpstreamError::Sign(e.to_string()))?
        .into();
    let uri = format!("{}{}", endpoint.uri, path_and_query);
    let signable =
        SignableRequest::new(method, uri.as_str(), headers.iter().copied(), SignableBody::Precomputed(payload_sha256.to_string()))
            .map_err(|e| UpstreamError::Sign(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| UpstreamError::Sign(e.to_string()))?.into_parts();
    let mut added = Vec::new();
    for (name, value) in instructions.headers() {
        let name = ADDED_BY_SIGNER
            .iter()
            .find(|known| known.eq_ignore_ascii_case(name))
            .ok_or_else(|| UpstreamError::Sign(format!("the signer added an unexpected header {name:?}")))?;
        added.push((*name, Cow::Owned(value.to_string())));
    }
    Ok(added)
}

/// What `aws-sigv4` adds to a request it signs with these settings.
const ADDED_BY_SIGNER: &[&str] = &["authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];

#[cfg(test)]
mod signing_tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::parse("http://127.0.0.1:8000", "eu-west-1", None, None).unwrap()
    }

    fn authorization(path: &str, headers: &[(&str, &str)], credentials: &Credentials, cached: bool) -> (String, Vec<(String, String)>) {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_123);
        let payload = crate::aws::sigv4_verify::payload_sha256(b"{}");
        let added = if cached {
            sign_cached(headers, "POST", "eu-west-1", &payload, credentials, &SigningKeys::default(), time).unwrap()
        } else {
            sign_with_aws_sigv4(headers, &endpoint(), "POST", path, &payload, credentials, time).unwrap()
        };
        let added: Vec<(String, String)> = added.into_iter().map(|(n, v)| (n.to_string(), v.into_owned())).collect();
        (added.iter().find(|(n, _)| n == "authorization").unwrap().1.clone(), added)
    }

    /// The cached signer writes exactly what aws-sigv4 writes, for what clients send:
    /// repeated headers, runs of spaces, unsigned user agents, session tokens.
    #[test]
    fn the_cached_signer_signs_as_aws_sigv4_does() {
        let headers = [
            ("host", "127.0.0.1:8000"),
            ("content-length", "2"),
            ("content-type", "application/x-amz-json-1.0"),
            ("x-amz-target", "DynamoDB_20120810.GetItem"),
            ("user-agent", "aws-cli/2.15  Python/3.11"),
            ("x-amzn-trace-id", "Root=1-abc"),
            ("x-custom", "  first   value "),
            ("x-custom", "second"),
            ("amz-sdk-invocation-id", "0c3b  9f"),
        ];
        for credentials in [
            Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None, None, "t"),
            Credentials::new("ASIAEXAMPLE", "secret/with+chars", Some("FwoGZXIvYXdzE//token==".into()), None, "t"),
        ] {
            let (cached, cached_headers) = authorization("/", &headers, &credentials, true);
            let (reference, reference_headers) = authorization("/", &headers, &credentials, false);
            assert_eq!(cached, reference);
            assert!(cached.contains("SignedHeaders=amz-sdk-invocation-id;content-length;content-type;host;"), "{cached}");
            for name in ["x-amz-date", "x-amz-security-token"] {
                let value = |added: &[(String, String)]| added.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
                assert_eq!(value(&cached_headers), value(&reference_headers), "{name}");
            }
        }
    }

    /// The head sent to the endpoint: the client's headers without its signature or hop-by-hop
    /// ones, the endpoint's host, the body's length, and a new signature.
    #[test]
    fn the_endpoint_gets_the_request_resigned_in_one_head() {
        let client = "POST / HTTP/1.1\r\nHost: dbtape:1\r\nAuthorization: AWS4-HMAC-SHA256 old\r\nConnection: keep-alive\r\nExpect: 100-continue\r\nX-Amz-Target: DynamoDB_20120810.GetItem\r\nContent-Length: 2\r\n\r\n";
        let head = crate::proxy::http1::head::parse_request(&mut bytes::BytesMut::from(client)).unwrap().unwrap();
        let credentials = Credentials::new("ASIAEXAMPLE", "secret", Some("token".into()), None, "t");
        let payload = crate::aws::sigv4_verify::payload_sha256(b"{}");
        let out = resign(&endpoint(), &head, 2, &payload, &credentials, &SigningKeys::default()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "POST / HTTP/1.1\r\nx-amz-target: DynamoDB_20120810.GetItem\r\nhost: 127.0.0.1:8000\r\ncontent-length: 2\r\nx-amz-date: "
            ),
            "{text}"
        );
        assert!(text.contains("\r\nx-amz-security-token: token\r\nauthorization: AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n") && !text.contains("old") && !text.contains("keep-alive") && !text.contains("100-continue"),
            "{text}"
        );
        let bad = Credentials::new("ASIAEXAMPLE", "secret", Some("token\r\nx-injected: 1".into()), None, "t");
        assert!(resign(&endpoint(), &head, 2, &payload, &bad, &SigningKeys::default()).is_err(), "a line break cannot get into the head");
    }
}
