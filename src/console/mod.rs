//! `dbtape review`: the web review console. A process of its own, apart from the proxy, that
//! reads the recordings with the access the CLI's review commands need and none of the
//! proxy's secrets, and serves HTTPS only. Reviewers log in with local accounts
//! (`dbtape reviewer add`: verifiers, never passwords) or through the company's OpenID
//! Connect provider (`oidc`); every view, search and export is
//! itself recorded as a signed `session.recording.access` event (`access`).
//!
//! Pages are rendered on the server by askama, which escapes everything; recorded text
//! also has its control and bidirectional characters made visible (`text`). The one script
//! is served by the console itself, and the Content-Security-Policy allows nothing else.

mod access;
mod accounts;
mod api;
mod catalog;
mod http;
mod oidc;
mod pages;
mod text;

pub use accounts::{add_reviewer, ReviewerRole};
pub use http::{run, ReviewOptions};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Usage(String),
    #[error("reviewer-access recording: {0}")]
    Access(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Review(#[from] crate::review::ReviewError),
}
