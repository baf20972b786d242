//! The readers' side: which segment block holds which session, learnt by reading block
//! headers only (never payloads) and kept up to date as segments grow, close or go away.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::format::{self, BlockHeader, Record, SEGMENT_EXT, SEGMENT_MAGIC};
use crate::util::sync::lock;

/// Decompressed blocks kept: a reader asks for a session's sidecar, manifest and recording
/// in turn, and sessions sealed together are often read together.
const CACHED_BLOCKS: usize = 8;

/// One session's recording, manifest and sidecar, as sealed.
#[derive(Debug, Clone)]
pub struct PackedSession {
    pub recording: Vec<u8>,
    pub manifest: Vec<u8>,
    pub summary: Vec<u8>,
    pub segment: PathBuf,
}

/// A segment as the uploader sees it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub name: String,
    pub closed: bool,
    pub sessions: usize,
    pub bytes: u64,
}

#[derive(Clone)]
struct Location {
    segment: Arc<str>,
    block: Arc<BlockHeader>,
    entry: usize,
}

#[derive(Default)]
struct Scanned {
    /// Where the next record starts.
    next: u64,
    len: u64,
    closed: bool,
    sessions: usize,
    first_block: Option<Arc<BlockHeader>>,
    dictionary: Option<Arc<Vec<u8>>>,
}

/// A block: its segment's name and its offset there.
type BlockKey = (Arc<str>, u64);

#[derive(Default)]
struct State {
    segments: HashMap<Arc<str>, Scanned>,
    sessions: HashMap<uuid::Uuid, Location>,
    /// Every session as it was found, numbered in order, so that a reader that asks often
    /// (the indexer) is told only what is new rather than handed every session each time.
    arrivals: Vec<(u64, uuid::Uuid)>,
    next_arrival: u64,
    cache: Vec<(BlockKey, Arc<Vec<u8>>)>,
}

#[derive(Default)]
pub struct SegmentIndex {
    state: Mutex<State>,
}

impl std::fmt::Debug for SegmentIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentIndex")
    }
}

