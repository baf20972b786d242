//! The DynamoDB endpoint: one HTTP/1.1 connection per client connection, opened on first use
//! and again after the endpoint closes it, and each request re-signed with the role's
//! credentials.

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::aws::sigv4::{self, SigningKeys};
use crate::proxy::net::{connect_tcp, tls_connect};
use crate::proxy::stream::Stream;

/// Where DynamoDB is: the configured `upstream`, or the region's public endpoint.
pub struct Endpoint {
    /// `https://dynamodb.us-east-1.amazonaws.com`, as events name it.
    pub uri: String,
    pub host: String,
    pub port: u16,
    /// The Host header: the host, with the port unless it is the scheme's default. Made
    /// once: cloning it shares its bytes.
    host_header: HeaderValue,
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
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return None;
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = crate::proxy::net::host_port(authority, default_port)?;
        let tls = if https { Some(tls?) } else { None };
        let server_name = server_name.map_or_else(|| host.clone(), str::to_string);
        let host_header = HeaderValue::from_str(if port == default_port { &host } else { authority }).ok()?;
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
    Http(#[from] hyper::Error),
    #[error("signing the request: {0}")]
    Sign(String),
}

/// A client connection's line to the endpoint.
///
/// The endpoint connection is driven by the client connection's own task while a request and
/// a response that fits the tee's prefetch go through it, so a request costs no hand-off to
/// another task and back (a thread switch, in the keep-alive profile). A response that
/// streams on past the prefetch needs the connection driven while the client reads it; the
/// connection then moves to a task of its own for the rest of its life.
#[derive(Default)]
pub struct Line {
    sender: Option<SendRequest<Full<Bytes>>>,
    /// `None` once the connection has a task of its own, or when there is no connection.
    connection: Option<EndpointConnection>,
}

type EndpointConnection = hyper::client::conn::http1::Connection<TokioIo<Stream>, Full<Bytes>>;

impl Line {
    pub async fn send(
        &mut self,
        endpoint: &Endpoint,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        // A connection the endpoint closed while idle is found here, before anything is
        // sent on it, so opening another cannot send the request twice: one poll reads the
        // end of stream the kernel already holds.
        if let Some(connection) = self.connection.as_mut() {
            if futures_util::FutureExt::now_or_never(connection).is_some() {
                self.connection = None;
                self.sender = None;
            }
        }
        let mut sender = match self.sender.take().filter(|s| !s.is_closed()) {
            Some(sender) => sender,
            None => self.open(endpoint).await?,
        };
        if drive(&mut self.connection, sender.ready()).await.is_err() {
            sender = self.open(endpoint).await?;
            drive(&mut self.connection, sender.ready()).await?;
        }
        match drive(&mut self.connection, sender.send_request(request)).await {
            Ok(response) => {
                self.sender = Some(sender);
                Ok(response)
            }
            Err(e) => {
                self.connection = None;
                Err(e.into())
            }
        }
    }

    /// Runs `work` (reading a response body, say) while driving the endpoint connection.
    pub async fn drive<F: std::future::Future>(&mut self, work: F) -> F::Output {
        drive(&mut self.connection, work).await
    }

    /// Gives the connection a task of its own: a response body is left to stream after the
    /// client connection's task stops driving it.
    pub fn detach(&mut self) {
        if let Some(connection) = self.connection.take() {
            tokio::spawn(run(connection));
        }
    }

    /// A new endpoint connection, driven by this task until `detach`.
    async fn open(&mut self, endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, UpstreamError> {
        self.connection = None;
        let (sender, connection) = connect(endpoint).await?;
        self.connection = Some(connection);
        Ok(sender)
    }
}

/// Polls `work` and, while it is pending, the endpoint connection; a connection that ends is
/// dropped, which ends whatever `work` was waiting for from it.
async fn drive<F: std::future::Future>(connection: &mut Option<EndpointConnection>, work: F) -> F::Output {
    use std::future::Future;
    use std::task::Poll;
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        let Some(conn) = connection.as_mut() else { return Poll::Pending };
        match std::pin::Pin::new(conn).poll(cx) {
            Poll::Ready(result) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "DynamoDB endpoint connection ended");
                }
                *connection = None;
            }
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

async fn run(connection: EndpointConnection) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "DynamoDB endpoint connection ended");
    }
}

