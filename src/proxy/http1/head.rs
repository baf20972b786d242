//! Request and response heads, parsed once by `httparse` where they arrived. A head keeps
//! its bytes and the positions of its parts, so reading a header costs no allocation; names
//! are lowercased in place, as SigV4 and every lookup want them.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Headers a head may carry; more is refused (431), as most servers do.
pub const MAX_HEADERS: usize = 100;
/// Bytes a head may take, start line included. A SigV4 request with a session token is a
/// few kilobytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the message head is over {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("the message has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed message head: {0}")]
    Malformed(&'static str),
}

impl HeadError {
    /// The status a client is told.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) => 400,
        }
    }
}

type Span = Range<u32>;

#[derive(Debug)]
struct Field {
    name: Span,
    value: Span,
    /// The value is visible text (`visible`), worked out once: every header that is signed,
    /// forwarded or logged needs it.
    text: bool,
}

/// Header names and values, as spans of a head's bytes.
#[derive(Debug, Default)]
pub struct Fields {
    raw: Bytes,
    headers: Vec<Field>,
}

impl Fields {
    fn bytes(&self, span: &Span) -> &[u8] {
        self.raw.get(span.start as usize..span.end as usize).unwrap_or_default()
    }

    /// Names, methods and targets are checked ASCII, so always text.
    fn str(&self, span: &Span) -> &str {
        std::str::from_utf8(self.bytes(span)).unwrap_or_default()
    }

    fn name(&self, field: &Field) -> &str {
        self.str(&field.name)
    }

    fn text(&self, field: &Field) -> Option<&str> {
        if field.text {
            std::str::from_utf8(self.bytes(&field.value)).ok()
        } else {
            None
        }
    }

    fn named<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Field> + use<'a, 'n> {
        self.headers.iter().filter(move |f| self.bytes(&f.name) == name.as_bytes())
    }

    /// Every header in order: its lowercase name and its value's bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().map(|f| (self.name(f), self.bytes(&f.value)))
    }

    /// Every header in order: its lowercase name and its value if that is visible text.
    pub fn iter_text(&self) -> impl Iterator<Item = (&str, Option<&str>)> + '_ {
        self.headers.iter().map(|f| (self.name(f), self.text(f)))
    }

    /// The values of `name` (lowercase), in order.
    pub fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.named(name).map(|f| self.bytes(&f.value))
    }

    /// The first value of `name` (lowercase).
    pub fn get<'a>(&'a self, name: &str) -> Option<&'a [u8]> {
        self.all(name).next()
    }

    /// The first value of `name` if it is visible text (what may be signed and logged).
    pub fn get_str<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.named(name).next().and_then(|f| self.text(f))
    }

    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether the sender keeps the connection open after this message: HTTP/1.1 unless it
    /// says `close`, HTTP/1.0 only if it says `keep-alive`.
    fn keep_alive(&self, minor_version: u8) -> bool {
        let mut tokens = self.all("connection").flat_map(|v| v.split(|&b| b == b',')).map(trim);
        if minor_version == 0 {
            tokens.any(|t| t.eq_ignore_ascii_case(b"keep-alive"))
        } else {
            !tokens.any(|t| t.eq_ignore_ascii_case(b"close"))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }
}

/// `value` as text if every byte is visible ASCII, a space or a tab: what `http`'s
/// `HeaderValue::to_str` accepts.
pub fn visible(value: &[u8]) -> Option<&str> {
    if is_visible(value) {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// Without an early exit, so that it runs over whole words: signatures and session tokens
/// are long.
fn is_visible(value: &[u8]) -> bool {
    value.iter().fold(true, |ok, &b| ok & ((b' '..=b'~').contains(&b) | (b == b'\t')))
}

#[derive(Debug)]
pub struct RequestHead {
    pub fields: Fields,
    method: Span,
    target: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
}

impl RequestHead {
    pub fn method(&self) -> &str {
        self.fields.str(&self.method)
    }

    /// The origin-form target: the path and the query.
    pub fn target(&self) -> &str {
        self.fields.str(&self.target)
    }

    pub fn path(&self) -> &str {
        self.target().split_once('?').map_or(self.target(), |(p, _)| p)
    }

    pub fn query(&self) -> &str {
        self.target().split_once('?').map_or("", |(_, q)| q)
    }

    /// Whether the client wants the connection kept open after this exchange.
    pub fn keep_alive(&self) -> bool {
        self.fields.keep_alive(self.minor_version)
    }
}

#[derive(Debug)]
pub struct ResponseHead {
    pub fields: Fields,
    pub status: u16,
    pub minor_version: u8,
}

impl ResponseHead {
    /// Whether the server keeps the connection open after this response.
    pub fn keep_alive(&self) -> bool {
        self.fields.keep_alive(self.minor_version)
    }
}

pub fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// A request head from the front of `buf`, taken out of it; `None` while it is incomplete.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut storage);
    let Some(len) = complete(request.parse(buf), buf.len())? else { return Ok(None) };
    let base = buf.as_ptr() as usize;
    let (Some(method), Some(target), Some(minor_version)) = (request.method, request.path, request.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    // Origin form only: dbtape is the request's destination, not a forward proxy.
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HeadError::Malformed("the request target is not a path"));
    }
    let method = span(base, method.as_bytes());
    let target = span(base, target.as_bytes());
    let fields = take(buf, len, fields(base, request.headers));
    Ok(Some(RequestHead { fields, method, target, minor_version }))
}

