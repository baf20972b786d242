//! Config loading: the example is valid, and bad files get every error with file, key and fix.

mod common;

use std::path::Path;

use dbtape::config::Config;

fn example() -> std::path::PathBuf {
    example_env();
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/dbtape.toml")
}

/// The example's secrets come from the environment. Every test here sets them through this
/// one `Once` before it reads anything, so none reads the environment while it changes.
fn example_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("DBTAPE_ORDERS_PASSWORD", "from-env");
        std::env::set_var("DBTAPE_LIBRARY_PASSWORD", "from-env-too");
        std::env::set_var("DBTAPE_ALICE_AWS_SECRET", "alice-aws-secret");
    });
}

#[test]
fn the_example_config_is_valid_and_documents_defaults() {
    example_env();
    let config = Config::load(&example()).unwrap();
    assert_eq!(config.server.cluster_name, "dbtape");
    assert_eq!(config.server.workers, 0);
    // One worker per CPU: a single worker makes every session wait whenever its core is busy.
    assert_eq!(config.server.worker_count(), std::thread::available_parallelism().unwrap().get());
    assert_eq!(config.recording.mode, dbtape::recording::RecordingMode::Strict);
    assert_eq!(config.recording.fsync, dbtape::recording::FsyncPolicy::Batch);
    assert_eq!(config.recording.batch_interval, std::time::Duration::from_millis(200));
    assert!(config.recording.dir.ends_with("examples/../recordings"));
    let db = config.database("orders-pg").unwrap();
    assert_eq!(db.auth.password.as_ref().unwrap().read().unwrap(), "from-env");
    assert_eq!(db.client_tls.effective_mode(), dbtape::config::ClientTlsMode::Disabled);
    assert_eq!(db.upstream_tls.mode, dbtape::config::UpstreamTlsMode::VerifyFull);
    let mongo = config.database("library-mongo").unwrap();
    assert_eq!(mongo.protocol, dbtape::audit::Protocol::MongoDb);
    assert_eq!(mongo.auth.password.as_ref().unwrap().read().unwrap(), "from-env-too");
    let ddb = config.database("catalog-ddb").unwrap();
    assert_eq!(ddb.aws.session_duration, std::time::Duration::from_secs(3600));
    assert_eq!(
        dbtape::util::arn::role_arn_for("catalog-reader", &ddb.aws.account_id).unwrap(),
        "arn:aws:iam::123456789012:role/catalog-reader"
    );
    // Every key the loader knows appears in the example, so the example stays complete.
    let text = std::fs::read_to_string(example()).unwrap();
    for key in [
        "cluster_name",
        "server_id",
        "shutdown_grace",
        "log_format",
        "workers",
        "login_timeout",
        "max_pending_logins",
        "max_pending_logins_per_source",
        "max_failed_logins_per_source",
        "dir",
        "mode",
        "fsync",
        "batch_interval",
        "signing_key",
        "frame_target_bytes",
        "zstd_level",
        "max_query_bytes",
        "redact_patterns",
        "max_backlog_bytes",
        "bucket",
        "prefix",
        "region",
        "endpoint",
        "assume_role_arn",
        "external_id",
        "upload_retries",
        "force_path_style",
        "server_side_encryption",
        "kms_key_id",
        "object_lock_mode",
        "object_lock_days",
        "part_size",
        "local_retention",
        "scan_interval",
        "name",
        "protocol",
        "listen",
        "upstream",
        "db_type",
        "labels",
        "cert",
        "key",
        "client_ca",
        "ca",
        "server_name",
        "method",
        "password",
        "account_id",
        "session_tags",
        "cert_cn",
        "scram_verifier",
        "aws_access_key_id",
        "aws_secret_access_key",
        "session_duration",
        "refresh_before_expiry",
        "max_request_bytes",
        "database",
        "db_users",
        "db_names",
        "tls_cert",
        "tls_key",
        "reviewers_file",
        "access_dir",
        "access_signing_key",
        "session_ttl",
        "page_size",
        "group_gap",
        "issuer",
        "client_id",
        "client_secret",
        "redirect_url",
        "ca_file",
        "label",
        "scopes",
        "name_claim",
        "groups_claim",
        "auditor_groups",
        "proxy_protocol",
        "trusted_proxies",
        "max_size",
        "idle_timeout",
        "reset",
        "max_session_bytes",
        "max_segment_bytes",
        "max_age",
    ] {
        assert!(text.contains(&format!("{key} =")), "examples/dbtape.toml does not document {key}");
    }
}

const BAD: &str = r#"
[server]
workers = 100000

[recording]
mode = "sometimes"
fsync = "weekly"
batch_interval = "soon"
segments = { enabled = true, max_session_bytes = 10, max_segment_bytes = 1, max_age = "0s" }

[[databases]]
name = "pg"
protocol = "postgress"
listen = "localhost"
upstream = "postgres://db:5432/app"
auth = { method = "password", password = "hunter2" }

[[databases]]
name = "pg"
protocol = "dynamodb"
listen = "127.0.0.1:9000"
upstream = ""
aws = { account_id = "12345", assume_role_arn = "role/foo" }
pool = { mode = "session", max_size = 0 }

[[users]]
name = "bob"
grants = [{ database = "nope", db_users = [] }]
"#;

