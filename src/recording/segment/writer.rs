//! The recorder's side: one open segment at a time, one fsynced block per writer pass.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::format::{self, encode_block, encode_end, encode_payload, Entry, Record, SEGMENT_EXT, SEGMENT_MAGIC};
use super::SegmentSettings;

/// A block holds at most this much before compression; a pass sealing more writes several.
const MAX_BLOCK_RAW: usize = 8 * 1024 * 1024;
// The block that passes MAX_BLOCK_RAW by one session still reads back.
const _: () = assert!(MAX_BLOCK_RAW + 2 * format::MAX_PACKED_SESSION_BYTES as usize <= format::MAX_BLOCK_BYTES as usize);

pub struct SegmentWriter {
    dir: PathBuf,
    settings: SegmentSettings,
    open: Option<OpenSegment>,
}

struct OpenSegment {
    path: PathBuf,
    /// Held with an exclusive lock while open: readers and recovery know it is live.
    file: File,
    len: u64,
    sessions: u64,
    hasher: Sha256,
    opened: Instant,
    /// Compresses against the first block's start, once there is a first block.
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl SegmentWriter {
    pub fn new(recordings: &Path, settings: SegmentSettings) -> Self {
        SegmentWriter { dir: super::segments_dir(recordings), settings, open: None }
    }

    /// Appends `entries` as one block (or a few, if large) and fsyncs it. Once this returns
    /// Ok, the sessions are durable in the segment and their own files may go. On an error
    /// nothing of the block is left in the segment (or the segment is given up and a new one
    /// started next time), so the caller can seal the sessions in their own files instead.
    pub fn append(&mut self, entries: &[Entry<'_>]) -> io::Result<()> {
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut raw = 0usize;
            while end < entries.len() && (end == start || raw < MAX_BLOCK_RAW) {
                let e = &entries[end];
                raw += 12 + e.recording.len() + e.manifest.len() + e.summary.len();
                end += 1;
            }
            self.append_block(&entries[start..end])?;
            start = end;
        }
        let full = self.open.as_ref().is_some_and(|s| s.len >= self.settings.max_segment_bytes);
        if full {
            self.close()?;
        }
        Ok(())
    }

    fn append_block(&mut self, entries: &[Entry<'_>]) -> io::Result<()> {
        if self.open.is_none() {
            self.open = Some(self.create()?);
        }
        let Some(segment) = self.open.as_mut() else { return Ok(()) };
        let mut raw = Vec::new();
        encode_payload(entries, &mut raw);
        let compressed = match segment.compressor.as_mut() {
            Some(compressor) => compressor.compress(&raw)?,
            None => zstd::bulk::compress(&raw, super::LEVEL)?,
        };
        let sids: Vec<uuid::Uuid> = entries.iter().map(|e| e.sid).collect();
        let mut block = Vec::with_capacity(compressed.len() + 20 + 16 * sids.len());
        encode_block(&sids, raw.len() as u32, &compressed, &mut block);
        let written = segment.file.write_all(&block).and_then(|()| segment.file.sync_data());
        if let Err(e) = written {
            // Cut the torn block off so the next one follows a whole block; if even that
            // fails, leave this segment (recovery closes it at its last whole block).
            if segment.file.set_len(segment.len).and_then(|()| segment.file.seek(SeekFrom::End(0))).is_err() {
                self.open = None;
            }
            return Err(e);
        }
        segment.len += block.len() as u64;
        segment.sessions += entries.len() as u64;
        segment.hasher.update(&block);
        if segment.compressor.is_none() {
            segment.compressor = Some(zstd::bulk::Compressor::with_dictionary(super::LEVEL, super::dictionary_of(&raw))?);
        }
        Ok(())
    }

    fn create(&self) -> io::Result<OpenSegment> {
        let fresh = !self.dir.exists();
        std::fs::create_dir_all(&self.dir)?;
        if fresh {
            if let Some(parent) = self.dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        let mut random = [0u8; 4];
        let _ = getrandom::getrandom(&mut random);
        let name = format!("segment-{}-{}.{SEGMENT_EXT}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3f"), crate::util::hex::hex(&random));
        let path = self.dir.join(name);
        let mut file = OpenOptions::new().read(true).append(true).create_new(true).open(&path)?;
        file.lock()?;
        file.write_all(SEGMENT_MAGIC)?;
        file.sync_data()?;
        File::open(&self.dir)?.sync_all()?;
        let mut hasher = Sha256::new();
        hasher.update(SEGMENT_MAGIC);
        tracing::debug!(segment = %path.display(), "opened a recordings segment");
        Ok(OpenSegment { path, file, len: SEGMENT_MAGIC.len() as u64, sessions: 0, hasher, opened: Instant::now(), compressor: None })
    }

    /// Closes the open segment if it has reached its age.
    pub fn close_if_old(&mut self) -> io::Result<()> {
        if self.open.as_ref().is_some_and(|s| s.opened.elapsed() >= self.settings.max_age) {
            self.close()?;
        }
        Ok(())
    }

    /// Writes the end record and fsyncs: the segment is complete and can be uploaded.
    pub fn close(&mut self) -> io::Result<()> {
        let Some(mut segment) = self.open.take() else { return Ok(()) };
        let digest: [u8; 32] = segment.hasher.finalize().into();
        segment.file.write_all(&encode_end(segment.sessions, &digest))?;
        segment.file.sync_data()?;
        tracing::info!(segment = %segment.path.display(), sessions = segment.sessions, bytes = segment.len, "closed a recordings segment");
        Ok(())
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, "cannot close the recordings segment; start-up recovery closes it");
        }
    }
}

