//! PostgreSQL wire framing: startup-phase packets, a streaming scanner for the typed
//! message stream, and builders for the few messages the proxy writes itself.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
pub const PROTOCOL_3_0: i32 = 196_608;
pub const PROTOCOL_3_2: i32 = 196_610;
/// PostgreSQL's own bound on a startup packet.
const MAX_STARTUP: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

pub fn malformed(what: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Malformed { what, detail: detail.into() }
}

#[derive(Debug)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel { pid: i32, key: Vec<u8> },
    Startup { version: i32, params: Vec<(String, String)> },
}

impl StartupPacket {
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<(StartupPacket, Vec<u8>), WireError> {
    let mut len_buf = [0u8; 4];
    match r.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len_buf);
    if !(8..=MAX_STARTUP as i32).contains(&len) {
        return Err(malformed("startup packet", format!("length {len}")));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    let mut raw = len_buf.to_vec();
    raw.extend_from_slice(&body);
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    let packet = match code {
        SSL_REQUEST if rest.is_empty() => StartupPacket::Ssl,
        GSSENC_REQUEST if rest.is_empty() => StartupPacket::GssEnc,
        CANCEL_REQUEST if rest.len() >= 8 && rest.len() <= 4 + 256 => {
            StartupPacket::Cancel { pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]), key: rest[4..].to_vec() }
        }
        PROTOCOL_3_0 | PROTOCOL_3_2 => StartupPacket::Startup { version: code, params: parse_params(rest)? },
        other if other >> 16 == 3 => StartupPacket::Startup { version: other, params: parse_params(rest)? },
        other => return Err(malformed("startup packet", format!("unsupported protocol code {other}"))),
    };
    Ok((packet, raw))
}

fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut params = Vec::new();
    loop {
        let (name, after) = cstr(rest).ok_or_else(|| malformed("startup packet", "unterminated parameter"))?;
        if name.is_empty() {
            break;
        }
        let (value, after) = cstr(after).ok_or_else(|| malformed("startup packet", "unterminated value"))?;
        params.push((name, value));
        rest = after;
    }
    Ok(params)
}

/// Reads a NUL-terminated string; returns it and what follows.
pub fn cstr(data: &[u8]) -> Option<(String, &[u8])> {
    let end = data.iter().position(|b| *b == 0)?;
    Some((String::from_utf8_lossy(&data[..end]).into_owned(), &data[end + 1..]))
}

/// Splits a byte stream into typed messages without copying the ones nobody needs.
/// Messages whose type `capture` selects are handed over whole (up to `limit` bytes).
pub struct MessageScanner {
    header: [u8; 5],
    header_len: usize,
    remaining: usize,
    ty: u8,
    capturing: bool,
    body: Vec<u8>,
    limit: usize,
    capture: fn(u8) -> bool,
}

impl MessageScanner {
    pub fn new(limit: usize, capture: fn(u8) -> bool) -> Self {
        MessageScanner { header: [0; 5], header_len: 0, remaining: 0, ty: 0, capturing: false, body: Vec::new(), limit, capture }
    }

    /// Feeds bytes; calls `on_message(type, body)` for each whole captured message, and
    /// `on_message(type, &[])`… never for the rest. Errors on a malformed length.
    pub fn feed(&mut self, mut data: &[u8], mut on_message: impl FnMut(u8, &[u8]) -> Result<(), WireError>) -> Result<(), WireError> {
        while !data.is_empty() {
            if self.header_len < 5 {
                let take = (5 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len < 5 {
                    return Ok(());
                }
                self.ty = self.header[0];
                let len = i32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                if len < 4 {
                    return Err(malformed("message", format!("type {:?} with length {len}", self.ty as char)));
                }
                self.remaining = len as usize - 4;
                self.capturing = (self.capture)(self.ty);
                if self.capturing && self.remaining > self.limit {
                    return Err(malformed(
                        "message",
                        format!("type {:?} of {} bytes exceeds the {}-byte limit", self.ty as char, self.remaining, self.limit),
                    ));
                }
                self.body.clear();
            }
            let take = self.remaining.min(data.len());
            if self.capturing {
                self.body.extend_from_slice(&data[..take]);
            }
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0 {
                self.header_len = 0;
                if self.capturing {
                    on_message(self.ty, &self.body)?;
                }
            }
        }
        Ok(())
    }

    /// Whether the stream is between messages.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0
    }
}

/// Reads one whole typed message (used during authentication).
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<(u8, Vec<u8>), WireError> {
    let mut header = [0u8; 5];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 || len as usize - 4 > limit {
        return Err(malformed("message", format!("type {:?} with length {len}", header[0] as char)));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    Ok((header[0], body))
}

pub fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(ty);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A message the proxy writes itself, encoded by pgwire.
fn encode<M: pgwire::messages::Message>(message: &M) -> Vec<u8> {
    let mut buf = bytes::BytesMut::with_capacity(message.message_length() + 1);
    if let Err(e) = message.encode(&mut buf) {
        // Only a message over pgwire's own size limit fails, and none of ours comes near.
        tracing::error!(error = %e, "cannot encode a PostgreSQL message");
    }
    buf.to_vec()
}

/// An Authentication request or answer (`R`).
pub fn auth_message(message: pgwire::messages::startup::Authentication) -> Vec<u8> {
    encode(&message)
}

/// An ErrorResponse with severity, SQLSTATE and message.
pub fn error_response(severity: &str, code: &str, text: &str) -> Vec<u8> {
    let fields = [(b'S', severity), (b'V', severity), (b'C', code), (b'M', text)];
    encode(&pgwire::messages::response::ErrorResponse::new(fields.iter().map(|(f, v)| (*f, v.to_string())).collect()))
}

pub fn startup_message(version: i32, params: &[(String, String)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

pub fn cancel_request(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(key);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod pgwire_tests {
    use super::*;
    use pgwire::messages::startup::Authentication;

    #[test]
    fn messages_written_through_pgwire_have_the_wire_layout() {
        assert_eq!(auth_message(Authentication::Ok), [b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        assert_eq!(auth_message(Authentication::SASL(vec!["SCRAM-SHA-256".into()])), message(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0"));
        assert_eq!(auth_message(Authentication::SASLContinue("r=x".into())), message(b'R', b"\0\0\0\x0br=x"));
        assert_eq!(auth_message(Authentication::SASLFinal("v=y".into())), message(b'R', b"\0\0\0\x0cv=y"));
        assert_eq!(error_response("FATAL", "28000", "no"), message(b'E', b"SFATAL\0VFATAL\0C28000\0Mno\0\0"));
    }
}
