//! Who may log in: every `[[users]]` entry with its secrets read and parsed once, at
//! start-up, and found by name, certificate CN or access key id without touching a file on
//! a connection's path. The directory in use can be swapped while sessions run (a reload):
//! a login takes the directory current when it starts and keeps it to its end.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::scram::Verifier;
use crate::config::UserConfig;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("users[{index}] ({user:?}).{field}: {cause}")]
    Secret { index: usize, user: String, field: &'static str, cause: String },
    #[error("users[{index}] ({user:?}): the name is used by an earlier user")]
    DuplicateName { index: usize, user: String },
}

/// One person dbtape knows.
pub struct Person {
    pub config: UserConfig,
    /// Their SCRAM-SHA-256 verifier, parsed.
    pub verifier: Option<Verifier>,
}

/// Names only: a verifier's keys allow an offline guess at the password, so they stay out of
/// every log line.
impl std::fmt::Debug for Person {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Person").field("name", &self.config.name).finish_non_exhaustive()
    }
}

/// A DynamoDB client's signing key.
#[derive(Clone)]
pub struct AccessKey {
    pub user: String,
    pub secret: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessKey").field("user", &self.user).finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
pub struct Directory {
    people: Vec<Person>,
    by_name: HashMap<String, usize>,
    by_cert_cn: HashMap<String, usize>,
    keys: HashMap<String, AccessKey>,
    usual_scram_iterations: u32,
}

impl Directory {
    /// Reads and parses every user's secrets. Config validation has checked each already;
    /// this fails only if one changed in between.
    pub fn from_config(users: &[UserConfig]) -> Result<Directory, DirectoryError> {
        let mut directory = Directory::default();
        let mut iterations: HashMap<u32, usize> = HashMap::new();
        for (index, user) in users.iter().enumerate() {
            let secret = |field: &'static str, cause: String| DirectoryError::Secret { index, user: user.name.clone(), field, cause };
            let verifier = match &user.scram_verifier {
                Some(source) => {
                    let text = source.read().map_err(|e| secret("scram_verifier", e.to_string()))?;
                    let verifier = Verifier::parse(&text).map_err(|e| secret("scram_verifier", e.to_string()))?;
                    *iterations.entry(verifier.iterations).or_default() += 1;
                    Some(verifier)
                }
                None => None,
            };
            if let (Some(id), Some(source)) = (&user.aws_access_key_id, &user.aws_secret_access_key) {
                let secret = source.read().map_err(|e| secret("aws_secret_access_key", e.to_string()))?;
                directory.keys.insert(id.clone(), AccessKey { user: user.name.clone(), secret });
            }
            let at = directory.people.len();
            if directory.by_name.insert(user.name.clone(), at).is_some() {
                return Err(DirectoryError::DuplicateName { index, user: user.name.clone() });
            }
            if let Some(cn) = &user.cert_cn {
                directory.by_cert_cn.entry(cn.clone()).or_insert(at);
            }
            directory.people.push(Person { config: user.clone(), verifier });
        }
        directory.usual_scram_iterations =
            iterations.into_iter().max_by_key(|&(iterations, n)| (n, iterations)).map_or(4096, |(iterations, _)| iterations);
        Ok(directory)
    }

    pub fn by_name(&self, name: &str) -> Option<&Person> {
        self.by_name.get(name).and_then(|&i| self.people.get(i))
    }

    /// The person a verified client certificate's subject CN names.
    pub fn by_cert_cn(&self, cn: &str) -> Option<&Person> {
        self.by_cert_cn.get(cn).and_then(|&i| self.people.get(i))
    }

    pub fn access_key(&self, id: &str) -> Option<&AccessKey> {
        self.keys.get(id)
    }

    /// The verifier a SCRAM login for `name` runs against, and whether it is a real user's.
    /// Unknown users (and users without a verifier) get a stand-in whose salt and iteration
    /// count look like a real user's, so the exchange does not reveal who exists.
    pub fn scram_verifier(&self, name: &str, login_secret: &[u8; 32]) -> (Verifier, bool) {
        match self.by_name(name).and_then(|p| p.verifier.clone()) {
            Some(verifier) => (verifier, true),
            None => (Verifier::stand_in(login_secret, name, self.usual_scram_iterations), false),
        }
    }
}

/// The directory in use, replaceable while the proxy runs.
#[derive(Debug)]
pub struct SharedDirectory(RwLock<Arc<Directory>>);

impl SharedDirectory {
    pub fn new(directory: Directory) -> Self {
        SharedDirectory(RwLock::new(Arc::new(directory)))
    }

    pub fn current(&self) -> Arc<Directory> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// New logins use `directory` from now on; logins under way keep the one they took.
    pub fn replace(&self, directory: Directory) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(directory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretRef;

    fn user(name: &str, verifier: Option<SecretRef>, cn: Option<&str>) -> UserConfig {
        UserConfig {
            name: name.into(),
            scram_verifier: verifier,
            cert_cn: cn.map(str::to_string),
            aws_access_key_id: None,
            aws_secret_access_key: None,
            grants: Vec::new(),
        }
    }

    #[test]
    fn reads_secrets_once_and_finds_people_every_way() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alice.verifier");
        std::fs::write(&file, format!("{}\n", Verifier::generate("pw", 4096).unwrap())).unwrap();
        let mut carol = user("carol", None, Some("carol-cn"));
        carol.aws_access_key_id = Some("AKIDCAROL".into());
        carol.aws_secret_access_key = Some(SecretRef::Inline("carol-secret".into()));
        let users = vec![user("alice", Some(SecretRef::File { file: file.clone() }), None), carol];
        let directory = Directory::from_config(&users).unwrap();
        // The file is no longer read: logins go on if it disappears.
        std::fs::remove_file(&file).unwrap();
        let (verifier, known) = directory.scram_verifier("alice", &[7; 32]);
        assert!(known);
        assert_eq!(verifier.iterations, 4096);
        assert_eq!(directory.by_cert_cn("carol-cn").map(|p| p.config.name.as_str()), Some("carol"));
        assert_eq!(directory.access_key("AKIDCAROL").map(|k| k.secret.as_str()), Some("carol-secret"));
        assert!(!format!("{:?}", directory.access_key("AKIDCAROL")).contains("carol-secret"));
        let shown = format!("{directory:?}");
        assert!(!shown.contains("carol-secret") && !shown.contains("stored_key") && !shown.contains("server_key"), "{shown}");
        let (stand_in, known) = directory.scram_verifier("mallory", &[7; 32]);
        assert!(!known);
        assert_eq!(stand_in.iterations, 4096, "a stand-in looks like the usual verifier");
    }

    #[test]
    fn an_unreadable_secret_names_the_user_and_field() {
        let users = vec![user("alice", Some(SecretRef::File { file: "/nonexistent/verifier".into() }), None)];
        let e = Directory::from_config(&users).unwrap_err().to_string();
        assert!(e.contains("users[0]") && e.contains("scram_verifier") && e.contains("/nonexistent/verifier"), "{e}");
    }

    #[test]
    fn a_replaced_directory_serves_new_lookups_only() {
        let shared = SharedDirectory::new(Directory::from_config(&[user("alice", None, Some("a"))]).unwrap());
        let held = shared.current();
        shared.replace(Directory::from_config(&[user("bob", None, Some("b"))]).unwrap());
        assert!(held.by_name("alice").is_some());
        assert!(shared.current().by_name("alice").is_none());
        assert!(shared.current().by_name("bob").is_some());
    }
}
