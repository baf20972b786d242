//! The event lake: every recorded event also as a row of one Parquet table in the bucket,
//! partitioned by UTC day (`<prefix>events/event_date=YYYY-MM-DD/<server_id>-<seq>.parquet`),
//! for the SQL engines a fleet's auditors already run (Athena, Trino, Spark, DuckDB). The
//! writer runs off the sessions' path, in a low-priority background thread of `dbtape serve`,
//! and reads only what the recorder has written; the signed recordings stay the authority,
//! and `dbtape lake verify` checks the lake against them.

pub mod ddl;
pub mod journal;
pub mod ocsf;
pub mod table;
pub mod verify;
pub mod writer;

use std::path::PathBuf;

pub use writer::{LakeSettings, LakeWriter, Written};

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake journal {path}: {cause}")]
    Journal { path: PathBuf, cause: String },
    #[error("another process writes this recordings folder's lake ({0} is locked): stop it, or wait for it to finish")]
    Busy(PathBuf),
    #[error("reading recordings: {0}")]
    Recordings(String),
    #[error("parquet: {0}")]
    Parquet(String),
    #[error("bucket: {0}")]
    Upload(String),
}
