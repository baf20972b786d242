//! MongoDB wire framing: the 16-byte header, OP_MSG, the legacy OP_QUERY/OP_REPLY handshake
//! and OP_COMPRESSED (snappy, zlib, zstd). Everything here takes untrusted bytes.

use std::io::Read;

use bson::RawDocumentBuf;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const OP_REPLY: i32 = 1;
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;

pub const FLAG_CHECKSUM_PRESENT: u32 = 1;
pub const FLAG_MORE_TO_COME: u32 = 1 << 1;
pub const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;
/// The low 16 bits are "required": a set bit this proxy does not know is an error.
const KNOWN_REQUIRED_FLAGS: u32 = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME;

pub const HEADER_LEN: usize = 16;
/// Before the upstream's hello says otherwise: MongoDB's usual `maxMessageSizeBytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 48_000_000;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("message length {len} is outside 16..={max} bytes")]
    BadLength { len: i64, max: usize },
    #[error("unsupported opcode {0}")]
    UnknownOpcode(i32),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("OP_MSG checksum does not match its bytes")]
    Checksum,
}

fn malformed(what: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Malformed { what, detail: detail.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: i32,
}

/// One message as read, whole (header included, so it can be forwarded as it came), with
/// OP_COMPRESSED already unwrapped.
#[derive(Debug, Clone)]
pub struct Message {
    pub header: Header,
    pub raw: Vec<u8>,
    /// The compressor the peer used, if it came as OP_COMPRESSED (`raw` is decompressed).
    pub compressor: Option<Compressor>,
}

impl Message {
    /// The bytes after the header.
    pub fn body(&self) -> &[u8] {
        self.raw.get(HEADER_LEN..).unwrap_or_default()
    }
}

fn le_i32(bytes: &[u8], at: usize) -> Option<i32> {
    bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(i32::from_le_bytes)
}

/// Reads one message of at most `max` bytes, unwrapping OP_COMPRESSED.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Message, WireError> {
    let mut head = [0u8; HEADER_LEN];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = i64::from(le_i32(&head, 0).unwrap_or(0));
    if len < HEADER_LEN as i64 || len > max as i64 {
        return Err(WireError::BadLength { len, max });
    }
    let header = Header {
        request_id: le_i32(&head, 4).unwrap_or(0),
        response_to: le_i32(&head, 8).unwrap_or(0),
        op_code: le_i32(&head, 12).unwrap_or(0),
    };
    // The buffer grows as bytes arrive: a peer that announces 48 MB and sends nothing costs
    // nothing.
    let want = len as usize - HEADER_LEN;
    let mut raw = Vec::with_capacity((len as usize).min(64 * 1024));
    raw.extend_from_slice(&head);
    r.take(want as u64).read_to_end(&mut raw).await?;
    if raw.len() != len as usize {
        return Err(WireError::Closed);
    }
    decode_message(header, raw, max)
}

/// Checks the opcode and unwraps OP_COMPRESSED in a whole message (`raw` starts with its
/// header); the fuzz target enters here.
pub fn decode_message(header: Header, raw: Vec<u8>, max: usize) -> Result<Message, WireError> {
    let body = raw.get(HEADER_LEN..).unwrap_or_default();
    match header.op_code {
        OP_MSG | OP_QUERY | OP_REPLY => Ok(Message { header, raw, compressor: None }),
        OP_COMPRESSED => {
            let original = le_i32(body, 0).ok_or_else(|| malformed("OP_COMPRESSED", "short header"))?;
            let size = le_i32(body, 4).ok_or_else(|| malformed("OP_COMPRESSED", "short header"))?;
            let id = *body.get(8).ok_or_else(|| malformed("OP_COMPRESSED", "short header"))?;
            if !matches!(original, OP_MSG | OP_QUERY | OP_REPLY) {
                return Err(malformed("OP_COMPRESSED", format!("cannot wrap opcode {original}")));
            }
            if size <= 0 || size as usize > max {
                return Err(malformed("OP_COMPRESSED", format!("uncompressed size {size} is outside 1..={max}")));
            }
            let compressor =
                Compressor::from_id(id).ok_or_else(|| malformed("OP_COMPRESSED", format!("unsupported compressor id {id}")))?;
            let inner = compressor.decompress(&body[9..], size as usize)?;
            let raw = frame(header.request_id, header.response_to, original, &inner);
            Ok(Message { header: Header { op_code: original, ..header }, raw, compressor: Some(compressor) })
        }
        other => Err(WireError::UnknownOpcode(other)),
    }
}

