//! Secrets are referenced, never required inline: `{ env = "NAME" }` or `{ file = "path" }`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SecretRef {
    Env {
        env: String,
    },
    File {
        file: PathBuf,
    },
    /// Accepted only where the value is not a secret (e.g. a SCRAM verifier); refused for
    /// passwords by validation.
    Inline(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

impl SecretRef {
    pub fn resolve_paths(&mut self, base: &Path) {
        if let SecretRef::File { file } = self {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
    }

    /// Reads the value now; callers keep it only as long as they need it.
    pub fn read(&self) -> Result<String, SecretError> {
        match self {
            SecretRef::Env { env } => std::env::var(env).map_err(|_| SecretError::MissingEnv(env.clone())),
            SecretRef::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|source| SecretError::File { path: file.clone(), source }),
            SecretRef::Inline(value) => Ok(value.clone()),
        }
    }

    /// Describes where the secret comes from, never the secret.
    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env { env } => format!("env {env}"),
            SecretRef::File { file } => format!("file {}", file.display()),
            SecretRef::Inline(_) => "inline value".into(),
        }
    }
}
