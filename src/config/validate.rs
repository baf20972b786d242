//! Semantic checks. Each finds as many problems as it can rather than stopping at the first.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::model::{AuthMethod, ClientTlsMode, DatabaseConfig, RawConfig, RecordingSection, UpstreamTlsMode, UserConfig};
use super::secret::SecretRef;
use super::{Config, ConfigError, ConfigIssue};
use super::{FsyncPolicy, RecordingMode};
use crate::audit::Protocol;
use crate::util::arn::{is_role_arn, role_arn_for};

struct Issues<'a> {
    file: &'a Path,
    list: Vec<ConfigIssue>,
}

impl Issues<'_> {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        self.list.push(ConfigIssue { file: self.file.to_path_buf(), key: key.into(), message: message.into(), fix: fix.into() });
    }
}

/// More connection threads than this is a typo, not a tuning choice.
const MAX_WORKERS: usize = 1024;

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_relative() {
        base.join(path)
    } else {
        path.to_path_buf()
    }
}

pub(super) fn check(raw: RawConfig, file: &Path, base: &Path) -> Result<Config, ConfigError> {
    let mut issues = Issues { file, list: Vec::new() };
    let recording = check_recording(&raw, base, &mut issues);
    let mut server = raw.server;
    if server.cluster_name.trim().is_empty() {
        issues.add("server.cluster_name", "is empty", "set a name for this proxy fleet, e.g. \"dbtape\"");
    }
    if server.workers > MAX_WORKERS {
        issues.add(
            "server.workers",
            format!("{} is too many threads", server.workers),
            format!("use 0 (one per CPU) or a number up to {MAX_WORKERS}"),
        );
    }
    if server.login_timeout.is_zero() || server.login_timeout > std::time::Duration::from_secs(600) {
        issues.add(
            "server.login_timeout",
            format!("{:?} is out of range", server.login_timeout),
            "use a duration between 1ms and 10m, e.g. \"10s\" (the default)",
        );
    }
    if server.max_pending_logins == 0 {
        issues.add("server.max_pending_logins", "is 0, so no one could log in", "use a positive number; the default is 1024");
    }
    if server.max_pending_logins_per_source == 0 {
        issues.add("server.max_pending_logins_per_source", "is 0, so no one could log in", "use a positive number; the default is 64");
    }
    server.hostname =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "dbtape".into());
    if server.server_id.is_empty() {
        server.server_id = server.hostname.clone();
    }
    if let Some(s3) = &raw.storage.s3 {
        if !["", "AES256", "aws:kms"].contains(&s3.server_side_encryption.as_str()) {
            issues.add(
                "storage.s3.server_side_encryption",
                format!("{:?} is not a server-side encryption", s3.server_side_encryption),
                "use \"AES256\", \"aws:kms\" or leave it empty for the bucket's default",
            );
        }
        match s3.object_lock_mode.as_str() {
            "" => {}
            "GOVERNANCE" | "COMPLIANCE" if s3.object_lock_days > 0 => {}
            "GOVERNANCE" | "COMPLIANCE" => issues.add(
                "storage.s3.object_lock_days",
                "is 0, so Object Lock would protect nothing",
                "set the number of days recordings must stay undeletable, e.g. 2555 (7 years)",
            ),
            other => issues.add(
                "storage.s3.object_lock_mode",
                format!("{other:?} is not an Object Lock mode"),
                "use \"GOVERNANCE\", \"COMPLIANCE\" or leave it empty",
            ),
        }
        // AWS refuses parts under 5 MiB; S3-compatible stores (a custom endpoint) set their own floor.
        let floor = if s3.endpoint.is_empty() { 5 * 1024 * 1024 } else { 64 * 1024 };
        if s3.part_size < floor {
            issues.add(
                "storage.s3.part_size",
                format!("{} is below the {floor}-byte minimum part", s3.part_size),
                "use at least 5242880 (S3's minimum)",
            );
        }
        if !["keep", "delete"].contains(&s3.local_retention.as_str()) {
            issues.add(
                "storage.s3.local_retention",
                format!("{:?} is not a retention", s3.local_retention),
                "use \"keep\" (local copies stay) or \"delete\" (removed once the upload is confirmed)",
            );
        }
        if s3.bucket.trim().is_empty() {
            issues.add("storage.s3.bucket", "is empty", "name the bucket recordings are uploaded to, or remove [storage.s3]");
        }
        if s3.region.trim().is_empty() {
            issues.add("storage.s3.region", "is empty", "set the bucket's region, e.g. \"us-east-1\"");
        }
        if !s3.assume_role_arn.is_empty() && !is_role_arn(&s3.assume_role_arn) {
            issues.add(
                "storage.s3.assume_role_arn",
                format!("{:?} is not an IAM role ARN", s3.assume_role_arn),
                "use arn:aws:iam::<12-digit account>:role/<name>",
            );
        }
    }
    let mut databases = raw.databases;
    let mut names = BTreeSet::new();
    let mut listens = BTreeSet::new();
    for (i, db) in databases.iter_mut().enumerate() {
        check_database(i, db, base, &mut names, &mut listens, &mut issues);
    }
    let mut users = raw.users;
    let mut user_names = BTreeSet::new();
    for (i, user) in users.iter_mut().enumerate() {
        check_user(i, user, base, &names, &mut user_names, &mut issues);
    }
    check_dynamodb_identities(&databases, &users, &mut issues);
    if !issues.list.is_empty() {
        return Err(ConfigError { issues: issues.list });
    }
    Ok(Config { source: file.to_path_buf(), server, recording, storage: raw.storage, databases, users })
}

