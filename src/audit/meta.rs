//! What stays fixed for one session: who, which database, which proxy, which connection.

use std::collections::BTreeMap;

use super::codes::Protocol;

/// Who is behind the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserMeta {
    /// The person (or program) as dbtape identified them.
    pub user: String,
    /// Set for DynamoDB, where the upstream identity is an IAM role.
    pub aws_role_arn: String,
}

/// Which database the session reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseMeta {
    /// The database's name in dbtape's config (Teleport's database resource name).
    pub service: String,
    pub protocol: Protocol,
    pub uri: String,
    pub name: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub aws_region: String,
    /// `self-hosted`, `rds`, `dynamodb`, ...
    pub db_type: String,
}

/// The proxy instance; Teleport fills this only on `db.session.start`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerMeta {
    pub server_id: String,
    pub hostname: String,
    pub addr: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionMeta {
    pub local_addr: String,
    pub remote_addr: String,
    pub user_agent: String,
}

/// Everything that stays fixed for one session; shared by all of its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionContext {
    pub sid: String,
    pub cluster_name: String,
    pub user: UserMeta,
    pub database: DatabaseMeta,
    pub server: ServerMeta,
    pub connection: ConnectionMeta,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub success: bool,
    pub error: String,
    pub message: String,
}

impl Status {
    pub fn ok() -> Self {
        Status { success: true, ..Status::default() }
    }

    pub fn failed(error: impl Into<String>, message: impl Into<String>) -> Self {
        Status { success: false, error: error.into(), message: message.into() }
    }
}
