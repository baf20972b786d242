//! Compliance review across recordings: a search index that only points
//! at events, and searches whose every hit is read back from its signed recording.

pub mod fields;
pub mod index;
pub mod indexer;
pub mod query;
pub mod report;

pub use index::{index_dir, IndexError, SearchIndex};
pub use query::{search, search_first, Hit, SearchFilter, SearchOutcome};