async fn connect(endpoint: &Endpoint) -> Result<(SendRequest<Full<Bytes>>, EndpointConnection), UpstreamError> {
    let tcp = connect_tcp(&endpoint.host, endpoint.port).await.map_err(|(addr, source)| UpstreamError::Connect { addr, source })?;
    let stream = match &endpoint.tls {
        Some(config) => tls_connect(config, &endpoint.server_name, tcp)
            .await
            .map_err(|e| UpstreamError::Tls(format!("{}: {e}", endpoint.server_name)))?,
        None => Stream::Plain(tcp),
    };
    Ok(hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?)
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

/// The client's request for the endpoint, signed with `credentials`.
#[allow(clippy::too_many_arguments)]
pub fn resign(
    endpoint: &Endpoint,
    method: &http::Method,
    path_and_query: &str,
    client_headers: &HeaderMap,
    body: Bytes,
    payload_sha256: &str,
    credentials: &Credentials,
    keys: &SigningKeys,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let time = SystemTime::now();
    let mut headers = forwarded(client_headers);
    headers.insert(http::header::HOST, endpoint.host_header.clone());
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if path_and_query == "/" {
        sign_cached(&mut headers, method, &endpoint.region, payload_sha256, credentials, keys, time)?;
    } else {
        sign_with_aws_sigv4(&mut headers, endpoint, method, path_and_query, payload_sha256, credentials, time)?;
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method.clone();
    *request.uri_mut() = path_and_query.parse().map_err(|e: http::uri::InvalidUri| UpstreamError::Sign(e.to_string()))?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The client's headers the endpoint gets, before dbtape adds its own.
fn forwarded(client_headers: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(client_headers.len() + 4);
    for (name, value) in client_headers {
        // A value that is not visible ASCII cannot be signed, so it is not sent either.
        let dropped = DROPPED.contains(&name.as_str()) || HOP_BY_HOP.contains(&name.as_str());
        if !dropped && value.to_str().is_ok() {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Headers `aws-sigv4` leaves unsigned by default, left unsigned here too: proxies change them.
const UNSIGNED: &[&str] = &["user-agent", "x-amzn-trace-id"];

/// Signs a request to `/` with a cached signing key: the same canonical form `aws-sigv4`
/// writes (the tests compare them), without deriving the key again.
fn sign_cached(
    headers: &mut HeaderMap,
    method: &http::Method,
    region: &str,
    payload_sha256: &str,
    credentials: &Credentials,
    keys: &SigningKeys,
    time: SystemTime,
) -> Result<(), UpstreamError> {
    let amz_date = sigv4::amz_date(time);
    let value = |text: &str| HeaderValue::from_str(text).map_err(|e| UpstreamError::Sign(e.to_string()));
    headers.insert(HeaderName::from_static("x-amz-date"), value(&amz_date)?);
    if let Some(token) = credentials.session_token() {
        headers.insert(HeaderName::from_static("x-amz-security-token"), value(token)?);
    }
    let signed: Vec<(&str, &str)> =
        headers.iter().filter(|(n, _)| !UNSIGNED.contains(&n.as_str())).filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))).collect();
    let request = sigv4::Request { method: method.as_str(), headers: &signed, payload_sha256 };
    let (canonical, signed_headers) = sigv4::canonical(&request);
    let key = keys.get(credentials.secret_access_key(), &amz_date[..8], region, "dynamodb");
    let signature = sigv4::signature(&key, &amz_date, region, "dynamodb", &canonical);
    let authorization = sigv4::authorization(credentials.access_key_id(), &amz_date, region, "dynamodb", &signed_headers, &signature);
    headers.insert(http::header::AUTHORIZATION, value(&authorization)?);
    Ok(())
}

/// For the fuzz target: the cached signer and `aws-sigv4` must sign any request to `/` as
/// the proxy would forward it with the same Authorization header.
#[cfg(feature = "fuzzing")]
pub(super) fn assert_signers_agree(client_headers: &HeaderMap, payload_sha256: &str) {
    let Some(endpoint) = Endpoint::parse("http://127.0.0.1:8000", "eu-west-1", None, None) else { return };
    let mut headers = forwarded(client_headers);
    headers.insert(http::header::HOST, HeaderValue::from_static("127.0.0.1:8000"));
    let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_123);
    let credentials = Credentials::new("AKIDFUZZ", "fuzz/secret+key", Some("fuzz-token".into()), None, "fuzz");
    let method = http::Method::POST;
    let (mut cached, mut reference) = (headers.clone(), headers);
    let keys = SigningKeys::default();
    // aws-sigv4 refuses some values (it re-parses each after trimming); those are not compared.
    if sign_with_aws_sigv4(&mut reference, &endpoint, &method, "/", payload_sha256, &credentials, time).is_err() {
        return;
    }
    if sign_cached(&mut cached, &method, "eu-west-1", payload_sha256, &credentials, &keys, time).is_err() {
        return;
    }
    assert_eq!(cached.get(http::header::AUTHORIZATION), reference.get(http::header::AUTHORIZATION), "the two signers disagree");
}

/// Any other path: `aws-sigv4` itself, which also normalizes paths and queries.
fn sign_with_aws_sigv4(
    headers: &mut HeaderMap,
    endpoint: &Endpoint,
    method: &http::Method,
    path_and_query: &str,
    payload_sha256: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<(), UpstreamError> {
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
    let pairs: Vec<(&str, &str)> = headers.iter().filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))).collect();
    let signable =
        SignableRequest::new(method.as_str(), uri.as_str(), pairs.into_iter(), SignableBody::Precomputed(payload_sha256.to_string()))
            .map_err(|e| UpstreamError::Sign(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| UpstreamError::Sign(e.to_string()))?.into_parts();
    for (name, value) in instructions.headers() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| UpstreamError::Sign(e.to_string()))?;
        let value = HeaderValue::from_str(value).map_err(|e| UpstreamError::Sign(e.to_string()))?;
        headers.insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod signing_tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::parse("http://127.0.0.1:8000", "eu-west-1", None, None).unwrap()
    }

    fn authorization(path: &str, headers: &HeaderMap, credentials: &Credentials, cached: bool) -> (String, HeaderMap) {
        let mut out = headers.clone();
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_123);
        let payload = crate::aws::sigv4_verify::payload_sha256(b"{}");
        let method = http::Method::POST;
        if cached {
            sign_cached(&mut out, &method, "eu-west-1", &payload, credentials, &SigningKeys::default(), time).unwrap();
        } else {
            sign_with_aws_sigv4(&mut out, &endpoint(), &method, path, &payload, credentials, time).unwrap();
        }
        (out.get("authorization").unwrap().to_str().unwrap().to_string(), out)
    }

    /// The cached signer writes exactly what aws-sigv4 writes, for what clients send:
    /// repeated headers, runs of spaces, unsigned user agents, session tokens.
    #[test]
    fn the_cached_signer_signs_as_aws_sigv4_does() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:8000"));
        headers.insert("content-length", HeaderValue::from_static("2"));
        headers.insert("content-type", HeaderValue::from_static("application/x-amz-json-1.0"));
        headers.insert("x-amz-target", HeaderValue::from_static("DynamoDB_20120810.GetItem"));
        headers.insert("user-agent", HeaderValue::from_static("aws-cli/2.15  Python/3.11"));
        headers.insert("x-amzn-trace-id", HeaderValue::from_static("Root=1-abc"));
        headers.append("x-custom", HeaderValue::from_static("  first   value "));
        headers.append("x-custom", HeaderValue::from_static("second"));
        headers.insert("amz-sdk-invocation-id", HeaderValue::from_static("0c3b  9f"));
        for credentials in [
            Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None, None, "t"),
            Credentials::new("ASIAEXAMPLE", "secret/with+chars", Some("FwoGZXIvYXdzE//token==".into()), None, "t"),
        ] {
            let (cached, cached_headers) = authorization("/", &headers, &credentials, true);
            let (reference, reference_headers) = authorization("/", &headers, &credentials, false);
            assert_eq!(cached, reference);
            assert!(cached.contains("SignedHeaders=amz-sdk-invocation-id;content-length;content-type;host;"), "{cached}");
            for name in ["x-amz-date", "x-amz-security-token"] {
                assert_eq!(cached_headers.get(name), reference_headers.get(name), "{name}");
            }
        }
    }
}
