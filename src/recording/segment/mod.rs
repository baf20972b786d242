//! Segments: short sessions, once sealed, packed many to a file (`segments/*.dseg`) and
//! uploaded as one object, instead of three files and three PUTs each. A session records
//! to its own file while live, exactly as before, so crash safety is unchanged; sealing
//! moves its recording, signed manifest and sidecar, byte for byte, into the open segment.
//! `RecordingStore` finds a session in either place, so every reader sees no difference.

pub mod format;
mod index;
mod writer;

pub use index::{PackedSession, SegmentIndex, SegmentInfo};
pub use writer::{close_crashed, SegmentWriter};

use std::io;

/// Blocks are small and written once, read rarely: a middling level costs little.
const LEVEL: i32 = 3;

fn decompress(compressed: &[u8], raw_len: u32, dictionary: Option<&[u8]>) -> io::Result<Vec<u8>> {
    let out = super::decompress::decompress(compressed, raw_len as usize, dictionary.unwrap_or_default())?;
    if out.len() != raw_len as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a segment block decompressed to another size than recorded"));
    }
    Ok(out)
}

/// The dictionary later blocks of a segment are compressed against, from its first block's
/// decompressed payload.
fn dictionary_of(first_payload: &[u8]) -> &[u8] {
    &first_payload[..first_payload.len().min(format::DICTIONARY_BYTES)]
}

/// Where a folder's segments live.
pub fn segments_dir(recordings: &std::path::Path) -> std::path::PathBuf {
    recordings.join("segments")
}

pub use crate::config::SegmentSettings;
