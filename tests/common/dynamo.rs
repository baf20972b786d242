//! Runs dbtape in-process in front of moto (signature checking on) for the DynamoDB path,
//! and drives it with the aws CLI and boto3.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use dbtape::recording::RecordingStore;

use super::proxy::Running;
use super::services::Services;

pub const ALICE_KEY: &str = "DBTAPEALICE";
pub const ALICE_SECRET: &str = "alice-dynamodb-secret-0123456789";
pub const BOB_KEY: &str = "DBTAPEBOB";
pub const BOB_SECRET: &str = "bob-dynamodb-secret-9876543210";

pub struct DynamoProxy {
    pub addrs: HashMap<String, SocketAddr>,
    pub store: RecordingStore,
    pub root: tempfile::TempDir,
    pub services: Services,
    server: Running,
}

/// A DynamoDB database's upstream login: roles assumed in moto's account with external ID
/// ext-123, through the services' AWS endpoint.
pub fn aws_iam_auth(services: &Services) -> String {
    format!(
        "[databases.auth]\nmethod = \"aws_iam\"\n[databases.aws]\nregion = \"us-east-1\"\naccount_id = \"{}\"\nexternal_id = \"ext-123\"\nendpoint = \"{}\"",
        services.get("MOTO_ACCOUNT_ID"),
        services.get("AWS_ENDPOINT"),
    )
}

impl DynamoProxy {
    /// dbtape with database `ddb` (roles audit-target and audit-reader, external ID ext-123,
    /// a session tag) and whatever `extra` adds (more `[[databases]]`, grants for them).
    pub async fn start(extra: &str) -> DynamoProxy {
        let services = Services::load();
        let root = tempfile::tempdir().unwrap();
        services.use_proxy_aws_identity();
        let alice_secret = super::secret_file(root.path(), "alice-aws-secret", ALICE_SECRET);
        let bob_secret = super::secret_file(root.path(), "bob-aws-secret", BOB_SECRET);
        let text = format!(
            r#"
{preamble}[[databases]]
name = "ddb"
protocol = "dynamodb"
listen = "127.0.0.1:0"
upstream = "{aws}"
db_type = "dynamodb"
[databases.client_tls]
mode = "optional"
cert = "{certs}/server.crt"
key = "{certs}/server.key"
{aws_auth}
session_tags = {{ team = "audit" }}
{extra}
[[users]]
name = "alice"
aws_access_key_id = "{ALICE_KEY}"
aws_secret_access_key = {alice_secret}
[[users.grants]]
database = "ddb"
db_users = ["audit-target", "audit-reader"]
{alice_extra}
[[users]]
name = "bob"
aws_access_key_id = "{BOB_KEY}"
aws_secret_access_key = {bob_secret}
[[users.grants]]
database = "ddb"
db_users = ["audit-target"]
"#,
            preamble = super::test_server_toml(root.path()),
            aws_auth = aws_iam_auth(&services),
            aws = services.get("AWS_ENDPOINT"),
            certs = services.get("CERTS"),
            extra = extra.split("#alice#").next().unwrap_or_default(),
            alice_extra = extra.split("#alice#").nth(1).unwrap_or_default(),
        );
        let config = Arc::new(dbtape::config::Config::parse(&text, &root.path().join("dbtape.toml")).unwrap());
        let registry = dbtape::proxy::builtin_engines(&config).unwrap();
        let server = dbtape::server::Server::bind(config, &registry).await.unwrap();
        let addrs = server.local_addrs().into_iter().collect();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let store = RecordingStore::new(root.path().join("recordings"));
        DynamoProxy { addrs, store, root, services, server: Running::new(stop, task) }
    }

    pub fn endpoint(&self, database: &str) -> String {
        format!("http://{}", self.addrs[database])
    }

    /// `aws --endpoint-url <ddb> <args>` as `key_id`; (success, stdout, stderr).
    pub async fn aws(&self, key_id: &str, secret: &str, args: &[&str]) -> (bool, String, String) {
        let mut cmd = std::process::Command::new(format!("{}/bin/aws", self.services.get("SERVICES_VENV")));
        client_env(&mut cmd, key_id, secret);
        cmd.args(["--endpoint-url", &self.endpoint("ddb"), "--output", "json"]).args(args);
        super::output(cmd).await
    }

    /// A boto3 script; `argv[1]` is the endpoint of `database`, then `args`.
    pub async fn boto3(&self, database: &str, key_id: &str, secret: &str, script: &str, args: &[&str]) -> (bool, String, String) {
        let mut cmd = self.services.python();
        client_env(&mut cmd, key_id, secret);
        cmd.args(["-c", script, &self.endpoint(database)]).args(args);
        super::output(cmd).await
    }

    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// Every recording's events, in start order, each checked against its schema.
    pub fn sessions(&self) -> Vec<Vec<serde_json::Value>> {
        super::sessions_in(&self.store)
    }

    /// Sessions of `user` (the refused-logins log has none).
    pub fn sessions_of(&self, user: &str) -> Vec<Vec<serde_json::Value>> {
        self.sessions().into_iter().filter(|s| s[0]["user"] == user).collect()
    }

    pub fn play_text(&self, sid: &str) -> String {
        let out = super::dbtape_bin()
            .args(["play", "--dir"])
            .arg(self.root.path().join("recordings"))
            .args(["--format", "text", sid])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    }
}

/// An event as `kind target status → outcome`, for exact assertions.
pub fn brief(event: &serde_json::Value) -> String {
    let s = |key: &str| event[key].as_str().unwrap_or_default().to_string();
    match s("event").as_str() {
        "db.session.start" => format!("start {} {} {}", s("code"), s("db_user"), s("aws_role_arn")),
        "db.session.dynamodb.request" => {
            format!("request {} {} {}", s("code"), s("target").rsplit('.').next().unwrap_or_default(), event["status_code"])
        }
        "db.session.result" if event["success"] == true => format!("result ok {} {}", event["affected_records"], s("message")),
        "db.session.result" => format!("result {} {}", s("error"), s("message")),
        "db.session.end" => "end".into(),
        other => other.to_string(),
    }
}

/// A client process (the aws CLI, boto3) with only the given AWS identity in its environment.
pub fn client_env(cmd: &mut std::process::Command, key_id: &str, secret: &str) {
    for var in ["AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_ACCESS_KEY_ID", key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_MAX_ATTEMPTS", "1");
}
