//! Recording log: format, writer, reader, store, signing, verification and crash recovery.
//! Protocols never touch this module directly; they go through `audit::AuditPort`.

pub mod disk;
pub mod format;
pub mod reader;
pub mod recover;
pub mod scan;
pub mod signing;
pub mod store;
pub mod upload;
pub mod verify;
pub mod writer;

pub use reader::{FrameReader, Next, ReadError, Tail};
pub use store::{validate_session_id, RecordingState, RecordingStore, SessionSummary, StoreError};
pub use writer::{
    AppendTicket, FsyncPolicy, Recorder, RecorderConfig, RecordingError, RecordingMode, SessionLog, MAX_EVENT_BYTES,
    MAX_FRAME_TARGET_BYTES, MAX_QUERY_BYTES_LIMIT,
};
