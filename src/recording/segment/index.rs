//! The readers' side: which segment block holds which session, learnt by reading block
//! headers only (never payloads) and kept up to date as segments grow, close or go away.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::format::{self, BlockHeader, Record, SEGMENT_EXT, SEGMENT_MAGIC};
use crate::util::sync::lock;

/// Decompressed blocks kept: a reader asks for a session's sidecar, manifest and recording
/// in turn, and sessions sealed together are often read together.
const CACHED_BLOCKS: usize = 8;
/// Arrivals kept for a reader that has not asked yet (24 bytes each): an indexer asks every
/// few seconds, far more often than this many sessions are packed.
const MAX_ARRIVALS_KEPT: usize = 1 << 18;

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

/// A block as the index keeps it: where it is and how to check it. Its session ids stay on
/// disk, just before its payload, and are read back with it: kept in memory they cost 16
/// bytes for every session ever packed.
#[derive(Clone, Copy)]
struct BlockSpan {
    offset: u64,
    zlen: u32,
    raw_len: u32,
    count: u32,
    crc: u32,
}

impl BlockSpan {
    fn of(header: &BlockHeader) -> BlockSpan {
        BlockSpan { offset: header.offset, zlen: header.zlen, raw_len: header.raw_len, count: header.sids.len() as u32, crc: header.crc }
    }
}

/// Where a packed session is: its segment's number and its block's place in that segment.
/// Eight bytes, so the index costs little more than the session id for each session kept.
#[derive(Clone, Copy)]
struct Slot {
    segment: u32,
    block: u32,
}

struct Scanned {
    name: Arc<str>,
    /// Where the next record starts.
    next: u64,
    len: u64,
    closed: bool,
    sessions: usize,
    blocks: Vec<BlockSpan>,
    dictionary: Option<Arc<Vec<u8>>>,
}

/// A block read back: its session ids as stored, and its payload decompressed.
struct ReadBlock {
    sids: Vec<u8>,
    raw: Vec<u8>,
}

/// A block: its segment's number and its offset there.
type BlockKey = (u32, u64);

