//! Configuration: `dbtape.toml`, read with serde, then checked as a whole so that every
//! problem is reported at once with its file, key and fix.

mod model;
mod secret;
mod validate;

use std::path::{Path, PathBuf};

pub use model::{
    AuthMethod, AwsOptions, ClientTlsConfig, ClientTlsMode, DatabaseConfig, FsyncPolicy, Grant, LakeSection, LogFormat, OidcSection,
    PoolConfig, PoolMode, ProxyProtocol, RecordingMode, RecordingSection, ReviewSection, S3Storage, SegmentSettings, ServerSection,
    StorageSection, UpstreamAuth, UpstreamTlsConfig, UpstreamTlsMode, UserConfig, CHAINED_SESSION_LIMIT, MAX_FRAME_TARGET_BYTES,
    MAX_QUERY_BYTES_LIMIT,
};
pub use secret::{SecretError, SecretRef};

/// Compiles one of `recording.redact_patterns`. Nesting is bounded well below the regex
/// crate's default: a pattern of a thousand nested classes (fuzzing found one) otherwise
/// parses deep enough to overflow a 2 MiB thread stack in a debug build.
pub fn redact_pattern(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern).nest_limit(32).build()
}

pub const DEFAULT_CONFIG_FILE: &str = "dbtape.toml";

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
    pub fix: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}\n    fix: {}", self.file.display(), self.key, self.message, self.fix)
    }
}

#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.issues.len();
        writeln!(f, "{count} configuration error{}:", if count == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

/// A loaded, checked configuration. Relative paths are already resolved against the
/// directory of the config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub server: ServerSection,
    pub recording: RecordingSection,
    pub storage: StorageSection,
    pub lake: LakeSection,
    pub databases: Vec<DatabaseConfig>,
    pub users: Vec<UserConfig>,
}

