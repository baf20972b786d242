//! The ground floor: small helpers every other module may use and that use no other module
//! of the crate (hex digits, poison-tolerant locks, AWS ARNs).

pub mod arn;
pub mod cidr;
pub mod hex;
pub mod sync;
