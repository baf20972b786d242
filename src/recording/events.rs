//! Streams a recording's events in order, frame by frame, in constant memory. With `follow`
//! it waits at the end of a live recording for the writer to add more.

use std::fs::File;

use crate::recording::RecordingFile;
use std::io::BufReader;
use std::path::Path;
use std::time::Duration;

use crate::recording::format::FrameKind;
use crate::recording::format::{SessionHeader, FLAG_COMPACT};
use crate::recording::reader::{event_lines, Frame, FrameReader, Next, Position, ReadError, Tail};
use crate::recording::RecordingStore;

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    Sealed,
    /// No trailer: the recording is live, or its writer died between frames.
    Unsealed,
    Truncated {
        offset: u64,
        torn_bytes: u64,
    },
    Damaged(String),
    /// The viewer quit before the end.
    Stopped,
}

impl StreamEnd {
    /// A note for stderr when the end is not a clean seal.
    pub fn warning(&self, sid: &str) -> Option<String> {
        match self {
            StreamEnd::Sealed | StreamEnd::Stopped => None,
            StreamEnd::Unsealed => Some(format!("note: recording {sid} is not sealed (live, or its writer stopped)")),
            StreamEnd::Truncated { offset, torn_bytes } => Some(format!(
                "warning: recording {sid} is truncated at byte {offset} ({torn_bytes} torn bytes); every whole frame before it was shown"
            )),
            StreamEnd::Damaged(problem) => {
                Some(format!("error: recording {sid} is damaged: {problem}; events before the damage were shown"))
            }
        }
    }
}

/// A frame's time range and event count, for skipping whole frames when filtering.
#[derive(Debug, Clone, Copy)]
pub struct FrameInfo {
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    pub events: u32,
    /// Where the stream stands after this frame; `EventStream::open_at` goes on from there.
    /// None for the rebuilt end event, which is not in the file.
    pub after: Option<Position>,
}

pub struct EventStream {
    reader: FrameReader<BufReader<RecordingFile>>,
    follow: bool,
    is_live: Box<dyn Fn() -> bool + Send>,
    /// Frame 0, once read: it holds the fixed fields that compact frames leave out.
    header: Option<SessionHeader>,
    /// Reused for compact frames' lines with the fixed fields spliced back in.
    expanded: Vec<u8>,
    /// The end event crash recovery rebuilt and signed in the manifest, given after the
    /// recording's own events.
    rebuilt_end: Option<Vec<u8>>,
}

impl EventStream {
    pub fn open(store: &RecordingStore, sid: &str, follow: bool) -> std::io::Result<Self> {
        let file = store.open_recording(sid)?;
        let reader = FrameReader::new(BufReader::with_capacity(file.read_buffer_size(), file), sid)?;
        let probe = store.clone();
        let owned_sid = sid.to_string();
        let rebuilt_end = store.read_manifest(sid).ok().flatten().and_then(|m| m.body.rebuilt_end).and_then(|event| {
            let mut line = serde_json::to_vec(&event).ok()?;
            line.push(b'\n');
            Some(line)
        });
        Ok(EventStream {
            reader,
            follow,
            is_live: Box::new(move || probe.is_locked(&owned_sid)),
            header: None,
            expanded: Vec::new(),
            rebuilt_end,
        })
    }

    pub fn open_path(path: &Path, sid: &str) -> std::io::Result<Self> {
        let file = RecordingFile::File(File::open(path)?);
        let reader = FrameReader::new(BufReader::with_capacity(file.read_buffer_size(), file), sid)?;
        Ok(EventStream { reader, follow: false, is_live: Box::new(|| false), header: None, expanded: Vec::new(), rebuilt_end: None })
    }

    /// Opens a recording at a position an earlier stream of it reported (`FrameInfo::after`),
    /// so a follower reads only what the recording gained since, not the whole file again.
    /// Frame 0 is read first, for the fields compact frames leave out. Where the stream
    /// cannot go there, it starts from the beginning.
    pub fn open_at(store: &RecordingStore, sid: &str, at: Option<Position>) -> std::io::Result<Self> {
        let mut stream = EventStream::open(store, sid, false)?;
        let Some(at) = at else { return Ok(stream) };
        let session = match stream.reader.next_frame() {
            Ok(Next::Frame(frame)) if frame.header.kind == FrameKind::Session => serde_json::from_slice::<SessionHeader>(&frame.data).ok(),
            Err(ReadError::Io(e)) => return Err(e),
            _ => None,
        };
        match session {
            Some(session) => {
                stream.header = Some(session);
                if !stream.reader.skip_to(at)? {
                    return EventStream::open(store, sid, false);
                }
                Ok(stream)
            }
            None => EventStream::open(store, sid, false),
        }
    }

