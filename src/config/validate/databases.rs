//! `[[databases]]`: names, listeners, upstreams, TLS, upstream auth and AWS options.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use super::super::model::{AuthMethod, ClientTlsMode, DatabaseConfig, UpstreamTlsMode};
use super::super::secret::SecretRef;
use super::{check_file, Issues};
use crate::audit::Protocol;
use crate::util::arn::is_role_arn;

pub(super) fn check_database(
    i: usize,
    db: &mut DatabaseConfig,
    base: &Path,
    names: &mut BTreeSet<String>,
    listens: &mut BTreeSet<SocketAddr>,
    issues: &mut Issues<'_>,
) {
    let key = |field: &str| format!("databases[{i}].{field}");
    let valid_name = !db.name.is_empty() && db.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid_name {
        issues.add(key("name"), format!("{:?} is not a valid name", db.name), "use letters, digits, '-', '_' or '.', e.g. \"orders-pg\"");
    } else if !names.insert(db.name.clone()) {
        issues.add(key("name"), format!("{:?} is used by another database", db.name), "give every database a unique name");
    }
    let protocol = Protocol::parse(&db.protocol_name).filter(|p| !matches!(p, Protocol::Review | Protocol::Proxy));
    match protocol {
        Some(protocol) => db.protocol = protocol,
        None => issues.add(
            key("protocol"),
            format!("{:?} is not a protocol", db.protocol_name),
            "use \"postgres\", \"mongodb\" or \"dynamodb\"",
        ),
    }
    match db.listen.parse::<SocketAddr>() {
        Ok(addr) => {
            if addr.port() != 0 && !listens.insert(addr) {
                issues.add(key("listen"), format!("{addr} is used by another database"), "give every database its own port");
            }
        }
        Err(_) => {
            issues.add(key("listen"), format!("{:?} is not a socket address", db.listen), "write host:port, e.g. \"127.0.0.1:15432\"")
        }
    }
    check_proxy_protocol(db, &key, issues);
    check_pool(db, protocol, &key, issues);
    let scheme_ok = match protocol {
        Some(Protocol::Postgres) => db.upstream.starts_with("postgres://") || db.upstream.starts_with("postgresql://"),
        Some(Protocol::MongoDb) => db.upstream.starts_with("mongodb://"),
        Some(Protocol::DynamoDb) => db.upstream.starts_with("https://") || db.upstream.starts_with("http://") || db.upstream.is_empty(),
        Some(Protocol::Review | Protocol::Proxy) | None => true,
    };
    if db.upstream.is_empty() && protocol != Some(Protocol::DynamoDb) {
        issues.add(key("upstream"), "is empty", "give the real database's URI, e.g. \"postgres://db.internal:5432/app\"");
    } else if !scheme_ok {
        issues.add(
            key("upstream"),
            format!("{:?} does not suit protocol {}", db.upstream, db.protocol_name),
            "use postgres://host:port/db, mongodb://host:port or https://dynamodb.<region>.amazonaws.com",
        );
    }
    let tls = &mut db.client_tls;
    let mode = tls.effective_mode();
    if mode != ClientTlsMode::Disabled {
        match tls.cert.as_mut() {
            Some(cert) => check_file(key("client_tls.cert"), cert, base, "proxy's certificate chain", issues),
            None => issues.add(
                key("client_tls.cert"),
                format!("is required when client_tls.mode is {mode:?}"),
                "set cert and key, or set client_tls.mode = \"disabled\"",
            ),
        }
        match tls.key.as_mut() {
            Some(k) => check_file(key("client_tls.key"), k, base, "proxy's private key", issues),
            None => issues.add(
                key("client_tls.key"),
                format!("is required when client_tls.mode is {mode:?}"),
                "set cert and key, or set client_tls.mode = \"disabled\"",
            ),
        }
    }
    if let Some(ca) = tls.client_ca.as_mut() {
        check_file(key("client_tls.client_ca"), ca, base, "CA bundle for client certificates", issues);
        if mode == ClientTlsMode::Disabled {
            issues.add(
                key("client_tls.client_ca"),
                "mTLS needs TLS, but client_tls.mode is \"disabled\"",
                "set client_tls.mode = \"required\"",
            );
        }
    }
    if let Some(ca) = db.upstream_tls.ca.as_mut() {
        check_file(key("upstream_tls.ca"), ca, base, "CA bundle for the upstream's certificate", issues);
    }
    match db.auth.method {
        AuthMethod::Password => match db.auth.password.as_mut() {
            None if protocol != Some(Protocol::DynamoDb) => issues.add(
                key("auth.password"),
                "is required when auth.method is \"password\"",
                "set auth.password = { env = \"NAME\" } or { file = \"path\" }, or choose auth.method = \"aws_iam\" or \"none\"",
            ),
            None => {}
            Some(SecretRef::Inline(_)) => issues.add(
                key("auth.password"),
                "is written inline; secrets must not sit in the config file",
                "move it to an env var or a file: auth.password = { env = \"NAME\" } or { file = \"path\" }",
            ),
            Some(secret) => {
                secret.resolve_paths(base);
                if let Err(e) = secret.read() {
                    issues.add(key("auth.password"), e.to_string(), "set the variable or create the file before starting dbtape");
                }
            }
        },
        AuthMethod::AwsIam => {
            if db.aws.region.is_empty() {
                issues.add(
                    key("aws.region"),
                    "is required when auth.method is \"aws_iam\"",
                    "set the database's AWS region, e.g. \"us-east-1\"",
                );
            }
            if db.upstream_tls.mode == UpstreamTlsMode::Disable && protocol != Some(Protocol::DynamoDb) {
                issues.add(key("upstream_tls.mode"), "IAM tokens are never sent without TLS", "set upstream_tls.mode = \"verify-full\"");
            }
        }
        AuthMethod::None => {}
    }
    if protocol == Some(Protocol::DynamoDb) && db.aws.region.is_empty() {
        issues.add(key("aws.region"), "is required for dynamodb", "set the table's AWS region, e.g. \"us-east-1\"");
    }
    let duration = db.aws.session_duration;
    if duration < std::time::Duration::from_secs(900) || duration > std::time::Duration::from_secs(12 * 3600) {
        issues.add(key("aws.session_duration"), format!("{duration:?} is out of range"), "use 15m to 12h; AWS refuses other lengths");
    } else if !db.aws.assume_role_arn.is_empty() && duration > crate::config::CHAINED_SESSION_LIMIT {
        issues.add(
            key("aws.session_duration"),
            format!("{duration:?} is longer than AWS allows a chained role session (assume_role_arn is set)"),
            "use at most 1h",
        );
    }
    if db.aws.refresh_before_expiry >= duration {
        issues.add(
            key("aws.refresh_before_expiry"),
            "is not shorter than aws.session_duration, so credentials would never be fresh",
            "use a few minutes, e.g. \"5m\" (the default)",
        );
    }
    let aws = &db.aws;
    let account_ok = aws.account_id.len() == 12 && aws.account_id.bytes().all(|b| b.is_ascii_digit());
    if !aws.account_id.is_empty() && !account_ok {
        issues.add(
            key("aws.account_id"),
            format!("{:?} is not a 12-digit AWS account id", aws.account_id),
            "write the account id as 12 digits, quoted",
        );
    }
    if !aws.assume_role_arn.is_empty() && !is_role_arn(&aws.assume_role_arn) {
        issues.add(
            key("aws.assume_role_arn"),
            format!("{:?} is not an IAM role ARN", aws.assume_role_arn),
            "use arn:aws:iam::<12-digit account>:role/<name>",
        );
    }
}

