//! Recording log: format, writer, reader, store, signing, verification and crash recovery.
//! Protocols reach it only through `AuditPort`, the per-session port they hand events to.

pub mod compact;
mod decompress;
pub mod disk;
pub mod events;
pub mod format;
mod port;
pub mod reader;
pub mod recover;
pub mod scan;
pub mod segment;
pub mod store;
pub mod upload;
pub mod verify;
pub mod writer;

pub use port::{AuditError, AuditPort};
pub use reader::{FrameReader, Next, ReadError, Tail};
pub use store::{validate_session_id, RecordingFile, RecordingState, RecordingStore, SessionSummary, StoreError};
pub use writer::{
    AppendTicket, FsyncPolicy, Recorder, RecorderConfig, RecordingError, RecordingMode, SessionLog, MAX_EVENT_BYTES,
    MAX_FRAME_TARGET_BYTES, MAX_QUERY_BYTES_LIMIT,
};
