//! One credential cache for every AWS call dbtape makes on a database's behalf: RDS IAM
//! auth tokens, MONGODB-AWS logins, the IAM roles DynamoDB users are granted, and (with the
//! S3 settings as its options) uploads.
//!
//! dbtape's own identity is the AWS default chain, optionally through a first AssumeRole hop
//! (`aws.assume_role_arn`, with `aws.external_id`; cross-account). Granted roles are assumed
//! from that identity with STS, with the user as the role session name and
//! `aws.session_tags`; behind a hop the external ID belongs to the hop, as in AWS's own
//! examples, and the session is capped at one hour (AWS's limit on chained sessions).
//! Everything is cached and replaced `aws.refresh_before_expiry` before it expires; a refresh
//! that fails while the old credentials still hold keeps them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use tokio::sync::{Mutex, OnceCell};

use crate::config::{AwsOptions, CHAINED_SESSION_LIMIT};

/// Credentials this close to expiry are not handed out even when a refresh fails.
const LAST_USABLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialsError {
    /// The default chain had no credentials, or could not give them.
    #[error("AWS credentials: {0}")]
    Chain(String),
    /// STS refused or could not be reached; the text is STS's own code and message.
    #[error("STS AssumeRole for {role_arn}: {cause}")]
    AssumeRole { role_arn: String, cause: String },
}

/// Credentials from the cache, with what they are.
#[derive(Clone)]
pub struct Assumed {
    pub credentials: Credentials,
    /// For an assumed role, `arn:aws:sts::<account>:assumed-role/<role>/<session name>` as
    /// STS reported it; empty for the default chain's own credentials.
    pub assumed_arn: String,
    /// When they lapse; the default chain's long-term keys never do.
    pub expires: Option<SystemTime>,
}

impl std::fmt::Debug for Assumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assumed").field("assumed_arn", &self.assumed_arn).field("expires", &self.expires).finish_non_exhaustive()
    }
}

type Slot = Arc<Mutex<Option<Assumed>>>;

/// What a slot holds: the default chain, the first hop (tagged or not) or a granted role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SlotKey {
    Chain,
    Hop { tagged: bool },
    Role { session_name: String, role_arn: String },
}

/// One database's (or the uploader's) AWS credentials.
pub struct CredentialCache {
    aws: AwsOptions,
    /// Made on first use, so a config that never calls AWS never asks the chain.
    sdk: OnceCell<aws_config::SdkConfig>,
    slots: std::sync::Mutex<HashMap<SlotKey, Slot>>,
}

impl CredentialCache {
    pub fn new(aws: AwsOptions) -> Self {
        CredentialCache { aws, sdk: OnceCell::new(), slots: std::sync::Mutex::new(HashMap::new()) }
    }

    /// dbtape's own identity: the default chain's credentials, or the first hop's when
    /// `aws.assume_role_arn` is set (then with `aws.session_tags`, since no role follows).
    pub async fn identity(&self) -> Result<Assumed, CredentialsError> {
        if self.aws.assume_role_arn.is_empty() {
            self.chain().await
        } else {
            self.hop(true).await
        }
    }

    /// `role_arn`, assumed on behalf of `user` (the role session name) from dbtape's
    /// identity, with `aws.session_tags`.
    pub async fn role(&self, user: &str, role_arn: &str) -> Result<Assumed, CredentialsError> {
        let session_name = role_session_name(user);
        self.cached(SlotKey::Role { session_name: session_name.clone(), role_arn: role_arn.to_string() }, || async {
            let via = if self.aws.assume_role_arn.is_empty() { None } else { Some(Box::pin(self.hop(false)).await?) };
            // With a chain the external ID belongs to the first hop.
            let external_id = if via.is_some() { "" } else { self.aws.external_id.as_str() };
            let assumed = self.assume(via.as_ref().map(|a| &a.credentials), role_arn, &session_name, external_id, true).await?;
            tracing::info!(role = %role_arn, assumed = %assumed.assumed_arn, user, "assumed role");
            Ok(assumed)
        })
        .await
    }

    /// Whether credentials can still be used without asking again.
    pub fn fresh(&self, assumed: &Assumed) -> bool {
        assumed.expires.is_none_or(|at| at > SystemTime::now() + self.aws.refresh_before_expiry)
    }