impl Config {
    /// `new`, as a running proxy can take it: settings that only a restart changes (the
    /// recorder's, the bucket's, the lake's, the worker threads, the admin listener, the
    /// grace period, the log format) keep their running values, and are named in the list
    /// returned when `new` would change them.
    pub fn reloadable(&self, mut new: Config) -> (Config, Vec<&'static str>) {
        let mut kept = Vec::new();
        let mut recording = self.recording.clone();
        recording.redact_patterns = new.recording.redact_patterns.clone();
        let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        if differs(&recording, &new.recording) {
            kept.push("[recording] (all but redact_patterns)");
        }
        new.recording = recording;
        if differs(&self.storage, &new.storage) {
            kept.push("[storage]");
            new.storage = self.storage.clone();
        }
        if differs(&self.lake, &new.lake) {
            kept.push("[lake]");
            new.lake = self.lake.clone();
        }
        let (old, server) = (&self.server, &mut new.server);
        for (key, changed) in [
            ("server.workers", old.workers != server.workers),
            ("server.admin_listen", old.admin_listen != server.admin_listen),
            ("server.shutdown_grace", old.shutdown_grace != server.shutdown_grace),
            ("server.log_format", old.log_format != server.log_format),
            ("server.server_id", old.server_id != server.server_id),
        ] {
            if changed {
                kept.push(key);
            }
        }
        server.workers = old.workers;
        server.admin_listen = old.admin_listen.clone();
        server.shutdown_grace = old.shutdown_grace;
        server.log_format = old.log_format;
        server.server_id = old.server_id.clone();
        (new, kept)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_text(path, "pass the right file with --config, or copy examples/dbtape.toml to dbtape.toml")?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw = Self::parse_raw(text, path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        validate::check(raw, path, &base)
    }

    /// The `[storage.s3]` settings alone (no secret is read), for reviewing from the bucket.
    pub fn load_storage_settings(path: &Path) -> Result<Option<S3Storage>, ConfigError> {
        let text = read_text(path, "pass the config file that names the bucket with --config")?;
        Ok(Self::parse_raw(&text, path)?.storage.s3)
    }

    /// What `dbtape upload` needs: the recordings, the bucket and this instance's id. Like
    /// the review loaders, it reads none of the databases' secrets.
    pub fn load_upload_settings(path: &Path) -> Result<(RecordingSection, Option<S3Storage>, String), ConfigError> {
        let text = read_text(path, "pass the config file that names the bucket with --config")?;
        let raw = Self::parse_raw(&text, path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let recording = validate::check_recording_only(&raw, path, &base)?;
        let server_id = match raw.server.server_id.as_str() {
            "" => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "dbtape".into()),
            id => id.to_string(),
        };
        Ok((recording, raw.storage.s3, server_id))
    }

    /// What the lake commands need: the recordings, the bucket, the `[lake]` section and this
    /// instance's id; no secret is read.
    pub fn load_lake_settings(path: &Path) -> Result<(RecordingSection, Option<S3Storage>, LakeSection, String), ConfigError> {
        let text = read_text(path, "pass the config file that names the bucket with --config")?;
        let lake = Self::parse_raw(&text, path)?.lake;
        let (recording, s3, server_id) = Self::load_upload_settings(path)?;
        Ok((recording, s3, lake, server_id))
    }

    /// What `dbtape review` needs: the `[recording]` settings and the `[review]` section,
    /// its paths resolved against the config file's folder; no secret is read.
    pub fn load_review_settings(path: &Path) -> Result<(RecordingSection, ReviewSection), ConfigError> {
        let text = read_text(path, "pass the config file with the [review] section with --config")?;
        let raw = Self::parse_raw(&text, path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let recording = validate::check_recording_only(&raw, path, &base)?;
        let mut review = raw.review;
        let mut issues = Vec::new();
        for (key, value) in [("review.tls_cert", &review.tls_cert), ("review.tls_key", &review.tls_key)] {
            if value.as_os_str().is_empty() {
                issues.push(ConfigIssue {
                    file: path.to_path_buf(),
                    key: key.into(),
                    message: "is not set: the console serves HTTPS only".into(),
                    fix: format!("set {key} to a PEM file"),
                });
            }
        }
        if review.page_size == 0 || review.page_size > 1000 {
            issues.push(ConfigIssue {
                file: path.to_path_buf(),
                key: "review.page_size".into(),
                message: format!("is {}", review.page_size),
                fix: "use 1 to 1000".into(),
            });
        }
        if let Some(oidc) = &review.oidc {
            issues.extend(validate::check_oidc(oidc, path));
        }
        if !issues.is_empty() {
            return Err(ConfigError { issues });
        }
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        if let Some(oidc) = &mut review.oidc {
            oidc.client_secret.resolve_paths(&base);
            oidc.ca_file = oidc.ca_file.as_deref().map(resolve);
        }
        review.tls_cert = resolve(&review.tls_cert);
        review.tls_key = resolve(&review.tls_key);
        review.reviewers_file = resolve(&review.reviewers_file);
        review.access_signing_key = resolve(&review.access_signing_key);
        review.access_dir = review.access_dir.as_deref().map(resolve);
        Ok((recording, review))
    }

    /// The `[recording]` settings alone, for the review commands (`ls`, `play`, `export`,
    /// `verify`): the rest of the file must parse, but no secret it references is read and
    /// no other section is checked, so a reviewer needs neither the proxy's secrets nor its
    /// certificates.
    pub fn load_recording_settings(path: &Path) -> Result<RecordingSection, ConfigError> {
        let text = read_text(path, "pass the right file with --config, or use --dir to name the recordings folder")?;
        let raw = Self::parse_raw(&text, path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        validate::check_recording_only(&raw, path, &base)
    }

    fn parse_raw(text: &str, path: &Path) -> Result<model::RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            issues: vec![ConfigIssue {
                file: path.to_path_buf(),
                key: toml_error_key(text, &e),
                message: e.message().to_string(),
                fix: "compare with examples/dbtape.toml, which documents every key and its default".into(),
            }],
        })
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }
}

/// Names the line of a TOML syntax or type error, since toml's message alone lacks it.
fn toml_error_key(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let line = text.get(..span.start).map_or(0, |t| t.matches('\n').count()) + 1;
            let snippet = text.lines().nth(line - 1).unwrap_or_default().trim();
            format!("line {line} ({snippet})")
        }
        None => "(file)".into(),
    }
}

/// The config file's text, or an error naming the file and `fix`.
fn read_text(path: &Path, fix: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        issues: vec![ConfigIssue { file: path.to_path_buf(), key: "(file)".into(), message: format!("cannot read: {e}"), fix: fix.into() }],
    })
}
