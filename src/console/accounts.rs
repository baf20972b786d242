//! Local reviewer accounts: a file of names, roles and SCRAM-SHA-256 verifiers that
//! `dbtape reviewer add` writes. No password is ever stored; a login derives the client key
//! from the password given and compares its hash with the stored one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConsoleError;
use crate::auth::scram::Verifier;

/// What a reviewer may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewerRole {
    /// Every session of every database.
    Auditor,
    /// Only the sessions of the databases named in `databases`.
    Reviewer,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewerAccount {
    pub name: String,
    pub role: ReviewerRole,
    /// For `reviewer`: the `db_service` names (the databases' names in dbtape's config).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    pub verifier: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    #[serde(default, rename = "reviewers")]
    reviewers: Vec<ReviewerAccount>,
}

/// Who a reviewer is once logged in, and what they may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewer {
    pub name: String,
    pub role: ReviewerRole,
    pub databases: Vec<String>,
}

impl Reviewer {
    /// Whether this reviewer may see a session of `db_service` (or a reviewer-access
    /// recording, which only auditors see).
    pub fn may_see(&self, db_service: &str, protocol: &str) -> bool {
        match self.role {
            ReviewerRole::Auditor => true,
            ReviewerRole::Reviewer => protocol != "review" && self.databases.iter().any(|d| d == db_service),
        }
    }
}

pub struct Accounts {
    accounts: Vec<(ReviewerAccount, Verifier)>,
}

impl Accounts {
    pub fn load(path: &Path) -> Result<Accounts, ConsoleError> {
        let file = read_file(path)?;
        let mut accounts = Vec::new();
        for (i, account) in file.reviewers.into_iter().enumerate() {
            let verifier = Verifier::parse(&account.verifier).map_err(|_| {
                ConsoleError::Config(format!(
                    "{}: reviewers[{i}].verifier is not a SCRAM-SHA-256 verifier; write it with `dbtape reviewer add`",
                    path.display()
                ))
            })?;
            accounts.push((account, verifier));
        }
        Ok(Accounts { accounts })
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// The reviewer, if the name and password match. Runs PBKDF2: call it off the async
    /// workers. An unknown name costs the same derivation, so timing does not reveal names.
    pub fn check(&self, name: &str, password: &str) -> Option<Reviewer> {
        let found = self.accounts.iter().find(|(a, _)| a.name == name);
        let (iterations, salt) = match found {
            Some((_, v)) => (v.iterations, v.salt.clone()),
            None => (4096, vec![0u8; 16]),
        };
        let derived = Verifier::from_password(password, salt, iterations);
        let (account, stored) = found?;
        constant_time_eq(&derived.stored_key, &stored.stored_key).then(|| Reviewer {
            name: account.name.clone(),
            role: account.role,
            databases: account.databases.clone(),
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read_file(path: &Path) -> Result<AccountsFile, ConsoleError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| ConsoleError::Config(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AccountsFile::default()),
        Err(e) => Err(ConsoleError::Config(format!("{}: {e}", path.display()))),
    }
}

/// Adds (or replaces) a reviewer in the accounts file, with a verifier of `password`.
pub fn add_reviewer(path: &Path, name: &str, role: ReviewerRole, databases: Vec<String>, password: &str) -> Result<(), ConsoleError> {
    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConsoleError::Usage("a reviewer's name must be non-empty, without spaces or control characters".into()));
    }
    if role == ReviewerRole::Reviewer && databases.is_empty() {
        return Err(ConsoleError::Usage("a reviewer (not an auditor) needs at least one --database".into()));
    }
    let verifier = Verifier::generate(password, 4096).map_err(|e| ConsoleError::Usage(e.to_string()))?.to_string();
    let mut file = read_file(path)?;
    file.reviewers.retain(|a| a.name != name);
    file.reviewers.push(ReviewerAccount { name: name.to_string(), role, databases, verifier });
    let text = toml::to_string(&file).map_err(|e| ConsoleError::Usage(e.to_string()))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    crate::recording::store::write_atomic(path, text.as_bytes()).map_err(|e| ConsoleError::Usage(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reviewer_logs_in_with_the_right_password_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reviewers.toml");
        add_reviewer(&path, "ana", ReviewerRole::Auditor, vec![], "correct horse").unwrap();
        add_reviewer(&path, "rui", ReviewerRole::Reviewer, vec!["pg".into()], "battery staple").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("correct horse") && text.contains("SCRAM-SHA-256$"), "{text}");
        let accounts = Accounts::load(&path).unwrap();
        assert_eq!(accounts.check("ana", "correct horse").map(|r| r.role), Some(ReviewerRole::Auditor));
        assert!(accounts.check("ana", "wrong").is_none());
        assert!(accounts.check("nobody", "correct horse").is_none());
        let rui = accounts.check("rui", "battery staple").unwrap();
        assert!(rui.may_see("pg", "postgres") && !rui.may_see("mongo", "mongodb") && !rui.may_see("pg", "review"));
    }
}
