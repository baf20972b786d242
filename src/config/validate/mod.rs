//! Semantic checks. Each finds as many problems as it can rather than stopping at the first.

mod databases;
mod recording;
mod storage;
mod users;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::model::{RawConfig, RecordingSection};
use super::{Config, ConfigError, ConfigIssue};

pub(super) struct Issues<'a> {
    file: &'a Path,
    list: Vec<ConfigIssue>,
}

impl Issues<'_> {
    pub(super) fn add(&mut self, key: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) {
        self.list.push(ConfigIssue { file: self.file.to_path_buf(), key: key.into(), message: message.into(), fix: fix.into() });
    }
}

/// The console's OpenID Connect client: both URLs over TLS, and a secret that is not inline.
pub(super) fn check_oidc(oidc: &super::model::OidcSection, file: &Path) -> Vec<ConfigIssue> {
    let mut issues = Issues { file, list: Vec::new() };
    for (key, url) in [("review.oidc.issuer", &oidc.issuer), ("review.oidc.redirect_url", &oidc.redirect_url)] {
        if !url.starts_with("https://") {
            issues.add(key, format!("is {url:?}: reviewers log in over TLS only"), "use an https:// URL");
        }
    }
    if !oidc.redirect_url.ends_with("/login/oidc/callback") {
        issues.add(
            "review.oidc.redirect_url",
            format!("is {:?}", oidc.redirect_url),
            "use https://<console address>/login/oidc/callback, registered with the provider",
        );
    }
    if oidc.client_id.is_empty() {
        issues.add("review.oidc.client_id", "is empty", "set the client id the provider gave the console");
    }
    if matches!(oidc.client_secret, super::SecretRef::Inline(_)) {
        issues.add("review.oidc.client_secret", "is written inline", "use { env = \"NAME\" } or { file = \"path\" }");
    }
    if !oidc.scopes.iter().any(|s| s == "openid") {
        issues.add("review.oidc.scopes", "lacks \"openid\"", "add \"openid\": without it there is no ID token");
    }
    issues.list
}

/// More connection threads than this is a typo, not a tuning choice.
const MAX_WORKERS: usize = 1024;

pub(super) fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_relative() {
        base.join(path)
    } else {
        path.to_path_buf()
    }
}

pub(super) fn check(raw: RawConfig, file: &Path, base: &Path) -> Result<Config, ConfigError> {
    let mut issues = Issues { file, list: Vec::new() };
    let recording = recording::check_recording(&raw, base, &mut issues);
    let server = check_server(raw.server, &mut issues);
    if let Some(s3) = &raw.storage.s3 {
        storage::check_s3(s3, &mut issues);
    }
    storage::check_lake(&raw.lake, raw.storage.s3.as_ref(), &mut issues);
    let mut databases = raw.databases;
    let mut names = BTreeSet::new();
    let mut listens = BTreeSet::new();
    for (i, db) in databases.iter_mut().enumerate() {
        databases::check_database(i, db, base, &mut names, &mut listens, &mut issues);
    }
    let mut users = raw.users;
    let mut user_names = BTreeSet::new();
    for (i, user) in users.iter_mut().enumerate() {
        users::check_user(i, user, base, &names, &mut user_names, &mut issues);
    }
    users::check_dynamodb_identities(&databases, &users, &mut issues);
    if !issues.list.is_empty() {
        return Err(ConfigError { issues: issues.list });
    }
    Ok(Config { source: file.to_path_buf(), server, recording, storage: raw.storage, lake: raw.lake, databases, users })
}

/// Only the `[recording]` section, checked: what review commands need. Nothing else is
/// checked, and no secret is read, so an auditor needs no proxy secrets to run them.
pub(super) fn check_recording_only(raw: &RawConfig, file: &Path, base: &Path) -> Result<RecordingSection, ConfigError> {
    let mut issues = Issues { file, list: Vec::new() };
    let recording = recording::check_recording(raw, base, &mut issues);
    if !issues.list.is_empty() {
        return Err(ConfigError { issues: issues.list });
    }
    Ok(recording)
}

pub(super) fn check_file(key: String, path: &mut PathBuf, base: &Path, what: &str, issues: &mut Issues<'_>) {
    *path = resolve(base, path);
    if !path.is_file() {
        issues.add(key, format!("{} does not exist", path.display()), format!("point it at the {what} (PEM), relative to the config file"));
    }
}

fn check_server(mut server: super::ServerSection, issues: &mut Issues<'_>) -> super::ServerSection {
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
    server
}
