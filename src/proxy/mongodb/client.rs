//! A client's messages as the proxy sees them, and replies in the form each request wants.

use std::sync::atomic::{AtomicI32, Ordering};

use bson::raw::RawBsonRef;
use bson::{RawDocument, RawDocumentBuf};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::commands::{self, database};
use super::wire::{
    frame_maybe_compressed, op_msg_body, op_reply_body, Compressor, Message, OpMsg, OpQuery, WireError, OP_MSG, OP_QUERY, OP_REPLY,
};

/// A client request: an OP_MSG command or a legacy OP_QUERY command.
pub enum Request {
    Msg(OpMsg),
    Query { query: OpQuery, command: RawDocumentBuf },
}

impl Request {
    pub fn parse(msg: &Message) -> Result<Request, WireError> {
        match msg.header.op_code {
            OP_MSG => Ok(Request::Msg(OpMsg::parse(&msg.header, msg.body())?)),
            OP_QUERY => {
                let query = OpQuery::parse(msg.body())?;
                // Old drivers wrap the command as {$query: {...}, $readPreference: ...}.
                let command = match query.query.get("$query") {
                    Ok(Some(RawBsonRef::Document(inner))) => inner.to_raw_document_buf(),
                    _ => query.query.clone(),
                };
                Ok(Request::Query { query, command })
            }
            other => Err(WireError::UnknownOpcode(other)),
        }
    }

    pub fn body(&self) -> &RawDocument {
        match self {
            Request::Msg(m) => &m.body,
            Request::Query { command, .. } => command,
        }
    }

    pub fn name(&self) -> &str {
        self.body().iter().next().and_then(|e| e.ok()).map_or("", |(k, _)| k)
    }

    pub fn database(&self) -> Result<String, String> {
        match self {
            Request::Msg(m) => database(&m.body).map(str::to_string),
            Request::Query { query, .. } => Ok(query.database().to_string()),
        }
    }

    pub fn more_to_come(&self) -> bool {
        matches!(self, Request::Msg(m) if m.more_to_come())
    }

    /// The command as an OP_MSG body for the server, without `drop`ped fields; a legacy
    /// query gains the `$db` OP_MSG requires.
    pub fn upstream_body(&self, drop: &[&str]) -> RawDocumentBuf {
        let mut body = commands::without(self.body(), drop);
        if let Request::Query { query, .. } = self {
            if body.get("$db").ok().flatten().is_none() {
                body.append("$db", query.database());
            }
        }
        body
    }
}

/// Commands whose replies must never be compressed (the compression spec's list).
fn never_compressed(name: &str) -> bool {
    commands::is_hello(name) || commands::is_login_command(name) || matches!(name, "createUser" | "updateUser")
}

static NEXT_REPLY_ID: AtomicI32 = AtomicI32::new(1);

pub fn next_reply_id() -> i32 {
    NEXT_REPLY_ID.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff
}

/// The reply to `request`, framed as it expects (OP_REPLY for OP_QUERY), compressed the
/// way the request was when the command allows it.
pub fn reply_bytes(msg: &Message, request: &Request, doc: &RawDocumentBuf) -> Vec<u8> {
    let compressor: Option<Compressor> = msg.compressor.filter(|_| !never_compressed(request.name()));
    match request {
        Request::Query { .. } => {
            frame_maybe_compressed(next_reply_id(), msg.header.request_id, OP_REPLY, &op_reply_body(0, &[doc]), compressor)
        }
        Request::Msg(_) => frame_maybe_compressed(next_reply_id(), msg.header.request_id, OP_MSG, &op_msg_body(0, doc), compressor),
    }
}

pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> bool {
    w.write_all(bytes).await.is_ok() && w.flush().await.is_ok()
}

/// A user agent from the hello's `client` metadata: `application name (driver version)`.
pub fn user_agent(hello: &RawDocument) -> String {
    let Ok(client) = hello.get_document("client") else { return String::new() };
    let driver = client.get_document("driver").ok();
    let name = driver.and_then(|d| d.get_str("name").ok()).unwrap_or_default();
    let version = driver.and_then(|d| d.get_str("version").ok()).unwrap_or_default();
    let app = client.get_document("application").ok().and_then(|a| a.get_str("name").ok()).unwrap_or_default();
    let driver = format!("{name} {version}").trim().to_string();
    match (app.is_empty(), driver.is_empty()) {
        (false, false) => format!("{app} ({driver})"),
        (false, true) => app.to_string(),
        _ => driver,
    }
}
