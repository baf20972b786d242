//! The shape of `dbtape.toml`. Every key has a default unless the comment says otherwise;
//! `examples/dbtape.toml` documents them all.

use crate::audit::Protocol;
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::secret::SecretRef;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub recording: RawRecording,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub lake: LakeSection,
    #[serde(default)]
    pub review: ReviewSection,
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// `cluster_name` on every event.
    pub cluster_name: String,
    /// `server_id` on session start events; defaults to the host name.
    pub server_id: String,
    /// How long shutdown waits for sessions to finish before sealing their recordings.
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: std::time::Duration,
    pub log_format: LogFormat,
    /// Connection worker threads; 0 means one per CPU.
    pub workers: usize,
    /// How long a connection may take to log in: TLS handshake, client authentication and
    /// upstream login. PostgreSQL's own `authentication_timeout` is 60 s; strangers get less.
    #[serde(with = "humantime_serde_compat")]
    pub login_timeout: std::time::Duration,
    /// Connections still logging in, per listener; more are closed at accept.
    pub max_pending_logins: usize,
    /// Connections still logging in from one source address, per listener.
    pub max_pending_logins_per_source: usize,
    /// Failed logins from one source address per minute, per listener, after which its new
    /// connections are closed at accept until the minute is over; 0 turns this off.
    pub max_failed_logins_per_source: u32,
    /// Where `/metrics` (Prometheus) and `/healthz` are served, e.g. "127.0.0.1:9187";
    /// empty turns the admin listener off. It has no authentication: keep it on a loopback
    /// or management address.
    pub admin_listen: String,
    /// The machine's host name (`server_hostname` on events); read at start-up, not configured.
    #[serde(skip)]
    pub hostname: String,
}

impl ServerSection {
    /// How many connection workers to run: by default one per CPU. A single worker saved
    /// CPU at 8 PostgreSQL clients, but it is one queue for every session: whenever the
    /// scheduler runs something else on its core, all of them wait. On a 2-core host one
    /// per CPU served 9-45% more transactions at 200 clients and 38% more MongoDB
    /// operations at 8, each for less CPU (BENCHMARKS.md).
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            cluster_name: "dbtape".into(),
            server_id: String::new(),
            shutdown_grace: std::time::Duration::from_secs(30),
            log_format: LogFormat::Text,
            workers: 0,
            login_timeout: std::time::Duration::from_secs(10),
            max_pending_logins: 1024,
            max_pending_logins_per_source: 64,
            max_failed_logins_per_source: 30,
            admin_listen: String::new(),
            hostname: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRecording {
    pub dir: PathBuf,
    pub mode: String,
    pub fsync: String,
    pub batch_interval: String,
    pub signing_key: PathBuf,
    pub frame_target_bytes: usize,
    pub zstd_level: i32,
    pub max_query_bytes: usize,
    pub redact_patterns: Vec<String>,
    pub max_backlog_bytes: usize,
    pub min_free_bytes: u64,
    pub trusted_keys: Vec<PathBuf>,
    pub segments: RawSegments,
}

/// `[recording.segments]`: short sessions packed many to a file once sealed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSegments {
    pub enabled: bool,
    pub max_session_bytes: u64,
    pub max_segment_bytes: u64,
    pub max_age: String,
}

impl Default for RawSegments {
    fn default() -> Self {
        RawSegments { enabled: false, max_session_bytes: 64 * 1024, max_segment_bytes: 16 * 1024 * 1024, max_age: "1m".into() }
    }
}

impl Default for RawRecording {
    fn default() -> Self {
        RawRecording {
            dir: PathBuf::from("recordings"),
            mode: "strict".into(),
            fsync: "batch".into(),
            batch_interval: "200ms".into(),
            signing_key: PathBuf::from("keys/recording-signing.key"),
            frame_target_bytes: 256 * 1024,
            zstd_level: 1,
            max_query_bytes: 1024 * 1024,
            redact_patterns: Vec::new(),
            max_backlog_bytes: 256 * 1024 * 1024,
            min_free_bytes: 256 * 1024 * 1024,
            trusted_keys: Vec::new(),
            segments: RawSegments::default(),
        }
    }
}

