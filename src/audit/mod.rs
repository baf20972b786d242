//! Audit events: the typed catalogue, its JSON wire shape, and the per-session port that
//! protocols hand events to.

mod capture;
mod codes;
mod event;
mod port;
mod record;

pub use capture::{EventNotes, Truncation};
pub use codes::{EventCode, EventType, Protocol};
pub use event::{
    fixed_fields_json, format_time, splice_fixed_fields, AuditEvent, ConnectionMeta, DatabaseMeta, EventBody, ServerMeta, SessionContext,
    Status, UserMeta,
};
pub use port::{now_ms, AuditError, AuditPort};
pub use record::RecordedEvent;
