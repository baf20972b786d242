//! The proxy's own connection to the MongoDB server: TCP, TLS when configured, `hello`, and
//! a login as the session's db_user with SCRAM-SHA-256 or MONGODB-AWS.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use bson::spec::BinarySubtype;
use bson::{rawdoc, Binary, RawDocument, RawDocumentBuf};
use tokio::io::AsyncWriteExt;

use super::commands::summarize_reply;
use super::wire::{frame, op_msg_body, read_message, OpMsg, WireError, DEFAULT_MAX_MESSAGE_BYTES, OP_MSG};
use crate::auth::scram::{ClientExchange, ScramError};
use crate::aws::mongodb_aws;
use crate::proxy::net::{connect_tcp, tls_connect};
use crate::proxy::stream::Stream;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS with {host}: {reason}")]
    Tls { host: String, reason: String },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("SCRAM: {0}")]
    Scram(#[from] ScramError),
    #[error("MONGODB-AWS: {0}")]
    Aws(String),
    #[error(transparent)]
    Password(#[from] crate::server::UpstreamPasswordError),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// Where and how to connect, from `mongodb://host[:port][/?authSource=…]`.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub auth_source: Option<String>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub server_name: String,
    /// PBKDF2 (15,000 iterations by MongoDB's default) once per upstream user, not per login.
    pub salted: Arc<crate::auth::scram::SaltedPasswords>,
}

/// The proxy's own request ids on upstream connections, apart from any client's.
static NEXT_REQUEST_ID: AtomicI32 = AtomicI32::new(0x4000_0000);

fn next_request_id() -> i32 {
    NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff
}

impl UpstreamTarget {
    pub fn parse(uri: &str) -> Option<(String, u16, Option<String>)> {
        let rest = uri.strip_prefix("mongodb://")?;
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let (authority, tail) = rest.split_once(['/', '?']).unwrap_or((rest, ""));
        let auth_source = tail
            .split_once('?')
            .map_or(tail, |(_, q)| q)
            .split('&')
            .find_map(|kv| kv.strip_prefix("authSource="))
            .map(|s| s.replace("%24", "$"));
        let (host, port) = crate::proxy::net::host_port(authority, 27017)?;
        (!host.is_empty() && !host.contains(',')).then_some((host, port, auth_source))
    }

    /// TLS starts at once (MongoDB has no upgrade request).
    pub async fn connect(&self) -> Result<Stream, UpstreamError> {
        let tcp = connect_tcp(&self.host, self.port).await.map_err(|(addr, source)| UpstreamError::Connect { addr, source })?;
        let Some(config) = &self.tls else { return Ok(Stream::Plain(tcp)) };
        tls_connect(config, &self.server_name, tcp).await.map_err(|reason| UpstreamError::Tls { host: self.server_name.clone(), reason })
    }
}

/// Sends one command and returns its reply's body.
pub async fn command(stream: &mut Stream, body: &RawDocument) -> Result<RawDocumentBuf, UpstreamError> {
    let request_id = next_request_id();
    stream.write_all(&frame(request_id, 0, OP_MSG, &op_msg_body(0, &body.to_raw_document_buf()))).await.map_err(WireError::from)?;
    stream.flush().await.map_err(WireError::from)?;
    let reply = read_message(stream, DEFAULT_MAX_MESSAGE_BYTES).await?;
    if reply.header.op_code != OP_MSG || reply.header.response_to != request_id {
        return Err(UpstreamError::Unexpected(format!("opcode {} answering {}", reply.header.op_code, reply.header.response_to)));
    }
    Ok(OpMsg::parse(&reply.header, reply.body())?.body)
}

/// A command that must succeed; its failure becomes `Refused` with the server's text.
async fn checked(stream: &mut Stream, body: &RawDocument) -> Result<RawDocumentBuf, UpstreamError> {
    let reply = command(stream, body).await?;
    let summary = summarize_reply(&reply);
    if !summary.ok {
        return Err(UpstreamError::Refused(format!("{} {}", summary.error, summary.message).trim().to_string()));
    }
    Ok(reply)
}

fn payload(reply: &RawDocument) -> Result<Vec<u8>, UpstreamError> {
    match reply.get("payload") {
        Ok(Some(bson::RawBsonRef::Binary(b))) => Ok(b.bytes.to_vec()),
        _ => Err(UpstreamError::Unexpected("SASL reply without a binary payload".into())),
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary { subtype: BinarySubtype::Generic, bytes }
}

fn conversation_id(reply: &RawDocument) -> bson::RawBson {
    reply.get("conversationId").ok().flatten().map_or(bson::RawBson::Int32(1), |v| v.to_raw_bson())
}

fn done(reply: &RawDocument) -> bool {
    reply.get_bool("done").unwrap_or(false)
}

/// A SCRAM-SHA-256 login begun: its client-first message can ride in the hello
/// (`speculativeAuthenticate`), which saves the server a round trip if it takes it.
pub struct ScramStart {
    exchange: ClientExchange,
    first: String,
    auth_db: String,
}

impl ScramStart {
    pub fn new(auth_db: &str, user: &str, password: &str) -> Result<ScramStart, UpstreamError> {
        let (exchange, first) = ClientExchange::start_as(user, password)?;
        Ok(ScramStart { exchange, first, auth_db: auth_db.to_string() })
    }

    /// The saslStart a hello carries: as the command, with `db` for `$db`.
    pub fn speculative(&self) -> RawDocumentBuf {
        self.sasl_start("db")
    }

    /// The saslStart command, naming the database in `db_field`.
    fn sasl_start(&self, db_field: &str) -> RawDocumentBuf {
        let mut start = rawdoc! {
            "saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": binary(self.first.clone().into_bytes()),
            "options": { "skipEmptyExchange": true },
        };
        start.append(db_field, self.auth_db.as_str());
        start
    }
}

/// The server's answer to a hello's `speculativeAuthenticate`, if it took it: servers that
/// do not (or that refuse it) leave it out, and the login starts with saslStart instead.
pub fn speculative_reply(hello_reply: &RawDocument) -> Option<RawDocumentBuf> {
    let reply = hello_reply.get_document("speculativeAuthenticate").ok()?;
    reply.get("payload").ok().flatten().is_some().then(|| reply.to_raw_document_buf())
}

/// SCRAM-SHA-256 on `start`'s database, from the server-first message in `speculated` when
/// the hello's `speculativeAuthenticate` was taken, or from a saslStart.
pub async fn scram_login(
    stream: &mut Stream,
    start: ScramStart,
    speculated: Option<RawDocumentBuf>,
    salted: &Arc<crate::auth::scram::SaltedPasswords>,
) -> Result<(), UpstreamError> {
    let reply = match speculated {
        Some(reply) => reply,
        None => checked(stream, &start.sasl_start("$db")).await?,
    };
    let ScramStart { mut exchange, auth_db, .. } = start;
    let auth_db = auth_db.as_str();
    let server_first = String::from_utf8_lossy(&payload(&reply)?).into_owned();
    let client_final = match exchange.respond_cached(&server_first, salted, false)? {
        Some(answer) => answer,
        None => {
            // The first login of this user: PBKDF2 off the worker, kept for the next ones.
            let cache = salted.clone();
            let (exchange_back, answer) = tokio::task::spawn_blocking(move || {
                let answer = exchange.respond_cached(&server_first, &cache, true);
                (exchange, answer)
            })
            .await
            .map_err(|e| UpstreamError::Unexpected(e.to_string()))?;
            exchange = exchange_back;
            answer?.unwrap_or_default()
        }
    };
    let mut reply = checked(
        stream,
        &rawdoc! { "saslContinue": 1, "conversationId": conversation_id(&reply), "payload": binary(client_final.into_bytes()), "$db": auth_db },
    )
    .await?;
    exchange.verify_final(&String::from_utf8_lossy(&payload(&reply)?))?;
    while !done(&reply) {
        reply = checked(
            stream,
            &rawdoc! { "saslContinue": 1, "conversationId": conversation_id(&reply), "payload": binary(Vec::new()), "$db": auth_db },
        )
        .await?;
    }
    Ok(())
}

/// MONGODB-AWS on `$external` with `credentials`.
pub async fn aws_login(stream: &mut Stream, credentials: &aws_credential_types::Credentials) -> Result<(), UpstreamError> {
    let mut nonce = [0u8; 32];
    getrandom::getrandom(&mut nonce).map_err(|e| UpstreamError::Aws(e.to_string()))?;
    let first = mongodb_aws::client_first(&nonce);
    let start = rawdoc! { "saslStart": 1, "mechanism": mongodb_aws::MECHANISM, "payload": binary(first.into_bytes()), "$db": "$external" };
    let reply = checked(stream, &start).await?;
    let server = mongodb_aws::parse_server_first(&payload(&reply)?, &nonce).map_err(|e| UpstreamError::Aws(e.to_string()))?;
    let last =
        mongodb_aws::client_final(&server, credentials, std::time::SystemTime::now()).map_err(|e| UpstreamError::Aws(e.to_string()))?;
    let reply = checked(
        stream,
        &rawdoc! { "saslContinue": 1, "conversationId": conversation_id(&reply), "payload": binary(last.into_bytes()), "$db": "$external" },
    )
    .await?;
    if !done(&reply) {
        return Err(UpstreamError::Aws("the server did not finish the conversation".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uris() {
        assert_eq!(UpstreamTarget::parse("mongodb://db:27018"), Some(("db".into(), 27018, None)));
        assert_eq!(UpstreamTarget::parse("mongodb://db/?authSource=%24external"), Some(("db".into(), 27017, Some("$external".into()))));
        assert_eq!(UpstreamTarget::parse("mongodb://db:1/app?tls=true&authSource=admin"), Some(("db".into(), 1, Some("admin".into()))));
        assert_eq!(UpstreamTarget::parse("mongodb://a:1,b:2"), None);
        assert_eq!(UpstreamTarget::parse("postgres://x"), None);
    }
}
