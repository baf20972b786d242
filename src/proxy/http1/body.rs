//! How long a message's body is (RFC 9112 §6), and chunked bodies decoded as they arrive.
//! Requests are held to the strict reading: a request whose length two proxies could read
//! differently (both Content-Length and Transfer-Encoding, or lengths that disagree) is
//! refused, so no request can be smuggled past the one dbtape records.

use bytes::{Buf, Bytes, BytesMut};

use super::head::{trim, Fields, RequestHead, ResponseHead};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// A response that ends when the server closes the connection.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("both Content-Length and Transfer-Encoding are set")]
    Ambiguous,
    #[error("Content-Length is not one decimal length")]
    BadLength,
    #[error("Transfer-Encoding other than chunked")]
    UnsupportedCoding,
    #[error("chunked framing in an HTTP/1.0 message")]
    ChunkedInHttp10,
}

/// The body's framing; a request with neither header has none.
pub fn request_framing(head: &RequestHead) -> Result<Framing, FramingError> {
    match framing(&head.fields, head.minor_version)? {
        Some(framing) => Ok(framing),
        None => Ok(Framing::Empty),
    }
}

/// The response's framing; `head_request` for the answer to a HEAD, which has no body.
pub fn response_framing(head: &ResponseHead, head_request: bool) -> Result<Framing, FramingError> {
    if head.status < 200 || never_has_body(head.status, head_request) {
        return Ok(Framing::Empty);
    }
    Ok(framing(&head.fields, head.minor_version)?.unwrap_or(Framing::UntilClose))
}

/// An answer to a HEAD, a 204 or a 304 has no body, whatever its length header says (that
/// header describes what a GET would have had).
pub fn never_has_body(status: u16, head_request: bool) -> bool {
    head_request || status == 204 || status == 304
}

fn framing(fields: &Fields, minor_version: u8) -> Result<Option<Framing>, FramingError> {
    let mut codings = fields.all("transfer-encoding").peekable();
    let chunked = codings.peek().is_some();
    if chunked {
        // One coding, chunked: the only one a JSON API's client or server sends.
        let all: Vec<&[u8]> = codings.flat_map(|v| v.split(|&b| b == b',')).map(trim).collect();
        if all.len() != 1 || !all[0].eq_ignore_ascii_case(b"chunked") {
            return Err(FramingError::UnsupportedCoding);
        }
        if minor_version == 0 {
            return Err(FramingError::ChunkedInHttp10);
        }
    }
    let mut length: Option<u64> = None;
    for value in fields.all("content-length") {
        let value = trim(value);
        if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
            return Err(FramingError::BadLength);
        }
        let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err(FramingError::BadLength);
        }
        length = Some(n);
    }
    match (chunked, length) {
        (true, Some(_)) => Err(FramingError::Ambiguous),
        (true, None) => Ok(Some(Framing::Chunked)),
        (false, Some(0)) => Ok(Some(Framing::Empty)),
        (false, Some(n)) => Ok(Some(Framing::Length(n))),
        (false, None) => Ok(None),
    }
}

/// A chunk-size line, extensions included, may be this long; trailers all together this long.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk size line is malformed")]
    BadSize,
    #[error("a chunk does not end with CRLF")]
    BadChunkEnd,
    #[error("the chunked trailers are malformed or over {MAX_TRAILERS} bytes")]
    BadTrailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers { read: usize },
    Done,
}

#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    /// More bytes are needed before anything else can be decoded.
    NeedMore,
    End,
}

/// Decodes a chunked body from the front of a read buffer, taking what it decodes out of it.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size }
    }
}

impl ChunkedDecoder {
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = line(buf, MAX_LINE).map_err(|()| ChunkError::BadSize)? else { return Ok(Decoded::NeedMore) };
                    let size = chunk_size(&line).ok_or(ChunkError::BadSize)?;
                    self.state = if size == 0 { State::Trailers { read: 0 } } else { State::Data(size) };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    self.state = if left == 0 { State::DataEnd } else { State::Data(left) };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::BadChunkEnd);
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers { read } => {
                    let Some(line) = line(buf, MAX_LINE).map_err(|()| ChunkError::BadTrailers)? else { return Ok(Decoded::NeedMore) };
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    let read = read + line.len() + 2;
                    if read > MAX_TRAILERS || !line.contains(&b':') {
                        return Err(ChunkError::BadTrailers);
                    }
                    self.state = State::Trailers { read };
                }
                State::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// A CRLF-ended line taken from the front of `buf`, without its CRLF; `Err` if it is over
