//! AWS: credentials, STS, SigV4 signing and verification, RDS tokens, MONGODB-AWS.

pub mod credentials;
pub mod mongodb_aws;
pub mod rds_token;
pub mod sigv4;
pub mod sigv4_verify;
