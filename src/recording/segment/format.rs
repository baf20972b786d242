//! The segment file: short sealed sessions, many to a file, each kept byte for byte.
//!
//! ```text
//! segment := "DBTSEG01" block* end?
//! block   := "DSBK" zlen:u32 raw_len:u32 count:u32 crc32c:u32 sid:[u8;16]*count payload:[u8;zlen]
//! end     := "DSEN" sessions:u64 sha256:[u8;32] crc32c:u32
//! payload := zstd(entry*), with the first block's first bytes as its dictionary
//! entry   := recording_len:u32 manifest_len:u32 summary_len:u32 recording manifest summary
//! ```
//!
//! All integers little-endian. A block's CRC covers its header fields after the magic, its
//! session ids and its payload; the end record's SHA-256 covers every byte before it. One
//! block is what one writer pass sealed, written and fsynced at once: a crash leaves whole
//! blocks and at most one torn one, which readers stop at. The sessions' own recordings,
//! manifests and sidecars are stored unchanged, so each verifies on its own as before.

use std::io::{self, Read};

pub const SEGMENT_EXT: &str = "dseg";
pub const SEGMENT_MAGIC: &[u8; 8] = b"DBTSEG01";
const BLOCK_MAGIC: [u8; 4] = *b"DSBK";
const END_MAGIC: [u8; 4] = *b"DSEN";
pub const BLOCK_HEADER_LEN: u64 = 20;
pub const END_LEN: u64 = 48;
/// Readers refuse a block claiming more, compressed or not: the writer cuts blocks at 8 MiB
/// plus one session (at most 1 MiB). It bounds what a crafted segment from a bucket can make
/// a review allocate: this, for each of the few blocks the index keeps decompressed.
pub const MAX_BLOCK_BYTES: u32 = 16 * 1024 * 1024;
pub const MAX_BLOCK_SESSIONS: u32 = 1 << 16;
/// The largest session packed, whatever the settings say (the config allows no more).
pub const MAX_PACKED_SESSION_BYTES: u64 = 1024 * 1024;
/// How much of the first block's payload later blocks are compressed against: a few whole
/// sessions, whose fixed text (session headers, manifest and sidecar keys) the rest repeat.
pub const DICTIONARY_BYTES: usize = 16 * 1024;

/// One sealed session as the segment keeps it.
pub struct Entry<'a> {
    pub sid: uuid::Uuid,
    pub recording: &'a [u8],
    pub manifest: &'a [u8],
    pub summary: &'a [u8],
}

/// One session's three parts inside a decompressed payload.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    pub recording: &'a [u8],
    pub manifest: &'a [u8],
    pub summary: &'a [u8],
}

pub fn encode_payload(entries: &[Entry<'_>], out: &mut Vec<u8>) {
    for entry in entries {
        for part in [entry.recording, entry.manifest, entry.summary] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(entry.recording);
        out.extend_from_slice(entry.manifest);
        out.extend_from_slice(entry.summary);
    }
}

/// The `index`th entry of a decompressed payload; None if the payload is shorter.
pub fn entry_at(raw: &[u8], index: usize) -> Option<Parts<'_>> {
    let mut rest = raw;
    for i in 0..=index {
        let len = |at: usize| -> Option<usize> { Some(u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize) };
        let (r, m, s) = (len(0)?, len(4)?, len(8)?);
        let body = rest.get(12..)?;
        let total = r.checked_add(m)?.checked_add(s)?;
        if body.len() < total {
            return None;
        }
        if i == index {
            return Some(Parts { recording: &body[..r], manifest: &body[r..r + m], summary: &body[r + m..total] });
        }
        rest = &body[total..];
    }
    None
}

pub fn encode_block(sids: &[uuid::Uuid], raw_len: u32, compressed: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&BLOCK_MAGIC);
    out.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&(sids.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for sid in sids {
        out.extend_from_slice(sid.as_bytes());
    }
    out.extend_from_slice(compressed);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start + 4..start + 16]), &out[start + 20..]);
    out[start + 16..start + 20].copy_from_slice(&crc.to_le_bytes());
}

