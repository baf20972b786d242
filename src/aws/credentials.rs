//! Credentials for upstream IAM auth: the AWS default chain, optionally through an
//! AssumeRole hop (with an external ID), cached and refreshed before they expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use tokio::sync::Mutex;

use crate::config::AwsOptions;

/// Refresh this long before expiry, so a token is never signed with credentials about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("AWS credentials: {0}")]
    Provider(String),
}

pub struct CredentialSource {
    provider: SharedCredentialsProvider,
    cached: Mutex<Option<Credentials>>,
    /// The SDK settings (region, endpoint) with `provider` as their credentials, for a
    /// further AssumeRole hop from these credentials.
    sdk: aws_config::SdkConfig,
}

impl CredentialSource {
    pub async fn new(aws: &AwsOptions, session_name: &str) -> Result<Arc<Self>, CredentialsError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if !aws.region.is_empty() {
            loader = loader.region(aws_config::Region::new(aws.region.clone()));
        }
        if !aws.endpoint.is_empty() {
            loader = loader.endpoint_url(aws.endpoint.clone());
        }
        let sdk = loader.load().await;
        let base =
            sdk.credentials_provider().ok_or_else(|| CredentialsError::Provider("no credential provider in the default chain".into()))?;
        let provider = if aws.assume_role_arn.is_empty() {
            base
        } else {
            let mut builder = aws_config::sts::AssumeRoleProvider::builder(aws.assume_role_arn.clone()).session_name(session_name);
            if !aws.external_id.is_empty() {
                builder = builder.external_id(aws.external_id.clone());
            }
            if !aws.session_tags.is_empty() {
                builder = builder.tags(aws.session_tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            }
            SharedCredentialsProvider::new(builder.configure(&sdk).build().await)
        };
        let sdk = sdk.to_builder().credentials_provider(provider.clone()).build();
        Ok(Arc::new(CredentialSource { provider, cached: Mutex::new(None), sdk }))
    }

    /// Credentials for `role_arn`, assumed with these (a chained hop when these are already
    /// an assumed role's; AWS caps chained sessions at one hour, the provider's default).
    pub async fn assume(&self, role_arn: &str, external_id: &str, session_name: &str) -> Arc<Self> {
        let mut builder = aws_config::sts::AssumeRoleProvider::builder(role_arn.to_string()).session_name(session_name);
        if !external_id.is_empty() {
            builder = builder.external_id(external_id.to_string());
        }
        let provider = SharedCredentialsProvider::new(builder.configure(&self.sdk).build().await);
        let sdk = self.sdk.to_builder().credentials_provider(provider.clone()).build();
        Arc::new(CredentialSource { provider, cached: Mutex::new(None), sdk })
    }

    /// Current credentials, fetched again when missing or close to expiry.
    pub async fn get(&self) -> Result<Credentials, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(creds) = cached.as_ref() {
            let fresh = creds.expiry().is_none_or(|exp| exp > SystemTime::now() + REFRESH_MARGIN);
            if fresh {
                return Ok(creds.clone());
            }
        }
        let creds = self.provider.provide_credentials().await.map_err(|e| CredentialsError::Provider(error_chain(&e)))?;
        *cached = Some(creds.clone());
        Ok(creds)
    }
}

/// A database's credential source, made on first use (so a config that never logs in
/// upstream never asks the AWS chain) and then shared by every session of that database.
#[derive(Default)]
pub struct LazySource(tokio::sync::OnceCell<Arc<CredentialSource>>);

impl LazySource {
    pub async fn get(&self, aws: &AwsOptions) -> Result<&Arc<CredentialSource>, CredentialsError> {
        self.0.get_or_try_init(|| CredentialSource::new(aws, "dbtape")).await
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