/// The checked `[recording]` section.
#[derive(Debug, Clone)]
pub struct RecordingSection {
    pub dir: PathBuf,
    pub mode: RecordingMode,
    pub fsync: FsyncPolicy,
    pub batch_interval: std::time::Duration,
    pub signing_key: PathBuf,
    pub frame_target_bytes: usize,
    pub zstd_level: i32,
    /// Captured text one event may carry before it is stored cut.
    pub max_query_bytes: usize,
    /// Regular expressions whose matches in statements are masked before recording, on top
    /// of the built-in password rules.
    pub redact_patterns: Vec<String>,
    /// Bytes of events queued for the writer before sessions wait (strict) or drop
    /// (best_effort).
    pub max_backlog_bytes: usize,
    /// Free bytes the recordings' filesystem must keep; below it a strict proxy refuses new
    /// sessions. 0 turns the guard off.
    pub min_free_bytes: u64,
    /// Public keys of other instances (a fleet sharing one bucket) whose recordings a
    /// review trusts, besides this instance's own.
    pub trusted_keys: Vec<PathBuf>,
    /// Pack short sessions into segments once sealed (`[recording.segments]`); None when off.
    pub segments: Option<SegmentSettings>,
}

/// `[recording.segments]`, checked: how the recorder packs short sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSettings {
    /// Sessions whose recording is at most this big when sealed are packed; bigger ones keep
    /// their own files (and multipart uploads).
    pub max_session_bytes: u64,
    /// A segment is closed, and so uploadable, once it reaches this size...
    pub max_segment_bytes: u64,
    /// ...or this age.
    pub max_age: std::time::Duration,
}

impl Default for SegmentSettings {
    fn default() -> Self {
        SegmentSettings { max_session_bytes: 64 * 1024, max_segment_bytes: 16 * 1024 * 1024, max_age: std::time::Duration::from_secs(60) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Batch,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingMode {
    /// A recording failure ends the session.
    Strict,
    /// The session goes on; a `dbtape.recording.gap` event records what was lost.
    BestEffort,
}

/// AWS caps a session assumed with role credentials (a chain) at one hour.
pub const CHAINED_SESSION_LIMIT: std::time::Duration = std::time::Duration::from_secs(3600);
/// The largest `frame_target_bytes` the config accepts.
pub const MAX_FRAME_TARGET_BYTES: usize = 32 * 1024 * 1024;
/// The largest `max_query_bytes` the config accepts: escaped as JSON (up to six bytes per
/// byte of text), it still fits in the recorder's `MAX_EVENT_BYTES` with room for the rest of the event.
pub const MAX_QUERY_BYTES_LIMIT: usize = 2 * 1024 * 1024;
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub s3: Option<S3Storage>,
}

/// `[lake]`: every recorded event also as Parquet rows in the `[storage.s3]` bucket, for
/// Athena, Trino, Spark and DuckDB.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeSection {
    pub enabled: bool,
    /// Where the table lives in the bucket: `<prefix>events/event_date=YYYY-MM-DD/…`.
    pub prefix: String,
    /// Events wait at most this long before they are written.
    #[serde(with = "humantime_serde_compat")]
    pub flush_interval: std::time::Duration,
    /// An object is cut before this once its events reach this many bytes of JSON.
    pub max_object_bytes: usize,
    /// "dbtape" (the table above) and/or "ocsf" (OCSF 1.3 Datastore Activity rows in
    /// Security Lake's custom-source layout).
    pub formats: Vec<String>,
    /// Security Lake's custom source name, region and account for the "ocsf" objects'
    /// path: `<prefix>ext/<source>/region=<region>/accountId=<account>/eventDay=YYYYMMDD/`.
    pub ocsf_source_name: String,
    /// Default: `[storage.s3]`'s region.
    pub ocsf_region: String,
    pub ocsf_account_id: String,
}

impl Default for LakeSection {
    fn default() -> Self {
        LakeSection {
            enabled: false,
            prefix: "lake/".into(),
            flush_interval: std::time::Duration::from_secs(300),
            max_object_bytes: 128 * 1024 * 1024,
            formats: vec!["dbtape".into()],
            ocsf_source_name: "dbtape".into(),
            ocsf_region: String::new(),
            ocsf_account_id: String::new(),
        }
    }
}

/// `[review]`: the web review console, `dbtape review`, a process of its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewSection {
    /// Where the console listens, HTTPS only.
    pub listen: String,
    /// The console's certificate chain and key (PEM). Required: there is no plain HTTP.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Local reviewer accounts, written by `dbtape reviewer add` (verifiers only).
    pub reviewers_file: PathBuf,
    /// Where the reviewer-access recordings go. Default: the recordings folder itself, so
    /// `verify`, `export`, uploads and the lake cover them like any session.
    pub access_dir: Option<PathBuf>,
    /// The key that signs the reviewer-access recordings: the console's own, never the
    /// proxy's. Created on first start.
    pub access_signing_key: PathBuf,
    /// A reviewer's login lasts this long.
    #[serde(with = "humantime_serde_compat")]
    pub session_ttl: std::time::Duration,
    /// Sessions listed per page.
    pub page_size: usize,
    /// DynamoDB sessions of one request, by one user, role and source, at most this far
    /// apart, are listed as one group.
    #[serde(with = "humantime_serde_compat")]
    pub group_gap: std::time::Duration,
    /// Login through the company's OpenID Connect provider, beside local accounts.
    pub oidc: Option<OidcSection>,
}

