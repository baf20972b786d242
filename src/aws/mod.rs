//! AWS: credentials (default chain, optionally through AssumeRole) and RDS IAM auth tokens.

pub mod credentials;
pub mod mongodb_aws;
pub mod rds_token;