/// Writes a whole message: header then body.
pub fn frame(request_id: i32, response_to: i32, op_code: i32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&((HEADER_LEN + body.len()) as i32).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Frames `body`, compressed with `compressor` when given.
pub fn frame_maybe_compressed(request_id: i32, response_to: i32, op_code: i32, body: &[u8], compressor: Option<Compressor>) -> Vec<u8> {
    let Some(compressor) = compressor else { return frame(request_id, response_to, op_code, body) };
    match compressor.compress(body) {
        Ok(packed) => {
            let mut inner = Vec::with_capacity(9 + packed.len());
            inner.extend_from_slice(&op_code.to_le_bytes());
            inner.extend_from_slice(&(body.len() as i32).to_le_bytes());
            inner.push(compressor.id());
            inner.extend_from_slice(&packed);
            frame(request_id, response_to, OP_COMPRESSED, &inner)
        }
        Err(_) => frame(request_id, response_to, op_code, body),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    Snappy,
    Zlib,
    Zstd,
}

impl Compressor {
    pub fn from_id(id: u8) -> Option<Compressor> {
        match id {
            1 => Some(Compressor::Snappy),
            2 => Some(Compressor::Zlib),
            3 => Some(Compressor::Zstd),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Compressor> {
        match name {
            "snappy" => Some(Compressor::Snappy),
            "zlib" => Some(Compressor::Zlib),
            "zstd" => Some(Compressor::Zstd),
            _ => None,
        }
    }

    pub fn id(self) -> u8 {
        match self {
            Compressor::Snappy => 1,
            Compressor::Zlib => 2,
            Compressor::Zstd => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compressor::Snappy => "snappy",
            Compressor::Zlib => "zlib",
            Compressor::Zstd => "zstd",
        }
    }

    /// Decompresses to exactly `size` bytes; anything else (more, less, garbage) is an
    /// error, and no more than `size` bytes are ever produced.
    fn decompress(self, data: &[u8], size: usize) -> Result<Vec<u8>, WireError> {
        let bad = |detail: String| malformed("OP_COMPRESSED", detail);
        let out = match self {
            Compressor::Snappy => {
                let claimed = snap::raw::decompress_len(data).map_err(|e| bad(e.to_string()))?;
                if claimed != size {
                    return Err(bad(format!("snappy data holds {claimed} bytes, the header says {size}")));
                }
                snap::raw::Decoder::new().decompress_vec(data).map_err(|e| bad(e.to_string()))?
            }
            Compressor::Zlib => read_bounded(flate2::read::ZlibDecoder::new(data), size)?,
            Compressor::Zstd => read_bounded(zstd::stream::read::Decoder::new(data).map_err(|e| bad(e.to_string()))?, size)?,
        };
        if out.len() != size {
            return Err(bad(format!("decompressed to {} bytes, the header says {size}", out.len())));
        }
        Ok(out)
    }

    fn compress(self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Compressor::Snappy => snap::raw::Encoder::new().compress_vec(data).map_err(std::io::Error::other),
            Compressor::Zlib => {
                use std::io::Write;
                let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(data)?;
                enc.finish()
            }
            Compressor::Zstd => zstd::bulk::compress(data, 1),
        }
    }
}

fn read_bounded(reader: impl Read, size: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(size.min(1 << 20));
    // One byte past the claim shows a lie without inflating a bomb.
    reader.take(size as u64 + 1).read_to_end(&mut out).map_err(|e| malformed("OP_COMPRESSED", e.to_string()))?;
    Ok(out)
}

/// A parsed OP_MSG.
#[derive(Debug, Clone)]
pub struct OpMsg {
    pub flags: u32,
    pub body: RawDocumentBuf,
    pub sequences: Vec<(String, Vec<RawDocumentBuf>)>,
}

fn read_cstring(bytes: &[u8], what: &'static str) -> Result<(String, usize), WireError> {
    let end = bytes.iter().position(|&b| b == 0).ok_or_else(|| malformed(what, "unterminated string"))?;
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| malformed(what, "string is not UTF-8"))?;
    Ok((text.to_string(), end + 1))
}

/// One BSON document at the start of `bytes`, and its length.
fn read_document(bytes: &[u8], what: &'static str) -> Result<(RawDocumentBuf, usize), WireError> {
    let len = le_i32(bytes, 0).ok_or_else(|| malformed(what, "short document"))?;
    if len < 5 || len as usize > bytes.len() {
        return Err(malformed(what, format!("document length {len} does not fit the {} bytes left", bytes.len())));
    }
    let doc = RawDocumentBuf::from_bytes(bytes[..len as usize].to_vec()).map_err(|e| malformed(what, e.to_string()))?;
    Ok((doc, len as usize))
}

impl OpMsg {
    /// Parses an OP_MSG body (the bytes after the header); `header` is needed for the checksum.
    pub fn parse(header: &Header, body: &[u8]) -> Result<OpMsg, WireError> {
        let flags = le_i32(body, 0).ok_or_else(|| malformed("OP_MSG", "no flag bits"))? as u32;
        let unknown = flags & 0xffff & !KNOWN_REQUIRED_FLAGS;
        if unknown != 0 {
            return Err(malformed("OP_MSG", format!("unknown required flag bits {unknown:#x}")));
        }
        let mut end = body.len();
        if flags & FLAG_CHECKSUM_PRESENT != 0 {
            if body.len() < 8 {
                return Err(malformed("OP_MSG", "no room for the checksum"));
            }
            end -= 4;
            let stated = u32::from_le_bytes([body[end], body[end + 1], body[end + 2], body[end + 3]]);
            let head = frame(header.request_id, header.response_to, header.op_code, &[]);
            let mut head_len = head;
            head_len[..4].copy_from_slice(&((HEADER_LEN + body.len()) as i32).to_le_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&head_len), &body[..end]);
            if crc != stated {
                return Err(WireError::Checksum);
            }
        }
        let mut at = 4;
        let mut main = None;
        let mut sequences: Vec<(String, Vec<RawDocumentBuf>)> = Vec::new();
        while at < end {
            let kind = body[at];
            at += 1;
            match kind {
                0 => {
                    let (doc, len) = read_document(&body[at..end], "OP_MSG body")?;
                    if main.replace(doc).is_some() {
                        return Err(malformed("OP_MSG", "more than one body section"));
                    }
                    at += len;
                }
                1 => {
                    let size = le_i32(&body[..end], at).ok_or_else(|| malformed("OP_MSG", "short document sequence"))?;
                    if size < 5 || at + size as usize > end {
                        return Err(malformed("OP_MSG", format!("document sequence size {size} overruns the message")));
                    }
                    let section = &body[at + 4..at + size as usize];
                    let (id, mut pos) = read_cstring(section, "OP_MSG sequence identifier")?;
                    if sequences.iter().any(|(other, _)| *other == id) {
                        return Err(malformed("OP_MSG", format!("sequence {id:?} appears twice")));
                    }
                    let mut docs = Vec::new();
                    while pos < section.len() {
                        let (doc, len) = read_document(&section[pos..], "OP_MSG sequence document")?;
                        docs.push(doc);
                        pos += len;
                    }
                    sequences.push((id, docs));
                    at += size as usize;
                }
                other => return Err(malformed("OP_MSG", format!("unknown section kind {other}"))),
            }
        }
        let body = main.ok_or_else(|| malformed("OP_MSG", "no body section"))?;
        Ok(OpMsg { flags, body, sequences })
    }

    /// The message without a checksum (a rewritten message cannot keep the old one).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.body.as_bytes().len());
        out.extend_from_slice(&(self.flags & !FLAG_CHECKSUM_PRESENT).to_le_bytes());
        out.push(0);
        out.extend_from_slice(self.body.as_bytes());
        for (id, docs) in &self.sequences {
            out.push(1);
            let size = 4 + id.len() + 1 + docs.iter().map(|d| d.as_bytes().len()).sum::<usize>();
            out.extend_from_slice(&(size as i32).to_le_bytes());
            out.extend_from_slice(id.as_bytes());
            out.push(0);
            for d in docs {
                out.extend_from_slice(d.as_bytes());
            }
        }
        out
    }

    pub fn command_name(&self) -> &str {
        self.body.iter().next().and_then(|e| e.ok()).map_or("", |(k, _)| k)
    }

    pub fn more_to_come(&self) -> bool {
        self.flags & FLAG_MORE_TO_COME != 0
    }
}