/// Only the `[recording]` section, checked: what review commands need. Nothing else is
/// checked, and no secret is read, so an auditor needs no proxy secrets to run them.
pub(super) fn check_recording_only(raw: &RawConfig, file: &Path, base: &Path) -> Result<RecordingSection, ConfigError> {
    let mut issues = Issues { file, list: Vec::new() };
    let recording = check_recording(raw, base, &mut issues);
    if !issues.list.is_empty() {
        return Err(ConfigError { issues: issues.list });
    }
    Ok(recording)
}

fn check_recording(raw: &RawConfig, base: &Path, issues: &mut Issues<'_>) -> RecordingSection {
    let r = &raw.recording;
    let mode = match r.mode.as_str() {
        "strict" => RecordingMode::Strict,
        "best_effort" => RecordingMode::BestEffort,
        other => {
            issues.add(
                "recording.mode",
                format!("{other:?} is not a mode"),
                "use \"strict\" (the default: a recording failure stops the session) or \"best_effort\"",
            );
            RecordingMode::Strict
        }
    };
    let fsync = match r.fsync.as_str() {
        "always" => FsyncPolicy::Always,
        "batch" => FsyncPolicy::Batch,
        "never" => FsyncPolicy::Never,
        other => {
            issues.add(
                "recording.fsync",
                format!("{other:?} is not an fsync policy"),
                "use \"always\", \"batch\" (the default) or \"never\"",
            );
            FsyncPolicy::Batch
        }
    };
    let batch_interval = match humantime::parse_duration(&r.batch_interval) {
        Ok(d) if !d.is_zero() && d <= std::time::Duration::from_secs(60) => d,
        Ok(_) => {
            issues.add(
                "recording.batch_interval",
                format!("{:?} is out of range", r.batch_interval),
                "use a duration between 1ms and 60s, e.g. \"200ms\"",
            );
            std::time::Duration::from_millis(200)
        }
        Err(e) => {
            issues.add("recording.batch_interval", format!("{:?}: {e}", r.batch_interval), "write a duration such as \"200ms\" or \"1s\"");
            std::time::Duration::from_millis(200)
        }
    };
    if !(4096..=super::MAX_FRAME_TARGET_BYTES).contains(&r.frame_target_bytes) {
        issues.add(
            "recording.frame_target_bytes",
            format!("{} is out of range", r.frame_target_bytes),
            "use a size between 4096 and 33554432 bytes; the default is 262144",
        );
    }
    if !(1024..=super::MAX_QUERY_BYTES_LIMIT).contains(&r.max_query_bytes) {
        issues.add(
            "recording.max_query_bytes",
            format!("{} is out of range", r.max_query_bytes),
            "use a size between 1024 and 2097152 bytes; the default is 1048576",
        );
    }
    if r.max_backlog_bytes < 1024 * 1024 {
        issues.add(
            "recording.max_backlog_bytes",
            format!("{} is too small", r.max_backlog_bytes),
            "use at least 1048576 bytes; the default is 268435456 (256 MiB)",
        );
    }
    for (i, pattern) in r.redact_patterns.iter().enumerate() {
        if let Err(e) = super::redact_pattern(pattern) {
            issues.add(
                format!("recording.redact_patterns[{i}]"),
                format!("is not a regular expression: {e}"),
                "fix the pattern (Rust regex syntax) or remove it",
            );
        }
    }
    if !(1..=19).contains(&r.zstd_level) {
        issues.add("recording.zstd_level", format!("{} is out of range", r.zstd_level), "use a zstd level from 1 to 19; the default is 1");
    }
    for (i, key) in r.trusted_keys.iter().enumerate() {
        let path = resolve(base, key);
        if let Err(e) = crate::signing::load_public_key(&path) {
            issues.add(
                format!("recording.trusted_keys[{i}]"),
                format!("{e}"),
                "name a public key file another instance wrote (its signing_key with .pub appended, also published as keys/<server_id>.pub in the bucket), or remove the entry",
            );
        }
    }
    if r.dir.as_os_str().is_empty() {
        issues.add("recording.dir", "is empty", "name the folder recordings are written to, e.g. \"recordings\"");
    }
    RecordingSection {
        dir: resolve(base, &r.dir),
        mode,
        fsync,
        batch_interval,
        signing_key: resolve(base, &r.signing_key),
        frame_target_bytes: r.frame_target_bytes,
        zstd_level: r.zstd_level,
        max_query_bytes: r.max_query_bytes,
        redact_patterns: r.redact_patterns.clone(),
        max_backlog_bytes: r.max_backlog_bytes,
        min_free_bytes: r.min_free_bytes,
        trusted_keys: r.trusted_keys.iter().map(|k| resolve(base, k)).collect(),
    }
}