#[derive(Default)]
struct State {
    numbers: HashMap<Arc<str>, u32>,
    segments: HashMap<u32, Scanned>,
    next_segment: u32,
    sessions: HashMap<uuid::Uuid, Slot>,
    /// Sessions as they were found, numbered in order, so that a reader that asks often
    /// (the indexer) is told only what is new. What a reader has been told is dropped when
    /// it asks again; one that asks from further back is told every session.
    arrivals: VecDeque<(u64, uuid::Uuid)>,
    dropped_below: u64,
    next_arrival: u64,
    cache: Vec<(BlockKey, Arc<ReadBlock>)>,
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
        let suffix = format!(".{SEGMENT_EXT}");
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.ends_with(&suffix) && !n.starts_with('.'))
                .collect(),
            Err(_) => Vec::new(),
        };
        // Named by creation time: new sessions are found in the order they were packed.
        names.sort_unstable();
        let mut state = lock(&self.state);
        let present: HashSet<&str> = names.iter().map(String::as_str).collect();
        let gone: Vec<u32> = state.numbers.iter().filter(|(name, _)| !present.contains(&***name)).map(|(_, n)| *n).collect();
        for number in gone {
            forget(&mut state, number);
        }
        for name in &names {
            let known = state.numbers.get(name.as_str()).and_then(|n| state.segments.get(n)).map(|s| (s.closed, s.len, s.next));
            if known.is_some_and(|(closed, _, _)| closed) {
                continue;
            }
            let path = dir.join(name);
            let Ok(len) = std::fs::metadata(&path).map(|m| m.len()) else { continue };
            match known {
                Some((_, seen, _)) if seen == len => continue,
                Some((_, _, next)) if len < next => {
                    if let Some(number) = state.numbers.get(name.as_str()).copied() {
                        forget(&mut state, number);
                    }
                }
                _ => {}
            }
            let (number, name) = number_of(&mut state, name);
            if let Err(e) = scan(&mut state, number, name, &path, len) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot read a recordings segment");
            }
        }
    }

    /// The sessions found since `mark` (0, or what an earlier call returned), in the order
    /// found, and the mark to pass next time. Asking from before what was last asked for
    /// returns every session, in the order stored.
    pub fn arrived_since(&self, mark: u64) -> (Vec<uuid::Uuid>, u64) {
        let mut state = lock(&self.state);
        let next = state.next_arrival;
        if mark < state.dropped_below {
            return (ordered(&state), next);
        }
        // Whoever asks from `mark` has what came before it: only what is newer is kept.
        let told = state.arrivals.partition_point(|(number, _)| *number < mark);
        state.arrivals.drain(..told);
        if state.arrivals.capacity() > 4 * state.arrivals.len().max(1024) {
            state.arrivals.shrink_to_fit();
        }
        state.dropped_below = mark;
        (state.arrivals.iter().map(|(_, sid)| *sid).collect(), next)
    }

    pub fn contains(&self, sid: &uuid::Uuid) -> bool {
        lock(&self.state).sessions.contains_key(sid)
    }

    /// In the order they are stored, so that reading them in turn (`ls`, the console)
    /// decompresses each block once rather than once per session.
    pub fn session_ids(&self) -> Vec<uuid::Uuid> {
        ordered(&lock(&self.state))
    }

    pub fn segments(&self, recordings: &Path) -> Vec<SegmentInfo> {
        let dir = super::segments_dir(recordings);
        lock(&self.state)
            .segments
            .values()
            .map(|s| SegmentInfo {
                path: dir.join(&*s.name),
                name: s.name.to_string(),
                closed: s.closed,
                sessions: s.sessions,
                bytes: s.len,
            })
            .collect()
    }

    /// The session as sealed into a segment; None if no segment holds it.
    pub fn read(&self, recordings: &Path, sid: &uuid::Uuid) -> io::Result<Option<PackedSession>> {
        let (number, name, block, first, dictionary) = {
            let state = lock(&self.state);
            let Some(slot) = state.sessions.get(sid).copied() else { return Ok(None) };
            let scanned = state.segments.get(&slot.segment).ok_or_else(|| damaged("a packed session's segment is not indexed"))?;
            let block = *scanned.blocks.get(slot.block as usize).ok_or_else(|| damaged("a packed session's block is not indexed"))?;
            let first = scanned.blocks.first().copied().unwrap_or(block);
            (slot.segment, scanned.name.clone(), block, first, scanned.dictionary.clone())
        };
        let path = super::segments_dir(recordings).join(&*name);
        let dictionary = if block.offset == first.offset {
            None
        } else {
            match dictionary {
                Some(d) => Some(d),
                None => {
                    let first = self.block(number, &path, &first, None)?;
                    let d = Arc::new(super::dictionary_of(&first.raw).to_vec());
                    if let Some(s) = lock(&self.state).segments.get_mut(&number) {
                        s.dictionary = Some(d.clone());
                    }
                    Some(d)
                }
            }
        };
        let read = self.block(number, &path, &block, dictionary.as_deref().map(Vec::as_slice))?;
        let entry = read
            .sids
            .chunks_exact(16)
            .position(|stored| stored == sid.as_bytes())
            .ok_or_else(|| damaged("a segment block no longer lists a session it held"))?;
        let parts = format::entry_at(&read.raw, entry).ok_or_else(|| damaged("a segment block holds fewer sessions than it lists"))?;
        Ok(Some(PackedSession {
            recording: parts.recording.to_vec(),
            manifest: parts.manifest.to_vec(),
            summary: parts.summary.to_vec(),
            segment: path,
        }))
    }

    /// A block's session ids and payload, read in one go and checked against its CRC.
    fn block(&self, number: u32, path: &Path, block: &BlockSpan, dictionary: Option<&[u8]>) -> io::Result<Arc<ReadBlock>> {
        let key = (number, block.offset);
        if let Some((_, hit)) = lock(&self.state).cache.iter().find(|(k, _)| *k == key) {
            return Ok(hit.clone());
        }
        let ids_len = 16 * block.count as usize;
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(block.offset + format::BLOCK_HEADER_LEN))?;
        let mut stored = vec![0u8; ids_len + block.zlen as usize];
        file.read_exact(&mut stored)?;
        let (ids, compressed) = stored.split_at(ids_len);
        if format::block_crc(block.zlen, block.raw_len, block.count, ids.chunks_exact(16), compressed) != block.crc {
            return Err(damaged(&format!("{}: the block at byte {} fails its checksum", path.display(), block.offset)));
        }
        let raw = super::decompress(compressed, block.raw_len, dictionary)?;
        stored.truncate(ids_len);
        let read = Arc::new(ReadBlock { sids: stored, raw });
        let mut state = lock(&self.state);
        if state.cache.len() >= CACHED_BLOCKS {
            state.cache.remove(0);
        }
        state.cache.push((key, read.clone()));
        Ok(read)
    }
}