#[test]
fn every_error_is_reported_with_its_key_and_a_fix() {
    example_env();
    let err = Config::parse(BAD, Path::new("/etc/dbtape/bad.toml")).unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    for key in [
        "server.workers",
        "recording.mode",
        "recording.fsync",
        "recording.batch_interval",
        "recording.segments.max_session_bytes",
        "recording.segments.max_segment_bytes",
        "recording.segments.max_age",
        "databases[0].protocol",
        "databases[0].listen",
        "databases[0].auth.password",
        "databases[1].name",
        "databases[1].aws.region",
        "databases[1].aws.account_id",
        "databases[1].aws.assume_role_arn",
        "databases[1].pool",
        "databases[1].pool.max_size",
        "users[0].scram_verifier",
        "users[0].grants[0].database",
        "users[0].grants[0].db_users",
    ] {
        assert!(keys.contains(&key), "missing {key} in {keys:?}");
    }
    for issue in &err.issues {
        assert_eq!(issue.file, Path::new("/etc/dbtape/bad.toml"));
        assert!(!issue.fix.is_empty(), "{issue}");
    }
    let text = err.to_string();
    assert!(text.contains("/etc/dbtape/bad.toml: databases[0].auth.password: is written inline"), "{text}");
    assert!(!text.contains("hunter2"), "a config error must not echo a secret");
}

const BAD_DYNAMODB: &str = r#"
[[databases]]
name = "ddb"
protocol = "dynamodb"
listen = "127.0.0.1:0"
aws = { region = "us-east-1", assume_role_arn = "arn:aws:iam::123456789012:role/hop", session_duration = "2h" }

[[users]]
name = "carol"
aws_access_key_id = "DBTAPECAROL"
aws_secret_access_key = "carols-secret-inline"
grants = [{ database = "ddb", db_users = ["reader"] }]

[[users]]
name = "dave"
aws_access_key_id = "DBTAPECAROL"
grants = [{ database = "ddb", db_users = ["arn:aws:iam::123456789012:role/reader"] }]

[[users]]
name = "erin"
scram_verifier = { env = "NOT_SET_ANYWHERE_12345" }
grants = [{ database = "ddb", db_users = ["arn:aws:iam::123456789012:role/reader"] }]
"#;

#[test]
fn dynamodb_identities_and_roles_are_checked() {
    example_env();
    let err = Config::parse(BAD_DYNAMODB, Path::new("ddb.toml")).unwrap_err();
    let text = err.to_string();
    for expected in [
        "databases[0].aws.session_duration: 7200s is longer than AWS allows a chained role session",
        "users[0].aws_secret_access_key: is written inline",
        "users[0].grants[0].db_users: \"reader\" is neither an IAM role ARN nor a role name with the database's aws.account_id set",
        "users[1].aws_access_key_id: \"DBTAPECAROL\" is given to another user too",
        "users[1].aws_secret_access_key: is required with aws_access_key_id",
        "users[2].aws_access_key_id: is required to reach DynamoDB database \"ddb\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("carols-secret-inline"), "a config error must not echo a secret");
}

#[test]
fn syntax_errors_and_unknown_keys_name_the_line() {
    example_env();
    let err = Config::parse("[recording]\nmoed = \"strict\"\n", Path::new("x.toml")).unwrap_err();
    assert_eq!(err.issues.len(), 1);
    assert!(err.issues[0].key.starts_with("line 2"), "{:?}", err.issues[0]);
    assert!(err.issues[0].message.contains("unknown field `moed`"), "{:?}", err.issues[0]);

    let err = Config::parse("[server\n", Path::new("x.toml")).unwrap_err();
    assert!(err.issues[0].key.starts_with("line 1"), "{:?}", err.issues[0]);
}

#[test]
fn config_check_command_reports_and_fails() {
    example_env();
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, BAD).unwrap();
    let out = common::dbtape_bin().args(["config", "check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("configuration errors"), "{stderr}");
    assert!(stderr.contains(&format!("{}: recording.mode", bad.display())), "{stderr}");
    assert!(stderr.contains("fix: use \"strict\""), "{stderr}");

    let out = common::dbtape_bin()
        .args(["config", "check", "--config"])
        .arg(example())
        .env("DBTAPE_ORDERS_PASSWORD", "x")
        .env("DBTAPE_LIBRARY_PASSWORD", "y")
        .env("DBTAPE_ALICE_AWS_SECRET", "z")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (3 databases, 1 user"));

    let out = common::dbtape_bin().args(["config", "check", "--config", "/nonexistent/dbtape.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/dbtape.toml: (file): cannot read"));
}

#[test]
fn the_consoles_single_sign_on_is_checked_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("review.toml");
    let bad = "[review]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\n[review.oidc]\nissuer = \"http://idp.example.com\"\nclient_id = \"\"\nclient_secret = \"plain-text\"\nredirect_url = \"https://review.example.com/callback\"\nscopes = [\"email\"]\n";
    std::fs::write(&path, bad).unwrap();
    let text = Config::load_review_settings(&path).unwrap_err().to_string();
    for (key, fix) in [
        ("review.oidc.issuer", "use an https:// URL"),
        ("review.oidc.redirect_url", "/login/oidc/callback"),
        ("review.oidc.client_id", "client id"),
        ("review.oidc.client_secret", "{ env = \"NAME\" }"),
        ("review.oidc.scopes", "\"openid\""),
    ] {
        assert!(text.contains(key) && text.contains(fix), "{key} / {fix} not in:\n{text}");
    }
    let good = "[review]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\n[review.oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"review\"\nclient_secret = { file = \"secret\" }\nredirect_url = \"https://review.example.com/login/oidc/callback\"\n";
    std::fs::write(&path, good).unwrap();
    let (_, review) = Config::load_review_settings(&path).unwrap();
    let oidc = review.oidc.unwrap();
    assert_eq!((oidc.name_claim.as_str(), oidc.scopes.len()), ("email", 3));
    assert_eq!(oidc.client_secret, dbtape::config::SecretRef::File { file: dir.path().join("secret") });
}