/// The flags and body document of an OP_MSG, borrowed: what the relay needs of a reply,
/// without copying result documents.
pub fn op_msg_body_ref<'a>(header: &Header, body: &'a [u8]) -> Result<(u32, &'a bson::RawDocument), WireError> {
    let flags = le_i32(body, 0).ok_or_else(|| malformed("OP_MSG", "no flag bits"))? as u32;
    if flags & FLAG_CHECKSUM_PRESENT != 0 || flags & 0xffff & !KNOWN_REQUIRED_FLAGS != 0 {
        // Rare: the full parse checks the checksum and the flags.
        OpMsg::parse(header, body)?;
    }
    let mut at = 4;
    while at < body.len() {
        match body[at] {
            0 => {
                let len = le_i32(body, at + 1).ok_or_else(|| malformed("OP_MSG body", "short document"))?;
                let doc = body.get(at + 1..at + 1 + len.max(0) as usize).ok_or_else(|| malformed("OP_MSG body", "overruns the message"))?;
                let doc = bson::RawDocument::from_bytes(doc).map_err(|e| malformed("OP_MSG body", e.to_string()))?;
                return Ok((flags, doc));
            }
            1 => {
                let size = le_i32(body, at + 1).ok_or_else(|| malformed("OP_MSG", "short document sequence"))?;
                if size < 5 {
                    return Err(malformed("OP_MSG", "bad document sequence size"));
                }
                at += 1 + size as usize;
            }
            other => return Err(malformed("OP_MSG", format!("unknown section kind {other}"))),
        }
    }
    Err(malformed("OP_MSG", "no body section"))
}