impl SegmentIndex {
    /// Brings the index up to date with `recordings`' segments folder: new and grown
    /// segments are read from where the last look stopped; closed ones are never read again.
    pub fn refresh(&self, recordings: &Path) {
        let dir = super::segments_dir(recordings);
        let names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.ends_with(&format!(".{SEGMENT_EXT}")) && !n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut state = lock(&self.state);
        let gone: Vec<Arc<str>> = state.segments.keys().filter(|k| !names.iter().any(|n| n.as_str() == &***k)).cloned().collect();
        for name in gone {
            forget(&mut state, &name);
        }
        for name in names {
            let key: Arc<str> = Arc::from(name.as_str());
            if state.segments.get(&key).is_some_and(|s| s.closed) {
                continue;
            }
            let path = dir.join(&name);
            let Ok(len) = std::fs::metadata(&path).map(|m| m.len()) else { continue };
            let known = state.segments.get(&key).map(|s| (s.len, s.next));
            match known {
                Some((seen, _)) if seen == len => continue,
                Some((_, next)) if len < next => forget(&mut state, &key),
                _ => {}
            }
            if let Err(e) = scan(&mut state, &key, &path, len) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot read a recordings segment");
            }
        }
    }

    /// The sessions found since `mark` (0, or what an earlier call returned), in the order
    /// found, and the mark to pass next time.
    pub fn arrived_since(&self, mark: u64) -> (Vec<uuid::Uuid>, u64) {
        let state = lock(&self.state);
        let start = state.arrivals.partition_point(|(number, _)| *number < mark);
        (state.arrivals[start..].iter().map(|(_, sid)| *sid).collect(), state.next_arrival)
    }

    pub fn contains(&self, sid: &uuid::Uuid) -> bool {
        lock(&self.state).sessions.contains_key(sid)
    }

    /// In the order they are stored, so that reading them in turn (`ls`, the console)
    /// decompresses each block once rather than once per session.
    pub fn session_ids(&self) -> Vec<uuid::Uuid> {
        let state = lock(&self.state);
        let mut ids: Vec<_> = state.sessions.iter().map(|(sid, l)| ((l.segment.clone(), l.block.offset, l.entry), *sid)).collect();
        ids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        ids.into_iter().map(|(_, sid)| sid).collect()
    }

    pub fn segments(&self, recordings: &Path) -> Vec<SegmentInfo> {
        let dir = super::segments_dir(recordings);
        lock(&self.state)
            .segments
            .iter()
            .map(|(name, s)| SegmentInfo {
                path: dir.join(&**name),
                name: name.to_string(),
                closed: s.closed,
                sessions: s.sessions,
                bytes: s.len,
            })
            .collect()
    }

    /// The session as sealed into a segment; None if no segment holds it.
    pub fn read(&self, recordings: &Path, sid: &uuid::Uuid) -> io::Result<Option<PackedSession>> {
        let (location, first, dictionary) = {
            let state = lock(&self.state);
            let Some(location) = state.sessions.get(sid).cloned() else { return Ok(None) };
            let scanned = state.segments.get(&location.segment);
            (location, scanned.and_then(|s| s.first_block.clone()), scanned.and_then(|s| s.dictionary.clone()))
        };
        let path = super::segments_dir(recordings).join(&*location.segment);
        let dictionary = if location.block.offset == SEGMENT_MAGIC.len() as u64 {
            None
        } else {
            match dictionary {
                Some(d) => Some(d),
                None => {
                    let first = first.ok_or_else(|| damaged("a segment's first block is missing"))?;
                    let payload = self.payload(&location.segment, &path, &first, None)?;
                    let d = Arc::new(super::dictionary_of(&payload).to_vec());
                    if let Some(s) = lock(&self.state).segments.get_mut(&location.segment) {
                        s.dictionary = Some(d.clone());
                    }
                    Some(d)
                }
            }
        };
        let payload = self.payload(&location.segment, &path, &location.block, dictionary.as_deref().map(Vec::as_slice))?;
        let parts =
            format::entry_at(&payload, location.entry).ok_or_else(|| damaged("a segment block holds fewer sessions than it lists"))?;
        Ok(Some(PackedSession {
            recording: parts.recording.to_vec(),
            manifest: parts.manifest.to_vec(),
            summary: parts.summary.to_vec(),
            segment: path,
        }))
    }

    fn payload(&self, name: &Arc<str>, path: &Path, block: &BlockHeader, dictionary: Option<&[u8]>) -> io::Result<Arc<Vec<u8>>> {
        let key = (name.clone(), block.offset);
        if let Some((_, hit)) = lock(&self.state).cache.iter().find(|(k, _)| *k == key) {
            return Ok(hit.clone());
        }
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(block.payload_offset()))?;
        let mut compressed = vec![0u8; block.zlen as usize];
        file.read_exact(&mut compressed)?;
        if !block.check(&compressed) {
            return Err(damaged(&format!("{}: the block at byte {} fails its checksum", path.display(), block.offset)));
        }
        let raw = Arc::new(super::decompress(&compressed, block.raw_len, dictionary)?);
        let mut state = lock(&self.state);
        if state.cache.len() >= CACHED_BLOCKS {
            state.cache.remove(0);
        }
        state.cache.push((key, raw.clone()));
        Ok(raw)
    }
}

fn damaged(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn forget(state: &mut State, name: &Arc<str>) {
    if state.segments.remove(name).is_some() {
        state.sessions.retain(|_, l| l.segment != *name);
        let State { arrivals, sessions, .. } = state;
        arrivals.retain(|(_, sid)| sessions.contains_key(sid));
    }
    state.cache.retain(|((n, _), _)| n != name);
}

/// Reads block headers from where the last scan of this segment stopped.
fn scan(state: &mut State, name: &Arc<str>, path: &Path, len: u64) -> io::Result<()> {
    let mut file = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let scanned = state.segments.entry(name.clone()).or_default();
    if scanned.next == 0 {
        let mut magic = [0u8; 8];
        if len < 8 {
            return Ok(());
        }
        file.read_exact(&mut magic)?;
        if &magic != SEGMENT_MAGIC {
            return Err(damaged("not a dbtape segment"));
        }
        scanned.next = 8;
    }
    file.seek(SeekFrom::Start(scanned.next))?;
    let mut found = Vec::new();
    loop {
        match format::read_record(&mut file, scanned.next, len)? {
            Record::Block(header) => {
                let end = header.end();
                file.seek_relative(i64::from(header.zlen))?;
                let header = Arc::new(header);
                if scanned.first_block.is_none() {
                    scanned.first_block = Some(header.clone());
                }
                scanned.sessions += header.sids.len();
                for (entry, sid) in header.sids.iter().enumerate() {
                    found.push((*sid, Location { segment: name.clone(), block: header.clone(), entry }));
                }
                scanned.next = end;
            }
            Record::End { .. } => {
                scanned.closed = true;
                break;
            }
            Record::Eof | Record::Torn(_) => break,
        }
    }
    scanned.len = len;
    for (sid, location) in found {
        state.arrivals.push((state.next_arrival, sid));
        state.next_arrival += 1;
        state.sessions.insert(sid, location);
    }
    Ok(())
}
