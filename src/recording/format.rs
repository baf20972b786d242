//! The on-disk recording format.
//!
//! ```text
//! file   := FILE_MAGIC frame*
//! frame  := header(80 bytes) payload crc32c(4 bytes, LE)
//! header := magic "DTFR" | kind u8 | flags u8 | reserved u16
//!         | seq u32 | payload_len u32 | raw_len u32 | events u32
//!         | first_ei u64 | min_time_ms i64 | max_time_ms i64      (all little-endian)
//!         | chain [32]
//! ```
//!
//! flags: bit 0 `FLAG_ZSTD` (payload compressed), bit 1 `FLAG_COMPACT` (events leave out the
//! session's fixed fields, which frame 0's header holds once; readers splice them back).
//! Frame 0 (kind Session) is JSON: `SessionHeader`, `format` 2 since compact frames.
//!
//! `chain = SHA-256(previous chain || header[0..48] || payload)`, seeded per session, so a frame
//! cannot be altered, dropped, reordered or moved to another recording without breaking every
//! link after it. The CRC covers the header (chain included) and payload and catches plain
//! corruption; the chain and the signed manifest catch deliberate edits. Every frame is a
//! self-contained zstd frame, so any whole frame decodes on its own.

use sha2::{Digest, Sha256};

pub const FILE_MAGIC: &[u8; 8] = b"DBTAPE\x00\x01";
pub const FRAME_MAGIC: &[u8; 4] = b"DTFR";
pub const HEADER_LEN: usize = 80;
pub const CRC_LEN: usize = 4;
/// Bound on any one frame, so a damaged or hostile length can't make a reader allocate wildly.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;
pub const FLAG_ZSTD: u8 = 1;
/// The frame's events leave out the session's fixed fields (cluster, user, sid, database…),
/// which frame 0 holds once as `SessionHeader::fixed`; readers splice them back into each
/// line. Repeating them in every event was over half of each event's bytes to copy and
/// compress on the proxy's hot path.
pub const FLAG_COMPACT: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The session's context as JSON, uncompressed. Always frame 0.
    Session,
    /// zstd-compressed JSON Lines, one audit event per line.
    Events,
    /// The final frame of a sealed recording: counts, time range and chain head, as JSON.
    Trailer,
}

impl FrameKind {
    pub fn to_byte(self) -> u8 {
        match self {
            FrameKind::Session => 1,
            FrameKind::Events => 2,
            FrameKind::Trailer => 3,
        }
    }

    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(FrameKind::Session),
            2 => Some(FrameKind::Events),
            3 => Some(FrameKind::Trailer),
            _ => None,
        }
    }
}

/// The fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub flags: u8,
    pub seq: u32,
    pub payload_len: u32,
    pub raw_len: u32,
    pub events: u32,
    pub first_ei: u64,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    pub chain: [u8; 32],
}

/// Raised when a header's fixed fields are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame length {0} exceeds the {MAX_FRAME_BYTES}-byte limit")]
    Oversized(u32),
}

impl FrameHeader {
    /// The 48 bytes the chain hashes (everything but the chain itself).
    pub fn linked_bytes(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[0..4].copy_from_slice(FRAME_MAGIC);
        out[4] = self.kind.to_byte();
        out[5] = self.flags;
        out[8..12].copy_from_slice(&self.seq.to_le_bytes());
        out[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.raw_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.events.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_ei.to_le_bytes());
        out[32..40].copy_from_slice(&self.min_time_ms.to_le_bytes());
        out[40..48].copy_from_slice(&self.max_time_ms.to_le_bytes());
        out
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..48].copy_from_slice(&self.linked_bytes());
        out[48..].copy_from_slice(&self.chain);
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, HeaderError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if &magic != FRAME_MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        let kind = FrameKind::from_byte(bytes[4]).ok_or(HeaderError::UnknownKind(bytes[4]))?;
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let payload_len = u32_at(12);
        let raw_len = u32_at(16);
        for len in [payload_len, raw_len] {
            if len > MAX_FRAME_BYTES {
                return Err(HeaderError::Oversized(len));
            }
        }
        let mut chain = [0u8; 32];
        chain.copy_from_slice(&bytes[48..80]);
        Ok(FrameHeader {
            kind,
            flags: bytes[5],
            seq: u32_at(8),
            payload_len,
            raw_len,
            events: u32_at(20),
            first_ei: u64_at(24),
            min_time_ms: u64_at(32) as i64,
            max_time_ms: u64_at(40) as i64,
            chain,
        })
    }
}