/// `[review.oidc]`: the console as an OpenID Connect client (authorization code flow with
/// PKCE). Who may log in is decided here, not by the provider: a name listed in
/// `reviewers_file` gets that entry's role, a member of an `auditor_groups` group is an
/// auditor, and anyone else is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// The provider's issuer URL (https); its discovery document is read at start.
    pub issuer: String,
    pub client_id: String,
    /// `{ env = "NAME" }` or `{ file = "path" }`; never inline.
    pub client_secret: super::SecretRef,
    /// This console's callback, as registered with the provider:
    /// `https://<console>/login/oidc/callback`.
    pub redirect_url: String,
    /// PEM roots to trust for the provider instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Shown on the login page's button.
    #[serde(default = "default_oidc_label")]
    pub label: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The claim that names the reviewer (matched against `reviewers_file`).
    #[serde(default = "default_oidc_name_claim")]
    pub name_claim: String,
    #[serde(default = "default_oidc_groups_claim")]
    pub groups_claim: String,
    #[serde(default)]
    pub auditor_groups: Vec<String>,
}

fn default_oidc_label() -> String {
    "single sign-on".into()
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

fn default_oidc_name_claim() -> String {
    "email".into()
}

fn default_oidc_groups_claim() -> String {
    "groups".into()
}

impl Default for ReviewSection {
    fn default() -> Self {
        ReviewSection {
            listen: "127.0.0.1:8443".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            reviewers_file: PathBuf::from("reviewers.toml"),
            access_dir: None,
            access_signing_key: PathBuf::from("keys/review-signing.key"),
            session_ttl: std::time::Duration::from_secs(8 * 3600),
            page_size: 50,
            group_gap: std::time::Duration::from_secs(60),
            oidc: None,
        }
    }
}

/// Optional upload of sealed recordings to S3 (or an S3-compatible store).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Storage {
    /// Required.
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    /// Required.
    pub region: String,
    /// A custom endpoint (S3-compatible stores, tests); empty means AWS.
    #[serde(default)]
    pub endpoint: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most S3-compatible stores need.
    #[serde(default)]
    pub force_path_style: bool,
    #[serde(default)]
    pub assume_role_arn: String,
    #[serde(default)]
    pub external_id: String,
    /// Attempts per upload pass before a recording waits for the next pass.
    #[serde(default = "default_upload_retries")]
    pub upload_retries: u32,
    /// "" (the bucket's default), "AES256" or "aws:kms".
    #[serde(default)]
    pub server_side_encryption: String,
    /// The KMS key for "aws:kms"; empty means the account's default key.
    #[serde(default)]
    pub kms_key_id: String,
    /// "" (none), "GOVERNANCE" or "COMPLIANCE": S3 Object Lock on every object uploaded.
    #[serde(default)]
    pub object_lock_mode: String,
    /// Days each object is locked for, with `object_lock_mode`.
    #[serde(default)]
    pub object_lock_days: u32,
    /// Recordings larger than this go up as multipart uploads of parts this size (S3's
    /// minimum is 5 MiB).
    #[serde(default = "default_part_size")]
    pub part_size: usize,
    /// What happens to the local copy once the upload is confirmed: "keep" or "delete".
    #[serde(default = "default_local_retention")]
    pub local_retention: String,
    /// How often the uploader looks for recordings to upload or retry.
    #[serde(default = "default_scan_interval", with = "humantime_serde_compat")]
    pub scan_interval: std::time::Duration,
    /// A multipart upload in the bucket that no local checkpoint owns and that began longer
    /// ago than this is an orphan (its proxy host died): the sweeper completes it from the
    /// parts it has, or aborts it if it has none.
    #[serde(default = "default_stale_upload_after", with = "humantime_serde_compat")]
    pub stale_upload_after: std::time::Duration,
}

