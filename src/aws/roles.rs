//! Credentials for the IAM roles users are granted (DynamoDB): STS AssumeRole with the user
//! as the role session name, session tags and an external ID, optionally chained through a
//! first hop (`aws.assume_role_arn`, cross-account). Cached per (user, role) and refreshed
//! before they expire; a refresh that fails while the old credentials still hold keeps them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use tokio::sync::{Mutex, OnceCell};

use crate::config::{AwsOptions, CHAINED_SESSION_LIMIT};

/// AWS caps a session assumed with role credentials (a chain) at one hour.

#[derive(Debug, Clone, thiserror::Error)]
pub enum RoleError {
    /// STS refused or could not be reached; the text is STS's own code and message.
    #[error("STS AssumeRole for {role_arn}: {cause}")]
    AssumeRole { role_arn: String, cause: String },
}

/// Credentials of one assumed role.
#[derive(Clone)]
pub struct Assumed {
    pub credentials: Credentials,
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session name>`, as STS reported it.
    pub assumed_arn: String,
    pub expires: SystemTime,
}

impl std::fmt::Debug for Assumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assumed").field("assumed_arn", &self.assumed_arn).field("expires", &self.expires).finish_non_exhaustive()
    }
}

type Slot = Arc<Mutex<Option<Assumed>>>;

/// One database's roles.
pub struct RoleCredentials {
    aws: AwsOptions,
    base: OnceCell<aws_config::SdkConfig>,
    /// Keyed by (role session name, role ARN); the hop's under an empty session name.
    slots: std::sync::Mutex<HashMap<(String, String), Slot>>,
}

impl RoleCredentials {
    pub fn new(aws: AwsOptions) -> Self {
        RoleCredentials { aws, base: OnceCell::new(), slots: std::sync::Mutex::new(HashMap::new()) }
    }

    /// The session length asked of STS, within the one-hour limit of a chained session.
    fn duration(&self) -> Duration {
        if self.aws.assume_role_arn.is_empty() {
            self.aws.session_duration
        } else {
            self.aws.session_duration.min(CHAINED_SESSION_LIMIT)
        }
    }

    async fn base(&self) -> &aws_config::SdkConfig {
        self.base
            .get_or_init(|| async {
                let mut loader = aws_config::defaults(BehaviorVersion::latest());
                if !self.aws.region.is_empty() {
                    loader = loader.region(aws_config::Region::new(self.aws.region.clone()));
                }
                if !self.aws.endpoint.is_empty() {
                    loader = loader.endpoint_url(self.aws.endpoint.clone());
                }
                loader.load().await
            })
            .await
    }

    fn slot(&self, session_name: &str, role_arn: &str) -> Slot {
        let mut slots = crate::util::sync::lock(&self.slots);
        slots.entry((session_name.to_string(), role_arn.to_string())).or_default().clone()
    }

    /// Credentials for `role_arn` on behalf of `user`.
    pub async fn get(&self, user: &str, role_arn: &str) -> Result<Assumed, RoleError> {
        let session_name = role_session_name(user);
        let slot = self.slot(&session_name, role_arn);
        let mut cached = slot.lock().await;
        if let Some(assumed) = cached.as_ref().filter(|a| self.fresh(a)) {
            return Ok(assumed.clone());
        }
        let via = if self.aws.assume_role_arn.is_empty() { None } else { Some(Box::pin(self.hop()).await?) };
        // With a chain the external ID belongs to the first hop, as in AWS's own examples.
        let external_id = if via.is_some() { "" } else { self.aws.external_id.as_str() };
        match self.assume(via.as_ref().map(|a| &a.credentials), role_arn, &session_name, external_id, true).await {
            Ok(assumed) => {
                tracing::info!(role = %role_arn, assumed = %assumed.assumed_arn, user, "assumed role");
                *cached = Some(assumed.clone());
                Ok(assumed)
            }
            Err(e) => match cached.as_ref().filter(|a| a.expires > SystemTime::now() + Duration::from_secs(30)) {
                Some(still_valid) => {
                    tracing::warn!(error = %e, role = %role_arn, "refreshing role credentials failed; the current ones are still valid");
                    Ok(still_valid.clone())
                }
                None => Err(e),
            },
        }
    }

    /// The first hop of a chain (`aws.assume_role_arn`), shared by every user.
    async fn hop(&self) -> Result<Assumed, RoleError> {
        let slot = self.slot("", &self.aws.assume_role_arn);
        let mut cached = slot.lock().await;
        if let Some(assumed) = cached.as_ref().filter(|a| self.fresh(a)) {
            return Ok(assumed.clone());
        }
        let assumed = self.assume(None, &self.aws.assume_role_arn, "dbtape", &self.aws.external_id, false).await?;
        tracing::info!(role = %self.aws.assume_role_arn, assumed = %assumed.assumed_arn, "assumed the first role of the chain");
        *cached = Some(assumed.clone());
        Ok(assumed)
    }

    /// Whether credentials can still be used without asking STS again.
    pub fn fresh(&self, assumed: &Assumed) -> bool {
        assumed.expires > SystemTime::now() + self.aws.refresh_before_expiry
    }

    async fn assume(
        &self,
        with: Option<&Credentials>,
        role_arn: &str,
        session_name: &str,
        external_id: &str,
        tagged: bool,
    ) -> Result<Assumed, RoleError> {
        let base = self.base().await;
        let mut config = aws_sdk_sts::config::Builder::from(base);
        if let Some(creds) = with {
            config = config.credentials_provider(creds.clone());
        }
        let client = aws_sdk_sts::Client::from_conf(config.build());
        let duration = i32::try_from(self.duration().as_secs()).unwrap_or(3600);
        let mut request = client.assume_role().role_arn(role_arn).role_session_name(session_name).duration_seconds(duration);
        if !external_id.is_empty() {
            request = request.external_id(external_id);
        }
        if tagged {
            for (key, value) in &self.aws.session_tags {
                let tag = aws_sdk_sts::types::Tag::builder().key(key).value(value).build();
                match tag {
                    Ok(tag) => request = request.tags(tag),
                    Err(e) => return Err(RoleError::AssumeRole { role_arn: role_arn.into(), cause: format!("session tag {key:?}: {e}") }),
                }
            }
        }
        let failed = |cause: String| RoleError::AssumeRole { role_arn: role_arn.into(), cause };
        let output = request.send().await.map_err(|e| failed(sts_error_text(&e)))?;
        let creds = output.credentials().ok_or_else(|| failed("STS returned no credentials".into()))?;
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(creds.expiration().secs()).unwrap_or(0));
        let credentials = Credentials::new(
            creds.access_key_id(),
            creds.secret_access_key(),
            Some(creds.session_token().to_string()),
            Some(expires),
            "dbtape-assume-role",
        );
        let assumed_arn = output.assumed_role_user().map(|u| u.arn().to_string()).unwrap_or_default();
        Ok(Assumed { credentials, assumed_arn, expires })
    }
}

/// STS's error as its code and message. Stand-ins answer in shapes the SDK may not parse
/// (moto's `<Errors><Error>`), so the raw body is read when the SDK found no code.
fn sts_error_text<E, R>(e: &aws_sdk_sts::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sts::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sts::error::SdkError;
    match e {
        SdkError::ServiceError(ctx) => {
            let err = ctx.err();
            if let Some(code) = err.code() {
                return format!("{code}: {}", err.message().unwrap_or_default());
            }
            let raw = format!("{:?}", ctx.raw());
            let code = between(&raw, "<Code>", "</Code>").unwrap_or("unknown error");
            let message = between(&raw, "<Message>", "</Message>").unwrap_or_default();
            format!("{code}: {message}")
        }
        other => aws_sdk_sts::error::DisplayErrorContext(other).to_string(),
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// STS accepts 2–64 characters of `[\w+=,.@-]` as a role session name; a dbtape user name
/// may hold others, which become `-`.
pub fn role_session_name(user: &str) -> String {
    let mut name: String =
        user.chars().map(|c| if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) { c } else { '-' }).take(64).collect();
    while name.len() < 2 {
        name.push('-');
    }
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_names_fit_sts() {
        assert_eq!(super::role_session_name("alice"), "alice");
        assert_eq!(super::role_session_name("a"), "a-");
        assert_eq!(super::role_session_name("Bob Smith/ops"), "Bob-Smith-ops");
        assert_eq!(super::role_session_name(&"x".repeat(80)).len(), 64);
    }
}
