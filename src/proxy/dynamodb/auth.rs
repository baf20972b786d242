//! Who sent a request: the user whose access key id and secret signed it, and the IAM role
//! they act as. A user granted several roles picks one by signing with the access key id
//! `KEYID@role` (any profile of the aws CLI can hold that), as `user@db_user` picks on the
//! other paths. The key id is not covered by the signature, so the suffix can only choose
//! among the signer's own grants.

use std::time::SystemTime;

use super::errors::ErrorKind;
use crate::auth::{AccessKey, Directory};
use crate::aws::sigv4_verify::{verify, Authorization, SignedRequest, VerifyError};
use crate::proxy::http1::RequestHead;
use crate::server::{ListenerContext, Refusal, SessionIdentity};

/// An authenticated request's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub user: String,
    /// As granted in the config: a role name or ARN.
    pub db_user: String,
    pub role_arn: String,
}

/// A refused request: the DynamoDB error the client gets, and the refusal the audit records
/// (the user, when the key id named one).
#[derive(Debug, Clone)]
pub struct RequestRefusal {
    pub kind: ErrorKind,
    /// Boxed: refusals are rare, and every Result on the request path would carry it.
    pub refusal: Box<Refusal>,
}

impl RequestRefusal {
    pub fn new(kind: ErrorKind, user: &str, reason: String) -> Self {
        RequestRefusal { kind, refusal: Box::new(Refusal::of_user(user, reason)) }
    }

    /// The refusal as audited: the error's name before the reason, and the client's agent.
    pub fn audited(self, user_agent: &str) -> Refusal {
        let mut refusal = *self.refusal;
        refusal.reason = format!("{}: {}", self.kind.name(), refusal.reason);
        refusal.identity.user_agent = user_agent.to_string();
        refusal
    }

    /// What AWS says in the same case; it never confirms which part was wrong beyond that.
    pub fn client_message(&self) -> String {
        match self.kind {
            ErrorKind::MissingAuthenticationToken => "Request is missing Authentication Token".into(),
            ErrorKind::UnrecognizedClient => "The security token included in the request is invalid.".into(),
            ErrorKind::InvalidSignature if self.refusal.reason.starts_with("signature expired") => {
                format!("Signature expired: {}", self.refusal.reason)
            }
            ErrorKind::InvalidSignature => "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.".into(),
            _ => self.refusal.reason.clone(),
        }
    }
}

/// A request's signature header, parsed, and the key it names.
pub struct Identified<'a> {
    auth: Authorization<'a>,
    key: &'a AccessKey,
    wanted_role: Option<&'a str>,
}

/// What the headers alone show: a well-formed signature by a known key. Checked before the
/// body is read, so a stranger cannot make dbtape buffer request bodies.
pub fn identify<'a>(directory: &'a Directory, head: &'a RequestHead) -> Result<Identified<'a>, RequestRefusal> {
    if head.fields.get("authorization").is_none() {
        return Err(RequestRefusal::new(ErrorKind::MissingAuthenticationToken, "", "the request is not signed".into()));
    }
    let header = head
        .fields
        .get_str("authorization")
        .ok_or_else(|| RequestRefusal::new(ErrorKind::IncompleteSignature, "", "the Authorization header is not text".into()))?;
    let auth = Authorization::parse(header).map_err(|e| RequestRefusal::new(ErrorKind::IncompleteSignature, "", e.to_string()))?;
    let (key_id, wanted_role) = crate::auth::grants::split_login(auth.access_key_id);
    let Some(key) = directory.access_key(key_id) else {
        let shown = super::session::truncate(key_id, 128);
        return Err(RequestRefusal::new(ErrorKind::UnrecognizedClient, "", format!("unknown access key id {shown:?}")));
    };
    Ok(Identified { auth, key, wanted_role })
}

/// Checks the signature of an identified request over its body's hash, then its role.
pub fn authenticate(
    ctx: &ListenerContext,
    directory: &Directory,
    head: &RequestHead,
    identified: Identified<'_>,
    payload_sha256: &str,
    keys: &crate::aws::sigv4::SigningKeys,
) -> Result<Who, RequestRefusal> {
    let Identified { auth, key, wanted_role } = identified;
    if auth.service != "dynamodb" {
        return Err(RequestRefusal::new(
            ErrorKind::InvalidSignature,
            &key.user,
            "Credential should be scoped to correct service: 'dynamodb'".into(),
        ));
    }
    let request = SignedRequest {
        method: head.method(),
        path_and_query: head.target(),
        headers: {
            let mut headers = Vec::with_capacity(head.fields.len());
            headers.extend(head.fields.iter_text().filter_map(|(n, v)| Some((n, v?))));
            headers
        },
        payload_sha256,
    };
    verify(&auth, &request, &key.secret, SystemTime::now(), keys).map_err(|e| {
        let kind = match e {
            VerifyError::Missing => ErrorKind::MissingAuthenticationToken,
            VerifyError::Malformed(_) => ErrorKind::IncompleteSignature,
            VerifyError::Expired { .. } | VerifyError::Mismatch => ErrorKind::InvalidSignature,
        };
        RequestRefusal::new(kind, &key.user, e.to_string())
    })?;
    let user = directory
        .by_name(&key.user)
        .map(|p| &p.config)
        .ok_or_else(|| RequestRefusal::new(ErrorKind::AccessDenied, &key.user, "the user is no longer configured".into()))?;
    choose_role(user, ctx.database(), wanted_role).map_err(|reason| {
        let identity =
            SessionIdentity { user: key.user.clone(), db_user: wanted_role.unwrap_or_default().to_string(), ..Default::default() };
        RequestRefusal { kind: ErrorKind::AccessDenied, refusal: Box::new(Refusal::new(identity, reason)) }
    })
}

/// The granted role the request acts as.
fn choose_role<'a>(
    user: &'a crate::config::UserConfig,
    database: &'a crate::config::DatabaseConfig,
    wanted: Option<&str>,
) -> Result<Who, String> {
    // Walked rather than collected: this runs on every request.
    let roles = || user.grants.iter().filter(|g| g.database == database.name).flat_map(|g| g.db_users.iter());
    let role_name = |db_user: &'a str| -> &'a str { db_user.rsplit('/').next().unwrap_or(db_user) };
    let mut granted = roles();
    let Some(first) = granted.next() else {
        return Err(format!("user {:?} is not granted database {:?}", user.name, database.name));
    };
    let chosen = match wanted {
        Some(wanted) => roles()
            .find(|r| r.as_str() == wanted || role_name(r) == wanted)
            .ok_or_else(|| format!("user {:?} is not granted role {wanted:?} on database {:?}", user.name, database.name))?,
        None if granted.next().is_none() => first,
        None => {
            let names: Vec<&str> = roles().map(|r| role_name(r)).collect();
            return Err(format!(
                "user {:?} is granted several roles ({}); sign with the access key id <key>@<role> to choose one",
                user.name,
                names.join(", ")
            ));
        }
    };
    let role_arn = crate::util::arn::role_arn_for(chosen, &database.aws.account_id)
        .ok_or_else(|| format!("db_user {chosen:?} names no IAM role (set aws.account_id or write the role's ARN)"))?;
    Ok(Who { user: user.name.clone(), db_user: chosen.to_string(), role_arn })
}
