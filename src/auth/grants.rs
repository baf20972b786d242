//! Who the client is and what they may reach.
//!
//! A person logs in as `person` or `person@db_user` (so plain psql can pick among several
//! granted upstream users: `psql "user=alice@reporting dbname=app"`), proven by a client
//! certificate's CN (mTLS) or by SCRAM-SHA-256 against their stored verifier.

use crate::config::UserConfig;

/// Splits the startup `user` into the person and an optional db_user.
pub fn split_login(login: &str) -> (&str, Option<&str>) {
    match login.split_once('@') {
        Some((person, db_user)) if !db_user.is_empty() => (person, Some(db_user)),
        Some((person, _)) => (person, None),
        None => (login, None),
    }
}

/// The upstream user and database a person gets, or why not.
pub fn authorize(
    user: &UserConfig,
    database: &str,
    requested_db_user: Option<&str>,
    requested_db_name: Option<&str>,
    default_db_name: &str,
) -> Result<(String, String), String> {
    let grants: Vec<_> = user.grants.iter().filter(|g| g.database == database).collect();
    if grants.is_empty() {
        return Err(format!("user {:?} is not granted database {database:?}", user.name));
    }
    let db_user = match requested_db_user {
        Some(wanted) => grants
            .iter()
            .flat_map(|g| g.db_users.iter())
            .find(|u| u.as_str() == wanted)
            .cloned()
            .ok_or_else(|| format!("user {:?} may not connect as db_user {wanted:?}", user.name))?,
        None => {
            let all: Vec<&String> = grants.iter().flat_map(|g| g.db_users.iter()).collect();
            match all.as_slice() {
                [only] => (*only).clone(),
                _ => {
                    return Err(format!(
                        "user {:?} has several db_users ({}); choose one by logging in as {}@<db_user>",
                        user.name,
                        all.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                        user.name
                    ))
                }
            }
        }
    };
    let allowed_names: Vec<&String> = grants.iter().filter(|g| g.db_users.contains(&db_user)).flat_map(|g| g.db_names.iter()).collect();
    let any_name = grants.iter().any(|g| g.db_users.contains(&db_user) && g.db_names.is_empty());
    let db_name = match requested_db_name.filter(|n| !n.is_empty()) {
        Some(name) => name.to_string(),
        None if !default_db_name.is_empty() => default_db_name.to_string(),
        None => allowed_names.first().map(|s| s.to_string()).unwrap_or_else(|| db_user.clone()),
    };
    if !any_name && !allowed_names.iter().any(|n| **n == db_name) {
        return Err(format!("user {:?} may not open database name {db_name:?} as {db_user:?}", user.name));
    }
    Ok((db_user, db_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Grant;

    fn alice() -> UserConfig {
        UserConfig {
            name: "alice".into(),
            scram_verifier: None,
            cert_cn: None,
            aws_access_key_id: None,
            aws_secret_access_key: None,
            grants: vec![Grant { database: "pg".into(), db_users: vec!["reader".into(), "writer".into()], db_names: vec!["app".into()] }],
        }
    }

    #[test]
    fn grants_decide_db_user_and_name() {
        assert_eq!(split_login("alice@writer"), ("alice", Some("writer")));
        assert_eq!(split_login("alice"), ("alice", None));
        let a = alice();
        assert_eq!(authorize(&a, "pg", Some("writer"), Some("app"), ""), Ok(("writer".into(), "app".into())));
        assert!(authorize(&a, "pg", None, Some("app"), "").unwrap_err().contains("several db_users"));
        assert!(authorize(&a, "pg", Some("admin"), Some("app"), "").unwrap_err().contains("may not connect as"));
        assert!(authorize(&a, "pg", Some("reader"), Some("other"), "").unwrap_err().contains("may not open database"));
        assert!(authorize(&a, "other", Some("reader"), None, "").unwrap_err().contains("not granted"));
        assert_eq!(authorize(&a, "pg", Some("reader"), None, "").unwrap().1, "app");
    }
}
