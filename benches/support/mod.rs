//! What the benches that write recordings share.

use dbtape::audit::{ConnectionMeta, DatabaseMeta, Protocol, ServerMeta, SessionContext, UserMeta};

/// A session of `user` on an RDS database of `protocol`, with a fresh session id.
pub fn context(protocol: Protocol, user: &str) -> SessionContext {
    SessionContext {
        sid: uuid::Uuid::new_v4().to_string(),
        cluster_name: "prod".into(),
        user: UserMeta { user: user.into(), aws_role_arn: String::new() },
        database: DatabaseMeta {
            service: format!("{protocol:?}").to_lowercase(),
            protocol,
            uri: "db.internal:5432".into(),
            name: "orders".into(),
            user: "app".into(),
            labels: Default::default(),
            aws_region: String::new(),
            db_type: "rds".into(),
        },
        server: ServerMeta::default(),
        connection: ConnectionMeta::default(),
    }
}
