//! One pass over a recording that checks everything checkable without a key: file magic,
//! every frame's CRC, sequence and chain link, the events' `ei` order, and the trailer.
//! Shared by `verify`, crash recovery and the readers.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::format::{FrameKind, SessionHeader, Trailer};
use super::reader::{event_lines, FrameReader, Next, ReadError, Tail};
use crate::util::hex::hex;

/// Counts every byte that passes, so the whole file is hashed in the same pass.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[derive(Debug, Clone, Default)]
pub struct EventTally {
    pub events: u64,
    pub queries: u64,
    pub failed_queries: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

#[derive(Debug)]
pub enum ScanEnd {
    /// The trailer was read and agrees with the frames before it.
    Sealed(Trailer),
    /// EOF at a frame boundary with no trailer: live, or died between frames.
    Open,
    Truncated {
        offset: u64,
        torn_bytes: u64,
    },
    /// Something is wrong; the message says what and where.
    Damaged(String),
}

#[derive(Debug)]
pub struct ScanReport {
    pub header: Option<SessionHeader>,
    pub frames: u32,
    /// Bytes of whole, valid frames from the start of the file.
    pub valid_length: u64,
    pub chain_head: String,
    pub tally: EventTally,
    pub end: ScanEnd,
    pub size: u64,
    pub sha256: String,
}

#[derive(Deserialize)]
struct EventPeek<'a> {
    ei: u64,
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow)]
    code: &'a str,
    #[serde(borrow)]
    time: &'a str,
    #[serde(default)]
    success: Option<bool>,
}

pub fn scan_recording(path: &Path, sid: &str) -> io::Result<ScanReport> {
    scan_reader(File::open(path)?, sid)
}

/// As `scan_recording`, for a recording wherever it is kept (`RecordingStore::open_recording`).
pub fn scan_reader(file: impl io::Read, sid: &str) -> io::Result<ScanReport> {
    let mut hashing = HashingReader { inner: BufReader::with_capacity(1 << 20, file), hasher: Sha256::new(), bytes: 0 };
    let mut report = ScanReport {
        header: None,
        frames: 0,
        valid_length: 0,
        chain_head: String::new(),
        tally: EventTally::default(),
        end: ScanEnd::Open,
        size: 0,
        sha256: String::new(),
    };
    {
        let mut reader = FrameReader::new(&mut hashing, sid)?;
        let mut next_ei = 0u64;
        report.end = loop {
            let frame = match reader.next_frame() {
                Ok(Next::Frame(frame)) => frame,
                Ok(Next::End(Tail::Clean)) => break ScanEnd::Open,
                Ok(Next::End(Tail::Truncated { offset, torn_bytes })) => break ScanEnd::Truncated { offset, torn_bytes },
                Err(ReadError::Io(e)) => return Err(e),
                Err(e) => break ScanEnd::Damaged(e.to_string()),
            };
            let seq = frame.header.seq;
            let at = frame.offset;
            let problem = match frame.header.kind {
                FrameKind::Session if seq == 0 => match serde_json::from_slice::<SessionHeader>(&frame.data) {
                    Ok(h) if h.sid == sid => {
                        report.header = Some(h);
                        None
                    }
                    Ok(h) => Some(format!("belongs to session {}, not {sid}", h.sid)),
                    Err(e) => Some(format!("session header unreadable: {e}")),
                },
                _ if seq == 0 => Some("first frame is not a session header".to_string()),
                FrameKind::Session => Some("a second session header".to_string()),
                FrameKind::Events => check_events(&frame.data, frame.header.first_ei, frame.header.events, &mut next_ei, &mut report.tally),
                FrameKind::Trailer => match serde_json::from_slice::<Trailer>(&frame.data) {
                    Ok(t) => {
                        let problem = check_trailer(&t, &report);
                        if problem.is_none() {
                            report.end = ScanEnd::Sealed(t);
                        }
                        problem
                    }
                    Err(e) => Some(format!("trailer unreadable: {e}")),
                },
            };
            if let Some(problem) = problem {
                break ScanEnd::Damaged(format!("frame {seq} at byte {at}: {problem}"));
            }
            report.frames = reader.frames_read();
            report.valid_length = reader.offset();
            report.chain_head = hex(&reader.chain());
            if let ScanEnd::Sealed(_) = report.end {
                // Anything after the trailer is an error the reader reports on the next call.
                match reader.next_frame() {
                    Ok(Next::End(Tail::Clean)) => {}
                    Ok(_) => {
                        report.end = ScanEnd::Damaged(format!("bytes after the trailer at byte {}", reader.offset()));
                    }
                    Err(e) => report.end = ScanEnd::Damaged(e.to_string()),
                }
                break std::mem::replace(&mut report.end, ScanEnd::Open);
            }
        };
    }
    // Hash whatever the reader did not consume (a torn tail or damage), so `sha256` is the file's.
    io::copy(&mut hashing, &mut io::sink())?;
    report.size = hashing.bytes;
    report.sha256 = hex(&hashing.hasher.finalize());
    Ok(report)
}

fn check_events(data: &[u8], first_ei: u64, count: u32, next_ei: &mut u64, tally: &mut EventTally) -> Option<String> {
    let mut seen = 0u32;
    for line in event_lines(data) {
        let peek: EventPeek<'_> = match serde_json::from_slice(line) {
            Ok(p) => p,
            Err(e) => return Some(format!("event {seen} is not valid JSON: {e}")),
        };
        if seen == 0 && peek.ei != first_ei {
            return Some(format!("first event has ei {}, header says {first_ei}", peek.ei));
        }
        if peek.ei < *next_ei {
            return Some(format!("event index {} after {} (ei must strictly increase)", peek.ei, next_ei.saturating_sub(1)));
        }
        *next_ei = peek.ei + 1;
        seen += 1;
        tally.events += 1;
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(peek.time) {
            let ms = t.timestamp_millis();
            tally.first_ms.get_or_insert(ms);
            tally.last_ms = Some(ms);
        }
        // Mirrors `EventBody::query_counts`.
        match (peek.event, peek.code) {
            ("db.session.query.failed", _) | ("db.session.dynamodb.request", "TDY01E") => {
                tally.queries += 1;
                tally.failed_queries += 1;
            }
            ("db.session.query", _) | ("db.session.postgres.statements.execute", _) | ("db.session.dynamodb.request", _) => {
                tally.queries += 1;
            }
            ("db.session.result", _) if peek.success == Some(false) => tally.failed_queries += 1,
            _ => {}
        }
    }
    (seen != count).then(|| format!("holds {seen} events, header says {count}"))
}

/// `report` still describes the frames before the trailer.
fn check_trailer(trailer: &Trailer, report: &ScanReport) -> Option<String> {
    if trailer.event_count != report.tally.events {
        return Some(format!("trailer counts {} events, the frames hold {}", trailer.event_count, report.tally.events));
    }
    if trailer.chain_head != report.chain_head {
        return Some("trailer's chain head does not match the frames".to_string());
    }
    if trailer.frames != report.frames {
        return Some(format!("trailer counts {} frames, found {}", trailer.frames, report.frames));
    }
    None
}
