//! What a recorded statement is: pgaudit's class, the tables it touches and its shape's
//! fingerprint, for PostgreSQL, MongoDB and DynamoDB alike. Computed when recordings are read
//! (export, search, report), never on a session's path.

pub mod classify;
pub mod enrich;
pub mod shape;

pub use classify::{classify_event, Classified, StatementClass};
pub mod parameters;