fn check_pool(db: &DatabaseConfig, protocol: Option<Protocol>, key: &dyn Fn(&str) -> String, issues: &mut Issues<'_>) {
    let Some(pool) = &db.pool else { return };
    if protocol.is_some_and(|p| p != Protocol::Postgres) {
        issues.add(
            key("pool"),
            format!("pools PostgreSQL connections only, and this database is {}", db.protocol_name),
            "remove [databases.pool]",
        );
    }
    if !(1..=10_000).contains(&pool.max_size) {
        issues.add(key("pool.max_size"), format!("{} is out of range", pool.max_size), "use 1 to 10000, e.g. 20 (the default)");
    }
    if pool.idle_timeout < std::time::Duration::from_secs(1) {
        issues.add(key("pool.idle_timeout"), "is under a second", "use e.g. \"5m\" (the default)");
    }
    if pool.reset.trim().is_empty() || pool.reset.contains('\0') {
        issues.add(key("pool.reset"), "is empty", "use \"DISCARD ALL\" (the default), which clears every session state it can");
    }
}

/// A listener that takes PROXY headers must say from whom: a header from anyone would let
/// any client claim any address.
fn check_proxy_protocol(db: &DatabaseConfig, key: &dyn Fn(&str) -> String, issues: &mut Issues<'_>) {
    if db.proxy_protocol == crate::config::ProxyProtocol::Off {
        if !db.trusted_proxies.is_empty() {
            issues.add(
                key("trusted_proxies"),
                "is set but proxy_protocol is off",
                "set proxy_protocol = \"v2\" (or \"v1\"), or remove trusted_proxies",
            );
        }
        return;
    }
    if db.trusted_proxies.is_empty() {
        issues.add(
            key("trusted_proxies"),
            "is empty, so every PROXY header would be refused",
            "list the load balancers' address blocks, e.g. [\"10.0.0.0/16\"]",
        );
    }
    for (j, block) in db.trusted_proxies.iter().enumerate() {
        if let Err(e) = block.parse::<crate::util::cidr::Cidr>() {
            issues.add(key(&format!("trusted_proxies[{j}]")), e, "write an address or address/prefix, e.g. \"10.0.0.0/16\"");
        }
    }
}