pub fn encode_end(sessions: u64, sha256: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(END_LEN as usize);
    out.extend_from_slice(&END_MAGIC);
    out.extend_from_slice(&sessions.to_le_bytes());
    out.extend_from_slice(sha256);
    let crc = crc32c::crc32c(&out[4..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A block's header and session ids, read without its payload.
#[derive(Debug, Clone)]
pub struct BlockHeader {
    pub offset: u64,
    pub zlen: u32,
    pub raw_len: u32,
    pub crc: u32,
    pub sids: Vec<uuid::Uuid>,
}

impl BlockHeader {
    pub fn payload_offset(&self) -> u64 {
        self.offset + BLOCK_HEADER_LEN + 16 * self.sids.len() as u64
    }

    pub fn end(&self) -> u64 {
        self.payload_offset() + u64::from(self.zlen)
    }

    /// Whether `payload` is this block's, as written.
    pub fn check(&self, payload: &[u8]) -> bool {
        block_crc(self.zlen, self.raw_len, self.sids.len() as u32, self.sids.iter().map(|s| &s.as_bytes()[..]), payload) == self.crc
    }
}

/// A block's CRC, from its header fields, its session ids and its payload.
pub fn block_crc<'a>(zlen: u32, raw_len: u32, count: u32, sids: impl Iterator<Item = &'a [u8]>, payload: &[u8]) -> u32 {
    let mut fields = [0u8; 12];
    fields[..4].copy_from_slice(&zlen.to_le_bytes());
    fields[4..8].copy_from_slice(&raw_len.to_le_bytes());
    fields[8..].copy_from_slice(&count.to_le_bytes());
    let mut crc = crc32c::crc32c(&fields);
    for sid in sids {
        crc = crc32c::crc32c_append(crc, sid);
    }
    crc32c::crc32c_append(crc, payload)
}

#[derive(Debug)]
pub enum Record {
    Block(BlockHeader),
    /// The segment is closed: `sessions` entries, and the SHA-256 of everything before.
    End {
        sessions: u64,
        sha256: [u8; 32],
    },
    /// Nothing more: the file ends here.
    Eof,
    /// The file ends inside a record, or what follows is not one: a crash's torn tail, or
    /// damage. Readers stop here.
    Torn(String),
}

/// Reads the record at the reader's position, `offset` bytes into a file of `file_len`.
pub fn read_record(reader: &mut impl Read, offset: u64, file_len: u64) -> io::Result<Record> {
    let left = file_len.saturating_sub(offset);
    if left == 0 {
        return Ok(Record::Eof);
    }
    if left < BLOCK_HEADER_LEN {
        return Ok(Record::Torn(format!("{left} bytes at {offset} are not a whole record")));
    }
    let mut head = [0u8; BLOCK_HEADER_LEN as usize];
    reader.read_exact(&mut head)?;
    let u32_at = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    if head[..4] == END_MAGIC {
        if left < END_LEN {
            return Ok(Record::Torn(format!("end record at {offset} is cut short")));
        }
        let mut rest = [0u8; (END_LEN - BLOCK_HEADER_LEN) as usize];
        reader.read_exact(&mut rest)?;
        let mut all = [0u8; END_LEN as usize];
        all[..20].copy_from_slice(&head);
        all[20..].copy_from_slice(&rest);
        let crc = u32::from_le_bytes([all[44], all[45], all[46], all[47]]);
        if crc32c::crc32c(&all[4..44]) != crc {
            return Ok(Record::Torn(format!("end record at {offset} fails its checksum")));
        }
        let sessions = u64::from_le_bytes(all[4..12].try_into().unwrap_or_default());
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&all[12..44]);
        return Ok(Record::End { sessions, sha256 });
    }
    if head[..4] != BLOCK_MAGIC {
        return Ok(Record::Torn(format!("no record at {offset}")));
    }
    let (zlen, raw_len, count, crc) = (u32_at(4), u32_at(8), u32_at(12), u32_at(16));
    if zlen > MAX_BLOCK_BYTES || raw_len > MAX_BLOCK_BYTES || count == 0 || count > MAX_BLOCK_SESSIONS {
        return Ok(Record::Torn(format!("block at {offset} has impossible sizes")));
    }
    let end = offset + BLOCK_HEADER_LEN + 16 * u64::from(count) + u64::from(zlen);
    if end > file_len {
        return Ok(Record::Torn(format!("block at {offset} is cut short")));
    }
    let mut ids = vec![0u8; 16 * count as usize];
    reader.read_exact(&mut ids)?;
    let sids = ids.chunks_exact(16).filter_map(|c| uuid::Uuid::from_slice(c).ok()).collect();
    Ok(Record::Block(BlockHeader { offset, zlen, raw_len, crc, sids }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_reads_back_and_its_entries_split_as_written() {
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let mut raw = Vec::new();
        encode_payload(
            &[
                Entry { sid: a, recording: b"rec-a", manifest: b"{\"m\":1}", summary: b"{}" },
                Entry { sid: b, recording: b"rec-bb", manifest: b"", summary: b"{\"s\":2}" },
            ],
            &mut raw,
        );
        let mut file = SEGMENT_MAGIC.to_vec();
        encode_block(&[a, b], raw.len() as u32, &raw, &mut file);
        let len = file.len() as u64;
        let mut cursor = std::io::Cursor::new(&file[8..]);
        let Record::Block(header) = read_record(&mut cursor, 8, len).expect("read") else { panic!("not a block") };
        assert_eq!(header.sids, vec![a, b]);
        assert_eq!(header.end(), len);
        let payload = &file[header.payload_offset() as usize..];
        assert!(header.check(payload));
        let mut bad = payload.to_vec();
        bad[0] ^= 1;
        assert!(!header.check(&bad));
        let second = entry_at(payload, 1).expect("entry 1");
        assert_eq!((second.recording, second.manifest, second.summary), (&b"rec-bb"[..], &b""[..], &b"{\"s\":2}"[..]));
        assert!(entry_at(payload, 2).is_none());
    }

    #[test]
    fn a_cut_or_foreign_tail_is_torn_not_an_error() {
        let sid = uuid::Uuid::new_v4();
        let mut file = Vec::new();
        encode_block(&[sid], 3, b"abc", &mut file);
        for cut in [1, 19, 20, file.len() - 1] {
            let mut cursor = std::io::Cursor::new(&file[..cut]);
            assert!(matches!(read_record(&mut cursor, 0, cut as u64).expect("read"), Record::Torn(_)), "cut at {cut}");
        }
        let junk = [7u8; 64];
        assert!(matches!(read_record(&mut std::io::Cursor::new(&junk[..]), 0, 64).expect("read"), Record::Torn(_)));
        let end = encode_end(4, &[9; 32]);
        let read = read_record(&mut std::io::Cursor::new(&end[..]), 0, END_LEN).expect("read");
        assert!(matches!(read, Record::End { sessions: 4, sha256 } if sha256 == [9; 32]));
    }
}