fn default_stale_upload_after() -> std::time::Duration {
    std::time::Duration::from_secs(24 * 3600)
}

fn default_part_size() -> usize {
    8 * 1024 * 1024
}

fn default_local_retention() -> String {
    "keep".into()
}

fn default_scan_interval() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

fn default_upload_retries() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Required; appears as `db_service` on events.
    pub name: String,
    /// Required: postgres, mongodb or dynamodb, as written.
    #[serde(rename = "protocol")]
    pub protocol_name: String,
    /// `protocol_name`, parsed by validation (which refuses a config where it names none).
    #[serde(skip, default = "unvalidated_protocol")]
    pub protocol: Protocol,
    /// Required: the proxy's listen address, host:port.
    pub listen: String,
    /// Where the real database is; required except for DynamoDB (default: the region's endpoint).
    #[serde(default)]
    pub upstream: String,
    /// `db_type` on events: self-hosted, rds, aurora, rds-proxy, documentdb, dynamodb.
    #[serde(default = "default_db_type")]
    pub db_type: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub client_tls: ClientTlsConfig,
    #[serde(default)]
    pub upstream_tls: UpstreamTlsConfig,
    #[serde(default)]
    pub auth: UpstreamAuth,
    #[serde(default)]
    pub aws: AwsOptions,
    /// DynamoDB: the largest request body accepted (DynamoDB's own limit is 16 MB).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Behind a load balancer: the PROXY protocol header each connection starts with.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Who may send that header (address blocks); anyone else is refused. Required with
    /// `proxy_protocol`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// PostgreSQL only: reuse upstream connections between client sessions. Off when absent.
    #[serde(default)]
    pub pool: Option<PoolConfig>,
}

/// `[databases.pool]`: an upstream session pool, as pgbouncer's session mode.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Only "session": a connection serves one client session at a time, start to end.
    pub mode: PoolMode,
    /// The most upstream connections the pool holds open at once, in use or idle. A client
    /// session that finds them all in use waits (within `login_timeout`).
    #[serde(default = "default_pool_max_size")]
    pub max_size: usize,
    /// An idle connection is closed after this long. It also bounds how long a connection
    /// opened with an IAM token (checked only at login) lives on unused.
    #[serde(default = "default_pool_idle_timeout", with = "humantime_serde_compat")]
    pub idle_timeout: std::time::Duration,
    /// Run on a connection when a client session ends, before the next one gets it; a
    /// failure discards the connection.
    #[serde(default = "default_pool_reset")]
    pub reset: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    Session,
}

fn default_pool_max_size() -> usize {
    20
}

fn default_pool_idle_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn default_pool_reset() -> String {
    "DISCARD ALL".into()
}

/// Which header a listener expects (`proxy_protocol` in a `[[databases]]` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// Clients connect directly; nothing is read before the database protocol.
    #[default]
    Off,
    V1,
    V2,
}

fn default_max_request_bytes() -> usize {
    16 * 1024 * 1024 + 64 * 1024
}

