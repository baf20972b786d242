//! Audit events: the typed catalogue, the session metadata every event carries, and their
//! JSON wire shape. The port protocols hand events to is `recording::AuditPort`.

mod capture;
mod codes;
mod event;
mod json_body;
mod meta;
mod record;
pub mod time;

pub use capture::{EventNotes, Truncation};
pub use codes::{EventCode, EventType, Protocol};
pub use event::{fixed_fields_json, AuditEvent, EventBody};
pub use json_body::JsonBody;
pub use meta::{ConnectionMeta, DatabaseMeta, ServerMeta, SessionContext, Status, UserMeta};
pub use record::RecordedEvent;
pub use time::{format_time, now_ms};
