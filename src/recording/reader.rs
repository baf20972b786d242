//! Sequential, validating reader. It never trusts a length before checking it against the
//! bytes actually present, and it reports a torn tail as `Truncated` rather than an error,
//! because a process killed mid-write leaves exactly that.

use std::io::{self, Read, Seek, SeekFrom};

use super::format::{chain_next, chain_seed, frame_crc, FrameHeader, FrameKind, HeaderError, CRC_LEN, FILE_MAGIC, FLAG_ZSTD, HEADER_LEN};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("not a dbtape recording (bad file magic)")]
    BadFileMagic,
    #[error("frame {frame} at byte {offset}: {reason}")]
    Corrupt { frame: u32, offset: u64, reason: Corruption },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("{0}")]
    Header(#[from] HeaderError),
    #[error("CRC mismatch (stored {stored:08x}, computed {computed:08x})")]
    Crc { stored: u32, computed: u32 },
    #[error("hash chain broken: the frame's content does not match its chain link")]
    Chain,
    #[error("frame sequence number {found}, expected {expected}")]
    Sequence { expected: u32, found: u32 },
    #[error("cannot decompress: {0}")]
    Decompress(String),
    #[error("decompressed to {found} bytes, header says {expected}")]
    RawLength { expected: u32, found: usize },
    #[error("frame after the trailer")]
    AfterTrailer,
}

/// How the file ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// EOF exactly at a frame boundary.
    Clean,
    /// EOF inside a frame: `torn_bytes` of an incomplete frame start at `offset`.
    Truncated { offset: u64, torn_bytes: u64 },
}

#[derive(Debug, Clone)]
pub struct Frame {
    pub header: FrameHeader,
    pub offset: u64,
    /// Decompressed payload.
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    End(Tail),
}

pub struct FrameReader<R> {
    inner: R,
    /// Byte offset of the next frame.
    offset: u64,
    next_seq: u32,
    chain: [u8; 32],
    seen_trailer: bool,
    started: bool,
    payload: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R, sid: &str) -> io::Result<Self> {
        Ok(FrameReader { inner, offset: 0, next_seq: 0, chain: chain_seed(sid), seen_trailer: false, started: false, payload: Vec::new() })
    }

    /// Offset just past the last whole frame read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn chain(&self) -> [u8; 32] {
        self.chain
    }

    pub fn frames_read(&self) -> u32 {
        self.next_seq
    }

    /// Reads until `buf` is full or EOF; returns how much was read.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    fn corrupt(&self, reason: impl Into<Corruption>) -> ReadError {
        ReadError::Corrupt { frame: self.next_seq, offset: self.offset, reason: reason.into() }
    }

    pub fn next_frame(&mut self) -> Result<Next, ReadError> {
        if !self.started {
            let mut magic = [0u8; 8];
            let got = self.fill(&mut magic)?;
            if got < magic.len() {
                if magic[..got] == FILE_MAGIC[..got] {
                    return Ok(Next::End(Tail::Truncated { offset: 0, torn_bytes: got as u64 }));
                }
                return Err(ReadError::BadFileMagic);
            }
            if &magic != FILE_MAGIC {
                return Err(ReadError::BadFileMagic);
            }
            self.started = true;
            self.offset = FILE_MAGIC.len() as u64;
        }
        let mut head = [0u8; HEADER_LEN];
        let got = self.fill(&mut head)?;
        if got == 0 {
            return Ok(Next::End(Tail::Clean));
        }
        if got < HEADER_LEN {
            return Ok(Next::End(Tail::Truncated { offset: self.offset, torn_bytes: got as u64 }));
        }
        let header = FrameHeader::decode(&head).map_err(|e| self.corrupt(e))?;
        let body_len = header.payload_len as usize + CRC_LEN;
        self.payload.clear();
        self.payload.resize(body_len, 0);
        let mut payload = std::mem::take(&mut self.payload);
        let got_body = self.fill(&mut payload)?;
        if got_body < body_len {
            self.payload = payload;
            let torn = (HEADER_LEN + got_body) as u64;
            return Ok(Next::End(Tail::Truncated { offset: self.offset, torn_bytes: torn }));
        }
        let result = self.check_frame(header, &head, &payload);
        self.payload = payload;
        let data = result?;
        let frame = Frame { header, offset: self.offset, data };
        self.offset += (HEADER_LEN + body_len) as u64;
        self.next_seq += 1;
        self.chain = header.chain;
        if header.kind == FrameKind::Trailer {
            self.seen_trailer = true;
        }
        Ok(Next::Frame(frame))
    }

    fn check_frame(&mut self, header: FrameHeader, head: &[u8; HEADER_LEN], body: &[u8]) -> Result<Vec<u8>, ReadError> {
        let split = body.len().saturating_sub(CRC_LEN);
        let (payload, crc_bytes) = body.split_at(split);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = frame_crc(head, payload);
        if stored != computed {
            return Err(self.corrupt(Corruption::Crc { stored, computed }));
        }
        if self.seen_trailer {
            return Err(self.corrupt(Corruption::AfterTrailer));
        }
        if header.seq != self.next_seq {
            return Err(self.corrupt(Corruption::Sequence { expected: self.next_seq, found: header.seq }));
        }
        if chain_next(&self.chain, &header, payload) != header.chain {
            return Err(self.corrupt(Corruption::Chain));
        }
        if header.flags & FLAG_ZSTD == 0 {
            return Ok(payload.to_vec());
        }
        let data = super::decompress::decompress(payload, header.raw_len as usize, &[])
            .map_err(|e| self.corrupt(Corruption::Decompress(e.to_string())))?;
        if data.len() != header.raw_len as usize {
            return Err(self.corrupt(Corruption::RawLength { expected: header.raw_len, found: data.len() }));
        }
        Ok(data)
    }
}

/// Where a reader stands between two frames: enough to go on reading from there later
/// without reading what came before, the hash chain still checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub offset: u64,
    pub seq: u32,
    #[serde(with = "hex_chain")]
    pub chain: [u8; 32],
}

mod hex_chain {
    pub fn serialize<S: serde::Serializer>(chain: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::util::hex::hex(chain))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        crate::util::hex::unhex(&text).ok_or_else(|| serde::de::Error::custom("a chain is 32 bytes in hex"))
    }
}

impl<R: Read> FrameReader<R> {
    pub fn position(&self) -> Position {
        Position { offset: self.offset, seq: self.next_seq, chain: self.chain }
    }
}

impl<R: Read + Seek> FrameReader<R> {
    /// Rewinds to just after the last whole frame, so a live file can be read again once
    /// the writer has added more (used by `play --follow`).
    pub fn rewind_to_boundary(&mut self) -> io::Result<()> {
        self.inner.seek(SeekFrom::Start(self.offset))?;
        Ok(())
    }

    /// Goes on from a position an earlier reader of this file reported. Only forward, and
    /// only once the file magic was read; the next frame must carry on the saved chain, or
    /// it reads as corrupt.
    pub fn skip_to(&mut self, at: Position) -> io::Result<bool> {
        if !self.started || at.offset <= self.offset || self.seen_trailer {
            return Ok(false);
        }
        self.inner.seek(SeekFrom::Start(at.offset))?;
        self.offset = at.offset;
        self.next_seq = at.seq;
        self.chain = at.chain;
        Ok(true)
    }
}

/// Iterates the lines (events) of an events frame's payload.
pub fn event_lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|b| *b == b'\n').filter(|line| !line.is_empty())
}