fn default_db_type() -> String {
    "self-hosted".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientTlsMode {
    Disabled,
    Optional,
    Required,
}

/// TLS between clients and the proxy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// Default: `optional` when cert and key are set, else `disabled`.
    pub mode: Option<ClientTlsMode>,
    /// The proxy's certificate chain (PEM); required unless mode = disabled.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA bundle for client certificates; setting it enables mTLS identities (subject CN).
    pub client_ca: Option<PathBuf>,
}

impl ClientTlsConfig {
    pub fn effective_mode(&self) -> ClientTlsMode {
        self.mode.unwrap_or(if self.cert.is_some() && self.key.is_some() { ClientTlsMode::Optional } else { ClientTlsMode::Disabled })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    Disable,
    Require,
    VerifyCa,
    #[default]
    VerifyFull,
}

/// TLS between the proxy and the real database. Verifies certificates by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    #[serde(default)]
    pub mode: UpstreamTlsMode,
    /// CA bundle (PEM); default: the system's roots.
    pub ca: Option<PathBuf>,
    /// Name to verify instead of the upstream host.
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Use the credentials of the granted db_user from `password`.
    #[default]
    Password,
    /// RDS IAM tokens, MONGODB-AWS or SigV4 re-signing, with credentials from the AWS chain.
    AwsIam,
    /// Connect without credentials (trust auth upstream).
    None,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuth {
    #[serde(default)]
    pub method: AuthMethod,
    /// Required for method = password: `{ env = "NAME" }` or `{ file = "path" }`.
    pub password: Option<SecretRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsOptions {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub account_id: String,
    #[serde(default)]
    pub assume_role_arn: String,
    #[serde(default)]
    pub external_id: String,
    #[serde(default)]
    pub session_tags: BTreeMap<String, String>,
    /// Override the AWS endpoint the proxy's own AWS calls go to (STS: a stand-in, a VPC
    /// endpoint). DynamoDB requests go to the database's `upstream`.
    #[serde(default)]
    pub endpoint: String,
    /// How long assumed-role sessions (DynamoDB) last: 15 minutes to 12 hours, at most one
    /// hour with `assume_role_arn` (AWS's limit for a chain).
    #[serde(default = "default_session_duration", with = "humantime_serde_compat")]
    pub session_duration: std::time::Duration,
    /// Assumed-role credentials are replaced this long before they expire.
    #[serde(default = "default_refresh_before_expiry", with = "humantime_serde_compat")]
    pub refresh_before_expiry: std::time::Duration,
}

impl Default for AwsOptions {
    fn default() -> Self {
        AwsOptions {
            region: String::new(),
            account_id: String::new(),
            assume_role_arn: String::new(),
            external_id: String::new(),
            session_tags: BTreeMap::new(),
            endpoint: String::new(),
            session_duration: default_session_duration(),
            refresh_before_expiry: default_refresh_before_expiry(),
        }
    }
}

fn default_session_duration() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}

fn default_refresh_before_expiry() -> std::time::Duration {
    std::time::Duration::from_secs(5 * 60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Required; appears as `user` on events.
    pub name: String,
    /// SCRAM-SHA-256 verifier (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`), as made
    /// by `dbtape user add`. Inline, `{ env }` or `{ file }`.
    pub scram_verifier: Option<SecretRef>,
    /// Subject CN of the client certificate that identifies this user over mTLS.
    pub cert_cn: Option<String>,
    /// For DynamoDB: the access key id the user's client signs with.
    pub aws_access_key_id: Option<String>,
    /// For DynamoDB: the secret that goes with `aws_access_key_id`; `{ env }` or `{ file }`.
    pub aws_secret_access_key: Option<SecretRef>,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// What a user may reach.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// A database's `name`.
    pub database: String,
    /// Upstream users (for DynamoDB: IAM role names or ARNs) this user may act as.
    pub db_users: Vec<String>,
    /// Database names allowed; empty means any.
    #[serde(default)]
    pub db_names: Vec<String>,
}

/// serde helper: durations written as "200ms", "30s", "5m".
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{text:?}: {e} (write e.g. \"30s\")")))
    }
}

/// What `DatabaseConfig::protocol` holds until validation parses the configured name.
fn unvalidated_protocol() -> Protocol {
    Protocol::Postgres
}