/// The body of a single-document OP_MSG reply or request.
pub fn op_msg_body(flags: u32, doc: &RawDocumentBuf) -> Vec<u8> {
    OpMsg { flags, body: doc.clone(), sequences: Vec::new() }.encode()
}

/// A legacy OP_QUERY (only commands, in practice the handshake).
#[derive(Debug, Clone)]
pub struct OpQuery {
    pub flags: i32,
    pub full_collection_name: String,
    pub number_to_skip: i32,
    pub number_to_return: i32,
    pub query: RawDocumentBuf,
    pub return_fields: Option<RawDocumentBuf>,
}

impl OpQuery {
    pub fn parse(body: &[u8]) -> Result<OpQuery, WireError> {
        let flags = le_i32(body, 0).ok_or_else(|| malformed("OP_QUERY", "short message"))?;
        let (full_collection_name, used) = read_cstring(body.get(4..).unwrap_or_default(), "OP_QUERY collection name")?;
        let at = 4 + used;
        let number_to_skip = le_i32(body, at).ok_or_else(|| malformed("OP_QUERY", "short message"))?;
        let number_to_return = le_i32(body, at + 4).ok_or_else(|| malformed("OP_QUERY", "short message"))?;
        let (query, len) = read_document(body.get(at + 8..).unwrap_or_default(), "OP_QUERY query")?;
        let rest = body.get(at + 8 + len..).unwrap_or_default();
        let return_fields = if rest.is_empty() {
            None
        } else {
            let (doc, len) = read_document(rest, "OP_QUERY returnFieldsSelector")?;
            if len != rest.len() {
                return Err(malformed("OP_QUERY", "bytes after the last document"));
            }
            Some(doc)
        };
        Ok(OpQuery { flags, full_collection_name, number_to_skip, number_to_return, query, return_fields })
    }