/// The chain value before frame 0: binds the chain to one session id.
pub fn chain_seed(sid: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"dbtape-chain-v1\0");
    h.update(sid.as_bytes());
    h.finalize().into()
}

pub fn chain_next(prev: &[u8; 32], header: &FrameHeader, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(header.linked_bytes());
    h.update(payload);
    h.finalize().into()
}

pub fn frame_crc(header_bytes: &[u8; HEADER_LEN], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_bytes), payload)
}

/// Builds one frame, appending its bytes to `out`; returns the new chain value.
pub struct FrameSpec<'a> {
    pub kind: FrameKind,
    pub seq: u32,
    pub compressed: bool,
    /// Events without the session's fixed fields (`FLAG_COMPACT`).
    pub compact: bool,
    pub raw_len: u32,
    pub events: u32,
    pub first_ei: u64,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    pub payload: &'a [u8],
}

pub fn encode_frame(spec: &FrameSpec<'_>, prev_chain: &[u8; 32], out: &mut Vec<u8>) -> [u8; 32] {
    let mut header = FrameHeader {
        kind: spec.kind,
        flags: if spec.compressed { FLAG_ZSTD } else { 0 } | if spec.compact { FLAG_COMPACT } else { 0 },
        seq: spec.seq,
        payload_len: spec.payload.len() as u32,
        raw_len: spec.raw_len,
        events: spec.events,
        first_ei: spec.first_ei,
        min_time_ms: spec.min_time_ms,
        max_time_ms: spec.max_time_ms,
        chain: [0u8; 32],
    };
    header.chain = chain_next(prev_chain, &header, spec.payload);
    let header_bytes = header.encode();
    let crc = frame_crc(&header_bytes, spec.payload);
    out.reserve(HEADER_LEN + spec.payload.len() + CRC_LEN);
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(spec.payload);
    out.extend_from_slice(&crc.to_le_bytes());
    header.chain
}

/// What frame 0 holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct SessionHeader {
    pub format: u32,
    pub sid: String,
    pub created: String,
    pub user: String,
    pub db_service: String,
    pub db_protocol: String,
    pub db_uri: String,
    pub db_name: String,
    pub db_user: String,
    pub remote_addr: String,
    /// Format 2: the session's fixed event fields as a JSON fragment (`"cluster_name":…`,
    /// no braces), spliced into the lines of `FLAG_COMPACT` frames. Absent in format 1.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fixed: String,
    /// Format 3: 16 random bytes, hex, from which each compact event's uid is derived
    /// (`audit::derived_uid`) instead of being stored. Absent before format 3.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid_seed: String,
}

impl SessionHeader {
    /// Appends `line` (one event, without its newline) to `out` as a whole event: with the
    /// session's fixed fields (and, from format 3, the derived uid) spliced in when
    /// `compact`, as it is otherwise; then a newline.
    pub fn expand_line(&self, line: &[u8], compact: bool, out: &mut Vec<u8>) {
        if !compact {
            out.extend_from_slice(line);
            out.push(b'\n');
            return;
        }
        let derived = self.uid_seed().zip(leading_ei(line)).map(|(seed, ei)| crate::recording::compact::derived_uid(&seed, ei));
        match (derived, line.split_last()) {
            (Some(uid), Some((b'}', body))) => {
                out.extend_from_slice(body);
                crate::recording::compact::write_uid_field(uid, out);
                if !self.fixed.is_empty() {
                    out.push(b',');
                    out.extend_from_slice(self.fixed.as_bytes());
                }
                out.push(b'}');
            }
            _ => crate::recording::compact::splice_fixed_fields(line, self.fixed.as_bytes(), out),
        }
        out.push(b'\n');
    }

    pub fn uid_seed(&self) -> Option<[u8; 16]> {
        if self.uid_seed.is_empty() {
            return None;
        }
        crate::util::hex::unhex(&self.uid_seed)
    }
}

/// An event line's `ei`, which the recorder writes first: `{"ei":42,…`.
pub fn leading_ei(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"ei\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// What the last frame of a sealed recording holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Trailer {
    pub event_count: u64,
    pub first_time_ms: Option<i64>,
    pub last_time_ms: Option<i64>,
    /// Chain value of the frame before the trailer, hex.
    pub chain_head: String,
    pub frames: u32,
    pub lost_events: u64,
    pub sealed_at_ms: i64,
}
