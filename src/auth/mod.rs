//! Who a client is and what they may reach, for every protocol: SCRAM-SHA-256 (MongoDB's
//! SCRAM-SHA-256 uses the same math, so one stored verifier can serve both paths) and the
//! grants from the config.

pub mod directory;
pub mod grants;
pub mod scram;

pub use directory::{AccessKey, Directory, DirectoryError, Person, SharedDirectory};
pub use grants::{authorize, split_login};
