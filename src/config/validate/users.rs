//! `[[users]]`: identities, secrets and grants, and DynamoDB's access keys and roles.

use std::collections::BTreeSet;
use std::path::Path;

use super::super::model::{DatabaseConfig, UserConfig};
use super::super::secret::SecretRef;
use super::Issues;
use crate::audit::Protocol;
use crate::util::arn::role_arn_for;

pub(super) fn check_user(
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

/// DynamoDB users sign with a key id and secret dbtape issued them, and act as IAM roles.
pub(super) fn check_dynamodb_identities(databases: &[DatabaseConfig], users: &[UserConfig], issues: &mut Issues<'_>) {
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
