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
    /// Absent for a reviewer who logs in only through OIDC (`reviewer add --oidc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
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
            // The console's and the proxy's own recordings are for auditors.
            ReviewerRole::Reviewer => !matches!(protocol, "review" | "dbtape") && self.databases.iter().any(|d| d == db_service),
        }
    }
}

pub struct Accounts {
    accounts: Vec<(ReviewerAccount, Option<Verifier>)>,
}

impl Accounts {
    pub fn load(path: &Path) -> Result<Accounts, ConsoleError> {
        let file = read_file(path)?;
        let mut accounts = Vec::new();
        for (i, account) in file.reviewers.into_iter().enumerate() {
            let verifier = account
                .verifier
                .as_deref()
                .map(|text| {
                    Verifier::parse(text).map_err(|_| {
                        ConsoleError::Config(format!(
                            "{}: reviewers[{i}].verifier is not a SCRAM-SHA-256 verifier; write it with `dbtape reviewer add`",
                            path.display()
                        ))
                    })
                })
                .transpose()?;
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
        let found = self.accounts.iter().find_map(|(a, v)| Some((a, v.as_ref()?)).filter(|_| a.name == name));
        let (iterations, salt) = match found {
            Some((_, v)) => (v.iterations, v.salt.clone()),
            None => (4096, vec![0u8; 16]),
        };
        let derived = Verifier::from_password(password, salt, iterations);
        let (account, stored) = found?;
        constant_time_eq(&derived.stored_key, &stored.stored_key).then(|| reviewer(account))
    }

    /// The reviewer an identity from the OIDC provider is: the account of that name, else
    /// an auditor if one of its groups is an auditors' group, else nobody.
    pub fn for_identity(&self, name: &str, groups: &[String], auditor_groups: &[String]) -> Option<Reviewer> {
        if name.is_empty() {
            return None;
        }
        if let Some((account, _)) = self.accounts.iter().find(|(a, _)| a.name == name) {
            return Some(reviewer(account));
        }
        groups.iter().any(|g| auditor_groups.contains(g)).then(|| Reviewer {
            name: name.to_string(),
            role: ReviewerRole::Auditor,
            databases: Vec::new(),
        })
    }
}

fn reviewer(account: &ReviewerAccount) -> Reviewer {
    Reviewer { name: account.name.clone(), role: account.role, databases: account.databases.clone() }
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

/// Adds (or replaces) a reviewer in the accounts file, with a verifier of `password`, or
/// with none (`None`: the reviewer logs in only through OIDC, under that name).
pub fn add_reviewer(
    path: &Path,
    name: &str,
    role: ReviewerRole,
    databases: Vec<String>,
    password: Option<&str>,
) -> Result<(), ConsoleError> {
    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConsoleError::Usage("a reviewer's name must be non-empty, without spaces or control characters".into()));
    }
    if role == ReviewerRole::Reviewer && databases.is_empty() {
        return Err(ConsoleError::Usage("a reviewer (not an auditor) needs at least one --database".into()));
    }
    let verifier =
        password.map(|p| Verifier::generate(p, 4096).map(|v| v.to_string())).transpose().map_err(|e| ConsoleError::Usage(e.to_string()))?;
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
        add_reviewer(&path, "ana", ReviewerRole::Auditor, vec![], Some("correct horse")).unwrap();
        add_reviewer(&path, "rui", ReviewerRole::Reviewer, vec!["pg".into()], Some("battery staple")).unwrap();
        add_reviewer(&path, "olga@example.com", ReviewerRole::Reviewer, vec!["mongo".into()], None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("correct horse") && text.contains("SCRAM-SHA-256$"), "{text}");
        let accounts = Accounts::load(&path).unwrap();
        assert_eq!(accounts.check("ana", "correct horse").map(|r| r.role), Some(ReviewerRole::Auditor));
        assert!(accounts.check("ana", "wrong").is_none());
        assert!(accounts.check("nobody", "correct horse").is_none());
        let rui = accounts.check("rui", "battery staple").unwrap();
        assert!(rui.may_see("pg", "postgres") && !rui.may_see("mongo", "mongodb") && !rui.may_see("pg", "review"));
        // An OIDC-only account has no password to log in with, and its entry decides its role.
        assert!(accounts.check("olga@example.com", "").is_none());
        let auditors = vec!["security".to_string()];
        let olga = accounts.for_identity("olga@example.com", &auditors, &auditors).unwrap();
        assert_eq!((olga.role, olga.databases), (ReviewerRole::Reviewer, vec!["mongo".to_string()]));
        assert_eq!(accounts.for_identity("pete@example.com", &auditors, &auditors).map(|r| r.role), Some(ReviewerRole::Auditor));
        assert!(accounts.for_identity("pete@example.com", &["dev".into()], &auditors).is_none());
        assert!(accounts.for_identity("", &auditors, &auditors).is_none());
    }
}