/// `max` bytes or holds a bare CR or LF.
fn line(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, ()> {
    let Some(lf) = memchr::memchr(b'\n', &buf[..buf.len().min(max + 2)]) else {
        return if buf.len() >= max + 2 { Err(()) } else { Ok(None) };
    };
    if lf == 0 || buf[lf - 1] != b'\r' || buf[..lf - 1].contains(&b'\r') {
        return Err(());
    }
    let line = buf.split_to(lf + 1).freeze();
    Ok(Some(line.slice(..lf - 1)))
}

/// `1*HEXDIG [ ";" extensions ]`; extensions are skipped but must be visible text.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    let rest_ok = rest.is_empty() || (trim(rest).first() == Some(&b';') && rest.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)));
    if !rest_ok {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, &d| Some(n * 16 + u64::from((d as char).to_digit(16)?)))
}

/// Writes `data` as one chunk of a chunked body.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body, without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http1::head::{parse_request, parse_response};

    fn request_framing_of(headers: &str) -> Result<Framing, FramingError> {
        let head = parse_request(&mut BytesMut::from(format!("POST / HTTP/1.1\r\n{headers}\r\n").as_str())).unwrap().unwrap();
        request_framing(&head)
    }

    #[test]
    fn request_lengths_are_read_strictly() {
        assert_eq!(request_framing_of(""), Ok(Framing::Empty));
        assert_eq!(request_framing_of("Content-Length: 0\r\n"), Ok(Framing::Empty));
        assert_eq!(request_framing_of("Content-Length: 12\r\n"), Ok(Framing::Length(12)));
        assert_eq!(request_framing_of("Content-Length: 12\r\ncontent-length: 12\r\n"), Ok(Framing::Length(12)));
        assert_eq!(request_framing_of("Transfer-Encoding: Chunked\r\n"), Ok(Framing::Chunked));
        assert_eq!(request_framing_of("Content-Length: 12\r\nContent-Length: 13\r\n"), Err(FramingError::BadLength));
        assert_eq!(request_framing_of("Content-Length: +12\r\n"), Err(FramingError::BadLength));
        assert_eq!(request_framing_of("Content-Length: 1,2\r\n"), Err(FramingError::BadLength));
        assert_eq!(request_framing_of("Content-Length: 99999999999999999999\r\n"), Err(FramingError::BadLength));
        assert_eq!(request_framing_of("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"), Err(FramingError::Ambiguous));
        assert_eq!(request_framing_of("Transfer-Encoding: gzip, chunked\r\n"), Err(FramingError::UnsupportedCoding));
        assert_eq!(
            request_framing_of("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            Err(FramingError::UnsupportedCoding)
        );
        let old = parse_request(&mut BytesMut::from("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")).unwrap().unwrap();
        assert_eq!(request_framing(&old), Err(FramingError::ChunkedInHttp10));
    }

    #[test]
    fn responses_without_a_length_run_to_the_close_and_some_have_no_body() {
        let response = |text: &str| parse_response(&mut BytesMut::from(text)).unwrap().unwrap();
        assert_eq!(response_framing(&response("HTTP/1.1 200 OK\r\n\r\n"), false), Ok(Framing::UntilClose));
        assert_eq!(response_framing(&response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), true), Ok(Framing::Empty));
        assert_eq!(response_framing(&response("HTTP/1.1 204 No Content\r\n\r\n"), false), Ok(Framing::Empty));
        assert_eq!(response_framing(&response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), false), Ok(Framing::Length(5)));
    }

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::End => return Ok((out, buf.to_vec())),
                Decoded::NeedMore => {
                    assert!(fed < input.len(), "ran out of input");
                    let end = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split_and_leave_what_follows() {
        let input = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (body, rest) = decode_all(input, step).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz");
            assert!(b"NEXT".starts_with(&rest), "{rest:?}");
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"g\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"1ffffffffffffffff\r\n",
            b"5 junk\r\nhello\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"5\r\r\nhello\r\n",
        ] {
            assert!(decode_all(bad, 100).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("5;{}\r\n", "e".repeat(MAX_LINE + 10));
        assert_eq!(decode_all(long.as_bytes(), 10_000).unwrap_err(), ChunkError::BadSize);
    }

    #[test]
    fn chunks_are_written_as_decoded() {
        let mut out = Vec::new();
        write_chunk(&mut out, b"hello world, twenty six!!");
        write_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        let (body, _) = decode_all(&out, 100).unwrap();
        assert_eq!(body, b"hello world, twenty six!!");
    }
}