    /// The database a command query names: what precedes `.$cmd`.
    pub fn database(&self) -> &str {
        self.full_collection_name.split_once('.').map_or(self.full_collection_name.as_str(), |(db, _)| db)
    }
}

/// OP_REPLY's flag for a failed query.
pub const REPLY_QUERY_FAILURE: i32 = 2;

pub fn op_reply_body(flags: i32, docs: &[&RawDocumentBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0i64.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&(docs.len() as i32).to_le_bytes());
    for d in docs {
        out.extend_from_slice(d.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn header() -> Header {
        Header { request_id: 7, response_to: 0, op_code: OP_MSG }
    }

    #[test]
    fn op_msg_round_trips_with_sequences() {
        let msg = OpMsg {
            flags: FLAG_EXHAUST_ALLOWED,
            body: rawdoc! { "insert": "books", "$db": "lib" },
            sequences: vec![("documents".into(), vec![rawdoc! { "a": 1 }, rawdoc! { "b": "x" }])],
        };
        let bytes = msg.encode();
        let back = OpMsg::parse(&header(), &bytes).unwrap();
        assert_eq!(back.command_name(), "insert");
        assert_eq!(back.sequences[0].1.len(), 2);
        assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn checksums_are_checked() {
        let mut body = op_msg_body(0, &rawdoc! { "ping": 1, "$db": "admin" });
        body[..4].copy_from_slice(&FLAG_CHECKSUM_PRESENT.to_le_bytes());
        let mut head = frame(7, 0, OP_MSG, &[]);
        head[..4].copy_from_slice(&((HEADER_LEN + body.len() + 4) as i32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &body);
        body.extend_from_slice(&crc.to_le_bytes());
        assert!(OpMsg::parse(&header(), &body).is_ok());
        let last = body.len() - 6;
        body[last] ^= 1;
        assert!(OpMsg::parse(&header(), &body).is_err());
    }

    #[test]
    fn compressed_messages_round_trip_and_lies_are_refused() {
        let inner = op_msg_body(0, &rawdoc! { "ping": 1, "$db": "admin" });
        for c in [Compressor::Snappy, Compressor::Zlib, Compressor::Zstd] {
            let framed = frame_maybe_compressed(3, 0, OP_MSG, &inner, Some(c));
            let h = Header { request_id: 3, response_to: 0, op_code: OP_COMPRESSED };
            let msg = decode_message(h, framed.clone(), DEFAULT_MAX_MESSAGE_BYTES).unwrap();
            assert_eq!(msg.body(), &inner[..]);
            assert_eq!(msg.raw, frame(3, 0, OP_MSG, &inner));
            assert_eq!(msg.compressor, Some(c));
            let mut lying = framed;
            lying[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&((inner.len() - 1) as i32).to_le_bytes());
            assert!(decode_message(h, lying, DEFAULT_MAX_MESSAGE_BYTES).is_err(), "{c:?}");
        }
    }

    #[test]
    fn bad_sections_and_opcodes_are_errors() {
        assert!(matches!(decode_message(Header { op_code: 2001, ..header() }, vec![0; 16], 100), Err(WireError::UnknownOpcode(2001))));
        assert!(OpMsg::parse(&header(), &[0, 0, 0, 0]).is_err());
        assert!(OpMsg::parse(&header(), &[0, 0, 0, 0, 9, 5, 0, 0, 0, 0]).is_err());
        assert!(OpMsg::parse(&header(), &[4, 0, 0, 0]).is_err());
    }
}