    /// Calls `on_frame` with each events frame's decompressed lines. `on_frame` returns false
    /// to stop early.
    pub fn for_each_frame(&mut self, mut on_frame: impl FnMut(FrameInfo, &[u8]) -> std::io::Result<bool>) -> std::io::Result<StreamEnd> {
        loop {
            let next = match self.reader.next_frame() {
                Ok(next) => next,
                Err(ReadError::Io(e)) => return Err(e),
                Err(e) => return Ok(StreamEnd::Damaged(e.to_string())),
            };
            match next {
                Next::Frame(Frame { header, data, .. }) => match header.kind {
                    FrameKind::Events => {
                        let info = FrameInfo {
                            min_time_ms: header.min_time_ms,
                            max_time_ms: header.max_time_ms,
                            events: header.events,
                            after: Some(self.reader.position()),
                        };
                        let whole = match &self.header {
                            Some(session) if header.flags & FLAG_COMPACT != 0 => {
                                self.expanded.clear();
                                for line in event_lines(&data) {
                                    session.expand_line(line, true, &mut self.expanded);
                                }
                                &self.expanded
                            }
                            _ => &data,
                        };
                        if !on_frame(info, whole)? {
                            return Ok(StreamEnd::Sealed);
                        }
                    }
                    FrameKind::Trailer => return Ok(StreamEnd::Sealed),
                    FrameKind::Session => match serde_json::from_slice::<SessionHeader>(&data) {
                        Ok(session) => self.header = Some(session),
                        Err(e) => return Ok(StreamEnd::Damaged(format!("unreadable session header: {e}"))),
                    },
                },
                Next::End(tail) => {
                    if self.follow && (self.is_live)() {
                        std::thread::sleep(Duration::from_millis(100));
                        self.reader.rewind_to_boundary()?;
                        continue;
                    }
                    if self.follow {
                        // The writer may have sealed between our read and the liveness probe.
                        self.reader.rewind_to_boundary()?;
                        self.follow = false;
                        continue;
                    }
                    if let Some(line) = self.rebuilt_end.take() {
                        let time = peek_time_ms(&line).unwrap_or_default();
                        on_frame(FrameInfo { min_time_ms: time, max_time_ms: time, events: 1, after: None }, &line)?;
                    }
                    return Ok(match tail {
                        Tail::Clean => StreamEnd::Unsealed,
                        Tail::Truncated { offset, torn_bytes } => StreamEnd::Truncated { offset, torn_bytes },
                    });
                }
            }
        }
    }

    /// Calls `on_event` with each event's JSON line.
    pub fn for_each_event(&mut self, mut on_event: impl FnMut(&[u8]) -> std::io::Result<bool>) -> std::io::Result<StreamEnd> {
        self.for_each_frame(|_, data| {
            for line in event_lines(data) {
                if !on_event(line)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }
}

/// Reads the `event` field without a full parse. Our writer always puts it second, so the
/// fast path is a prefix scan; anything else falls back to serde.
pub fn peek_event_type(line: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    const KEY: &[u8] = b"\"event\":\"";
    let window = &line[..line.len().min(48)];
    if let Some(at) = window.windows(KEY.len()).position(|w| w == KEY) {
        let rest = &line[at + KEY.len()..];
        if let Some(end) = rest.iter().position(|b| *b == b'"') {
            return std::str::from_utf8(&rest[..end]).ok().map(std::borrow::Cow::Borrowed);
        }
    }
    #[derive(serde::Deserialize)]
    struct Only {
        event: String,
    }
    serde_json::from_slice::<Only>(line).ok().map(|o| std::borrow::Cow::Owned(o.event))
}

/// An event line's `ei` without parsing the rest: the writer puts it first.
pub fn peek_ei(line: &[u8]) -> Option<u64> {
    if let Some(ei) = crate::recording::format::leading_ei(line) {
        return Some(ei);
    }
    #[derive(serde::Deserialize)]
    struct Ei {
        ei: u64,
    }
    serde_json::from_slice::<Ei>(line).ok().map(|e| e.ei)
}

/// Reads the `time` field as epoch milliseconds.
pub fn peek_time_ms(line: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"time\":\"";
    let at = line.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = line.get(at + KEY.len()..)?;
    let end = rest.iter().position(|b| *b == b'"')?;
    let text = std::str::from_utf8(rest.get(..end)?).ok()?;
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}
