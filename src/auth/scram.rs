//! SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL uses it: the server side, checking a client
//! against a stored verifier (never a password), and the client side, for upstreams.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("not a SCRAM-SHA-256 verifier")]
    BadVerifier,
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("wrong password")]
    WrongProof,
    #[error("the server's signature does not match")]
    BadServerSignature,
    #[error("no randomness: {0}")]
    Random(String),
    #[error("the server asks for {0} PBKDF2 iterations, more than the {MAX_CLIENT_ITERATIONS} dbtape will compute")]
    TooManyIterations(u32),
}

/// The most PBKDF2 iterations an upstream may ask of dbtape. A hostile or broken server could
/// otherwise ask for billions and pin a CPU per login; 600,000 is OWASP's recommendation for
/// PBKDF2-HMAC-SHA256, well above PostgreSQL's default of 4096.
pub const MAX_CLIENT_ITERATIONS: u32 = 600_000;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; the error arm is unreachable and fails closed (a zero
    // MAC never verifies).
    let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(key) else { return [0u8; 32] };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn nonce() -> Result<String, ScramError> {
    let mut raw = [0u8; 18];
    getrandom::getrandom(&mut raw).map_err(|e| ScramError::Random(e.to_string()))?;
    Ok(B64.encode(raw))
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, PostgreSQL's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl Verifier {
    pub fn generate(password: &str, iterations: u32) -> Result<Verifier, ScramError> {
        let mut salt = vec![0u8; 16];
        getrandom::getrandom(&mut salt).map_err(|e| ScramError::Random(e.to_string()))?;
        Ok(Self::from_password(password, salt, iterations))
    }

    pub fn from_password(password: &str, salt: Vec<u8>, iterations: u32) -> Verifier {
        let salted = salted_password(password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Verifier { iterations, salt, stored_key: Sha256::digest(client_key).into(), server_key: hmac(&salted, b"Server Key") }
    }

    pub fn parse(text: &str) -> Result<Verifier, ScramError> {
        let rest = text.strip_prefix("SCRAM-SHA-256$").ok_or(ScramError::BadVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iterations, salt) = params.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let key = |b64: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(b64).ok().and_then(|v| v.try_into().ok()).ok_or(ScramError::BadVerifier)
        };
        Ok(Verifier {
            iterations: iterations.parse().map_err(|_| ScramError::BadVerifier)?,
            salt: B64.decode(salt).map_err(|_| ScramError::BadVerifier)?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

impl Verifier {
    /// What an unknown user is checked against, so that the exchange does not reveal who
    /// exists: the salt comes from a server secret and the name, so every try for one name
    /// sees the same salt, as for a real user; the keys are derived too, but from no
    /// password, so they cost no PBKDF2 work and no password matches them. `iterations`
    /// should be what real users' verifiers have.
    pub fn stand_in(server_secret: &[u8; 32], user: &str, iterations: u32) -> Verifier {
        let derive = |label: &[u8]| {
            let mut data = label.to_vec();
            data.extend_from_slice(user.as_bytes());
            hmac(server_secret, &data)
        };
        Verifier {
            iterations,
            salt: derive(b"dbtape scram stand-in salt\0")[..16].to_vec(),
            stored_key: derive(b"dbtape scram stand-in stored key\0"),
            server_key: derive(b"dbtape scram stand-in server key\0"),
        }
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

fn attr(message: &str, name: char) -> Option<&str> {
    message.split(',').find_map(|part| part.strip_prefix(name).and_then(|p| p.strip_prefix('=')))
}

/// The user a client-first message names (`n=`), with RFC 5802's `=2C`/`=3D` decoded.
pub fn client_first_user(client_first: &str) -> Option<String> {
    let bare = client_first.splitn(3, ',').nth(2)?;
    Some(attr(bare, 'n')?.replace("=2C", ",").replace("=3D", "="))
}

/// Server side: one exchange against one verifier.
pub struct ServerExchange {
    verifier: Verifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerExchange {
    /// Takes the client-first message; returns the exchange and the server-first message.
    pub fn start(verifier: Verifier, client_first: &str) -> Result<(ServerExchange, String), ScramError> {
        let (bare, gs2) = match client_first.as_bytes().first() {
            Some(b'n') | Some(b'y') => {
                let mut parts = client_first.splitn(3, ',');
                let flag = parts.next().ok_or(ScramError::Malformed("gs2 header"))?;
                let _authzid = parts.next().ok_or(ScramError::Malformed("gs2 header"))?;
                (parts.next().ok_or(ScramError::Malformed("client-first"))?, flag)
            }
            Some(b'p') => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("gs2 header")),
        };
        let _ = gs2;
        let client_nonce = attr(bare, 'r').ok_or(ScramError::Malformed("client nonce"))?;
        let nonce = format!("{client_nonce}{}", self::nonce()?);
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&verifier.salt), verifier.iterations);
        Ok((ServerExchange { verifier, client_first_bare: bare.to_string(), server_first: server_first.clone(), nonce }, server_first))
    }

    /// Checks the client-final message; returns the server-final message.
    pub fn finish(self, client_final: &str) -> Result<String, ScramError> {
        let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or(ScramError::Malformed("client proof"))?;
        if attr(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof: [u8; 32] = B64.decode(proof).ok().and_then(|p| p.try_into().ok()).ok_or(ScramError::Malformed("client proof"))?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(signature.iter())) {
            *k = p ^ s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        // Constant-time comparison: the proof is attacker-controlled.
        let diff = stored.iter().zip(self.verifier.stored_key.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(ScramError::WrongProof);
        }
        Ok(format!("v={}", B64.encode(hmac(&self.verifier.server_key, auth_message.as_bytes()))))
    }
}

/// Salted passwords dbtape has derived as a SCRAM client, by password, salt and iteration
/// count. An upstream keeps a user's salt and count until the password changes, so PBKDF2
/// runs once per upstream user, not once per login: a new connection then costs a few
/// HMACs. Memory only; a salted password is as secret as the password it came from.
#[derive(Default)]
pub struct SaltedPasswords {
    derived: std::sync::Mutex<std::collections::HashMap<[u8; 32], [u8; 32]>>,
}

/// Entries kept before the cache starts over: a hostile upstream sending a new salt every
/// time must not grow it.
const MAX_SALTED: usize = 4096;

impl SaltedPasswords {
    fn key(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update((password.len() as u64).to_be_bytes());
        hash.update(password.as_bytes());
        hash.update(iterations.to_be_bytes());
        hash.update(salt);
        hash.finalize().into()
    }

    fn get(&self, key: &[u8; 32]) -> Option<[u8; 32]> {
        self.derived.lock().ok()?.get(key).copied()
    }

    fn insert(&self, key: [u8; 32], salted: [u8; 32]) {
        if let Ok(mut derived) = self.derived.lock() {
            if derived.len() >= MAX_SALTED {
                derived.clear();
            }
            derived.insert(key, salted);
        }
    }

    pub fn len(&self) -> usize {
        self.derived.lock().map(|d| d.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Client side, for logging in upstream with a password.
pub struct ClientExchange {
    password: String,
    client_first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ClientExchange {
    pub fn start(password: &str) -> Result<(ClientExchange, String), ScramError> {
        Self::start_as("", password)
    }

    /// As `start`, naming the user in the exchange (MongoDB wants it; PostgreSQL takes the
    /// startup packet's).
    pub fn start_as(user: &str, password: &str) -> Result<(ClientExchange, String), ScramError> {
        let name = user.replace('=', "=3D").replace(',', "=2C");
        let bare = format!("n={name},r={}", nonce()?);
        let first = format!("n,,{bare}");
        Ok((ClientExchange { password: password.to_string(), client_first_bare: bare, expected_server_signature: None }, first))
    }

    /// Answers the server-first message. The PBKDF2 work (up to `MAX_CLIENT_ITERATIONS`)
    /// makes this a blocking call: run it off the connection's worker.
    pub fn respond(&mut self, server_first: &str) -> Result<String, ScramError> {
        self.answer(server_first, None, true).map(|reply| reply.unwrap_or_default())
    }

    /// As `respond`, with salted passwords from `cache`. With `derive` false it does no
    /// PBKDF2 and returns `None` when the cache lacks the key (the caller then derives it off
    /// the worker); with `derive` true it derives a missing one and keeps it.
    pub fn respond_cached(&mut self, server_first: &str, cache: &SaltedPasswords, derive: bool) -> Result<Option<String>, ScramError> {
        self.answer(server_first, Some(cache), derive)
    }

    fn answer(&mut self, server_first: &str, cache: Option<&SaltedPasswords>, derive: bool) -> Result<Option<String>, ScramError> {
        let client_nonce = attr(&self.client_first_bare, 'r').ok_or(ScramError::Malformed("client nonce"))?;
        let nonce = attr(server_first, 'r').ok_or(ScramError::Malformed("server nonce"))?;
        if !nonce.starts_with(client_nonce) {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let salt = B64.decode(attr(server_first, 's').ok_or(ScramError::Malformed("salt"))?).map_err(|_| ScramError::Malformed("salt"))?;
        let iterations: u32 = attr(server_first, 'i').and_then(|i| i.parse().ok()).ok_or(ScramError::Malformed("iterations"))?;
        if iterations > MAX_CLIENT_ITERATIONS {
            return Err(ScramError::TooManyIterations(iterations));
        }
        if iterations == 0 {
            return Err(ScramError::Malformed("iterations"));
        }
        let key = cache.map(|_| SaltedPasswords::key(&self.password, &salt, iterations));
        let salted = match (cache, key) {
            (Some(cache), Some(key)) => match cache.get(&key) {
                Some(salted) => salted,
                None if !derive => return Ok(None),
                None => {
                    let salted = salted_password(&self.password, &salt, iterations);
                    cache.insert(key, salted);
                    salted
                }
            },
            _ => salted_password(&self.password, &salt, iterations),
        };
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature.iter()).map(|(a, b)| a ^ b).collect();
        self.expected_server_signature = Some(hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes()));
        Ok(Some(format!("{without_proof},p={}", B64.encode(proof))))
    }

    pub fn verify_final(&self, server_final: &str) -> Result<(), ScramError> {
        let got = attr(server_final, 'v').and_then(|v| B64.decode(v).ok());
        match (got, self.expected_server_signature) {
            (Some(got), Some(expected)) if got == expected => Ok(()),
            _ => Err(ScramError::BadServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_are_stable_per_name_and_differ_between_names() {
        let secret = [7u8; 32];
        let a = Verifier::stand_in(&secret, "nobody", 4096);
        assert_eq!(a, Verifier::stand_in(&secret, "nobody", 4096));
        assert_ne!(a.salt, Verifier::stand_in(&secret, "somebody", 4096).salt);
        assert_ne!(a.salt, Verifier::stand_in(&[8u8; 32], "nobody", 4096).salt);
        assert_eq!(a.salt.len(), 16);
    }

    #[test]
    fn servers_asking_for_too_much_work_are_refused() {
        let (mut client, first) = ClientExchange::start("pw").unwrap();
        let nonce = attr(first.trim_start_matches("n,,"), 'r').unwrap().to_string();
        let server_first = format!("r={nonce}xyz,s=c2FsdA==,i={}", MAX_CLIENT_ITERATIONS + 1);
        assert_eq!(client.respond(&server_first), Err(ScramError::TooManyIterations(MAX_CLIENT_ITERATIONS + 1)));
    }

    #[test]
    fn client_and_server_agree_and_wrong_passwords_fail() {
        let verifier = Verifier::generate("correct horse", 4096).unwrap();
        let parsed = Verifier::parse(&verifier.to_string()).unwrap();
        assert_eq!(parsed, verifier);
        for (password, ok) in [("correct horse", true), ("wrong", false)] {
            let (mut client, first) = ClientExchange::start(password).unwrap();
            let (server, server_first) = ServerExchange::start(parsed.clone(), &first).unwrap();
            let client_final = client.respond(&server_first).unwrap();
            match server.finish(&client_final) {
                Ok(server_final) => {
                    assert!(ok);
                    client.verify_final(&server_final).unwrap();
                }
                Err(e) => {
                    assert!(!ok);
                    assert_eq!(e, ScramError::WrongProof);
                }
            }
        }
    }

    #[test]
    fn a_cached_salted_password_logs_in_without_pbkdf2_and_only_for_its_password() {
        let verifier = Verifier::generate("correct horse", 4096).unwrap();
        let cache = SaltedPasswords::default();
        let login = |password: &str, derive: bool| {
            let (mut client, first) = ClientExchange::start(password).unwrap();
            let (server, server_first) = ServerExchange::start(verifier.clone(), &first).unwrap();
            let reply = client.respond_cached(&server_first, &cache, derive).unwrap()?;
            Some(server.finish(&reply).map(|server_final| client.verify_final(&server_final).is_ok()))
        };
        assert_eq!(login("correct horse", false), None, "nothing cached yet: the caller must derive");
        assert_eq!(login("correct horse", true), Some(Ok(true)));
        assert_eq!(cache.len(), 1);
        assert_eq!(login("correct horse", false), Some(Ok(true)), "the second login needs no PBKDF2");
        assert_eq!(login("wrong", false), None, "another password is another key");
        assert_eq!(login("wrong", true), Some(Err(ScramError::WrongProof)));
    }
}
