//! dbtape: an audit-centric database session recording proxy.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo, clippy::unimplemented))]

pub mod audit;
pub mod auth;
pub mod aws;
pub mod cli;
pub mod config;
pub mod console;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod lake;
pub mod metrics;
pub mod proxy;
pub mod recording;
pub mod replay;
pub mod review;
pub mod s3;
pub mod search;
pub mod server;
pub mod signing;
pub mod statement;
pub mod tasks;
pub mod util;