/// DynamoDB users sign with a key id and secret dbtape issued them, and act as IAM roles.
fn check_dynamodb_identities(databases: &[DatabaseConfig], users: &[UserConfig], issues: &mut Issues<'_>) {
    let mut key_ids = BTreeSet::new();
    for (i, user) in users.iter().enumerate() {
        let key = |field: &str| format!("users[{i}].{field}");
        if let Some(id) = &user.aws_access_key_id {
            let well_formed = (4..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
            if !well_formed {
                issues.add(
                    key("aws_access_key_id"),
                    format!("{id:?} is not an access key id"),
                    "use 4 to 128 letters and digits, e.g. \"DBTAPEALICE0001\"",
                );
            } else if !key_ids.insert(id.clone()) {
                issues.add(
                    key("aws_access_key_id"),
                    format!("{id:?} is given to another user too"),
                    "give every user their own access key id",
                );
            }
            if user.aws_secret_access_key.is_none() {
                issues.add(
                    key("aws_secret_access_key"),
                    "is required with aws_access_key_id",
                    "set aws_secret_access_key = { env = \"NAME\" } or { file = \"path\" } (any long random string)",
                );
            }
        }
        for (g, grant) in user.grants.iter().enumerate() {
            let Some(db) = databases.iter().find(|d| d.name == grant.database) else { continue };
            if db.protocol != Protocol::DynamoDb {
                continue;
            }
            if user.aws_access_key_id.is_none() {
                issues.add(
                    key("aws_access_key_id"),
                    format!("is required to reach DynamoDB database {:?}", db.name),
                    "give the user an access key id and secret for their AWS clients",
                );
            }
            for role in &grant.db_users {
                if role_arn_for(role, &db.aws.account_id).is_none() {
                    issues.add(
                        format!("users[{i}].grants[{g}].db_users"),
                        format!("{role:?} is neither an IAM role ARN nor a role name with the database's aws.account_id set"),
                        "write the role's ARN, arn:aws:iam::<account>:role/<name>, or set aws.account_id on the database",
                    );
                }
            }
        }
    }
}

fn check_file(key: String, path: &mut PathBuf, base: &Path, what: &str, issues: &mut Issues<'_>) {
    *path = resolve(base, path);
    if !path.is_file() {
        issues.add(key, format!("{} does not exist", path.display()), format!("point it at the {what} (PEM), relative to the config file"));
    }
}

fn check_database(
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
    let protocol = Protocol::parse(&db.protocol_name);
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
    let scheme_ok = match protocol {
        Some(Protocol::Postgres) => db.upstream.starts_with("postgres://") || db.upstream.starts_with("postgresql://"),
        Some(Protocol::MongoDb) => db.upstream.starts_with("mongodb://"),
        Some(Protocol::DynamoDb) => db.upstream.starts_with("https://") || db.upstream.starts_with("http://") || db.upstream.is_empty(),
        None => true,
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
    } else if !db.aws.assume_role_arn.is_empty() && duration > super::CHAINED_SESSION_LIMIT {
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

fn check_user(
    i: usize,
    user: &mut UserConfig,
    base: &Path,
    databases: &BTreeSet<String>,
    names: &mut BTreeSet<String>,
    issues: &mut Issues<'_>,
) {
    let key = |field: &str| format!("users[{i}].{field}");
    if user.name.trim().is_empty() || user.name.contains('@') {
        issues.add(
            key("name"),
            format!("{:?} is not a valid user name", user.name),
            "use a non-empty name without '@' (it separates user@database when connecting)",
        );
    } else if !names.insert(user.name.clone()) {
        issues.add(key("name"), format!("{:?} is defined twice", user.name), "merge the two entries");
    }
    if user.scram_verifier.is_none() && user.cert_cn.is_none() && user.aws_access_key_id.is_none() {
        issues.add(
            key("scram_verifier"),
            "the user has no way to be identified",
            "set scram_verifier (from `dbtape user add`), cert_cn for mTLS, or aws_access_key_id for DynamoDB",
        );
    }
    match user.aws_secret_access_key.as_mut() {
        Some(SecretRef::Inline(_)) => issues.add(
            key("aws_secret_access_key"),
            "is written inline; secrets must not sit in the config file",
            "move it to an env var or a file: aws_secret_access_key = { env = \"NAME\" } or { file = \"path\" }",
        ),
        Some(secret) => {
            secret.resolve_paths(base);
            if let Err(e) = secret.read() {
                issues.add(key("aws_secret_access_key"), e.to_string(), "set the variable or create the file before starting dbtape");
            }
        }
        None => {}
    }
    if let Some(verifier) = user.scram_verifier.as_mut() {
        verifier.resolve_paths(base);
        match verifier.read() {
            Ok(v) if v.starts_with("SCRAM-SHA-256$") => {}
            Ok(_) => issues.add(
                key("scram_verifier"),
                "is not a SCRAM-SHA-256 verifier",
                "generate one with `dbtape user add NAME` and paste its output",
            ),
            Err(e) => issues.add(key("scram_verifier"), e.to_string(), "set the variable or create the file before starting dbtape"),
        }
    }
    if user.grants.is_empty() {
        issues.add(key("grants"), "the user may reach no database", "add [[users.grants]] with database and db_users");
    }
    for (g, grant) in user.grants.iter().enumerate() {
        if !databases.contains(&grant.database) {
            issues.add(
                format!("users[{i}].grants[{g}].database"),
                format!("{:?} is not a configured database", grant.database),
                "use the name of one of the [[databases]] entries",
            );
        }
        if grant.db_users.is_empty() || grant.db_users.iter().any(|u| u.trim().is_empty()) {
            issues.add(
                format!("users[{i}].grants[{g}].db_users"),
                "is empty or holds an empty name",
                "list the upstream users this person may act as, e.g. [\"reader\"]",
            );
        }
    }
}
