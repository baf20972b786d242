//! HTTP/1.1 for a relay that parses each message once and forwards its bytes: heads parsed
//! in place by `httparse`, bodies framed strictly, chunked bodies decoded as they arrive.
//! The DynamoDB path uses it on both sides, in place of a general HTTP server and client
//! that would each parse and rebuild every message.

pub mod body;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzz;
pub mod head;
pub mod wire;

pub use body::{request_framing, response_framing, Framing, FramingError};
pub use head::{visible, RequestHead, ResponseHead};
pub use wire::{BodyState, Wire, WireError};

/// Writes a status line for `status`, with its standard reason phrase.
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Unknown");
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A whole response of dbtape's own, with its length, closing the connection if `close`.
pub fn response_bytes(response: &http::Response<bytes::Bytes>, close: bool) -> Vec<u8> {
    let body = response.body();
    let mut out = Vec::with_capacity(256 + body.len());
    status_line(&mut out, response.status().as_u16());
    for (name, value) in response.headers() {
        header(&mut out, name.as_str(), value.as_bytes());
    }
    header(&mut out, "content-length", body.len().to_string().as_bytes());
    if close {
        header(&mut out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}