/// Start-up recovery for segments a dead writer left open: each is cut after its last whole
/// block and closed. Sessions of a cut block still have their own files (they are removed
/// only once their block is fsynced), so crash recovery finds them there. Returns the
/// segments closed.
pub fn close_crashed(recordings: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = super::segments_dir(recordings);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut closed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
        if file.try_lock().is_err() {
            continue;
        }
        if let Some(cut) = close_one(&mut file)? {
            tracing::warn!(segment = %path.display(), cut_at = cut, "closed a segment a dead writer left open");
            closed.push(path);
        }
    }
    Ok(closed)
}

/// Closes one unclosed segment; None if it was closed already.
fn close_one(file: &mut File) -> io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    // A closed segment ends with its end record: seen from the tail, it is not read whole
    // at every start.
    if len >= SEGMENT_MAGIC.len() as u64 + format::END_LEN {
        file.seek(SeekFrom::End(-(format::END_LEN as i64)))?;
        if matches!(format::read_record(file, 0, format::END_LEN)?, Record::End { .. }) {
            return Ok(None);
        }
        file.seek(SeekFrom::Start(0))?;
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes)?;
    if !bytes.starts_with(SEGMENT_MAGIC) {
        return Ok(None);
    }
    let mut at = SEGMENT_MAGIC.len() as u64;
    let mut sessions = 0u64;
    loop {
        let mut cursor = io::Cursor::new(&bytes[at as usize..]);
        match format::read_record(&mut cursor, at, len)? {
            Record::End { .. } => return Ok(None),
            Record::Block(header) => {
                let payload = &bytes[header.payload_offset() as usize..header.end() as usize];
                // A last block that fails its checksum is torn: the crash came mid-write.
                // One further in is damage, kept for a human; its sessions read as damaged.
                if !header.check(payload) && header.end() == len {
                    break;
                }
                sessions += header.sids.len() as u64;
                at = header.end();
            }
            Record::Eof | Record::Torn(_) => break,
        }
    }
    let digest: [u8; 32] = Sha256::digest(&bytes[..at as usize]).into();
    file.set_len(at)?;
    file.seek(SeekFrom::Start(at))?;
    file.write_all(&encode_end(sessions, &digest))?;
    file.sync_data()?;
    Ok(Some(at))
}