/// A response head from the front of `buf`, taken out of it; `None` while it is incomplete.
pub fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut storage);
    let Some(len) = complete(response.parse(buf), buf.len())? else { return Ok(None) };
    let base = buf.as_ptr() as usize;
    let (Some(status), Some(minor_version)) = (response.code, response.version) else {
        return Err(HeadError::Malformed("incomplete status line"));
    };
    let fields = take(buf, len, fields(base, response.headers));
    Ok(Some(ResponseHead { fields, status, minor_version }))
}

fn complete(parsed: httparse::Result<usize>, buffered: usize) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered >= MAX_HEAD_BYTES => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => Err(HeadError::Malformed("not HTTP/1.x")),
        Err(_) => Err(HeadError::Malformed("the start line or a header is not valid HTTP/1.1")),
    }
}

/// Where `part`, a slice of the buffer starting at `base`, lies in it.
fn span(base: usize, part: &[u8]) -> Span {
    let start = (part.as_ptr() as usize).saturating_sub(base) as u32;
    start..start + part.len() as u32
}

fn fields(base: usize, headers: &[httparse::Header<'_>]) -> Vec<Field> {
    headers.iter().map(|h| Field { name: span(base, h.name.as_bytes()), value: span(base, h.value), text: is_visible(h.value) }).collect()
}

/// Takes the head's `len` bytes out of `buf`, with its header names lowercased.
fn take(buf: &mut BytesMut, len: usize, headers: Vec<Field>) -> Fields {
    for Field { name, .. } in &headers {
        if let Some(name) = buf.get_mut(name.start as usize..name.end as usize) {
            name.make_ascii_lowercase();
        }
    }
    Fields { raw: buf.split_to(len).freeze(), headers }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(text))
    }

    #[test]
    fn a_request_head_is_read_in_place_with_lowercase_names() {
        let mut buf = BytesMut::from("POST /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Amz-Target: T.Op\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\nBODY");
        let head = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!((head.method(), head.target(), head.path(), head.query()), ("POST", "/a?b=1", "/a", "b=1"));
        assert_eq!(head.fields.get_str("x-amz-target"), Some("T.Op"));
        assert_eq!(head.fields.all("x-multi").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(head.fields.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["host", "x-amz-target", "x-multi", "x-multi"]);
        assert!(head.keep_alive());
        assert_eq!(&buf[..], b"BODY", "the body stays in the buffer");
    }

    #[test]
    fn partial_heads_wait_and_bad_ones_are_refused() {
        assert!(request("POST / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert_eq!(request("POST http://elsewhere/ HTTP/1.1\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(request("POST / HTTP/2.0\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(request("POST / HTTP/1.1\r\nBad Name: x\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(request("POST / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n").unwrap_err().status(), 400);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(request(&format!("POST / HTTP/1.1\r\n{many}\r\n")).unwrap_err(), HeadError::TooManyHeaders);
        let long = "a".repeat(MAX_HEAD_BYTES);
        assert_eq!(request(&format!("POST / HTTP/1.1\r\nx: {long}")).unwrap_err(), HeadError::TooLarge);
        assert_eq!(request(&format!("POST / HTTP/1.1\r\nx: {long}\r\n\r\n")).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(!request("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").unwrap().unwrap().keep_alive());
        assert!(!request("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive());
        assert!(request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap().keep_alive());
    }

    #[test]
    fn only_visible_text_is_text() {
        assert_eq!(visible(b"a b\tc"), Some("a b\tc"));
        assert_eq!(visible(b"caf\xc3\xa9"), None);
        assert_eq!(visible(b"a\x7f"), None);
    }
}
