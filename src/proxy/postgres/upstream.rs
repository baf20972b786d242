//! The connection to the real PostgreSQL: TCP, TLS (verify-full by default), startup as the
//! granted db_user, and password authentication (cleartext, MD5 or SCRAM-SHA-256).

use std::sync::Arc;

use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::{message, read_message, startup_message, WireError, PROTOCOL_3_0, SSL_REQUEST};
use super::messages::error_text;
use crate::auth::scram::ClientExchange;
use crate::proxy::net::{connect_tcp, tls_connect};
use crate::proxy::stream::Stream;
use crate::util::hex::hex;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("upstream refused TLS, which this database requires")]
    TlsRefused,
    #[error("TLS handshake with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("upstream asked for a cleartext password over an unencrypted connection; refused")]
    CleartextWithoutTls,
    #[error("upstream asked for authentication method {0}, which dbtape does not support")]
    UnsupportedAuth(i32),
    #[error("upstream requires a password but none is configured")]
    NoPassword,
    #[error("upstream authentication: {0}")]
    Scram(#[from] crate::auth::scram::ScramError),
    #[error("a background task failed: {0}")]
    Blocking(String),
    /// The server's own error, as `SEVERITY: message (SQLSTATE code)`; the raw message is kept
    /// so it can be passed to the client unchanged.
    #[error("{text}")]
    Server { text: String, raw: Vec<u8> },
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Where and how to connect, from the database's config.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub server_name: String,
    /// PBKDF2 once per upstream user, not once per login.
    pub salted: Arc<crate::auth::scram::SaltedPasswords>,
}

impl UpstreamTarget {
    /// Parses `postgres://host[:port][/database]`.
    pub fn parse(uri: &str) -> Option<(String, u16, String)> {
        let rest = uri.strip_prefix("postgres://").or_else(|| uri.strip_prefix("postgresql://"))?;
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let database = path.split('?').next().unwrap_or_default().to_string();
        let (host, port) = crate::proxy::net::host_port(authority, 5432)?;
        (!host.is_empty()).then_some((host, port, database))
    }

    async fn connect_tls(&self) -> Result<Stream, UpstreamError> {
        let mut tcp = connect_tcp(&self.host, self.port).await.map_err(|(addr, source)| UpstreamError::Connect { addr, source })?;
        let Some(config) = &self.tls else { return Ok(Stream::Plain(tcp)) };
        let mut request = 8i32.to_be_bytes().to_vec();
        request.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        tcp.write_all(&request).await.map_err(WireError::from)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(WireError::from)?;
        if answer[0] != b'S' {
            return Err(UpstreamError::TlsRefused);
        }
        tls_connect(config, &self.server_name, tcp).await.map_err(|reason| UpstreamError::Tls { host: self.server_name.clone(), reason })
    }

    /// Connects and authenticates. Returns the stream positioned right after
    /// AuthenticationOk: ParameterStatus, BackendKeyData and ReadyForQuery follow.
    pub async fn connect(&self, params: &[(String, String)], password: Option<&str>) -> Result<Stream, UpstreamError> {
        let mut stream = self.connect_tls().await?;
        let user = params.iter().find(|(k, _)| k == "user").map(|(_, v)| v.clone()).unwrap_or_default();
        stream.write_all(&startup_message(PROTOCOL_3_0, params)).await.map_err(WireError::from)?;
        let mut scram: Option<ClientExchange> = None;
        loop {
            let (ty, body) = read_message(&mut stream, 1 << 20).await?;
            match ty {
                b'E' => return Err(UpstreamError::Server { text: error_text(&body), raw: message(b'E', &body) }),
                b'v' | b'N' => continue, // NegotiateProtocolVersion, NoticeResponse
                b'R' => {}
                _ => {
                    return Err(
                        WireError::Malformed { what: "authentication", detail: format!("unexpected message {:?}", ty as char) }.into()
                    )
                }
            }
            let code = body.get(..4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(-1);
            let data = body.get(4..).unwrap_or_default();
            match code {
                0 => return Ok(stream),
                3 => {
                    if !stream.is_tls() {
                        return Err(UpstreamError::CleartextWithoutTls);
                    }
                    let password = password.ok_or(UpstreamError::NoPassword)?;
                    let mut body = password.as_bytes().to_vec();
                    body.push(0);
                    stream.write_all(&message(b'p', &body)).await.map_err(WireError::from)?;
                }
                5 => {
                    let password = password.ok_or(UpstreamError::NoPassword)?;
                    let salt = data.get(..4).unwrap_or_default();
                    let inner = hex(&Md5::digest(format!("{password}{user}").as_bytes()));
                    let mut outer = Md5::new();
                    outer.update(inner.as_bytes());
                    outer.update(salt);
                    let mut body = format!("md5{}", hex(&outer.finalize())).into_bytes();
                    body.push(0);
                    stream.write_all(&message(b'p', &body)).await.map_err(WireError::from)?;
                }
                10 => {
                    let password = password.ok_or(UpstreamError::NoPassword)?;
                    let mechanisms: Vec<String> = data.split(|b| *b == 0).map(|m| String::from_utf8_lossy(m).into_owned()).collect();
                    if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                        return Err(UpstreamError::UnsupportedAuth(10));
                    }
                    let (exchange, first) = ClientExchange::start(password)?;
                    let mut body = b"SCRAM-SHA-256\0".to_vec();
                    body.extend_from_slice(&(first.len() as i32).to_be_bytes());
                    body.extend_from_slice(first.as_bytes());
                    stream.write_all(&message(b'p', &body)).await.map_err(WireError::from)?;
                    scram = Some(exchange);
                }
                11 => {
                    let mut exchange = scram.take().ok_or(UpstreamError::UnsupportedAuth(11))?;
                    let server_first = String::from_utf8_lossy(data).into_owned();
                    let reply = match exchange.respond_cached(&server_first, &self.salted, false)? {
                        Some(reply) => reply,
                        None => {
                            // PBKDF2 takes milliseconds at the least: off the worker that
                            // serves other connections, and only at this user's first login.
                            let salted = self.salted.clone();
                            let (back, reply) = tokio::task::spawn_blocking(move || {
                                let reply = exchange.respond_cached(&server_first, &salted, true);
                                (exchange, reply)
                            })
                            .await
                            .map_err(|e| UpstreamError::Blocking(e.to_string()))?;
                            exchange = back;
                            reply?.unwrap_or_default()
                        }
                    };
                    scram = Some(exchange);
                    stream.write_all(&message(b'p', reply.as_bytes())).await.map_err(WireError::from)?;
                }
                12 => {
                    let exchange = scram.as_ref().ok_or(UpstreamError::UnsupportedAuth(12))?;
                    exchange.verify_final(&String::from_utf8_lossy(data))?;
                }
                other => return Err(UpstreamError::UnsupportedAuth(other)),
            }
        }
    }

    /// Forwards a cancel request for the real backend key (over TLS when configured).
    pub async fn cancel(&self, pid: i32, key: &[u8]) -> Result<(), UpstreamError> {
        let mut stream = self.connect_tls().await?;
        stream.write_all(&super::codec::cancel_request(pid, key)).await.map_err(WireError::from)?;
        let _ = stream.flush().await;
        // The server closes without answering; wait for that so the cancel is delivered.
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut sink)).await;
        Ok(())
    }
}