    async fn chain(&self) -> Result<Assumed, CredentialsError> {
        self.cached(SlotKey::Chain, || async {
            let sdk = self.sdk().await;
            let provider =
                sdk.credentials_provider().ok_or_else(|| CredentialsError::Chain("no credential provider in the default chain".into()))?;
            let credentials = provider.provide_credentials().await.map_err(|e| CredentialsError::Chain(error_chain(&e)))?;
            let expires = credentials.expiry();
            Ok(Assumed { credentials, assumed_arn: String::new(), expires })
        })
        .await
    }

    /// The first hop of a chain (`aws.assume_role_arn`), shared by every user.
    async fn hop(&self, tagged: bool) -> Result<Assumed, CredentialsError> {
        self.cached(SlotKey::Hop { tagged }, || async {
            let chain = self.chain().await?;
            let assumed = self.assume(Some(&chain.credentials), &self.aws.assume_role_arn, "dbtape", &self.aws.external_id, tagged).await?;
            tracing::info!(role = %self.aws.assume_role_arn, assumed = %assumed.assumed_arn, "assumed the first role of the chain");
            Ok(assumed)
        })
        .await
    }

    /// The slot's credentials while fresh; otherwise `fetch`ed anew. If fetching fails while
    /// the old ones still hold, they are kept.
    async fn cached<F, Fut>(&self, key: SlotKey, fetch: F) -> Result<Assumed, CredentialsError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Assumed, CredentialsError>>,
    {
        let slot = crate::util::sync::lock(&self.slots).entry(key).or_default().clone();
        let mut cached = slot.lock().await;
        if let Some(assumed) = cached.as_ref().filter(|a| self.fresh(a)) {
            return Ok(assumed.clone());
        }
        match fetch().await {
            Ok(assumed) => {
                *cached = Some(assumed.clone());
                Ok(assumed)
            }
            Err(e) => match cached.as_ref().filter(|a| a.expires.is_none_or(|at| at > SystemTime::now() + LAST_USABLE)) {
                Some(still_valid) => {
                    tracing::warn!(error = %e, "refreshing AWS credentials failed; the current ones are still valid");
                    Ok(still_valid.clone())
                }
                None => Err(e),
            },
        }
    }

    /// The SDK settings (region, endpoint) these credentials are fetched with, for a client
    /// of another service to share.
    pub async fn sdk(&self) -> &aws_config::SdkConfig {
        self.sdk
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

    /// The session length asked of STS, within the one-hour limit of a chained session.
    fn duration(&self) -> Duration {
        if self.aws.assume_role_arn.is_empty() {
            self.aws.session_duration
        } else {
            self.aws.session_duration.min(CHAINED_SESSION_LIMIT)
        }
    }

    async fn assume(
        &self,
        with: Option<&Credentials>,
        role_arn: &str,
        session_name: &str,
        external_id: &str,
        tagged: bool,
    ) -> Result<Assumed, CredentialsError> {
        let sdk = self.sdk().await;
        let mut config = aws_sdk_sts::config::Builder::from(sdk);
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
                    Err(e) => {
                        return Err(CredentialsError::AssumeRole { role_arn: role_arn.into(), cause: format!("session tag {key:?}: {e}") })
                    }
                }
            }
        }
        let failed = |cause: String| CredentialsError::AssumeRole { role_arn: role_arn.into(), cause };
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
        Ok(Assumed { credentials, assumed_arn, expires: Some(expires) })
    }
}

/// The cache as the AWS SDK's credentials provider (uploads), so the S3 client and the
/// proxy's other AWS calls share one way of getting and refreshing credentials.
#[derive(Clone)]
pub struct CacheProvider(pub Arc<CredentialCache>);

impl std::fmt::Debug for CacheProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheProvider")
    }
}

impl ProvideCredentials for CacheProvider {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            self.0
                .identity()
                .await
                .map(|a| a.credentials)
                .map_err(|e| aws_credential_types::provider::error::CredentialsError::provider_error(e.to_string()))
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
    use super::*;

    #[test]
    fn session_names_fit_sts() {
        assert_eq!(role_session_name("alice"), "alice");
        assert_eq!(role_session_name("a"), "a-");
        assert_eq!(role_session_name("Bob Smith/ops"), "Bob-Smith-ops");
        assert_eq!(role_session_name(&"x".repeat(80)).len(), 64);
    }
}