fn damaged(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn number_of(state: &mut State, name: &str) -> (u32, Arc<str>) {
    if let Some((name, number)) = state.numbers.get_key_value(name) {
        return (*number, name.clone());
    }
    let number = state.next_segment;
    // Four billion segments is thousands of years of them; wrapping is only a guard.
    state.next_segment = state.next_segment.wrapping_add(1);
    let name: Arc<str> = Arc::from(name);
    state.numbers.insert(name.clone(), number);
    (number, name)
}

/// Every indexed session in the order stored: by segment as found, then by block.
fn ordered(state: &State) -> Vec<uuid::Uuid> {
    let mut ids: Vec<_> = state.sessions.iter().map(|(sid, slot)| ((slot.segment, slot.block), *sid)).collect();
    ids.sort_unstable_by_key(|(place, _)| *place);
    ids.into_iter().map(|(_, sid)| sid).collect()
}

fn forget(state: &mut State, number: u32) {
    if let Some(scanned) = state.segments.remove(&number) {
        state.numbers.remove(&scanned.name);
        state.sessions.retain(|_, slot| slot.segment != number);
        let State { arrivals, sessions, .. } = state;
        arrivals.retain(|(_, sid)| sessions.contains_key(sid));
    }
    state.cache.retain(|((n, _), _)| *n != number);
}

/// Reads block headers from where the last scan of this segment stopped.
fn scan(state: &mut State, number: u32, name: Arc<str>, path: &Path, len: u64) -> io::Result<()> {
    let mut file = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let scanned = state.segments.entry(number).or_insert_with(|| Scanned {
        name,
        next: 0,
        len: 0,
        closed: false,
        sessions: 0,
        blocks: Vec::new(),
        dictionary: None,
    });
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
                file.seek_relative(i64::from(header.zlen))?;
                let block = scanned.blocks.len() as u32;
                scanned.blocks.push(BlockSpan::of(&header));
                scanned.sessions += header.sids.len();
                found.extend(header.sids.iter().map(|sid| (*sid, Slot { segment: number, block })));
                scanned.next = header.end();
            }
            Record::End { .. } => {
                scanned.closed = true;
                break;
            }
            Record::Eof | Record::Torn(_) => break,
        }
    }
    scanned.len = len;
    if scanned.closed {
        scanned.blocks.shrink_to_fit();
    }
    for (sid, slot) in found {
        state.arrivals.push_back((state.next_arrival, sid));
        state.next_arrival += 1;
        state.sessions.insert(sid, slot);
    }
    // Nobody has asked for a while (no indexer runs here): whoever asks later is told every
    // session, so what is kept for it stays bounded.
    let over = state.arrivals.len().saturating_sub(MAX_ARRIVALS_KEPT);
    if over > 0 {
        state.arrivals.drain(..over);
        state.dropped_below = state.arrivals.front().map_or(state.next_arrival, |(number, _)| *number);
    }
    Ok(())
}
