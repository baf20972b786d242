//! Who a client is and what they may reach, for every protocol: SCRAM-SHA-256 (the same
//! verifier serves PostgreSQL and MongoDB logins) and the grants from the config.

pub mod grants;
pub mod scram;

pub use grants::{authorize, split_login, user_by_cn, user_by_name};
