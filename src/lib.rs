//! dbtape: an audit-centric database session recording proxy.

pub mod audit;
pub mod cli;
pub mod config;
pub mod recording;
pub mod replay;
pub mod server;
