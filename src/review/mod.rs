//! What every review front end shares (the CLI's `ls`, `play`, `export`, `verify` and
//! `search`, and the web console to come): where the recordings are, which keys a review
//! trusts, time ranges as people write them, search filters and refused logins. Library
//! code: no argument parser, no terminal output; notes for the reviewer come back as values.

mod keys;
mod refused;
mod search_query;
mod source;
mod when;

pub use keys::key_ring;
pub use refused::refused_logins;
pub use search_query::SearchQuery;
pub use source::{locate, locate_session, Located, ReviewSource};
pub use when::{parse_when, time_range};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// What the reviewer asked for cannot be done as asked (a bad time, an unknown session).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::recording::StoreError),
    #[error(transparent)]
    Bucket(#[from] crate::recording::upload::UploadError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{sid}: {cause}")]
    Recording { sid: String, cause: String },
}

impl ReviewError {
    /// The exit status a command reports it with: 2 for a usage error, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ReviewError::Usage(_) => 2,
            _ => 1,
        }
    }
}
